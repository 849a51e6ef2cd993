//! Knockouts and the efficiency policies on the tiny random model, with a token structure:
//! no knockout ⇒ dense logits; each knockout cuts exactly its path (outputs become invariant
//! to the tokens it hides); early exit equals LV-K above its layer and frees their KV; the
//! bench's shared-prefix shortcut for LV-K equals a full run.

use candle_core::quantized::GgmlDType;
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use frugal_engine::structure::{TokenKind, TokenStructure};
use frugal_engine::testing::tiny_model;
use frugal_methods::build;
use std::sync::Arc;

const PREFIX: usize = 4;
const CHUNK: usize = 40;
const QUESTION: usize = 6;

fn structure() -> TokenStructure {
    let mut s = TokenStructure::default();
    s.push(TokenKind::Prefix, 0, PREFIX);
    for c in 0..3 {
        s.push(TokenKind::Context, c, CHUNK);
    }
    s.push(TokenKind::Question, 0, QUESTION);
    s
}

fn ids(seed: u32) -> Vec<u32> {
    (0..(PREFIX + 3 * CHUNK + QUESTION) as u32)
        .map(|i| 3 + (i * 37 + i * i * seed) % 250)
        .collect()
}

fn seq(lm: &LoadedModel, spec: &str) -> Sequence {
    let mut s = build(&spec.parse().unwrap(), lm.model.config().kv_layout()).unwrap();
    s.structure = Some(Arc::new(structure()));
    s
}

fn run(lm: &LoadedModel, spec: &str, ids: &[u32]) -> (Vec<Vec<f32>>, usize) {
    let mut s = seq(lm, spec);
    let rows = lm
        .model
        .forward(ids, &mut s, LogitRows::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    (rows, s.cache.resident_bytes())
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn no_knockout_is_dense_bit_for_bit() {
    let lm = tiny_model(GgmlDType::F32, 7).unwrap();
    let (dense, bytes) = run(&lm, "full", &ids(1));
    for spec in [
        "knockout:type=lv,width=0",
        "knockout:type=vs,from=3",
        "early-exit:layer=3",
        "frame-local:layers=3-9",
    ] {
        let (rows, b) = run(&lm, spec, &ids(1));
        assert_eq!(rows, dense, "{spec}");
        assert_eq!(b, bytes, "{spec}");
    }
}

/// Rows of `range` must not move when the tokens at `changed` change (the knockout hides
/// them), while dense attention does see the change.
fn assert_hidden(spec: &str, changed: std::ops::Range<usize>, rows: std::ops::Range<usize>) {
    let lm = tiny_model(GgmlDType::F32, 7).unwrap();
    let a = ids(1);
    let mut b = a.clone();
    for i in changed {
        b[i] = 3 + (b[i] + 101) % 250;
    }
    let (ka, _) = run(&lm, spec, &a);
    let (kb, _) = run(&lm, spec, &b);
    let (da, _) = run(&lm, "full", &a);
    let (db, _) = run(&lm, "full", &b);
    let d_knock = max_diff(&ka[rows.clone()], &kb[rows.clone()]);
    let d_dense = max_diff(&da[rows.clone()], &db[rows.clone()]);
    assert!(d_knock < 1e-5, "{spec}: rows {rows:?} moved by {d_knock}");
    assert!(d_dense > 1e-3, "dense must see the change ({d_dense})");
    assert!(ka.iter().flatten().all(|x| x.is_finite()));
}

#[test]
fn lv_knockout_hides_the_context_from_the_question() {
    let q = PREFIX + 3 * CHUNK;
    assert_hidden("knockout:type=lv", PREFIX..q, q..q + QUESTION);
}

#[test]
fn vt_knockout_hides_other_chunks() {
    let c2 = PREFIX + 2 * CHUNK;
    assert_hidden("knockout:type=vt", PREFIX..c2, c2..c2 + CHUNK);
}

#[test]
fn vs_knockout_hides_the_rest_of_the_chunk() {
    // The last token of chunk 1 no longer reads the other tokens of chunk 1.
    let last = PREFIX + 2 * CHUNK - 1;
    assert_hidden("knockout:type=vs", PREFIX + CHUNK..last, last..last + 1);
}

#[test]
fn frame_local_equals_vt_in_its_layers() {
    let lm = tiny_model(GgmlDType::F32, 7).unwrap();
    let (fl, _) = run(&lm, "frame-local:layers=1-2", &ids(1));
    let (vt, _) = run(&lm, "knockout:type=vt,from=1,width=2", &ids(1));
    assert_eq!(fl, vt);
}

#[test]
fn early_exit_equals_lv_knockout_above_its_layer_and_frees_kv() {
    let lm = tiny_model(GgmlDType::F32, 7).unwrap();
    let cfg = lm.model.config().clone();
    let n = PREFIX + 3 * CHUNK + QUESTION;
    let (full_rows, full_bytes) = run(&lm, "full", &ids(1));
    for layer in 0..cfg.n_layers {
        let (ee, bytes) = run(&lm, &format!("early-exit:layer={layer}"), &ids(1));
        let (lv, _) = run(&lm, &format!("knockout:type=lv,from={layer}"), &ids(1));
        let q = PREFIX + 3 * CHUNK;
        let d = max_diff(&ee[q..], &lv[q..]);
        assert!(d < 1e-4, "layer {layer}: early exit vs LV-K differ by {d}");
        // Prefix rows are untouched (up to GEMM blocking); context rows exited.
        assert!(max_diff(&ee[..PREFIX], &full_rows[..PREFIX]) < 1e-4);
        let per_token_layer = cfg.n_kv_heads * (2 * cfg.head_dim * 4 + 4);
        let dropped = 3 * CHUNK * (cfg.n_layers - layer) * per_token_layer;
        assert_eq!(bytes, full_bytes - dropped, "layer {layer}");
        assert_eq!(full_bytes, n * cfg.n_layers * per_token_layer);
    }
    // Decode after an early-exit prefill continues without the exited K/V.
    let mut s = seq(&lm, "early-exit:layer=1");
    lm.model.forward(&ids(1), &mut s, LogitRows::Last).unwrap();
    let next = lm
        .model
        .forward(&[5], &mut s, LogitRows::Last)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(next[0].iter().all(|x| x.is_finite()));
}

#[test]
fn lv_knockout_on_a_shared_dense_prefix_equals_a_full_run() {
    let lm = tiny_model(GgmlDType::F32, 7).unwrap();
    let all = ids(1);
    let q = PREFIX + 3 * CHUNK;
    let spec = "knockout:type=lv,from=1";
    let (full, _) = run(&lm, spec, &all);
    let mut dense = seq(&lm, "full");
    lm.model
        .forward(&all[..q], &mut dense, LogitRows::Last)
        .unwrap();
    let attention = build(&spec.parse().unwrap(), lm.model.config().kv_layout())
        .unwrap()
        .attention;
    let mut forked = Sequence::resume(dense.cache, attention, q);
    forked.structure = Some(Arc::new(structure()));
    let tail = lm
        .model
        .forward(&all[q..], &mut forked, LogitRows::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Only f32 summation order differs: the fork's query blocks start at `q`, the full run's
    // at multiples of 64, so the GEMMs split their sums differently (≈1e-5 on these logits).
    let diff = max_diff(&tail, &full[q..]);
    assert!(
        diff < 5e-5,
        "forked run differs from the full run by {diff}"
    );
}
