#!/usr/bin/env python3
"""Markdown rows from `frugal eval` reports: python3 summarise.py FILE.json [FILE.json …]

Per cell: metric value with its 95 % interval, passkey accuracy by depth, the policy's mean key
and query kept fractions (from the `reports` the harness records), slimmed (layer, KV head)
pairs, and KV bytes held at the end against `full` in the same file.
"""
import json, sys

for path in sys.argv[1:]:
    r = json.load(open(path))
    full = {(c['task'], c['length']): c for c in r['cells'] if c['policy'] == 'full'}
    print(f"\n{path} (commit {r['run']['git_commit']}, {r['run']['samples']} samples, {r['run']['date_utc']})\n")
    print("| task | len | policy | value | 95% CI | by depth | keys kept | queries kept | slimmed heads | KV end vs full |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in r['cells']:
        reps = c.get('reports', [])
        mean = lambda k: sum(x[k] for x in reps) / len(reps) if reps else None
        keys, qs = mean('key_kept_fraction'), mean('query_kept_fraction')
        sl = f"{mean('slimmed_heads'):.1f}/{reps[0]['heads']}" if reps else "–"
        f = full.get((c['task'], c['length']))
        kv = f"{f['kv_end_bytes'] / c['kv_end_bytes']:.2f}×" if f else "–"
        dep = " ".join(f"{d['depth']}:{d['correct']}/{d['total']}" for d in c['by_depth']) or "–"
        fmt = lambda x: '–' if x is None else (f"{x:.3f}" if c['metric'] == 'perplexity' else f"{x:.2f}")
        print(f"| {c['task']} | {c['length']} | `{c['policy']}` | {fmt(c['value'])} | [{fmt(c['ci_low'])}, {fmt(c['ci_high'])}] | {dep} | "
              f"{'–' if keys is None else f'{keys:.1%}'} | {'–' if qs is None else f'{qs:.1%}'} | {sl} | {kv} |")
