//! What the policy tests share: the tiny model's token ids, a run of a spec over them, and the
//! logit comparison.
#![allow(dead_code)] // each test binary uses its own subset

use candle_core::quantized::GgmlDType;
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::tiny_model_of;
use frugal_methods::build;

/// `n` token ids of the tiny model's vocabulary, deterministic and varied.
pub fn ids(n: u32) -> Vec<u32> {
    (0..n).map(|i| 3 + (i * 37 + i * i) % 250).collect()
}

/// Logits of every position of `ids` under `spec`: the first `split` tokens in one prefill call,
/// the rest one token at a time; and the bytes the store holds at the end.
pub fn run(spec: &str, ids: &[u32], split: usize) -> (Vec<Vec<f32>>, usize) {
    run_on("llama", spec, ids, split)
}

/// [`run`] on the tiny random model of `arch` (see `frugal_engine::testing::TINY_ARCHITECTURES`).
pub fn run_on(arch: &str, spec: &str, ids: &[u32], split: usize) -> (Vec<Vec<f32>>, usize) {
    let lm = tiny_model_of(arch, GgmlDType::F32, 5).unwrap();
    let mut seq = build(&spec.parse().unwrap(), lm.model.config().kv_layout()).unwrap();
    let mut rows = if split > 0 {
        lm.model
            .forward(&ids[..split], &mut seq, LogitRows::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    } else {
        Vec::new()
    };
    rows.extend(decode_each(&lm, &mut seq, &ids[split..]));
    (rows, seq.cache.resident_bytes())
}

/// Logits of `ids` fed one token per call to `seq` (decode steps).
pub fn decode_each(lm: &LoadedModel, seq: &mut Sequence, ids: &[u32]) -> Vec<Vec<f32>> {
    ids.iter()
        .flat_map(|&id| {
            lm.model
                .forward(&[id], seq, LogitRows::Last)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        })
        .collect()
}

/// Largest |a − b| over all logits (the row counts must match).
pub fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
