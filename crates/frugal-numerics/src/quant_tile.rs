//! Quantised weights × activation rows (a decode step, a batched serving step, a short prefill
//! chunk) on AVX-512 VNNI: a tile of four weight rows against up to four activation rows, two
//! 32-value blocks per 512-bit register.
//!
//! Computing each activation row on its own (the grouped kernel of [`crate::quant_matvec`])
//! unpacks every weight block once per activation row and spends about seven instructions per
//! (block, weight row, activation row), only one of them the byte product. Here a weight
//! block pair is unpacked once per tile and meets every activation row of the tile; per
//! (block pair, weight row, activation row) there remain the byte product (`vpdpbusd`, 64
//! products), its conversion to f32, one multiply forming the combined scale and one or two
//! fused multiply-adds (the scale, and the format's offset term folded into the same
//! accumulator). The sums are those of the grouped kernel, in another order: results agree
//! with it to f32 rounding.
//!
//! Offsets, per format, with `x` the activation codes of a block, `s` its scale and
//! `Σx·s` its scaled sum:
//! * Q4_1: `d·s·Σ(code·x) + m·(s·Σx)`: the minimum `m` meets the scaled sum;
//! * Q4_0: `d·s·Σ(code·x) − 8·d·(s·Σx)`;
//! * Q8_0: signed codes, so the product runs on `x + 128` (unsigned, as `vpdpbusd` needs) with
//!   the accumulator started at `−128·Σcode`, which leaves exactly `Σ(code·x)`.
//!
//! The offset term is a per-block scalar; it is spread over the eight i32 lanes of its block
//! as one eighth per lane, so one horizontal sum at the end adds it.

use crate::quant_matvec::{ActRow, QuantFormat};
use std::arch::x86_64::*;

/// Weight rows per tile.
pub(crate) const TILE_ROWS: usize = 4;

/// Whether this CPU runs the tile kernel (AVX-512 F/BW/VL with VNNI, and F16C for the block
/// scales).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

/// Activation rows laid out for the tile kernel, once per product: per row and pair of
/// blocks, the 64 codes (zero past the last block; for Q8_0 weights flipped to `x + 128`), the
/// two blocks' scales each spread over its eight lanes, and their scaled sums / 8 likewise.
/// Every load in the kernel's inner loop is then one whole register.
pub(crate) struct TileActs {
    pairs: usize,
    codes: Vec<i8>,
    lanes: Vec<f32>,
}

impl TileActs {
    pub(crate) fn new(format: QuantFormat, rows: &[ActRow<'_>], blocks: usize) -> Self {
        let pairs = blocks.div_ceil(2);
        let mut codes = vec![0i8; rows.len() * pairs * 64];
        let mut lanes = vec![0f32; rows.len() * pairs * 32];
        for (i, a) in rows.iter().enumerate() {
            let c = &mut codes[i * pairs * 64..(i + 1) * pairs * 64];
            c[..blocks * 32].copy_from_slice(&a.q[..blocks * 32]);
            if format == QuantFormat::Q8_0 {
                for v in c.iter_mut() {
                    *v = (*v as u8 ^ 0x80) as i8;
                }
            }
            let l = &mut lanes[i * pairs * 32..(i + 1) * pairs * 32];
            for b in 0..blocks {
                let (p, half) = (b / 2, 8 * (b % 2));
                l[p * 32 + half..p * 32 + half + 8].fill(a.scale[b]);
                l[p * 32 + 16 + half..p * 32 + 16 + half + 8].fill(a.scaled_sum[b] / 8.0);
            }
        }
        TileActs {
            pairs,
            codes,
            lanes,
        }
    }

    fn row(&self, i: usize) -> (*const i8, *const f32) {
        (
            self.codes[i * self.pairs * 64..].as_ptr(),
            self.lanes[i * self.pairs * 32..].as_ptr(),
        )
    }
}

/// `out[i][r] = w[r] · a[first + i]` for four weight rows (their bytes, all of one format)
/// and `MA` activation rows of `acts`.
///
/// # Safety
/// The CPU must pass [`available`]; the weight rows must hold whole blocks of `format`, as many
/// as `acts` was built for, and `first + MA` must not pass its rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma,avx2")]
pub(crate) unsafe fn tile<const MA: usize>(
    format: QuantFormat,
    w: [&[u8]; TILE_ROWS],
    acts: &TileActs,
    first: usize,
) -> [[f32; TILE_ROWS]; MA] {
    let a: [(*const i8, *const f32); MA] = std::array::from_fn(|i| acts.row(first + i));
    match format {
        QuantFormat::Q4_0 => tile_format::<0, MA>(w, a),
        QuantFormat::Q4_1 => tile_format::<1, MA>(w, a),
        QuantFormat::Q8_0 => tile_format::<2, MA>(w, a),
        _ => unreachable!("the tile kernel reads the 32-value formats only"),
    }
}

/// Lane index vector taking lane `lo` into lanes 0–7 and lane `hi` into lanes 8–15.
#[inline(always)]
unsafe fn spread(lo: i32, hi: i32) -> __m512i {
    _mm512_setr_epi32(
        lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi,
    )
}

/// The 32-bit word at `p` and the one at `p + stride`, as the low two f16 pairs of a vector
/// converted to four f32: `[p.0, p.1, (p+stride).0, (p+stride).1]`.
#[inline(always)]
unsafe fn two_half_pairs(p: *const u8, stride: usize, second: bool) -> __m128 {
    let lo = (p as *const i32).read_unaligned();
    let hi = if second {
        (p.add(stride) as *const i32).read_unaligned()
    } else {
        0
    };
    _mm_cvtph_ps(_mm_setr_epi32(lo, hi, 0, 0))
}

/// `F`: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0. `a[i]`: row `i`'s codes and lanes in a [`TileActs`].
#[inline(always)]
unsafe fn tile_format<const F: u8, const MA: usize>(
    w: [&[u8]; TILE_ROWS],
    a: [(*const i8, *const f32); MA],
) -> [[f32; TILE_ROWS]; MA] {
    let bb: usize = match F {
        0 => 18,
        1 => 20,
        _ => 34,
    };
    let nb = w[0].len() / bb;
    debug_assert!(w.iter().all(|r| r.len() == nb * bb));
    let low4 = _mm512_set1_epi8(0x0F);
    let nibble_shift = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
    let ones_u8 = _mm512_set1_epi8(1);
    let scale_idx = spread(0, 2);
    let min_idx = spread(1, 3);
    let mut acc = [[_mm512_setzero_ps(); TILE_ROWS]; MA];
    let wp = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
    let mut b = 0;
    while b < nb {
        let pair = b + 1 < nb;
        let p = b / 2;
        for r in 0..TILE_ROWS {
            let blk = wp[r].add(b * bb);
            // The row's two blocks: scale (and Q4_1 minimum) spread per block, codes as bytes.
            let dm = _mm512_castps128_ps512(two_half_pairs(blk, bb, pair));
            let d = _mm512_permutexvar_ps(scale_idx, dm);
            let codes = if F == 2 {
                let lo = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                let hi = if pair {
                    _mm256_loadu_si256(blk.add(bb + 2) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
            } else {
                // 16 code bytes per block, each in two 128-bit lanes, the upper shifted by
                // four: low nibbles (values 0–15) then high nibbles (16–31).
                let at = if F == 1 { 4 } else { 2 };
                let lo =
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.add(at) as *const __m128i));
                let hi = if pair {
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.add(bb + at) as *const __m128i))
                } else {
                    _mm256_setzero_si256()
                };
                let raw = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                _mm512_and_si512(_mm512_srlv_epi64(raw, nibble_shift), low4)
            };
            match F {
                2 => {
                    // Start at −128·Σcode: the products of x + 128 then sum to Σ(code·x).
                    let csum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones_u8, codes);
                    let start =
                        _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(csum, 7));
                    for i in 0..MA {
                        let x = _mm512_loadu_si512(a[i].0.add(p * 64) as *const __m512i);
                        let xs = _mm512_loadu_ps(a[i].1.add(p * 32));
                        let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, x, codes));
                        acc[i][r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(d, xs), acc[i][r]);
                    }
                }
                _ => {
                    let m = if F == 1 {
                        _mm512_permutexvar_ps(min_idx, dm)
                    } else {
                        _mm512_mul_ps(d, _mm512_set1_ps(-8.0))
                    };
                    for i in 0..MA {
                        let x = _mm512_loadu_si512(a[i].0.add(p * 64) as *const __m512i);
                        let xs = _mm512_loadu_ps(a[i].1.add(p * 32));
                        let xsum = _mm512_loadu_ps(a[i].1.add(p * 32 + 16));
                        let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(
                            _mm512_setzero_si512(),
                            codes,
                            x,
                        ));
                        let t = _mm512_fmadd_ps(dot, _mm512_mul_ps(d, xs), acc[i][r]);
                        acc[i][r] = _mm512_fmadd_ps(m, xsum, t);
                    }
                }
            }
        }
        b += 2;
    }
    let mut out = [[0f32; TILE_ROWS]; MA];
    for i in 0..MA {
        for r in 0..TILE_ROWS {
            out[i][r] = _mm512_reduce_add_ps(acc[i][r]);
        }
    }
    out
}
