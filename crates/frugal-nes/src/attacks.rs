//! Post-processing a sceptic would apply to a released NE before feeding it to their own model,
//! plus the denoiser such an attacker could train on clean digits.

use crate::digits::to_tensor;
use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Conv2d;
use frugal_nn::image_io::ImageF32;
use frugal_nn::init::SeededVarMap;
use frugal_nn::layers::conv2d;
use frugal_nn::train::{train, LrSchedule, TrainConfig, TrainModel};
use rand::{Rng, SeedableRng};

/// Zero a random square of side `side` (the released code's "crop").
pub fn crop_zero(img: &ImageF32, side: usize, rng: &mut impl Rng) -> ImageF32 {
    let mut out = img.clone();
    let y0 = rng.gen_range(0..=img.height - side);
    let x0 = rng.gen_range(0..=img.width - side);
    for c in 0..img.channels {
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                out.data[c * img.height * img.width + y * img.width + x] = 0.0;
            }
        }
    }
    out.quantized()
}

/// Add one uniform brightness shift in `[-t, t]` to the whole image (the code's "illumination").
pub fn illumination(img: &ImageF32, t: f32, rng: &mut impl Rng) -> ImageF32 {
    let s: f32 = rng.gen_range(-t..=t);
    ImageF32 {
        data: img.data.iter().map(|v| v + s).collect(),
        ..img.clone()
    }
    .quantized()
}

/// Down-scale by `factor` and back (bilinear).
pub fn resize_roundtrip(img: &ImageF32, factor: f64) -> Result<ImageF32> {
    let h = ((img.height as f64 * factor).round() as usize).max(1);
    let w = ((img.width as f64 * factor).round() as usize).max(1);
    img.resize(h, w)?.resize(img.height, img.width)
}

/// Per-image tile-median subtraction: the median over all `k × k` tiles of each within-tile
/// position estimates a pattern repeated on every tile; subtract it, keeping the image's mean
/// brightness. The natural adaptive attack on the released code's tiled pattern.
pub fn tile_median(img: &ImageF32, k: usize) -> ImageF32 {
    let (c, h, w) = (img.channels, img.height, img.width);
    let mut out = img.clone();
    for ch in 0..c {
        let mut med = vec![0f32; k * k];
        for i in 0..k {
            for j in 0..k {
                let mut vals: Vec<f32> = (0..h / k)
                    .flat_map(|ty| (0..w / k).map(move |tx| (ty, tx)))
                    .map(|(ty, tx)| img.data[ch * h * w + (ty * k + i) * w + tx * k + j])
                    .collect();
                vals.sort_by(f32::total_cmp);
                let n = vals.len();
                med[i * k + j] = if n % 2 == 1 {
                    vals[n / 2]
                } else {
                    0.5 * (vals[n / 2 - 1] + vals[n / 2])
                };
            }
        }
        let mean = med.iter().sum::<f32>() / med.len() as f32;
        for y in 0..h {
            for x in 0..w {
                out.data[ch * h * w + y * w + x] -= med[(y % k) * k + x % k] - mean;
            }
        }
    }
    out.quantized()
}

/// A small residual denoiser (three 3×3 convolutions predicting the noise), trained by the
/// attacker on clean training digits with Gaussian noise of random strength. Sizes are ours.
pub struct Denoiser {
    c1: Conv2d,
    c2: Conv2d,
    c3: Conv2d,
}

impl Module for Denoiser {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.c1.forward(x)?.relu()?;
        let h = self.c2.forward(&h)?.relu()?;
        x - self.c3.forward(&h)?
    }
}

impl TrainModel for Denoiser {
    type Batch = (Tensor, Tensor);
    fn loss(&self, (noisy, clean): &Self::Batch) -> candle_core::Result<Tensor> {
        candle_nn::loss::mse(&self.forward(noisy)?, clean)
    }
}

impl Denoiser {
    /// Train on `clean` images: noise std uniform in [0.02, 0.6] of the peak, clipped to 8 bits.
    pub fn train(clean: &[ImageF32], steps: usize, seed: u64) -> Result<Self> {
        let vm = SeededVarMap::new(seed);
        let vb = vm.var_builder(DType::F32, &Device::Cpu);
        let net = Self {
            c1: conv2d(1, 32, 3, 1, 1, vb.pp("c1"))?,
            c2: conv2d(32, 32, 3, 1, 1, vb.pp("c2"))?,
            c3: conv2d(32, 1, 3, 1, 1, vb.pp("c3"))?,
        };
        let cfg = TrainConfig {
            steps,
            lr: 2e-3,
            seed,
            progress: false,
            ..Default::default()
        };
        let cfg = TrainConfig {
            schedule: LrSchedule::WarmupCosine {
                warmup: steps / 20,
                min_frac: 0.05,
            },
            ..cfg
        };
        train(
            &net,
            &mut vm.varmap().clone(),
            |step| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (step as u64) << 8);
                let mut noisy = Vec::with_capacity(64);
                let mut target = Vec::with_capacity(64);
                for _ in 0..64 {
                    let im = &clean[rng.gen_range(0..clean.len())];
                    let sd: f32 = rng.gen_range(0.02..0.6);
                    let n = ImageF32 {
                        data: im
                            .data
                            .iter()
                            .map(|v| v + sd * frugal_nn::init::normal(&mut rng) as f32)
                            .collect(),
                        ..im.clone()
                    }
                    .quantized();
                    noisy.push(n);
                    target.push(im.clone());
                }
                Ok((
                    to_tensor(&noisy, &Device::Cpu)?,
                    to_tensor(&target, &Device::Cpu)?,
                ))
            },
            &cfg,
        )?;
        Ok(net)
    }

    /// Denoise a batch, returning 8-bit images.
    pub fn apply(&self, images: &[ImageF32]) -> Result<Vec<ImageF32>> {
        let out = self.forward(&to_tensor(images, &Device::Cpu)?)?;
        let per = images[0].data.len();
        let v = out.flatten_all()?.to_vec1::<f32>()?;
        Ok(images
            .iter()
            .enumerate()
            .map(|(i, im)| {
                ImageF32 {
                    data: v[i * per..(i + 1) * per].to_vec(),
                    ..im.clone()
                }
                .quantized()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_median_removes_a_tiled_pattern_from_a_flat_image() -> Result<()> {
        // A flat grey image plus a 4x4 pattern repeated on each tile: the attack recovers the
        // flat image up to 8-bit rounding.
        let pat: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) / 40.0).collect();
        let data: Vec<f32> = (0..64)
            .map(|p| 0.5 + pat[(p / 8 % 4) * 4 + p % 8 % 4])
            .collect();
        let img = ImageF32::new(1, 8, 8, data)?;
        let out = tile_median(&img, 4);
        assert!(
            out.data.iter().all(|v| (v - 0.5).abs() <= 1.0 / 255.0),
            "{:?}",
            out.data
        );
        Ok(())
    }
}
