//! SLERP of unit directions, angular distance and magnitude/direction splitting: the numerics of
//! MiniCache's cross-layer merge (docs/methods/minicache.md).
//!
//! A vector `x` is split into a magnitude `m = ‖x‖` and a unit direction `x / m`. Two directions
//! at angle `Ω` are interpolated on the great circle:
//! `e = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b`.
//! Edge cases: for `Ω` below [`SMALL_ANGLE`] SLERP's weights lose precision, so the
//! normalised linear interpolation (its limit) is used; for `Ω` within [`ANTIPODAL_MARGIN`] of
//! `π`, and for a zero-norm input, the merge is undefined and [`merge_pair`] reports it, so the
//! caller keeps the originals (token retention).

/// Below this angle (radians) SLERP is replaced by its limit, normalised linear interpolation.
pub const SMALL_ANGLE: f64 = 1e-4;
/// Angles within this margin of `π` count as antipodal: no unique great circle, merge refused.
pub const ANTIPODAL_MARGIN: f64 = 1e-3;
/// Norms at or below this are treated as zero (no direction).
pub const ZERO_NORM: f64 = 1e-30;

/// Euclidean norm, accumulated in f64.
pub fn norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

/// Angle between two non-zero vectors in `[0, π]`, computed in f64 with the cosine clamped to
/// `[-1, 1]`. Returns `None` if either vector has zero norm.
pub fn angle(a: &[f32], b: &[f32]) -> Option<f64> {
    let (na, nb) = (norm(a), norm(b));
    if na <= ZERO_NORM || nb <= ZERO_NORM {
        return None;
    }
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    Some((dot / (na * nb)).clamp(-1.0, 1.0).acos())
}

/// Cosine similarity (0 if either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (na, nb) = (norm(a), norm(b));
    if na <= ZERO_NORM || nb <= ZERO_NORM {
        return 0.0;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum::<f64>()
        / (na * nb)
}

/// The outcome of merging one pair of vectors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Merge {
    /// ‖a‖ and ‖b‖.
    pub mag_a: f32,
    pub mag_b: f32,
    /// Angle between a and b (radians); `π` when undefined (a zero norm), so such a pair has the
    /// largest angular distance.
    pub omega: f64,
    /// False when no merged direction exists (a zero norm, or antipodal inputs): the caller must
    /// keep the originals. `dir` is then left as the direction of whichever input is non-zero
    /// (or zeros).
    pub mergeable: bool,
}

/// SLERP-merges `a` (earlier layer) and `b` (later layer) with interpolation `t` ∈ [0, 1]
/// (`t = 0` gives `a`'s direction, `t = 1` gives `b`'s), writing the unit direction to `dir`.
pub fn merge_pair(a: &[f32], b: &[f32], t: f64, dir: &mut [f32]) -> Merge {
    let (na, nb) = (norm(a), norm(b));
    let mags = (na as f32, nb as f32);
    if na <= ZERO_NORM || nb <= ZERO_NORM {
        let (src, n) = if na > ZERO_NORM { (a, na) } else { (b, nb) };
        for (o, &x) in dir.iter_mut().zip(src) {
            *o = if n > ZERO_NORM {
                (x as f64 / n) as f32
            } else {
                0.0
            };
        }
        return Merge {
            mag_a: mags.0,
            mag_b: mags.1,
            omega: std::f64::consts::PI,
            mergeable: false,
        };
    }
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let omega = (dot / (na * nb)).clamp(-1.0, 1.0).acos();
    let mergeable = omega < std::f64::consts::PI - ANTIPODAL_MARGIN;
    let (wa, wb) = if !mergeable {
        (1.0, 0.0)
    } else if omega < SMALL_ANGLE {
        (1.0 - t, t)
    } else {
        let s = omega.sin();
        (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s)
    };
    let mut tmp: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| wa * x as f64 / na + wb * y as f64 / nb)
        .collect();
    // Analytically unit already; renormalise so rounding never drifts the restored magnitude.
    let n = tmp.iter().map(|v| v * v).sum::<f64>().sqrt();
    if n > ZERO_NORM {
        tmp.iter_mut().for_each(|v| *v /= n);
    }
    for (o, v) in dir.iter_mut().zip(tmp) {
        *o = v as f32;
    }
    Merge {
        mag_a: mags.0,
        mag_b: mags.1,
        omega,
        mergeable,
    }
}

/// Min/max normalised angular distance `(Ω/π − d_min) / (d_max − d_min)`; `None` when the range is
/// degenerate (`d_max − d_min < 1e-12`).
pub fn normalised_distance(omega: f64, d_min: f64, d_max: f64) -> Option<f64> {
    let range = d_max - d_min;
    (range >= 1e-12).then(|| (omega / std::f64::consts::PI - d_min) / range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = norm(v) as f32;
        v.iter().map(|x| x / n).collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn endpoints_and_unit_norm() {
        let a = [3.0f32, 0.0, 4.0, 1.0];
        let b = [-1.0f32, 2.0, 0.5, 2.0];
        let mut d = [0f32; 4];
        let m = merge_pair(&a, &b, 0.0, &mut d);
        assert!(m.mergeable && close(&d, &unit(&a), 1e-6));
        assert!(
            (m.mag_a - norm(&a) as f32).abs() < 1e-6 && (m.mag_b - norm(&b) as f32).abs() < 1e-6
        );
        merge_pair(&a, &b, 1.0, &mut d);
        assert!(close(&d, &unit(&b), 1e-6));
        for t in [0.3, 0.5, 0.6, 0.7] {
            let m = merge_pair(&a, &b, t, &mut d);
            assert!(
                (norm(&d) - 1.0).abs() < 1e-6,
                "SLERP stays on the unit sphere"
            );
            // The merged direction sits at angle tΩ from a and (1−t)Ω from b.
            assert!((angle(&d, &a).unwrap() - t * m.omega).abs() < 1e-5);
            assert!((angle(&d, &b).unwrap() - (1.0 - t) * m.omega).abs() < 1e-5);
        }
    }

    #[test]
    fn restoration_is_exact_for_parallel_vectors() {
        // Same direction, different magnitudes: m·e restores each exactly (Ω = 0 path).
        let a = [1.0f32, -2.0, 0.5];
        let b: Vec<f32> = a.iter().map(|x| x * 7.0).collect();
        let mut d = [0f32; 3];
        let m = merge_pair(&a, &b, 0.6, &mut d);
        assert!(m.mergeable && m.omega < SMALL_ANGLE);
        let ra: Vec<f32> = d.iter().map(|x| x * m.mag_a).collect();
        let rb: Vec<f32> = d.iter().map(|x| x * m.mag_b).collect();
        assert!(close(&ra, &a, 1e-6) && close(&rb, &b, 1e-5));
    }

    #[test]
    fn tiny_angle_uses_nlerp_without_nan() {
        let a = [1.0f32, 0.0, 0.0];
        let b = [1.0f32, 1e-6, 0.0];
        let mut d = [0f32; 3];
        let m = merge_pair(&a, &b, 0.5, &mut d);
        assert!(m.mergeable && m.omega < SMALL_ANGLE);
        assert!(d.iter().all(|x| x.is_finite()) && (norm(&d) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn antipodal_and_zero_norm_are_not_mergeable() {
        let a = [1.0f32, 2.0, -1.0];
        let b: Vec<f32> = a.iter().map(|x| -x).collect();
        let mut d = [0f32; 3];
        let m = merge_pair(&a, &b, 0.6, &mut d);
        assert!(!m.mergeable && (m.omega - PI).abs() < 1e-6);
        assert!(d.iter().all(|x| x.is_finite()));
        let z = [0f32; 3];
        let m = merge_pair(&z, &a, 0.6, &mut d);
        assert!(!m.mergeable && m.mag_a == 0.0 && m.omega == PI);
        assert!(close(&d, &unit(&a), 1e-6));
        let m = merge_pair(&z, &z, 0.6, &mut d);
        assert!(!m.mergeable && d.iter().all(|&x| x == 0.0));
        assert_eq!(angle(&z, &a), None);
        assert_eq!(cosine(&z, &a), 0.0);
    }

    #[test]
    fn normalised_distance_range() {
        assert_eq!(normalised_distance(PI / 2.0, 0.5, 0.5), None);
        assert!((normalised_distance(PI * 0.3, 0.1, 0.5).unwrap() - 0.5).abs() < 1e-12);
    }
}
