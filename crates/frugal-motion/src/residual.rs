//! The residual-token transformer (MoMask-style): given the base tokens of a segment (quantiser
//! layer 0, what the masked generators produce) it predicts the tokens of the tokenizer's
//! residual quantiser layers 1..V, one layer after the other, so that decoding uses every layer.
//! See docs/methods/infinimotion.md.
//!
//! Input at each position is the sum of the embeddings of the layers already known (one
//! embedding table per layer); a learned layer embedding says which layer is predicted next; a
//! separate output head per residual layer. Training draws one layer `j ∈ 1..V` per step and
//! takes cross-entropy on the segment's layer-`j` tokens given layers `< j` (all positions, no
//! masking). Inference predicts layer 1, then 2, …, greedily (ours; MoMask samples and uses
//! classifier-free guidance, which we leave out: the residual layers carry detail, not content).
//!
//! The layout matches the masked generators: `[text] [context tokens] [segment tokens]`, where
//! the context is the end of the previous segment with all its layers known, so the residual
//! detail continues across segment boundaries.

use crate::generator::{layer_norm, LayerNorm, TransformerLayer};
use anyhow::{bail, Result};
use candle_core::{Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use rand::Rng;

/// Sizes of the residual transformer. `Default`-like constructor: [`Self::new`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResidualConfig {
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub codebook_size: usize,
    /// Quantiser layers of the tokenizer, base included (≥ 2).
    pub vq_layers: usize,
    /// Context tokens of the previous segment (ours: 4, as the generators).
    pub ctx_tokens: usize,
    pub max_tokens: usize,
    pub text_dim: usize,
}

impl ResidualConfig {
    pub fn new(codebook_size: usize, vq_layers: usize, text_dim: usize) -> Self {
        Self {
            d_model: 64,
            layers: 2,
            heads: 4,
            codebook_size,
            vq_layers,
            ctx_tokens: 4,
            max_tokens: 20,
            text_dim,
        }
    }
    fn pad_id(&self) -> u32 {
        self.codebook_size as u32
    }
    fn seq_len(&self) -> usize {
        1 + self.ctx_tokens + self.max_tokens
    }
}

/// One segment: context tokens and segment tokens with all quantiser layers (`[pos][layer]`;
/// at prediction time only layer 0 of the segment is read) and the text vector.
#[derive(Debug, Clone)]
pub struct ResidualItem {
    pub ctx: Vec<Vec<u32>>,
    pub codes: Vec<Vec<u32>>,
    pub text: Vec<f32>,
}

pub struct ResidualTransformer {
    pub cfg: ResidualConfig,
    tok_emb: Vec<Embedding>,
    layer_emb: Tensor,
    pos_emb: Tensor,
    text_proj: Linear,
    layers: Vec<TransformerLayer>,
    norm: LayerNorm,
    heads: Vec<Linear>,
}

impl ResidualTransformer {
    pub fn new(cfg: ResidualConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.vq_layers < 2 {
            bail!("the residual transformer needs a tokenizer with ≥ 2 quantiser layers");
        }
        let d = cfg.d_model;
        let randn = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            tok_emb: (0..cfg.vq_layers)
                .map(|l| candle_nn::embedding(cfg.codebook_size + 1, d, vb.pp(format!("emb{l}"))))
                .collect::<candle_core::Result<_>>()?,
            layer_emb: vb.get_with_hints((cfg.vq_layers, d), "layer_emb", randn)?,
            pos_emb: vb.get_with_hints((cfg.seq_len(), d), "pos_emb", randn)?,
            text_proj: candle_nn::linear(cfg.text_dim, d, vb.pp("text_proj"))?,
            layers: (0..cfg.layers)
                .map(|l| TransformerLayer::new(d, cfg.heads, vb.pp(format!("layer{l}"))))
                .collect::<Result<_>>()?,
            norm: layer_norm(d, vb.pp("norm"))?,
            heads: (1..cfg.vq_layers)
                .map(|l| candle_nn::linear(d, cfg.codebook_size, vb.pp(format!("head{l}"))))
                .collect::<candle_core::Result<_>>()?,
            cfg,
        })
    }

    /// Token rows per known layer `l < j`: `[pad] [ctx, left-padded] [segment, right-padded]`.
    fn rows(&self, items: &[ResidualItem], known: usize) -> Vec<Vec<u32>> {
        let (c, m, pad) = (self.cfg.ctx_tokens, self.cfg.max_tokens, self.cfg.pad_id());
        (0..known)
            .map(|l| {
                let mut r = Vec::with_capacity(items.len() * self.cfg.seq_len());
                for it in items {
                    r.push(pad);
                    let ctx = &it.ctx[it.ctx.len().saturating_sub(c)..];
                    r.extend(std::iter::repeat_n(pad, c - ctx.len()));
                    r.extend(ctx.iter().map(|t| t[l]));
                    r.extend(it.codes.iter().map(|t| t[l]));
                    r.extend(std::iter::repeat_n(pad, m - it.codes.len()));
                }
                r
            })
            .collect()
    }

    /// Logits `(B, S, K)` for layer `j` given the layers `< j` of every position.
    fn forward(&self, items: &[ResidualItem], j: usize, dev: &Device) -> Result<Tensor> {
        let b = items.len();
        let s = self.cfg.seq_len();
        let d = self.cfg.d_model;
        let mut x = Tensor::zeros((b, s, d), candle_core::DType::F32, dev)?;
        for (l, r) in self.rows(items, j).into_iter().enumerate() {
            let ids = Tensor::from_vec(r, (b, s), dev)?;
            x = (x + self.tok_emb[l].forward(&ids)?)?;
        }
        let dim = items[0].text.len();
        let flat: Vec<f32> = items.iter().flat_map(|i| i.text.iter().copied()).collect();
        let text = self
            .text_proj
            .forward(&Tensor::from_vec(flat, (b, dim), dev)?)?;
        let x = x
            .broadcast_add(&self.pos_emb.unsqueeze(0)?)?
            .broadcast_add(&self.layer_emb.get(j)?.reshape((1, 1, d))?)?
            .broadcast_add(&text.unsqueeze(1)?)?;
        let mut x = x;
        for l in &self.layers {
            x = l.forward(&x)?;
        }
        Ok(self.heads[j - 1].forward(&self.norm.forward(&x)?)?)
    }

    fn check(&self, items: &[ResidualItem]) -> Result<()> {
        for it in items {
            let l = it.codes.len();
            if l == 0 || l > self.cfg.max_tokens {
                bail!("segment of {l} tokens (max {})", self.cfg.max_tokens);
            }
            if it
                .codes
                .iter()
                .chain(&it.ctx)
                .any(|t| t.len() < self.cfg.vq_layers)
            {
                bail!("every token needs {} quantiser layers", self.cfg.vq_layers);
            }
        }
        Ok(())
    }

    /// Cross-entropy of one randomly drawn residual layer on the segment positions.
    pub fn loss<R: Rng>(
        &self,
        items: &[ResidualItem],
        rng: &mut R,
        dev: &Device,
    ) -> Result<Tensor> {
        self.check(items)?;
        let j = rng.gen_range(1..self.cfg.vq_layers);
        let s = self.cfg.seq_len();
        let off = 1 + self.cfg.ctx_tokens;
        let b = items.len();
        let mut labels = vec![0u32; b * s];
        let mut weights = vec![0f32; b * s];
        for (bi, it) in items.iter().enumerate() {
            for (p, t) in it.codes.iter().enumerate() {
                labels[bi * s + off + p] = t[j];
                weights[bi * s + off + p] = 1.0;
            }
        }
        let logits = self.forward(items, j, dev)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let labels = Tensor::from_vec(labels, (b, s, 1), dev)?;
        let nll = logp.gather(&labels, D::Minus1)?.squeeze(D::Minus1)?.neg()?;
        let w = Tensor::from_vec(weights, (b, s), dev)?;
        Ok((nll * &w)?.sum_all()?.broadcast_div(&w.sum_all()?)?)
    }

    /// Fills in layers 1..V of every item's segment from its layer 0 (greedy, layer by layer);
    /// returns the segment tokens with all layers.
    pub fn predict(&self, items: &[ResidualItem], dev: &Device) -> Result<Vec<Vec<Vec<u32>>>> {
        let v = self.cfg.vq_layers;
        let mut cur: Vec<ResidualItem> = items
            .iter()
            .map(|it| ResidualItem {
                ctx: it.ctx.clone(),
                codes: it
                    .codes
                    .iter()
                    .map(|t| {
                        let mut full = vec![0u32; v];
                        full[0] = t[0];
                        full
                    })
                    .collect(),
                text: it.text.clone(),
            })
            .collect();
        for it in &cur {
            let l = it.codes.len();
            if l == 0 || l > self.cfg.max_tokens {
                bail!("segment of {l} tokens (max {})", self.cfg.max_tokens);
            }
            if it.ctx.iter().any(|t| t.len() < v) {
                bail!("context tokens need {v} quantiser layers");
            }
        }
        let off = 1 + self.cfg.ctx_tokens;
        for j in 1..v {
            let pred = self
                .forward(&cur, j, dev)?
                .argmax(D::Minus1)?
                .to_vec2::<u32>()?;
            for (it, row) in cur.iter_mut().zip(&pred) {
                for (p, t) in it.codes.iter_mut().enumerate() {
                    t[j] = row[off + p];
                }
            }
        }
        Ok(cur.into_iter().map(|it| it.codes).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;
    use rand::SeedableRng;

    /// Layer-j token = (base + j·text class) mod K: learnable only from the base token, the
    /// layer index and the text together.
    fn toy(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<ResidualItem> {
        (0..n)
            .map(|_| {
                let c = rng.gen_range(0..3u32);
                let mut text = vec![0f32; 3];
                text[c as usize] = 1.0;
                let tok = |rng: &mut rand::rngs::StdRng| {
                    let b = rng.gen_range(0..8u32);
                    (0..3).map(|j| (b + j * (c + 1)) % 8).collect::<Vec<u32>>()
                };
                let l = rng.gen_range(3..6);
                ResidualItem {
                    ctx: (0..2).map(|_| tok(rng)).collect(),
                    codes: (0..l).map(|_| tok(rng)).collect(),
                    text,
                }
            })
            .collect()
    }

    #[test]
    fn residual_transformer_loss_falls_and_it_predicts_the_residual_layers() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let vm = VarMap::new();
        let mut cfg = ResidualConfig::new(8, 3, 3);
        cfg.d_model = 32;
        cfg.layers = 1;
        cfg.ctx_tokens = 2;
        cfg.max_tokens = 6;
        let r = ResidualTransformer::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let tc = crate::train::TrainConfig {
            steps: 150,
            lr: 1e-2,
            warmup: 10,
            weight_decay: 0.0,
            checkpoint_every: usize::MAX,
        };
        let losses = crate::train::train_loop(&vm, &tc, None, "residual toy", |_| {
            let items = toy(32, &mut rng);
            r.loss(&items, &mut rng, &dev)
        })?;
        let (first, last) = crate::train::loss_drop(&losses, 10);
        assert!(last < 0.3 * first, "loss {first} -> {last}");
        let items = toy(16, &mut rng);
        let pred = r.predict(&items, &dev)?;
        let (mut right, mut total) = (0, 0);
        for (it, p) in items.iter().zip(&pred) {
            assert_eq!(p.len(), it.codes.len());
            for (a, b) in p.iter().zip(&it.codes) {
                assert_eq!(a[0], b[0], "the base layer is kept");
                right += (a[1] == b[1]) as usize + (a[2] == b[2]) as usize;
                total += 2;
            }
        }
        assert!(right as f32 > 0.8 * total as f32, "{right}/{total}");
        Ok(())
    }
}
