//! What every score-and-evict policy shares (SnapKV, PyramidKV, H2O, TOVA, Knorm, Expected
//! Attention, AdaKV): an attention half that scores the stored keys from the step's own queries,
//! and a cache half that keeps the best-scored rows of each (layer, KV head) and frees the rest.
//! Each method's file holds only its config, its scoring rule and its registry entry; see
//! docs/methods/kv-baselines.md.
//!
//! Why the attention half scores: the scores of SnapKV, PyramidKV, H2O and TOVA are attention
//! weights of the call's queries, which only the attention step sees (the cache receives keys
//! and values, never queries). The step plans densely, so every query of a prefill sees every
//! key, exactly as in kvpress (compress after the prefill); the scores go to the cache as
//! [`Findings`] and the cache evicts after the layer's attention ran.
//!
//! When compression happens (ours): a call of at least `min_call` tokens (a prefill, or a
//! prefill chunk) is compressed, and afterwards each head keeps `(1 − ratio)` of the tokens of
//! all compressed calls so far (kvpress's `int(k_len · (1 − ratio))`), chosen among the rows it
//! still holds. Tokens of shorter calls (decode steps, a question appended after a compressed
//! context) are never evicted, which is kvpress's rule that only the prefill is compressed and
//! what makes question-agnostic compression possible: prefill the context, let it compress,
//! then append the question. A chunked prefill compresses after every chunk, so the store never
//! holds more than the budget plus one chunk (peak bytes fall with the budget).
//!
//! Storage: each (layer, KV head) is a [`QuantHead`] in the row format a storage-format part
//! supplies (`snapkv:ratio=0.5+kivi:bits=4`), otherwise unquantised rows in the store's dtype
//! (f16 by default, as the full store). Eviction rebuilds a head
//! from its kept rows, so the freed bytes really return to the allocator; rows of a compressed
//! call are quantised only after its eviction, so a one-shot prefill is quantised once (a
//! chunked prefill re-quantises earlier chunks' kept rows when it rebuilds a head; ours).

use crate::kivi::{QuantHead, RowFormat};
use crate::policy::{Component, KnobKind};
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, Findings, StepContext};
use frugal_engine::cache::{CachePolicy, HeadView, KvLayout};
use frugal_numerics::attention::{AttentionShape, KeyMask, KvSlices};
use rayon::prelude::*;

crate::policy_config! {
    /// Knobs every evicting policy shares.
    pub struct EvictionConfig {
        /// fraction of each compressed call's tokens evicted (kvpress's `compression_ratio`;
        /// its default 0 disables the press, ours is 0.5)
        pub ratio: f64 = 0.5, KnobKind::Float { min: 0.0, max: 0.99 };
        /// calls of at least this many tokens are compressed; shorter ones (decode steps, an
        /// appended question) are kept whole (ours)
        pub min_call: usize = 64, KnobKind::Int { min: 1, max: 1 << 20 };
    }
}

/// How a layer's budget is spread over layers and heads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Every (layer, head) keeps the same number of rows.
    Uniform,
    /// PyramidKV: more rows in lower layers, fewer in higher ones (`window`, `beta` as in the
    /// paper's formula; see `pyramidkv.rs`).
    Pyramid { window: usize, beta: f64 },
    /// AdaKV: a layer's heads share one budget, chosen by score across heads; each head first
    /// keeps its best `alpha` share of a uniform head budget (the safeguard).
    HeadWise { alpha: f64 },
}

/// A scoring rule: one score per stored row of each KV head; higher is kept first.
pub trait Scorer: Send + Sync {
    fn name(&self) -> String;
    /// `q` is `[T, n_heads, head_dim]` at `positions` (this call's queries, RoPE applied);
    /// `kv[g]` holds KV head `g`'s rows (this call's included). Returns `kv[g].positions.len()`
    /// scores per head.
    fn score(
        &self,
        layer: usize,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) -> Vec<Vec<f32>>;
}

/// The findings an evicting policy's attention half hands its cache half.
struct RowScores(Vec<Vec<f32>>);

/// Builds an evicting policy's two halves.
pub fn component(
    common: &EvictionConfig,
    budget: Budget,
    scorer: Box<dyn Scorer>,
    layout: KvLayout,
    row_format: Option<RowFormat>,
) -> Component {
    let fmt = row_format.unwrap_or(RowFormat::plain(layout.dtype));
    let name = scorer.name();
    Component {
        cache: Some(Box::new(EvictingCache {
            name: name.clone(),
            layout,
            fmt,
            heads: vec![QuantHead::new(layout.head_dim, fmt); layout.n_layers * layout.n_kv_heads],
            ratio: common.ratio,
            min_call: common.min_call,
            budget,
            compressed_seen: vec![0; layout.n_layers],
            protected: vec![Vec::new(); layout.n_layers],
            evictions: 0,
            peak: 0,
        })),
        attention: Some(Box::new(ScoringAttention {
            name,
            scorer,
            active: common.ratio > 0.0,
            min_call: common.min_call,
            findings: None,
        })),
    }
}

struct ScoringAttention {
    name: String,
    scorer: Box<dyn Scorer>,
    active: bool,
    min_call: usize,
    findings: Option<RowScores>,
}

impl AttentionPolicy for ScoringAttention {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        None
    }
    fn plan<'a>(
        &'a mut self,
        ctx: &StepContext<'a>,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) -> AttentionPlan<'a> {
        if self.active && positions.len() >= self.min_call {
            let scores = self.scorer.score(ctx.layer, q, positions, shape, kv);
            self.findings = Some(RowScores(scores));
        }
        AttentionPlan::Mask(None)
    }
    fn take_findings(&mut self) -> Option<Findings> {
        self.findings.take().map(|f| Box::new(f) as Findings)
    }
    fn reset(&mut self) {
        self.findings = None;
    }
}

struct EvictingCache {
    name: String,
    layout: KvLayout,
    fmt: RowFormat,
    heads: Vec<QuantHead>,
    ratio: f64,
    min_call: usize,
    budget: Budget,
    /// Tokens of compressed calls stored so far, per layer.
    compressed_seen: Vec<usize>,
    /// Positions of tokens from calls too short to compress, per layer (never evicted).
    protected: Vec<Vec<u32>>,
    evictions: usize,
    /// Largest footprint seen, including the moments inside a forward call when a layer holds
    /// a whole new chunk before its eviction (a forward call's end hides those).
    peak: usize,
}

impl EvictingCache {
    fn compresses(&self, tokens: usize) -> bool {
        self.ratio > 0.0 && tokens >= self.min_call
    }

    /// Rows each head of `layer` keeps among its unprotected rows (uniform share).
    fn uniform_keep(&self, layer: usize) -> usize {
        let seen = self.compressed_seen[layer];
        ((seen as f64) * (1.0 - self.ratio)) as usize
    }
}

impl CachePolicy for EvictingCache {
    fn name(&self) -> String {
        let fmt = if !self.fmt.quantises() {
            String::new()
        } else {
            format!("+{}", self.fmt.label())
        };
        format!("{}{fmt}", self.name)
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        let KvLayout {
            n_kv_heads,
            head_dim: d,
            ..
        } = self.layout;
        let defer = self.compresses(positions.len());
        if defer {
            self.compressed_seen[layer] += positions.len();
        } else {
            self.protected[layer].extend_from_slice(positions);
        }
        for g in 0..n_kv_heads {
            let h = &mut self.heads[layer * n_kv_heads + g];
            h.k.push(&crate::kivi::head_rows(
                k,
                positions.len(),
                n_kv_heads,
                d,
                g,
            ));
            h.v.push(&crate::kivi::head_rows(
                v,
                positions.len(),
                n_kv_heads,
                d,
                g,
            ));
            h.positions.extend(positions);
            // A compressed call's rows are quantised after its eviction (observe).
            if !defer {
                h.k.compact();
                h.v.compact();
            }
        }
    }

    fn view(&self, layer: usize, kv_head: usize) -> HeadView<'_> {
        self.heads[layer * self.layout.n_kv_heads + kv_head].view()
    }

    fn resident_bytes(&self) -> usize {
        self.heads.iter().map(QuantHead::resident_bytes).sum()
    }

    fn reset(&mut self) {
        let (layout, fmt) = (self.layout, self.fmt);
        self.heads =
            vec![QuantHead::new(layout.head_dim, fmt); layout.n_layers * layout.n_kv_heads];
        self.compressed_seen = vec![0; layout.n_layers];
        self.protected = vec![Vec::new(); layout.n_layers];
        self.evictions = 0;
        self.peak = 0;
    }

    /// Keys a sliding window drops are freed as the full store frees them (once
    /// `FORGET_SLACK` of them have piled up; whole quantised blocks only, nothing re-quantised).
    fn forget_before(&mut self, layer: usize, position: u32) {
        let n_kv = self.layout.n_kv_heads;
        for h in &mut self.heads[layer * n_kv..(layer + 1) * n_kv] {
            h.forget_before(position);
        }
        self.protected[layer].retain(|&p| p >= position);
    }

    fn observe(&mut self, layer: usize, findings: Findings) {
        let Ok(scores) = findings.downcast::<RowScores>() else {
            return;
        };
        self.peak = self.peak.max(self.resident_bytes());
        let n_kv = self.layout.n_kv_heads;
        let mut heads_pos: Vec<Vec<u32>> = Vec::with_capacity(n_kv);
        for g in 0..n_kv {
            heads_pos.push(self.heads[layer * n_kv + g].positions.to_vec());
        }
        let protected = &self.protected[layer];
        let is_protected = |p: u32| protected.binary_search(&p).is_ok();
        let keep = select(
            &scores.0,
            &heads_pos,
            &is_protected,
            self.budget,
            self.uniform_keep(layer),
            self.compressed_seen[layer],
            layer,
            self.layout.n_layers,
            self.ratio,
        );
        for (g, kept) in keep.into_iter().enumerate() {
            let h = &mut self.heads[layer * n_kv + g];
            *h = rebuild(h, &kept, self.layout.head_dim, self.fmt);
        }
        self.evictions += 1;
        self.peak = self.peak.max(self.resident_bytes());
    }

    fn report(&self) -> Option<String> {
        let rows: usize = self.heads.iter().map(|h| h.positions.len()).sum();
        Some(format!(
            "{{\"evictions\":{},\"rows_kept\":{rows},\"kv_peak_bytes\":{}}}",
            self.evictions,
            self.peak.max(self.resident_bytes())
        ))
    }
}

/// A head holding only the rows `kept` (ascending row indices), in `fmt`, compacted.
fn rebuild(h: &QuantHead, kept: &[usize], d: usize, fmt: RowFormat) -> QuantHead {
    let view = h.view();
    let mut out = QuantHead::new(d, fmt);
    let mut k = Vec::with_capacity(kept.len() * d);
    let mut v = Vec::with_capacity(kept.len() * d);
    let mut pos = Vec::with_capacity(kept.len());
    for &r in kept {
        k.extend_from_slice(&view.keys[r * d..(r + 1) * d]);
        v.extend_from_slice(&view.values[r * d..(r + 1) * d]);
        pos.push(view.positions[r]);
    }
    out.k.push(&k);
    out.v.push(&v);
    out.positions.extend(&pos);
    out.k.compact();
    out.v.compact();
    out
}

/// PyramidKV's per-layer row budget for `seen` compressed tokens (the formula kvpress takes
/// from the paper's code): the layers' budgets fall linearly from `max_num` in the first layer
/// to `min_num = (capacity − window)/beta` in the last, summing to the uniform budget; where
/// the pyramid does not fit, the uniform budget.
pub fn pyramid_budget(
    seen: usize,
    ratio: f64,
    window: usize,
    beta: f64,
    layer: usize,
    n_layers: usize,
) -> usize {
    let q_len = seen as f64;
    let w = window as f64;
    let capacity = w + q_len * (1.0 - ratio);
    let mut min_num = (capacity - w) / beta;
    let mut max_num = (capacity - w) * 2.0 - min_num;
    if max_num >= q_len - w {
        max_num = q_len - w;
        min_num = (capacity - w) * 2.0 - max_num;
    }
    let uniform = (q_len * (1.0 - ratio)).round() as usize;
    if !(q_len >= max_num && max_num >= min_num && min_num >= w) || n_layers < 2 {
        return uniform;
    }
    let steps = (max_num - min_num) / (n_layers - 1) as f64;
    (max_num - layer as f64 * steps).round().max(0.0) as usize
}

/// Which rows each head keeps (ascending row indices): protected rows always, then the
/// best-scored others up to the budget.
#[allow(clippy::too_many_arguments)]
fn select(
    scores: &[Vec<f32>],
    positions: &[Vec<u32>],
    is_protected: &dyn Fn(u32) -> bool,
    budget: Budget,
    uniform_keep: usize,
    seen: usize,
    layer: usize,
    n_layers: usize,
    ratio: f64,
) -> Vec<Vec<usize>> {
    let n_heads = scores.len();
    // Candidates per head: (score, row), best first; ties keep the later token.
    let ranked: Vec<Vec<(f32, usize)>> = (0..n_heads)
        .map(|g| {
            let mut c: Vec<(f32, usize)> = positions[g]
                .iter()
                .enumerate()
                .filter(|(_, &p)| !is_protected(p))
                .map(|(r, _)| (scores[g][r], r))
                .collect();
            c.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
            c
        })
        .collect();
    let mut keep: Vec<Vec<usize>> = match budget {
        Budget::Uniform | Budget::Pyramid { .. } => {
            let n = match budget {
                Budget::Pyramid { window, beta } => {
                    pyramid_budget(seen, ratio, window, beta, layer, n_layers)
                }
                _ => uniform_keep,
            };
            ranked
                .iter()
                .map(|c| c.iter().take(n).map(|x| x.1).collect())
                .collect()
        }
        Budget::HeadWise { alpha } => {
            let safe = (uniform_keep as f64 * alpha) as usize;
            let total = uniform_keep * n_heads;
            let mut keep: Vec<Vec<usize>> = ranked
                .iter()
                .map(|c| c.iter().take(safe).map(|x| x.1).collect())
                .collect();
            let mut rest: Vec<(f32, usize, usize)> = ranked
                .iter()
                .enumerate()
                .flat_map(|(g, c)| c.iter().skip(safe).map(move |&(s, r)| (s, g, r)))
                .collect();
            rest.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.2.cmp(&a.2)));
            let taken: usize = keep.iter().map(Vec::len).sum();
            for &(_, g, r) in rest.iter().take(total.saturating_sub(taken)) {
                keep[g].push(r);
            }
            keep
        }
    };
    for (g, k) in keep.iter_mut().enumerate() {
        k.extend(
            positions[g]
                .iter()
                .enumerate()
                .filter(|(_, &p)| is_protected(p))
                .map(|(r, _)| r),
        );
        k.sort_unstable();
    }
    keep
}

/// Softmax attention weights of query row `qi` (query head `h`) over the keys of `kv` that
/// are causally visible from `q_pos`, written into `out` (0 for invisible keys).
pub fn attention_row(q: &[f32], kv: &KvSlices<'_>, q_pos: u32, d: usize, out: &mut Vec<f32>) {
    let scale = 1.0 / (d as f32).sqrt();
    out.clear();
    let mut max = f32::NEG_INFINITY;
    for (j, &p) in kv.positions.iter().enumerate() {
        let s = if p <= q_pos {
            let k = &kv.keys[j * d..(j + 1) * d];
            q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale
        } else {
            f32::NEG_INFINITY
        };
        max = max.max(s);
        out.push(s);
    }
    let mut total = 0.0;
    for s in out.iter_mut() {
        *s = if s.is_finite() { (*s - max).exp() } else { 0.0 };
        total += *s;
    }
    if total > 0.0 {
        out.iter_mut().for_each(|s| *s /= total);
    }
}

/// Attention weights of the queries `rows` (indices into this call's queries), averaged over the
/// queries and over the query heads of each KV head: the scores SnapKV and TOVA start from.
pub fn mean_attention(
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    kv: &[KvSlices<'_>],
    rows: std::ops::Range<usize>,
) -> Vec<Vec<f32>> {
    let (d, nh, group) = (shape.head_dim, shape.n_heads, shape.group());
    (0..shape.n_kv_heads)
        .into_par_iter()
        .map(|g| {
            let n = kv[g].positions.len();
            let mut acc = vec![0f32; n];
            let mut row = Vec::with_capacity(n);
            let count = (rows.len() * group).max(1) as f32;
            for i in rows.clone() {
                for h in g * group..(g + 1) * group {
                    let qh = &q[(i * nh + h) * d..(i * nh + h + 1) * d];
                    attention_row(qh, &kv[g], positions[i], d, &mut row);
                    acc.iter_mut().zip(&row).for_each(|(a, w)| *a += w / count);
                }
            }
            acc
        })
        .collect()
}

/// Gives the rows whose positions are among `positions` (this call's last `n` tokens) a score
/// above every other row's, so they are kept (kvpress pads the window's scores with max + 1).
pub fn keep_rows_at(scores: &mut [f32], row_positions: &[u32], keep_from: u32) {
    let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let top = if top.is_finite() { top + 1.0 } else { 1.0 };
    for (s, &p) in scores.iter_mut().zip(row_positions) {
        if p >= keep_from {
            *s = top;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One query head over one KV head (`head_dim` 4), `n` tokens, one query per token: every
    /// query points along the first axis, key `hot` is long along it, every other key is short
    /// and off it; values equal keys. For the scorers' tests.
    pub(crate) fn one_head(
        n: usize,
        _window: usize,
        hot: usize,
    ) -> (Vec<f32>, Vec<u32>, Vec<f32>, AttentionShape) {
        let q: Vec<f32> = (0..n).flat_map(|_| [1.0, 0.0, 0.0, 0.0]).collect();
        let keys: Vec<f32> = (0..n)
            .flat_map(|i| {
                if i == hot {
                    [4.0, 0.0, 0.0, 0.0]
                } else {
                    [0.0, 0.5, 0.1 * i as f32, 0.0]
                }
            })
            .collect();
        let shape = AttentionShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 4,
        };
        (q, (0..n as u32).collect(), keys, shape)
    }

    #[test]
    fn select_keeps_protected_rows_and_the_best_scored_others() {
        let scores = vec![vec![0.1, 0.9, 0.5, 0.3, 0.0], vec![0.9, 0.8, 0.7, 0.1, 0.0]];
        let pos = vec![vec![0, 1, 2, 3, 4], vec![0, 1, 2, 3, 4]];
        let prot = |p: u32| p == 4;
        let keep = select(&scores, &pos, &prot, Budget::Uniform, 2, 4, 0, 1, 0.5);
        assert_eq!(keep, vec![vec![1, 2, 4], vec![0, 1, 4]]);
        // Head-wise: 4 rows over both heads, safeguard 0.5 → each head first keeps its best one.
        let keep = select(
            &scores,
            &pos,
            &prot,
            Budget::HeadWise { alpha: 0.5 },
            2,
            4,
            0,
            1,
            0.5,
        );
        assert_eq!(keep, vec![vec![1, 4], vec![0, 1, 2, 4]]);
    }

    #[test]
    fn pyramid_budgets_fall_with_depth_and_average_to_the_uniform_budget() {
        let b: Vec<usize> = (0..8)
            .map(|l| pyramid_budget(4000, 0.5, 64, 20.0, l, 8))
            .collect();
        assert!(b.windows(2).all(|w| w[0] >= w[1]) && b[0] > b[7], "{b:?}");
        let mean = b.iter().sum::<usize>() as f64 / 8.0;
        assert!((mean - 2000.0).abs() < 2.0, "mean {mean}");
    }
}
