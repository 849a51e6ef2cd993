//! Expected Attention (Devoto et al., 2025, "Expected Attention: KV Cache Compression by
//! Estimating Attention from Future Queries Distribution", arXiv:2510.00636; kvpress's
//! `ExpectedAttentionPress`): future queries are modelled as a Gaussian (mean μ, covariance Σ
//! of the queries seen), so the expected unnormalised attention to key k is
//! `exp(μ·k/√d + ½·kᵀΣk/d)`; scores are that, normalised over the keys, averaged over the query
//! heads sharing the KV head, times the value's norm. The first `sink` tokens are always kept.
//! Defaults are kvpress's (`n_future_positions` 512, 4 sinks, covariance and value norm on).
//!
//! Ours (labelled): kvpress takes the statistics of the pre-RoPE queries and rotates them by the
//! RoPE rotation averaged over the next 512 positions; a policy here sees only post-RoPE queries
//! and not the model's RoPE base, so the statistics are those of the post-RoPE queries of the
//! call's last `future` positions, which carry the rotation averaged over the last 512 positions
//! instead of the next 512 (the same for slow RoPE frequencies, a phase lag for fast ones). See
//! docs/methods/kv-baselines.md.

use crate::eviction::{self, Budget, EvictionConfig, Scorer};
use crate::policy::{configure, KnobKind, PolicyConfig, PolicyEntry};
use frugal_numerics::attention::{AttentionShape, KvSlices};
use rayon::prelude::*;

crate::policy_config! {
    /// Expected Attention's query model; the defaults are kvpress's.
    pub struct ExpectedAttentionConfig {
        flatten pub common: EvictionConfig;
        /// positions whose queries give the statistics (kvpress: the next 512 positions' RoPE)
        pub future: usize = 512, KnobKind::Int { min: 1, max: 1 << 20 };
        /// first tokens always kept
        pub sink: u32 = 4, KnobKind::Int { min: 0, max: 1 << 16 };
        /// use the queries' covariance, not only their mean
        pub covariance: bool = true, KnobKind::Switch;
        /// multiply scores by the value's L2 norm
        pub vnorm: bool = true, KnobKind::Switch;
    }
}

pub const EXPECTED_ATTENTION: PolicyEntry = PolicyEntry::taking_format(
    "expected-attention",
    "Expected Attention: keeps the keys a Gaussian model of future queries attends to most",
    ExpectedAttentionConfig::knobs,
    "expected-attention:ratio=0",
    |part, b| {
        let cfg: ExpectedAttentionConfig = configure(part)?;
        Ok(eviction::component(
            &cfg.common,
            Budget::Uniform,
            Box::new(ExpectedScorer::from(&cfg)),
            b.layout,
            b.row_format,
        ))
    },
);

#[derive(Clone, Copy, Debug)]
pub struct ExpectedScorer {
    pub future: usize,
    pub sink: u32,
    pub covariance: bool,
    pub vnorm: bool,
}

impl From<&ExpectedAttentionConfig> for ExpectedScorer {
    fn from(c: &ExpectedAttentionConfig) -> Self {
        ExpectedScorer {
            future: c.future,
            sink: c.sink,
            covariance: c.covariance,
            vnorm: c.vnorm,
        }
    }
}

impl Scorer for ExpectedScorer {
    fn name(&self) -> String {
        "expected-attention".into()
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
        let t = positions.len();
        let rows: Vec<usize> = (t.saturating_sub(self.future)..t)
            .filter(|&i| positions[i] >= self.sink)
            .collect();
        let rows = if rows.is_empty() { vec![t - 1] } else { rows };
        (0..shape.n_kv_heads)
            .into_par_iter()
            .map(|g| {
                let h_kv = &kv[g];
                let n = h_kv.positions.len();
                let mut acc = vec![0f32; n];
                for h in g * group..(g + 1) * group {
                    let query = |i: usize| &q[(i * nh + h) * d..(i * nh + h + 1) * d];
                    let mut mu = vec![0f64; d];
                    for &i in &rows {
                        mu.iter_mut().zip(query(i)).for_each(|(m, x)| *m += *x as f64);
                    }
                    mu.iter_mut().for_each(|m| *m /= rows.len() as f64);
                    let mut cov = vec![0f64; d * d];
                    if self.covariance {
                        for &i in &rows {
                            let c: Vec<f64> =
                                query(i).iter().zip(&mu).map(|(x, m)| *x as f64 - m).collect();
                            for a in 0..d {
                                for b in 0..d {
                                    cov[a * d + b] += c[a] * c[b];
                                }
                            }
                        }
                        cov.iter_mut().for_each(|c| *c /= rows.len() as f64);
                    }
                    let logits: Vec<f64> = (0..n)
                        .map(|j| {
                            let k = &h_kv.keys[j * d..(j + 1) * d];
                            let mean: f64 = k.iter().zip(&mu).map(|(a, m)| *a as f64 * m).sum();
                            let mut quad = 0.0;
                            if self.covariance {
                                for a in 0..d {
                                    let row = &cov[a * d..(a + 1) * d];
                                    let s: f64 =
                                        row.iter().zip(k).map(|(c, kb)| c * *kb as f64).sum();
                                    quad += k[a] as f64 * s;
                                }
                            }
                            mean / (d as f64).sqrt() + 0.5 * quad / d as f64
                        })
                        .collect();
                    // Softmax over the non-sink keys.
                    let live = |j: usize| h_kv.positions[j] >= self.sink;
                    let max = (0..n)
                        .filter(|&j| live(j))
                        .map(|j| logits[j])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = (0..n).filter(|&j| live(j)).map(|j| (logits[j] - max).exp()).sum();
                    for j in (0..n).filter(|&j| live(j)) {
                        acc[j] += ((logits[j] - max).exp() / z) as f32 / group as f32;
                    }
                }
                if self.vnorm {
                    for (j, a) in acc.iter_mut().enumerate() {
                        let v = &h_kv.values[j * d..(j + 1) * d];
                        *a *= v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    }
                }
                // Sinks: above every other row.
                let top = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (a, &p) in acc.iter_mut().zip(h_kv.positions) {
                    if p < self.sink {
                        *a = if top.is_finite() { top + 1.0 } else { 1.0 };
                    }
                }
                acc
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::tests::one_head;

    #[test]
    fn keys_along_the_mean_query_and_the_sinks_score_highest() {
        let (q, pos, keys, shape) = one_head(8, 0, 5);
        let kv = [KvSlices::new(&keys, &keys, &pos)];
        let s = ExpectedScorer {
            future: 512,
            sink: 1,
            covariance: true,
            vnorm: true,
        }
        .score(0, &q, &pos, shape, &kv);
        let mut order: Vec<usize> = (0..8).collect();
        order.sort_by(|&a, &b| s[0][b].total_cmp(&s[0][a]));
        assert_eq!(&order[..2], &[0, 5], "sink first, then the aligned key: {:?}", s[0]);
    }
}
