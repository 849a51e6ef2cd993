//! KIVI-style asymmetric uniform quantisation (Liu et al., 2024, "KIVI: a tuning-free asymmetric
//! 2bit quantization for KV cache"): a group of floats is stored as `bits`-bit codes with one
//! scale and one minimum, `x ≈ min + scale · code`. KIVI groups keys per channel (over a block of
//! tokens) and values per token (over a block of channels); that layout lives with the callers
//! (`frugal-methods::kivi`), this file only quantises and packs.
//!
//! Our choices (labelled): scale and minimum are stored as f16 (the paper keeps them in the
//! model's fp16); codes are packed little-end-first, `8 / bits` codes per byte, and `bits` must
//! divide 8 (1, 2, 4 or 8).

use half::f16;

/// Whether `bits` is a supported code width.
pub fn supported_bits(bits: u32) -> bool {
    matches!(bits, 1 | 2 | 4 | 8)
}

/// Bytes needed for `n` packed codes of `bits` bits.
pub fn packed_len(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Scale and minimum of one group, as stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    pub scale: f16,
    pub min: f16,
}

/// Chooses the parameters for values in `[lo, hi]`: min rounded to f16, scale rounded up so the
/// largest value still fits the top code.
pub fn group_params(lo: f32, hi: f32, bits: u32) -> GroupParams {
    let levels = ((1u32 << bits) - 1) as f32;
    let min = f16::from_f32(lo);
    // Rounding min to f16 may raise it above lo; then the top must cover hi - min from that min.
    let min_f = min.to_f32().min(lo);
    let min = f16::from_f32(min_f);
    let mut scale = f16::from_f32((hi - min.to_f32()).max(0.0) / levels);
    if scale.to_f32() * levels + min.to_f32() < hi {
        scale = f16::from_bits(scale.to_bits() + 1); // one ulp up
    }
    GroupParams { scale, min }
}

/// Quantises `x[i * stride]` for `i in 0..n` with `p`, writing code `i` at slot `slot0 + i *
/// slot_stride` of the packed buffer `codes` (which must be zeroed there).
// A strided source and a strided destination in one hot loop: the eight arguments are those two
// walks and the code; bundling them into structs would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn quantize_strided(
    x: &[f32],
    stride: usize,
    n: usize,
    p: GroupParams,
    bits: u32,
    codes: &mut [u8],
    slot0: usize,
    slot_stride: usize,
) {
    let levels = ((1u32 << bits) - 1) as f32;
    let (s, m) = (p.scale.to_f32(), p.min.to_f32());
    let per = 8 / bits as usize;
    for i in 0..n {
        let v = x[i * stride];
        let q = if s > 0.0 {
            ((v - m) / s).round().clamp(0.0, levels) as u8
        } else {
            0
        };
        let slot = slot0 + i * slot_stride;
        codes[slot / per] |= q << ((slot % per) * bits as usize);
    }
}

/// The code at `slot`.
#[inline]
pub fn code_at(codes: &[u8], slot: usize, bits: u32) -> u8 {
    let per = 8 / bits as usize;
    (codes[slot / per] >> ((slot % per) * bits as usize)) & (((1u16 << bits) - 1) as u8)
}

/// Min and max of a strided group.
pub fn range_strided(x: &[f32], stride: usize, n: usize) -> (f32, f32) {
    (0..n)
        .map(|i| x[i * stride])
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        for bits in [2u32, 4, 8] {
            let x: Vec<f32> = (0..32)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.37)
                .collect();
            let (lo, hi) = range_strided(&x, 1, 32);
            let p = group_params(lo, hi, bits);
            let mut codes = vec![0u8; packed_len(32, bits)];
            quantize_strided(&x, 1, 32, p, bits, &mut codes, 0, 1);
            let step = p.scale.to_f32();
            for (i, &v) in x.iter().enumerate() {
                let back = p.min.to_f32() + step * code_at(&codes, i, bits) as f32;
                assert!(
                    (back - v).abs() <= 0.5 * step + 1e-3 * v.abs().max(1.0),
                    "bits={bits} i={i}: {v} -> {back}"
                );
            }
            assert_eq!(codes.len(), 32 * bits as usize / 8);
        }
    }

    #[test]
    fn constant_group_is_exact_and_extremes_hit_end_codes() {
        let x = [1.5f32; 8];
        let p = group_params(1.5, 1.5, 2);
        let mut codes = vec![0u8; packed_len(8, 2)];
        quantize_strided(&x, 1, 8, p, 2, &mut codes, 0, 1);
        assert!(
            (0..8).all(|i| p.min.to_f32() + p.scale.to_f32() * code_at(&codes, i, 2) as f32 == 1.5)
        );
        let y = [-2.0f32, 3.0];
        let p = group_params(-2.0, 3.0, 4);
        let mut codes = vec![0u8; 1];
        quantize_strided(&y, 1, 2, p, 4, &mut codes, 0, 1);
        assert_eq!((code_at(&codes, 0, 4), code_at(&codes, 1, 4)), (0, 15));
        assert!(supported_bits(4) && !supported_bits(3));
    }
}
