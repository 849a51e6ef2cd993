#!/usr/bin/env python3
"""Summary of scripts/batched_decode_ab.sh output: per build, n rounds, median tok/s of one
and of eight sequences, and the median and every value of the per-round 8-over-1 ratio."""
import collections
import statistics
import sys

runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    parts = line.split()
    if line.startswith("#") or len(parts) != 3:
        continue
    runs[parts[0]].append((float(parts[1]), float(parts[2])))
for label, v in runs.items():
    ratios = [b / a for a, b in v]
    print(f"{label}: n={len(v)} batch 1 median {statistics.median(a for a, _ in v):.1f} tok/s, "
          f"batch 8 median {statistics.median(b for _, b in v):.1f} tok/s, ratio median "
          f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
