"""Summarise `kernel-check --perf --json FILE` output: the median, over the perf grid's cases of
each phase, of a path's kernel time relative to the dense kernel on the same inputs.

Usage: python3 scripts/kernel-consistency/perf_summary.py FILE
"""
import json
import statistics
import sys
from collections import defaultdict

rows = json.load(open(sys.argv[1]))
by = defaultdict(list)
paths = []
for r in rows:
    phase = r["case"].split()[2]
    by[(r["path"], phase)].append(r["relative"])
    if r["path"] not in paths:
        paths.append(r["path"])
print("| path | prefill 1024 | chunk 256 after 1024 | decode after 4096 |")
print("|---|---|---|---|")
for p in paths:
    cells = []
    for ph in ["Prefill", "Chunked", "Decode"]:
        v = by.get((p, ph))
        cells.append("—" if not v else f"{statistics.median(v):.2f} (n={len(v)})")
    print(f"| `{p}` | " + " | ".join(cells) + " |")
