#!/usr/bin/env python3
"""Writes docs/results/server.json from the raw results beside docs/results/server.md.

  scripts/server/server_json.py docs/results/server-data docs/results/server.json

Reads sweep.json (load_test.py --sweep), prefix_reuse.json (prefix_reuse.py), soak.json
(soak.py), lm_eval.json (lm_eval_check.py) and the repeat-*.json runs (load_test.py --sweep 1,8)
and keeps the figures the results page quotes:
{"clients": {"1": {"frugal_tok_s", "llamacpp_tok_s", "llama_server_tok_s"}, ...},
 "prefix_reuse_ttft_speedup", "soak": {"errors", "rss_growth_pct", ...}, "lm_eval": {...}}.
"""
import glob
import json
import os
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]

    def load(name):
        with open(os.path.join(src, name)) as f:
            return json.load(f)

    def per_level(sweep):
        clients = {}
        for c, e in sweep["clients"].items():
            clients[c] = {k: round(v, 2) for k, v in e.items() if k.endswith("_tok_s")}
            base = sweep["clients"].get("1", {}).get("frugal_tok_s")
            if base and "frugal_tok_s" in e:
                clients[c]["frugal_vs_its_1_client"] = round(e["frugal_tok_s"] / base, 3)
        return clients

    # The main sweep runs frugal with its prefix cache on (llama-server caches prompts by
    # default); the same sweep with frugal's prefix cache off is kept beside it.
    sweep = load("sweep.json")
    clients = per_level(sweep)
    no_cache = os.path.join(src, "sweep-no-prefix-cache.json")
    # Every frugal-only 1-and-8-client repeat beside the sweep, by file name (the name says
    # which commit it ran).
    repeats = {}
    for path in sorted(glob.glob(os.path.join(src, "repeat-*.json"))):
        with open(path) as f:
            c = json.load(f)["clients"]
        if "1" in c and "8" in c:
            repeats[os.path.basename(path)[:-5]] = round(
                c["8"]["frugal_tok_s"] / c["1"]["frugal_tok_s"], 3)
    prefix = load("prefix_reuse.json")
    soak = load("soak.json")
    lm = load("lm_eval.json")
    result = {
        "clients": clients,
        "sweep": {"seconds_per_level": sweep["seconds_per_level"], "threads": sweep["threads"],
                  "max_tokens": sweep["max_tokens"], "frugal_serve_args": sweep.get("frugal_serve_args")},
        "frugal_8_over_1_client_repeats": repeats,
        "clients_frugal_prefix_cache_off": per_level(load("sweep-no-prefix-cache.json"))
        if os.path.exists(no_cache) else None,
        "prefix_reuse_ttft_speedup": round(prefix["prefix_reuse_ttft_speedup"], 2),
        "prefix_reuse": {p: {"ttft_speedup": round(v["ttft_speedup"], 2), "n": v["n"],
                             "prompt_tokens": v["prompt_tokens"]}
                         for p, v in prefix["policies"].items()},
        "soak": {"errors": soak["errors"], "rss_growth_pct": round(soak["rss_growth_pct"], 2),
                 "requests": soak["requests"], "seconds": round(soak["seconds"]),
                 "clients": soak["clients"], "kv_resident_bytes_after": soak["kv_resident_bytes_after"]},
        "lm_eval": {"reference": {k: v for k, v in lm["reference"].items() if k != "samples"},
                    "runs": {p: {k: v for k, v in r.items()
                                 if k not in ("samples", "lm_eval_results")}
                             for p, r in lm["runs"].items()},
                    "items": lm["items"], "passed": lm["check"]["passed"]},
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
