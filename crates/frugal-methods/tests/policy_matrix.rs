//! The test every registered policy passes (docs/design.md: "the policy matrix"): with its knobs
//! at "keep everything" it reproduces dense logits; at its defaults it never produces NaN; the
//! bytes it reports are what its store holds (never more than the full store).

use candle_core::quantized::GgmlDType;
use frugal_engine::model::llama::LogitRows;
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::{tiny_model, TINY_ARCHITECTURES};
use frugal_methods::{build, POLICIES};

mod common;

/// Prefill half, then decode the rest token by token: both paths of every policy run, on the
/// tiny model of `arch`.
fn run_on(arch: &str, spec: &str, ids: &[u32]) -> (Vec<Vec<f32>>, usize) {
    common::run_on(arch, spec, ids, ids.len() / 2)
}

fn run(spec: &str, ids: &[u32]) -> (Vec<Vec<f32>>, usize) {
    run_on("llama", spec, ids)
}

fn ids() -> Vec<u32> {
    common::ids(300)
}

#[test]
fn keep_everything_reproduces_dense_logits() {
    let (dense, dense_bytes) = run("full", &ids());
    for p in POLICIES {
        let (rows, bytes) = run(p.keep_everything, &ids());
        let diff = common::max_diff(&dense, &rows);
        assert!(diff < 1e-4, "{}: max |Δlogit| = {diff}", p.keep_everything);
        for arch in TINY_ARCHITECTURES.iter().filter(|&&a| a != "llama") {
            let (dense, _) = run_on(arch, "full", &ids());
            let (rows, _) = run_on(arch, p.keep_everything, &ids());
            let diff = common::max_diff(&dense, &rows);
            assert!(
                diff < 1e-4,
                "{arch}: {}: max |Δlogit| = {diff}",
                p.keep_everything
            );
        }
        // Every K/V float is kept at full precision; positions may be held more compactly
        // than full's 4 bytes per (token, layer, KV head).
        let layout = tiny_model(GgmlDType::F32, 5)
            .unwrap()
            .model
            .config()
            .kv_layout();
        let float_bytes = dense_bytes - 4 * ids().len() * layout.n_layers * layout.n_kv_heads;
        assert!(
            (float_bytes..=dense_bytes).contains(&bytes),
            "{} keeps everything, so it holds full's {float_bytes} bytes of K/V (+ positions), not {bytes}",
            p.keep_everything
        );
    }
}

#[test]
fn defaults_are_finite_and_hold_no_more_than_full() {
    for arch in TINY_ARCHITECTURES {
        let (_, dense_bytes) = run_on(arch, "full", &ids());
        for p in POLICIES {
            let (rows, bytes) = run_on(arch, p.name, &ids());
            assert!(
                rows.iter().flatten().all(|x| x.is_finite()),
                "{arch}: {} produced a non-finite logit",
                p.name
            );
            eprintln!(
                "{arch:7} {:22} {bytes:>7} bytes (full {dense_bytes})",
                p.name
            );
            assert!(
                bytes <= dense_bytes,
                "{arch}: {} holds {bytes} bytes, more than full's {dense_bytes}",
                p.name
            );
        }
    }
}

#[test]
fn streaming_really_frees_memory_and_changes_output() {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let cfg = lm.model.config().clone();
    let mut seq: Sequence = build(
        &"streaming:sink=4,window=32".parse().unwrap(),
        cfg.kv_layout(),
    )
    .unwrap();
    let ids = ids();
    lm.model
        .forward(&ids[..200], &mut seq, LogitRows::Last)
        .unwrap();
    for &id in &ids[200..220] {
        lm.model.forward(&[id], &mut seq, LogitRows::Last).unwrap();
    }
    // After decode steps each (layer, head) holds the 4 sinks + the 32 most recent tokens.
    let per_token = cfg.n_layers * cfg.n_kv_heads * (2 * cfg.head_dim * 4 + 4);
    assert_eq!(seq.cache.resident_bytes(), (4 + 32) * per_token);
    let (dense, _) = run("full", &ids);
    let (stream, _) = run("streaming:sink=4,window=32", &ids);
    let diff = common::max_diff(&dense[dense.len() - 1..], &stream[stream.len() - 1..]);
    assert!(
        diff > 1e-3,
        "evicting 260 of 300 tokens must change the logits"
    );
}
