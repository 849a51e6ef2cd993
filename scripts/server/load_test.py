#!/usr/bin/env python3
"""Bounded load test of `frugal serve` on loopback (standard library only).

Starts the server on a free 127.0.0.1 port, then for each round runs N client threads for M
seconds; each client sends streaming chat requests back to back. Prints throughput, latency
percentiles (time to first token, inter-token gap, whole request), errors by kind (only
planned 429/503 are acceptable) and the server's RSS before the load and after each round
(a leak shows as growth from round to round). Exits non-zero on unplanned errors.

  scripts/server/load_test.py --clients 4 --seconds 30 --rounds 2
"""
import argparse
import collections
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "List some good habits for studying.",
    "Describe the water cycle.",
]


def one_request(port, model, max_tokens, i, stats):
    body = json.dumps({
        "model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
    })
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            return ("http_%d" % resp.status, None)
        first, last, gaps, chunks, done = None, None, [], 0, False
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                return ("stream_error", None)
            if any(c.get("delta", {}).get("content") for c in ev["choices"]):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
                chunks += 1
        if not done:
            return ("truncated_stream", None)
        return ("ok", {"ttft": (first or time.perf_counter()) - t0, "latency": time.perf_counter() - t0,
                       "gaps": gaps, "chunks": chunks})
    except (OSError, http.client.HTTPException) as e:
        return (type(e).__name__, None)
    finally:
        conn.close()


def run_round(port, model, clients, seconds, max_tokens):
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()
    results = collections.Counter()
    ok = []

    def client(k):
        n = 0
        while time.perf_counter() < stop_at:
            kind, r = one_request(port, model, max_tokens, k * 100000 + n, None)
            n += 1
            with lock:
                results[kind] += 1
                if r:
                    ok.append(r)
            if kind.startswith("http_"):
                time.sleep(1)  # planned back-off on 429/503 (Retry-After)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, ok, time.perf_counter() - t0


def server_completion_tokens(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith("frugal_completion_tokens_total "):
            return float(line.split()[1])
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--binary", default="target/release/frugal")
    ap.add_argument("--model", help="model path (default: the fetched default model)")
    ap.add_argument("--serve-args", default="--max-concurrent 4 --kv-budget 512M",
                    help="extra flags for frugal serve")
    args = ap.parse_args()

    model_path = args.model or subprocess.check_output([args.binary, "fetch", "--print-path"], text=True).strip()
    port = free_port()
    cmd = [args.binary, "--model", model_path, "serve", "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "m"] + args.serve_args.split()
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    failed = False
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("server exited: " + server.stderr.read().decode())
                time.sleep(0.1)
        one_request(port, "m", 8, 0, None)  # warm-up: first allocations, page-ins
        print(f"command: {' '.join(cmd)}")
        print(f"load: {args.clients} concurrent streaming clients x {args.seconds:g} s x {args.rounds} rounds, "
              f"max_tokens {args.max_tokens}")
        print(f"server RSS before load: {rss_mib(server.pid):.1f} MiB")
        for rnd in range(1, args.rounds + 1):
            tokens_before = server_completion_tokens(port)
            results, ok, wall = run_round(port, "m", args.clients, args.seconds, args.max_tokens)
            tokens = server_completion_tokens(port) - tokens_before
            time.sleep(1)
            ttft = [r["ttft"] for r in ok]
            lat = [r["latency"] for r in ok]
            gaps = [g for r in ok for g in r["gaps"]]
            print(f"round {rnd}: {sum(results.values())} requests in {wall:.1f} s, {len(ok)} ok; "
                  f"{tokens:.0f} tokens generated = {tokens / wall:.1f} tok/s, {len(ok) / wall:.2f} req/s")
            print(f"  TTFT s      p50 {pct(ttft, 50):.3f}  p90 {pct(ttft, 90):.3f}  p99 {pct(ttft, 99):.3f}")
            print(f"  inter-token p50 {pct(gaps, 50) * 1000:.1f} ms  p90 {pct(gaps, 90) * 1000:.1f} ms  "
                  f"p99 {pct(gaps, 99) * 1000:.1f} ms")
            print(f"  request s   p50 {pct(lat, 50):.2f}  p90 {pct(lat, 90):.2f}  p99 {pct(lat, 99):.2f}")
            errors = {k: v for k, v in results.items() if k != "ok"}
            print(f"  errors by kind: {errors or 'none'}")
            print(f"  server RSS after round {rnd} (1 s idle): {rss_mib(server.pid):.1f} MiB")
            if any(k not in ("http_429", "http_503") for k in errors):
                failed = True
    finally:
        server.terminate()
        server.wait(timeout=30)
    if failed:
        sys.exit("unplanned errors (only 429/503 are planned)")


if __name__ == "__main__":
    main()
