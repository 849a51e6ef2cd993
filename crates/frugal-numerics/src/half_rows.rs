//! Decoding f16 rows to f32 in one pass: the KV store holds f16 and attention reads f32, so
//! every attention call decodes the rows it reads. Decoding into a zero-filled vector (what
//! `half`'s slice conversions need) writes every byte twice; this writes it once.

use half::f16;

/// `src` as f32, in a new vector written once (F16C eight values at a time where the CPU has
/// it).
pub fn f16_to_f32_vec(src: &[f16]) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx") {
        let mut out = Vec::with_capacity(src.len());
        // SAFETY: the CPU has F16C and AVX (checked above); `convert_f16c` writes exactly
        // `src.len()` values into the reserved capacity before the length is set.
        unsafe {
            convert_f16c(src, out.as_mut_ptr());
            out.set_len(src.len());
        }
        return out;
    }
    src.iter().map(|h| h.to_f32()).collect()
}

/// Writes `src.len()` f32 values from `dst` on.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn convert_f16c(src: &[f16], dst: *mut f32) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n8 = src.len() / 8 * 8;
    let sp = src.as_ptr() as *const u16;
    for i in (0..n8).step_by(8) {
        let h = _mm_loadu_si128(sp.add(i) as *const __m128i);
        _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
    }
    for (i, h) in src.iter().enumerate().skip(n8) {
        dst.add(i).write(h.to_f32());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_value_exactly_whatever_the_length() {
        for n in [0usize, 1, 7, 8, 9, 64, 1000] {
            // Special values first, so even short inputs hold them.
            let src: Vec<f16> = [f16::INFINITY, f16::MIN_POSITIVE_SUBNORMAL, f16::NEG_ZERO]
                .into_iter()
                .chain((0..n).map(|i| f16::from_f32((i as f32 - 37.5) * 0.731)))
                .take(n)
                .collect();
            let got = f16_to_f32_vec(&src);
            let want: Vec<f32> = src.iter().map(|h| h.to_f32()).collect();
            assert_eq!(got.len(), n);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "length {n}"
            );
        }
    }
}
