//! Motion tokenizer: a 1-D convolutional VQ-VAE that turns every 4 frames of motion features
//! into one discrete token (two stride-2 convolutions down, two nearest-neighbour upsamplings
//! back), with frugal-nn's EMA vector quantiser in the middle.
//!
//! Loss: reconstruction (MSE of normalised features) + 0.5 × velocity reconstruction (MSE of
//! frame differences) + commitment, the usual motion-tokenizer recipe, scaled down for CPU.
//! Features are normalised per channel with the training set's mean and standard deviation,
//! stored in the checkpoint with the weights.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, VarBuilder, VarMap};
use frugal_nn::vq::{VectorQuantizer, VqConfig};
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenizerConfig {
    pub in_dim: usize,
    pub width: usize,
    pub code_dim: usize,
    pub codebook_size: usize,
    /// Residual quantiser layers (1 = plain VQ).
    pub vq_layers: usize,
    pub commitment: f32,
    pub velocity_weight: f64,
}

impl TokenizerConfig {
    pub fn for_dim(in_dim: usize) -> Self {
        Self {
            in_dim,
            width: 64,
            code_dim: 32,
            codebook_size: 128,
            vq_layers: 1,
            commitment: 0.02,
            velocity_weight: 0.5,
        }
    }
}

/// Temporal downsampling factor (two stride-2 levels).
pub const DOWN: usize = 4;

struct ResBlock {
    c1: Conv1d,
    c2: Conv1d,
}

impl ResBlock {
    fn new(w: usize, dilation: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c1: candle_nn::conv1d(
                w,
                w,
                3,
                Conv1dConfig {
                    padding: dilation,
                    dilation,
                    ..Default::default()
                },
                vb.pp("c1"),
            )?,
            c2: candle_nn::conv1d(w, w, 1, Default::default(), vb.pp("c2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c1.forward(&x.relu()?)?;
        let h = self.c2.forward(&h.relu()?)?;
        Ok((x + h)?)
    }
}

pub struct MotionTokenizer {
    pub cfg: TokenizerConfig,
    enc_in: Conv1d,
    enc_down: Vec<(Conv1d, ResBlock)>,
    enc_out: Conv1d,
    dec_in: Conv1d,
    dec_up: Vec<(ResBlock, Conv1d)>,
    dec_out: Conv1d,
    pub vq: VectorQuantizer,
    mean: Tensor,
    std: Tensor,
}

/// Output of a training forward pass.
pub struct TokenizerLoss {
    pub loss: Tensor,
    pub recon: f32,
}

impl MotionTokenizer {
    pub fn new(cfg: TokenizerConfig, varmap: &VarMap, dev: &Device) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev).pp("tok");
        let p1 = Conv1dConfig {
            padding: 1,
            ..Default::default()
        };
        let s2 = Conv1dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let w = cfg.width;
        let enc_in = candle_nn::conv1d(cfg.in_dim, w, 3, p1, vb.pp("enc_in"))?;
        let mut enc_down = Vec::new();
        let mut dec_up = Vec::new();
        for l in 0..2 {
            enc_down.push((
                candle_nn::conv1d(w, w, 4, s2, vb.pp(format!("enc_down{l}")))?,
                ResBlock::new(w, 1 + 2 * l, vb.pp(format!("enc_res{l}")))?,
            ));
            dec_up.push((
                ResBlock::new(w, 3 - 2 * l, vb.pp(format!("dec_res{l}")))?,
                candle_nn::conv1d(w, w, 3, p1, vb.pp(format!("dec_up{l}")))?,
            ));
        }
        let enc_out = candle_nn::conv1d(w, cfg.code_dim, 3, p1, vb.pp("enc_out"))?;
        let dec_in = candle_nn::conv1d(cfg.code_dim, w, 3, p1, vb.pp("dec_in"))?;
        let dec_out = candle_nn::conv1d(w, cfg.in_dim, 3, p1, vb.pp("dec_out"))?;
        let vq = VectorQuantizer::new(
            VqConfig {
                codebook_size: cfg.codebook_size,
                dim: cfg.code_dim,
                layers: cfg.vq_layers,
                commitment: cfg.commitment,
                ..Default::default()
            },
            varmap,
            "tok.vq",
        )?;
        let mean = vb.get_with_hints(cfg.in_dim, "norm_mean", candle_nn::Init::Const(0.0))?;
        let std = vb.get_with_hints(cfg.in_dim, "norm_std", candle_nn::Init::Const(1.0))?;
        Ok(Self {
            cfg,
            enc_in,
            enc_down,
            enc_out,
            dec_in,
            dec_up,
            dec_out,
            vq,
            mean,
            std,
        })
    }

    /// Sets the normalisation from training frames (call once before training).
    pub fn fit_normalization(&self, frames: &[Vec<f32>]) -> Result<()> {
        let c = self.cfg.in_dim;
        let n = frames.len().max(1) as f32;
        let mut mean = vec![0f32; c];
        for f in frames {
            for (m, v) in mean.iter_mut().zip(f) {
                *m += v / n;
            }
        }
        let mut var = vec![0f32; c];
        for f in frames {
            for k in 0..c {
                var[k] += (f[k] - mean[k]).powi(2) / n;
            }
        }
        // A channel that barely moves in the fitting set must not be blown up by its tiny
        // spread: the floor is a share of the channels' typical spread (ours: 5 % of the
        // median), never below 1e-3.
        let mut spread: Vec<f32> = var.iter().map(|v| v.sqrt()).collect();
        spread.sort_by(f32::total_cmp);
        let floor = (0.05 * spread.get(spread.len() / 2).copied().unwrap_or(0.0)).max(1e-3);
        let std: Vec<f32> = var.iter().map(|v| v.sqrt().max(floor)).collect();
        candle_core::Var::from_tensor(&self.mean)?
            .set(&Tensor::new(mean.as_slice(), self.mean.device())?)?;
        candle_core::Var::from_tensor(&self.std)?
            .set(&Tensor::new(std.as_slice(), self.std.device())?)?;
        Ok(())
    }

    /// `(B, T, C)` raw → normalised.
    pub fn normalize(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_sub(&self.mean.detach())?
            .broadcast_div(&self.std.detach())?)
    }
    pub fn denormalize(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_mul(&self.std.detach())?
            .broadcast_add(&self.mean.detach())?)
    }

    /// Normalised `(B, T, C)` → latents `(B, T/4, code_dim)`.
    fn encode_latent(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .enc_in
            .forward(&x.transpose(1, 2)?.contiguous()?)?
            .relu()?;
        let mut h = h;
        for (down, res) in &self.enc_down {
            h = res.forward(&down.forward(&h)?)?;
        }
        Ok(self
            .enc_out
            .forward(&h.relu()?)?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Latents `(B, T/4, code_dim)` → normalised features `(B, T, C)`.
    fn decode_latent(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self
            .dec_in
            .forward(&z.transpose(1, 2)?.contiguous()?)?
            .relu()?;
        for (res, conv) in &self.dec_up {
            h = res.forward(&h)?;
            let t = h.dim(2)?;
            h = conv.forward(&h.upsample_nearest1d(2 * t)?)?.relu()?;
        }
        Ok(self.dec_out.forward(&h)?.transpose(1, 2)?.contiguous()?)
    }

    /// Training forward on a raw `(B, T, C)` batch (T a multiple of 4).
    pub fn loss<R: Rng>(&self, raw: &Tensor, rng: &mut R) -> Result<TokenizerLoss> {
        let (b, t, _) = raw.dims3()?;
        if t % DOWN != 0 {
            bail!("tokenizer: length {t} is not a multiple of {DOWN}");
        }
        let x = self.normalize(raw)?;
        let z = self.encode_latent(&x)?;
        let tq = t / DOWN;
        let q = self
            .vq
            .forward(&z.reshape((b * tq, self.cfg.code_dim))?, true, rng)?;
        let zq = q.z_q.reshape((b, tq, self.cfg.code_dim))?;
        let y = self.decode_latent(&zq)?;
        let recon = (&y - &x)?.sqr()?.mean_all()?;
        let vel = |v: &Tensor| -> candle_core::Result<Tensor> {
            v.narrow(1, 1, t - 1)? - v.narrow(1, 0, t - 1)?
        };
        let vloss = (vel(&y)? - vel(&x)?)?.sqr()?.mean_all()?;
        let loss = ((&recon + (vloss * self.cfg.velocity_weight)?)? + q.commit_loss)?;
        Ok(TokenizerLoss {
            recon: recon.to_scalar::<f32>()?,
            loss,
        })
    }

    /// Raw frames `(T, C)` (T a multiple of 4) → one token per 4 frames (first quantiser layer).
    pub fn encode(&self, frames: &[Vec<f32>]) -> Result<Vec<Vec<u32>>> {
        let t = frames.len();
        if t == 0 || t % DOWN != 0 {
            bail!("tokenizer: length {t} is not a positive multiple of {DOWN}");
        }
        let dev = self.mean.device();
        let x = crate::text::batch_tensor(&[frames.to_vec()], dev)?;
        let z = self.encode_latent(&self.normalize(&x)?)?;
        let mut rng = rand::thread_rng();
        let q = self.vq.forward(&z.squeeze(0)?, false, &mut rng)?;
        Ok(q.codes)
    }

    /// Code vectors (summed over quantiser layers) of tokens, `(N, code_dim)` as rows.
    pub fn code_vectors(&self, codes: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        Ok(self.vq.decode_codes(codes)?.to_vec2::<f32>()?)
    }

    /// Tokens → raw frames `(4·N, C)`.
    pub fn decode(&self, codes: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let n = codes.len();
        let z = self
            .vq
            .decode_codes(codes)?
            .reshape((1, n, self.cfg.code_dim))?;
        let y = self.denormalize(&self.decode_latent(&z)?)?;
        Ok(y.squeeze(0)?.to_vec2::<f32>()?)
    }

    /// Tokens → raw frames using only the first `layers` quantiser layers (the base-only
    /// reconstruction is `layers = 1`).
    pub fn decode_first_layers(&self, codes: &[Vec<u32>], layers: usize) -> Result<Vec<Vec<f32>>> {
        let n = codes.len();
        let layers = layers.clamp(1, self.cfg.vq_layers);
        let dev = self.mean.device();
        let mut z = Tensor::zeros((n, self.cfg.code_dim), DType::F32, dev)?;
        for l in 0..layers {
            let idx: Vec<u32> = codes.iter().map(|c| c[l]).collect();
            let idx = Tensor::from_vec(idx, n, dev)?;
            z = (z + self.vq.codebook(l).index_select(&idx, 0)?)?;
        }
        let y =
            self.denormalize(&self.decode_latent(&z.reshape((1, n, self.cfg.code_dim))?)?)?;
        Ok(y.squeeze(0)?.to_vec2::<f32>()?)
    }

    /// Reconstructs raw frames through encode → quantise → decode.
    pub fn reconstruct(&self, frames: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let codes = self.encode(frames)?;
        self.decode(&codes)
    }
}

/// Random `window`-frame crops (a multiple of 4) of the given frame sequences, as one batch.
pub fn random_crops<R: Rng>(
    seqs: &[Vec<Vec<f32>>],
    window: usize,
    batch: usize,
    rng: &mut R,
    dev: &Device,
) -> Result<Tensor> {
    let usable: Vec<&Vec<Vec<f32>>> = seqs.iter().filter(|s| s.len() >= window).collect();
    if usable.is_empty() {
        bail!("no sequence has {window} frames");
    }
    let crops: Vec<Vec<Vec<f32>>> = (0..batch)
        .map(|_| {
            let s = usable[rng.gen_range(0..usable.len())];
            let start = rng.gen_range(0..=s.len() - window);
            s[start..start + window].to_vec()
        })
        .collect();
    crate::text::batch_tensor(&crops, dev)
}
