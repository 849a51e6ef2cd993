#!/usr/bin/env python3
"""Tables for docs/results/minicache.md from the harness JSON in docs/results/minicache-data/."""
import json, sys
D = "docs/results/minicache-data"

def table(name, title):
    r = json.load(open(f"{D}/{name}.json"))
    cells = r["cells"]
    full = {(c["task"], c["length"]): c for c in cells if c["policy"] == "full"}
    print(f"### {title}\n")
    print(f"`{name}.json`: {r['run']['date_utc']}, commit {r['run']['git_commit']}, {r['run']['machine']}, "
          f"{r['run']['threads']} threads, {r['run']['samples']} samples, seed {r['run']['seed']}\n")
    print("| task | policy | metric | value | vs full | KV end (MiB) | × vs f16 | prefill tok/s | decode tok/s | decode vs full |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        f = full.get((c["task"], c["length"]))
        rel = ""
        if f and c["metric"] == "perplexity":
            rel = f"{100 * (c['value'] / f['value'] - 1):+.2f} %"
        elif f:
            rel = f"{100 * (c['value'] - f['value']):+.1f} pt"
        dec = c.get("decode_tok_s")
        decrel = f"{dec / f['decode_tok_s']:.2f}×" if dec and f and f.get("decode_tok_s") else ""
        val = f"{c['value']:.3f}" if c["metric"] == "perplexity" else f"{100 * c['value']:.1f} %"
        print(f"| {c['task']} | `{c['policy']}` | {c['metric']} | {val} | {rel} | {c['kv_end_bytes'] / 2**20:.2f} | "
              f"{c['compression_vs_f16']:.2f} | {c['prefill_tok_s'] or 0:.0f} | {dec or 0:.1f} | {decrel} |")
    print()

for name, title in [a.split("=", 1) for a in sys.argv[1:]]:
    try:
        table(name, title)
    except FileNotFoundError:
        print(f"({name}.json not produced)\n")
