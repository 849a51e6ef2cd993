//! The masked token generator: a bidirectional-Mamba (KMM) or transformer backbone over
//! `[text] [context tokens] [segment tokens]`, trained to fill in masked motion tokens and
//! decoded by iterative confidence-based unmasking. See docs/methods/kmm.md.
//!
//! Training (MoMask-style): draw `u ~ U(0,1)`, mask `n = ⌈cos(πu/2)·L⌉` (at least one) of the
//! segment's `L` tokens; *which* ones is the switch between random positions and KMM's key
//! frames (highest density-peak Γ first, see [`crate::keyframe`]). Of the chosen positions 10 %
//! get a random token, 88 % of the rest the `[MASK]` token, the others stay; cross-entropy on
//! the chosen positions. The text is dropped 10 % of the time (a learned null embedding) for
//! classifier-free guidance.
//!
//! Long motion is generated segment by segment: each segment sees the last `ctx_tokens` tokens of
//! the one before it as unmasked context, so transitions follow on.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use frugal_nn::mamba::{BiMambaLayer, MambaConfig};
use rand::seq::SliceRandom;
use rand::Rng;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Backbone {
    Mamba,
    Transformer,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Masking {
    /// Random positions (the MoMask baseline).
    Random,
    /// Highest density-peak Γ first (KMM).
    Keyframe,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorConfig {
    pub backbone: Backbone,
    pub d_model: usize,
    pub layers: usize,
    /// Attention heads of the transformer backbone.
    pub heads: usize,
    pub codebook_size: usize,
    /// Tokens of the previous segment given as context (ours: 4 = 16 frames).
    pub ctx_tokens: usize,
    /// Longest segment in tokens (80 frames / 4).
    pub max_tokens: usize,
    pub text_dim: usize,
    /// Probability of dropping the text during training (MoMask: 0.1).
    pub cond_drop: f64,
    /// Fraction of masked positions given a random token (MoMask: 0.1).
    pub random_token_frac: f64,
    /// Fraction of the remaining masked positions given `[MASK]` (MoMask: 0.88).
    pub mask_token_frac: f64,
}

impl GeneratorConfig {
    pub fn new(backbone: Backbone, codebook_size: usize, text_dim: usize) -> Self {
        Self {
            backbone,
            d_model: 64,
            layers: 4,
            heads: 4,
            codebook_size,
            ctx_tokens: 4,
            max_tokens: 20,
            text_dim,
            cond_drop: 0.1,
            random_token_frac: 0.1,
            mask_token_frac: 0.88,
        }
    }
    pub fn mask_id(&self) -> u32 {
        self.codebook_size as u32
    }
    pub fn pad_id(&self) -> u32 {
        self.codebook_size as u32 + 1
    }
    pub fn seq_len(&self) -> usize {
        1 + self.ctx_tokens + self.max_tokens
    }
}

/// Layer normalisation written with differentiable ops (candle-nn's fused `LayerNorm` records
/// no backward pass, so gradients would stop at it).
pub(crate) struct LayerNorm {
    w: Tensor,
    b: Tensor,
}

impl LayerNorm {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.w, &self.b, 1e-5)
    }
}

pub(crate) fn layer_norm(d: usize, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm {
        w: vb.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
        b: vb.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
    })
}

/// Pre-LayerNorm transformer encoder layer (self-attention + GELU MLP of 4× width).
pub(crate) struct TransformerLayer {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl TransformerLayer {
    pub(crate) fn new(d: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln1: layer_norm(d, vb.pp("ln1"))?,
            qkv: candle_nn::linear(d, 3 * d, vb.pp("qkv"))?,
            proj: candle_nn::linear(d, d, vb.pp("proj"))?,
            ln2: layer_norm(d, vb.pp("ln2"))?,
            fc1: candle_nn::linear(d, 4 * d, vb.pp("fc1"))?,
            fc2: candle_nn::linear(4 * d, d, vb.pp("fc2"))?,
            heads,
        })
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(&self.ln1.forward(x)?)?
            .reshape((b, t, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        // the generic softmax: candle-nn's fused last-dim softmax records no backward
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + self.proj.forward(&o)?)?;
        let h = self
            .fc2
            .forward(&self.fc1.forward(&self.ln2.forward(&x)?)?.gelu()?)?;
        Ok((x + h)?)
    }
    pub(crate) fn param_count(d: usize) -> usize {
        2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    }
    fn flops(d: usize, t: usize) -> usize {
        // projections and MLP (2 FLOPs per MAC) + QKᵀ and AV
        2 * t * (3 * d * d + d * d + 8 * d * d) + 2 * 2 * t * t * d
    }
}

enum Layers {
    Mamba(Vec<BiMambaLayer>),
    Transformer(Vec<TransformerLayer>),
}

pub struct MaskedGenerator {
    pub cfg: GeneratorConfig,
    tok_emb: Embedding,
    pos_emb: Tensor,
    text_proj: Linear,
    null_text: Tensor,
    layers: Layers,
    norm: LayerNorm,
    head: Linear,
}

/// One training or generation item: context tokens (≤ `ctx_tokens`, most recent last), the
/// segment's tokens (or its length at generation), the text vector, and the key-frame order.
#[derive(Debug, Clone)]
pub struct Item {
    pub ctx: Vec<u32>,
    pub target: Vec<u32>,
    pub text: Vec<f32>,
    pub keyframe_order: Vec<usize>,
}

impl MaskedGenerator {
    pub fn new(cfg: GeneratorConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let tok_emb = candle_nn::embedding(cfg.codebook_size + 2, d, vb.pp("tok_emb"))?;
        let pos_emb = vb.get_with_hints(
            (cfg.seq_len(), d),
            "pos_emb",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let text_proj = candle_nn::linear(cfg.text_dim, d, vb.pp("text_proj"))?;
        let null_text = vb.get_with_hints(
            d,
            "null_text",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let layers = match cfg.backbone {
            Backbone::Mamba => Layers::Mamba(
                (0..cfg.layers)
                    .map(|l| {
                        BiMambaLayer::new(MambaConfig::with_d_model(d), vb.pp(format!("layer{l}")))
                    })
                    .collect::<candle_core::Result<_>>()?,
            ),
            Backbone::Transformer => Layers::Transformer(
                (0..cfg.layers)
                    .map(|l| TransformerLayer::new(d, cfg.heads, vb.pp(format!("layer{l}"))))
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(Self {
            cfg,
            tok_emb,
            pos_emb,
            text_proj,
            null_text,
            layers,
            norm: layer_norm(d, vb.pp("norm"))?,
            head: candle_nn::linear(d, cfg.codebook_size, vb.pp("head"))?,
        })
    }

    /// Parameters of the backbone layers only (what differs between Mamba and transformer).
    pub fn backbone_params(&self) -> usize {
        let d = self.cfg.d_model;
        match &self.layers {
            Layers::Mamba(ls) => ls.iter().map(|l| l.param_count()).sum(),
            Layers::Transformer(ls) => ls.len() * TransformerLayer::param_count(d),
        }
    }

    /// FLOPs of the backbone layers for one sequence of `seq_len` positions.
    pub fn backbone_flops(&self) -> usize {
        let d = self.cfg.d_model;
        let t = self.cfg.seq_len();
        match &self.layers {
            Layers::Mamba(ls) => ls.iter().map(|l| l.flops(t)).sum(),
            Layers::Transformer(ls) => ls.len() * TransformerLayer::flops(d, t),
        }
    }

    /// tokens `(B, S)`, text `(B, text_dim)`, keep_text `(B)` of 0/1 → logits `(B, S, K)`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        text: &Tensor,
        keep_text: &Tensor,
        fused: bool,
    ) -> Result<Tensor> {
        let (b, s) = tokens.dims2()?;
        let d = self.cfg.d_model;
        let tok = self.tok_emb.forward(tokens)?;
        let keep = keep_text.reshape((b, 1))?;
        let t = self.text_proj.forward(text)?;
        let null = self.null_text.reshape((1, d))?.broadcast_as((b, d))?;
        let cond = (t.broadcast_mul(&keep)? + null.broadcast_mul(&keep.affine(-1.0, 1.0)?)?)?;
        // slot 0 holds the text; the text is also added to every position (ours)
        let x = tok.slice_assign(&[0..b, 0..1, 0..d], &cond.unsqueeze(1)?)?;
        let mut x = x
            .broadcast_add(&self.pos_emb.narrow(0, 0, s)?.unsqueeze(0)?)?
            .broadcast_add(&cond.unsqueeze(1)?)?;
        match &self.layers {
            Layers::Mamba(ls) => {
                for l in ls {
                    x = if fused {
                        l.forward_fused(&x)?
                    } else {
                        l.forward(&x)?
                    };
                }
            }
            Layers::Transformer(ls) => {
                for l in ls {
                    x = l.forward(&x)?;
                }
            }
        }
        Ok(self.head.forward(&self.norm.forward(&x)?)?)
    }

    /// Lays out items as token rows: `[text slot] [ctx, left-padded] [target, right-padded]`.
    fn layout(&self, items: &[Item], targets: &[Vec<u32>]) -> Vec<u32> {
        let c = self.cfg.ctx_tokens;
        let m = self.cfg.max_tokens;
        let pad = self.cfg.pad_id();
        let mut rows = Vec::with_capacity(items.len() * self.cfg.seq_len());
        for (it, tg) in items.iter().zip(targets) {
            rows.push(pad);
            let ctx = &it.ctx[it.ctx.len().saturating_sub(c)..];
            rows.extend(std::iter::repeat_n(pad, c - ctx.len()));
            rows.extend_from_slice(ctx);
            rows.extend_from_slice(tg);
            rows.extend(std::iter::repeat_n(pad, m - tg.len()));
        }
        rows
    }

    fn text_tensor(items: &[Item], dev: &Device) -> Result<Tensor> {
        let dim = items[0].text.len();
        let flat: Vec<f32> = items.iter().flat_map(|i| i.text.iter().copied()).collect();
        Ok(Tensor::from_vec(flat, (items.len(), dim), dev)?)
    }

    /// The masked-token loss on a batch (see the module doc).
    pub fn loss<R: Rng>(
        &self,
        items: &[Item],
        masking: Masking,
        rng: &mut R,
        dev: &Device,
    ) -> Result<Tensor> {
        let k = self.cfg.codebook_size as u32;
        let off = 1 + self.cfg.ctx_tokens;
        let s = self.cfg.seq_len();
        let mut inputs = Vec::with_capacity(items.len());
        let mut weights = vec![0f32; items.len() * s];
        let mut labels = vec![0u32; items.len() * s];
        for (bi, it) in items.iter().enumerate() {
            let l = it.target.len();
            if l == 0 || l > self.cfg.max_tokens {
                bail!("segment of {l} tokens (max {})", self.cfg.max_tokens);
            }
            let u: f64 = rng.gen();
            let n = ((std::f64::consts::FRAC_PI_2 * u).cos() * l as f64)
                .ceil()
                .clamp(1.0, l as f64) as usize;
            let chosen: Vec<usize> = match masking {
                Masking::Random => {
                    let mut p: Vec<usize> = (0..l).collect();
                    p.shuffle(rng);
                    p.truncate(n);
                    p
                }
                Masking::Keyframe => it.keyframe_order[..n].to_vec(),
            };
            let mut tg = it.target.clone();
            for &p in &chosen {
                labels[bi * s + off + p] = it.target[p];
                weights[bi * s + off + p] = 1.0;
                let r: f64 = rng.gen();
                if r < self.cfg.random_token_frac {
                    tg[p] = rng.gen_range(0..k);
                } else if rng.gen::<f64>() < self.cfg.mask_token_frac {
                    tg[p] = self.cfg.mask_id();
                }
            }
            inputs.push(tg);
        }
        let rows = self.layout(items, &inputs);
        let b = items.len();
        let tokens = Tensor::from_vec(rows, (b, s), dev)?;
        let keep: Vec<f32> = (0..b)
            .map(|_| {
                if rng.gen::<f64>() < self.cfg.cond_drop {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let keep = Tensor::from_vec(keep, b, dev)?;
        let logits = self.forward(&tokens, &Self::text_tensor(items, dev)?, &keep, false)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let labels = Tensor::from_vec(labels, (b, s, 1), dev)?;
        let nll = logp.gather(&labels, D::Minus1)?.squeeze(D::Minus1)?.neg()?;
        let w = Tensor::from_vec(weights, (b, s), dev)?;
        let total = w.sum_all()?;
        Ok((nll * w)?.sum_all()?.broadcast_div(&total)?)
    }

    /// Fills in the segment tokens of every item (their `target` gives only the length) by
    /// iterative confidence-based decoding with classifier-free guidance.
    pub fn generate<R: Rng>(
        &self,
        items: &[Item],
        opts: &DecodeOptions,
        rng: &mut R,
        dev: &Device,
    ) -> Result<Vec<Vec<u32>>> {
        let b = items.len();
        let s = self.cfg.seq_len();
        let off = 1 + self.cfg.ctx_tokens;
        let kk = self.cfg.codebook_size;
        let lens: Vec<usize> = items.iter().map(|i| i.target.len()).collect();
        if lens.iter().any(|&l| l == 0 || l > self.cfg.max_tokens) {
            bail!("segment lengths must be 1..={} tokens", self.cfg.max_tokens);
        }
        let mut cur: Vec<Vec<u32>> = lens.iter().map(|&l| vec![self.cfg.mask_id(); l]).collect();
        let mut fixed: Vec<Vec<bool>> = lens.iter().map(|&l| vec![false; l]).collect();
        let text = Self::text_tensor(items, dev)?;
        let text2 = Tensor::cat(&[&text, &text], 0)?;
        let keep = Tensor::cat(
            &[
                Tensor::ones(b, DType::F32, dev)?,
                Tensor::zeros(b, DType::F32, dev)?,
            ],
            0,
        )?;
        let fused = self.cfg.backbone == Backbone::Mamba;
        let top_k = ((kk as f64 * opts.top_k_frac).ceil() as usize).max(1);
        for step in 0..opts.steps {
            let rows = self.layout(items, &cur);
            let tokens = Tensor::from_vec(rows, (b, s), dev)?;
            let tokens2 = Tensor::cat(&[&tokens, &tokens], 0)?;
            let logits = self.forward(&tokens2, &text2, &keep, fused)?;
            let cond = logits.narrow(0, 0, b)?;
            let unc = logits.narrow(0, b, b)?;
            let guided = (&unc + ((cond - &unc)? * opts.guidance)?)?;
            let guided = (guided / opts.temperature)?.to_vec3::<f32>()?;
            let frac = (std::f64::consts::FRAC_PI_2 * (step + 1) as f64 / opts.steps as f64).cos();
            for bi in 0..b {
                let l = lens[bi];
                let mut conf = vec![f32::INFINITY; l];
                for p in 0..l {
                    if fixed[bi][p] {
                        continue;
                    }
                    let (tok, c) = draw_top_k(&guided[bi][off + p], top_k, rng);
                    cur[bi][p] = tok;
                    conf[p] = c;
                }
                remask_least_confident(
                    &mut cur[bi],
                    &mut fixed[bi],
                    &conf,
                    frac,
                    self.cfg.mask_id(),
                );
            }
        }
        Ok(cur)
    }
}

/// Samples from the softmax of the `top_k` largest logits; returns the token and its
/// probability under that filtered distribution (the confidence used for re-masking).
pub fn draw_top_k<R: Rng>(row: &[f32], top_k: usize, rng: &mut R) -> (u32, f32) {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &c| row[c].total_cmp(&row[a]));
    idx.truncate(top_k.max(1));
    let mx = row[idx[0]];
    let ws: Vec<f32> = idx.iter().map(|&i| (row[i] - mx).exp()).collect();
    let z: f32 = ws.iter().sum();
    let mut r = rng.gen::<f32>() * z;
    let mut pick = idx.len() - 1;
    for (j, w) in ws.iter().enumerate() {
        if r < *w {
            pick = j;
            break;
        }
        r -= w;
    }
    (idx[pick] as u32, ws[pick] / z)
}

/// One round of confidence-based decoding: the `frac · len` least confident positions not yet
/// fixed go back to `mask_id`; every other position is fixed from now on.
pub fn remask_least_confident(
    cur: &mut [u32],
    fixed: &mut [bool],
    conf: &[f32],
    frac: f64,
    mask_id: u32,
) {
    let l = cur.len();
    let n_mask = (frac * l as f64).floor() as usize;
    let mut order: Vec<usize> = (0..l).collect();
    order.sort_by(|&a, &c| conf[a].total_cmp(&conf[c]));
    for (rank, &p) in order.iter().enumerate() {
        if rank < n_mask && !fixed[p] {
            cur[p] = mask_id;
        } else {
            fixed[p] = true;
        }
    }
}

/// Decoding settings; `Default` is MoMask's evaluation setting except the step count and
/// guidance scale, scaled for our tiny models (ours, knobs).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct DecodeOptions {
    pub steps: usize,
    pub guidance: f64,
    pub temperature: f64,
    pub top_k_frac: f64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            steps: 10,
            guidance: 2.0,
            temperature: 1.0,
            top_k_frac: 0.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use rand::SeedableRng;

    fn toy_items(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<Item> {
        // text one-hot of a class c; the segment repeats token c (so it is learnable)
        (0..n)
            .map(|_| {
                let c = rng.gen_range(0..4usize);
                let mut text = vec![0f32; 4];
                text[c] = 1.0;
                let l = rng.gen_range(3..6);
                Item {
                    ctx: vec![],
                    target: vec![c as u32; l],
                    text,
                    keyframe_order: (0..l).collect(),
                }
            })
            .collect()
    }

    #[test]
    fn mamba_and_transformer_generators_learn_a_text_to_token_map() -> Result<()> {
        let dev = Device::Cpu;
        for backbone in [Backbone::Mamba, Backbone::Transformer] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            let mut cfg = GeneratorConfig::new(backbone, 8, 4);
            cfg.d_model = 16;
            cfg.layers = 1;
            cfg.max_tokens = 6;
            cfg.ctx_tokens = 2;
            cfg.cond_drop = 0.0;
            let g = MaskedGenerator::new(cfg, vb)?;
            let tc = crate::train::TrainConfig {
                steps: 120,
                lr: 1e-2,
                warmup: 10,
                weight_decay: 0.0,
                checkpoint_every: 1000,
            };
            let losses = crate::train::train_loop(&varmap, &tc, None, "toy", |_| {
                let items = toy_items(16, &mut rng);
                g.loss(&items, Masking::Random, &mut rng, &dev)
            })?;
            let (first, last) = crate::train::loss_drop(&losses, 10);
            assert!(last < 0.3 * first, "{backbone:?}: loss {first} -> {last}");
            let items = toy_items(8, &mut rng);
            let out = g.generate(
                &items,
                &DecodeOptions {
                    guidance: 1.0,
                    ..Default::default()
                },
                &mut rng,
                &dev,
            )?;
            let mut right = 0;
            let mut total = 0;
            for (it, o) in items.iter().zip(&out) {
                assert_eq!(o.len(), it.target.len());
                right += o.iter().zip(&it.target).filter(|(a, b)| a == b).count();
                total += o.len();
            }
            assert!(
                right as f32 > 0.8 * total as f32,
                "{backbone:?}: {right}/{total}"
            );
        }
        Ok(())
    }
}
