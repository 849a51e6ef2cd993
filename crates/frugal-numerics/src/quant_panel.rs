//! Quantised weights × activation rows on AVX-512 VNNI with sixteen weight rows across the
//! lanes of one register: lane `r` of every accumulator is weight row `r` of a panel, so one
//! register of results is a panel's sixteen outputs for one activation row, and the per-block
//! work (converting the block's integer dot products to f32 and applying the two scales and
//! the offset) is done once per sixteen (weight row, activation row) pairs.
//!
//! Per 32-value block, the panel's sixteen rows are loaded and transposed once (4×4 blocks of
//! 32-bit words, so that register `j` holds every row's bytes `4j..4j+4`), their scales are
//! gathered into one register, and then each activation row meets the panel with eight byte
//! products (`vpdpbusd`, one per four values, the activation's four bytes broadcast to every
//! lane), one conversion and two fused multiply-adds. A tile of four weight rows × four
//! activation rows with two blocks per register (this crate's kernel before this one) spends a
//! conversion, a multiply and one or two fused multiply-adds per (block pair, weight row,
//! activation row) and a horizontal sum per pair at the end; here none of those is per pair.
//! Against it on SmolLM2-135M's shapes (2 threads): 1.2–3× per product, single-stream decode
//! about 1.5× (it also prefetches the next panel: sixteen rows read a block at a time are more
//! streams than the hardware prefetcher follows).
//!
//! Offsets, per format, with `x` the activation codes of a block, `s` its scale and `s·Σx`
//! its scaled sum:
//! * Q4_1: `d·s·Σ(code·x) + m·(s·Σx)`: the minimum `m` meets the scaled sum;
//! * Q4_0: `d·s·Σ(code·x) − 8·d·(s·Σx)`;
//! * Q8_0: signed codes, so the product runs on `code + 128` (unsigned, as `vpdpbusd` needs its
//!   first operand) against the activation codes, from a start of `−128·Σx` (per activation
//!   block, once per product), which leaves exactly `Σ(code·x)`.
//!
//! The sums are those of the row kernels of [`crate::quant_matvec`], in another order: results
//! agree with them to f32 rounding. A row's result does not depend on the other activation
//! rows of the call (each activation row's accumulator sees only its own products, in the same
//! order), so a sequence decodes the same alone and in a batch.

use crate::quant_matvec::{ActRow, QuantFormat};
use std::arch::x86_64::*;

/// Weight rows per panel: the sixteen f32 lanes of a 512-bit register.
pub(crate) const PANEL_ROWS: usize = 16;

/// Activation rows per kernel call: one accumulator register each, beside the eight
/// registers of a block's transposed weight bytes.
pub(crate) const PANEL_ACTS: usize = 8;

/// Whether this CPU runs the panel kernel (AVX-512 F/BW/VL with VNNI, and F16C for the block
/// scales).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("fma")
}

/// The activation rows as the kernel reads them; for Q8_0 weights also each block's code sum
/// times −128 (see [`panel_format`]), once per product.
pub(crate) struct PanelActs<'a> {
    rows: Vec<ActRow<'a>>,
    q8_start: Option<Vec<i32>>,
    blocks: usize,
}

impl<'a> PanelActs<'a> {
    pub(crate) fn new(format: QuantFormat, rows: &[ActRow<'a>], cols: usize) -> Self {
        let blocks = cols / 32;
        let q8_start = (format == QuantFormat::Q8_0).then(|| {
            rows.iter()
                .flat_map(|a| {
                    a.q[..blocks * 32]
                        .chunks_exact(32)
                        .map(|c| -128 * c.iter().map(|&v| v as i32).sum::<i32>())
                })
                .collect()
        });
        PanelActs {
            rows: rows.to_vec(),
            q8_start,
            blocks,
        }
    }
}

/// `out[i·out_stride + r] = w[r] · acts[first_act + i]` for the sixteen weight rows of a panel
/// (`(rows, row_bytes, blocks)`: row `r` at `rows + r·row_bytes`, each holding `blocks` whole
/// blocks of `format`) and `MA` activation rows.
///
/// # Safety
/// The CPU must pass [`available`]; `rows` must point at sixteen rows of `row_bytes` bytes
/// each, `row_bytes` must be `blocks` blocks of `format` (at most `i32::MAX / 16` bytes),
/// `first_act + MA` must not pass the rows of `acts`, which were built for `format` and
/// `blocks · 32` columns, and `out` must be valid for writes of sixteen f32 at each
/// `i·out_stride`, `i < MA`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma,avx2")]
pub(crate) unsafe fn panel<const MA: usize>(
    format: QuantFormat,
    (rows, row_bytes, blocks): (*const u8, usize, usize),
    acts: &PanelActs<'_>,
    first_act: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let a: [ActPointers; MA] = std::array::from_fn(|i| {
        let r = &acts.rows[first_act + i];
        ActPointers {
            codes: r.q.as_ptr(),
            scale: r.scale.as_ptr(),
            scaled_sum: r.scaled_sum.as_ptr(),
            q8_start: acts.q8_start.as_ref().map_or(std::ptr::null(), |s| {
                s[(first_act + i) * acts.blocks..].as_ptr()
            }),
        }
    });
    let acc = match format {
        QuantFormat::Q4_0 => panel_format::<0, MA>(rows, row_bytes, blocks, a),
        QuantFormat::Q4_1 => panel_format::<1, MA>(rows, row_bytes, blocks, a),
        QuantFormat::Q8_0 => panel_format::<2, MA>(rows, row_bytes, blocks, a),
        _ => unreachable!("the panel kernel reads the 32-value formats only"),
    };
    for (i, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * out_stride), *a);
    }
}

/// Sixteen rows' 16 bytes at `p + r·stride` (row `r`), transposed: register `j` holds every
/// row's bytes `4j..4j+4`, row `r` in lane `r`.
#[inline(always)]
unsafe fn transposed_words(p: *const u8, stride: usize) -> [__m512i; 4] {
    // Register g holds rows g, 4+g, 8+g, 12+g in its four 128-bit lanes; the 4×4 transposes
    // of 32-bit words inside each lane then put row 4k+g in lane 4k+g.
    let z: [__m512i; 4] = std::array::from_fn(|g| {
        let row = |k: usize| _mm_loadu_si128(p.add((4 * k + g) * stride) as *const __m128i);
        let z = _mm512_castsi128_si512(row(0));
        let z = _mm512_inserti32x4(z, row(1), 1);
        let z = _mm512_inserti32x4(z, row(2), 2);
        _mm512_inserti32x4(z, row(3), 3)
    });
    let t0 = _mm512_unpacklo_epi32(z[0], z[1]);
    let t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    let t2 = _mm512_unpacklo_epi32(z[2], z[3]);
    let t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    [
        _mm512_unpacklo_epi64(t0, t2),
        _mm512_unpackhi_epi64(t0, t2),
        _mm512_unpacklo_epi64(t1, t3),
        _mm512_unpackhi_epi64(t1, t3),
    ]
}

/// One activation row's per-block data.
#[derive(Clone, Copy)]
struct ActPointers {
    codes: *const i8,
    scale: *const f32,
    scaled_sum: *const f32,
    /// Q8_0 only: per block, −128 · Σcode.
    q8_start: *const i32,
}

/// `F`: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0.
#[inline(always)]
unsafe fn panel_format<const F: u8, const MA: usize>(
    rows: *const u8,
    row_bytes: usize,
    blocks: usize,
    a: [ActPointers; MA],
) -> [__m512; MA] {
    let bb: usize = match F {
        0 => 18,
        1 => 20,
        _ => 34,
    };
    let code_at: usize = match F {
        1 => 4,
        _ => 2,
    };
    debug_assert_eq!(row_bytes, blocks * bb);
    let low4 = _mm512_set1_epi8(0x0F);
    let sign = _mm512_set1_epi8(-128);
    let row_offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes as i32),
    );
    // With few activation rows the eight byte products of a block would form one long
    // dependent chain: split them into two.
    let two_chains = MA < 4;
    let mut acc = [_mm512_setzero_ps(); MA];
    // The panel reads its rows a block at a time, sixteen rows apart: more streams than the
    // hardware prefetcher follows. So each block also prefetches its share of the next
    // panel's bytes (the rows after these sixteen; past a weight's end a prefetch is a no-op).
    let next = rows.add(PANEL_ROWS * row_bytes);
    let lines_per_block = (PANEL_ROWS * row_bytes).div_ceil(64 * blocks);
    for b in 0..blocks {
        let blk = rows.add(b * bb);
        for l in 0..lines_per_block {
            _mm_prefetch::<_MM_HINT_T0>(
                next.wrapping_add((b * lines_per_block + l) * 64) as *const i8
            );
        }
        // Each row's block header (f16 scale, and for Q4_1 the f16 minimum) as one word.
        let head = _mm512_i32gather_epi32::<1>(row_offsets, blk as *const i32);
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
        // The eight registers of four values each: for the 4-bit formats the low nibbles of
        // bytes 4j..4j+4 are values 4j..4j+4 and the high nibbles values 16+4j..16+4j+4.
        let mut w = [_mm512_setzero_si512(); 8];
        let mut value_at = [0usize; 8];
        if F == 2 {
            // Signed codes to unsigned (code + 128, a flip of the top bit): `vpdpbusd` takes
            // its unsigned operand first.
            let lo = transposed_words(blk.add(code_at), row_bytes);
            let hi = transposed_words(blk.add(code_at + 16), row_bytes);
            for j in 0..4 {
                w[j] = _mm512_xor_si512(lo[j], sign);
                w[4 + j] = _mm512_xor_si512(hi[j], sign);
                value_at[j] = 4 * j;
                value_at[4 + j] = 16 + 4 * j;
            }
        } else {
            let words = transposed_words(blk.add(code_at), row_bytes);
            for j in 0..4 {
                w[2 * j] = _mm512_and_si512(words[j], low4);
                w[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi32(words[j], 4), low4);
                value_at[2 * j] = 4 * j;
                value_at[2 * j + 1] = 16 + 4 * j;
            }
        }
        // The offset's weight-side factor: Q4_1's minimum, Q4_0's −8·d (Q8_0 has none).
        let offset = match F {
            1 => _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(head, 16))),
            0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
            _ => _mm512_setzero_ps(),
        };
        for i in 0..MA {
            let x = a[i].codes.add(b * 32);
            let word =
                |j: usize| _mm512_set1_epi32((x.add(value_at[j]) as *const i32).read_unaligned());
            // Q8_0: Σ(code + 128)·x, started at −128·Σx, is exactly Σcode·x.
            let start = if F == 2 {
                _mm512_set1_epi32(*a[i].q8_start.add(b))
            } else {
                _mm512_setzero_si512()
            };
            let dot = if two_chains {
                let mut even = start;
                let mut odd = _mm512_setzero_si512();
                for j in (0..8).step_by(2) {
                    even = _mm512_dpbusd_epi32(even, w[j], word(j));
                    odd = _mm512_dpbusd_epi32(odd, w[j + 1], word(j + 1));
                }
                _mm512_add_epi32(even, odd)
            } else {
                let mut s = start;
                for (j, wj) in w.iter().enumerate() {
                    s = _mm512_dpbusd_epi32(s, *wj, word(j));
                }
                s
            };
            let xs = _mm512_set1_ps(*a[i].scale.add(b));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, xs), acc[i]);
            if F != 2 {
                acc[i] = _mm512_fmadd_ps(offset, _mm512_set1_ps(*a[i].scaled_sum.add(b)), acc[i]);
            }
        }
    }
    acc
}
