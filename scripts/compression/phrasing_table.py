#!/usr/bin/env python3
"""Markdown rows per (task, length) cell of frugal-eval-grid reports with per-item results:
correct / n, accuracy, 95 % Wilson interval, and the counts per question, needle and depth.

  scripts/compression/phrasing_table.py docs/results/compression-data/phrasings/full-in-use-seed1-*-qa.json
"""
import json,sys,collections,math
def wilson(k,n,z=1.96):
    if n==0: return (float('nan'),)*2
    p=k/n; d=1+z*z/n; c=(p+z*z/(2*n))/d; h=z*math.sqrt(p*(1-p)/n+z*z/(4*n*n))/d
    return c-h,c+h
for f in sys.argv[1:]:
    d=json.load(open(f))
    for c in d['cells']:
        it=c['items']; k=sum(x['correct'] for x in it); n=len(it)
        q=collections.defaultdict(lambda:[0,0]); nd=collections.defaultdict(lambda:[0,0]); dp=collections.defaultdict(lambda:[0,0])
        for x in it:
            q[x['question']][0]+=x['correct']; q[x['question']][1]+=1
            nd[x['needle']][0]+=x['correct']; nd[x['needle']][1]+=1
            if x.get('depth') is not None: dp[x['depth']][0]+=x['correct']; dp[x['depth']][1]+=1
        lo,hi=wilson(k,n)
        fmt=lambda m: ', '.join(f"{a}/{b}" for _,(a,b) in sorted(m.items()))
        print(f"| {c['task']} | {c['length']} | {k}/{n} | {k/n:.2f} | [{lo:.2f}, {hi:.2f}] | {fmt(q)} (q {sorted(q)}) | {fmt(nd)} (n {sorted(nd)}) | {fmt(dp) if dp else '—'} |")
