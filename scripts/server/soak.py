#!/usr/bin/env python3
"""Soak test of `frugal serve`: mixed policies, random client disconnects, then a memory check.

N streaming clients send chat requests back to back for --seconds. Each request picks a policy
from --policies (sent in the `X-Frugal-Policy` header) and a prompt length at random; with
probability --disconnect the client hangs up after a random number of streamed chunks (a
planned disconnect, not an error). The same load runs for --warmup seconds first (allocator
arenas, batch buffers and the prefill/decode paths all reach their working size); its RSS
after --settle idle seconds is the baseline. After the soak stops and the server has been idle
for --settle seconds, the check reads:
  * errors: every outcome other than a whole answer, a planned disconnect or a planned
    429/503 (the server's admission answer when full);
  * RSS against its value after the warm-up: --max-rss-growth;
  * KV bytes still resident by policy and sequences still running, from /metrics: must be 0.

  scripts/server/soak.py --clients 8 --seconds 600 --json docs/results/server-data/soak.json
"""
import argparse
import collections
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

from serverlib import TruncatedStream, free_port, metrics, rss_mib, sse_events, start, wait_listening

POLICIES = ["full", "kivi:bits=4", "streaming:sink=4,window=256", "snapkv:ratio=0.5",
            "minicache", "omnisparse:tau=0.9"]
WORDS = ("the nation congress people government year states united world peace war law "
         "work new economy tax health children security freedom").split()


def series(text, prefix):
    """Sum of every sample whose series name starts with `prefix` (labels included)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def one_request(port, rng, max_tokens, disconnect):
    policy = rng.choice(POLICIES)
    words = rng.randrange(20, 600)
    content = "Summarise this: " + " ".join(rng.choice(WORDS) for _ in range(words))
    body = json.dumps({"model": "m", "stream": True, "max_tokens": max_tokens,
                       "temperature": 0.7, "seed": rng.randrange(1 << 30),
                       "messages": [{"role": "user", "content": content}]})
    hang_up_after = rng.randrange(0, 8) if rng.random() < disconnect else None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/v1/chat/completions", body,
                     {"Content-Type": "application/json", "X-Frugal-Policy": policy})
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            return f"http_{resp.status}"
        chunks = 0
        for ev in sse_events(resp):
            if "error" in ev:
                return "stream_error"
            chunks += 1
            if hang_up_after is not None and chunks >= hang_up_after:
                return "disconnect"
        return "ok"
    except TruncatedStream:
        return "truncated_stream"
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="target/release/frugal")
    ap.add_argument("--model", help="model path (default: the fetched default model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=60, help="seconds of the same load first")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--disconnect", type=float, default=0.2,
                    help="share of requests whose client hangs up mid-stream")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--settle", type=float, default=5, help="idle seconds before the memory check")
    ap.add_argument("--max-rss-growth", type=float, default=5.0, help="percent")
    ap.add_argument("--serve-args", default="--kv-budget 1G --max-queue 16")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    model = args.model or subprocess.check_output(
        [args.binary, "fetch", "--print-path"], text=True).strip().splitlines()[-1]
    port = free_port()
    threads = ["--threads", str(args.threads)] if args.threads else []
    cmd = ([args.binary, "--model", model] + threads +
           ["serve", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "m",
            "--max-concurrent", str(args.clients)] + args.serve_args.split())
    print("command:", " ".join(cmd), flush=True)
    server = start(cmd)
    try:
        wait_listening(port, server, "frugal serve")
        peak = [rss_mib(server.pid)]
        timeline = []

        def load(seconds, seed, outcomes):
            lock = threading.Lock()
            stop_at = time.perf_counter() + seconds

            def client(k):
                r = random.Random(seed + k)
                while time.perf_counter() < stop_at:
                    kind = one_request(port, r, args.max_tokens, args.disconnect)
                    with lock:
                        outcomes[kind] += 1
                    if kind.startswith("http_"):
                        time.sleep(1)

            def watch():
                while time.perf_counter() < stop_at:
                    peak[0] = max(peak[0], rss_mib(server.pid))
                    time.sleep(1)

            t0 = time.perf_counter()
            workers = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
            workers.append(threading.Thread(target=watch))
            for t in workers:
                t.start()
            last_print = t0
            while any(t.is_alive() for t in workers):
                time.sleep(1)
                if time.perf_counter() - last_print >= 60:
                    last_print = time.perf_counter()
                    rss = rss_mib(server.pid)
                    timeline.append((round(last_print - t0), round(rss, 1)))
                    with lock:
                        print(f"{last_print - t0:5.0f} s: {dict(outcomes)}; RSS {rss:.1f} MiB",
                              flush=True)
            return time.perf_counter() - t0

        warm = collections.Counter()
        load(args.warmup, 0, warm)
        time.sleep(args.settle)
        rss_warm = rss_mib(server.pid)
        print(f"warm-up: {dict(warm)}; RSS {rss_warm:.1f} MiB", flush=True)
        outcomes = collections.Counter()
        wall = load(args.seconds, 1000, outcomes)
        time.sleep(args.settle)
        text = metrics(port)
        rss_after = rss_mib(server.pid)
        kv_after = series(text, "frugal_kv_resident_bytes")
        running_after = series(text, "frugal_num_requests_running ")
        completion_tokens = series(text, "frugal_completion_tokens_total")
    finally:
        server.terminate()
        server.wait(timeout=60)

    planned = {"ok", "disconnect", "http_429", "http_503"}
    errors = {k: v for k, v in (outcomes + warm).items() if k not in planned}
    growth = 100.0 * (rss_after - rss_warm) / rss_warm
    result = {
        "clients": args.clients, "seconds": wall, "policies": POLICIES,
        "disconnect_share": args.disconnect, "max_tokens": args.max_tokens,
        "warmup_seconds": args.warmup, "warmup_outcomes": dict(warm),
        "outcomes": dict(outcomes), "requests": sum(outcomes.values()), "errors": sum(errors.values()),
        "error_kinds": errors, "completion_tokens": completion_tokens,
        "rss_post_warmup_mib": rss_warm, "rss_peak_mib": peak[0], "rss_after_mib": rss_after,
        "rss_growth_pct": growth, "kv_resident_bytes_after": kv_after,
        "rss_under_load_mib_every_60s": timeline,
        "running_after": running_after, "command": cmd,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "command"}, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    failed = []
    if errors:
        failed.append(f"unplanned errors {errors}")
    if growth > args.max_rss_growth:
        failed.append(f"RSS grew {growth:.1f} % (> {args.max_rss_growth} %)")
    if kv_after != 0 or running_after != 0:
        failed.append(f"{kv_after:.0f} KV bytes and {running_after:.0f} sequences left")
    if failed:
        sys.exit("soak failed: " + "; ".join(failed))
    print("soak passed")


if __name__ == "__main__":
    main()
