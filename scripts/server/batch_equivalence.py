#!/usr/bin/env python3
"""Continuous batching on a real model: greedy answers of requests under mixed policies, run
concurrently (so their steps share batched forward passes), against the same requests run one
at a time on the same server. Prints SAME/DIFF per request and the server's batch-size
histogram; exits non-zero on any difference. Standard library only.

  scripts/server/batch_equivalence.py --binary target/release/frugal \\
      --model ~/.cache/frugal/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

REQUESTS = [
    ("The history of the bicycle begins", "full"),
    ("Photosynthesis is the process", "kivi:bits=4"),
    ("A recipe for bread: first", "omnisparse:tau=0.9"),
    ("The capital of France is", "full"),
    ("Once upon a time in a small village", "kivi:bits=4,residual=16,group=16"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/frugal")
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cmd = [args.binary, "--model", args.model, "serve", "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "m", "--max-concurrent", str(len(REQUESTS)), "--prefill-chunk", "64"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def ask(prompt, policy):
        body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
                           "ignore_eos": True, "frugal": {"policy": policy}}).encode()
        req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())["choices"][0]["text"]

    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("server exited: " + server.stderr.read().decode(errors="replace"))
                time.sleep(0.2)
        alone = [ask(p, pol) for p, pol in REQUESTS]
        together = [None] * len(REQUESTS)

        def run(i):
            together[i] = ask(*REQUESTS[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(REQUESTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        diff = 0
        for (prompt, policy), a, b in zip(REQUESTS, alone, together):
            same = a == b
            diff += not same
            print(f"{'SAME' if same else 'DIFF'} {policy:36s} {a!r}" + ("" if same else f"\n     batched: {b!r}"))
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("frugal_batch_size_bucket") or line.startswith("frugal_batch_size_count"):
                    print(line)
    finally:
        server.terminate()
        server.wait(timeout=30)
    if diff:
        sys.exit(f"{diff} of {len(REQUESTS)} answers differ between batched and alone")


if __name__ == "__main__":
    main()
