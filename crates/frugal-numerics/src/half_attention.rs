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

/// `softmax(q·Kᵀ/√d) · V` for every query row and head, each query seeing the keys at
/// positions up to its own: the same result as [`crate::attention::causal_attention`] with no
/// mask on the same rows widened to f32, up to summation order. `q` is `[T, n_heads, d]`.
pub fn causal_attention_half(
    q: &[f32],
    q_positions: &[u32],
    kv: &[HalfKv<'_>],
    shape: AttentionShape,
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
    out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
        let (tok, head) = (row / n_heads, row % n_heads);
        let kvh = &kv[head / group];
        let n = kvh.positions.partition_point(|&p| p <= q_positions[tok]);
        if n == 0 {
            return;
        }
        let qrow: Vec<f32> = q[row * d..(row + 1) * d]
            .iter()
            .map(|x| x * scale)
            .collect();
        let mut scores = vec![0f32; n];
        dot_rows(&mut scores, &qrow, &kvh.keys[..n * d]);
        softmax_in_place(&mut scores);
        weighted_rows(o, &scores, &kvh.values[..n * d]);
    });
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{causal_attention, KvSlices};
    use crate::test_util::values;

    /// The blocked f32 kernel on the same rows widened, at several widths (64 and Gemma's
    /// 256 take the SIMD path, 12 the portable one), with holes in the positions and queries
    /// that see none, some and all of the keys.
    #[test]
    fn matches_the_blocked_kernel_on_the_widened_rows() {
        for (d, n_heads, n_kv) in [(64, 9, 3), (256, 4, 1), (12, 4, 2)] {
            let shape = AttentionShape {
                n_heads,
                n_kv_heads: n_kv,
                head_dim: d,
            };
            let n = 300;
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
            let got = causal_attention_half(&q, &q_positions, &half, shape);
            let want = causal_attention(&q, &q_positions, &full, shape, None);
            assert_eq!(got.len(), want.len());
            assert!(
                got[..n_heads * d].iter().all(|&x| x == 0.0),
                "a query before every key reads nothing"
            );
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5, "d {d} value {i}: {a} vs {b}");
            }
        }
    }
}
