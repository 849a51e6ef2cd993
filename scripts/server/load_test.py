#!/usr/bin/env python3
"""Bounded load test of `frugal serve` on loopback (standard library only).

Starts the server on a free 127.0.0.1 port, then for each round runs N client threads for M
seconds; each client sends streaming chat requests back to back. Prints throughput, latency
percentiles (time to first token, inter-token gap, whole request), errors by kind (only
planned 429/503 are acceptable) and the server's RSS before the load and after each round
(a leak shows as growth from round to round). Exits non-zero on unplanned errors.

  scripts/server/load_test.py --clients 4 --seconds 30 --rounds 2

Sweep mode: the same streaming clients at each concurrency of --sweep, against frugal serve
and, with --llamacpp, against llama-cpp-python's OpenAI-compatible server (`python -m
llama_cpp.server`, from the peer venv of scripts/peer/install_llamacpp.sh; it serves one
request at a time) and, with --llama-server BIN, against llama.cpp's own `llama-server` with as
many parallel slots as frugal's --max-concurrent (continuous batching; built by
scripts/peer/build_llama_server.sh), all on the same GGUF with the same thread count, in one
invocation. Every server generates exactly max_tokens per request (`ignore_eos`) except
llama_cpp.server, which has no such option and stops at end of sequence: its tok/s counts
the tokens it did generate. Every request is written to --raw as one JSON line; --json gets
the summary ({"clients": {"1": {"frugal_tok_s": ..., "llamacpp_tok_s": ...,
"llama_server_tok_s": ...}, ...}}) with each percentile's n.

  scripts/server/load_test.py --sweep 1,2,4,8,16 --seconds 30 --threads 2 --llamacpp \
      --llama-server .venv-peer/llama-server/bin/llama-server \
      --serve-args "--kv-budget 512M --prefix-cache-bytes 64M --prefix-block 16" \
      --raw docs/results/server-data/sweep.jsonl --json docs/results/server-data/sweep.json

(llama-server reuses a slot's cached prompt by default; `--prefix-cache-bytes` gives frugal the
same, `--prefix-block 16` lets prompts of a few dozen tokens reach a cached block.)
"""
import argparse
import collections
import http.client
import json
import os
import subprocess
import sys
import threading
import time

from serverlib import TruncatedStream, free_port, metrics, rss_mib, sse_events, start, wait_listening


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


def one_request(port, model, max_tokens, i, stats, extra=None):
    req = {
        "model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
    }
    req.update(extra or {})
    body = json.dumps(req)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            return ("http_%d" % resp.status, None)
        first, last, gaps, chunks = None, None, [], 0
        usage_tokens = None
        for ev in sse_events(resp):
            if "error" in ev:
                return ("stream_error", None)
            if ev.get("usage"):
                usage_tokens = ev["usage"].get("completion_tokens")
            if any(c.get("delta", {}).get("content") for c in ev["choices"]):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
                chunks += 1
        return ("ok", {"ttft": (first or time.perf_counter()) - t0, "latency": time.perf_counter() - t0,
                       "gaps": gaps, "chunks": chunks,
                       "tokens": usage_tokens if usage_tokens is not None else chunks,
                       "start": t0})
    except TruncatedStream:
        return ("truncated_stream", None)
    except (OSError, http.client.HTTPException) as e:
        return (type(e).__name__, None)
    finally:
        conn.close()


def run_round(port, model, clients, seconds, max_tokens, extra=None):
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()
    results = collections.Counter()
    ok = []

    def client(k):
        n = 0
        while time.perf_counter() < stop_at:
            kind, r = one_request(port, model, max_tokens, k * 100000 + n, None, extra)
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
    for line in metrics(port).splitlines():
        if line.startswith("frugal_completion_tokens_total "):
            return float(line.split()[1])
    return 0.0


def summarise(server, clients, ok, results, wall):
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    errors = {k: v for k, v in results.items() if k != "ok"}
    return {
        "server": server, "clients": clients, "requests_ok": len(ok), "errors": errors,
        "wall_s": wall, "tokens": tokens, "tok_s": tokens / wall if wall > 0 else float("nan"),
        "ttft_s": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99), "n": len(ttft)},
        "itl_ms": {"p50": pct(gaps, 50) * 1000, "p90": pct(gaps, 90) * 1000,
                   "p99": pct(gaps, 99) * 1000, "n": len(gaps)},
    }


def sweep_server(name, port, proc, args, levels, extra, raw):
    wait_listening(port, proc, name)
    one_request(port, "m", 8, 0, None, extra)  # warm-up
    rows = []
    for c in levels:
        results, ok, wall = run_round(port, "m", c, args.seconds, args.max_tokens, extra)
        for r in ok:
            raw.write(json.dumps({"server": name, "clients": c, "ttft_s": r["ttft"],
                                  "latency_s": r["latency"], "tokens": r["tokens"],
                                  "itl_s": r["gaps"]}) + "\n")
        row = summarise(name, c, ok, results, wall)
        rows.append(row)
        print(f"{name:9s} {c:3d} clients: {row['tok_s']:8.2f} tok/s  {row['requests_ok']} ok  "
              f"TTFT p50 {row['ttft_s']['p50']:.3f} s (n={row['ttft_s']['n']})  "
              f"ITL p50/p90/p99 {row['itl_ms']['p50']:.1f}/{row['itl_ms']['p90']:.1f}/"
              f"{row['itl_ms']['p99']:.1f} ms (n={row['itl_ms']['n']})  errors {row['errors'] or 'none'}",
              flush=True)
    return rows


def without_flags(argv, names):
    """`argv` without the given `--flag value` pairs (the sweep sets them itself)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not any(a.startswith(n + "=") for n in names):
            out.append(a)
    return out


def run_sweep(args, model_path):
    levels = [int(x) for x in args.sweep.split(",") if x.strip()]
    most = max(levels)
    env = dict(os.environ)
    if args.threads:
        env["RAYON_NUM_THREADS"] = str(args.threads)
    raw = open(args.raw, "w") if args.raw else open(os.devnull, "w")
    summary = {"clients": {str(c): {} for c in levels}, "max_tokens": args.max_tokens,
               "seconds_per_level": args.seconds, "threads": args.threads, "model": model_path,
               "frugal_serve_args": args.serve_args}
    servers = [("frugal", None)]
    if args.llamacpp:
        servers.append(("llamacpp", None))
    if args.llama_server:
        servers.append(("llama_server", None))
    only = set(args.only.split(",")) if args.only else None
    for name, _ in servers:
        if only and name not in only:
            continue
        port = free_port()
        if name == "frugal":
            threads = ["--threads", str(args.threads)] if args.threads else []
            cmd = [args.binary, "--model", model_path] + threads + [
                   "serve", "--host", "127.0.0.1", "--port",
                   str(port), "--served-model-name", "m", "--max-concurrent", str(most),
                   "--max-queue", str(most)] + without_flags(args.serve_args.split(),
                                                            ("--max-concurrent", "--max-queue"))
            # Exactly max_tokens per request, so both servers' requests are the same length
            # where llama.cpp's also runs to the limit.
            extra = {"ignore_eos": True, "stream_options": {"include_usage": True}}
        elif name == "llama_server":
            cmd = [args.llama_server, "-m", model_path, "--host", "127.0.0.1", "--port", str(port),
                   "--alias", "m", "-np", str(most), "-c", str(args.slot_ctx * most)]
            if args.threads:
                cmd += ["-t", str(args.threads), "-tb", str(args.threads)]
            extra = {"ignore_eos": True, "stream_options": {"include_usage": True}}
        else:
            cmd = [args.llamacpp_python, "-m", "llama_cpp.server", "--model", model_path, "--host",
                   "127.0.0.1", "--port", str(port), "--model_alias", "m"]
            if args.threads:
                cmd += ["--n_threads", str(args.threads)]
            cmd += args.llamacpp_args.split()
            extra = {}
        print(f"command: {' '.join(cmd)}", flush=True)
        proc = start(cmd, env)
        try:
            rows = sweep_server(name, port, proc, args, levels, extra, raw)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        for row in rows:
            entry = summary["clients"][str(row["clients"])]
            entry[f"{name}_tok_s"] = row["tok_s"]
            entry[name] = row
    raw.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    base = summary["clients"].get(str(min(levels)), {}).get("frugal_tok_s")
    for c in levels:
        e = summary["clients"][str(c)]
        line = f"{c:3d} clients: frugal {e.get('frugal_tok_s', float('nan')):.2f} tok/s"
        if base:
            line += f" ({e.get('frugal_tok_s', 0) / base:.2f}x its {min(levels)}-client figure)"
        if "llamacpp_tok_s" in e:
            line += f", llama.cpp {e['llamacpp_tok_s']:.2f} tok/s"
        print(line)
    if any(r for c in summary["clients"].values() for k, r in c.items()
           if isinstance(r, dict) and any(e not in ("http_429", "http_503") for e in r["errors"])):
        sys.exit("unplanned errors (only 429/503 are planned)")


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
    ap.add_argument("--sweep", help="comma-separated client counts, e.g. 1,2,4,8,16 (sweep mode)")
    ap.add_argument("--threads", type=int, default=0,
                    help="compute threads for both servers (RAYON_NUM_THREADS / --n_threads); 0 = their default")
    ap.add_argument("--llamacpp", action="store_true",
                    help="also sweep llama_cpp.server (pip install 'llama-cpp-python[server]') on the same GGUF")
    ap.add_argument("--llamacpp-args", default="--n_ctx 2048 --interrupt_requests False",
                    help="extra flags for llama_cpp.server (by default it interrupts a running "
                    "request when another arrives; here they queue)")
    ap.add_argument("--llamacpp-python", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        ".venv-peer", "bin", "python"), help="the python that has llama-cpp-python[server]")
    ap.add_argument("--llama-server", help="sweep mode: also sweep this llama.cpp llama-server binary")
    ap.add_argument("--only", help="sweep mode: comma-separated servers to run (frugal, llamacpp, "
                    "llama_server); the others are skipped")
    ap.add_argument("--slot-ctx", type=int, default=1024,
                    help="llama-server's context per slot (its -c is this times the slots)")
    ap.add_argument("--raw", help="sweep mode: write one JSON line per request here")
    ap.add_argument("--json", help="sweep mode: write the summary here")
    args = ap.parse_args()

    model_path = args.model or subprocess.check_output([args.binary, "fetch", "--print-path"], text=True).strip()
    if args.sweep:
        if args.llamacpp and subprocess.run(
                [args.llamacpp_python, "-c", "import llama_cpp.server.app"],
                capture_output=True).returncode != 0:
            sys.exit(f"--llamacpp needs llama-cpp-python[server] in {args.llamacpp_python} "
                     "(scripts/peer/install_llamacpp.sh)")
        run_sweep(args, model_path)
        return
    port = free_port()
    cmd = [args.binary, "--model", model_path, "serve", "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "m"] + args.serve_args.split()
    server = start(cmd)
    failed = False
    try:
        wait_listening(port, server, "frugal serve")
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
