#!/usr/bin/env python3
"""Draws the scaling bench's rows (JSON written by `frugal zpressor bench --out`) as an SVG: time and
peak memory against the number of views K, one line per path, log-log axes. Runs that were
skipped or ran out of memory are marked with a cross at the top of the plot.

usage: plot_scaling.py ROWS.json [ROWS2.json ...] OUT.svg
"""
import json
import math
import sys


def panel(rows_by_file, key, title, x0, y0, w, h):
    parts = []
    pts = [(r["views"], r[key]) for rows, _ in rows_by_file for r in rows
           if r["status"] == "ok" and r.get(key)]
    if not pts:
        return ""
    ks = sorted({r["views"] for rows, _ in rows_by_file for r in rows})
    lx0, lx1 = math.log10(min(ks)), math.log10(max(ks))
    vals = [v for _, v in pts]
    ly0, ly1 = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals))) + 0.3
    sx = lambda k: x0 + 50 + (math.log10(k) - lx0) / max(lx1 - lx0, 1e-9) * (w - 70)
    sy = lambda v: y0 + h - 30 - (math.log10(v) - ly0) / max(ly1 - ly0, 1e-9) * (h - 60)
    parts.append(f'<text x="{x0 + w / 2}" y="{y0 + 15}" text-anchor="middle" font-size="13">{title}</text>')
    parts.append(f'<line x1="{x0 + 50}" y1="{y0 + h - 30}" x2="{x0 + w - 20}" y2="{y0 + h - 30}" stroke="black"/>')
    parts.append(f'<line x1="{x0 + 50}" y1="{y0 + 25}" x2="{x0 + 50}" y2="{y0 + h - 30}" stroke="black"/>')
    for k in ks:
        parts.append(f'<text x="{sx(k)}" y="{y0 + h - 15}" text-anchor="middle" font-size="10">{k}</text>')
    for e in range(int(ly0), int(math.ceil(ly1))):
        parts.append(f'<text x="{x0 + 45}" y="{sy(10 ** e) + 3}" text-anchor="end" font-size="10">1e{e}</text>')
        parts.append(f'<line x1="{x0 + 50}" y1="{sy(10 ** e)}" x2="{x0 + w - 20}" y2="{sy(10 ** e)}" stroke="#ddd"/>')
    colours = {"zpressor": "#1f77b4", "baseline": "#d62728"}
    dashes = ["", "5,3"]
    for fi, (rows, label) in enumerate(rows_by_file):
        for path, col in colours.items():
            ok = [(r["views"], r[key]) for r in rows if r["path"] == path and r["status"] == "ok" and r.get(key)]
            if ok:
                d = " ".join(f"{sx(k):.1f},{sy(v):.1f}" for k, v in ok)
                parts.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="2" stroke-dasharray="{dashes[fi % 2]}"/>')
                for k, v in ok:
                    parts.append(f'<circle cx="{sx(k):.1f}" cy="{sy(v):.1f}" r="3" fill="{col}"/>')
            for r in rows:
                if r["path"] == path and r["status"] != "ok":
                    parts.append(f'<text x="{sx(r["views"]):.1f}" y="{y0 + 35}" text-anchor="middle" fill="{col}" font-size="12">x</text>')
    return "\n".join(parts)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    files, out = sys.argv[1:-1], sys.argv[-1]
    rows_by_file = []
    for f in files:
        d = json.load(open(f))
        rows_by_file.append((d["rows"], d.get("device", f)))
    w, h = 420, 300
    body = panel(rows_by_file, "ms", "time (ms) vs views K", 0, 0, w, h)
    body += panel(rows_by_file, "peak_mb", "peak memory (MiB) vs views K", w, 0, w, h)
    legend = ('<text x="60" y="318" font-size="11" fill="#1f77b4">ZPressor + stand-in over 6 anchors</text>'
              '<text x="300" y="318" font-size="11" fill="#d62728">stand-in over all K views</text>'
              '<text x="520" y="318" font-size="11">x = skipped (over the memory cap) or out of memory; '
              + ", ".join(f"{'solid' if i % 2 == 0 else 'dashed'}: {lab}" for i, (_, lab) in enumerate(rows_by_file))
              + '</text>')
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 30}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n{body}\n{legend}\n</svg>\n'
    open(out, "w").write(svg)


if __name__ == "__main__":
    main()
