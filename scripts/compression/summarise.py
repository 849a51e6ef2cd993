#!/usr/bin/env python3
"""Summarises `frugal eval` reports of the compression grid into docs/results/compression.json,
a Markdown table and Pareto plots (accuracy against KV bytes, Wilson intervals), drawn as plain
SVG so nothing beyond the standard library is needed.

usage: summarise.py OUT_DIR REPORT.json [REPORT.json ...] [--kvpress PEER.jsonl ...]

PEER.jsonl files are written by kvpress_peer.py (one line per prompt and press); their cells are
drawn as triangles beside ours and summarised under "kvpress" in compression.json.
"""
import json
import math
import sys
from pathlib import Path


def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def load(paths):
    cells, runs = [], []
    for p in paths:
        r = json.loads(Path(p).read_text())
        runs.append(r["run"])
        for c in r["cells"]:
            c["source"] = Path(p).name
            cells.append(c)
    return cells, runs


def load_kvpress(paths):
    """kvpress_peer.py lines grouped into cells shaped like ours."""
    groups = {}
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            key = (r["press"], r["ratio"], r["task"], r["length"])
            groups.setdefault(key, []).append(r)
    cells = []
    for (press, ratio, task, length), rs in sorted(groups.items()):
        k, n = sum(r["correct"] for r in rs), len(rs)
        lo, hi = wilson(k, n)
        policy = "kvpress:full" if press == "full" else f"kvpress:{press}@{ratio}"
        cells.append({
            "policy": policy, "task": task, "format": "user", "mode": "question-agnostic",
            "prefill_chunk": 0, "length": length, "value": k / n, "ci_low": lo, "ci_high": hi,
            "samples": n, "correct": k,
            "compression_vs_f16": sum(r["ratio_vs_f16"] for r in rs) / n,
            "masked_not_freed": any(r.get("masked_not_freed") for r in rs),
            "kvpress_version": rs[0].get("kvpress_version"), "source": "kvpress",
        })
    return cells


def pareto_svg(cells, task, mode, path, peak=False):
    pts = [c for c in cells if c["task"] == task and c.get("mode") == mode]
    if not pts:
        return False
    W, H, L, R, T, B = 760, 480, 70, 230, 40, 50
    xs = [max(c["compression_vs_f16"], 0.1) for c in pts]
    xmin, xmax = 0.25, max(16.0, max(xs) * 1.2)
    lx = lambda x: L + (math.log2(max(x, xmin)) - math.log2(xmin)) / (math.log2(xmax) - math.log2(xmin)) * (W - L - R)
    ly = lambda y: T + (1 - y) * (H - T - B)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W/2}" y="20" text-anchor="middle" font-size="14">{task} ({mode}): accuracy vs KV bytes at the end (× fewer than an f16 full cache)</text>']
    for x in [0.5, 1, 2, 4, 8, 16]:
        if x <= xmax:
            out.append(f'<line x1="{lx(x)}" y1="{T}" x2="{lx(x)}" y2="{H-B}" stroke="#ddd" stroke-dasharray="{"" if x in (2,4,8) else "2,3"}"/>')
            out.append(f'<text x="{lx(x)}" y="{H-B+15}" text-anchor="middle">{x}×</text>')
    for y in [0, 0.25, 0.5, 0.75, 0.9, 1.0]:
        out.append(f'<line x1="{L}" y1="{ly(y)}" x2="{W-R}" y2="{ly(y)}" stroke="#eee"/>')
        out.append(f'<text x="{L-6}" y="{ly(y)+4}" text-anchor="end">{y:.2f}</text>')
    out.append(f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">KV compression vs f16 full (log scale; 2×, 4×, 8× marked)</text>')
    out.append(f'<text x="16" y="{(T+H-B)/2}" transform="rotate(-90 16 {(T+H-B)/2})" text-anchor="middle">accuracy (95% Wilson)</text>')
    def family(c):
        p = c["policy"]
        if p.startswith("kvpress:"):
            p = p[len("kvpress:"):].split("@")[0]
        return p.split(":")[0].split("+")[0]
    families = sorted({family(c) for c in pts})
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#000000"]
    colour = {f: palette[i % len(palette)] for i, f in enumerate(families)}
    for c in pts:
        fam = family(c)
        x, y = lx(c["compression_vs_f16"]), ly(c["value"])
        col = colour[fam]
        out.append(f'<line x1="{x}" y1="{ly(c["ci_low"])}" x2="{x}" y2="{ly(c["ci_high"])}" stroke="{col}" opacity="0.5"/>')
        shape = "tri" if c.get("source") == "kvpress" else "rect" if "kivi" in c["policy"] else "circle"
        if shape == "tri":
            out.append(f'<polygon points="{x},{y-5} {x-5},{y+4} {x+5},{y+4}" fill="none" stroke="{col}" stroke-width="1.5"><title>{c["policy"]}: {c["value"]:.2f} at {c["compression_vs_f16"]:.2f}×</title></polygon>')
        elif shape == "circle":
            out.append(f'<circle cx="{x}" cy="{y}" r="4" fill="{col}"><title>{c["policy"]}: {c["value"]:.2f} at {c["compression_vs_f16"]:.2f}×</title></circle>')
        else:
            out.append(f'<rect x="{x-4}" y="{y-4}" width="8" height="8" fill="{col}"><title>{c["policy"]}: {c["value"]:.2f} at {c["compression_vs_f16"]:.2f}×</title></rect>')
    for i, f in enumerate(families):
        out.append(f'<circle cx="{W-R+20}" cy="{T+10+16*i}" r="4" fill="{colour[f]}"/><text x="{W-R+30}" y="{T+14+16*i}">{f}</text>')
    out.append(f'<text x="{W-R+14}" y="{T+20+16*len(families)}">square: + kivi format</text>')
    out.append(f'<text x="{W-R+14}" y="{T+36+16*len(families)}">triangle: kvpress (peer)</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out))
    return True


def main():
    out_dir = Path(sys.argv[1])
    args = sys.argv[2:]
    peer = []
    if "--kvpress" in args:
        i = args.index("--kvpress")
        args, peer = args[:i], args[i + 1:]
    cells, runs = load(args)
    kvp = load_kvpress(peer)
    out_dir.mkdir(parents=True, exist_ok=True)
    # best ≥4× setting in the question-agnostic user format, per the bar.
    agn = [c for c in cells if c.get("mode") == "question-agnostic"]
    lengths = sorted({c["length"] for c in agn})

    def get(policy, task, length):
        for c in agn:
            if c["policy"] == policy and c["task"] == task and c["length"] == length:
                return c
        return None

    candidates = []
    for policy in sorted({c["policy"] for c in agn}):
        rows = []
        for L in lengths:
            pk, kv, dkv = get(policy, "passkey-user", L), get(policy, "kv-retrieval-user", L), get("full", "kv-retrieval-user", L)
            if not (pk and kv and dkv):
                break
            rows.append((pk, kv, dkv))
        else:
            if not rows:
                continue
            ratio = min(min(pk["compression_vs_f16"], kv["compression_vs_f16"]) for pk, kv, _ in rows)
            pk_acc = min(pk["value"] for pk, _, _ in rows)
            kv_acc = min(kv["value"] for _, kv, _ in rows)
            dkv_acc = min(d["value"] for _, _, d in rows)
            holds = ratio >= 4 and pk_acc >= 0.9 and all(kv["value"] >= d["value"] - 0.05 for _, kv, d in rows)
            candidates.append({
                "policy": policy,
                "kv_ratio_vs_f16": round(ratio, 3),
                "passkey_acc": pk_acc,
                "kv_retrieval_acc": kv_acc,
                "dense_kv_retrieval_acc": dkv_acc,
                "mode": "question_agnostic",
                "lengths": lengths,
                "samples_per_length": rows[0][0]["samples"],
                "holds_bar": holds,
            })
    holding = [c for c in candidates if c["holds_bar"]]
    best = max(holding, key=lambda c: c["kv_ratio_vs_f16"]) if holding else None
    # The bar asks >= 90 % passkey of a compressed setting: where dense itself stays below
    # that, no compression of this model can meet it, and the note says so.
    dense_pk = {L: get("full", "passkey-user", L) for L in lengths}
    dense_pk = {L: {"acc": c["value"], "ci": [c["ci_low"], c["ci_high"]], "n": c["samples"]}
                for L, c in dense_pk.items() if c}
    below = [L for L, d in dense_pk.items() if d["acc"] < 0.9]
    note = None
    if not best:
        note = "no registered setting reached >= 4x fewer KV bytes than an f16 full cache at >= 90% passkey and >= dense - 5 points kv-retrieval in this run"
        if below:
            note += ("; dense (full) itself finds the passkey below 90% at " +
                     ", ".join(f"{L} tokens ({dense_pk[L]['acc']:.2f}, n={dense_pk[L]['n']})" for L in below) +
                     ", so no compression of this model can meet the passkey part of the bar")
    summary = {
        "best_4x": best,
        "best_4x_note": note,
        "dense_passkey_user_question_agnostic": dense_pk,
        "candidates_4x": sorted([c for c in candidates if c["kv_ratio_vs_f16"] >= 4], key=lambda c: -c["passkey_acc"]),
        "kvpress": {
            "status": "run" if kvp else "not run",
            "pipeline": "kvpress presses on the same prompt token ids, question-agnostic (context prefilled under the press, question after), greedy, answer contains the key",
            "cells": kvp,
        },
        "runs": runs,
        "cells": [{k: c.get(k) for k in ["policy", "task", "format", "mode", "prefill_chunk", "length", "value", "ci_low", "ci_high", "samples", "compression_vs_f16", "kv_peak_bytes", "kv_end_bytes", "by_phrasing", "by_depth", "source"]} for c in cells],
    }
    (out_dir / "compression.json").write_text(json.dumps(summary, indent=1))
    plots = []
    for task in sorted({c["task"] for c in cells}):
        for mode in ["question-agnostic", "question-aware"]:
            p = out_dir / "compression-data" / f"pareto_{task}_{mode}.svg"
            p.parent.mkdir(exist_ok=True)
            if pareto_svg([c for c in cells if c.get("prefill_chunk", 0) == 0] + kvp, task, mode, p):
                plots.append(p)
    print("\n".join(str(p) for p in plots))


if __name__ == "__main__":
    main()
