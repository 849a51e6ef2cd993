//! The evicting baselines (SnapKV, PyramidKV, H2O, TOVA, Knorm, Expected Attention, AdaKV)
//! through the real model: eviction frees bytes, a short call after a compressed one is kept
//! whole (question-agnostic use), a chunked prefill bounds the peak, AdaKV leaves different holes
//! per head, and the KIVI format composes with eviction (bytes counted after both).

use candle_core::quantized::GgmlDType;
use frugal_engine::model::llama::LogitRows;
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::tiny_model;
use frugal_methods::build;

mod common;

fn rows_per_head(seq: &Sequence, n_layers: usize, n_kv: usize) -> Vec<usize> {
    (0..n_layers)
        .flat_map(|l| (0..n_kv).map(move |g| (l, g)))
        .map(|(l, g)| seq.cache.view(l, g).positions.len())
        .collect()
}

fn peak_from_report(seq: &Sequence) -> usize {
    let r: serde_json::Value = serde_json::from_str(&seq.report().unwrap()).unwrap();
    r["kv_peak_bytes"].as_u64().unwrap() as usize
}

#[test]
fn every_scorer_evicts_to_its_budget_and_keeps_a_short_call_whole() {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let cfg = lm.model.config().clone();
    let ids = common::ids(240);
    for name in [
        "snapkv",
        "pyramidkv",
        "h2o",
        "tova",
        "knorm",
        "expected-attention",
        "adakv",
    ] {
        let spec = format!("{name}:ratio=0.5");
        let mut seq = build(&spec.parse().unwrap(), cfg.kv_layout()).unwrap();
        lm.model
            .forward(&ids[..200], &mut seq, LogitRows::Last)
            .unwrap();
        let rows = rows_per_head(&seq, cfg.n_layers, cfg.n_kv_heads);
        let total: usize = rows.iter().sum();
        assert_eq!(
            total,
            100 * cfg.n_layers * cfg.n_kv_heads,
            "{spec}: half of 200 tokens per head on average: {rows:?}"
        );
        if name != "pyramidkv" && name != "adakv" {
            assert!(rows.iter().all(|&r| r == 100), "{spec}: {rows:?}");
        }
        // A question of 20 tokens (shorter than min_call) is appended whole.
        let logits = lm
            .model
            .forward(&ids[200..220], &mut seq, LogitRows::Last)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(logits[0].iter().all(|x| x.is_finite()), "{spec}");
        let after: usize = rows_per_head(&seq, cfg.n_layers, cfg.n_kv_heads)
            .iter()
            .sum();
        assert_eq!(after, total + 20 * cfg.n_layers * cfg.n_kv_heads, "{spec}");
        for l in 0..cfg.n_layers {
            for g in 0..cfg.n_kv_heads {
                let v = seq.cache.view(l, g);
                assert!(
                    (200..220).all(|p| v.positions.contains(&p)),
                    "{spec}: the question's tokens stay"
                );
            }
        }
    }
}

#[test]
fn adakv_leaves_different_holes_per_head() {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let cfg = lm.model.config().clone();
    // Half of 256 tokens: 128 rows per head on average, of which SnapKV's window of 64 is kept
    // by every head; the other 64 per head are allocated across the layer's heads by score.
    let mut seq = build(&"adakv:ratio=0.5".parse().unwrap(), cfg.kv_layout()).unwrap();
    lm.model
        .forward(&common::ids(256), &mut seq, LogitRows::Last)
        .unwrap();
    let rows = rows_per_head(&seq, cfg.n_layers, cfg.n_kv_heads);
    assert_eq!(
        rows.iter().sum::<usize>(),
        128 * cfg.n_layers * cfg.n_kv_heads
    );
    assert!(rows.iter().any(|&r| r != 128), "{rows:?}");
    // Every head keeps its observation window.
    assert!(rows.iter().all(|&r| r >= 64), "{rows:?}");
}

#[test]
fn chunked_prefill_bounds_the_peak() {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let cfg = lm.model.config().clone();
    let ids = common::ids(256);
    let run = |chunk: usize| {
        let mut seq = build(&"snapkv:ratio=0.75".parse().unwrap(), cfg.kv_layout()).unwrap();
        for part in ids.chunks(chunk) {
            lm.model.forward(part, &mut seq, LogitRows::Last).unwrap();
        }
        let rows: usize = rows_per_head(&seq, cfg.n_layers, cfg.n_kv_heads)
            .iter()
            .sum();
        (peak_from_report(&seq), seq.cache.resident_bytes(), rows)
    };
    let (peak_whole, end_whole, rows_whole) = run(256);
    let (peak_chunked, _, rows_chunked) = run(64);
    assert_eq!(
        rows_whole, rows_chunked,
        "the same number of rows at the end"
    );
    assert_eq!(rows_whole, 64 * cfg.n_layers * cfg.n_kv_heads);
    // One call: the last layer holds all 256 tokens before its eviction while the two before
    // it hold 64 each (384 rows). Chunks of 64: at the last chunk the last layer holds the 48
    // rows kept so far plus the chunk while the others hold 64 each (240 rows): 0.625.
    assert!(
        (peak_chunked as f64) < 0.65 * peak_whole as f64,
        "peak {peak_chunked} chunked vs {peak_whole} whole"
    );
    // 384 rows at the peak of one call against 192 kept at the end.
    assert!((peak_whole as f64) > 1.9 * end_whole as f64);
}

#[test]
fn eviction_composes_with_the_kivi_format() {
    let ids = common::ids(300);
    let (dense, full_bytes) = common::run("full", &ids, 250);
    let (evict, evict_bytes) = common::run("snapkv:ratio=0.5", &ids, 250);
    let (both, both_bytes) = common::run(
        "snapkv:ratio=0.5+kivi:bits=4,group=16,residual=16",
        &ids,
        250,
    );
    assert!(both.iter().flatten().all(|x| x.is_finite()));
    assert!(
        evict_bytes < full_bytes * 7 / 10,
        "{evict_bytes} vs {full_bytes}"
    );
    assert!(
        both_bytes < evict_bytes / 3,
        "quantised rows: {both_bytes} vs {evict_bytes}"
    );
    // Quantisation changes the logits but stays close to eviction alone.
    let d_q = common::max_diff(&evict, &both);
    assert!(d_q > 0.0, "kivi changed nothing");
    let d_e = common::max_diff(&dense, &evict);
    assert!(d_e > 1e-4, "eviction changed nothing");
    // Composition is through the format mechanism, in either order.
    assert!(frugal_methods::validate(&"kivi:bits=2+adakv:ratio=0.5".parse().unwrap()).is_ok());
}
