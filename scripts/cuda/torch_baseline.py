#!/usr/bin/env python3
"""PyTorch side-by-side for the FPSAttention kernels.

Reads the block maps that `fps-bench --maps-dir DIR` wrote (so FlexAttention gets exactly our
mask), times on the same card in the same device call:
  - SDPA, flash backend, BF16, dense (non-causal for the Wan shape, causal for LLM shapes);
  - FlexAttention (torch.compile'd), BF16, with the same block map (BLOCK_SIZE = 128 x 64);
  - a bf16 8192^3 matmul and an FP8 torch._scaled_mm as measured tensor-core ceilings;
then joins our results (`--ours ours.json`) and prints a Markdown table with time, TFLOP/s
and ratios.

TFLOP/s for every row use the FLOPs of the (query, key) pairs the mask allows (4*d per pair),
so dense causal counts half the square.
"""
import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F


def bench(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def load_map(d, m):
    import numpy as np
    counts = np.fromfile(os.path.join(d, m["name"] + ".counts.i32"), dtype="<i4").reshape(m["heads"], m["n_qb"])
    idx = np.fromfile(os.path.join(d, m["name"] + ".idx.i32"), dtype="<i4").reshape(m["heads"], m["n_qb"], m["n_kb"])
    return counts, idx


def flex_block_mask(m, counts, idx, dev):
    """Split our lists into FlexAttention's partial blocks (need mask_mod: causal diagonal) and
    full blocks (no mask_mod), BLOCK_SIZE = (128, 64)."""
    import numpy as np
    from torch.nn.attention.flex_attention import BlockMask

    H, nqb, nkb = m["heads"], m["n_qb"], m["n_kb"]
    bm, bn, n = m["bm"], m["bn"], m["n"]
    allowed = np.zeros((H, nqb, nkb), bool)
    for h in range(H):
        for qb in range(nqb):
            allowed[h, qb, idx[h, qb, : counts[h, qb]]] = True
    qi = np.arange(nqb)[:, None]
    ki = np.arange(nkb)[None, :]
    diag = (ki * bn + bn - 1 > qi * bm) if m["causal"] else np.zeros((nqb, nkb), bool)
    part = allowed & diag[None]
    full = allowed & ~diag[None]
    as_lists = lambda b: (b.sum(-1).astype(np.int32), np.argsort(~b, axis=-1, kind="stable").astype(np.int32))
    part_n, part_i = as_lists(part)
    full_n, full_i = as_lists(full)
    t = lambda a: torch.from_numpy(a).to(dev)[None]
    mask_mod = (lambda b, h, q, kv: q >= kv) if m["causal"] else None
    kw = dict(full_kv_num_blocks=t(full_n), full_kv_indices=t(full_i), BLOCK_SIZE=(bm, bn), mask_mod=mask_mod)
    try:
        return BlockMask.from_kv_blocks(t(part_n), t(part_i), seq_lengths=(n, n), **kw)
    except TypeError:
        return BlockMask.from_kv_blocks(t(part_n), t(part_i), **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--maps", required=True)
    ap.add_argument("--ours")
    ap.add_argument("--json")
    ap.add_argument("--md")
    ap.add_argument("--no-flex", action="store_true")
    a = ap.parse_args()
    dev = "cuda"
    name = torch.cuda.get_device_name(0)
    print(f"torch {torch.__version__} on {name}", flush=True)
    manifest = json.load(open(os.path.join(a.maps, "manifest.json")))
    out = {"device": name, "torch": torch.__version__, "results": [], "ceilings": {}}

    # measured tensor-core ceilings
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    t = bench(lambda: x @ y)
    out["ceilings"]["bf16_matmul_tflops"] = 2 * 8192**3 / (t * 1e-3) / 1e12
    try:
        x8 = x.to(torch.float8_e4m3fn)
        y8 = y.t().contiguous().to(torch.float8_e4m3fn).t()
        one = torch.tensor(1.0, device=dev)
        t = bench(lambda: torch._scaled_mm(x8, y8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
        out["ceilings"]["fp8_matmul_tflops"] = 2 * 8192**3 / (t * 1e-3) / 1e12
    except Exception as e:  # noqa: BLE001
        print("fp8 _scaled_mm failed:", e)
    print("ceilings", out["ceilings"], flush=True)
    del x, y

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    shapes = {}
    for m in manifest:
        shapes.setdefault(m["name"].rsplit("_d", 1)[0], []).append(m)
    g = torch.Generator(device=dev).manual_seed(0)
    for sname, ms in shapes.items():
        m0 = ms[0]
        H, n, causal = m0["heads"], m0["n"], m0["causal"]
        q, k, v = (torch.randn(1, H, n, 128, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
        dense = [m for m in ms if m["name"].endswith("_d100")][0]
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            t = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        r = {"shape": sname, "config": dense["name"], "variant": "sdpa_flash_bf16", "ms": t, "density": 1.0,
             "tflops": dense["flops"] / (t * 1e-3) / 1e12}
        print(r, flush=True)
        out["results"].append(r)
        if a.no_flex:
            continue
        for m in ms:
            counts, idx = load_map(a.maps, m)
            try:
                bmask = flex_block_mask(m, counts, idx, dev)
                o = flex(q, k, v, block_mask=bmask)
                if m["name"].endswith("_d100"):
                    err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                    print(f"flex dense vs sdpa rel err {err:.2e}", flush=True)
                t = bench(lambda: flex(q, k, v, block_mask=bmask))
                r = {"shape": sname, "config": m["name"], "variant": "flex_bf16", "ms": t, "density": m["density"],
                     "tflops": m["flops"] / (t * 1e-3) / 1e12}
            except Exception as e:  # noqa: BLE001
                r = {"shape": sname, "config": m["name"], "variant": "flex_bf16", "error": repr(e)[:300]}
            print(r, flush=True)
            out["results"].append(r)
        del q, k, v, ref
        torch.cuda.empty_cache()
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)

    if not a.ours:
        return
    ours = json.load(open(a.ours))
    rows = {}
    for r in ours["results"]:
        rows.setdefault(r["config"], {})[r["variant"]] = r
    for r in out["results"]:
        rows.setdefault(r["config"], {})[r["variant"]] = r
    sdpa = {r["shape"]: r["ms"] for r in out["results"] if r["variant"] == "sdpa_flash_bf16"}
    lines = [f"card: {name} (ours: {ours['device']}); torch {torch.__version__}; ceilings measured here: "
             + ", ".join(f"{k} {v:.0f}" for k, v in out["ceilings"].items()), "",
             "| config | density | variant | ms | TFLOP/s | SDPA dense ms / this ms |", "|---|---|---|---|---|---|"]
    for cfg in sorted(rows, key=lambda c: (c.rsplit('_d', 1)[0], -int(c.rsplit('_d', 1)[1]))):
        shape = cfg.rsplit("_d", 1)[0]
        known = ["sdpa_flash_bf16", "flex_bf16", "ours_bf16", "ours_fp8", "ours_fp8+quant", "ours_bf16_wgmma",
                 "ours_bf16_wgmma+vT", "ours_fp8_wgmma", "ours_fp8_wgmma+quant", "ours_bf16_wgmma_2cta",
                 "ours_fp8_wgmma_2cta", "ours_fp8_wgmma_pipe_2cta", "ours_fp8_wgmma_pipe_2cta+quant",
                 "ours_fp8_wgmma_1wg", "ours_fp8_wgmma_1wg+quant"]
        for var in known + sorted(v for v in rows[cfg] if v not in known):
            r = rows[cfg].get(var)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {cfg} | | {var} | error: {r['error'][:80]} | | |")
                continue
            ratio = sdpa[shape] / r["ms"] if shape in sdpa else float("nan")
            lines.append(f"| {cfg} | {r['density']*100:.1f}% | {var} | {r['ms']:.3f} | {r['tflops']:.1f} | {ratio:.2f}x |")
    txt = "\n".join(lines)
    print(txt)
    if a.md:
        open(a.md, "w").write(txt + "\n")


if __name__ == "__main__":
    sys.exit(main())
