#!/usr/bin/env python3
"""Print a Markdown table comparing two bench JSONs (frugal vs llama.cpp).

Usage: compare.py OURS.json THEIRS.json

Both files follow the shared `frugal bench` schema:
  {"engine", "version", "threads", "model", "prefill_tok_s": {N: x},
   "prefill_runs_s": {N: [..]}, "decode_tok_s", "decode_depth", "decode_tokens",
   "peak_rss_bytes", "rss_after_load_bytes"}
Ratios are ours/theirs: > 1 is better for tok/s, < 1 is better for memory.
Standard library only, so it runs with any python3.
"""
import json
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def fmt_num(x, digits=1):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def fmt_mib(b):
    return "n/a" if b is None else f"{b / 2**20:,.1f} MiB"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ours, theirs = load(argv[1]), load(argv[2])
    ours_name = ours.get("engine", "frugal")
    theirs_name = theirs.get("engine", "llama.cpp")

    warnings = []
    for key in ("threads", "decode_depth", "decode_tokens"):
        if ours.get(key) != theirs.get(key):
            warnings.append(f"{key} differs: {ours.get(key)} vs {theirs.get(key)}")

    import os
    om, tm = ours.get("model"), theirs.get("model")
    if om and tm and os.path.realpath(om) != os.path.realpath(tm):
        warnings.append(f"model differs: {om} vs {tm}")

    rows = []
    op = ours.get("prefill_tok_s", {}) or {}
    tp = theirs.get("prefill_tok_s", {}) or {}
    ns = sorted(set(op) | set(tp), key=lambda s: int(s))
    for n in ns:
        a, b = op.get(n), tp.get(n)
        rows.append((f"prefill {n} tok/s (higher is better)", fmt_num(a), fmt_num(b), ratio(a, b)))
    a, b = ours.get("decode_tok_s"), theirs.get("decode_tok_s")
    depth = ours.get("decode_depth", theirs.get("decode_depth"))
    ntok = ours.get("decode_tokens", theirs.get("decode_tokens"))
    rows.append((f"decode tok/s @depth {depth}, {ntok} tokens (higher is better)",
                 fmt_num(a, 2), fmt_num(b, 2), ratio(a, b)))
    a, b = ours.get("peak_rss_bytes"), theirs.get("peak_rss_bytes")
    rows.append(("peak RSS (lower is better)", fmt_mib(a), fmt_mib(b), ratio(a, b)))
    a, b = ours.get("rss_after_load_bytes"), theirs.get("rss_after_load_bytes")
    rows.append(("RSS after load (lower is better)", fmt_mib(a), fmt_mib(b), ratio(a, b)))

    print(f"{ours_name}: {ours.get('version', '?')}; {theirs_name}: {theirs.get('version', '?')}; "
          f"threads {ours.get('threads')} / {theirs.get('threads')}")
    print()
    print(f"| figure | {ours_name} | {theirs_name} | {ours_name}/{theirs_name} |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("Ratios are ours/theirs: above 1.00x is better for tok/s; below 1.00x is better for RSS.")
    for w in warnings:
        print(f"WARNING: {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
