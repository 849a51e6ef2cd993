//! Block maps and the block-sparse attention reference for FPSAttention
//! (docs/methods/fps.md), optionally with FP8 E4M3 fake quantisation of Q, K, V
//! and P as the paper describes. This is the CPU reference the GPU kernels
//! (`crates/frugal-gpu`) are checked against.
//!
//! A [`BlockMap`] cuts the query sequence into blocks of `bm` tokens and the key sequence into
//! blocks of `bn` tokens, and lists, per (head, query block), the key blocks visited, ascending.
//! Two builders:
//! - [`BlockMap::tile3d_window`]: video-shaped input, bidirectional. The (T, H, W) token grid is
//!   cut into 3D tiles; the sequence is assumed to be in *tile-major* order
//!   ([`tile_major_order`]); tile `u` sees tile `v` when `|u_t−v_t| ≤ w_t`, `|u_h−v_h| ≤ w_h` and
//!   `|u_w−v_w| ≤ w_w` (a window clipped at the grid border — ours; STA shifts it inward). A
//!   query block visits a key block when any tile it touches sees any tile the key block
//!   touches. When tiles are not a multiple of the kernel block (21×30×52 has no 64-token
//!   tiling) this is a superset of the tile-level window — ours, labelled.
//! - [`BlockMap::causal_window`]: LLM-shaped input, causal: each query block visits the last
//!   `window` key blocks up to its diagonal plus `sink` blocks at the start (ours).
//!
//! The FP8 reference ([`Fp8Opts`]) mirrors what the GPU kernel does, in the same order, so the
//! comparison isolates kernel bugs from quantisation error: Q and K quantised per tile of
//! `q_tile` / `k_tile` consecutive tokens (scale = amax/448), V per channel over the sequence,
//! scores `(Q̂·K̂ᵀ)·s_q·s_k/√d`, an online softmax over key blocks in list order (base 2), the
//! unnormalised probabilities `p = 2^(s − m_running) ∈ [0, 1]` quantised as `fp8(448·p)`
//! (the fixed 1/448 scale, applied SageAttention2-style to the running-max
//! probabilities — ours), the row sum taken over the unquantised `p` (ours), and
//! `O = (Σ p̂ V̂)·s_v / (448·l)`.

/// Which key blocks every (head, query block) visits.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMap {
    pub heads: usize,
    pub n_tokens: usize,
    /// Query block size (tokens).
    pub bm: usize,
    /// Key block size (tokens).
    pub bn: usize,
    pub n_qb: usize,
    pub n_kb: usize,
    /// Element-wise causal mask on top of the block map.
    pub causal: bool,
    /// `lists[head * n_qb + qb]`: visited key blocks, ascending, no duplicates.
    pub lists: Vec<Vec<u32>>,
}

impl BlockMap {
    fn empty(heads: usize, n: usize, bm: usize, bn: usize, causal: bool) -> Self {
        assert!(heads > 0 && n > 0 && bm > 0 && bn > 0);
        let (n_qb, n_kb) = (n.div_ceil(bm), n.div_ceil(bn));
        BlockMap {
            heads,
            n_tokens: n,
            bm,
            bn,
            n_qb,
            n_kb,
            causal,
            lists: vec![Vec::new(); heads * n_qb],
        }
    }

    /// Last key block a query block can see under causality.
    fn diag(&self, qb: usize) -> usize {
        let last_row = ((qb + 1) * self.bm).min(self.n_tokens) - 1;
        last_row / self.bn
    }

    /// Every key block (up to the diagonal when causal).
    pub fn dense(heads: usize, n: usize, bm: usize, bn: usize, causal: bool) -> Self {
        let mut m = Self::empty(heads, n, bm, bn, causal);
        for h in 0..heads {
            for qb in 0..m.n_qb {
                let hi = if causal { m.diag(qb) } else { m.n_kb - 1 };
                m.lists[h * m.n_qb + qb] = (0..=hi as u32).collect();
            }
        }
        m
    }

    /// Causal sliding window of `window` key blocks ending at the diagonal, plus the first
    /// `sink` key blocks. `window ≥ 1` keeps the diagonal, so no row is left without keys.
    pub fn causal_window(
        heads: usize,
        n: usize,
        bm: usize,
        bn: usize,
        window: usize,
        sink: usize,
    ) -> Self {
        assert!(window >= 1, "window must keep the diagonal block");
        let mut m = Self::empty(heads, n, bm, bn, true);
        for h in 0..heads {
            for qb in 0..m.n_qb {
                let d = m.diag(qb);
                let lo = (d + 1).saturating_sub(window);
                let mut l: Vec<u32> = (0..sink.min(lo) as u32).collect();
                l.extend(lo as u32..=d as u32);
                m.lists[h * m.n_qb + qb] = l;
            }
        }
        m
    }

    /// 3D tile window over a tile-major (T, H, W) sequence (see the module doc), the same for
    /// every head.
    pub fn tile3d_window(
        heads: usize,
        grid: [usize; 3],
        tile: [usize; 3],
        window: [usize; 3],
        bm: usize,
        bn: usize,
    ) -> Self {
        for a in 0..3 {
            assert!(
                tile[a] > 0 && grid[a].is_multiple_of(tile[a]),
                "tile must divide the grid"
            );
        }
        let n = grid[0] * grid[1] * grid[2];
        let tg = [grid[0] / tile[0], grid[1] / tile[1], grid[2] / tile[2]];
        let tl = tile[0] * tile[1] * tile[2];
        let n_tiles = tg[0] * tg[1] * tg[2];
        let coord = |t: usize| [t / (tg[1] * tg[2]), (t / tg[2]) % tg[1], t % tg[2]];
        let sees = |u: usize, v: usize| {
            let (a, b) = (coord(u), coord(v));
            (0..3).all(|i| a[i].abs_diff(b[i]) <= window[i])
        };
        let mut m = Self::empty(heads, n, bm, bn, false);
        let tiles_of = |start: usize, len: usize| -> std::ops::RangeInclusive<usize> {
            let end = (start + len).min(n) - 1;
            (start / tl)..=(end / tl)
        };
        let mut lists = Vec::with_capacity(m.n_qb);
        for qb in 0..m.n_qb {
            let mut seen = vec![false; n_tiles];
            for u in tiles_of(qb * bm, bm) {
                for (v, s) in seen.iter_mut().enumerate() {
                    if !*s && sees(u, v) {
                        *s = true;
                    }
                }
            }
            let l: Vec<u32> = (0..m.n_kb)
                .filter(|&kb| tiles_of(kb * bn, bn).any(|v| seen[v]))
                .map(|kb| kb as u32)
                .collect();
            lists.push(l);
        }
        for h in 0..heads {
            for (qb, l) in lists.iter().enumerate() {
                m.lists[h * m.n_qb + qb] = l.clone();
            }
        }
        m
    }

    /// Visited block pairs.
    pub fn visited(&self) -> usize {
        self.lists.iter().map(|l| l.len()).sum()
    }

    /// Visited block pairs over those of the dense map with the same causality.
    pub fn density(&self) -> f64 {
        let dense = Self::dense(self.heads, self.n_tokens, self.bm, self.bn, self.causal);
        self.visited() as f64 / dense.visited() as f64
    }

    /// Whether query `i` may see key `j` in `head` (block map, causality, bounds).
    pub fn allows(&self, head: usize, i: usize, j: usize) -> bool {
        if i >= self.n_tokens || j >= self.n_tokens || (self.causal && j > i) {
            return false;
        }
        self.lists[head * self.n_qb + i / self.bm]
            .binary_search(&((j / self.bn) as u32))
            .is_ok()
    }

    /// Exact attention FLOPs of the visited (query, key) pairs for one head dim `d`
    /// (4·d per pair: QKᵀ and PV, multiply-add = 2), counting only pairs the mask allows.
    pub fn flops(&self, d: usize) -> f64 {
        let mut pairs = 0f64;
        for h in 0..self.heads {
            for qb in 0..self.n_qb {
                let r0 = qb * self.bm;
                let r1 = (r0 + self.bm).min(self.n_tokens);
                for &kb in &self.lists[h * self.n_qb + qb] {
                    let c0 = kb as usize * self.bn;
                    let c1 = (c0 + self.bn).min(self.n_tokens);
                    for i in r0..r1 {
                        let hi = if self.causal { c1.min(i + 1) } else { c1 };
                        pairs += hi.saturating_sub(c0) as f64;
                    }
                }
            }
        }
        pairs * 4.0 * d as f64
    }

    /// CSR-like arrays for a GPU kernel: `counts[head * n_qb + qb]` and
    /// `idx[(head * n_qb + qb) * n_kb + i]` (rows padded to `n_kb`).
    pub fn to_padded(&self) -> (Vec<i32>, Vec<i32>) {
        let mut counts = Vec::with_capacity(self.lists.len());
        let mut idx = vec![0i32; self.lists.len() * self.n_kb];
        for (r, l) in self.lists.iter().enumerate() {
            counts.push(l.len() as i32);
            for (i, &kb) in l.iter().enumerate() {
                idx[r * self.n_kb + i] = kb as i32;
            }
        }
        (counts, idx)
    }
}

/// The tile-major token order of a (T, H, W) grid: entry `p` is the raster index
/// (`t·H·W + h·W + w`) of the token placed at sequence position `p`. Tiles are visited in
/// raster order of the tile grid, tokens inside a tile in raster order.
pub fn tile_major_order(grid: [usize; 3], tile: [usize; 3]) -> Vec<u32> {
    let tg = [grid[0] / tile[0], grid[1] / tile[1], grid[2] / tile[2]];
    let mut out = Vec::with_capacity(grid[0] * grid[1] * grid[2]);
    for a in 0..tg[0] {
        for b in 0..tg[1] {
            for c in 0..tg[2] {
                for i in 0..tile[0] {
                    for j in 0..tile[1] {
                        for k in 0..tile[2] {
                            let (t, h, w) = (a * tile[0] + i, b * tile[1] + j, c * tile[2] + k);
                            out.push((t * grid[1] * grid[2] + h * grid[2] + w) as u32);
                        }
                    }
                }
            }
        }
    }
    out
}

/// FP8 emulation switches and granularity (see the module doc). With every `quant_*` off, the
/// FP8 path is a plain f32 online softmax, which the tests hold equal to the exact reference.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Opts {
    pub quant_qk: bool,
    pub quant_v: bool,
    pub quant_p: bool,
    /// Tokens per Q scale tile.
    pub q_tile: usize,
    /// Tokens per K scale tile (the GPU kernel needs it equal to the key block `bn`).
    pub k_tile: usize,
}

impl Fp8Opts {
    /// Everything quantised, 64-token tiles (the GPU kernel's choice).
    pub fn full(tile: usize) -> Self {
        Fp8Opts {
            quant_qk: true,
            quant_v: true,
            quant_p: true,
            q_tile: tile,
            k_tile: tile,
        }
    }
}

const LOG2E: f64 = std::f64::consts::LOG2_E;

/// Block-sparse attention for one head. `q`, `k`, `v` are row-major `[n, d]` (n = the map's
/// tokens). Only the query blocks in `qblocks` are computed (all when `None`); other rows are
/// zero. `fp8 = None`: exact softmax in f64 over the keys the map allows. `Some`: the FP8
/// emulation in the GPU's order of operations (f32). Rows with no visible key are zero.
// The GPU kernel's launch arguments, one for one, so the reference reads like the kernel.
#[allow(clippy::too_many_arguments)]
pub fn block_sparse_attention_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: usize,
    map: &BlockMap,
    head: usize,
    qblocks: Option<&[usize]>,
    fp8: Option<&Fp8Opts>,
) -> Vec<f32> {
    let n = map.n_tokens;
    assert!(q.len() == n * d && k.len() == n * d && v.len() == n * d);
    let all: Vec<usize> = (0..map.n_qb).collect();
    let qblocks = qblocks.unwrap_or(&all);
    let mut out = vec![0f32; n * d];
    match fp8 {
        None => {
            let scale = 1.0 / (d as f64).sqrt();
            for &qb in qblocks {
                for i in qb * map.bm..((qb + 1) * map.bm).min(n) {
                    let qi = &q[i * d..][..d];
                    let mut w: Vec<(usize, f64)> = Vec::new();
                    for &kb in &map.lists[head * map.n_qb + qb] {
                        for j in kb as usize * map.bn..((kb as usize + 1) * map.bn).min(n) {
                            if map.causal && j > i {
                                continue;
                            }
                            let s: f64 = qi
                                .iter()
                                .zip(&k[j * d..][..d])
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum();
                            w.push((j, s * scale));
                        }
                    }
                    if w.is_empty() {
                        continue;
                    }
                    let mx = w.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                    let tot: f64 = w.iter().map(|x| (x.1 - mx).exp()).sum();
                    let mut acc = vec![0f64; d];
                    for (j, s) in w {
                        let p = (s - mx).exp() / tot;
                        for (a, b) in acc.iter_mut().zip(&v[j * d..][..d]) {
                            *a += p * *b as f64;
                        }
                    }
                    for (o, a) in out[i * d..][..d].iter_mut().zip(acc) {
                        *o = a as f32;
                    }
                }
            }
        }
        Some(o) => {
            use crate::fp8::{e4m3_round, quantize_channels, quantize_row_tiles};
            let (qh, sq) = if o.quant_qk {
                quantize_row_tiles(q, d, o.q_tile)
            } else {
                (q.to_vec(), vec![1.0; n.div_ceil(o.q_tile)])
            };
            let (kh, sk) = if o.quant_qk {
                quantize_row_tiles(k, d, o.k_tile)
            } else {
                (k.to_vec(), vec![1.0; n.div_ceil(o.k_tile)])
            };
            let (vh, sv) = if o.quant_v {
                quantize_channels(v, d)
            } else {
                (v.to_vec(), vec![1.0; d])
            };
            let pscale = if o.quant_p { crate::fp8::E4M3_MAX } else { 1.0 };
            let sm = ((1.0 / (d as f64).sqrt()) * LOG2E) as f32;
            for &qb in qblocks {
                for i in qb * map.bm..((qb + 1) * map.bm).min(n) {
                    let qi = &qh[i * d..][..d];
                    let mut m = f32::NEG_INFINITY;
                    let mut l = 0f32;
                    let mut acc = vec![0f32; d];
                    for &kb in &map.lists[head * map.n_qb + qb] {
                        let (c0, c1) = (kb as usize * map.bn, ((kb as usize + 1) * map.bn).min(n));
                        let mut s: Vec<f32> = Vec::with_capacity(c1 - c0);
                        for j in c0..c1 {
                            if map.causal && j > i {
                                s.push(f32::NEG_INFINITY);
                                continue;
                            }
                            let dot: f32 =
                                qi.iter().zip(&kh[j * d..][..d]).map(|(a, b)| a * b).sum();
                            let f = sq[i / o.q_tile] * sk[j / o.k_tile] * sm;
                            s.push(dot * f);
                        }
                        let bmax = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let m_new = m.max(bmax);
                        if m_new == f32::NEG_INFINITY {
                            continue; // nothing visible yet
                        }
                        let alpha = (m - m_new).exp2();
                        l *= alpha;
                        acc.iter_mut().for_each(|a| *a *= alpha);
                        for (jj, &sj) in s.iter().enumerate() {
                            let p = (sj - m_new).exp2();
                            l += p;
                            let ph = if o.quant_p { e4m3_round(p * pscale) } else { p };
                            if ph != 0.0 {
                                for (a, b) in acc.iter_mut().zip(&vh[(c0 + jj) * d..][..d]) {
                                    *a += ph * b;
                                }
                            }
                        }
                        m = m_new;
                    }
                    if l > 0.0 {
                        for (c, (dst, a)) in out[i * d..][..d].iter_mut().zip(&acc).enumerate() {
                            *dst = a * sv[c] / (pscale * l);
                        }
                    }
                }
            }
        }
    }
    out
}

/// ‖a − b‖ / ‖b‖ in f64 (0 when both are zero).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{naive_causal_attention, AttentionShape, KeyMask, KvSlices};

    use crate::test_util::values;

    /// Independent bidirectional reference: full softmax over all keys in f64.
    fn naive_bidirectional(q: &[f32], k: &[f32], v: &[f32], n: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * d];
        for i in 0..n {
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (0..d)
                        .map(|c| q[i * d + c] as f64 * k[j * d + c] as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let tot: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            for j in 0..n {
                let p = (s[j] - mx).exp() / tot;
                for c in 0..d {
                    out[i * d + c] += (p * v[j * d + c] as f64) as f32;
                }
            }
        }
        out
    }

    fn causal_naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        d: usize,
        mask: Option<&dyn KeyMask>,
    ) -> Vec<f32> {
        let pos: Vec<u32> = (0..n as u32).collect();
        let kv = [KvSlices::new(k, v, &pos)];
        let shape = AttentionShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: d,
        };
        naive_causal_attention(q, &pos, &kv, shape, mask)
    }

    struct MapMask<'a>(&'a BlockMap);
    impl KeyMask for MapMask<'_> {
        fn allows(&self, h: usize, i: u32, j: u32) -> bool {
            self.0.allows(h, i as usize, j as usize)
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn full_density_bidirectional_equals_dense() {
        let (n, d) = (150, 16); // not a multiple of either block size
        let (q, k, v) = (values(n * d, 1), values(n * d, 2), values(n * d, 3));
        let map = BlockMap::dense(1, n, 32, 16, false);
        assert_eq!(map.density(), 1.0);
        let got = block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, None);
        let want = naive_bidirectional(&q, &k, &v, n, d);
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    }

    #[test]
    fn full_density_causal_equals_naive_causal() {
        let (n, d) = (130, 8);
        let (q, k, v) = (values(n * d, 4), values(n * d, 5), values(n * d, 6));
        let map = BlockMap::dense(1, n, 32, 16, true);
        let got = block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, None);
        let want = causal_naive(&q, &k, &v, n, d, None);
        assert!(max_diff(&got, &want) < 1e-5);
        // a causal window that covers everything is the dense map
        assert_eq!(BlockMap::causal_window(1, n, 32, 16, 100, 0), map);
    }

    #[test]
    fn causal_window_with_sink_equals_masked_naive() {
        let (n, d) = (300, 8);
        let (q, k, v) = (values(n * d, 7), values(n * d, 8), values(n * d, 9));
        let map = BlockMap::causal_window(1, n, 32, 16, 3, 1);
        // query block 5 (rows 160..191) → diagonal key block 11, window 9..=11, sink 0
        assert_eq!(map.lists[5], vec![0, 9, 10, 11]);
        assert!(map.density() < 0.5);
        let got = block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, None);
        let want = causal_naive(&q, &k, &v, n, d, Some(&MapMask(&map)));
        assert!(max_diff(&got, &want) < 1e-5);
        // computing a subset of query blocks gives the same rows
        let sub = block_sparse_attention_head(&q, &k, &v, d, &map, 0, Some(&[2, 7]), None);
        assert_eq!(&sub[64 * d..96 * d], &got[64 * d..96 * d]);
        assert!(sub[..64 * d].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn tile3d_window_properties() {
        let grid = [3, 6, 8];
        let tile = [1, 2, 4]; // 8 tokens per tile, tile grid 3×3×2
        let ord = tile_major_order(grid, tile);
        let mut sorted = ord.clone();
        sorted.sort();
        assert_eq!(sorted, (0..144).collect::<Vec<u32>>());
        assert_eq!(&ord[..8], &[0, 1, 2, 3, 8, 9, 10, 11]);
        // blocks = tiles: the map is exactly the tile window
        let m = BlockMap::tile3d_window(2, grid, tile, [0, 1, 0], 8, 8);
        assert_eq!(m.n_qb, 18);
        // tile 2 = (0,1,0) sees (0,0,0),(0,1,0),(0,2,0) = tiles 0, 2, 4
        assert_eq!(m.lists[2], vec![0, 2, 4]);
        assert_eq!(m.lists[18 + 2], vec![0, 2, 4]); // same for head 1
        assert_eq!(m.lists[4], vec![2, 4]); // (0,2,0): clipped at the border
                                            // a large window is dense
        let full = BlockMap::tile3d_window(1, grid, tile, [9, 9, 9], 16, 8);
        assert_eq!(full.density(), 1.0);
        // symmetric when bm == bn
        for a in 0..m.n_qb {
            for b in 0..m.n_kb {
                assert_eq!(
                    m.lists[a].contains(&(b as u32)),
                    m.lists[b].contains(&(a as u32))
                );
            }
        }
    }

    #[test]
    fn sparse_bidirectional_equals_masked_naive() {
        let (grid, tile) = ([3, 4, 6], [1, 2, 3]);
        let n = 72;
        let d = 8;
        let (q, k, v) = (values(n * d, 10), values(n * d, 11), values(n * d, 12));
        let map = BlockMap::tile3d_window(1, grid, tile, [0, 1, 0], 16, 8);
        assert!(map.density() < 1.0);
        let got = block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, None);
        for i in 0..n {
            let keys: Vec<usize> = (0..n).filter(|&j| map.allows(0, i, j)).collect();
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    (0..d)
                        .map(|c| q[i * d + c] as f64 * k[j * d + c] as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let tot: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            for c in 0..d {
                let want: f64 = keys
                    .iter()
                    .zip(&s)
                    .map(|(&j, x)| (x - mx).exp() / tot * v[j * d + c] as f64)
                    .sum();
                assert!((got[i * d + c] as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn online_path_without_quantisation_equals_exact() {
        let (n, d) = (200, 16);
        let (q, k, v) = (values(n * d, 13), values(n * d, 14), values(n * d, 15));
        for map in [
            BlockMap::causal_window(1, n, 64, 32, 2, 1),
            BlockMap::dense(1, n, 64, 32, false),
        ] {
            let off = Fp8Opts {
                quant_qk: false,
                quant_v: false,
                quant_p: false,
                q_tile: 64,
                k_tile: 32,
            };
            let a = block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, Some(&off));
            let b = block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, None);
            assert!(rel_l2(&a, &b) < 1e-5, "{}", rel_l2(&a, &b));
        }
    }

    #[test]
    fn fp8_path_error_is_bounded_and_finite() {
        let (n, d) = (256, 64);
        let (q, k, v) = (values(n * d, 16), values(n * d, 17), values(n * d, 18));
        let q: Vec<f32> = q.iter().map(|x| x * 3.0).collect(); // sharper softmax
        let map = BlockMap::dense(1, n, 64, 64, true);
        let exact = block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, None);
        let f = block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, Some(&Fp8Opts::full(64)));
        assert!(f.iter().all(|x| x.is_finite()));
        let e = rel_l2(&f, &exact);
        // E4M3 has unit roundoff 2^-4; independent errors over many keys average down.
        assert!(e > 1e-4 && e < 0.08, "fp8 rel err {e}");
        // quantising P alone costs less than quantising everything
        let p_only = Fp8Opts {
            quant_qk: false,
            quant_v: false,
            ..Fp8Opts::full(64)
        };
        let ep = rel_l2(
            &block_sparse_attention_head(&q, &k, &v, d, &map, 0, None, Some(&p_only)),
            &exact,
        );
        assert!(ep < e, "{ep} {e}");
    }

    #[test]
    fn flops_count_dense_and_causal() {
        let m = BlockMap::dense(2, 100, 32, 16, false);
        assert_eq!(m.flops(8), 2.0 * 100.0 * 100.0 * 32.0);
        let c = BlockMap::dense(1, 100, 32, 16, true);
        assert_eq!(c.flops(8), (100.0 * 101.0 / 2.0) * 32.0);
        let (counts, idx) = c.to_padded();
        assert_eq!(counts[0], 2);
        assert_eq!(&idx[..2], &[0, 1]);
    }
}
