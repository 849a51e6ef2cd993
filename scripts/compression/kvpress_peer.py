#!/usr/bin/env python3
"""The peer: NVIDIA's kvpress presses on exactly the prompts frugal's harness generates.

frugal's thin grid runner writes the prompts as token ids, split where the question begins
(`frugal-eval-grid --dump-prompts FILE ...`). This script loads the same GGUF model into
transformers (dequantised to f32, CPU), and for each prompt and press does what kvpress's own
pipeline does: prefill the context under the press (question-agnostic: the press never sees the
question), then feed the question at the positions after the uncompressed context, and decode
greedily. An answer is correct when it contains the key (a number not part of a longer number),
as in frugal's user-format tasks. Bytes are counted as an f16 cache of the tokens the cache holds
at the end, so `ratio_vs_f16` is the uncompressed token count over the kept one.

usage: kvpress_peer.py PROMPTS.jsonl OUT.jsonl [--ratios 0.5,0.75] [--presses snapkv,...]
       [--model PATH.gguf] [--limit N]

Setup (CPU torch): pip install --index-url https://download.pytorch.org/whl/cpu torch
                   pip install kvpress gguf
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

DEFAULT_MODEL = Path.home() / ".cache/frugal/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def presses(names, ratio):
    """kvpress's presses under their own names, at their own defaults, at `ratio`."""
    import kvpress as kp

    table = {
        "streaming": lambda: kp.StreamingLLMPress(compression_ratio=ratio),
        "snapkv": lambda: kp.SnapKVPress(compression_ratio=ratio),
        "pyramidkv": lambda: kp.PyramidKVPress(compression_ratio=ratio),
        "h2o": lambda: kp.ObservedAttentionPress(compression_ratio=ratio),
        "tova": lambda: kp.TOVAPress(compression_ratio=ratio),
        "knorm": lambda: kp.KnormPress(compression_ratio=ratio),
        "expected-attention": lambda: kp.ExpectedAttentionPress(compression_ratio=ratio),
        "adakv": lambda: kp.AdaKVPress(kp.SnapKVPress(compression_ratio=ratio)),
    }
    out = []
    for n in names:
        if n not in table:
            sys.exit(f"unknown press `{n}` (known: {', '.join(table)})")
        out.append((n, table[n]()))
    return out


def contains_key(answer, key):
    if key.isdigit():
        return re.search(rf"(?<!\d){re.escape(key)}(?!\d)", answer) is not None
    return re.search(rf"(?<![a-z]){re.escape(key.lower())}(?![a-z])", answer.lower()) is not None


def kept_tokens(cache):
    """Tokens held, summed over layers (every KV head holds the same count in kvpress's
    DynamicCache, except under AdaKV, which masks instead of freeing)."""
    return sum(cache.get_seq_length(i) for i in range(len(cache)))


@torch.no_grad()
def answer(model, tok, ctx_ids, q_ids, max_new, press):
    from transformers import DynamicCache

    cache = DynamicCache()
    ctx = torch.tensor([ctx_ids])
    needs_attn = type(press).__name__ == "ObservedAttentionPress" or (
        hasattr(press, "press") and type(press.press).__name__ == "ObservedAttentionPress"
    )
    kwargs = dict(input_ids=ctx, past_key_values=cache, use_cache=True,
                  position_ids=torch.arange(len(ctx_ids)).unsqueeze(0))
    if needs_attn:
        kwargs["output_attentions"] = True
    if press is None:
        model(**kwargs)
    else:
        with press(model):
            model(**kwargs)
    n = len(ctx_ids)
    out = model(input_ids=torch.tensor([q_ids]), past_key_values=cache, use_cache=True,
                position_ids=torch.arange(n, n + len(q_ids)).unsqueeze(0))
    gen = [int(out.logits[0, -1].argmax())]
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pos = n + len(q_ids)
    while len(gen) < max_new and gen[-1] not in eos:
        out = model(input_ids=torch.tensor([[gen[-1]]]), past_key_values=cache, use_cache=True,
                    position_ids=torch.tensor([[pos]]))
        pos += 1
        gen.append(int(out.logits[0, -1].argmax()))
    return tok.decode(gen, skip_special_tokens=True), kept_tokens(cache), len(cache), pos


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prompts")
    ap.add_argument("out")
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--ratios", default="0.5,0.75")
    ap.add_argument("--presses", default="streaming,snapkv,pyramidkv,h2o,tova,knorm,expected-attention,adakv")
    ap.add_argument("--limit", type=int, default=0, help="first N prompts per (task, length)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(a.model)
    if not gguf.is_file():
        sys.exit(f"model file not found: {gguf}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    rows = [json.loads(l) for l in Path(a.prompts).read_text().splitlines() if l.strip()]
    if a.limit:
        rows = [r for r in rows if r["index"] < a.limit]
    done = set()
    out_path = Path(a.out)
    if out_path.exists():
        for l in out_path.read_text().splitlines():
            r = json.loads(l)
            done.add((r["press"], r["ratio"], r["task"], r["length"], r["index"]))
    settings = [("full", 0.0, None)]
    for ratio in [float(x) for x in a.ratios.split(",") if x]:
        settings += [(n, ratio, p) for n, p in presses(a.presses.split(","), ratio)]
    import kvpress

    with out_path.open("a") as f:
        for name, ratio, press in settings:
            for r in rows:
                key = (name, ratio, r["task"], r["length"], r["index"])
                if key in done:
                    continue
                t0 = time.time()
                text, kept, n_layers, total = answer(model, tok, r["context_ids"], r["question_ids"],
                                                     r["max_new_tokens"], press)
                rec = {
                    "press": name, "ratio": ratio, "task": r["task"], "length": r["length"],
                    "index": r["index"], "seed": r["seed"], "depth": r["depth"],
                    "phrasing": r["phrasing"], "expected": r["expected"], "answer": text,
                    "correct": contains_key(text, r["expected"]),
                    "tokens": total, "kept_tokens_per_layer": kept / n_layers,
                    "ratio_vs_f16": total * n_layers / max(kept, 1),
                    "masked_not_freed": name == "adakv",
                    "seconds": round(time.time() - t0, 3),
                    "kvpress_version": getattr(kvpress, "__version__", "unknown"),
                    "torch_version": torch.__version__,
                }
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(f"{name}@{ratio} {r['task']} {r['length']} #{r['index']}: "
                      f"{'ok' if rec['correct'] else 'miss'} {text!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
