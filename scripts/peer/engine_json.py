#!/usr/bin/env python3
"""Write docs/results/engine.json from the bench JSONs of one frugal-vs-llama.cpp run per model.

Usage: engine_json.py OUT.json NAME=DIR [NAME=DIR ...]
Each DIR holds frugal.json and llamacpp.json written by scripts/bench_vs_llamacpp.sh
(OURS_JSON / THEIRS_JSON). Ratios are frugal / llama.cpp: above 1 is better for tok/s, below 1
is better for peak RSS. Standard library only.
"""
import json
import pathlib
import sys


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out = {}
    for arg in argv[2:]:
        name, _, d = arg.partition("=")
        d = pathlib.Path(d)
        ours = json.loads((d / "frugal.json").read_text())
        theirs = json.loads((d / "llamacpp.json").read_text())
        entry = {
            "decode_ratio": ours["decode_tok_s"] / theirs["decode_tok_s"],
            "prefill_ratio_8192": ours["prefill_tok_s"]["8192"] / theirs["prefill_tok_s"]["8192"],
            "peak_rss_ratio": ours["peak_rss_bytes"] / theirs["peak_rss_bytes"],
            "prefill_ratio": {
                n: ours["prefill_tok_s"][n] / theirs["prefill_tok_s"][n]
                for n in ours["prefill_tok_s"]
                if n in theirs["prefill_tok_s"]
            },
            "frugal": {
                "decode_tok_s": ours["decode_tok_s"],
                "prefill_tok_s": ours["prefill_tok_s"],
                "peak_rss_bytes": ours["peak_rss_bytes"],
                "kv_dtype": ours.get("kv_dtype"),
            },
            "llamacpp": {
                "decode_tok_s": theirs["decode_tok_s"],
                "prefill_tok_s": theirs["prefill_tok_s"],
                "peak_rss_bytes": theirs["peak_rss_bytes"],
                "version": theirs.get("version"),
            },
            "threads": ours["threads"],
            "decode_depth": ours["decode_depth"],
            "decode_tokens": ours["decode_tokens"],
            "data": str(d),
        }
        bw = ours.get("read_bandwidth")
        per_token = ours.get("decode_bytes_per_token")
        if bw and per_token:
            used = per_token * ours["decode_tok_s"] / 1e9
            entry["read_bandwidth_gb_s"] = bw["best_gb_s"]
            entry["decode_bytes_per_token"] = per_token
            entry["decode_gb_s"] = used
            entry["decode_bandwidth_fraction"] = used / bw["best_gb_s"]
            entry["llamacpp_bandwidth_fraction"] = (
                per_token * theirs["decode_tok_s"] / 1e9 / bw["best_gb_s"]
            )
        out[name] = entry
    pathlib.Path(argv[1]).write_text(json.dumps(out, indent=2) + "\n")
    for name, e in out.items():
        print(
            f"{name}: decode {e['decode_ratio']:.3f}x, prefill 8192 {e['prefill_ratio_8192']:.3f}x, "
            f"peak RSS {e['peak_rss_ratio']:.3f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
