//! OmniSparse-specific checks (issue 5): τ=1 with every query kept is the dense path; the
//! sparse path really skips keys and queries; decode slimming really frees the span's KV.

use candle_core::quantized::GgmlDType;
use frugal_engine::model::llama::LogitRows;
use frugal_engine::structure::{TokenKind, TokenStructure};
use frugal_engine::testing::tiny_model;
use frugal_methods::build;
use std::sync::Arc;

fn ids(n: u32) -> Vec<u32> {
    (0..n).map(|i| 3 + (i * 37 + i * i) % 250).collect()
}

fn prefill(spec: &str, ids: &[u32]) -> (Vec<Vec<f32>>, Option<String>) {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let mut seq = build(&spec.parse().unwrap(), lm.model.config().kv_layout()).unwrap();
    let rows = lm
        .model
        .forward(ids, &mut seq, LogitRows::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    (rows, seq.attention.report())
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tau_one_and_every_query_is_dense_bit_for_bit() {
    let ids = ids(300);
    let (dense, _) = prefill("full", &ids);
    let (omni, _) = prefill("omnisparse:tau=1,lazy=none", &ids);
    assert_eq!(dense, omni);
    // A budget that covers every key goes through the sparse planner and still equals dense.
    let (uni, _) = prefill("uniform-budget:keys=1048576", &ids);
    assert_eq!(dense, uni);
}

#[test]
fn sparse_path_skips_keys_and_queries_and_stays_close() {
    let ids = ids(400);
    let (dense, _) = prefill("full", &ids);
    // Every query of a block probes (probe=64), so recall τ holds on average over its rows.
    let (near, report) = prefill(
        "omnisparse:tau=0.999,lazy=none,window=16,sink=1,probe=64",
        &ids,
    );
    let report = report.unwrap();
    assert!(!report.contains("\"key_kept_fraction\":1.0000"), "{report}");
    let (far, _) = prefill("topk:ratio=0.05,window=16,sink=1,probe=64", &ids);
    let (d_near, d_far) = (max_diff(&dense, &near), max_diff(&dense, &far));
    assert!(
        d_near > 0.0 && d_near < d_far,
        "τ=0.999 ({d_near}) must be closer to dense than 5% of keys ({d_far})"
    );
    // Lazy queries: θ=-1 makes every query lazy; keep_every=4 computes ~1/4 (+ block starts).
    let (_, report) = prefill("omnisparse:tau=1,lazy=cos,theta=-1,keep_every=4", &ids);
    let report = report.unwrap();
    let kept: f64 = report
        .split("\"query_kept_fraction\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kept > 0.2 && kept < 0.35, "{report}");
    let (top, _) = prefill("topk:ratio=0.2,window=8", &ids);
    assert!(top.iter().flatten().all(|x| x.is_finite()));
}

#[test]
fn decode_slimming_frees_the_span_of_quiet_heads() {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let cfg = lm.model.config().clone();
    let ids = ids(260);
    let run = |spec: &str| {
        let mut seq = build(&spec.parse().unwrap(), cfg.kv_layout()).unwrap();
        let mut s = TokenStructure::default();
        s.push(TokenKind::Prefix, 0, 10);
        s.push(TokenKind::Context, 0, 200);
        s.push(TokenKind::Question, 0, 40);
        seq.structure = Some(Arc::new(s));
        lm.model
            .forward(&ids[..250], &mut seq, LogitRows::Last)
            .unwrap();
        let after_prefill = seq.cache.resident_bytes();
        for &id in &ids[250..] {
            lm.model.forward(&[id], &mut seq, LogitRows::Last).unwrap();
        }
        (
            after_prefill,
            seq.cache.resident_bytes(),
            seq.attention.report().unwrap(),
        )
    };
    let per_row = 2 * cfg.head_dim * 4 + 4;
    let heads = cfg.n_layers * cfg.n_kv_heads;
    // eps = 1: every head's span mass is below 1, so every head drops the 200 context rows.
    let (full, end, report) = run("omnisparse:tau=1,lazy=none,eps=1,recheck=3");
    assert_eq!(full, 250 * heads * per_row);
    assert_eq!(end, (260 - 200) * heads * per_row, "{report}");
    assert!(report.contains(&format!("\"slimmed_heads\":{heads}")));
    // eps = 0: nothing is dropped.
    let (_, end, _) = run("omnisparse:tau=1,lazy=none,eps=0");
    assert_eq!(end, 260 * heads * per_row);
}
