#!/usr/bin/env python3
"""A long document asked many questions: time to first token with and without the prefix cache.

One document of about --doc-tokens tokens of State of the Union text (`frugal fetch --corpus
sotu`) and --questions questions about it, each sent as one chat message (document first,
question last), streaming, greedy, --max-tokens tokens. Two servers on the same GGUF, one
after the other, each with every policy of --policies per request:
  * cold: `frugal serve --prefix-cache-bytes 0`: every question prefills the whole prompt;
  * warm: `--prefix-cache-bytes 1G`: the first question prefills and leaves the document's
    cache (as the policy holds it, compressed where it compresses); the others resume from it.
The speedup is the median cold TTFT over the median warm TTFT of questions 2..N (n = N - 1
each), per policy. Both servers' answers are written out and compared. For `full` a resumed
request is the same computation up to rounding: on quantised weights the question's few tokens
after a cached prefix run through the quantised few-row kernel (int8 activations), while a cold
prefill runs them in a large chunk through the dequantised f32 GEMM, so a greedy answer can
part at a near-tie (the exact equality is tested on f32 weights by the server's tests). For a
compressing policy they may also differ because the cached document was compressed without
the question in view. --require-identical makes a `full` difference an error.

  scripts/server/prefix_reuse.py --json docs/results/server-data/prefix_reuse.json
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

from serverlib import free_port, sse_events, start, wait_listening

QUESTIONS = [
    "Which countries does the speaker mention?",
    "What does the speaker say about taxes?",
    "Summarise the first paragraph in one sentence.",
    "What is the main topic of this speech?",
    "Which year might this speech be from?",
    "What does the speaker ask Congress to do?",
    "Name one problem the speaker describes.",
    "What does the speaker say about the army or the navy?",
    "Who is the speaker addressing?",
    "What is the tone of the speech?",
]


def ask(port, content, policy, max_tokens):
    body = json.dumps({"model": "m", "stream": True, "max_tokens": max_tokens, "temperature": 0,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": content}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body,
                 {"Content-Type": "application/json", "X-Frugal-Policy": policy})
    resp = conn.getresponse()
    if resp.status != 200:
        sys.exit(f"HTTP {resp.status}: {resp.read().decode()}")
    ttft, text, usage = None, [], {}
    for ev in sse_events(resp):
        if ev.get("usage"):
            usage = ev["usage"]
        for c in ev.get("choices", []):
            piece = c.get("delta", {}).get("content")
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                text.append(piece)
    conn.close()
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"ttft_s": ttft, "answer": "".join(text), "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": cached}


def document(binary, tokens):
    path = subprocess.check_output([binary, "fetch", "--corpus", "sotu", "--print-path"],
                                   text=True).strip().splitlines()[-1]
    words = []
    for name in sorted(os.listdir(path)):
        if name.startswith("1905"):
            with open(os.path.join(path, name), encoding="utf-8") as f:
                words += f.read().split()
    # About 1.14 tokens per word for this text and SmolLM2's tokenizer (the prompt's token
    # count is reported per request, so the figure is checked, not assumed).
    return " ".join(words[:int(tokens / 1.14)])


def run_server(args, model, cache_bytes, doc):
    port = free_port()
    threads = ["--threads", str(args.threads)] if args.threads else []
    cmd = ([args.binary, "--model", model] + threads +
           ["serve", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "m",
            "--prefix-cache-bytes", cache_bytes])
    print("command:", " ".join(cmd), flush=True)
    proc = start(cmd)
    out = {}
    try:
        wait_listening(port, proc, "frugal serve")
        ask(port, "Hello", "full", 4)  # warm-up: page-ins, first allocations
        for policy in args.policies:
            rows = []
            for q in QUESTIONS[:args.questions]:
                r = ask(port, f"Here is a speech.\n\n{doc}\n\nQuestion: {q}", policy,
                        args.max_tokens)
                r["question"] = q
                rows.append(r)
                print(f"  {policy:14s} cache {cache_bytes:>3s}: TTFT {r['ttft_s']:.3f} s, "
                      f"{r['cached_tokens']}/{r['prompt_tokens']} prompt tokens cached", flush=True)
            out[policy] = rows
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="target/release/frugal")
    ap.add_argument("--model")
    ap.add_argument("--doc-tokens", type=int, default=4000)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policies", nargs="+", default=["full", "kivi:bits=4"])
    ap.add_argument("--json")
    ap.add_argument("--require-identical", action="store_true",
                    help="fail when a full answer from the cached prefix differs from the cold one")
    args = ap.parse_args()
    model = args.model or subprocess.check_output(
        [args.binary, "fetch", "--print-path"], text=True).strip().splitlines()[-1]
    doc = document(args.binary, args.doc_tokens)
    cold = run_server(args, model, "0", doc)
    warm = run_server(args, model, "1G", doc)
    summary = {"model": model, "doc_words": len(doc.split()), "questions": args.questions,
               "max_tokens": args.max_tokens, "threads": args.threads, "policies": {}}
    ok = True
    for policy in args.policies:
        c = [r["ttft_s"] for r in cold[policy][1:]]
        w = [r["ttft_s"] for r in warm[policy][1:]]
        same = [a["answer"] == b["answer"] for a, b in zip(cold[policy], warm[policy])]
        speedup = statistics.median(c) / statistics.median(w)
        summary["policies"][policy] = {
            "prompt_tokens": cold[policy][0]["prompt_tokens"],
            "cached_tokens_warm": [r["cached_tokens"] for r in warm[policy]],
            "ttft_cold_median_s": statistics.median(c), "ttft_warm_median_s": statistics.median(w),
            "n": len(c), "ttft_speedup": speedup, "answers_identical": sum(same),
            "cold": cold[policy], "warm": warm[policy]}
        print(f"{policy}: TTFT median {statistics.median(c):.3f} s cold, "
              f"{statistics.median(w):.3f} s from the cached prefix (n = {len(c)} each): "
              f"{speedup:.1f}x; answers identical {sum(same)}/{len(same)}")
        if policy == "full" and not all(same) and args.require_identical:
            ok = False
    summary["prefix_reuse_ttft_speedup"] = summary["policies"].get("full", {}).get("ttft_speedup")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if not ok:
        sys.exit("full: an answer from the cached prefix differs from the cold one")


if __name__ == "__main__":
    main()
