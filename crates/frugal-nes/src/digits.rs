//! scikit-learn's bundled digits (1,797 grey 8×8 images of the digits 0–9), embedded in the
//! crate so that training and evaluation work offline on a fresh machine.
//!
//! The file is exported once, unchanged, from the scikit-learn wheel by
//! `scripts/nes/export_digits.py`; its sha256 is checked here. Each CSV row holds 64 pixel
//! values in 0..=16 and the label. We map a pixel value v to the 8-bit grey level
//! round(255·v/16), so a digit *is* an 8-bit image and "the released image" is well defined.

use anyhow::{Context, Result};
use frugal_nn::image_io::ImageF32;
use sha2::{Digest, Sha256};
use std::io::Read;

const DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");
const DIGITS_SHA256: &str = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22";

/// Side of a digit image.
pub const SIDE: usize = 8;

/// The data set: images (1×8×8, values k/255) and labels.
#[derive(Debug, Clone)]
pub struct Digits {
    pub images: Vec<ImageF32>,
    pub labels: Vec<u32>,
}

impl Digits {
    /// Parse the embedded file (checking its hash).
    pub fn load() -> Result<Self> {
        let hash = format!("{:x}", Sha256::digest(DIGITS_GZ));
        if hash != DIGITS_SHA256 {
            anyhow::bail!("embedded digits file has sha256 {hash}, expected {DIGITS_SHA256}");
        }
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_GZ)
            .read_to_string(&mut text)
            .context("decompressing digits.csv.gz")?;
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let vals: Vec<f32> = line
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("digits row {i}"))?;
            if vals.len() != SIDE * SIDE + 1 {
                anyhow::bail!("digits row {i} has {} values, expected 65", vals.len());
            }
            let px: Vec<f32> = vals[..64]
                .iter()
                .map(|v| (v * 255.0 / 16.0).round() / 255.0)
                .collect();
            images.push(ImageF32::new(1, SIDE, SIDE, px)?);
            labels.push(vals[64] as u32);
        }
        Ok(Self { images, labels })
    }

    /// A subset by indices.
    pub fn select(&self, idx: &[usize]) -> Self {
        Self {
            images: idx.iter().map(|&i| self.images[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The fixed train/test split every model and every evaluation uses (30 % held out; ours).
    pub fn split() -> Result<(Self, Self)> {
        let all = Self::load()?;
        let (train, test) = frugal_nn::data::split_indices(all.len(), 0.3, 2024);
        Ok((all.select(&train), all.select(&test)))
    }
}

/// Stack images into a `(N, C, H, W)` tensor.
pub fn to_tensor(images: &[ImageF32], dev: &candle_core::Device) -> Result<candle_core::Tensor> {
    let first = images.first().context("no images")?;
    let mut data = Vec::with_capacity(images.len() * first.data.len());
    for im in images {
        if (im.channels, im.height, im.width) != (first.channels, first.height, first.width) {
            anyhow::bail!("images of different sizes cannot be batched");
        }
        data.extend_from_slice(&im.data);
    }
    Ok(candle_core::Tensor::from_vec(
        data,
        (images.len(), first.channels, first.height, first.width),
        dev,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_1797_digits_with_ten_balanced_classes() -> Result<()> {
        let d = Digits::load()?;
        assert_eq!(d.len(), 1797);
        let mut counts = [0usize; 10];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (170..=190).contains(&c)),
            "{counts:?}"
        );
        assert!(d
            .images
            .iter()
            .all(|im| im.data.iter().all(|&v| (0.0..=1.0).contains(&v))));
        let (tr, te) = Digits::split()?;
        assert_eq!(tr.len() + te.len(), 1797);
        assert_eq!(te.len(), 539);
        Ok(())
    }
}
