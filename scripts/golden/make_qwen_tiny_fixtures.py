#!/usr/bin/env python3
"""Tiny random-weight Qwen 2 and Qwen 3 models and their golden logits, from HF transformers.

No real Qwen weights ship in a package we can fetch, so the Qwen golden tests run on tiny
models built here: the official configurations (Qwen2.5-0.5B, Qwen3-0.6B) shrunk to 2 layers
of width 64, with random weights drawn at scales that give non-trivial attention and logits
(transformers' own init, std 0.02, would make every logit ~0 and test little). For each
family we write

  tests/fixtures/<family>_tiny/          config.json, model.safetensors, tokenizer.json,
                                         tokenizer_config.json (a Hugging Face directory)
  tests/fixtures/<family>_tiny.gguf      the same weights as GGUF (f32), written with the
                                         `gguf` package, tokenizer in its metadata
  tests/fixtures/<family>_golden.safetensors / .json   ids, logits at several positions of a
                                         ~2000-token prompt, a greedy continuation

The tokenizer is a byte-level BPE of 512 tokens trained here (deterministically) on the
prompt corpus; it stands in for Qwen's 151k vocabulary, which does not matter to the forward
pass. Usage: make_qwen_tiny_fixtures.py --sotu-dir DIR --out-dir DIR
"""

import argparse
import datetime
import json
import os
import platform
import sys

import numpy as np
import torch

SEED = 1234
VOCAB = 512
SOTU_FILE = "1862_abraham_lincoln_r.txt"
LONG_TOKENS = 2000
GREEDY_STEPS = 24

# Official configurations, shrunk: width 64, 2 layers, 4 query heads over 2 KV heads, FFN 128.
# Everything else (RoPE base, norm epsilon, tied embeddings, biases / QK-norm) as released.
SHRINK = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
FAMILIES = {
    # Qwen2.5-0.5B: rope_theta 1e6, rms_norm_eps 1e-6, tied embeddings, Q/K/V biases.
    "qwen2": dict(cls="Qwen2", rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    # Qwen3-0.6B: rope_theta 1e6, rms_norm_eps 1e-6, tied embeddings, QK-norm, head_dim set
    # apart from hidden/heads (128 with hidden 1024 and 16 heads; here 32 with 64 and 4).
    "qwen3": dict(cls="Qwen3", rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  head_dim=32),
}


def train_tokenizer(text):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return tok


def build_model(family, vocab):
    import transformers

    spec = dict(FAMILIES[family])
    cls = spec.pop("cls")
    theta = spec.pop("rope_theta")
    cfg = getattr(transformers, f"{cls}Config")(
        vocab_size=vocab, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": theta}, **SHRINK, **spec)
    model = getattr(transformers, f"{cls}ForCausalLM")(cfg).to(torch.float32).eval()
    g = torch.Generator().manual_seed(SEED + (0 if family == "qwen2" else 1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            u = torch.rand(p.shape, generator=g) * 2 - 1
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * u)
            elif name.endswith(".bias"):
                p.copy_(0.5 * u)
            elif "embed_tokens" in name:
                p.copy_(1.0 * u)
            else:
                fan_in = p.shape[-1]
                p.copy_(u * (2.0 / fan_in ** 0.5))
    return model


def write_gguf(family, model, tok, path):
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(path, family)
    w.add_name(f"tiny random {family}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(0)  # all f32
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    # HF names -> GGUF names. Qwen's Q/K rows stay as trained (llama.cpp's NeoX RoPE).
    rename = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        else:
            rest = name.removeprefix("model.layers.")
            layer, part = rest.split(".", 1)
            base, kind = part.rsplit(".", 1)
            out = f"blk.{layer}.{rename[base]}.{kind}"
        w.add_tensor(out, t.detach().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@torch.inference_mode()
def greedy(model, ids, steps):
    out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[0, -1]
    gen, margins = [], []
    for _ in range(steps):
        top2 = torch.topk(logits, 2)
        gen.append(int(top2.indices[0]))
        margins.append(float(top2.values[0] - top2.values[1]))
        out = model(input_ids=torch.tensor([[gen[-1]]]), past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[0, -1]
    return gen, margins


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sotu-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--command", default=" ".join(sys.argv))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    import transformers
    from safetensors.numpy import save_file

    with open(os.path.join(args.sotu_dir, "data", SOTU_FILE), encoding="utf-8") as f:
        speech = " ".join(f.read().split())
    tok = train_tokenizer(speech)
    short = "The capital of France is Paris, and the capital of Germany is"
    long_ids = tok.encode(speech).ids[:LONG_TOKENS]
    long_text = tok.decode(long_ids)
    long_ids = tok.encode(long_text).ids
    prompts = {"short": short, "long": long_text}

    for family in FAMILIES:
        model = build_model(family, VOCAB)
        d = os.path.join(args.out_dir, f"{family}_tiny")
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False}, f)
        gguf_path = os.path.join(args.out_dir, f"{family}_tiny.gguf")
        write_gguf(family, model, tok, gguf_path)

        tensors, cases = {}, {}
        for case, text in prompts.items():
            ids = tok.encode(text).ids
            n = len(ids)
            pos = list(range(n)) if case == "short" else sorted({0, 1, n // 4, n // 2, 1023, 1024, n - 2, n - 1})
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids]), use_cache=False,
                               logits_to_keep=torch.tensor(pos)).logits[0].float()
            tensors[f"{case}.ids"] = np.asarray(ids, dtype=np.int64)
            tensors[f"{case}.positions"] = np.asarray(pos, dtype=np.int64)
            tensors[f"{case}.logits"] = logits.numpy().astype(np.float32)
            gen, margins = greedy(model, ids, GREEDY_STEPS)
            tensors[f"{case}.greedy"] = np.asarray(gen, dtype=np.int64)
            cases[case] = {"n_tokens": n, "positions": pos,
                           "logit_range": [float(logits.min()), float(logits.max())],
                           "greedy_top1_top2_margins": [round(m, 5) for m in margins]}
            print(f"{family} {case}: {n} tokens, logits in [{logits.min():.2f}, {logits.max():.2f}], "
                  f"min greedy margin {min(margins):.4f}", flush=True)
        st = os.path.join(args.out_dir, f"{family}_golden.safetensors")
        save_file(tensors, st, metadata={"source": "scripts/golden/make_qwen_tiny_fixtures.py"})
        meta = {
            "description": f"Tiny random {family} (official config shrunk) logits from HF transformers, f32. "
            "C.ids, C.positions, C.logits [len(positions), vocab], C.greedy (greedy ids after the prompt).",
            "prompts": prompts, "cases": cases, "config": model.config.to_dict(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "seed": SEED, "command": args.command,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        with open(os.path.join(args.out_dir, f"{family}_golden.json"), "w") as f:
            json.dump(meta, f, indent=2, default=str)
            f.write("\n")
    print("done")


if __name__ == "__main__":
    main()
