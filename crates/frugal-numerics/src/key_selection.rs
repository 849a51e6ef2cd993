//! Which keys a sparse attention step should visit: exact probe probabilities and their
//! column importance, chunk-mean scoring (after Quest), recall budgets, max pooling (after
//! SnapKV) and row selection — the heuristics OmniSparse's planner and its token-level slimming
//! are built from (docs/methods/omnisparse.md). No kernel lives here: the selected index lists
//! go to [`crate::sparse_attention::sparse_attention`].

use crate::attention::{
    exp_nonpositive, lanes_fold, matmul_bt, softmax_in_place, AttentionShape, KvSlices,
};
use crate::sparse_attention::gather_queries;

/// How the query heads of one GQA group are combined into one KV head's column importance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupAgg {
    Sum,
    Max,
}

/// Softmax attention probabilities of the probe tokens `toks` (every head of KV group `g`)
/// over the first `n_keys` rows of `kv`, causal. Returns `[toks.len() · group, n_keys]`,
/// rows ordered (token, head-in-group). Per-row key scales are honoured; value scales are
/// irrelevant to probabilities. [`probe_importance`] is the fast path when only the column
/// importance is wanted.
pub fn probe_probabilities(
    q: &[f32],
    q_positions: &[u32],
    toks: &[usize],
    g: usize,
    kv: &KvSlices<'_>,
    n_keys: usize,
    shape: AttentionShape,
) -> Vec<f32> {
    let (mut scores, vis, n) = probe_scores(q, q_positions, toks, g, kv, n_keys, shape);
    let group = shape.group();
    for (i, &v) in vis.iter().enumerate() {
        for h in 0..group {
            let row = &mut scores[(i * group + h) * n..(i * group + h + 1) * n];
            row[v..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            softmax_in_place(row);
        }
    }
    scores
}

/// Column importance of [`probe_probabilities`] (heads combined by `agg`, mean over the probe
/// tokens), fused into three passes over each score row ([`softmax_mass`]).
#[allow(clippy::too_many_arguments)]
pub fn probe_importance(
    q: &[f32],
    q_positions: &[u32],
    toks: &[usize],
    g: usize,
    kv: &KvSlices<'_>,
    n_keys: usize,
    shape: AttentionShape,
    agg: GroupAgg,
) -> Vec<f32> {
    let (mut scores, vis, n) = probe_scores(q, q_positions, toks, g, kv, n_keys, shape);
    softmax_mass(&mut scores, n, &vis, shape.group(), agg)
}

/// Scores `q·k/√d` (key scales applied) of the probe tokens' query heads against the first
/// `n_keys` rows, `[toks · group, n]`; each token's causally visible row count; and `n`.
fn probe_scores(
    q: &[f32],
    q_positions: &[u32],
    toks: &[usize],
    g: usize,
    kv: &KvSlices<'_>,
    n_keys: usize,
    shape: AttentionShape,
) -> (Vec<f32>, Vec<usize>, usize) {
    let d = shape.head_dim;
    let rows = toks.len() * shape.group();
    let n = n_keys.min(kv.positions.len());
    let mut scores = vec![0f32; rows * n];
    let vis: Vec<usize> = toks
        .iter()
        .map(|&t| kv.positions[..n].partition_point(|&p| p <= q_positions[t]))
        .collect();
    if rows == 0 || n == 0 {
        return (scores, vis, n);
    }
    let qbuf = gather_queries(q, toks, g, shape, 1.0 / (d as f32).sqrt());
    matmul_bt(&mut scores, &qbuf, kv.keys, rows, n, d);
    if let Some(s) = kv.key_scale {
        for row in scores.chunks_exact_mut(n) {
            row.iter_mut().zip(s).for_each(|(x, m)| *x *= m);
        }
    }
    (scores, vis, n)
}

/// Column importance straight from scores `[vis.len() · group, n]` (rows ordered token, head):
/// per row, softmax over its first `vis[token]` entries (the rest count as masked), the group's heads combined by `agg`, then the mean over tokens. Equal to the
/// mean over tokens of the softmaxed rows (heads combined by `agg`), in three passes over a row
/// instead of the six that softmax then summing took.
/// Overwrites `scores`.
fn softmax_mass(
    scores: &mut [f32],
    n: usize,
    vis: &[usize],
    group: usize,
    agg: GroupAgg,
) -> Vec<f32> {
    let mut imp = vec![0f32; n];
    let mut head_max = vec![0f32; if agg == GroupAgg::Max { n } else { 0 }];
    let per_token = 1.0 / vis.len().max(1) as f32;
    for (i, &v) in vis.iter().enumerate() {
        if v == 0 {
            continue;
        }
        if agg == GroupAgg::Max {
            head_max[..v].iter_mut().for_each(|x| *x = 0.0);
        }
        for h in 0..group {
            let row = &mut scores[(i * group + h) * n..(i * group + h) * n + v];
            let max = lanes_fold(row, f32::NEG_INFINITY, f32::max);
            row.iter_mut().for_each(|x| *x = exp_nonpositive(*x - max));
            let sum = lanes_fold(row, 0.0, |a, b| a + b);
            match agg {
                GroupAgg::Sum => {
                    let w = per_token / sum;
                    imp[..v]
                        .iter_mut()
                        .zip(&*row)
                        .for_each(|(a, x)| *a += x * w);
                }
                GroupAgg::Max => {
                    let w = 1.0 / sum;
                    head_max[..v]
                        .iter_mut()
                        .zip(&*row)
                        .for_each(|(a, x)| *a = a.max(x * w));
                }
            }
        }
        if agg == GroupAgg::Max {
            imp[..v]
                .iter_mut()
                .zip(&head_max[..v])
                .for_each(|(a, x)| *a += x * per_token);
        }
    }
    imp
}

/// Keys of one KV head averaged over consecutive chunks of `chunk` rows: a cheap stand-in that
/// lets *every* query of a block score every chunk at `1/chunk` of the probe's cost
/// ([`ChunkKeys::importance`]). Built once per layer and call.
pub struct ChunkKeys {
    chunk: usize,
    n: usize,
    means: Vec<f32>,
}

impl ChunkKeys {
    /// Chunk means of the first `n_keys` rows of `kv` (per-row key scales applied).
    pub fn new(kv: &KvSlices<'_>, n_keys: usize, chunk: usize, head_dim: usize) -> Self {
        let d = head_dim;
        let chunk = chunk.max(1);
        let n = n_keys.min(kv.positions.len());
        let mut means = vec![0f32; n.div_ceil(chunk) * d];
        for r in 0..n {
            let s = kv.key_scale.map_or(1.0, |s| s[r]);
            let m = &mut means[(r / chunk) * d..(r / chunk + 1) * d];
            m.iter_mut()
                .zip(&kv.keys[r * d..(r + 1) * d])
                .for_each(|(a, k)| *a += k * s);
        }
        for (c, m) in means.chunks_exact_mut(d).enumerate() {
            let inv = 1.0 / (n.min((c + 1) * chunk) - c * chunk) as f32;
            m.iter_mut().for_each(|x| *x *= inv);
        }
        ChunkKeys { chunk, n, means }
    }

    /// Chunk importance over the first `n_keys` rows (`n_keys.div_ceil(chunk)` values, the last
    /// chunk possibly short) for query tokens `toks` of KV group `g`: each query head scores
    /// every causally visible chunk by `q·k̄/√d + ln(rows)` (the mass of `rows` keys equal to
    /// their mean), softmax over chunks, heads combined by `agg`, mean over
    /// tokens [ours; the chunk scoring follows the block-pooled estimates of Quest (arXiv
    /// 2406.10774) and MInference]. [`ChunkKeys::mix_rows`] turns it into row importance.
    #[allow(clippy::too_many_arguments)]
    pub fn importance(
        &self,
        q: &[f32],
        q_positions: &[u32],
        toks: &[usize],
        g: usize,
        positions: &[u32],
        n_keys: usize,
        shape: AttentionShape,
        agg: GroupAgg,
    ) -> Vec<f32> {
        let d = shape.head_dim;
        let group = shape.group();
        let chunk = self.chunk;
        let n = n_keys.min(self.n);
        let n_ch = n.div_ceil(chunk);
        let rows = toks.len() * group;
        if rows == 0 || n_ch == 0 {
            return vec![0.0; n_ch];
        }
        let qbuf = gather_queries(q, toks, g, shape, 1.0 / (d as f32).sqrt());
        let mut scores = vec![0f32; rows * n_ch];
        matmul_bt(&mut scores, &qbuf, &self.means[..n_ch * d], rows, n_ch, d);
        let mut vis = Vec::with_capacity(toks.len());
        for (i, &tok) in toks.iter().enumerate() {
            let vis_rows = positions[..n].partition_point(|&p| p <= q_positions[tok]);
            let v = vis_rows.div_ceil(chunk);
            // `ln(rows)` is the same for every full chunk, so only a short last chunk needs
            // its difference (softmax ignores a common shift).
            let short = vis_rows - v.saturating_sub(1) * chunk;
            if v > 0 && short < chunk {
                let delta = (short as f32 / chunk as f32).ln();
                for h in 0..group {
                    scores[(i * group + h) * n_ch + v - 1] += delta;
                }
            }
            vis.push(v);
        }
        softmax_mass(&mut scores, n_ch, &vis, group, agg)
    }

    /// Row importance over `n_keys` rows: each chunk's importance spread evenly over its rows,
    /// mixed with a row-level estimate `rows` (the probes') as `(1-w)·even + w·rows` [ours].
    pub fn mix_rows(&self, chunk_imp: &[f32], n_keys: usize, rows: &[f32], w: f32) -> Vec<f32> {
        let chunk = self.chunk;
        let n = n_keys.min(chunk_imp.len() * chunk);
        let mut out = Vec::with_capacity(n);
        for (c, &x) in chunk_imp.iter().enumerate() {
            let (a, b) = (c * chunk, n.min((c + 1) * chunk));
            if a >= b {
                break;
            }
            let even = x / (b - a) as f32;
            out.extend(rows[a..b].iter().map(|p| (1.0 - w) * even + w * p));
        }
        out
    }
}

/// The chunks of one KV head in descending order of importance per row (the row-level order
/// when each chunk's importance is spread evenly over its rows), and how many non-forced
/// rows, taken whole chunk by whole chunk in that order, bring the kept mass (forced rows
/// included) to `tau` of the total. `imp` has one value per chunk of `chunk` rows over `n`
/// rows; rows outside `free` are forced. Chunks without a free row are left out of the order.
/// The chunk-granular [`recall_budget`]: it sorts `n/chunk` values instead of `n`.
pub fn chunk_recall(
    imp: &[f32],
    chunk: usize,
    n: usize,
    free: std::ops::Range<usize>,
    tau: f64,
) -> (Vec<u32>, usize) {
    let span = |c: usize| (c * chunk, n.min((c + 1) * chunk));
    let free_in = |c: usize| {
        let (a, b) = span(c);
        b.min(free.end).saturating_sub(a.max(free.start))
    };
    let mut order: Vec<u32> = (0..imp.len() as u32)
        .filter(|&c| free_in(c as usize) > 0)
        .collect();
    let density = |c: u32| {
        let (a, b) = span(c as usize);
        imp[c as usize] / (b - a) as f32
    };
    order.sort_unstable_by(|&a, &b| density(b).total_cmp(&density(a)));
    if tau >= 1.0 {
        let all = order.iter().map(|&c| free_in(c as usize)).sum();
        return (order, all);
    }
    let total: f64 = imp.iter().map(|&x| x as f64).sum();
    let free_mass = |c: usize| {
        let (a, b) = span(c);
        imp[c] as f64 * free_in(c) as f64 / (b - a) as f64
    };
    let forced: f64 = total - (0..imp.len()).map(free_mass).sum::<f64>();
    let need = tau * total - forced;
    let (mut acc, mut rows) = (0f64, 0usize);
    for &c in &order {
        if acc >= need {
            break;
        }
        acc += free_mass(c as usize);
        rows += free_in(c as usize);
    }
    (order, rows)
}

/// The forced rows (outside `free`) plus the free rows of the chunks of `order`, taken whole
/// in that order until at least `b` free rows are kept; ascending row indices.
pub fn chunk_rows(
    order: &[u32],
    chunk: usize,
    n: usize,
    free: std::ops::Range<usize>,
    b: usize,
) -> Vec<u32> {
    let mut rows: Vec<u32> = (0..free.start.min(n) as u32)
        .chain(free.end as u32..n as u32)
        .collect();
    let mut kept = 0;
    for &c in order {
        if kept >= b {
            break;
        }
        let (a, e) = (c as usize * chunk, n.min((c as usize + 1) * chunk));
        let (a, e) = (a.max(free.start), e.min(free.end));
        rows.extend(a as u32..e as u32);
        kept += e.saturating_sub(a);
    }
    rows.sort_unstable();
    rows
}

/// Smallest number of non-forced keys whose importance, added to that of the forced keys,
/// reaches `tau` of the total (the per-head recall budget `k_g`). `tau ≥ 1` means every
/// non-forced key.
pub fn recall_budget(importance: &[f32], forced: &[bool], tau: f64) -> usize {
    let n_cand = forced.iter().filter(|f| !**f).count();
    if tau >= 1.0 {
        return n_cand;
    }
    let total: f64 = importance.iter().map(|&x| x as f64).sum();
    let forced_mass: f64 = importance
        .iter()
        .zip(forced)
        .filter(|(_, f)| **f)
        .map(|(&x, _)| x as f64)
        .sum();
    let need = tau * total - forced_mass;
    if need <= 0.0 || n_cand == 0 {
        return 0;
    }
    // Keys below `(1-τ)·total / n_cand` together hold less than the (1-τ) slack, so the needed
    // set lies among the keys above it: sort only those.
    let cut = ((1.0 - tau) * total / n_cand as f64) as f32;
    let mut cand: Vec<f32> = importance
        .iter()
        .zip(forced)
        .filter(|(&x, f)| !**f && x >= cut)
        .map(|(&x, _)| x)
        .collect();
    cand.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut acc = 0f64;
    for (i, &x) in cand.iter().enumerate() {
        acc += x as f64;
        if acc >= need {
            return i + 1;
        }
    }
    cand.len()
}

/// Each row's importance replaced by the largest within `radius` rows either side (a 1-D max
/// pool). Used to *rank* keys so that the neighbours of a strongly attended token rank with it
/// (SnapKV's pooling, arXiv 2404.14469 §4.2; the radius is a knob of the caller).
pub fn max_pool(importance: &[f32], radius: usize) -> Vec<f32> {
    let n = importance.len();
    (0..n)
        .map(|j| {
            importance[j.saturating_sub(radius)..(j + radius + 1).min(n)]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect()
}

/// The non-forced rows in descending order of `rank` (ties broken by `importance`), and how
/// many of them, taken in that order, bring the mass of the kept rows (forced ones included)
/// to `tau` of the total `importance`. With `rank == importance` the count is
/// [`recall_budget`]; any other order needs at least as many rows.
pub fn ranked_recall(
    importance: &[f32],
    rank: &[f32],
    forced: &[bool],
    tau: f64,
) -> (Vec<u32>, usize) {
    let mut order: Vec<u32> = (0..importance.len() as u32)
        .filter(|&j| !forced[j as usize])
        .collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        rank[b]
            .total_cmp(&rank[a])
            .then(importance[b].total_cmp(&importance[a]))
    });
    let total: f64 = importance.iter().map(|&x| x as f64).sum();
    let forced_mass: f64 = (0..importance.len())
        .filter(|&j| forced[j])
        .map(|j| importance[j] as f64)
        .sum();
    let need = tau * total - forced_mass;
    let mut count = if tau >= 1.0 { order.len() } else { 0 };
    let mut acc = 0f64;
    while count < order.len() && acc < need {
        acc += importance[order[count] as usize] as f64;
        count += 1;
    }
    (order, count)
}

/// The forced rows plus the `b` most important non-forced rows, as ascending row indices.
pub fn select_rows(importance: &[f32], forced: &[bool], b: usize) -> Vec<u32> {
    let mut cand: Vec<u32> = (0..importance.len() as u32)
        .filter(|&j| !forced[j as usize])
        .collect();
    if b < cand.len() {
        if b == 0 {
            cand.clear();
        } else {
            cand.select_nth_unstable_by(b - 1, |&x, &y| {
                importance[y as usize].total_cmp(&importance[x as usize])
            });
            cand.truncate(b);
        }
    }
    cand.extend((0..importance.len() as u32).filter(|&j| forced[j as usize]));
    cand.sort_unstable();
    cand
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::{max_diff, AttentionCase};

    /// The definition [`softmax_mass`] computes in one pass: column importance of one KV head
    /// from probe probabilities (`[n_probe · group, n]`), the group's heads combined by `agg`,
    /// then the mean over probe tokens.
    fn column_importance(probs: &[f32], n: usize, group: usize, agg: GroupAgg) -> Vec<f32> {
        let mut imp = vec![0f32; n];
        if n == 0 {
            return imp;
        }
        let n_tok = probs.len() / n / group;
        let mut tmp = vec![0f32; n];
        for t in 0..n_tok {
            tmp.copy_from_slice(&probs[(t * group) * n..(t * group + 1) * n]);
            for h in 1..group {
                let row = &probs[(t * group + h) * n..(t * group + h + 1) * n];
                match agg {
                    GroupAgg::Sum => tmp.iter_mut().zip(row).for_each(|(a, b)| *a += b),
                    GroupAgg::Max => tmp.iter_mut().zip(row).for_each(|(a, b)| *a = a.max(*b)),
                }
            }
            imp.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
        }
        let inv = 1.0 / n_tok.max(1) as f32;
        imp.iter_mut().for_each(|x| *x *= inv);
        imp
    }

    /// KV head `g` drops every `(g+3)`-th token, so heads hold different token sets.
    fn setup(t: usize, past: usize) -> AttentionCase {
        AttentionCase::new(t, past, |g, p| p % (g as u32 + 3) != 2)
    }

    /// A plan over `s`'s queries in blocks of `block`, with `keys(block, kv_head)`.

    #[test]
    fn fast_probe_importance_matches_exact() {
        let s = setup(70, 90);
        let toks: Vec<usize> = vec![0, 13, 40, 69];
        for g in 0..s.shape.n_kv_heads {
            let n = s.pos[g].len();
            let kv = s.slices();
            let probs = probe_probabilities(&s.q, &s.q_pos, &toks, g, &kv[g], n, s.shape);
            for agg in [GroupAgg::Sum, GroupAgg::Max] {
                let exact = column_importance(&probs, n, s.shape.group(), agg);
                let fast = probe_importance(&s.q, &s.q_pos, &toks, g, &kv[g], n, s.shape, agg);
                for (e, f) in exact.iter().zip(&fast) {
                    assert!((e - f).abs() <= 1e-4 * e.max(1e-3), "{agg:?}: {e} vs {f}");
                    assert_eq!(*e == 0.0, *f == 0.0, "keys no probe sees must be exactly 0");
                }
            }
        }
    }

    /// The chunk estimate of KV head `g` (chunks of `chunk` rows) and its chunk importance.
    fn chunk_importance(
        s: &AttentionCase,
        kv: &KvSlices<'_>,
        g: usize,
        chunk: usize,
        toks: &[usize],
    ) -> (ChunkKeys, Vec<f32>) {
        let n = s.pos[g].len();
        let ck = ChunkKeys::new(kv, n, chunk, s.shape.head_dim);
        let c = ck.importance(
            &s.q,
            &s.q_pos,
            toks,
            g,
            &s.pos[g],
            n,
            s.shape,
            GroupAgg::Sum,
        );
        assert_eq!(c.len(), n.div_ceil(chunk));
        (ck, c)
    }

    /// Chunks of one row are the probe itself; chunks of identical keys score exactly as
    /// their rows do (the `ln(rows)` term is the count of equal keys).
    #[test]
    fn chunk_importance_is_the_probe_when_chunks_are_exact() {
        let s = setup(40, 70);
        let toks: Vec<usize> = (0..40).collect();
        let d = s.shape.head_dim;
        for g in 0..s.shape.n_kv_heads {
            let kv = s.slices();
            let n = s.pos[g].len();
            let probe =
                probe_importance(&s.q, &s.q_pos, &toks, g, &kv[g], n, s.shape, GroupAgg::Sum);
            let zeros = vec![0f32; n];
            let (ck, c) = chunk_importance(&s, &kv[g], g, 1, &toks);
            let one = ck.mix_rows(&c, n, &zeros, 0.0);
            assert!(max_diff(&probe, &one) < 1e-5, "g={g}");
            // Keys made equal within chunks of 4 rows: the chunk estimate is exact again.
            let mut keys = s.keys[g].clone();
            for r in 0..n {
                let first = r / 4 * 4;
                keys.copy_within(first * d..(first + 1) * d, r * d);
            }
            let flat = KvSlices::new(&keys, &s.vals[g], &s.pos[g]);
            let exact =
                probe_importance(&s.q, &s.q_pos, &toks, g, &flat, n, s.shape, GroupAgg::Sum);
            let (ck, c) = chunk_importance(&s, &flat, g, 4, &toks);
            let four = ck.mix_rows(&c, n, &zeros, 0.0);
            // Causality cuts a chunk only at the diagonal, where the probe sees part of it.
            let far = n - 50;
            assert!(max_diff(&exact[..far], &four[..far]) < 1e-5, "g={g}");
            // Mixing the exact rows in at any weight leaves them exact there.
            let mixed = ck.mix_rows(&c, n, &exact, 0.3);
            assert!(max_diff(&exact[..far], &mixed[..far]) < 1e-5, "g={g}");
        }
    }

    /// Chunk-granular recall: the order is by importance per row, the budget is counted in
    /// free rows of whole chunks, and selection keeps the forced prefix and suffix.
    #[test]
    fn chunk_recall_and_rows() {
        // 10 rows in chunks of 4 (the last chunk has 2 rows); rows 0 and 8..10 are forced.
        let imp = [0.2f32, 0.6, 0.2];
        let (order, b) = chunk_recall(&imp, 4, 10, 1..8, 0.9);
        // Densities 0.05, 0.15, 0.1 → chunks 1, 2 (no free row: left out), 0.
        assert_eq!(order, vec![1, 0]);
        // Forced mass 0.05 + 0.2 = 0.25; need 0.9 − 0.25 = 0.65 → chunk 1 (0.6), chunk 0 (0.15).
        assert_eq!(b, 4 + 3);
        assert_eq!(chunk_recall(&imp, 4, 10, 1..8, 0.8).1, 4);
        assert_eq!(chunk_recall(&imp, 4, 10, 1..8, 1.0).1, 7);
        assert_eq!(
            chunk_rows(&order, 4, 10, 1..8, 3),
            vec![0, 4, 5, 6, 7, 8, 9]
        );
        assert_eq!(chunk_rows(&order, 4, 10, 1..8, 0), vec![0, 8, 9]);
        assert_eq!(
            chunk_rows(&order, 4, 10, 1..8, 5),
            (0..10).collect::<Vec<u32>>()
        );
    }

    #[test]
    fn budget_reaches_recall_and_selection_keeps_forced() {
        let imp = [0.5f32, 0.01, 0.2, 0.1, 0.05, 0.14];
        let forced = [true, false, false, false, false, false];
        // Forced 0.5; need 0.95 → +0.2 +0.14 +0.1 = 0.94 < 0.95, +0.05 = 0.99.
        assert_eq!(recall_budget(&imp, &forced, 0.95), 4);
        assert_eq!(recall_budget(&imp, &forced, 0.4), 0);
        assert_eq!(recall_budget(&imp, &forced, 1.0), 5);
        // Ranked by importance itself, the ranked budget is the plain one; a worse order needs more.
        for tau in [0.2, 0.5, 0.8, 0.95, 1.0] {
            let (order, count) = ranked_recall(&imp, &imp, &forced, tau);
            assert_eq!(count, recall_budget(&imp, &forced, tau));
            assert_eq!(order, vec![2, 5, 3, 4, 1]);
            let reversed: Vec<f32> = imp.iter().map(|x| -x).collect();
            let (order, count) = ranked_recall(&imp, &reversed, &forced, tau);
            assert!(count >= recall_budget(&imp, &forced, tau));
            assert_eq!(order, vec![1, 4, 3, 5, 2]);
        }
        assert_eq!(
            max_pool(&[0.0, 1.0, 0.0, 0.0, 2.0], 1),
            vec![1.0, 1.0, 1.0, 2.0, 2.0]
        );
        assert_eq!(select_rows(&imp, &forced, 2), vec![0, 2, 5]);
        assert_eq!(select_rows(&imp, &forced, 9), vec![0, 1, 2, 3, 4, 5]);
        let probs = [0.1f32, 0.9, 0.5, 0.5, 0.3, 0.7, 0.2, 0.8]; // 2 tokens × 2 heads × 2 keys
        assert_eq!(
            column_importance(&probs, 2, 2, GroupAgg::Max),
            vec![(0.5 + 0.3) / 2.0, (0.9 + 0.8) / 2.0]
        );
        let sum = column_importance(&probs, 2, 2, GroupAgg::Sum);
        assert!((sum[0] - 0.55).abs() < 1e-6 && (sum[1] - 1.45).abs() < 1e-6);
    }
}
