//! A fixed-size multi-view transformer that stands in for the model downstream of ZPressor
//! (ours): every token of every view it is given attends to every other (global self-attention),
//! then an MLP, repeated for a few blocks. Its cost grows with the square of the token count, as
//! the multi-view transformers ZPressor is placed in front of do when their attention spans all
//! views; attention scores are materialised (no flash kernel), so memory also grows with the
//! square, which is what makes the uncompressed path run out of memory.

use crate::ops::{attend, Norm};
use candle_core::{Module, Result as CResult, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

#[derive(Debug, Clone)]
struct Block {
    norm1: Norm,
    qkv: Linear,
    out: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    trainable: bool,
}

impl Block {
    fn new(dim: usize, heads: usize, trainable: bool, vb: VarBuilder) -> CResult<Self> {
        Ok(Self {
            norm1: Norm::new(dim, trainable, vb.pp("norm1"))?,
            qkv: linear_no_bias(dim, 3 * dim, vb.pp("qkv"))?,
            out: linear(dim, dim, vb.pp("out"))?,
            norm2: Norm::new(dim, trainable, vb.pp("norm2"))?,
            fc1: linear(dim, 2 * dim, vb.pp("fc1"))?,
            fc2: linear(2 * dim, dim, vb.pp("fc2"))?,
            heads,
            trainable,
        })
    }

    /// tokens [T, C] → [T, C]
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let (t, c) = x.dims2()?;
        let d = c / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?;
        let split = |i: usize| -> CResult<Tensor> {
            qkv.narrow(1, i * c, c)?
                .reshape((t, self.heads, d))?
                .transpose(0, 1)?
                .contiguous()
        };
        let o = attend(
            &split(0)?,
            &split(1)?,
            &split(2)?,
            (d as f64).powf(-0.5),
            self.trainable,
        )?;
        let o = o.transpose(0, 1)?.reshape((t, c))?;
        let x = (self.out.forward(&o)? + x)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        self.fc2.forward(&h)? + x
    }
}

/// Global multi-view transformer over the tokens of all views given to it.
#[derive(Debug, Clone)]
pub struct MultiViewTransformer {
    blocks: Vec<Block>,
}

impl MultiViewTransformer {
    /// `trainable` picks differentiable (slower) layer-norm and softmax.
    pub fn new(
        dim: usize,
        heads: usize,
        layers: usize,
        trainable: bool,
        vb: VarBuilder,
    ) -> CResult<Self> {
        let blocks = (0..layers)
            .map(|i| Block::new(dim, heads, trainable, vb.pp(i.to_string())))
            .collect::<CResult<_>>()?;
        Ok(Self { blocks })
    }

    /// Views' features [V, C, H, W] → [V, C, H, W], every token attending to all V·H·W tokens.
    pub fn forward(&self, views: &Tensor) -> CResult<Tensor> {
        let (v, c, h, w) = views.dims4()?;
        let mut x = views
            .reshape((v, c, h * w))?
            .transpose(1, 2)?
            .reshape((v * h * w, c))?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        x.reshape((v, h * w, c))?
            .transpose(1, 2)?
            .reshape((v, c, h, w))
    }
}
