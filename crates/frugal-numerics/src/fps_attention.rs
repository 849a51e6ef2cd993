//! FPSAttention (docs/methods/fps.md) emulated on the CPU over the engine's KV
//! layout: a causal block window (sink blocks + the last `window` key blocks up to the query
//! block's diagonal) and FP8 E4M3 fake quantisation of Q, K, V and P, in the order of operations
//! of our GPU kernel (`crates/frugal-gpu`, checked against [`crate::block_sparse`]).
//!
//! This is the quality side of FPSAttention without the GPU: it answers "what do FP8 and the
//! block window do to a model's outputs", training-free (the paper's quality needs
//! quantisation-aware training, which this does not do). It is not a fast path: every step
//! fake-quantises the keys and values it reads.
//!
//! Differences from the whole-sequence reference [`crate::block_sparse::block_sparse_attention_head`],
//! all ours and forced by the engine working on a growing KV store:
//! - blocks are cut in **token-position** space (query block `pos / bm`, key block `pos / bn`),
//!   so a token decoded later sees exactly the key blocks it would see in one long prefill;
//!   the diagonal of the last, partial query block is the one of the full block (the reference
//!   clips it at the sequence end; the two agree whenever the length is a multiple of `bm`);
//! - K is quantised per tile of `k_tile` positions over the keys stored *so far*, V per channel
//!   over the stored keys, and Q per tile of `q_tile` positions over this call's queries; so
//!   decoding token by token quantises differently from one prefill (the GPU kernel does the
//!   same per call);
//! - keys a cache stores as scaled directions or row patches are materialised first and the
//!   result is quantised, so the policy composes with any cache.

use crate::attention::{matmul, matmul_bt, AttentionShape, KeyMask, KvSlices};
use crate::block_sparse::Fp8Opts;
use crate::fp8::{amax, e4m3_round, fake_quant, scale_for_amax, E4M3_MAX};
use rayon::prelude::*;

/// Which key blocks a query sees, in token-position space (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CausalBlockWindow {
    /// Query block size (tokens).
    pub bm: usize,
    /// Key block size (tokens).
    pub bn: usize,
    /// Key blocks ending at the query block's diagonal; 0 = every block (dense).
    pub window: usize,
    /// Key blocks at the start of the sequence always visited.
    pub sink: usize,
}

impl CausalBlockWindow {
    /// Whether a query at `q_pos` visits key block `key_block` (causality inside the diagonal
    /// block is applied per element by the kernel).
    pub fn visits(&self, q_pos: u32, key_block: usize) -> bool {
        let diag = ((q_pos as usize / self.bm + 1) * self.bm - 1) / self.bn;
        key_block <= diag
            && (self.window == 0 || key_block + self.window > diag || key_block < self.sink)
    }
}

/// The window as a mask for the dense kernel (the same paths, no quantisation).
impl KeyMask for CausalBlockWindow {
    fn allows(&self, _q_head: usize, q_pos: u32, k_pos: u32) -> bool {
        self.visits(q_pos, k_pos as usize / self.bn)
    }
}

/// Fake-quantises `rows` (row-major, `d` wide) in place, one E4M3 scale per run of consecutive
/// rows with the same `tile[r]` (scale = amax / 448).
fn fake_quant_row_tiles(rows: &mut [f32], d: usize, tile: &[usize]) {
    let mut r0 = 0;
    while r0 < tile.len() {
        let r1 = r0 + tile[r0..].iter().take_while(|&&t| t == tile[r0]).count();
        let chunk = &mut rows[r0 * d..r1 * d];
        let s = scale_for_amax(amax(chunk));
        chunk.iter_mut().for_each(|x| *x = fake_quant(*x, s));
        r0 = r1;
    }
}

/// Fake-quantises `rows` in place with one scale per channel (column) over all rows.
fn fake_quant_channels(rows: &mut [f32], d: usize) {
    let mut am = vec![0f32; d];
    for row in rows.chunks_exact(d) {
        for (m, v) in am.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let scales: Vec<f32> = am.iter().map(|&a| scale_for_amax(a)).collect();
    for row in rows.chunks_exact_mut(d) {
        for (x, &s) in row.iter_mut().zip(&scales) {
            *x = fake_quant(*x, s);
        }
    }
}

/// One KV head's keys and values as attention uses them (scales and patches applied), quantised
/// as `fp8` asks, with the row range of every key block present.
struct PreparedHead<'a> {
    keys: Vec<f32>,
    values: Vec<f32>,
    positions: &'a [u32],
    /// (key block, first row, end row), ascending.
    blocks: Vec<(usize, usize, usize)>,
}

fn prepare_head<'a>(
    kv: &KvSlices<'a>,
    d: usize,
    bn: usize,
    fp8: Option<&Fp8Opts>,
) -> PreparedHead<'a> {
    let n = kv.positions.len();
    let mut keys = Vec::with_capacity(n * d);
    let mut values = Vec::with_capacity(n * d);
    for j in 0..n {
        let (k, ks) = kv.key_row(j, d);
        keys.extend(k.iter().map(|x| x * ks));
        let (v, vs) = kv.value_row(j, d);
        values.extend(v.iter().map(|x| x * vs));
    }
    if let Some(o) = fp8 {
        if o.quant_qk {
            let tiles: Vec<usize> = kv
                .positions
                .iter()
                .map(|&p| p as usize / o.k_tile)
                .collect();
            fake_quant_row_tiles(&mut keys, d, &tiles);
        }
        if o.quant_v {
            fake_quant_channels(&mut values, d);
        }
    }
    let mut blocks: Vec<(usize, usize, usize)> = Vec::new();
    for (j, &p) in kv.positions.iter().enumerate() {
        let kb = p as usize / bn;
        match blocks.last_mut() {
            Some(last) if last.0 == kb => last.2 = j + 1,
            _ => blocks.push((kb, j, j + 1)),
        }
    }
    PreparedHead {
        keys,
        values,
        positions: kv.positions,
        blocks,
    }
}

/// FPSAttention's block-windowed, FP8-emulated causal attention (`fp8 = None`: the block window
/// alone, plain f32 online softmax). Same layout as [`crate::attention::causal_attention`]: `q`
/// is `[T, n_heads, head_dim]` at ascending `q_positions`, `kv[g]` is KV head `g`; returns
/// `[T, n_heads, head_dim]`. A row with no visible key is zero.
///
/// Per (KV head, query block) task, the query heads of the GQA group are stacked; key blocks are
/// visited in ascending order with an online softmax in base 2 exactly as the GPU kernel runs
/// it: the running-max probabilities `p = 2^(s − m)` are quantised as `fp8(448·p)` for the PV
/// product while the row sum takes the unquantised `p`.
pub fn fps_attention(
    q: &[f32],
    q_positions: &[u32],
    kv: &[KvSlices<'_>],
    shape: AttentionShape,
    window: &CausalBlockWindow,
    fp8: Option<&Fp8Opts>,
) -> Vec<f32> {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
    } = shape;
    let t = q_positions.len();
    assert_eq!(q.len(), t * n_heads * d, "q must be [T, n_heads, head_dim]");
    assert_eq!(kv.len(), n_kv_heads, "one KvSlices per KV head");
    assert!(
        window.bm > 0 && window.bn > 0,
        "block sizes must be positive"
    );
    let group = shape.group();

    let mut qh = q.to_vec();
    if let Some(o) = fp8.filter(|o| o.quant_qk) {
        // One scale per (query head, tile of `q_tile` positions) over this call's queries.
        let tiles: Vec<usize> = q_positions.iter().map(|&p| p as usize / o.q_tile).collect();
        for h in 0..n_heads {
            let mut rows: Vec<f32> = (0..t)
                .flat_map(|i| q[(i * n_heads + h) * d..][..d].iter().copied())
                .collect();
            fake_quant_row_tiles(&mut rows, d, &tiles);
            for i in 0..t {
                qh[(i * n_heads + h) * d..][..d].copy_from_slice(&rows[i * d..][..d]);
            }
        }
    }
    let heads: Vec<PreparedHead<'_>> = kv
        .par_iter()
        .map(|s| prepare_head(s, d, window.bn, fp8))
        .collect();

    // Runs of this call's queries that share a query block.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, &p) in q_positions.iter().enumerate() {
        match runs.last_mut() {
            Some(r) if q_positions[r.0] as usize / window.bm == p as usize / window.bm => {
                r.1 = i + 1
            }
            _ => runs.push((i, i + 1)),
        }
    }
    let tasks: Vec<(usize, (usize, usize))> = (0..n_kv_heads)
        .flat_map(|g| runs.iter().map(move |&r| (g, r)))
        .collect();
    let quant_p = fp8.is_some_and(|o| o.quant_p);
    let pscale = if quant_p { E4M3_MAX } else { 1.0 };
    let sm = ((1.0 / (d as f64).sqrt()) * std::f64::consts::LOG2_E) as f32;

    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(g, (i0, i1))| {
            let head = &heads[g];
            // Rows (token i, group member hh), token-major.
            let m = (i1 - i0) * group;
            let mut qa = Vec::with_capacity(m * d);
            for i in i0..i1 {
                qa.extend_from_slice(&qh[(i * n_heads + g * group) * d..][..group * d]);
            }
            let row_pos = |r: usize| q_positions[i0 + r / group];
            let last_pos = q_positions[i1 - 1];
            let mut run_max = vec![f32::NEG_INFINITY; m];
            let mut run_sum = vec![0f32; m];
            let mut acc = vec![0f32; m * d];
            let mut s = Vec::new();
            let mut pv = vec![0f32; m * d];
            for &(kb, j0, j1) in &head.blocks {
                if !window.visits(q_positions[i0], kb) || head.positions[j0] > last_pos {
                    continue;
                }
                let nb = j1 - j0;
                s.resize(m * nb, 0.0);
                matmul_bt(&mut s, &qa, &head.keys[j0 * d..j1 * d], m, nb, d);
                for r in 0..m {
                    let qp = row_pos(r);
                    let sr = &mut s[r * nb..(r + 1) * nb];
                    for (x, &kp) in sr.iter_mut().zip(&head.positions[j0..j1]) {
                        *x = if kp > qp { f32::NEG_INFINITY } else { *x * sm };
                    }
                    let m_new = sr.iter().copied().fold(run_max[r], f32::max);
                    let ar = &mut acc[r * d..(r + 1) * d];
                    if m_new == f32::NEG_INFINITY {
                        sr.iter_mut().for_each(|x| *x = 0.0);
                        continue;
                    }
                    let alpha = (run_max[r] - m_new).exp2();
                    run_sum[r] *= alpha;
                    ar.iter_mut().for_each(|a| *a *= alpha);
                    for x in sr.iter_mut() {
                        let p = (*x - m_new).exp2();
                        run_sum[r] += p;
                        *x = if quant_p { e4m3_round(p * pscale) } else { p };
                    }
                    run_max[r] = m_new;
                }
                matmul(&mut pv, &s, &head.values[j0 * d..j1 * d], m, d, nb);
                for (a, x) in acc.iter_mut().zip(&pv) {
                    *a += x;
                }
            }
            for r in 0..m {
                let norm = pscale * run_sum[r];
                let ar = &mut acc[r * d..(r + 1) * d];
                if norm > 0.0 {
                    ar.iter_mut().for_each(|a| *a /= norm);
                } else {
                    ar.iter_mut().for_each(|a| *a = 0.0);
                }
            }
            acc
        })
        .collect();

    let mut out = vec![0f32; t * n_heads * d];
    for (&(g, (i0, i1)), acc) in tasks.iter().zip(results) {
        for i in i0..i1 {
            let src = &acc[(i - i0) * group * d..][..group * d];
            out[(i * n_heads + g * group) * d..][..group * d].copy_from_slice(src);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::causal_attention;
    use crate::block_sparse::{block_sparse_attention_head, rel_l2, BlockMap};
    use crate::test_util::{max_diff, values};

    struct Case {
        q: Vec<f32>,
        k: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
        pos: Vec<u32>,
        shape: AttentionShape,
    }

    /// `n` tokens at positions 0..n, GQA 6 query heads over 2 KV heads, head_dim 16. Keys are
    /// correlated with queries so the softmax is peaked, as in a trained model.
    fn case(n: usize, seed: u64) -> Case {
        let shape = AttentionShape {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 16,
        };
        let d = shape.head_dim;
        let q: Vec<f32> = values(n * shape.n_heads * d, seed)
            .iter()
            .map(|x| 3.0 * x)
            .collect();
        let k = (0..2)
            .map(|g| {
                let noise = values(n * d, seed + 10 + g as u64);
                (0..n * d)
                    .map(|e| 0.8 * q[((e / d) * shape.n_heads + 3 * g) * d + e % d] + noise[e])
                    .collect()
            })
            .collect();
        let v = (0..2).map(|g| values(n * d, seed + 20 + g)).collect();
        Case {
            q,
            k,
            v,
            pos: (0..n as u32).collect(),
            shape,
        }
    }

    impl Case {
        fn slices(&self) -> Vec<KvSlices<'_>> {
            (0..2)
                .map(|g| KvSlices::new(&self.k[g], &self.v[g], &self.pos))
                .collect()
        }
        fn run(&self, w: &CausalBlockWindow, fp8: Option<&Fp8Opts>) -> Vec<f32> {
            fps_attention(&self.q, &self.pos, &self.slices(), self.shape, w, fp8)
        }
        /// Query head `h` as a `[n, d]` matrix.
        fn q_head(&self, h: usize) -> Vec<f32> {
            let (n, d, nh) = (self.pos.len(), self.shape.head_dim, self.shape.n_heads);
            (0..n)
                .flat_map(|i| self.q[(i * nh + h) * d..][..d].iter().copied())
                .collect()
        }
    }

    const WINDOW: CausalBlockWindow = CausalBlockWindow {
        bm: 32,
        bn: 16,
        window: 3,
        sink: 1,
    };

    #[test]
    fn every_block_without_quantisation_is_dense_attention() {
        let c = case(200, 1);
        let dense = causal_attention(&c.q, &c.pos, &c.slices(), c.shape, None);
        let all = CausalBlockWindow {
            window: 0,
            ..WINDOW
        };
        let ours = c.run(&all, None);
        assert!(
            max_diff(&ours, &dense) < 1e-5,
            "{}",
            max_diff(&ours, &dense)
        );
        // A window without quantisation is the dense kernel under the window as a mask.
        let masked = causal_attention(&c.q, &c.pos, &c.slices(), c.shape, Some(&WINDOW));
        let windowed = c.run(&WINDOW, None);
        assert!(max_diff(&windowed, &masked) < 1e-5);
        assert!(
            max_diff(&windowed, &dense) > 1e-2,
            "the window removes paths"
        );
    }

    /// Against the whole-sequence reference (the one the GPU kernels are checked against), head
    /// by head, with and without FP8: same block lists, same quantisation tiles, same order of
    /// the online softmax. The only differences are f32 rounding (dequantised products here,
    /// codes times scales there), which can move an FP8 rounding of `448·p` by one step in rare
    /// elements; so the bound is a relative L2 error of 1e-3 (a block or masking bug gives O(1),
    /// and FP8 itself costs ~3e-2 against exact attention, checked below to be far above it).
    #[test]
    fn matches_the_whole_sequence_reference() {
        let n = 256; // a multiple of bm: the two definitions of the last diagonal agree
        let c = case(n, 2);
        let d = c.shape.head_dim;
        let map = BlockMap::causal_window(1, n, WINDOW.bm, WINDOW.bn, WINDOW.window, WINDOW.sink);
        let fp8 = Fp8Opts::full(16);
        let ours_exact = c.run(&WINDOW, None);
        let ours_fp8 = c.run(&WINDOW, Some(&fp8));
        for h in 0..c.shape.n_heads {
            let g = h / c.shape.group();
            let qh = c.q_head(h);
            let pick = |out: &[f32]| -> Vec<f32> {
                (0..n)
                    .flat_map(|i| out[(i * c.shape.n_heads + h) * d..][..d].to_vec())
                    .collect()
            };
            let exact = block_sparse_attention_head(&qh, &c.k[g], &c.v[g], d, &map, 0, None, None);
            let emulated =
                block_sparse_attention_head(&qh, &c.k[g], &c.v[g], d, &map, 0, None, Some(&fp8));
            let e1 = rel_l2(&pick(&ours_exact), &exact);
            let e2 = rel_l2(&pick(&ours_fp8), &emulated);
            let e3 = rel_l2(&pick(&ours_fp8), &exact);
            assert!(e1 < 1e-5, "head {h}: block window alone {e1}");
            assert!(e2 < 1e-3, "head {h}: fp8 emulation {e2}");
            assert!(e3 > 1e-2 && e3 < 0.2, "head {h}: fp8 error vs exact {e3}");
        }
    }

    #[test]
    fn the_window_removes_distant_keys_but_keeps_sinks() {
        let w = WINDOW;
        // Query 200: block 6 (rows 192..223), diagonal key block 13, window 11..=13, sink 0.
        assert!(w.visits(200, 13) && w.visits(200, 11) && w.visits(200, 0));
        assert!(!w.visits(200, 10) && !w.visits(200, 1) && !w.visits(200, 14));
        // The result depends only on visited keys: key 20 (block 1, outside the sink) is seen
        // by queries of query blocks 0 and 1 only (diagonals 1 and 3 keep block 1 in a 3-block
        // window). Perturbing it also moves the FP8 scale of its K tile (positions 16..31), so
        // exactly the rows of queries 16..63 change.
        let mut c = case(256, 3);
        let fp8 = Fp8Opts::full(16);
        let before = c.run(&WINDOW, Some(&fp8));
        let (d, nh) = (c.shape.head_dim, c.shape.n_heads);
        for g in 0..2 {
            c.k[g][20 * d..21 * d].iter_mut().for_each(|x| *x += 5.0);
        }
        let after = c.run(&WINDOW, Some(&fp8));
        for i in 0..256 {
            let row = |o: &[f32]| o[i * nh * d..(i + 1) * nh * d].to_vec();
            let changed = max_diff(&row(&before), &row(&after)) > 0.0;
            assert_eq!(changed, (16..64).contains(&i), "query {i}");
        }
    }

    #[test]
    fn token_by_token_equals_one_call_without_quantisation() {
        let c = case(150, 4);
        let whole = c.run(&WINDOW, None);
        let (d, nh) = (c.shape.head_dim, c.shape.n_heads);
        for i in [0usize, 31, 32, 77, 149] {
            let kv: Vec<KvSlices<'_>> = (0..2)
                .map(|g| {
                    KvSlices::new(&c.k[g][..(i + 1) * d], &c.v[g][..(i + 1) * d], &c.pos[..=i])
                })
                .collect();
            let one = fps_attention(
                &c.q[i * nh * d..(i + 1) * nh * d],
                &c.pos[i..=i],
                &kv,
                c.shape,
                &WINDOW,
                None,
            );
            let diff = max_diff(&one, &whole[i * nh * d..(i + 1) * nh * d]);
            assert!(diff < 1e-5, "query {i}: {diff}");
        }
    }
}
