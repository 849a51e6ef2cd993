#!/usr/bin/env bash
# Alternating decode A/B: runs each named command ROUNDS times, in turn, appending
# `--json OUT/<name>-<round>.json` (both `frugal bench` and scripts/peer/llamacpp_bench.py take
# it), then prints each command's decode tok/s runs and median. Nothing else should run
# (AB_BEFORE, if set, runs before every run).
#   ROUNDS=5 scripts/decode_ab.sh OUT_DIR name1 'command 1' name2 'command 2' ...
# e.g. ours 'target/release/frugal -t 2 bench --prefill 16 --repeats 1 --decode-depth 512
#      --decode-tokens 128 --bandwidth-bytes 0'
#      llamacpp '.venv-peer/bin/python scripts/peer/llamacpp_bench.py --model M --threads 2
#      --prefill 16 --decode-depth 512 --decode-tokens 128'
set -euo pipefail
out="$1"; shift
mkdir -p "$out"
names=(); cmds=()
while [ $# -ge 2 ]; do names+=("$1"); cmds+=("$2"); shift 2; done
{ date -u +%FT%TZ; uptime; } > "$out/conditions.txt"
for r in $(seq 1 "${ROUNDS:-5}"); do
  for i in "${!names[@]}"; do
    # AB_BEFORE: a command run before every run (e.g. to pause other jobs again).
    if [ -n "${AB_BEFORE:-}" ]; then bash -c "$AB_BEFORE" >/dev/null 2>&1 || true; fi
    bash -c "${cmds[$i]} --json $out/${names[$i]}-$r.json" >"$out/${names[$i]}-$r.log" 2>&1
  done
  echo "round $r done $(date +%T)" >&2
done
uptime >> "$out/conditions.txt"
printf '%s\n' "${names[@]}" > "$out/names.txt"
for i in "${!names[@]}"; do echo "${names[$i]}: ${cmds[$i]}"; done > "$out/commands.txt"
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
names = out.joinpath("names.txt").read_text().split()
med = {}
for n in names:
    runs = [json.loads(p.read_text())["decode_tok_s"] for p in sorted(out.glob(f"{n}-*.json"))]
    med[n] = statistics.median(runs)
    print(f"{n:>12}: median {med[n]:7.2f} tok/s  runs {', '.join(f'{x:.1f}' for x in runs)}")
base = names[-1]
for n in names[:-1]:
    print(f"{n}/{base}: {med[n] / med[base]:.3f}")
PY
