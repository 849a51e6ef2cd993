//! H2O (Zhang et al., NeurIPS 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative
//! Inference of Large Language Models", arXiv:2306.14048): keys that received the most attention
//! ("heavy hitters") are kept. As kvpress's `ObservedAttentionPress` does, a key's score is the
//! attention it received from every query of the prefill, summed and divided by the number of
//! queries that could see it, averaged over the query heads sharing its KV head. (H2O also keeps
//! a recent window and updates during decoding; kvpress's version, followed here, scores the
//! prefill once.) See docs/methods/kv-baselines.md.

use crate::eviction::{self, attention_row, Budget, EvictionConfig, Scorer};
use crate::policy::{configure, PolicyConfig, PolicyEntry};
use frugal_numerics::attention::{AttentionShape, KvSlices};
use rayon::prelude::*;

crate::policy_config! {
    /// H2O as kvpress's observed attention: only the shared eviction knobs.
    pub struct H2oConfig {
        flatten pub common: EvictionConfig;
    }
}

pub const H2O: PolicyEntry = PolicyEntry::taking_format(
    "h2o",
    "H2O heavy hitters: keeps the keys that received the most attention in the prefill",
    H2oConfig::knobs,
    "h2o:ratio=0",
    |part, b| {
        let cfg: H2oConfig = configure(part)?;
        Ok(eviction::component(
            &cfg.common,
            Budget::Uniform,
            Box::new(ObservedAttention),
            b.layout,
            b.row_format,
        ))
    },
);

/// Mean attention received from the queries that could see each key.
pub struct ObservedAttention;

impl Scorer for ObservedAttention {
    fn name(&self) -> String {
        "h2o".into()
    }
    fn score(
        &self,
        _layer: usize,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) -> Vec<Vec<f32>> {
        let (d, nh, group) = (shape.head_dim, shape.n_heads, shape.group());
        (0..shape.n_kv_heads)
            .into_par_iter()
            .map(|g| {
                let n = kv[g].positions.len();
                let mut sum = vec![0f32; n];
                let mut row = Vec::with_capacity(n);
                for (i, &qp) in positions.iter().enumerate() {
                    for h in g * group..(g + 1) * group {
                        let qh = &q[(i * nh + h) * d..(i * nh + h + 1) * d];
                        attention_row(qh, &kv[g], qp, d, &mut row);
                        sum.iter_mut().zip(&row).for_each(|(a, w)| *a += w);
                    }
                }
                // Queries that could see the key: those at or after its position.
                sum.iter()
                    .zip(kv[g].positions)
                    .map(|(s, &p)| {
                        let seen_by = positions.iter().filter(|&&qp| qp >= p).count().max(1);
                        s / (seen_by * group) as f32
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::tests::one_head;

    #[test]
    fn the_most_attended_key_scores_highest() {
        let (q, pos, keys, shape) = one_head(10, 0, 3);
        let kv = [KvSlices::new(&keys, &keys, &pos)];
        let s = ObservedAttention.score(0, &q, &pos, shape, &kv);
        let best = (0..10).max_by(|&a, &b| s[0][a].total_cmp(&s[0][b])).unwrap();
        assert_eq!(best, 3, "{:?}", s[0]);
        // Key 0 is seen by all 10 queries, key 9 by one: both normalised to a mean.
        assert!(s[0].iter().all(|&x| x <= 1.0 + 1e-6));
    }
}
