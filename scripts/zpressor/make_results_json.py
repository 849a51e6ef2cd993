#!/usr/bin/env python3
"""Assembles docs/results/zpressor.json from the raw data in docs/results/zpressor-data/:
parity.txt (the parity test's printed figures), scaling-<device>*.json (frugal zpressor bench --out) and
toy-eval.json (frugal zpressor eval --out). Keys follow the results page: parity_max_abs_f32,
scaling.{cpu,gpu}.{K}.{ms,peak_mb} (zpressor path, with the baseline beside it; filled from
scaling-cpu.json / scaling-gpu.json, the full-size runs; other runs under scaling_other_runs), toy.{zpressor,baseline}.{K}: PSNR.

usage: make_results_json.py [DATA_DIR] [OUT]
"""
import glob
import json
import os
import re
import sys

data = sys.argv[1] if len(sys.argv) > 1 else "docs/results/zpressor-data"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/results/zpressor.json"
res = {}

par = open(os.path.join(data, "parity.txt")).read()
cases = {m[0]: {"max_abs_vs_f32": float(m[1]), "max_abs_vs_reference_bf16": float(m[2])}
         for m in re.findall(r"parity (\S+): max\|Δ\| vs reference f32 = (\S+), vs reference bf16 path = (\S+)", par)}
res["parity_max_abs_f32"] = max(c["max_abs_vs_f32"] for c in cases.values())
res["parity_cases"] = cases

res["scaling"] = {}
for f in sorted(glob.glob(os.path.join(data, "scaling-*.json"))):
    d = json.load(open(f))
    dev = "gpu" if d["device"] == "cuda" else "cpu"
    table = {}
    for r in d["rows"]:
        e = table.setdefault(str(r["views"]), {})
        if r["path"] == "zpressor":
            e.update({"ms": r["ms"], "peak_mb": r["peak_mb"], "status": r["status"],
                      "compressor_ms": r["compressor_ms"]})
        else:
            e["baseline"] = {"ms": r["ms"], "peak_mb": r["peak_mb"], "status": r["status"],
                             "estimate_mb": r["estimate_mb"]}
    name = os.path.basename(f)[len("scaling-"):-len(".json")]
    if name in ("cpu", "gpu"):
        # the full-size, quiet runs: the shape, scaling.<dev>.<K> = {ms, peak_mb, ...}
        res["scaling"][name] = table
    else:
        # other runs (reduced sizes, under load) go beside them, labelled
        res.setdefault("scaling_other_runs", {})[name] = {
            "device": dev, "label": d.get("label", ""), "config": d["config"], "by_views": table}
res["scaling"].setdefault("cpu", {})
res["scaling"].setdefault("gpu", {})

toy = os.path.join(data, "toy-eval.json")
if os.path.exists(toy):
    d = json.load(open(toy))
    res["toy"] = {k: {str(r["views"]): r["psnr"] for r in v["rows"]} for k, v in d.items()}
    res["toy_rows"] = {k: v["rows"] for k, v in d.items()}
json.dump(res, open(out, "w"), indent=1)
print("wrote", out)
