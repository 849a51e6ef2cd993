#!/usr/bin/env python3
"""Plots a load_test.py sweep: aggregate tokens/s against concurrent clients, one line per server.

  scripts/server/sweep_plot.py docs/results/server-data/sweep.json docs/results/server-data/sweep.svg

Plain SVG written by hand (standard library only, so it runs in any Python the sweep ran in).
"""
import json
import math
import sys

COLOURS = {"frugal": "#1f77b4", "llama_server": "#d62728", "llamacpp": "#2ca02c"}
LABELS = {"frugal": "frugal serve", "llama_server": "llama.cpp llama-server (slots = clients max)",
          "llamacpp": "llama_cpp.server (one request at a time)"}


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        sweep = json.load(f)
    levels = sorted(int(c) for c in sweep["clients"])
    series = {}
    for name in COLOURS:
        pts = [(c, sweep["clients"][str(c)].get(f"{name}_tok_s")) for c in levels]
        pts = [(c, v) for c, v in pts if v is not None]
        if pts:
            series[name] = pts
    top = max(v for pts in series.values() for _, v in pts)
    ymax = 50 * math.ceil(top * 1.1 / 50)
    W, H, L, R, T, B = 640, 400, 60, 20, 30, 50
    x = lambda c: L + (W - L - R) * math.log2(c) / math.log2(max(levels))
    y = lambda v: H - B - (H - T - B) * v / ymax
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="18" text-anchor="middle">Aggregate decode tokens/s, '
         f'{sweep["threads"]} threads, {sweep["max_tokens"]} tokens per request</text>']
    for v in range(0, ymax + 1, max(50, ymax // 8 // 50 * 50)):
        o.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v)}" y2="{y(v)}" stroke="#ddd"/>')
        o.append(f'<text x="{L - 6}" y="{y(v) + 4}" text-anchor="end">{v}</text>')
    for c in levels:
        o.append(f'<text x="{x(c)}" y="{H - B + 16}" text-anchor="middle">{c}</text>')
    o.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">'
             f'concurrent streaming clients</text>')
    o.append(f'<line x1="{L}" x2="{L}" y1="{T}" y2="{H - B}" stroke="black"/>')
    o.append(f'<line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" stroke="black"/>')
    for i, (name, pts) in enumerate(series.items()):
        path = " ".join(f"{x(c):.1f},{y(v):.1f}" for c, v in pts)
        o.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS[name]}" stroke-width="2"/>')
        for c, v in pts:
            o.append(f'<circle cx="{x(c):.1f}" cy="{y(v):.1f}" r="3" fill="{COLOURS[name]}"/>')
        o.append(f'<rect x="{L + 12}" y="{T + 8 + 18 * i}" width="12" height="3" '
                 f'fill="{COLOURS[name]}"/>')
        o.append(f'<text x="{L + 30}" y="{T + 13 + 18 * i}">{LABELS[name]}</text>')
    o.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(o) + "\n")


if __name__ == "__main__":
    main()
