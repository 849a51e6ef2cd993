#!/usr/bin/env python3
"""RSS of an idle `frugal serve` after every K of N sequential requests: a leak grows with the
request count, fragmentation levels off. One client, so the engine falls idle (and returns free
heap to the OS) after each request; RSS is read after --settle idle seconds.

  scripts/server/rss_trend.py --requests 400 --every 50 --policy full
"""
import argparse
import http.client
import json
import random
import subprocess
import time

from serverlib import free_port, rss_mib, start, wait_listening

WORDS = "the nation congress people government year states united world peace war law".split()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="target/release/frugal")
    ap.add_argument("--model")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--policy", default="full")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    model = args.model or subprocess.check_output(
        [args.binary, "fetch", "--print-path"], text=True).strip().splitlines()[-1]
    port = free_port()
    proc = start([args.binary, "--model", model, "serve", "--host", "127.0.0.1", "--port",
                  str(port), "--served-model-name", "m"])
    rng = random.Random(0)
    trend = []
    try:
        wait_listening(port, proc, "frugal serve")
        for i in range(1, args.requests + 1):
            content = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(20, 400)))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("POST", "/v1/chat/completions", json.dumps(
                {"model": "m", "max_tokens": args.max_tokens, "temperature": 0.7, "seed": i,
                 "messages": [{"role": "user", "content": content}]}),
                {"Content-Type": "application/json", "X-Frugal-Policy": args.policy})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status != 200:
                raise SystemExit(f"request {i}: HTTP {resp.status}")
            if i % args.every == 0:
                time.sleep(args.settle)
                trend.append((i, round(rss_mib(proc.pid), 1)))
                print(f"{i:5d} requests: RSS {trend[-1][1]:.1f} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"policy": args.policy, "max_tokens": args.max_tokens,
                       "rss_mib_after_requests": trend}, f, indent=1)


if __name__ == "__main__":
    main()
