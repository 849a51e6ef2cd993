//! Read-only probes: statistics gathered while the model runs, without changing its output.
//!
//! [`KvSimilarityProbe`] is a cache policy that stores like [`FullCache`] and, as each layer's
//! K/V arrive, measures the cosine similarity of every (token, KV head) vector with the previous
//! layer's: the premise of cross-layer merging (MiniCache, docs/methods/minicache.md).

use crate::cache::{CachePolicy, FullCache, HeadView, KvLayout};
use crate::sequence::Sequence;
use std::sync::{Arc, Mutex};

/// Per-(token, KV head) cosine similarities of adjacent layers `(layer, layer + 1)`.
#[derive(Clone, Debug, Default)]
pub struct AdjacentCosines {
    /// `k[l]` / `v[l]`: every cosine between layer `l` and `l + 1` (keys post-RoPE, which leaves
    /// cosines unchanged because both layers share the rotation at a position).
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// Summary of one layer pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSummary {
    pub mean: f64,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    pub count: usize,
}

impl CosineSummary {
    pub fn of(xs: &[f32]) -> Self {
        if xs.is_empty() {
            return CosineSummary {
                mean: f64::NAN,
                p10: f64::NAN,
                median: f64::NAN,
                p90: f64::NAN,
                count: 0,
            };
        }
        let mut s: Vec<f32> = xs.to_vec();
        s.sort_by(f32::total_cmp);
        let q = |f: f64| s[((s.len() - 1) as f64 * f).round() as usize] as f64;
        CosineSummary {
            mean: xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64,
            p10: q(0.1),
            median: q(0.5),
            p90: q(0.9),
            count: xs.len(),
        }
    }
}

/// Stores like [`FullCache`]; records adjacent-layer cosines into a shared sink.
pub struct KvSimilarityProbe {
    inner: FullCache,
    layout: KvLayout,
    prev: Option<(usize, Vec<f32>, Vec<f32>)>,
    sink: Arc<Mutex<AdjacentCosines>>,
}

impl KvSimilarityProbe {
    pub fn new(layout: KvLayout) -> (Self, Arc<Mutex<AdjacentCosines>>) {
        let n = layout.n_layers.saturating_sub(1);
        let sink = Arc::new(Mutex::new(AdjacentCosines {
            k: vec![Vec::new(); n],
            v: vec![Vec::new(); n],
        }));
        (
            KvSimilarityProbe {
                inner: FullCache::new(layout),
                layout,
                prev: None,
                sink: sink.clone(),
            },
            sink,
        )
    }

    /// A sequence (full cache, dense attention) that records into the returned sink.
    pub fn sequence(layout: KvLayout) -> (Sequence, Arc<Mutex<AdjacentCosines>>) {
        let (probe, sink) = Self::new(layout);
        (
            Sequence::new(Box::new(probe), Box::new(crate::attention::Dense)),
            sink,
        )
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        (ab / (aa.sqrt() * bb.sqrt())) as f32
    }
}

impl CachePolicy for KvSimilarityProbe {
    fn name(&self) -> String {
        "kv-similarity-probe".into()
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        if let Some((pl, pk, pv)) = &self.prev {
            if *pl + 1 == layer && pk.len() == k.len() {
                let d = self.layout.head_dim;
                let mut sink = self.sink.lock().expect("probe sink");
                sink.k[*pl].extend(
                    pk.chunks_exact(d)
                        .zip(k.chunks_exact(d))
                        .map(|(a, b)| cosine(a, b)),
                );
                sink.v[*pl].extend(
                    pv.chunks_exact(d)
                        .zip(v.chunks_exact(d))
                        .map(|(a, b)| cosine(a, b)),
                );
            }
        }
        self.prev = Some((layer, k.to_vec(), v.to_vec()));
        self.inner.store(layer, positions, k, v);
    }

    fn view(&self, layer: usize, kv_head: usize) -> HeadView<'_> {
        self.inner.view(layer, kv_head)
    }

    fn half_rows(
        &self,
        layer: usize,
        kv_head: usize,
    ) -> Option<frugal_numerics::half_attention::HalfKv<'_>> {
        self.inner.half_rows(layer, kv_head)
    }

    fn resident_bytes(&self) -> usize {
        self.inner.resident_bytes()
    }

    fn reset(&mut self) {
        self.inner.reset();
        self.prev = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::llama::LogitRows;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn probe_records_every_pair_and_leaves_logits_unchanged() {
        let lm = crate::testing::tiny_model(GgmlDType::F32, 5).unwrap();
        let layout = lm.model.config().kv_layout();
        let ids: Vec<u32> = (0..40u32).map(|i| 3 + i * 5 % 200).collect();
        let (mut seq, sink) = KvSimilarityProbe::sequence(layout);
        let a = lm
            .model
            .forward(&ids, &mut seq, LogitRows::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut full = Sequence::new(
            Box::new(FullCache::new(layout)),
            Box::new(crate::attention::Dense),
        );
        let b = lm
            .model
            .forward(&ids, &mut full, LogitRows::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(a, b);
        let s = sink.lock().unwrap();
        assert_eq!(s.k.len(), layout.n_layers - 1);
        assert!(s
            .k
            .iter()
            .chain(&s.v)
            .all(|c| c.len() == 40 * layout.n_kv_heads && c.iter().all(|x| x.abs() <= 1.0 + 1e-6)));
        assert_eq!(CosineSummary::of(&[0.0, 1.0, 0.5]).median, 0.5);
    }
}
