//! Building blocks shared by the vision, segmentation and motion models.
//!
//! Thin wrappers over `candle_nn` where candle already has the layer (linear, conv, layer /
//! group norm), plus the composite blocks every model here needs: a patch embedding that exposes
//! its kernel (NEs reads it), a two-layer MLP, multi-head self-attention and a pre-norm
//! transformer block. Everything is a plain `Module` so models compose by `forward` calls.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

pub use candle_nn::{group_norm, layer_norm, linear, GroupNorm};

/// A 2-D convolution with square kernel, stride and zero padding.
pub fn conv2d(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(in_c, out_c, kernel, cfg, vb)
}

/// Non-overlapping patch embedding (a conv with kernel = stride = `patch`, no padding), as in
/// ViT/Swin/ConvNeXt stems. The kernel is public because NEs computes its null space.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    pub conv: Conv2d,
    pub patch: usize,
}

impl PatchEmbed {
    pub fn new(in_c: usize, out_c: usize, patch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(in_c, out_c, patch, patch, 0, vb)?,
            patch,
        })
    }

    /// The kernel, shape `(out_c, in_c, patch, patch)`.
    pub fn weight(&self) -> &Tensor {
        self.conv.weight()
    }
}

impl Module for PatchEmbed {
    /// `(B, C, H, W)` → `(B, out_c, H/patch, W/patch)`; H and W must be multiples of `patch`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        if h % self.patch != 0 || w % self.patch != 0 {
            candle_core::bail!(
                "patch embedding: image {h}x{w} is not a multiple of the patch size {}",
                self.patch
            );
        }
        self.conv.forward(xs)
    }
}

/// Two linear layers with a GELU between them.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(dim, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, out, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(xs)?.gelu_erf()?)
    }
}

/// Multi-head self-attention over `(B, T, D)` tokens, no mask.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl SelfAttention {
    pub fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || dim % heads != 0 {
            candle_core::bail!("self-attention: dim {dim} is not divisible by {heads} heads");
        }
        Ok(Self {
            qkv: linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: linear(dim, dim, vb.pp("proj"))?,
            heads,
        })
    }
}

impl Module for SelfAttention {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((b, t, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?; // (3, B, H, T, hd)
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let att = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.proj.forward(&out)
    }
}

/// Pre-norm transformer block: `x + attn(ln(x))`, then `x + mlp(ln(x))`.
#[derive(Debug, Clone)]
pub struct TransformerBlock {
    pub ln1: LayerNorm,
    pub attn: SelfAttention,
    pub ln2: LayerNorm,
    pub mlp: Mlp,
}

impl TransformerBlock {
    pub fn new(dim: usize, heads: usize, mlp_ratio: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln1: layer_norm(dim, 1e-5, vb.pp("ln1"))?,
            attn: SelfAttention::new(dim, heads, vb.pp("attn"))?,
            ln2: layer_norm(dim, 1e-5, vb.pp("ln2"))?,
            mlp: Mlp::new(dim, dim * mlp_ratio, dim, vb.pp("mlp"))?,
        })
    }
}

impl Module for TransformerBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.ln1.forward(xs)?)?)?;
        &xs + self.mlp.forward(&self.ln2.forward(&xs)?)?
    }
}

/// `(B, C, H, W)` → `(B, H·W, C)`: feature map to a token sequence.
pub fn to_tokens(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    xs.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// `(B, C, H, W)` → `(B, C)`: mean over the spatial positions.
pub fn global_avg_pool(xs: &Tensor) -> Result<Tensor> {
    xs.mean(D::Minus1)?.mean(D::Minus1)
}

/// 2×2 max pooling with stride 2.
pub fn max_pool2(xs: &Tensor) -> Result<Tensor> {
    xs.max_pool2d(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::SeededVarMap;
    use candle_core::{DType, Device};

    #[test]
    fn shapes_through_the_blocks() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(0);
        let vb = vm.var_builder(DType::F32, &dev);
        let x = Tensor::randn(0f32, 1.0, (2, 1, 8, 8), &dev)?;
        let pe = PatchEmbed::new(1, 6, 4, vb.pp("pe"))?;
        let y = pe.forward(&x)?;
        assert_eq!(y.dims(), &[2, 6, 2, 2]);
        let tok = to_tokens(&y)?;
        assert_eq!(tok.dims(), &[2, 4, 6]);
        let blk = TransformerBlock::new(6, 2, 2, vb.pp("blk"))?;
        assert_eq!(blk.forward(&tok)?.dims(), &[2, 4, 6]);
        assert_eq!(global_avg_pool(&y)?.dims(), &[2, 6]);
        assert!(pe
            .forward(&Tensor::zeros((1, 1, 6, 6), DType::F32, &dev)?)
            .is_err());
        Ok(())
    }

    /// Attention is permutation-equivariant over tokens: permuting inputs permutes outputs.
    #[test]
    fn attention_is_permutation_equivariant() -> Result<()> {
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(3);
        let att = SelfAttention::new(8, 2, vm.var_builder(DType::F32, &dev))?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 8), &dev)?;
        let perm = Tensor::new(&[2u32, 0, 1], &dev)?;
        let a = att.forward(&x)?.index_select(&perm, 1)?;
        let b = att.forward(&x.index_select(&perm, 1)?)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
