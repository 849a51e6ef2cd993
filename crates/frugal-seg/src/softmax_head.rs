//! The class-dependent baseline: the same neck as the CIT head followed by a 1×1 convolution to
//! one logit per class and a softmax across classes at every pixel (DeepLabV3's classifier).
//! Because the softmax couples the classes, adding a class changes every old class's
//! probability, which is what CIT removes.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use frugal_nn::layers::conv2d;
use frugal_nn::segmentation::upsample_bilinear;

/// Neck + per-pixel classifier.
#[derive(Debug, Clone)]
pub struct SoftmaxHead {
    pub num_classes: usize,
    neck1: Conv2d,
    neck2: Conv2d,
    classifier: Conv2d,
}

impl SoftmaxHead {
    /// The classifier's kernel is `classifier.weight` `(K, C, 1, 1)` with bias `(K,)`; growing
    /// copies the old rows in (see `grow`).
    pub fn new(dim: usize, in_channels: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            num_classes,
            neck1: conv2d(in_channels, dim, 1, 1, 0, vb.pp("neck1"))?,
            neck2: conv2d(dim, dim, 1, 1, 0, vb.pp("neck2"))?,
            classifier: conv2d(dim, num_classes, 1, 1, 0, vb.pp("classifier"))?,
        })
    }

    /// `(B, C_in, h, w)` → logits `(B, K, h, w)`.
    pub fn forward(&self, feats: &Tensor) -> Result<Tensor> {
        let f = self
            .neck2
            .forward(&self.neck1.forward(feats)?.relu()?)?
            .relu()?;
        self.classifier.forward(&f)
    }
}

/// Arg-max class of every pixel after bilinear upsampling of the logits to `(size, size)`.
pub fn predict(logits: &Tensor, size: usize) -> Result<Vec<u32>> {
    upsample_bilinear(logits, size, size)?
        .argmax(1)?
        .flatten_all()?
        .to_vec1::<u32>()
}
