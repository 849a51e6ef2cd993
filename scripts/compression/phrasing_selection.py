#!/usr/bin/env python3
"""Chooses the three question and three needle phrasings in use per user-format task from
dense runs over the whole pool (`frugal-eval-grid --task passkey-user-pool --task
kv-retrieval-user-pool --policy full --seed 0 ...`, one file per length): per task, over every
length given, the three questions and the three needles with the most correct answers (ties:
the lower pool index). Only the dense model's answers enter, so no compression policy can fit
the choice. The pool design pairs each needle with two questions, so a needle's count also
carries its questions' (printed per length so that can be read).

  scripts/compression/phrasing_selection.py docs/results/compression-data/phrasing-pool-full-seed0-*-qa.json
"""
import collections
import json
import sys

totals = collections.defaultdict(lambda: {"question": [collections.Counter(), collections.Counter()],
                                          "needle": [collections.Counter(), collections.Counter()]})
for path in sys.argv[1:]:
    for cell in json.load(open(path))["cells"]:
        if cell["policy"] != "full":
            continue
        for kind in ("question", "needle"):
            right, seen = collections.Counter(), collections.Counter()
            for it in cell["items"]:
                seen[it[kind]] += 1
                right[it[kind]] += it["correct"]
            totals[cell["task"]][kind][0].update(right)
            totals[cell["task"]][kind][1].update(seen)
            print(f"{cell['task']} @{cell['length']} {cell['mode']}: {kind}s "
                  + ", ".join(f"{k}: {right[k]}/{seen[k]}" for k in sorted(seen)))
        total = sum(it["correct"] for it in cell["items"])
        print(f"{cell['task']} @{cell['length']}: {total}/{len(cell['items'])} correct overall")
for task, kinds in totals.items():
    for kind, (right, seen) in kinds.items():
        order = sorted(seen, key=lambda k: (-right[k], k))
        print(f"{task}, all lengths: {kind}s "
              + ", ".join(f"{k}: {right[k]}/{seen[k]}" for k in sorted(seen))
              + f" -> in use {sorted(order[:3])}")
