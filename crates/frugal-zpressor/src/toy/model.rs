//! The toy's feed-forward next-view model (ours, not from the paper): it predicts a target view's
//! pixels from K posed context views in one pass.
//!
//! - Context encoder: each 4×4 patch of a context view (RGB plus the Plücker coordinates of its
//!   pixels' rays) becomes one token by a linear map and a residual MLP.
//! - Optional ZPressor: the K views' token maps are compressed into N anchor views.
//! - Decoder: one token per target patch, made from the target rays' Plücker coordinates, cross-
//!   attends to all context tokens (K·T without ZPressor, N·T with it), then an MLP; a few such
//!   blocks, then a linear map to the patch's pixels and a sigmoid.
//!
//! The decoder's attention spans every context token, so without ZPressor its cost and its softmax
//! spread grow with K, which is the bottleneck the toy is meant to expose.

use crate::anchors::Assignment;
use crate::ops::{attend, Norm};
use crate::zpressor::{information_bottleneck_loss, Zpressor, ZpressorConfig};
use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// The toy model's shape; every value is ours.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToyModelConfig {
    pub image: usize,
    pub patch: usize,
    pub width: usize,
    pub heads: usize,
    pub decoder_blocks: usize,
    /// `Some(anchors)` puts ZPressor between encoder and decoder.
    pub zpressor_anchors: Option<usize>,
    pub zpressor_blocks: usize,
}

impl Default for ToyModelConfig {
    fn default() -> Self {
        Self {
            image: 32,
            patch: 4,
            width: 64,
            heads: 2,
            decoder_blocks: 2,
            zpressor_anchors: Some(6),
            zpressor_blocks: 2,
        }
    }
}

#[derive(Debug, Clone)]
struct DecoderBlock {
    norm_q: Norm,
    norm_kv: Norm,
    q: Linear,
    kv: Linear,
    out: Linear,
    norm_mlp: Norm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    trainable: bool,
}

impl DecoderBlock {
    fn new(c: usize, heads: usize, trainable: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm_q: Norm::new(c, trainable, vb.pp("norm_q"))?,
            norm_kv: Norm::new(c, trainable, vb.pp("norm_kv"))?,
            q: linear_no_bias(c, c, vb.pp("q"))?,
            kv: linear_no_bias(c, 2 * c, vb.pp("kv"))?,
            out: linear(c, c, vb.pp("out"))?,
            norm_mlp: Norm::new(c, trainable, vb.pp("norm_mlp"))?,
            fc1: linear(c, 4 * c, vb.pp("fc1"))?,
            fc2: linear(4 * c, c, vb.pp("fc2"))?,
            heads,
            trainable,
        })
    }

    /// queries [B, Tq, C], context [B, Tk, C] → [B, Tq, C]
    fn forward(&self, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let (b, tq, c) = x.dims3()?;
        let tk = ctx.dim(1)?;
        let d = c / self.heads;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(self.q.forward(&self.norm_q.forward(x)?)?, tq)?;
        let kv = self.kv.forward(&self.norm_kv.forward(ctx)?)?;
        let k = heads(kv.narrow(2, 0, c)?, tk)?;
        let v = heads(kv.narrow(2, c, c)?, tk)?;
        let o = attend(&q, &k, &v, (d as f64).powf(-0.5), self.trainable)?;
        let o = o.transpose(1, 2)?.reshape((b, tq, c))?;
        let x = (self.out.forward(&o)? + x)?;
        let h = self.fc1.forward(&self.norm_mlp.forward(&x)?)?.gelu_erf()?;
        Ok((self.fc2.forward(&h)? + x)?)
    }
}

/// One batch of episodes on the model's device.
pub struct Batch {
    /// [B, K, 3, S, S]
    pub context_rgb: Tensor,
    /// [B, K, 6, S, S]
    pub context_rays: Tensor,
    /// [B, K, 4, 4] camera-to-world
    pub context_extrinsics: Tensor,
    /// [B, 6, S, S]
    pub target_rays: Tensor,
    /// [B, 3, S, S]
    pub target_rgb: Tensor,
}

/// The model.
#[derive(Debug, Clone)]
pub struct NextViewModel {
    pub cfg: ToyModelConfig,
    embed: Linear,
    embed_mlp1: Linear,
    embed_mlp2: Linear,
    zpressor: Option<Zpressor>,
    target_embed: Linear,
    blocks: Vec<DecoderBlock>,
    head: Linear,
}

/// [B, V, ch, S, S] → [B, V, T, ch·p²] with T = (S/p)² patches in row-major order.
fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, v, ch, s, _) = x.dims5()?;
    let g = s / p;
    Ok(x.reshape((b * v, ch, g, p, g, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, v, g * g, ch * p * p))?)
}

impl NextViewModel {
    pub fn new(cfg: ToyModelConfig, trainable: bool, vb: VarBuilder) -> Result<Self> {
        let c = cfg.width;
        let pp = cfg.patch * cfg.patch;
        let zpressor = match cfg.zpressor_anchors {
            Some(_) => {
                let zc = ZpressorConfig {
                    embed_dims: vec![c],
                    num_heads: 1,
                    num_layers: cfg.zpressor_blocks,
                    no_self_attn: false,
                };
                Some(if trainable {
                    Zpressor::new_trainable(zc, vb.pp("zpressor"))?
                } else {
                    Zpressor::new(zc, vb.pp("zpressor"))?
                })
            }
            None => None,
        };
        Ok(Self {
            embed: linear(9 * pp, c, vb.pp("embed"))?,
            embed_mlp1: linear(c, 2 * c, vb.pp("embed_mlp1"))?,
            embed_mlp2: linear(2 * c, c, vb.pp("embed_mlp2"))?,
            zpressor,
            target_embed: linear(6 * pp, c, vb.pp("target_embed"))?,
            blocks: (0..cfg.decoder_blocks)
                .map(|i| DecoderBlock::new(c, cfg.heads, trainable, vb.pp(format!("dec{i}"))))
                .collect::<Result<_>>()?,
            head: linear(c, 3 * pp, vb.pp("head"))?,
            cfg,
        })
    }

    /// Predicted target views [B, 3, S, S] and the information-bottleneck term of the anchor
    /// latents (zero without ZPressor).
    pub fn forward(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let (b, k, _, s, _) = batch.context_rgb.dims5()?;
        let p = self.cfg.patch;
        let g = s / p;
        let c = self.cfg.width;
        let x = Tensor::cat(&[&batch.context_rgb, &batch.context_rays], 2)?;
        let tok = self.embed.forward(&patchify(&x, p)?)?; // [B, K, T, C]
        let tok = (self
            .embed_mlp2
            .forward(&self.embed_mlp1.forward(&tok)?.gelu_erf()?)?
            + tok)?;
        let (ctx, ib) = match (&self.zpressor, self.cfg.zpressor_anchors) {
            (Some(z), Some(n)) => {
                let maps = tok.transpose(2, 3)?.reshape((b, k, c, g, g))?;
                let asg: Vec<Assignment> = z.select_anchors(&batch.context_extrinsics, n)?;
                let anchors = z.compress(&maps, &asg, 0)?; // [B, N, C, g, g]
                let ib = information_bottleneck_loss(&anchors, 1.0)?;
                let ctx = anchors
                    .reshape((b, n, c, g * g))?
                    .transpose(2, 3)?
                    .reshape((b, n * g * g, c))?;
                (ctx, ib)
            }
            _ => (
                tok.reshape((b, k * g * g, c))?,
                Tensor::zeros((), candle_core::DType::F32, tok.device())?,
            ),
        };
        let tr = patchify(&batch.target_rays.unsqueeze(1)?, p)?.squeeze(1)?; // [B, T, 6p²]
        let mut q = self.target_embed.forward(&tr)?;
        for blk in &self.blocks {
            q = blk.forward(&q, &ctx)?;
        }
        let out = candle_nn::ops::sigmoid(&self.head.forward(&q)?)?; // [B, T, 3p²]
        let img = out
            .reshape((b, g, g, 3, p, p))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((b, 3, s, s))?;
        Ok((img, ib))
    }
}
