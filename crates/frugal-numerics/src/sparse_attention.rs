//! Gather-then-dense sparse attention over per-(KV head, query block) key index lists, with
//! skipped ("lazy") query rows. Which keys to list is decided elsewhere (for OmniSparse, by the
//! heuristics in [`crate::key_selection`]).
//!
//! The kernel: for every (KV head, query block of `plan.block` tokens) task, the selected K/V
//! rows (and their positions / per-row scales) are gathered into contiguous buffers of `B`
//! rows, then `S = Q·Kᵀ`, causal mask on the gathered positions, softmax, `O = P·V` run through
//! the `gemm` crate exactly as in the dense kernel ([`crate::attention::causal_attention`]).
//! Only the query rows marked computed are gathered, so skipped queries cost nothing; their
//! output rows are then filled from the nearest computed query of the same block
//! ([`LazyFill::Copy`], the previous one, else the next) or left zero ([`LazyFill::Residual`]:
//! the attention sub-layer adds nothing and only the residual stream passes).
//!
//! With every key selected ([`KeySet::All`]) and every query computed, a task is the dense
//! kernel's task, so the outputs match the dense kernel to f32 rounding (tested).

use crate::attention::{matmul, matmul_bt, softmax_in_place, AttentionShape, KvSlices};
use rayon::prelude::*;

/// Which keys one (KV head, query block) visits.
#[derive(Clone, Debug, PartialEq)]
pub enum KeySet {
    /// Every causally visible key.
    All,
    /// Row indices into the KV head's slices, ascending, no duplicates. Causality is still
    /// applied per query row inside the gathered set.
    Rows(Vec<u32>),
}

/// How the output row of a skipped query is produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LazyFill {
    /// Copy the attention output of the nearest computed query in the same block.
    Copy,
    /// Zero attention output: only the residual passes through.
    Residual,
}

/// The work of one query block.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockPlan {
    /// One key set per KV head.
    pub keys: Vec<KeySet>,
    /// Per token of the block: is its query computed? `None` = all computed.
    pub computed: Option<Vec<bool>>,
}

/// The whole step: query blocks of `block` tokens, in order, covering every query token.
#[derive(Clone, Debug, PartialEq)]
pub struct SparsePlan {
    pub block: usize,
    pub blocks: Vec<BlockPlan>,
    pub fill: LazyFill,
}

/// Sparse attention with the same input/output layout as `causal_attention`.
pub fn sparse_attention(
    q: &[f32],
    q_positions: &[u32],
    kv: &[KvSlices<'_>],
    shape: AttentionShape,
    plan: &SparsePlan,
) -> Vec<f32> {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
    } = shape;
    let t = q_positions.len();
    crate::attention::check_step_shape(q.len(), t, kv.len(), shape);
    assert!(plan.block > 0);
    let n_blocks = t.div_ceil(plan.block);
    assert_eq!(
        plan.blocks.len(),
        n_blocks,
        "one BlockPlan per query block expected"
    );
    for (b, bp) in plan.blocks.iter().enumerate() {
        assert_eq!(
            bp.keys.len(),
            n_kv_heads,
            "block {b}: one key set per KV head expected"
        );
        let len = ((b + 1) * plan.block).min(t) - b * plan.block;
        if let Some(c) = &bp.computed {
            assert_eq!(
                c.len(),
                len,
                "block {b}: one computed flag per token expected"
            );
        }
        for (g, ks) in bp.keys.iter().enumerate() {
            if let KeySet::Rows(r) = ks {
                assert!(
                    r.windows(2).all(|w| w[0] < w[1]),
                    "block {b} head {g}: rows must ascend"
                );
                assert!(r
                    .last()
                    .is_none_or(|&x| (x as usize) < kv[g].positions.len()));
            }
        }
    }
    for head in kv {
        assert!(
            head.key_patch.is_none() && head.value_patch.is_none(),
            "the sparse kernel does not read row patches (MiniCache views)"
        );
    }
    let group = shape.group();
    let scale = 1.0 / (d as f32).sqrt();

    let tasks: Vec<(usize, usize, Vec<usize>, Vec<f32>)> = (0..n_kv_heads * n_blocks)
        .into_par_iter()
        .map(|task| {
            let g = task / n_blocks;
            let b = task % n_blocks;
            let t0 = b * plan.block;
            let t1 = (t0 + plan.block).min(t);
            let bp = &plan.blocks[b];
            let toks: Vec<usize> = match &bp.computed {
                None => (t0..t1).collect(),
                Some(c) => (t0..t1).filter(|&i| c[i - t0]).collect(),
            };
            let out = attend_rows(q, q_positions, &toks, g, &kv[g], &bp.keys[g], shape, scale);
            (g, b, toks, out)
        })
        .collect();

    let mut out = vec![0f32; t * n_heads * d];
    let row_width = group * d;
    for (g, b, toks, block) in tasks {
        let t0 = b * plan.block;
        let t1 = (t0 + plan.block).min(t);
        let put = |out: &mut [f32], tok: usize, src: &[f32]| {
            let dst = (tok * n_heads + g * group) * d;
            out[dst..dst + row_width].copy_from_slice(src);
        };
        for (i, &tok) in toks.iter().enumerate() {
            put(&mut out, tok, &block[i * row_width..(i + 1) * row_width]);
        }
        if plan.fill == LazyFill::Copy && toks.len() < t1 - t0 && !toks.is_empty() {
            // Nearest computed neighbour: the previous computed query, else the next one.
            let mut next = 0usize;
            for tok in t0..t1 {
                while next < toks.len() && toks[next] < tok {
                    next += 1;
                }
                if next < toks.len() && toks[next] == tok {
                    continue;
                }
                let src = if next > 0 { next - 1 } else { next };
                put(
                    &mut out,
                    tok,
                    &block[src * row_width..(src + 1) * row_width],
                );
            }
        }
    }
    out
}

/// Attention of query tokens `toks` (all heads of KV group `g`) over the key set `keys`.
/// Returns rows ordered (token, head-in-group).
#[allow(clippy::too_many_arguments)]
fn attend_rows(
    q: &[f32],
    q_positions: &[u32],
    toks: &[usize],
    g: usize,
    kv: &KvSlices<'_>,
    keys: &KeySet,
    shape: AttentionShape,
    scale: f32,
) -> Vec<f32> {
    let d = shape.head_dim;
    let group = shape.group();
    let rows = toks.len() * group;
    let mut out = vec![0f32; rows * d];
    if toks.is_empty() {
        return out;
    }
    let qbuf = gather_queries(q, toks, g, shape, scale);
    let max_pos = toks.iter().map(|&i| q_positions[i]).max().unwrap_or(0);

    // The key rows this task reads, contiguous: borrowed for `All`, gathered for `Rows`.
    let gathered;
    type Rows<'r> = (
        &'r [f32],
        &'r [f32],
        &'r [u32],
        Option<&'r [f32]>,
        Option<&'r [f32]>,
    );
    let (kk, vv, pp, ks, vs): Rows<'_> = match keys {
        KeySet::All => {
            let n = kv.positions.partition_point(|&p| p <= max_pos);
            (
                &kv.keys[..n * d],
                &kv.values[..n * d],
                &kv.positions[..n],
                kv.key_scale.map(|s| &s[..n]),
                kv.value_scale.map(|s| &s[..n]),
            )
        }
        KeySet::Rows(idx) => {
            gathered = gather_keys(kv, idx, d, max_pos);
            (
                &gathered.0,
                &gathered.1,
                &gathered.2,
                gathered.3.as_deref(),
                gathered.4.as_deref(),
            )
        }
    };
    let n = pp.len();
    if n == 0 {
        return out;
    }
    let mut scores = vec![0f32; rows * n];
    matmul_bt(&mut scores, &qbuf, kk, rows, n, d);
    for (i, &tok) in toks.iter().enumerate() {
        let q_pos = q_positions[tok];
        // Keys are ascending by position: the visible ones are a prefix.
        let vis = pp.partition_point(|&p| p <= q_pos);
        for h in 0..group {
            let row = &mut scores[(i * group + h) * n..(i * group + h + 1) * n];
            if let Some(s) = ks {
                row.iter_mut().zip(s).for_each(|(x, m)| *x *= m);
            }
            row[vis..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            softmax_in_place(row);
            if let Some(s) = vs {
                row.iter_mut().zip(s).for_each(|(p, m)| *p *= m);
            }
        }
    }
    matmul(&mut out, &scores, vv, rows, d, n);
    out
}

type Gathered = (
    Vec<f32>,
    Vec<f32>,
    Vec<u32>,
    Option<Vec<f32>>,
    Option<Vec<f32>>,
);

/// Copies the listed rows (those not after `max_pos`) into contiguous buffers.
fn gather_keys(kv: &KvSlices<'_>, idx: &[u32], d: usize, max_pos: u32) -> Gathered {
    let idx: Vec<usize> = idx
        .iter()
        .map(|&j| j as usize)
        .take_while(|&j| kv.positions[j] <= max_pos)
        .collect();
    let mut k = Vec::with_capacity(idx.len() * d);
    let mut v = Vec::with_capacity(idx.len() * d);
    for &j in &idx {
        k.extend_from_slice(&kv.keys[j * d..(j + 1) * d]);
        v.extend_from_slice(&kv.values[j * d..(j + 1) * d]);
    }
    let p = idx.iter().map(|&j| kv.positions[j]).collect();
    let ks = kv.key_scale.map(|s| idx.iter().map(|&j| s[j]).collect());
    let vs = kv.value_scale.map(|s| idx.iter().map(|&j| s[j]).collect());
    (k, v, p, ks, vs)
}

/// Query rows of tokens `toks` for KV group `g`, ordered (token, head-in-group), times `scale`.
pub(crate) fn gather_queries(
    q: &[f32],
    toks: &[usize],
    g: usize,
    shape: AttentionShape,
    scale: f32,
) -> Vec<f32> {
    let AttentionShape {
        n_heads,
        head_dim: d,
        ..
    } = shape;
    let group = shape.group();
    let mut qbuf = Vec::with_capacity(toks.len() * group * d);
    for &tok in toks {
        let src = (tok * n_heads + g * group) * d;
        qbuf.extend(q[src..src + group * d].iter().map(|x| x * scale));
    }
    qbuf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{causal_attention, naive_causal_attention, KeyMask};

    use crate::test_util::{max_diff, AttentionCase};

    fn setup(t: usize, past: usize) -> AttentionCase {
        AttentionCase::new(t, past, |g, p| p % (g as u32 + 3) != 2)
    }

    /// A plan over `s`'s queries in blocks of `block`, with `keys(block, kv_head)`.
    fn plan(s: &AttentionCase, block: usize, keys: impl Fn(usize, usize) -> KeySet) -> SparsePlan {
        let t = s.q_pos.len();
        SparsePlan {
            block,
            blocks: (0..t.div_ceil(block))
                .map(|b| BlockPlan {
                    keys: (0..s.shape.n_kv_heads).map(|g| keys(b, g)).collect(),
                    computed: None,
                })
                .collect(),
            fill: LazyFill::Copy,
        }
    }

    #[test]
    fn all_keys_all_queries_equals_dense() {
        let s = setup(150, 40);
        let dense = causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, None);
        let sparse = sparse_attention(
            &s.q,
            &s.q_pos,
            &s.slices(),
            s.shape,
            &plan(&s, 64, |_, _| KeySet::All),
        );
        assert!(max_diff(&dense, &sparse) < 1e-6);
        // Listing every row explicitly gives the same result.
        let all_rows = plan(&s, 64, |_, g| {
            KeySet::Rows((0..s.pos[g].len() as u32).collect())
        });
        let listed = sparse_attention(&s.q, &s.q_pos, &s.slices(), s.shape, &all_rows);
        assert!(max_diff(&dense, &listed) < 1e-5);
    }

    /// A mask that admits exactly the listed rows of each KV head for each query block.
    struct ListMask<'a> {
        s: &'a AttentionCase,
        plan: &'a SparsePlan,
    }
    impl KeyMask for ListMask<'_> {
        fn allows(&self, q_head: usize, q_pos: u32, k_pos: u32) -> bool {
            let tok = (q_pos - self.s.q_pos[0]) as usize;
            let g = q_head / self.s.shape.group();
            match &self.plan.blocks[tok / self.plan.block].keys[g] {
                KeySet::All => true,
                KeySet::Rows(r) => r.iter().any(|&j| self.s.pos[g][j as usize] == k_pos),
            }
        }
    }

    #[test]
    fn index_lists_equal_the_naive_definition_with_that_mask() {
        let s = setup(130, 70);
        // Keep every third row plus each block's own diagonal rows (so no row is empty).
        let plan = plan(&s, 32, |b, g| {
            let lo = s.q_pos[0] + (b * 32) as u32;
            KeySet::Rows(
                (0..s.pos[g].len() as u32)
                    .filter(|&j| j % 3 == 0 || s.pos[g][j as usize] >= lo)
                    .collect(),
            )
        });
        let sparse = sparse_attention(&s.q, &s.q_pos, &s.slices(), s.shape, &plan);
        let naive = naive_causal_attention(
            &s.q,
            &s.q_pos,
            &s.slices(),
            s.shape,
            Some(&ListMask { s: &s, plan: &plan }),
        );
        assert!(
            max_diff(&sparse, &naive) < 1e-5,
            "{}",
            max_diff(&sparse, &naive)
        );
    }

    #[test]
    fn lazy_rows_are_copied_or_zero() {
        let s = setup(20, 10);
        let (nh, d) = (s.shape.n_heads, s.shape.head_dim);
        let mut plan = plan(&s, 8, |_, _| KeySet::All);
        // Block 0: tokens 1, 2 skipped (copy token 0); block 1: token 8 skipped (copy token 9).
        plan.blocks[0].computed = Some(vec![true, false, false, true, true, true, true, true]);
        plan.blocks[1].computed = Some(vec![false, true, true, true, true, true, true, true]);
        let dense = causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, None);
        let out = sparse_attention(&s.q, &s.q_pos, &s.slices(), s.shape, &plan);
        let row = |v: &[f32], t: usize| v[t * nh * d..(t + 1) * nh * d].to_vec();
        assert_eq!(row(&out, 1), row(&out, 0));
        assert_eq!(row(&out, 2), row(&out, 0));
        assert_eq!(row(&out, 8), row(&out, 9));
        assert!(max_diff(&row(&out, 0), &row(&dense, 0)) < 1e-6);
        assert!(max_diff(&row(&out, 15), &row(&dense, 15)) < 1e-6);
        plan.fill = LazyFill::Residual;
        let out = sparse_attention(&s.q, &s.q_pos, &s.slices(), s.shape, &plan);
        assert!(row(&out, 1).iter().all(|&x| x == 0.0));
        assert!(max_diff(&row(&out, 3), &row(&dense, 3)) < 1e-6);
    }
}
