//! Text-to-motion metrics on evaluator embeddings: FID, R-precision, MM-Dist, Diversity, and a
//! mean with a 95 % t-interval for a handful of seeds.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::seq::SliceRandom;
use rand::Rng;

fn mean_cov(x: &[Vec<f32>]) -> (DVector<f64>, DMatrix<f64>) {
    let n = x.len();
    let d = x[0].len();
    let mut mu = DVector::<f64>::zeros(d);
    for r in x {
        for k in 0..d {
            mu[k] += r[k] as f64 / n as f64;
        }
    }
    let mut cov = DMatrix::<f64>::zeros(d, d);
    for r in x {
        let v = DVector::from_iterator(d, r.iter().map(|&a| a as f64)) - &mu;
        cov += &v * v.transpose();
    }
    cov /= (n.max(2) - 1) as f64;
    (mu, cov)
}

/// Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding
/// are clipped to zero).
pub fn sqrtm_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let sym = (m + m.transpose()) * 0.5;
    let e = SymmetricEigen::new(sym);
    let s = DMatrix::from_diagonal(&e.eigenvalues.map(|v| v.max(0.0).sqrt()));
    &e.eigenvectors * s * e.eigenvectors.transpose()
}

/// Fréchet distance between Gaussians fitted to two embedding sets:
/// `‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}` (the symmetric form of
/// `tr (Σ₁Σ₂)^{½}`, so only symmetric eigendecompositions are needed).
pub fn fid(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (m1, s1) = mean_cov(a);
    let (m2, s2) = mean_cov(b);
    let r1 = sqrtm_psd(&s1);
    let inner = &r1 * &s2 * &r1;
    let cross = sqrtm_psd(&inner).trace();
    let dm = (&m1 - &m2).norm_squared();
    (dm + s1.trace() + s2.trace() - 2.0 * cross).max(0.0)
}

fn dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// R-precision at 1, 2, 3: for each motion, its own text among itself and 31 others drawn from
/// the other rows, ranked by distance. `motion[i]` pairs with `text[i]`.
pub fn r_precision<R: Rng>(
    motion: &[Vec<f32>],
    text: &[Vec<f32>],
    pool: usize,
    rng: &mut R,
) -> [f64; 3] {
    let n = motion.len();
    let mut hits = [0usize; 3];
    for i in 0..n {
        let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        others.shuffle(rng);
        others.truncate(pool - 1);
        let d_true = dist(&motion[i], &text[i]);
        let rank = others
            .iter()
            .filter(|&&j| dist(&motion[i], &text[j]) < d_true)
            .count();
        for (k, h) in hits.iter_mut().enumerate() {
            if rank <= k {
                *h += 1;
            }
        }
    }
    hits.map(|h| h as f64 / n as f64)
}

/// Mean distance between each motion and its own text.
pub fn mm_dist(motion: &[Vec<f32>], text: &[Vec<f32>]) -> f64 {
    motion
        .iter()
        .zip(text)
        .map(|(m, t)| dist(m, t) as f64)
        .sum::<f64>()
        / motion.len() as f64
}

/// Mean distance between `pairs` random pairs of motions.
pub fn diversity<R: Rng>(motion: &[Vec<f32>], pairs: usize, rng: &mut R) -> f64 {
    let n = motion.len();
    (0..pairs)
        .map(|_| {
            let i = rng.gen_range(0..n);
            let mut j = rng.gen_range(0..n);
            while j == i && n > 1 {
                j = rng.gen_range(0..n);
            }
            dist(&motion[i], &motion[j]) as f64
        })
        .sum::<f64>()
        / pairs as f64
}

/// Mean and 95 % confidence interval (Student t) of a few values.
pub fn mean_ci95(v: &[f64]) -> (f64, [f64; 2]) {
    let n = v.len();
    let m = v.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (m, [m, m]);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    // two-sided 97.5 % quantiles of t with n−1 degrees of freedom
    let t = match n - 1 {
        1 => 12.706,
        2 => 4.303,
        3 => 3.182,
        4 => 2.776,
        5 => 2.571,
        6..=9 => 2.3,
        _ => 2.0,
    };
    let h = t * (var / n as f64).sqrt();
    (m, [m - h, m + h])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn gauss(
        n: usize,
        mean: [f32; 2],
        sd: [f32; 2],
        rng: &mut rand::rngs::StdRng,
    ) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                (0..2)
                    .map(|k| {
                        let u1: f32 = rng.gen_range(1e-7..1.0);
                        let u2: f32 = rng.gen();
                        mean[k]
                            + sd[k] * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn fid_matches_the_closed_form_for_diagonal_gaussians() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let a = gauss(20000, [0.0, 0.0], [1.0, 2.0], &mut rng);
        let b = gauss(20000, [1.0, 0.0], [2.0, 1.0], &mut rng);
        // ‖Δμ‖² + Σ (σ1 − σ2)² = 1 + 1 + 1 = 3
        let f = fid(&a, &b);
        assert!((f - 3.0).abs() < 0.15, "fid {f}");
        assert!(fid(&a, &a) < 1e-6);
    }

    #[test]
    fn retrieval_metrics_reward_matched_pairs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let m: Vec<Vec<f32>> = (0..64).map(|i| vec![i as f32, 0.0]).collect();
        let r = r_precision(&m, &m, 32, &mut rng);
        assert_eq!(r, [1.0, 1.0, 1.0]);
        let shuffled: Vec<Vec<f32>> = m.iter().rev().cloned().collect();
        let r2 = r_precision(&m, &shuffled, 32, &mut rng);
        assert!(r2[0] < 0.2);
        assert!(mm_dist(&m, &m) == 0.0 && diversity(&m, 100, &mut rng) > 1.0);
        let (mu, ci) = mean_ci95(&[1.0, 2.0, 3.0]);
        assert!((mu - 2.0).abs() < 1e-12 && (ci[1] - 2.0 - 4.303 / 3f64.sqrt()).abs() < 1e-9);
    }
}
