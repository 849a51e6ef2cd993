#!/usr/bin/env bash
# A/B speed of two `frugal` binaries in one run: `frugal bench` alternates between them ROUNDS
# times (A, B, A, B, …) on the same model and thread count, so drift in machine load hits both;
# each run's JSON is kept, and the summary gives per-figure medians and the B/A ratio.
#
#   scripts/bench_ab.sh OLD_BIN NEW_BIN OUT_DIR [ROUNDS=3] [extra `frugal bench` flags…]
set -euo pipefail
a="$1"; b="$2"; out="$3"; rounds="${4:-3}"; shift 4 || shift $#
mkdir -p "$out"
uptime > "$out/uptime-start.txt"
for r in $(seq 1 "$rounds"); do
  for side in a b; do
    bin="$a"; [ "$side" = b ] && bin="$b"
    "$bin" --threads 2 bench --json "$out/$side-$r.json" "$@" >/dev/null
    echo "round $r $side done" >&2
  done
done
uptime > "$out/uptime-end.txt"
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(side):
    return [json.load(open(f"{out}/{side}-{r}.json")) for r in range(1, rounds + 1)]
a, b = load("a"), load("b")
rows = {}
for n in a[0]["prefill_tok_s"]:
    rows[f"prefill_{n}_tok_s"] = ([x["prefill_tok_s"][n] for x in a], [x["prefill_tok_s"][n] for x in b])
rows["decode_tok_s"] = ([x["decode_tok_s"] for x in a], [x["decode_tok_s"] for x in b])
rows["peak_rss_mb"] = ([x["peak_rss_bytes"] / 2**20 for x in a], [x["peak_rss_bytes"] / 2**20 for x in b])
summary = {k: {"a_median": statistics.median(va), "b_median": statistics.median(vb),
               "b_over_a": statistics.median(vb) / statistics.median(va), "a_runs": va, "b_runs": vb}
           for k, (va, vb) in rows.items()}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print("| figure | A (median) | B (median) | B / A |\n|---|---|---|---|")
for k, v in summary.items():
    print(f"| {k} | {v['a_median']:.1f} | {v['b_median']:.1f} | {v['b_over_a']:.3f} |")
PY
