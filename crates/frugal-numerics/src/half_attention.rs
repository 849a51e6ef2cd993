//! Dense causal attention that reads an f16 KV store as it is held. The blocked kernel in
//! [`crate::attention`] takes f32 rows, so an f16 store would decode every row it holds into a
//! new buffer on every call: at decode that is the whole store per token, written and read
//! again, for one query row per head. Here each key and value row is widened in registers as
//! it is used, and the work is shared out per (token, query head), so the three query heads
//! of a KV group no longer wait on one task. Meant for few query rows (decode steps, short
//! chunks); long prefills keep the blocked kernel, whose GEMMs reuse each row many times.

use crate::attention::{check_step_shape, softmax_in_place, AttentionShape};
use half::f16;
use rayon::prelude::*;

/// One KV head's rows as the store holds them: `[n, head_dim]` keys and values, positions
/// ascending.
#[derive(Clone, Copy, Debug)]
pub struct HalfKv<'a> {
    pub keys: &'a [f16],
    pub values: &'a [f16],
    pub positions: &'a [u32],
}

/// Multiply-adds below which a call runs on the calling thread even when asked to use the
/// pool (ours): a few microseconds of work, less than waking the pool costs.
pub const HALF_ATTENTION_SERIAL_MACS: usize = 1 << 15;

/// `softmax(q·Kᵀ/√d) · V` for every query row and head, each query seeing the keys at
/// positions up to its own: the same result as [`crate::attention::causal_attention`] with no
/// mask on the same rows widened to f32, up to summation order. `q` is `[T, n_heads, d]`.
///
/// `parallel`: split the work over the thread pool, one task per (token, query head); else
/// (a caller that already runs several of these side by side, as a batched step does) run on
/// the calling thread one KV group at a time, where the group's query heads read each key and
/// value row once between them (with AVX-512, widened once into registers and met by every
/// head of the group), so a group of three costs about one head's reads, not three.
pub fn causal_attention_half(
    q: &[f32],
    q_positions: &[u32],
    kv: &[HalfKv<'_>],
    shape: AttentionShape,
    parallel: bool,
) -> Vec<f32> {
    let AttentionShape {
        n_heads,
        head_dim: d,
        ..
    } = shape;
    let t = q_positions.len();
    check_step_shape(q.len(), t, kv.len(), shape);
    for head in kv {
        assert_eq!(head.keys.len(), head.positions.len() * d);
        assert_eq!(head.values.len(), head.positions.len() * d);
    }
    let group = shape.group();
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; t * n_heads * d];
    let visible: usize = kv.iter().map(|h| h.positions.len()).sum();
    let serial = !parallel || 2 * t * visible * group * d < HALF_ATTENTION_SERIAL_MACS;
    // On the pool a task is one head, so even three KV groups spread evenly over the threads.
    let heads_per_task = if serial { group } else { 1 };
    let task = |(i, o): (usize, &mut [f32])| {
        let row = i * heads_per_task;
        let (tok, head) = (row / n_heads, row % n_heads);
        let kvh = &kv[head / group];
        let n = kvh.positions.partition_point(|&p| p <= q_positions[tok]);
        if n > 0 {
            group_attention(
                o,
                &q[row * d..(row + heads_per_task) * d],
                &kvh.keys[..n * d],
                &kvh.values[..n * d],
                d,
                scale,
            );
        }
    };
    if serial {
        out.chunks_mut(heads_per_task * d)
            .enumerate()
            .for_each(task);
    } else {
        out.par_chunks_mut(heads_per_task * d)
            .enumerate()
            .for_each(task);
    }
    out
}

/// One KV group's attention for one token: `q` and `o` hold the group's heads (`[heads, d]`),
/// `keys` and `values` the visible rows (`[n, d]`).
fn group_attention(o: &mut [f32], q: &[f32], keys: &[f16], values: &[f16], d: usize, scale: f32) {
    let heads = q.len() / d;
    let n = keys.len() / d;
    let qs: Vec<f32> = q.iter().map(|x| x * scale).collect();
    let mut scores = vec![0f32; heads * n];
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(16) && simd512::available() {
        // SAFETY: the CPU has AVX-512 F, F16C and FMA (checked); `d` is whole registers and
        // the slices hold `heads` rows of `d` (q, o) and `n` rows of `d` (keys, values).
        unsafe { simd512::group_scores(&mut scores, &qs, keys, d) };
        scores.chunks_exact_mut(n).for_each(softmax_in_place);
        // SAFETY: as above.
        unsafe { simd512::group_weighted(o, &scores, values, d) };
        return;
    }
    for h in 0..heads {
        let s = &mut scores[h * n..(h + 1) * n];
        dot_rows(s, &qs[h * d..(h + 1) * d], keys);
        softmax_in_place(s);
        weighted_rows(&mut o[h * d..(h + 1) * d], s, values);
    }
}

/// `scores[j] = q · rows[j]` for the f16 rows of `q.len()` values each.
fn dot_rows(scores: &mut [f32], q: &[f32], rows: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if q.len().is_multiple_of(8) && simd::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked), and the width is whole lanes.
        unsafe { simd::dot_rows(scores, q, rows) };
        return;
    }
    for (s, r) in scores.iter_mut().zip(rows.chunks_exact(q.len())) {
        *s = q.iter().zip(r).map(|(a, b)| a * b.to_f32()).sum();
    }
}

/// `out = Σ_j p[j] · rows[j]` for the f16 rows of `out.len()` values each.
fn weighted_rows(out: &mut [f32], p: &[f32], rows: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(8) && simd::available() {
        // SAFETY: as in `dot_rows`.
        unsafe { simd::weighted_rows(out, p, rows) };
        return;
    }
    out.fill(0.0);
    for (&w, r) in p.iter().zip(rows.chunks_exact(out.len())) {
        out.iter_mut()
            .zip(r)
            .for_each(|(o, v)| *o += w * v.to_f32());
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use half::f16;
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Each row widened eight values at a time into two alternating accumulators.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows(scores: &mut [f32], q: &[f32], rows: &[f16]) {
        let d = q.len();
        for (j, s) in scores.iter_mut().enumerate() {
            let r = rows.as_ptr().add(j * d);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c + 16 <= d {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c)), widen(r.add(c)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(q.as_ptr().add(c + 8)),
                    widen(r.add(c + 8)),
                    a1,
                );
                c += 16;
            }
            if c < d {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c)), widen(r.add(c)), a0);
            }
            *s = hsum(_mm256_add_ps(a0, a1));
        }
    }

    /// Columns in blocks of 64 (eight accumulators held in registers), every row's block
    /// widened and added with its weight.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_rows(out: &mut [f32], p: &[f32], rows: &[f16]) {
        let d = out.len();
        let mut c0 = 0;
        while c0 < d {
            let lanes = ((d - c0) / 8).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &w) in p.iter().enumerate() {
                if w == 0.0 {
                    continue;
                }
                let wv = _mm256_set1_ps(w);
                let r = rows.as_ptr().add(j * d + c0);
                for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                    *a = _mm256_fmadd_ps(wv, widen(r.add(8 * l)), *a);
                }
            }
            for (l, a) in acc.iter().enumerate().take(lanes) {
                _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * l), *a);
            }
            c0 += 8 * lanes;
        }
    }
}

/// The AVX-512 kernels of [`group_attention`]: up to four query heads meet each key or value
/// row while it is in registers.
#[cfg(target_arch = "x86_64")]
mod simd512 {
    use half::f16;
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("fma")
    }

    #[inline(always)]
    unsafe fn widen(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    /// The sums of four registers' lanes, `[Σa0, Σa1, Σa2, Σa3]`, in 13 operations (four
    /// separate horizontal sums take 32).
    #[inline(always)]
    unsafe fn sum4(a: [__m512; 4]) -> __m128 {
        let t0 = _mm512_add_ps(
            _mm512_unpacklo_ps(a[0], a[1]),
            _mm512_unpackhi_ps(a[0], a[1]),
        );
        let t1 = _mm512_add_ps(
            _mm512_unpacklo_ps(a[2], a[3]),
            _mm512_unpackhi_ps(a[2], a[3]),
        );
        let (t0, t1) = (_mm512_castps_pd(t0), _mm512_castps_pd(t1));
        let u = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t1)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t1)),
        );
        // Lane l of each 128-bit quarter: head l's partial sum over that quarter.
        let lo = _mm512_castps512_ps256(u);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(u)));
        let y = _mm256_add_ps(lo, hi);
        _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps::<1>(y))
    }

    /// `scores[h·n + j] = q[h] · keys[j]` for every head `h` of `q` (`[heads, d]`).
    #[target_feature(enable = "avx512f,f16c,fma,avx2")]
    pub(super) unsafe fn group_scores(scores: &mut [f32], q: &[f32], keys: &[f16], d: usize) {
        let heads = q.len() / d;
        let n = keys.len() / d;
        let mut h0 = 0;
        while h0 < heads {
            let s = scores.as_mut_ptr().add(h0 * n);
            let qh = q.as_ptr().add(h0 * d);
            match (heads - h0).min(4) {
                1 => scores_block::<1>(s, qh, keys.as_ptr(), n, d),
                2 => scores_block::<2>(s, qh, keys.as_ptr(), n, d),
                3 => scores_block::<3>(s, qh, keys.as_ptr(), n, d),
                _ => scores_block::<4>(s, qh, keys.as_ptr(), n, d),
            }
            h0 += 4;
        }
    }

    /// `H` heads' scores: each key row widened sixteen values at a time and met by every head.
    #[inline(always)]
    unsafe fn scores_block<const H: usize>(
        s: *mut f32,
        q: *const f32,
        keys: *const f16,
        n: usize,
        d: usize,
    ) {
        for j in 0..n {
            let k = keys.add(j * d);
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut c = 0;
            while c < d {
                let kw = widen(k.add(c));
                for (h, a) in acc.iter_mut().enumerate().take(H) {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(h * d + c)), kw, *a);
                }
                c += 16;
            }
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), sum4(acc));
            for (h, &v) in out.iter().enumerate().take(H) {
                *s.add(h * n + j) = v;
            }
        }
    }

    /// `o[h] = Σ_j p[h·n + j] · values[j]` for every head `h` of `o` (`[heads, d]`).
    #[target_feature(enable = "avx512f,f16c,fma,avx2")]
    pub(super) unsafe fn group_weighted(o: &mut [f32], p: &[f32], values: &[f16], d: usize) {
        let heads = o.len() / d;
        let n = values.len() / d;
        let mut h0 = 0;
        while h0 < heads {
            let h = (heads - h0).min(4);
            let mut c0 = 0;
            while c0 < d {
                let lanes = ((d - c0) / 16).min(4);
                let args = (
                    o.as_mut_ptr().add(h0 * d + c0),
                    p.as_ptr().add(h0 * n),
                    values.as_ptr().add(c0),
                    n,
                    d,
                );
                // Const head and register counts keep the accumulators in registers.
                match (h, lanes) {
                    (1, 1) => weighted_block::<1, 1>(args),
                    (1, 2) => weighted_block::<1, 2>(args),
                    (1, 3) => weighted_block::<1, 3>(args),
                    (1, _) => weighted_block::<1, 4>(args),
                    (2, 1) => weighted_block::<2, 1>(args),
                    (2, 2) => weighted_block::<2, 2>(args),
                    (2, 3) => weighted_block::<2, 3>(args),
                    (2, _) => weighted_block::<2, 4>(args),
                    (3, 1) => weighted_block::<3, 1>(args),
                    (3, 2) => weighted_block::<3, 2>(args),
                    (3, 3) => weighted_block::<3, 3>(args),
                    (3, _) => weighted_block::<3, 4>(args),
                    (_, 1) => weighted_block::<4, 1>(args),
                    (_, 2) => weighted_block::<4, 2>(args),
                    (_, 3) => weighted_block::<4, 3>(args),
                    _ => weighted_block::<4, 4>(args),
                }
                c0 += 16 * lanes;
            }
            h0 += 4;
        }
    }

    /// `H` heads × `L` registers of columns: each value row's `16·L` columns widened once and
    /// added into every head's accumulators with that head's weight.
    #[inline(always)]
    unsafe fn weighted_block<const H: usize, const L: usize>(
        (o, p, values, n, d): (*mut f32, *const f32, *const f16, usize, usize),
    ) {
        let mut acc = [[_mm512_setzero_ps(); L]; H];
        for j in 0..n {
            let v = values.add(j * d);
            let vw: [__m512; L] = std::array::from_fn(|l| widen(v.add(16 * l)));
            for (h, a) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*p.add(h * n + j));
                for (al, &x) in a.iter_mut().zip(&vw) {
                    *al = _mm512_fmadd_ps(w, x, *al);
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            for (l, al) in a.iter().enumerate() {
                _mm512_storeu_ps(o.add(h * d + 16 * l), *al);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{causal_attention, KvSlices};
    use crate::test_util::values;

    /// The blocked f32 kernel on the same rows widened, at several widths (multiples of 16
    /// take the AVX-512 kernels where the CPU has it, of 8 the AVX2 one, 12 the portable
    /// one), groups of one to eight query heads (eight: two blocks of four), on the pool (300
    /// keys) and on the calling thread (`parallel` off, or 7 keys), with holes in the positions and queries
    /// that see none, some and all of the keys.
    #[test]
    fn matches_the_blocked_kernel_on_the_widened_rows() {
        // With parallel on, the two sizes take the two paths.
        const {
            assert!(
                2 * 4 * 3 * 7 * 3 * 64 < HALF_ATTENTION_SERIAL_MACS
                    && 2 * 4 * 3 * 300 * 3 * 64 > HALF_ATTENTION_SERIAL_MACS
            )
        };
        let shapes = [
            (64, 9, 3),
            (256, 4, 1),
            (12, 4, 2),
            (80, 6, 2),
            (32, 8, 1),
            (48, 2, 2),
            (24, 6, 2),
        ];
        for ((d, n_heads, n_kv), n) in shapes.into_iter().flat_map(|s| [(s, 300), (s, 7)]) {
            let shape = AttentionShape {
                n_heads,
                n_kv_heads: n_kv,
                head_dim: d,
            };
            let positions: Vec<u32> = (0..n as u32).map(|i| 5 + i + i / 7).collect();
            let heads: Vec<(Vec<f16>, Vec<f16>)> = (0..n_kv)
                .map(|g| {
                    let k = values(n * d, 11 + g as u64);
                    let v = values(n * d, 31 + g as u64);
                    (
                        k.iter().map(|&x| f16::from_f32(2.0 * x)).collect(),
                        v.iter().map(|&x| f16::from_f32(x)).collect(),
                    )
                })
                .collect();
            let wide: Vec<(Vec<f32>, Vec<f32>)> = heads
                .iter()
                .map(|(k, v)| {
                    (
                        k.iter().map(|x| x.to_f32()).collect(),
                        v.iter().map(|x| x.to_f32()).collect(),
                    )
                })
                .collect();
            let q_positions = [2u32, 100, positions[n - 1], 9999];
            let q = values(q_positions.len() * n_heads * d, 77);
            let half: Vec<HalfKv<'_>> = heads
                .iter()
                .map(|(k, v)| HalfKv {
                    keys: k,
                    values: v,
                    positions: &positions,
                })
                .collect();
            let full: Vec<KvSlices<'_>> = wide
                .iter()
                .map(|(k, v)| KvSlices::new(k, v, &positions))
                .collect();
            let want = causal_attention(&q, &q_positions, &full, shape, None);
            for parallel in [true, false] {
                let got = causal_attention_half(&q, &q_positions, &half, shape, parallel);
                assert_eq!(got.len(), want.len());
                assert!(
                    got[..n_heads * d].iter().all(|&x| x == 0.0),
                    "a query before every key reads nothing"
                );
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "d {d} n {n} parallel {parallel} value {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
