//! SnapKV (Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before Generation",
//! arXiv:2404.14469): the last `window` queries of a prefill are an observation window; each
//! older key is scored by the attention those queries pay it (averaged over the window and over
//! the query heads sharing the KV head), smoothed by an average pool of width `kernel` along the
//! sequence, and the best-scored keys are kept together with the window itself. Defaults are
//! kvpress's `SnapKVPress` (window 64, kernel 5). See docs/methods/kv-baselines.md.

use crate::eviction::{self, keep_rows_at, mean_attention, Budget, EvictionConfig, Scorer};
use crate::policy::{configure, KnobKind, PolicyConfig, PolicyEntry};
use frugal_numerics::attention::{AttentionShape, KvSlices};

crate::policy_config! {
    /// SnapKV's observation window and pooling; the defaults are kvpress's.
    pub struct SnapKvConfig {
        flatten pub common: EvictionConfig;
        /// queries in the observation window (the call's last ones)
        pub window: usize = 64, KnobKind::Int { min: 1, max: 1 << 16 };
        /// width of the average pool over the sequence (odd)
        pub kernel: usize = 5, KnobKind::Int { min: 1, max: 255 };
    }
}

pub const SNAPKV: PolicyEntry = PolicyEntry::taking_format(
    "snapkv",
    "SnapKV: keeps the keys the prompt's last queries attend to (pooled), evicts the rest",
    SnapKvConfig::knobs,
    "snapkv:ratio=0",
    |part, b| {
        let cfg: SnapKvConfig = configure(part)?;
        Ok(eviction::component(
            &cfg.common,
            Budget::Uniform,
            Box::new(SnapScorer::from(&cfg)),
            b.layout,
            b.row_format,
        ))
    },
);

/// SnapKV's scoring rule (also PyramidKV's and one of AdaKV's).
#[derive(Clone, Copy, Debug)]
pub struct SnapScorer {
    pub window: usize,
    pub kernel: usize,
    pub label: &'static str,
}

impl From<&SnapKvConfig> for SnapScorer {
    fn from(c: &SnapKvConfig) -> Self {
        SnapScorer {
            window: c.window,
            kernel: c.kernel,
            label: "snapkv",
        }
    }
}

/// Average pool of width `kernel` (zero padding counted, as torch's `avg_pool1d` does).
pub fn avg_pool(x: &[f32], kernel: usize) -> Vec<f32> {
    let half = kernel / 2;
    (0..x.len())
        .map(|i| {
            let a = i.saturating_sub(half);
            let b = (i + half + 1).min(x.len());
            x[a..b].iter().sum::<f32>() / kernel as f32
        })
        .collect()
}

impl Scorer for SnapScorer {
    fn name(&self) -> String {
        self.label.into()
    }
    fn score(
        &self,
        _layer: usize,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) -> Vec<Vec<f32>> {
        let t = positions.len();
        let w = self.window.min(t);
        let window_from = positions[t - w];
        let mut scores = mean_attention(q, positions, shape, kv, t - w..t);
        for (g, s) in scores.iter_mut().enumerate() {
            // Pool only the rows before the window; the window itself is kept.
            let n_old = kv[g].positions.iter().filter(|&&p| p < window_from).count();
            let pooled = avg_pool(&s[..n_old], self.kernel);
            s[..n_old].copy_from_slice(&pooled);
            keep_rows_at(s, kv[g].positions, window_from);
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::tests::one_head;

    #[test]
    fn pool_counts_the_padding() {
        assert_eq!(avg_pool(&[5.0, 0.0, 0.0], 3), vec![5.0 / 3.0, 5.0 / 3.0, 0.0]);
    }

    #[test]
    fn keeps_the_keys_the_window_attends_to() {
        // Key 2 matches the window's queries; keys 5.. are the window itself.
        let (q, pos, keys, shape) = one_head(8, 3, 2);
        let kv = [KvSlices::new(&keys, &keys, &pos)];
        let s = SnapScorer {
            window: 3,
            kernel: 1,
            label: "snapkv",
        }
        .score(0, &q, &pos, shape, &kv);
        let best_old = (0..5).max_by(|&a, &b| s[0][a].total_cmp(&s[0][b])).unwrap();
        assert_eq!(best_old, 2, "{:?}", s[0]);
        assert!(s[0][5..].iter().all(|&x| x > s[0][2]), "window kept: {:?}", s[0]);
    }
}
