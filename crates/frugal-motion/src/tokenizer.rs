//! Motion tokenizer: a 1-D convolutional VQ-VAE that turns every 4 frames of motion features
//! into one discrete token (two stride-2 convolutions down, two nearest-neighbour upsamplings
//! back), with frugal-nn's EMA vector quantiser in the middle.
//!
//! Loss: reconstruction (MSE of normalised features) + 0.5 × velocity reconstruction (MSE of
//! frame differences) + commitment, the usual motion-tokenizer recipe, scaled down for CPU.
//! Features are normalised per channel with the training set's mean and standard deviation,
//! stored in the checkpoint with the weights.

use crate::conv::{Conv1dLayer, ConvInit, ConvPath};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv1dConfig, VarBuilder, VarMap};
use frugal_nn::vq::{VectorQuantizer, VqConfig};
use rand::Rng;

/// How the codebooks start before training.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum CodebookInit {
    /// Small random codes near the origin (frugal-nn's quantiser default). Encoder outputs of a
    /// fresh network lie far from them, so one code wins every vector and the rest never move.
    Random,
    /// Codes copied from the encoder outputs of the first training batch (layer by layer, each
    /// residual layer from what the layers before it leave over), as MoMask's EMA-reset
    /// quantiser does.
    FirstBatch,
}

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
    /// EMA decay of the code counts and sums (MoMask: 0.99).
    pub ema_decay: f32,
    /// A code whose EMA count (vectors per step) falls below this is re-seeded from an encoder
    /// output of the batch. MoMask resets below 1.0; 0.01 (frugal-nn's default) lets a dead
    /// code linger about 460 steps at decay 0.99 before it is reset, which is most of a
    /// CPU-sized run.
    pub dead_threshold: f32,
    pub codebook_init: CodebookInit,
    /// Probability that a training step quantises with only the first `n ~ U{1..V}` residual
    /// layers (MoMask: 0.2), so the base layer alone must already decode to a motion. No effect
    /// with one layer.
    pub quantizer_dropout: f32,
    /// Initial convolution weights (ours: the paper is silent; the reference code inherits
    /// PyTorch's default).
    pub conv_init: ConvInit,
    /// How convolutions are computed; [`ConvPath::Candle`] trains with wrong gradients (see
    /// [`crate::conv`]) and is kept only to reproduce the collapse.
    pub conv_path: ConvPath,
}

impl TokenizerConfig {
    /// The default sizes (scaled down for CPU) with MoMask's quantiser settings.
    pub fn for_dim(in_dim: usize) -> Self {
        Self {
            in_dim,
            width: 64,
            code_dim: 32,
            codebook_size: 128,
            vq_layers: 1,
            commitment: 0.02,
            velocity_weight: 0.5,
            ema_decay: 0.99,
            dead_threshold: 1.0,
            codebook_init: CodebookInit::FirstBatch,
            quantizer_dropout: 0.2,
            conv_init: ConvInit::TorchDefault,
            conv_path: ConvPath::Unfolded,
        }
    }

    /// The settings the tokenizer had before its fixes (candle's convolution op and its
    /// Kaiming-normal initialisation,
    /// random codebook, reset threshold 0.01, no quantiser dropout), kept to reproduce the
    /// collapse.
    pub fn legacy(in_dim: usize) -> Self {
        Self {
            dead_threshold: 0.01,
            codebook_init: CodebookInit::Random,
            quantizer_dropout: 0.0,
            conv_init: ConvInit::KaimingNormal,
            conv_path: ConvPath::Candle,
            ..Self::for_dim(in_dim)
        }
    }
}

fn conv(
    (init, path): (ConvInit, ConvPath),
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: Conv1dConfig,
    vb: VarBuilder,
) -> candle_core::Result<Conv1dLayer> {
    Conv1dLayer::new(c_in, c_out, k, cfg, init, path, vb)
}

/// Temporal downsampling factor (two stride-2 levels).
pub const DOWN: usize = 4;

struct ResBlock {
    c1: Conv1dLayer,
    c2: Conv1dLayer,
}

impl ResBlock {
    fn new(w: usize, dilation: usize, init: (ConvInit, ConvPath), vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c1: conv(
                init,
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
            c2: conv(init, w, w, 1, Default::default(), vb.pp("c2"))?,
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
    enc_in: Conv1dLayer,
    enc_down: Vec<(Conv1dLayer, ResBlock)>,
    enc_out: Conv1dLayer,
    dec_in: Conv1dLayer,
    dec_up: Vec<(ResBlock, Conv1dLayer)>,
    dec_out: Conv1dLayer,
    pub vq: VectorQuantizer,
    /// The quantiser's variables per layer, for the data-driven initialisation.
    books: Vec<BookVars>,
    mean: Tensor,
    std: Tensor,
}

struct BookVars {
    embed: Var,
    ema_sum: Var,
    ema_count: Var,
}

fn nearest_row(codes: &[Vec<f32>], x: &[f32]) -> usize {
    let d = |c: &Vec<f32>| c.iter().zip(x).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
    (0..codes.len())
        .min_by(|&a, &b| d(&codes[a]).total_cmp(&d(&codes[b])))
        .unwrap_or(0)
}

/// Output of a training forward pass.
pub struct TokenizerLoss {
    pub loss: Tensor,
    /// MSE of normalised features.
    pub recon: f32,
    /// MSE of frame differences of normalised features.
    pub velocity: f32,
    /// Weighted commitment term.
    pub commit: f32,
    /// Codes chosen for the batch, `[vector][layer]`.
    pub codes: Vec<Vec<u32>>,
    /// Dead codes re-seeded in this step.
    pub reset: usize,
    /// Quantiser layers used in this step (fewer than all under quantiser dropout).
    pub layers_used: usize,
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
        let init = (cfg.conv_init, cfg.conv_path);
        let enc_in = conv(init, cfg.in_dim, w, 3, p1, vb.pp("enc_in"))?;
        let mut enc_down = Vec::new();
        let mut dec_up = Vec::new();
        for l in 0..2 {
            enc_down.push((
                conv(init, w, w, 4, s2, vb.pp(format!("enc_down{l}")))?,
                ResBlock::new(w, 1 + 2 * l, init, vb.pp(format!("enc_res{l}")))?,
            ));
            dec_up.push((
                ResBlock::new(w, 3 - 2 * l, init, vb.pp(format!("dec_res{l}")))?,
                conv(init, w, w, 3, p1, vb.pp(format!("dec_up{l}")))?,
            ));
        }
        let enc_out = conv(init, w, cfg.code_dim, 3, p1, vb.pp("enc_out"))?;
        let dec_in = conv(init, cfg.code_dim, w, 3, p1, vb.pp("dec_in"))?;
        let dec_out = conv(init, w, cfg.in_dim, 3, p1, vb.pp("dec_out"))?;
        let vq = VectorQuantizer::new(
            VqConfig {
                codebook_size: cfg.codebook_size,
                dim: cfg.code_dim,
                layers: cfg.vq_layers,
                commitment: cfg.commitment,
                ema_decay: cfg.ema_decay,
                dead_threshold: cfg.dead_threshold,
            },
            varmap,
            "tok.vq",
        )?;
        let books = {
            let data = varmap.data().lock().expect("varmap lock");
            let get = |l: usize, n: &str| -> Result<Var> {
                data.get(&format!("tok.vq.layer{l}.{n}"))
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("tokenizer: quantiser variable {n} missing"))
            };
            (0..cfg.vq_layers)
                .map(|l| {
                    Ok(BookVars {
                        embed: get(l, "embed")?,
                        ema_sum: get(l, "ema_sum")?,
                        ema_count: get(l, "ema_count")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
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
            books,
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
        let zf = z.reshape((b * tq, self.cfg.code_dim))?;
        let q = self.vq.forward(&zf, true, rng)?;
        let v = self.cfg.vq_layers;
        let layers_used = if v > 1 && rng.gen::<f32>() < self.cfg.quantizer_dropout {
            rng.gen_range(1..=v)
        } else {
            v
        };
        let zq = if layers_used == v {
            q.z_q
        } else {
            // quantiser dropout: the sum of the first layers' codes, straight-through as in
            // the quantiser (ours: the EMA update still sees every layer)
            let part = self.sum_of_layers(&q.codes, layers_used)?;
            (&zf + (part - &zf)?.detach())?
        };
        let zq = zq.reshape((b, tq, self.cfg.code_dim))?;
        let y = self.decode_latent(&zq)?;
        let recon = (&y - &x)?.sqr()?.mean_all()?;
        let vel = |v: &Tensor| -> candle_core::Result<Tensor> {
            v.narrow(1, 1, t - 1)? - v.narrow(1, 0, t - 1)?
        };
        let vloss = (vel(&y)? - vel(&x)?)?.sqr()?.mean_all()?;
        let loss = ((&recon + (&vloss * self.cfg.velocity_weight)?)? + &q.commit_loss)?;
        Ok(TokenizerLoss {
            recon: recon.to_scalar::<f32>()?,
            velocity: vloss.to_scalar::<f32>()?,
            commit: q.commit_loss.to_scalar::<f32>()?,
            codes: q.codes,
            reset: q.reset,
            layers_used,
            loss,
        })
    }

    /// Summed code vectors of the first `layers` quantiser layers, `(N, code_dim)`.
    fn sum_of_layers(&self, codes: &[Vec<u32>], layers: usize) -> Result<Tensor> {
        let n = codes.len();
        let dev = self.mean.device();
        let mut z = Tensor::zeros((n, self.cfg.code_dim), DType::F32, dev)?;
        for l in 0..layers.clamp(1, self.cfg.vq_layers) {
            let idx: Vec<u32> = codes.iter().map(|c| c[l]).collect();
            let idx = Tensor::from_vec(idx, n, dev)?;
            z = (z + self.vq.codebook(l).index_select(&idx, 0)?)?;
        }
        Ok(z)
    }

    /// Seeds the codebooks from the encoder outputs of a raw `(B, T, C)` batch when the config
    /// asks for it (call once before training, after [`Self::fit_normalization`]): each layer's
    /// codes are distinct random rows of what the layers before it leave over (rows repeat
    /// only when the batch has fewer vectors than codes). Counts restart at one.
    pub fn init_codebooks<R: Rng>(&self, raw: &Tensor, rng: &mut R) -> Result<()> {
        if self.cfg.codebook_init == CodebookInit::Random {
            return Ok(());
        }
        let (b, t, _) = raw.dims3()?;
        if t % DOWN != 0 {
            bail!("tokenizer: length {t} is not a multiple of {DOWN}");
        }
        let z = self
            .encode_latent(&self.normalize(raw)?)?
            .reshape((b * t / DOWN, self.cfg.code_dim))?
            .detach();
        let mut residual = z.to_vec2::<f32>()?;
        let k = self.cfg.codebook_size;
        let dev = self.mean.device();
        for (l, book) in self.books.iter().enumerate() {
            let mut rows: Vec<usize> = (0..residual.len()).collect();
            rand::seq::SliceRandom::shuffle(rows.as_mut_slice(), rng);
            let pick: Vec<usize> = (0..k).map(|i| rows[i % rows.len()]).collect();
            let flat: Vec<f32> = pick.iter().flat_map(|&r| residual[r].clone()).collect();
            let embed = Tensor::from_vec(flat, (k, self.cfg.code_dim), dev)?;
            book.embed.set(&embed)?;
            book.ema_sum.set(&embed)?;
            book.ema_count.set(&Tensor::ones(k, DType::F32, dev)?)?;
            let codes = self.vq.codebook(l).to_vec2::<f32>()?;
            for r in residual.iter_mut() {
                let best = nearest_row(&codes, r);
                for (x, c) in r.iter_mut().zip(&codes[best]) {
                    *x -= c;
                }
            }
        }
        Ok(())
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
        let z = self.sum_of_layers(codes, layers)?;
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

/// Perplexity `exp(H)` of the code histogram of one quantiser layer: the number of equally used
/// codes that would give the same entropy (1 = one code for everything).
pub fn code_perplexity(codes: &[Vec<u32>], layer: usize, codebook_size: usize) -> f64 {
    let mut hist = vec![0usize; codebook_size];
    for c in codes {
        if let Some(&i) = c.get(layer) {
            if (i as usize) < codebook_size {
                hist[i as usize] += 1;
            }
        }
    }
    let n: usize = hist.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let h: f64 = hist
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.ln()
        })
        .sum();
    h.exp()
}

/// How well a tokenizer reconstructs whole sequences, in normalised feature units.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ReconReport {
    /// Mean squared error of encode → decode.
    pub mse: f64,
    /// Mean squared error of predicting the normalisation mean (the mean pose of the fitting
    /// set) for every frame: what a decoder that ignores its codes can reach at best, roughly.
    pub mse_mean_pose: f64,
    /// Mean squared error when every sequence is decoded from codes drawn at random from all
    /// the sequences' codes: close to `mse` means the decoder ignores which code it gets.
    pub mse_shuffled_codes: f64,
    /// Perplexity of the base layer's codes over all the sequences.
    pub perplexity: f64,
    /// Distinct base-layer codes used.
    pub codes_used: usize,
}

impl ReconReport {
    /// `mse / mse_mean_pose`: 1 = no better than the mean pose, 0 = perfect.
    pub fn relative_error(&self) -> f64 {
        self.mse / self.mse_mean_pose.max(1e-12)
    }
}

/// Reconstruction statistics of `tok` on sequences of raw frames (each a multiple of 4 long).
pub fn reconstruction_report<R: Rng>(
    tok: &MotionTokenizer,
    seqs: &[Vec<Vec<f32>>],
    rng: &mut R,
) -> Result<ReconReport> {
    let dev = Device::Cpu;
    let norm = |fr: &[Vec<f32>]| -> Result<Vec<Vec<f32>>> {
        let t = crate::text::batch_tensor(&[fr.to_vec()], &dev)?;
        Ok(tok.normalize(&t)?.squeeze(0)?.to_vec2::<f32>()?)
    };
    let sq = |a: &[Vec<f32>], b: &[Vec<f32>]| -> f64 {
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| {
                x.iter()
                    .zip(y)
                    .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
            })
            .sum()
    };
    let codes: Vec<Vec<Vec<u32>>> = seqs.iter().map(|s| tok.encode(s)).collect::<Result<_>>()?;
    let all: Vec<Vec<u32>> = codes.iter().flatten().cloned().collect();
    let (mut e_rec, mut e_mean, mut e_shuf, mut n) = (0f64, 0f64, 0f64, 0usize);
    for (s, c) in seqs.iter().zip(&codes) {
        let x = norm(s)?;
        let rec = norm(&tok.decode(c)?)?;
        let shuffled: Vec<Vec<u32>> = (0..c.len())
            .map(|_| all[rng.gen_range(0..all.len())].clone())
            .collect();
        let shuf = norm(&tok.decode(&shuffled)?)?;
        e_rec += sq(&x, &rec);
        e_shuf += sq(&x, &shuf);
        e_mean += x.iter().flatten().map(|v| (*v as f64).powi(2)).sum::<f64>();
        n += x.len() * tok.cfg.in_dim;
    }
    let n = n.max(1) as f64;
    let used: std::collections::BTreeSet<u32> = all.iter().map(|c| c[0]).collect();
    Ok(ReconReport {
        mse: e_rec / n,
        mse_mean_pose: e_mean / n,
        mse_shuffled_codes: e_shuf / n,
        perplexity: code_perplexity(&all, 0, tok.cfg.codebook_size),
        codes_used: used.len(),
    })
}

/// Budget of a tokenizer training run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenizerTraining {
    pub steps: usize,
    /// Crops per step.
    pub batch: usize,
    /// Frames per crop (a multiple of 4).
    pub window: usize,
    pub lr: f64,
    pub warmup: usize,
}

/// Trains a tokenizer on sequences of raw frames. When there is no checkpoint to resume from, it
/// first fits the normalisation to all frames and seeds the codebooks from a first batch (as
/// the config says); with `ckpt` it resumes and saves. `on_step` sees every step's loss parts
/// (before the optimiser step). Returns the loss per step.
pub fn train_tokenizer<R: Rng>(
    tok: &MotionTokenizer,
    varmap: &VarMap,
    seqs: &[Vec<Vec<f32>>],
    budget: &TokenizerTraining,
    ckpt: Option<&std::path::Path>,
    rng: &mut R,
    mut on_step: impl FnMut(usize, &TokenizerLoss) -> Result<()>,
) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    if budget.window % DOWN != 0 || budget.window == 0 {
        bail!(
            "tokenizer window {} is not a positive multiple of {DOWN}",
            budget.window
        );
    }
    if !ckpt.is_some_and(|c| c.is_file()) {
        let all: Vec<Vec<f32>> = seqs.iter().flatten().cloned().collect();
        if all.is_empty() {
            bail!("tokenizer: no training frames");
        }
        tok.fit_normalization(&all)?;
        let first = random_crops(seqs, budget.window, budget.batch, rng, &dev)?;
        tok.init_codebooks(&first, rng)?;
    }
    let tc = crate::train::TrainConfig {
        steps: budget.steps,
        lr: budget.lr,
        warmup: budget.warmup,
        weight_decay: 0.0,
        checkpoint_every: 300,
    };
    crate::train::train_loop(varmap, &tc, ckpt, "tokenizer", |step| {
        let x = random_crops(seqs, budget.window, budget.batch, rng, &dev)?;
        let l = tok.loss(&x, rng)?;
        on_step(step, &l)?;
        Ok(l.loss)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{build_dataset, DataConfig};
    use rand::SeedableRng;

    type Frames = Vec<Vec<Vec<f32>>>;

    fn sequences(n_train: usize, n_test: usize) -> (Frames, Frames) {
        let ds = build_dataset(0, n_train, n_test, &DataConfig::default());
        let f = |s: &crate::data::Sequence| -> Vec<Vec<f32>> {
            s.features.iter().map(|x| x.to_vec()).collect()
        };
        (
            ds.train.iter().map(f).collect(),
            ds.test.iter().map(f).collect(),
        )
    }

    /// The collapse this guards against: a tokenizer whose loss falls while every sequence is
    /// decoded to about the mean pose from one or two codes. A tiny one trained for seconds must
    /// spread its codes (perplexity), reconstruct held-out motion far better than the mean
    /// pose, and depend on its codes (shuffling them must hurt).
    #[test]
    fn tiny_tokenizer_uses_its_codebook_and_reconstructs_held_out_motion() -> Result<()> {
        let (train, test) = sequences(40, 8);
        let vm = VarMap::new();
        let mut cfg = TokenizerConfig::for_dim(crate::skeleton::FEATURE_DIM);
        cfg.width = 32;
        cfg.code_dim = 16;
        cfg.codebook_size = 32;
        let tok = MotionTokenizer::new(cfg, &vm, &Device::Cpu)?;
        let budget = TokenizerTraining {
            steps: 150,
            batch: 16,
            window: 32,
            lr: 1e-3,
            warmup: 20,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut resets = 0;
        train_tokenizer(&tok, &vm, &train, &budget, None, &mut rng, |_, l| {
            resets += l.reset;
            Ok(())
        })?;
        let r = reconstruction_report(&tok, &test, &mut rng)?;
        eprintln!("{r:?}, resets {resets}");
        assert!(r.perplexity > 8.0, "codebook perplexity {r:?}");
        // Measured: 0.41 on one thread and 0.60 in the full suite, where other thread counts
        // change the float order of the parallel matmuls and so the training path. The legacy
        // settings give 1.02 (perplexity 1.2), so 0.75 still separates the two.
        assert!(
            r.relative_error() < 0.75,
            "reconstruction vs mean pose {r:?}"
        );
        assert!(
            r.mse_shuffled_codes > 1.5 * r.mse,
            "decoding shuffled codes is about as good: the decoder ignores its codes {r:?}"
        );
        Ok(())
    }

    #[test]
    fn first_batch_init_puts_every_code_on_an_encoder_output() -> Result<()> {
        let (train, _) = sequences(8, 1);
        let vm = VarMap::new();
        let mut cfg = TokenizerConfig::for_dim(crate::skeleton::FEATURE_DIM);
        cfg.codebook_size = 16;
        cfg.vq_layers = 2;
        let tok = MotionTokenizer::new(cfg, &vm, &Device::Cpu)?;
        let all: Vec<Vec<f32>> = train.iter().flatten().cloned().collect();
        tok.fit_normalization(&all)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let x = random_crops(&train, 32, 4, &mut rng, &Device::Cpu)?;
        tok.init_codebooks(&x, &mut rng)?;
        let z = tok
            .encode_latent(&tok.normalize(&x)?)?
            .reshape((32, cfg.code_dim))?
            .to_vec2::<f32>()?;
        let book = tok.vq.codebook(0).to_vec2::<f32>()?;
        for code in &book {
            let best = z
                .iter()
                .map(|r| {
                    r.iter()
                        .zip(code)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max)
                })
                .fold(f32::INFINITY, f32::min);
            assert!(best < 1e-5, "a code is not an encoder output ({best})");
        }
        // the second layer was seeded from residuals: smaller than the encoder outputs
        let norm = |m: &[Vec<f32>]| m.iter().flatten().map(|v| v * v).sum::<f32>() / m.len() as f32;
        let book1 = tok.vq.codebook(1).to_vec2::<f32>()?;
        assert!(
            norm(&book1) < norm(&book),
            "{} vs {}",
            norm(&book1),
            norm(&book)
        );
        // a forward pass quantises with every code in reach and distinct codes are used
        let flat: Vec<f32> = z.iter().flatten().copied().collect();
        let zt = Tensor::from_vec(flat, (z.len(), cfg.code_dim), &Device::Cpu)?;
        let q = tok.vq.forward(&zt, false, &mut rng)?;
        let used: std::collections::BTreeSet<u32> = q.codes.iter().map(|c| c[0]).collect();
        assert!(used.len() >= 8, "{} codes used", used.len());
        Ok(())
    }
}
