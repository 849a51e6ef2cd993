//! The method: recode an image inside the null space of the authorized model's first layer.
//! See `docs/methods/nes.md` for the derivation and for how this differs from the released code.
//!
//! Pipeline for the exact image-domain mode (non-overlapping first layer, kernel = stride):
//! 1. flatten the kernel to `W_f` (`C_out × d`, `d = C_in·k·k`), full SVD, keep the right
//!    singular vectors beyond the rank rule as the patch subspace `N` ([`patch_subspace`]);
//! 2. draw coefficients `z ~ N(0, I)` and form the pattern `N z` at every patch position
//!    ([`Pattern`]); because the patches tile the image, the pattern is an image `δ` with
//!    `W_f · patch(x + δ) = W_f · patch(x)` at every position;
//! 3. scale `δ` so that the *released 8-bit image* has the requested true PSNR
//!    ([`calibrate`]), or by the released code's nominal formula ([`nominal_scale`]).

use crate::models::FirstLayer;
use anyhow::Result;
use frugal_nn::image_io::ImageF32;
use frugal_nn::init::normal;
use nalgebra::DMatrix;
use rand::Rng;

/// Rank rule of the subspace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubspaceConfig {
    /// Absolute singular-value threshold used when the layer has at least as many outputs as
    /// patch values (the released code's `tau_w`; its README example uses 1e-2).
    pub tau: f64,
}

impl Default for SubspaceConfig {
    fn default() -> Self {
        Self { tau: 1e-2 }
    }
}

/// Which kind of subspace was found; printed with every result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Exact null space: the authorized first layer's output is unchanged (up to rounding).
    Exact,
    /// No null space: the smallest right singular direction(s) of the patch matrix, so the
    /// authorized model is perturbed by at most `σ_min` per unit of pattern.
    LowSensitivity,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Exact => "exact image-domain null space",
            Mode::LowSensitivity => "image-domain low-sensitivity (patch smallest singular vector)",
        }
    }
}

/// Orthonormal directions in patch space (`d = C_in·k·k` values each).
#[derive(Debug, Clone)]
pub struct PatchSubspace {
    pub channels: usize,
    pub kernel: usize,
    pub basis: Vec<Vec<f64>>,
    /// Singular values of `W_f`, largest first.
    pub singular_values: Vec<f64>,
    pub mode: Mode,
}

impl PatchSubspace {
    pub fn dim(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }
}

/// The patch subspace of a first layer, following the released code's rank rule: with more patch
/// values than outputs (`d > C_out`) the last `d − C_out` right singular vectors (exact null
/// space); otherwise the vectors whose singular value is ≤ `tau`; if there are none, the single
/// smallest singular vector (low-sensitivity).
pub fn patch_subspace(first: &FirstLayer, cfg: &SubspaceConfig) -> Result<PatchSubspace> {
    let (weight, stride, padding) = match first {
        FirstLayer::Linear { .. } => anyhow::bail!(
            "the model's first layer is a dense layer on the whole image, not a convolution or \
             patch embedding; NEs needs a convolutional first layer"
        ),
        FirstLayer::Conv {
            weight,
            stride,
            padding,
        } => (weight, *stride, *padding),
    };
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    if kh != kw || kh != stride || padding != 0 {
        anyhow::bail!(
            "the exact image-domain mode needs a non-overlapping first layer (kernel = stride, no \
             padding); this one has kernel {kh}x{kw}, stride {stride}, padding {padding}"
        );
    }
    let d = c_in * kh * kw;
    let w: Vec<f64> = weight
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    // Pad with zero rows to at least d rows so the SVD returns all d right singular vectors.
    let rows = c_out.max(d);
    let m = DMatrix::from_fn(rows, d, |r, c| if r < c_out { w[r * d + c] } else { 0.0 });
    let svd = m.svd(false, true);
    let vt = svd.v_t.expect("requested V");
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
    let sv: Vec<f64> = order.iter().map(|&i| svd.singular_values[i]).collect();
    let rank = if d > c_out {
        c_out
    } else {
        sv.iter().filter(|&&s| s > cfg.tau).count()
    };
    let (keep, mode) = if rank < d {
        ((rank..d).collect::<Vec<_>>(), Mode::Exact)
    } else {
        (vec![d - 1], Mode::LowSensitivity)
    };
    let basis = keep
        .iter()
        .map(|&j| vt.row(order[j]).iter().copied().collect())
        .collect();
    Ok(PatchSubspace {
        channels: c_in,
        kernel: kh,
        basis,
        singular_values: sv[..c_out.min(d)].to_vec(),
        mode,
    })
}

/// How the pattern is laid over the patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// One coefficient vector per image, the same patch pattern at every position (the released
    /// code's behaviour; it is what makes tile-median subtraction a natural attack).
    Tiled,
    /// Independent coefficients at every patch position (ours; still exactly null).
    PerPatch,
}

/// An unscaled image-shaped pattern `δ` built from the subspace.
pub fn draw_pattern(
    sub: &PatchSubspace,
    shape: (usize, usize, usize),
    pattern: Pattern,
    rng: &mut impl Rng,
) -> Result<Vec<f32>> {
    let (c, h, w) = shape;
    let k = sub.kernel;
    if c != sub.channels {
        anyhow::bail!(
            "the image has {c} channel(s), the model's first layer expects {}",
            sub.channels
        );
    }
    if h % k != 0 || w % k != 0 {
        anyhow::bail!("image {h}x{w} is not a multiple of the first layer's patch size {k}");
    }
    let draw = |rng: &mut dyn rand::RngCore| -> Vec<f64> {
        let mut v = vec![0.0; sub.dim()];
        for b in &sub.basis {
            let z = normal(rng);
            for (vi, bi) in v.iter_mut().zip(b) {
                *vi += z * bi;
            }
        }
        v
    };
    let mut out = vec![0f32; c * h * w];
    let tiled = draw(rng);
    for ty in 0..h / k {
        for tx in 0..w / k {
            let v = match pattern {
                Pattern::Tiled => tiled.clone(),
                Pattern::PerPatch => draw(rng),
            };
            for ch in 0..c {
                for i in 0..k {
                    for j in 0..k {
                        out[ch * h * w + (ty * k + i) * w + tx * k + j] =
                            v[ch * k * k + i * k + j] as f32;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// i.i.d. standard normal pattern (the equal-energy baseline).
pub fn gaussian_pattern(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n).map(|_| normal(rng) as f32).collect()
}

/// PSNR in dB of `a` against `b` with peak 1 (i.e. 255 in 8-bit units); `inf` when equal.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    }
}

/// A recoded image.
#[derive(Debug, Clone)]
pub struct Recoded {
    /// `x + s·δ` before any rounding or clipping.
    pub float: ImageF32,
    /// What is written to disk: rounded and clipped to 8 bits.
    pub released: ImageF32,
    /// PSNR of `released` against the clean 8-bit image.
    pub true_psnr: f64,
    pub scale: f64,
}

/// Scale `delta` so that the released 8-bit image `q(x + s·δ)` has PSNR `target_db` against `x`
/// (bisection on `s`; PSNR falls as `s` grows). If clipping makes the target unreachable the
/// largest-energy result is returned; its `true_psnr` says what was reached.
pub fn calibrate(x: &ImageF32, delta: &[f32], target_db: f64) -> Result<Recoded> {
    if !(target_db.is_finite() && (0.0..=100.0).contains(&target_db)) {
        anyhow::bail!("PSNR must be between 0 and 100 dB, got {target_db}");
    }
    let clean = x.quantized();
    let make = |s: f64| {
        let float = ImageF32 {
            data: clean
                .data
                .iter()
                .zip(delta)
                .map(|(a, d)| a + (s as f32) * d)
                .collect(),
            ..clean.clone()
        };
        let released = float.quantized();
        let p = psnr(&released.data, &clean.data);
        Recoded {
            float,
            released,
            true_psnr: p,
            scale: s,
        }
    };
    let rms = (delta.iter().map(|d| (*d as f64).powi(2)).sum::<f64>() / delta.len() as f64).sqrt();
    if rms == 0.0 {
        anyhow::bail!("the pattern is zero; nothing to scale");
    }
    // Bracket in log-scale: from 1e-6 to 1e3 of the peak per unit rms.
    let (mut lo, mut hi) = ((1e-6 / rms).ln(), (1e3 / rms).ln());
    let top = make(hi.exp());
    if top.true_psnr > target_db {
        return Ok(top);
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if make(mid.exp()).true_psnr > target_db {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(make(hi.exp()))
}

/// The released code's nominal strength ("psnr" knob): `target_mse = 255² / 10^(psnr/10)`,
/// divided by the mean square of the *noised signal* `x + δ` (not of the noise), square root.
/// Kept for parity only; it is not the PSNR of anything.
pub fn nominal_scale(x: &[f32], delta: &[f32], nominal_psnr: f64) -> f64 {
    let target_mse = 255f64.powi(2) / 10f64.powf(nominal_psnr / 10.0);
    let m = x
        .iter()
        .zip(delta)
        .map(|(a, d)| ((a + d) as f64).powi(2))
        .sum::<f64>()
        / x.len() as f64;
    (target_mse / m).sqrt()
}

/// Orthonormal image-space basis (columns) of the patterns [`draw_pattern`] can produce.
pub fn image_subspace(
    sub: &PatchSubspace,
    shape: (usize, usize, usize),
    pattern: Pattern,
) -> DMatrix<f64> {
    let (c, h, w) = shape;
    let k = sub.kernel;
    let tiles: Vec<(usize, usize)> = (0..h / k)
        .flat_map(|ty| (0..w / k).map(move |tx| (ty, tx)))
        .collect();
    let groups: Vec<Vec<(usize, usize)>> = match pattern {
        Pattern::Tiled => vec![tiles],
        Pattern::PerPatch => tiles.into_iter().map(|t| vec![t]).collect(),
    };
    let cols = groups.len() * sub.basis.len();
    let mut b = DMatrix::zeros(c * h * w, cols);
    let mut col = 0;
    for g in &groups {
        let norm = (g.len() as f64).sqrt();
        for v in &sub.basis {
            for &(ty, tx) in g {
                for ch in 0..c {
                    for i in 0..k {
                        for j in 0..k {
                            b[(ch * h * w + (ty * k + i) * w + tx * k + j, col)] =
                                v[ch * k * k + i * k + j] / norm;
                        }
                    }
                }
            }
            col += 1;
        }
    }
    b
}

/// Leakage ratio λ of a model with image-domain first-layer operator `a_u` for NEs drawn from the
/// image subspace `b` (orthonormal columns): the energy its first layer receives per unit of NE
/// energy, relative to what it receives per unit of isotropic noise. 1 means the NE looks like
/// noise of equal energy to that layer, 0 means it is invisible (the authorized model).
/// (The brief's patch-level ratio ‖W_u N‖²/‖W_u‖² is this times n/d for same-geometry layers.)
pub fn leakage_ratio(a_u: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let n = b.ncols() as f64;
    let dim = a_u.ncols() as f64;
    let through = (a_u * b).norm_squared() / n;
    let iso = a_u.norm_squared() / dim;
    through / iso
}

/// Hoffman–Wielandt spectral gap between two image-domain first-layer operators, each scaled to
/// unit Frobenius norm (so the gap compares shapes of spectra, not weight scales): the sum of
/// squared differences of their sorted singular values, the shorter list padded with zeros.
/// By the Hoffman–Wielandt inequality it lower-bounds ‖Â_u − Â_a‖²_F when shapes match.
pub fn spectral_gap(a_u: &DMatrix<f64>, a_a: &DMatrix<f64>) -> f64 {
    let sv = |m: &DMatrix<f64>| {
        let f = m.norm();
        let mut s: Vec<f64> = m.singular_values().iter().map(|x| x / f).collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s
    };
    let (mut su, mut sa) = (sv(a_u), sv(a_a));
    let n = su.len().max(sa.len());
    su.resize(n, 0.0);
    sa.resize(n, 0.0);
    su.iter().zip(&sa).map(|(x, y)| (x - y).powi(2)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use rand::SeedableRng;

    fn layer(c_out: usize, k: usize, seed: u64) -> FirstLayer {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let w: Vec<f32> = (0..c_out * k * k)
            .map(|_| normal(&mut rng) as f32)
            .collect();
        FirstLayer::Conv {
            weight: Tensor::from_vec(w, (c_out, 1, k, k), &Device::Cpu).unwrap(),
            stride: k,
            padding: 0,
        }
    }

    #[test]
    fn exact_pattern_leaves_the_first_layer_unchanged_and_other_layers_not() -> Result<()> {
        let a = layer(8, 4, 1);
        let sub = patch_subspace(&a, &SubspaceConfig::default())?;
        assert_eq!(sub.mode, Mode::Exact);
        assert_eq!(sub.basis.len(), 8);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for pattern in [Pattern::Tiled, Pattern::PerPatch] {
            let d = draw_pattern(&sub, (1, 8, 8), pattern, &mut rng)?;
            let t = Tensor::from_vec(d.clone(), (1, 1, 8, 8), &Device::Cpu)?;
            let out = a.apply(&t)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let energy = d.iter().map(|v| v.abs()).fold(0f32, f32::max);
            assert!(
                energy > 0.1 && out < 1e-5,
                "pattern {energy}, response {out}"
            );
            let other = layer(8, 4, 2)
                .apply(&t)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(other > 0.1, "{other}");
        }
        // λ is 0 for the authorized layer and positive for another.
        let b = image_subspace(&sub, (1, 8, 8), Pattern::Tiled);
        assert!(leakage_ratio(&a.image_operator(1, 8, 8)?, &b) < 1e-12);
        assert!(leakage_ratio(&layer(8, 4, 2).image_operator(1, 8, 8)?, &b) > 0.1);
        Ok(())
    }

    #[test]
    fn square_layer_falls_back_to_the_smallest_direction() -> Result<()> {
        let sub = patch_subspace(&layer(16, 4, 3), &SubspaceConfig::default())?;
        assert_eq!(sub.mode, Mode::LowSensitivity);
        assert_eq!(sub.basis.len(), 1);
        Ok(())
    }

    #[test]
    fn overlapping_and_dense_first_layers_are_refused() {
        let conv = FirstLayer::Conv {
            weight: Tensor::zeros((4, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
            stride: 1,
            padding: 1,
        };
        let e = patch_subspace(&conv, &SubspaceConfig::default()).unwrap_err();
        assert!(e.to_string().contains("non-overlapping"), "{e}");
        let dense = FirstLayer::Linear {
            weight: Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
        };
        let e = patch_subspace(&dense, &SubspaceConfig::default()).unwrap_err();
        assert!(e.to_string().contains("dense layer"), "{e}");
    }

    #[test]
    fn calibrate_hits_the_true_psnr_of_the_8bit_image() -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let x = ImageF32::new(1, 8, 8, (0..64).map(|i| (i % 16) as f32 / 17.0).collect())?;
        let d = gaussian_pattern(64, &mut rng);
        for target in [40.0, 20.0, 10.0] {
            let r = calibrate(&x, &d, target)?;
            // 8-bit steps make the PSNR a step function of s; it lands within a small margin.
            assert!(
                (r.true_psnr - target).abs() < 0.3,
                "{target} -> {}",
                r.true_psnr
            );
            assert_eq!(r.released, r.released.quantized());
        }
        assert!(calibrate(&x, &d, -1.0).is_err());
        assert!(calibrate(&x, &d, f64::NAN).is_err());
        Ok(())
    }
}
