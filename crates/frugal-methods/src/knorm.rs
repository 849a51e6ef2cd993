//! Knorm (Devoto et al., EMNLP 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//! Compression", arXiv:2406.11430): keys with a small L2 norm tend to receive high attention, so
//! the keys with the largest norms are evicted. No queries are needed; the score is `−‖k‖` as in
//! kvpress's `KnormPress`. See docs/methods/kv-baselines.md.

use crate::eviction::{self, Budget, EvictionConfig, Scorer};
use crate::policy::{configure, PolicyConfig, PolicyEntry};
use frugal_numerics::attention::{AttentionShape, KvSlices};

crate::policy_config! {
    /// Knorm: only the shared eviction knobs.
    pub struct KnormConfig {
        flatten pub common: EvictionConfig;
    }
}

pub const KNORM: PolicyEntry = PolicyEntry::taking_format(
    "knorm",
    "Knorm: evicts the keys with the largest L2 norm",
    KnormConfig::knobs,
    "knorm:ratio=0",
    |part, b| {
        let cfg: KnormConfig = configure(part)?;
        Ok(eviction::component(
            &cfg.common,
            Budget::Uniform,
            Box::new(KeyNorm),
            b.layout,
            b.row_format,
        ))
    },
);

/// `−‖k‖` per stored key.
pub struct KeyNorm;

impl Scorer for KeyNorm {
    fn name(&self) -> String {
        "knorm".into()
    }
    fn score(
        &self,
        _layer: usize,
        _q: &[f32],
        _positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) -> Vec<Vec<f32>> {
        let d = shape.head_dim;
        kv.iter()
            .map(|h| {
                h.keys
                    .chunks_exact(d)
                    .map(|k| -k.iter().map(|x| x * x).sum::<f32>().sqrt())
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_key_scores_lowest() {
        let keys = [1.0, 0.0, 0.0, 3.0, 0.5, 0.5];
        let pos = [0, 1, 2];
        let kv = [KvSlices::new(&keys, &keys, &pos)];
        let shape = AttentionShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let s = KeyNorm.score(0, &[], &[], shape, &kv);
        assert_eq!(s[0][1], -3.0);
        assert!(s[0][2] > s[0][0] && s[0][0] > s[0][1]);
    }
}
