//! The pixel encoder: a small CNN with BatchNorm, output stride 4 (64×64 scenes → 16×16
//! features). It stands in for the paper's ResNet-50 (DeepLabV3, stride 8); sizes are ours.
//!
//! BatchNorm statistics: the encoder is trained (batch statistics, running averages updated) only
//! in the base task (and by the oracle and fine-tuning runs). Everywhere else it runs in
//! evaluation mode, so its running statistics are frozen too — otherwise a "frozen" encoder would
//! still drift through its BatchNorm averages and the teachers' features would no longer be the
//! ones they were trained on.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, VarBuilder};
use frugal_nn::layers::conv2d;

/// Encoder widths (ours).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncoderConfig {
    pub widths: [usize; 3],
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            widths: [24, 48, 64],
        }
    }
}

impl EncoderConfig {
    /// Channels of the feature map.
    pub fn out_channels(&self) -> usize {
        self.widths[2]
    }
}

/// conv → BN → ReLU.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(i: usize, o: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(i, o, 3, stride, 1, vb.pp("conv"))?,
            bn: candle_nn::batch_norm(o, BatchNormConfig::default(), vb.pp("bn"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_t(&self.conv.forward(x)?, train)?.relu()
    }
}

/// Four conv-BN-ReLU stages: stride 2, 2, 1, 1 (the stem already halves the resolution: ours,
/// to fit two shared CPU cores).
#[derive(Debug, Clone)]
pub struct Encoder {
    stages: Vec<ConvBn>,
}

impl Encoder {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let [a, b, c] = cfg.widths;
        Ok(Self {
            stages: vec![
                ConvBn::new(3, a, 2, vb.pp("s0"))?,
                ConvBn::new(a, b, 2, vb.pp("s1"))?,
                ConvBn::new(b, c, 1, vb.pp("s2"))?,
                ConvBn::new(c, c, 1, vb.pp("s3"))?,
            ],
        })
    }

    /// `(B, 3, H, W)` images in `[0, 1]` → `(B, C, H/4, W/4)` features. `train` selects batch
    /// statistics (and updates the running averages) versus the frozen running statistics.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = ((images - 0.45)? * 4.0)?;
        for s in &self.stages {
            x = s.forward_t(&x, train)?;
        }
        Ok(x)
    }
}
