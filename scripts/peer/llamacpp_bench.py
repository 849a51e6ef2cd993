#!/usr/bin/env python3
"""Speed-peer benchmark: llama.cpp (via llama-cpp-python) on a GGUF, with the
same protocol as `frugal bench`.

Protocol (frugal implements the same):
  * prompt ids are synthetic: token i = 1000 + (i * 7919) % 40000
  * prefill tok/s at N: KV cache cleared, one `eval` of the N ids (one batch,
    one ubatch: n_batch = n_ubatch >= N); 1 warm-up run at 512, then 2 timed
    runs per N; the best run gives tok/s, both runs are reported.
  * decode tok/s: KV cleared, eval the first `decode_depth` ids, then
    `decode_tokens` single-token evals, each feeding the argmax of the previous
    step's last logits (greedy, no EOS stop); tok/s = decode_tokens / total time.
  * peak RSS = ru_maxrss (bytes) at the end; RSS after load = VmRSS right after
    the model + context are created.
  * n_threads = n_threads_batch = --threads.

Run with the peer venv's python (scripts/peer/install_llamacpp.sh).
"""
import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def prompt_ids(n):
    return [1000 + (i * 7919) % 40000 for i in range(n)]


def vm_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def peak_rss_bytes():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return r if sys.platform == "darwin" else r * 1024


def cpu_s():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GGUF path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", default="512,2048,8192", help="comma-separated prompt lengths")
    ap.add_argument("--decode-depth", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=2, help="timed prefill runs per N (best is reported)")
    ap.add_argument("--warmup", type=int, default=512, help="warm-up prefill length (0 = none)")
    ap.add_argument("--flash-attn", choices=["on", "off"], default="on",
                    help="llama.cpp flash attention. llama.cpp's own default (auto) resolves to on "
                         "for the CPU backend; llama-cpp-python's default is off. Default here: on")
    ap.add_argument("--json", help="write the result JSON here")
    ap.add_argument("--verbose", action="store_true", help="let llama.cpp log to stderr")
    args = ap.parse_args()

    prefill_ns = [int(x) for x in args.prefill.split(",") if x.strip()]
    max_prefill = max(prefill_ns + [args.warmup, args.decode_depth])
    decode_ctx = args.decode_depth + args.decode_tokens
    n_ctx = max(max_prefill, decode_ctx)
    # One eval must take the whole prompt as a single batch and a single ubatch.
    n_batch = max_prefill

    loadavg_start = loadavg()
    t0 = time.perf_counter()
    llm = Llama(
        model_path=args.model,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=0,
        logits_all=False,
        flash_attn=(args.flash_attn == "on"),
        verbose=args.verbose,
    )
    load_s = time.perf_counter() - t0
    rss_after_load = vm_rss_bytes()
    n_vocab = llm.n_vocab()
    cp = llm.context_params
    assert cp.n_batch >= max_prefill and cp.n_ubatch >= max_prefill, (cp.n_batch, cp.n_ubatch)
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)

    def clear():
        llm.reset()
        llama_cpp.llama_memory_clear(mem, True)

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    log(f"[llamacpp_bench] llama-cpp-python {llama_cpp.__version__}, load {load_s:.2f} s, "
        f"n_ctx={llm.n_ctx()} n_batch={cp.n_batch} n_ubatch={cp.n_ubatch} threads={args.threads} "
        f"flash_attn={args.flash_attn}, rss after load {rss_after_load / 2**20:.1f} MiB")

    # CPU-share of each timed phase: process CPU seconds / (wall * threads).
    # Near 1.0 means the threads had the cores; well below 1.0 means other load
    # on the machine stole time and the figure is pessimistic.
    cpu_share = {}

    def timed_prefill(n, key=None):
        ids = prompt_ids(n)
        clear()
        c = cpu_s()
        t = time.perf_counter()
        llm.eval(ids)
        dt = time.perf_counter() - t
        cpu_share.setdefault(key or str(n), []).append(round((cpu_s() - c) / (dt * args.threads), 3))
        return dt

    if args.warmup > 0:
        w = timed_prefill(args.warmup, key="warmup")
        log(f"[llamacpp_bench] warm-up prefill {args.warmup}: {w:.3f} s")

    prefill_tok_s = {}
    prefill_runs_s = {}
    for n in prefill_ns:
        runs = [timed_prefill(n) for _ in range(args.runs)]
        prefill_runs_s[str(n)] = runs
        prefill_tok_s[str(n)] = n / min(runs)
        log(f"[llamacpp_bench] prefill {n}: runs {', '.join(f'{r:.3f}' for r in runs)} s -> "
            f"{prefill_tok_s[str(n)]:.1f} tok/s (cpu share {cpu_share[str(n)]})")

    # Decode.
    clear()
    llm.eval(prompt_ids(args.decode_depth))
    generated = []
    c = cpu_s()
    t = time.perf_counter()
    for _ in range(args.decode_tokens):
        tok = int(np.argmax(last_logits()))
        generated.append(tok)
        llm.eval([tok])
    decode_s = time.perf_counter() - t
    cpu_share["decode"] = round((cpu_s() - c) / (decode_s * args.threads), 3)
    decode_tok_s = args.decode_tokens / decode_s
    log(f"[llamacpp_bench] decode {args.decode_tokens} tokens at depth {args.decode_depth}: "
        f"{decode_s:.3f} s -> {decode_tok_s:.2f} tok/s (cpu share {cpu_share['decode']})")

    result = {
        "engine": "llama.cpp",
        "version": f"llama-cpp-python {llama_cpp.__version__}",
        "threads": args.threads,
        "model": args.model,
        "prefill_tok_s": prefill_tok_s,
        "prefill_runs_s": prefill_runs_s,
        "decode_tok_s": decode_tok_s,
        "decode_depth": args.decode_depth,
        "decode_tokens": args.decode_tokens,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_load_bytes": rss_after_load,
        # Extra detail (not part of the shared schema; compare.py ignores it).
        "settings": {
            "n_ctx": llm.n_ctx(),
            "n_batch": cp.n_batch,
            "n_ubatch": cp.n_ubatch,
            "flash_attn": args.flash_attn,
            "warmup_prefill": args.warmup,
            "runs_per_n": args.runs,
            "load_s": load_s,
            "cpu_share": cpu_share,
            "loadavg_start": loadavg_start,
            "loadavg_end": loadavg(),
            "decode_s": decode_s,
            "decode_first_ids": generated[:8],
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
            "python": platform.python_version(),
        },
    }
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
