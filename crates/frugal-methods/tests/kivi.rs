//! The KIVI storage format through the real model: what the store reports is every byte it
//! holds (codes, per-group scales and minima, the full-precision tail, positions), with keys and
//! values at their own widths and groups; and the mixed format stays close to the dense logits.

use candle_core::quantized::GgmlDType;
use frugal_engine::testing::tiny_model;

mod common;

#[test]
fn mixed_width_bytes_are_codes_params_tail_and_positions() {
    let cfg = tiny_model(GgmlDType::F32, 5)
        .unwrap()
        .model
        .config()
        .clone();
    let d = cfg.head_dim;
    let ids = common::ids(300);
    let (_, bytes) = common::run(
        "kivi:bits=4,vbits=2,group=32,vgroup=16,residual=0",
        &ids,
        250,
    );
    // 300 tokens, residual 0: 9 blocks of 32 tokens quantised, 12 tokens in f16.
    let (blocks, tail) = (9, 12);
    let key_block = 32 * d * 4 / 8 + d * 4; // 4-bit codes + (scale, min) per channel
    let value_block = 32 * d * 2 / 8 + 32 * d.div_ceil(16) * 4; // 2-bit codes + per token group
    let per_head = blocks * (key_block + value_block) + tail * d * 2 * 2 + 8; // + one position run
    assert_eq!(bytes, per_head * cfg.n_layers * cfg.n_kv_heads);
    let (_, symmetric) = common::run("kivi:bits=4,group=32,residual=0", &ids, 250);
    assert!(bytes < symmetric, "{bytes} vs {symmetric}");
}

#[test]
fn mixed_width_stays_near_dense_and_below_two_bit_values_error() {
    let ids = common::ids(200);
    let (dense, _) = common::run("full", &ids, 150);
    let (k4v4, _) = common::run("kivi:bits=4,residual=0", &ids, 150);
    let (k4v2, _) = common::run("kivi:bits=4,vbits=2,residual=0", &ids, 150);
    let (k2v2, _) = common::run("kivi:bits=2,residual=0", &ids, 150);
    let (e44, e42, e22) = (
        common::max_diff(&dense, &k4v4),
        common::max_diff(&dense, &k4v2),
        common::max_diff(&dense, &k2v2),
    );
    assert!(e44 > 0.0 && e44 < e42, "4/4 {e44} vs 4/2 {e42}");
    assert!(e42 < e22, "4/2 {e42} vs 2/2 {e22}");
}

#[test]
fn value_width_is_checked() {
    let err = |s: &str| {
        frugal_methods::validate(&s.parse().unwrap())
            .unwrap_err()
            .to_string()
    };
    assert!(err("kivi:vbits=3").contains("1, 2, 4 or 8"));
    assert!(
        frugal_methods::validate(&"snapkv:ratio=0.5+kivi:bits=4,vbits=2".parse().unwrap()).is_ok()
    );
}
