//! Causal scaled-dot-product attention over per-KV-head key/value slices.
//!
//! This is the dense reference path every attention method is tested against, and also the
//! kernel the engine runs by default. It is written against the layout of frugal's KV store:
//! each KV head owns its own keys, values and token positions, so heads may hold different
//! token sets (holes), and GQA is handled by letting one read of a KV head's keys serve all the
//! query heads of its group (no `repeat_kv` copies).
//!
//! Work is split into (KV head, query block) tasks run on rayon; inside a task the two products
//! `S = Q·Kᵀ` and `O = softmax(S)·V` go through the `gemm` crate (the same GEMM candle's CPU
//! backend uses), so the kernel runs at GEMM speed instead of one dot product per pair.

use rayon::prelude::*;

/// Query rows per task (times the GQA group size). 64 keeps a task's score block
/// (`64 · group · n_keys` floats) within a few MB at 8k context while giving every
/// thread several tasks per layer.
const QUERY_BLOCK: usize = 64;

/// Shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Query heads that share one KV head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// What one KV head holds: `positions.len()` rows of keys and values (`head_dim` floats each,
/// row-major), with the token position of every row in ascending order.
///
/// Optional per-row scales let a cache store unit directions and magnitudes separately (e.g.
/// MiniCache): the kernel then uses key `key_scale[j] · keys[j]` and value
/// `value_scale[j] · values[j]` by scaling score columns, never building the scaled rows.
#[derive(Clone, Copy, Debug)]
pub struct KvSlices<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub positions: &'a [u32],
    pub key_scale: Option<&'a [f32]>,
    pub value_scale: Option<&'a [f32]>,
    /// Rows whose key is given in full apart from `keys`/`key_scale` (e.g. MiniCache's retained
    /// tokens, whose originals differ from the merged direction that other rows share).
    pub key_patch: Option<RowPatch<'a>>,
    pub value_patch: Option<RowPatch<'a>>,
}

/// Sparse row overrides: row `rows[i]` (ascending) uses `data[i·head_dim..]` as is, ignoring the
/// dense row and its scale. The kernel computes the dense product and then corrects the few
/// patched columns, so no dense copy of the rows is built.
#[derive(Clone, Copy, Debug)]
pub struct RowPatch<'a> {
    pub rows: &'a [u32],
    pub data: &'a [f32],
}

impl<'a> KvSlices<'a> {
    /// Unscaled rows.
    pub fn new(keys: &'a [f32], values: &'a [f32], positions: &'a [u32]) -> Self {
        KvSlices {
            keys,
            values,
            positions,
            key_scale: None,
            value_scale: None,
            key_patch: None,
            value_patch: None,
        }
    }

    /// Key row `j` as attention uses it: `(row, scale)`.
    pub(crate) fn key_row(&self, j: usize, d: usize) -> (&'a [f32], f32) {
        if let Some(p) = self.key_patch {
            if let Ok(i) = p.rows.binary_search(&(j as u32)) {
                return (&p.data[i * d..(i + 1) * d], 1.0);
            }
        }
        (
            &self.keys[j * d..(j + 1) * d],
            self.key_scale.map_or(1.0, |s| s[j]),
        )
    }

    pub(crate) fn value_row(&self, j: usize, d: usize) -> (&'a [f32], f32) {
        if let Some(p) = self.value_patch {
            if let Ok(i) = p.rows.binary_search(&(j as u32)) {
                return (&p.data[i * d..(i + 1) * d], 1.0);
            }
        }
        (
            &self.values[j * d..(j + 1) * d],
            self.value_scale.map_or(1.0, |s| s[j]),
        )
    }
}

/// A predicate on (query head, query position, key position) that removes attention paths on
/// top of causality. Evaluated inside the kernel, so no `n × n` mask is ever built.
pub trait KeyMask: Sync {
    fn allows(&self, q_head: usize, q_pos: u32, k_pos: u32) -> bool;
}

/// Causal attention. `q` is token-major `[T, n_heads, head_dim]` with the query tokens at
/// `q_positions`; `kv[g]` is KV head `g`; returns `[T, n_heads, head_dim]`.
///
/// A key is visible to a query when its position is not after the query's and `mask` (if any)
/// allows it. A query row with no visible key gets a zero output; callers that mask must keep
/// at least the token itself visible (the knockout policies assert this).
/// Panics unless a step's query buffer is `[t, heads, head_dim]`, there is one view per KV
/// head and the heads group evenly: the layout every attention kernel here takes.
pub(crate) fn check_step_shape(q_len: usize, t: usize, views: usize, shape: AttentionShape) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
    } = shape;
    assert_eq!(
        q_len,
        t * n_heads * head_dim,
        "query buffer does not match [T, heads, head_dim]"
    );
    assert_eq!(views, n_kv_heads, "one view per KV head expected");
    assert!(
        n_kv_heads > 0 && n_heads % n_kv_heads == 0,
        "heads must be a multiple of KV heads"
    );
}

pub fn causal_attention(
    q: &[f32],
    q_positions: &[u32],
    kv: &[KvSlices<'_>],
    shape: AttentionShape,
    mask: Option<&dyn KeyMask>,
) -> Vec<f32> {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
    } = shape;
    let t = q_positions.len();
    check_step_shape(q.len(), t, kv.len(), shape);
    for head in kv {
        assert_eq!(head.keys.len(), head.positions.len() * d);
        assert_eq!(head.values.len(), head.positions.len() * d);
        assert!(head
            .key_scale
            .is_none_or(|s| s.len() == head.positions.len()));
        assert!(head
            .value_scale
            .is_none_or(|s| s.len() == head.positions.len()));
        for p in [head.key_patch, head.value_patch].into_iter().flatten() {
            assert_eq!(
                p.data.len(),
                p.rows.len() * d,
                "patch data does not match its rows"
            );
            assert!(
                p.rows.windows(2).all(|w| w[0] < w[1]),
                "patch rows must ascend"
            );
            assert!(p
                .rows
                .last()
                .is_none_or(|&r| (r as usize) < head.positions.len()));
        }
    }
    let group = shape.group();
    let scale = 1.0 / (d as f32).sqrt();
    let n_blocks = t.div_ceil(QUERY_BLOCK);

    let blocks: Vec<(usize, usize, Vec<f32>)> = (0..n_kv_heads * n_blocks)
        .into_par_iter()
        .map(|task| {
            let g = task / n_blocks;
            let b = task % n_blocks;
            let t0 = b * QUERY_BLOCK;
            let t1 = (t0 + QUERY_BLOCK).min(t);
            let out = attend_block(q, q_positions, t0, t1, g, &kv[g], shape, scale, mask);
            (g, t0, out)
        })
        .collect();

    let mut out = vec![0f32; t * n_heads * d];
    for (g, t0, block) in blocks {
        for (row, chunk) in block.chunks_exact(d).enumerate() {
            let tok = t0 + row / group;
            let head = g * group + row % group;
            let dst = (tok * n_heads + head) * d;
            out[dst..dst + d].copy_from_slice(chunk);
        }
    }
    out
}

/// One task: query tokens `t0..t1` of the heads in KV group `g`. Returns rows ordered
/// (token, head-in-group), `head_dim` floats each.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    q: &[f32],
    q_positions: &[u32],
    t0: usize,
    t1: usize,
    g: usize,
    kv: &KvSlices<'_>,
    shape: AttentionShape,
    scale: f32,
    mask: Option<&dyn KeyMask>,
) -> Vec<f32> {
    let AttentionShape {
        n_heads,
        head_dim: d,
        ..
    } = shape;
    let group = shape.group();
    let rows = (t1 - t0) * group;

    // Gather this group's query rows, pre-scaled.
    let mut qbuf = vec![0f32; rows * d];
    for (i, tok) in (t0..t1).enumerate() {
        for h in 0..group {
            let src = (tok * n_heads + g * group + h) * d;
            let dst = (i * group + h) * d;
            for (o, x) in qbuf[dst..dst + d].iter_mut().zip(&q[src..src + d]) {
                *o = x * scale;
            }
        }
    }

    // Keys after the block's last query position are invisible to every row: skip them.
    let max_pos = q_positions[t0..t1].iter().copied().max().unwrap_or(0);
    let n = kv.positions.partition_point(|&p| p <= max_pos);
    let mut out = vec![0f32; rows * d];
    if n == 0 {
        return out;
    }

    let mut scores = vec![0f32; rows * n];
    let mut patched_p: Vec<f32> = Vec::new();
    matmul_bt(&mut scores, &qbuf, kv.keys, rows, n, d);

    for (i, tok) in (t0..t1).enumerate() {
        let q_pos = q_positions[tok];
        for h in 0..group {
            let row = &mut scores[(i * group + h) * n..(i * group + h + 1) * n];
            if let Some(scale) = kv.key_scale {
                row.iter_mut().zip(scale).for_each(|(s, m)| *s *= m);
            }
            if let Some(p) = kv.key_patch {
                let qrow = &qbuf[(i * group + h) * d..(i * group + h + 1) * d];
                for (r, &j) in p
                    .rows
                    .iter()
                    .enumerate()
                    .take_while(|(_, &j)| (j as usize) < n)
                {
                    row[j as usize] = qrow
                        .iter()
                        .zip(&p.data[r * d..(r + 1) * d])
                        .map(|(a, b)| a * b)
                        .sum();
                }
            }
            let q_head = g * group + h;
            // Positions ascend, so causality alone is one cut; a predicate is checked per key.
            let causal_end = kv.positions[..n].partition_point(|&p| p <= q_pos);
            row[causal_end..].fill(f32::NEG_INFINITY);
            if let Some(m) = mask {
                for (s, &k_pos) in row[..causal_end]
                    .iter_mut()
                    .zip(&kv.positions[..causal_end])
                {
                    if !m.allows(q_head, q_pos, k_pos) {
                        *s = f32::NEG_INFINITY;
                    }
                }
            }
            softmax_in_place(row);
            if let Some(p) = kv.value_patch {
                // Take the patched columns out of the GEMM; they are added back below.
                for &j in p.rows.iter().take_while(|&&j| (j as usize) < n) {
                    patched_p.push(row[j as usize]);
                    row[j as usize] = 0.0;
                }
            }
            if let Some(scale) = kv.value_scale {
                row.iter_mut().zip(scale).for_each(|(p, m)| *p *= m);
            }
        }
    }

    matmul(&mut out, &scores, kv.values, rows, d, n);
    if let Some(p) = kv.value_patch {
        let k = p.rows.iter().take_while(|&&j| (j as usize) < n).count();
        for row in 0..rows {
            let dst = &mut out[row * d..(row + 1) * d];
            for r in 0..k {
                let w = patched_p[row * k + r];
                if w != 0.0 {
                    dst.iter_mut()
                        .zip(&p.data[r * d..(r + 1) * d])
                        .for_each(|(o, v)| *o += w * v);
                }
            }
        }
    }
    out
}

/// `dst[m×n] = a[m×k] · b[n×k]ᵀ` (row-major), single-threaded GEMM: scores of queries `a`
/// against keys `b`. Callers parallelise over tasks.
pub(crate) fn matmul_bt(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    assert!(b.len() >= n * k, "matmul_bt: buffers too small");
    gemm_f32(dst, a, b, (m, n, k), (k as isize, 1));
}

/// `dst[m×n] = a[m×k] · b[k×n]` (row-major), single-threaded GEMM: attention weights `a`
/// applied to values `b`.
pub(crate) fn matmul(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) {
    assert!(b.len() >= k * n, "matmul: buffers too small");
    gemm_f32(dst, a, b, (m, n, k), (1, n as isize));
}

/// `dst[m×n] = a[m×k] · B` with row-major `dst` and `a`, and `B[i][j]` read at
/// `b[i·b_strides.1 + j·b_strides.0]` (column stride, row stride): the one place the unsafe
/// GEMM is called. The caller has checked that `b` covers every element those strides address.
fn gemm_f32(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    b_strides: (isize, isize),
) {
    assert!(
        dst.len() >= m * n && a.len() >= m * k,
        "gemm: buffers too small"
    );
    // SAFETY: the assertion above covers `dst` and `a`; the callers' covers `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_strides.0,
            b_strides.1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Numerically stable softmax. A row that is entirely `-inf` becomes all zeros (no visible
/// key) rather than NaN. The `exp` is [`exp_nonpositive`] and the max and the sum run over
/// eight lanes, so the whole row vectorises: the scalar `expf` this replaced was ~40 % of the
/// dense kernel's time at 8k context (perf, docs/results/omnisparse.md §1a).
pub fn softmax_in_place(row: &mut [f32]) {
    let max = lanes_fold(row, f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    row.iter_mut().for_each(|x| *x = exp_nonpositive(*x - max));
    let inv = 1.0 / lanes_fold(row, 0.0, |a, b| a + b);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// `row` reduced by `op` over eight independent lanes (element `i` into lane `i mod 8`), then
/// across them: a reduction the compiler can keep in one vector register (a single running
/// value is a serial chain). Appending identity elements (the zeros of masked keys) leaves the
/// result bit for bit unchanged, so a row's softmax does not depend on how many masked keys
/// its query block carried.
pub fn lanes_fold(row: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a = op(*a, x));
    }
    acc.iter_mut()
        .zip(chunks.remainder())
        .for_each(|(a, &x)| *a = op(*a, x));
    acc.into_iter().fold(init, op)
}

/// `eˣ` for `x ≤ 0`, branch-free so that loops calling it vectorise. `x = n·ln2 + r` with
/// `n` the nearest integer and `|r| ≤ ln2/2`, `eʳ` by its degree-7 Taylor polynomial
/// (truncation below 2e-8 relative, so the result is within a few ulp of `expf`), times `2ⁿ`
/// built in the exponent bits. Below `-87.3` (where `eˣ` is under the smallest normal `f32`)
/// and at `-inf` it returns exactly 0, as a masked key must get; NaN stays NaN.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const FLOOR: f32 = -87.3;
    let xc = if x < FLOOR { FLOOR } else { x };
    // Adding 1.5·2²³ rounds to the nearest integer and leaves it in the low mantissa bits,
    // which avoids a float-to-int cast (Rust's saturating `as` does not vectorise).
    const SHIFT: f32 = 12_582_912.0;
    let big = xc.mul_add(std::f32::consts::LOG2_E, SHIFT);
    let n = big - SHIFT;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p: f32 = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    let y = p * f32::from_bits(big.to_bits().wrapping_sub(SHIFT.to_bits() - 127) << 23);
    if x < FLOOR {
        0.0
    } else {
        y
    }
}

/// The textbook definition, one dot product per (query, key) pair, in f64: the kernel
/// tests' check of the blocked GEMM kernel above. It is the consistency harness's one naive
/// reference ([`crate::consistency::naive_attention`]) reading this call's views (scales and
/// patches written out row by row) under this call's mask.
pub fn naive_causal_attention(
    q: &[f32],
    q_positions: &[u32],
    kv: &[KvSlices<'_>],
    shape: AttentionShape,
    mask: Option<&dyn KeyMask>,
) -> Vec<f32> {
    use crate::consistency::{naive_attention, RefHead, Reference};
    let group = shape.group();
    let reference = Reference {
        q: q.iter().map(|&x| x as f64).collect(),
        q_positions,
        heads: kv
            .iter()
            .map(|s| RefHead::from_slices(s, shape.head_dim))
            .collect(),
        shape,
        visible: mask.map(|m| -> crate::consistency::Visibility<'_> {
            Box::new(move |h, i, j| m.allows(h, q_positions[i], kv[h / group].positions[j]))
        }),
        row_from: None,
    };
    naive_attention(&reference)
        .0
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::{max_diff, values, AttentionCase};

    /// `t` new queries after `past` cached tokens; KV head `g` drops every `(g+2)`-th token
    /// when `holes` is set, so heads hold different token sets.
    fn setup(t: usize, past: usize, holes: bool) -> AttentionCase {
        AttentionCase::new(t, past, |g, p| !holes || p % (g as u32 + 2) != 1)
    }

    #[test]
    fn blocked_kernel_matches_naive_definition() {
        for (t, past, holes) in [
            (1, 0, false),
            (150, 0, false),
            (1, 300, true),
            (70, 90, true),
        ] {
            let s = setup(t, past, holes);
            let fast = causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, None);
            let slow = naive_causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, None);
            let err = max_diff(&fast, &slow);
            // Outputs are convex combinations of values in [-1, 1]; f32 GEMM over ≤ 370 keys
            // accumulates ~1e-6 relative error, so 1e-5 absolute is a tight but safe bound.
            assert!(
                err < 1e-5,
                "t={t} past={past} holes={holes}: max |Δ| = {err}"
            );
        }
    }

    struct EvenKeysOnly;
    impl KeyMask for EvenKeysOnly {
        fn allows(&self, _h: usize, q_pos: u32, k_pos: u32) -> bool {
            k_pos == q_pos || k_pos.is_multiple_of(2)
        }
    }

    #[test]
    fn mask_predicate_is_applied_inside_the_kernel() {
        let s = setup(40, 10, false);
        let fast = causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, Some(&EvenKeysOnly));
        let slow =
            naive_causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, Some(&EvenKeysOnly));
        assert!(max_diff(&fast, &slow) < 1e-5);
        let unmasked = causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, None);
        assert!(
            max_diff(&fast, &unmasked) > 1e-3,
            "the mask must change the output"
        );
    }

    #[test]
    fn row_scales_equal_scaling_the_rows() {
        // Unit-direction storage with magnitudes on the side must give the same attention as
        // storing the scaled rows themselves.
        let s = setup(30, 20, true);
        let d = s.shape.head_dim;
        let scales: Vec<Vec<f32>> = s
            .pos
            .iter()
            .map(|p| p.iter().map(|&x| 0.5 + (x % 7) as f32 * 0.3).collect())
            .collect();
        let scaled = |rows: &Vec<f32>, m: &Vec<f32>| -> Vec<f32> {
            rows.chunks(d)
                .zip(m)
                .flat_map(|(r, k)| r.iter().map(move |x| x * k))
                .collect()
        };
        let ks: Vec<Vec<f32>> = (0..2).map(|g| scaled(&s.keys[g], &scales[g])).collect();
        let vs: Vec<Vec<f32>> = (0..2).map(|g| scaled(&s.vals[g], &scales[g])).collect();
        let dense: Vec<KvSlices<'_>> = (0..2)
            .map(|g| KvSlices::new(&ks[g], &vs[g], &s.pos[g]))
            .collect();
        let factored: Vec<KvSlices<'_>> = (0..2)
            .map(|g| KvSlices {
                key_scale: Some(&scales[g]),
                value_scale: Some(&scales[g]),
                ..s.slices()[g]
            })
            .collect();
        let a = causal_attention(&s.q, &s.q_pos, &dense, s.shape, None);
        let b = causal_attention(&s.q, &s.q_pos, &factored, s.shape, None);
        let c = naive_causal_attention(&s.q, &s.q_pos, &factored, s.shape, None);
        assert!(max_diff(&a, &b) < 1e-5);
        assert!(max_diff(&a, &c) < 1e-5);
    }

    #[test]
    fn row_patches_equal_replacing_the_rows() {
        // Patched rows use their own data (unscaled); the rest keep scale · row.
        let s = setup(70, 90, true);
        let d = s.shape.head_dim;
        let scales: Vec<Vec<f32>> = s
            .pos
            .iter()
            .map(|p| p.iter().map(|&x| 0.5 + (x % 5) as f32 * 0.2).collect())
            .collect();
        let krows: Vec<Vec<u32>> = s
            .pos
            .iter()
            .map(|p| (0..p.len() as u32).filter(|r| r % 9 == 2).collect())
            .collect();
        let vrows: Vec<Vec<u32>> = s
            .pos
            .iter()
            .map(|p| (0..p.len() as u32).filter(|r| r % 7 == 0).collect())
            .collect();
        let kdata: Vec<Vec<f32>> = (0..2)
            .map(|g| values(krows[g].len() * d, 40 + g as u64))
            .collect();
        let vdata: Vec<Vec<f32>> = (0..2)
            .map(|g| values(vrows[g].len() * d, 50 + g as u64))
            .collect();
        let dense = |rows: &Vec<f32>, sc: &Vec<f32>, pr: &Vec<u32>, pd: &Vec<f32>| -> Vec<f32> {
            let mut out: Vec<f32> = rows
                .chunks(d)
                .zip(sc)
                .flat_map(|(r, k)| r.iter().map(move |x| x * k))
                .collect();
            for (i, &j) in pr.iter().enumerate() {
                out[j as usize * d..(j as usize + 1) * d].copy_from_slice(&pd[i * d..(i + 1) * d]);
            }
            out
        };
        let ks: Vec<Vec<f32>> = (0..2)
            .map(|g| dense(&s.keys[g], &scales[g], &krows[g], &kdata[g]))
            .collect();
        let vs: Vec<Vec<f32>> = (0..2)
            .map(|g| dense(&s.vals[g], &scales[g], &vrows[g], &vdata[g]))
            .collect();
        let reference: Vec<KvSlices<'_>> = (0..2)
            .map(|g| KvSlices::new(&ks[g], &vs[g], &s.pos[g]))
            .collect();
        let patched: Vec<KvSlices<'_>> = (0..2)
            .map(|g| KvSlices {
                key_scale: Some(&scales[g]),
                value_scale: Some(&scales[g]),
                key_patch: Some(RowPatch {
                    rows: &krows[g],
                    data: &kdata[g],
                }),
                value_patch: Some(RowPatch {
                    rows: &vrows[g],
                    data: &vdata[g],
                }),
                ..s.slices()[g]
            })
            .collect();
        let a = causal_attention(&s.q, &s.q_pos, &reference, s.shape, None);
        let b = causal_attention(&s.q, &s.q_pos, &patched, s.shape, None);
        let c = naive_causal_attention(&s.q, &s.q_pos, &patched, s.shape, None);
        assert!(max_diff(&a, &b) < 1e-5, "{}", max_diff(&a, &b));
        assert!(max_diff(&a, &c) < 1e-5);
    }

    #[test]
    fn a_query_only_sees_its_past() {
        // Changing a key after the first query's position must not change that query's output.
        let mut s = setup(8, 0, false);
        let before = causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, None);
        let d = s.shape.head_dim;
        s.keys[0][5 * d..6 * d].iter_mut().for_each(|x| *x += 3.0);
        let after = causal_attention(&s.q, &s.q_pos, &s.slices(), s.shape, None);
        let row = s.shape.n_heads * d;
        assert_eq!(before[..5 * row], after[..5 * row]);
        assert!(max_diff(&before[5 * row..], &after[5 * row..]) > 1e-4);
    }

    #[test]
    fn polynomial_exp_is_within_a_few_ulp_and_exactly_zero_when_masked() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (e, f) = ((x as f64).exp(), exp_nonpositive(x) as f64);
            assert!((e - f).abs() <= 4e-7 * e, "exp({x}): {e} vs {f}");
            x -= 0.013_7;
        }
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-90.0), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_of_fully_masked_row_is_zero_not_nan() {
        let mut row = [f32::NEG_INFINITY; 4];
        softmax_in_place(&mut row);
        assert_eq!(row, [0.0; 4]);
        let mut row = [1.0, 2.0, 3.0];
        softmax_in_place(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[2] > row[1] && row[1] > row[0]);
    }
}
