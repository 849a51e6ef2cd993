//! TOVA (Oren et al., 2024, "Transformers are Multi-State RNNs", arXiv:2401.06104): the keys
//! the newest query attends to most are kept. As in kvpress's `TOVAPress`, the score is the last
//! query's attention averaged over every query head of the layer (one ranking shared by all KV
//! heads), and the last token is always kept. See docs/methods/kv-baselines.md.

use crate::eviction::{self, keep_rows_at, mean_attention, Budget, EvictionConfig, Scorer};
use crate::policy::{configure, PolicyConfig, PolicyEntry};
use frugal_numerics::attention::{AttentionShape, KvSlices};

crate::policy_config! {
    /// TOVA: only the shared eviction knobs.
    pub struct TovaConfig {
        flatten pub common: EvictionConfig;
    }
}

pub const TOVA: PolicyEntry = PolicyEntry::taking_format(
    "tova",
    "TOVA: keeps the keys the last query attends to most (averaged over the layer's heads)",
    TovaConfig::knobs,
    "tova:ratio=0",
    |part, b| {
        let cfg: TovaConfig = configure(part)?;
        Ok(eviction::component(
            &cfg.common,
            Budget::Uniform,
            Box::new(LastQuery),
            b.layout,
            b.row_format,
        ))
    },
);

/// The last query's attention, averaged over all query heads of the layer.
pub struct LastQuery;

impl Scorer for LastQuery {
    fn name(&self) -> String {
        "tova".into()
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
        let per_kv = mean_attention(q, positions, shape, kv, t - 1..t);
        // Every KV head holds the same positions unless an earlier eviction differed per head
        // (it does not: the shared ranking evicts the same rows from every head).
        let n = per_kv.iter().map(Vec::len).min().unwrap_or(0);
        let mut shared = vec![0f32; n];
        for s in &per_kv {
            shared.iter_mut().zip(s).for_each(|(a, b)| *a += b / per_kv.len() as f32);
        }
        let last = positions[t - 1];
        kv.iter()
            .map(|h| {
                let mut s = shared.clone();
                s.resize(h.positions.len(), 0.0);
                keep_rows_at(&mut s, h.positions, last);
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::tests::one_head;

    #[test]
    fn keeps_what_the_last_query_attends_to_and_the_last_token() {
        let (q, pos, keys, shape) = one_head(6, 0, 1);
        let kv = [KvSlices::new(&keys, &keys, &pos)];
        let s = LastQuery.score(0, &q, &pos, shape, &kv);
        let mut order: Vec<usize> = (0..6).collect();
        order.sort_by(|&a, &b| s[0][b].total_cmp(&s[0][a]));
        assert_eq!(&order[..2], &[5, 1], "{:?}", s[0]);
    }
}
