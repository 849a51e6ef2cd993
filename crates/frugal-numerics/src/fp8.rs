//! Bit-exact FP8 E4M3 (OCP "E4M3FN") fake quantisation, the CPU reference for FPSAttention
//! (docs/methods/fps.md).
//!
//! Format: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; the only NaN
//! codes are `S.1111.111` (0x7F / 0xFF); largest finite magnitude 448 (`0.1111.110`),
//! smallest subnormal 2⁻⁹. Encoding rounds to nearest, ties to even, and **saturates**: any
//! finite value (or infinity) beyond ±448 becomes ±448 — the behaviour of CUDA's
//! `cvt.rn.satfinite.e4m3x2.f32`, which the GPU kernels use, so GPU and CPU quantised values
//! agree bit for bit. NaN stays NaN.
//!
//! Scale helpers follow the convention `scale = amax / 448` (so the largest element maps
//! to ±448); an all-zero group gets scale 1 (our choice: any positive scale is exact there).

/// Largest finite E4M3 magnitude.
pub const E4M3_MAX: f32 = 448.0;

/// Encode an f32 to an E4M3 byte: round to nearest even, saturating to ±448, NaN → 0x7F|sign.
pub fn e4m3_encode(x: f32) -> u8 {
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | 0x7F;
    }
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7E;
    }
    // Subnormal range (below 2^-6): uniform steps of 2^-9; code = round(a / 2^-9), and the
    // rounding may carry into code 8 = 2^-6, the smallest normal, which is the right code.
    if a < 2f32.powi(-6) {
        let m = (a * 512.0).round_ties_even() as u8; // a * 2^9 is exact
        return sign | m;
    }
    // Normal: a = 2^e * (1 + f), f in [0, 1); the f32 exponent field gives e exactly.
    let e = ((a.to_bits() >> 23) & 0xFF) as i32 - 127;
    let frac = a / 2f32.powi(e) - 1.0; // exact (power-of-two scaling)
    let mut m = (frac * 8.0).round_ties_even() as i32; // exact scaling, then RNE
    let mut e = e;
    if m == 8 {
        m = 0;
        e += 1;
    }
    let code = ((e + 7) << 3) | m;
    if code > 0x7E {
        return sign | 0x7E; // saturate (rounding up past 448 cannot reach NaN)
    }
    sign | code as u8
}

/// Decode an E4M3 byte to f32 (exact).
pub fn e4m3_decode(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((b >> 3) & 0x0F) as i32;
    let m = (b & 0x07) as f32;
    if e == 15 && (b & 0x07) == 7 {
        return f32::NAN;
    }
    if e == 0 {
        sign * m * 2f32.powi(-9)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

/// Round an f32 to the nearest E4M3 value (saturating), returned as f32: the same value as
/// `e4m3_decode(e4m3_encode(x))` (tested over every code, every tie and a sweep of f32 bit
/// patterns), computed on the f32 bits because the CPU emulation of FP8 attention rounds every
/// probability: normal range by round-to-nearest-even of the mantissa to 3 bits, subnormal range
/// (below 2⁻⁶) by rounding to a multiple of 2⁻⁹.
#[inline]
pub fn e4m3_round(x: f32) -> f32 {
    let a = x.abs();
    if a.is_nan() {
        return f32::NAN;
    }
    let r = if a >= E4M3_MAX {
        E4M3_MAX
    } else if a < 2f32.powi(-6) {
        (a * 512.0).round_ties_even() / 512.0 // both scalings exact
    } else {
        let bits = a.to_bits();
        let lsb = (bits >> 20) & 1;
        let rounded = f32::from_bits((bits + 0x7FFFF + lsb) & !0xFFFFF);
        rounded.min(E4M3_MAX) // 464 would round up past the largest code; saturate
    };
    r.copysign(x)
}

/// Scale for a group whose largest magnitude is `amax`: `amax / 448`, or 1 for an all-zero group.
#[inline]
pub fn scale_for_amax(amax: f32) -> f32 {
    if amax > 0.0 && amax.is_finite() {
        amax / E4M3_MAX
    } else {
        1.0
    }
}

/// Largest magnitude of a slice.
pub fn amax(xs: &[f32]) -> f32 {
    xs.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Fake-quantise `x` with `scale`: `decode(encode(x / scale)) * scale`. The division (not a
/// multiplication by a reciprocal) matches the GPU quantisation kernel bit for bit.
#[inline]
pub fn fake_quant(x: f32, scale: f32) -> f32 {
    e4m3_round(x / scale) * scale
}

/// Per-tile quantisation of a row-major `[n, d]` matrix: rows are cut into tiles of `tile_rows`
/// consecutive rows (the last may be shorter), each with its own scale. Returns the *unscaled*
/// E4M3 values (as f32, i.e. `decode(encode(x / s))`) and the per-tile scales, so a caller can
/// reproduce the GPU's `(Q̂·K̂ᵀ)·s_q·s_k` ordering exactly.
pub fn quantize_row_tiles(x: &[f32], d: usize, tile_rows: usize) -> (Vec<f32>, Vec<f32>) {
    assert!(d > 0 && tile_rows > 0 && x.len().is_multiple_of(d));
    let n = x.len() / d;
    let n_tiles = n.div_ceil(tile_rows);
    let mut q = vec![0f32; x.len()];
    let mut scales = Vec::with_capacity(n_tiles);
    for t in 0..n_tiles {
        let r0 = t * tile_rows;
        let r1 = (r0 + tile_rows).min(n);
        let s = scale_for_amax(amax(&x[r0 * d..r1 * d]));
        for i in r0 * d..r1 * d {
            q[i] = e4m3_round(x[i] / s);
        }
        scales.push(s);
    }
    (q, scales)
}

/// Per-channel quantisation of a row-major `[n, d]` matrix: one scale per column over all rows.
/// Returns the unscaled E4M3 values and the `d` scales.
pub fn quantize_channels(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    assert!(d > 0 && x.len().is_multiple_of(d));
    let mut am = vec![0f32; d];
    for row in x.chunks_exact(d) {
        for (m, v) in am.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let scales: Vec<f32> = am.iter().map(|&a| scale_for_amax(a)).collect();
    let q = x
        .iter()
        .enumerate()
        .map(|(i, &v)| e4m3_round(v / scales[i % d]))
        .collect();
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent decode: build the f32 bit pattern directly (normals) or by integer scaling
    /// (subnormals), without sharing code with `e4m3_decode`.
    fn decode_bits(b: u8) -> f32 {
        let s = (b >> 7) as u32;
        let e = ((b >> 3) & 15) as u32;
        let m = (b & 7) as u32;
        if e == 15 && m == 7 {
            return f32::NAN;
        }
        let mag = if e == 0 {
            m as f32 / 512.0
        } else {
            f32::from_bits(((e + 120) << 23) | (m << 20))
        };
        if s == 1 {
            -mag
        } else {
            mag
        }
    }

    /// All 256 bit patterns decode to the independently computed value.
    #[test]
    fn decode_matches_independent_decode_all_256() {
        for b in 0..=255u8 {
            let (a, r) = (e4m3_decode(b), decode_bits(b));
            if r.is_nan() {
                assert!(a.is_nan(), "{b:#04x}");
                assert!(b & 0x7F == 0x7F);
            } else {
                assert_eq!(a.to_bits(), r.to_bits(), "{b:#04x}: {a} vs {r}");
            }
        }
        assert_eq!(e4m3_decode(0x7E), 448.0);
        assert_eq!(e4m3_decode(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_decode(0x08), 2f32.powi(-6));
    }

    /// Every finite code round-trips, and every midpoint between neighbours rounds to the code
    /// with an even mantissa, points just off the midpoint round to the nearer neighbour.
    #[test]
    fn encode_roundtrip_and_ties_to_even_all_codes() {
        for b in 0..=255u8 {
            let v = decode_bits(b);
            if v.is_nan() {
                continue;
            }
            let expect = if b == 0x80 { 0x80 } else { b }; // -0 keeps its sign
            assert_eq!(e4m3_encode(v), expect, "round trip {b:#04x}");
        }
        for lo in 0..0x7Eu8 {
            let hi = lo + 1;
            let (a, b) = (decode_bits(lo) as f64, decode_bits(hi) as f64);
            let mid = ((a + b) / 2.0) as f32;
            assert_eq!(mid as f64, (a + b) / 2.0, "midpoint exact in f32");
            let even = if lo & 1 == 0 { lo } else { hi };
            assert_eq!(e4m3_encode(mid), even, "tie {lo:#04x}/{hi:#04x}");
            assert_eq!(e4m3_encode(-mid), 0x80 | even);
            let below = f32::from_bits(mid.to_bits() - 1);
            let above = f32::from_bits(mid.to_bits() + 1);
            assert_eq!(e4m3_encode(below), lo, "below mid {lo:#04x}");
            assert_eq!(e4m3_encode(above), hi, "above mid {lo:#04x}");
        }
    }

    /// The bit-level rounding equals encoding then decoding, over a sweep of f32 bit patterns
    /// (every 251st, both signs, covering subnormal, normal, saturating and NaN inputs).
    #[test]
    fn fast_round_equals_encode_decode() {
        for bits in (0..u32::MAX).step_by(251) {
            let x = f32::from_bits(bits);
            let (fast, slow) = (e4m3_round(x), e4m3_decode(e4m3_encode(x)));
            assert!(
                fast.to_bits() == slow.to_bits() || (fast.is_nan() && slow.is_nan()),
                "{x:e}: {fast} vs {slow}"
            );
        }
    }

    #[test]
    fn saturates_and_keeps_nan() {
        for x in [448.0f32, 449.0, 464.0, 480.0, 1e6, f32::MAX, f32::INFINITY] {
            assert_eq!(e4m3_encode(x), 0x7E, "{x}");
            assert_eq!(e4m3_encode(-x), 0xFE, "{x}");
        }
        assert!(e4m3_round(f32::NAN).is_nan());
        assert_eq!(e4m3_encode(2f32.powi(-11)), 0); // below half the smallest subnormal
        assert_eq!(e4m3_encode(2f32.powi(-10)), 0); // tie between 0 and 2^-9 → even (0)
        assert_eq!(e4m3_encode(1.5 * 2f32.powi(-9)), 2); // tie between codes 1 and 2 → 2
    }

    /// Brute force: for many f32 values the encoder returns the nearest finite code (ties to
    /// even), found by a linear search over the decoded table.
    #[test]
    fn encode_is_nearest_by_search() {
        let table: Vec<(u8, f64)> = (0..=0x7Eu8).map(|b| (b, decode_bits(b) as f64)).collect();
        let mut s = 0x9E3779B97F4A7C15u64;
        for i in 0..200_000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // log-uniform magnitudes from 2^-12 to 2^10, random sign
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            let x = (2f64.powf(-12.0 + 22.0 * u) as f32) * if i % 2 == 0 { 1.0 } else { -1.0 };
            let a = x.abs() as f64;
            let mut best = table[0];
            for &(b, v) in &table {
                let (db, dv) = ((best.1 - a).abs(), (v - a).abs());
                if dv < db || (dv == db && b & 1 == 0 && best.0 & 1 == 1) {
                    best = (b, v);
                }
            }
            let expect = if a >= 448.0 { 0x7E } else { best.0 };
            assert_eq!(e4m3_encode(x) & 0x7F, expect, "x = {x}");
        }
    }

    #[test]
    fn tile_and_channel_scales() {
        let d = 4;
        let x: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) * 0.37).collect();
        let (q, s) = quantize_row_tiles(&x, d, 4);
        assert_eq!(s.len(), 2); // 6 rows, tiles of 4 → 2 tiles (last has 2 rows)
        assert_eq!(s[0], amax(&x[..16]) / 448.0);
        assert!(q.iter().all(|v| v.abs() <= 448.0));
        assert_eq!(amax(&q[..16]), 448.0); // the largest element maps to ±448 exactly
        let (qc, sc) = quantize_channels(&x, d);
        assert_eq!(sc.len(), d);
        for c in 0..d {
            let m = (0..6).map(|r| qc[r * d + c].abs()).fold(0f32, f32::max);
            assert_eq!(m, 448.0);
        }
        let (qz, sz) = quantize_row_tiles(&[0.0; 8], 4, 1);
        assert_eq!(sz, vec![1.0, 1.0]);
        assert!(qz.iter().all(|&v| v == 0.0));
        // relative error of fake quantisation is at most 2^-4 for values in the normal range
        for &v in &x {
            let s = 1.0 / 64.0;
            let fq = fake_quant(v, s);
            if v.abs() / s >= 2f32.powi(-6) {
                assert!(((fq - v) / v).abs() <= 1.0 / 16.0 + 1e-7, "{v} {fq}");
            }
        }
    }
}
