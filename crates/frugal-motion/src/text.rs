//! Text and motion encoders, and the symmetric InfoNCE loss that aligns them.
//!
//! Two text encoders condition the generator:
//! - [`FrozenTextEncoder`]: a fixed, untrained encoder (hashed character trigrams through a
//!   seeded random projection). It stands in for the frozen general-purpose text encoder that
//!   KMM replaces (ours: there is no pretrained text model in our stack); like such encoders it
//!   places "raise the left arm" and "raise the right arm" close together, since the strings
//!   share most of their characters.
//! - [`BowTextEncoder`] trained contrastively against a motion encoder ([`ContrastivePair`]),
//!   KMM's text–motion alignment; after training it is frozen and conditions the generator.
//!
//! The same [`ContrastivePair`] type, trained separately with another seed on motion features,
//! is the frozen evaluator (never the generator's own encoder).

use crate::conv::{Conv1dLayer, ConvInit, ConvPath};
use crate::data::Primitive;
use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv1dConfig, Embedding, Linear, VarBuilder};

fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: Conv1dConfig,
    vb: VarBuilder,
) -> candle_core::Result<Conv1dLayer> {
    Conv1dLayer::new(
        c_in,
        c_out,
        k,
        cfg,
        ConvInit::KaimingNormal,
        ConvPath::Unfolded,
        vb,
    )
}

/// Words of every phrasing plus an unknown-word slot (index 0).
pub struct Vocab {
    words: Vec<String>,
}

impl Default for Vocab {
    fn default() -> Self {
        let mut words: Vec<String> = vec!["<unk>".into()];
        for p in Primitive::ALL {
            for ph in p.phrasings() {
                for w in tokenize_words(ph) {
                    if !words.contains(&w) {
                        words.push(w);
                    }
                }
            }
        }
        Self { words }
    }
}

fn tokenize_words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_string())
        .collect()
}

impl Vocab {
    pub fn len(&self) -> usize {
        self.words.len()
    }
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
    pub fn ids(&self, text: &str) -> Vec<u32> {
        let ids: Vec<u32> = tokenize_words(text)
            .iter()
            .map(|w| self.words.iter().position(|v| v == w).unwrap_or(0) as u32)
            .collect();
        if ids.is_empty() {
            vec![0]
        } else {
            ids
        }
    }
    /// True when every word of `text` is known.
    pub fn covers(&self, text: &str) -> bool {
        tokenize_words(text).iter().all(|w| self.words.contains(w))
    }
}

/// Fixed text features: counts of hashed character trigrams (of the padded lower-case text),
/// projected by a seeded Gaussian matrix and L2-normalised. Nothing is trained.
pub struct FrozenTextEncoder {
    buckets: usize,
    proj: Vec<f32>, // buckets × dim
    pub dim: usize,
}

impl FrozenTextEncoder {
    pub fn new(dim: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let buckets = 512;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let proj = (0..buckets * dim)
            .map(|_| {
                // Box–Muller
                let u1: f32 = rng.gen_range(1e-7..1.0);
                let u2: f32 = rng.gen();
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        Self { buckets, proj, dim }
    }
    pub fn encode(&self, text: &str) -> Vec<f32> {
        let s: Vec<char> = format!("  {}  ", text.to_lowercase()).chars().collect();
        let mut counts = vec![0f32; self.buckets];
        for w in s.windows(3) {
            let mut h: u64 = 1469598103934665603;
            for c in w {
                h ^= *c as u64;
                h = h.wrapping_mul(1099511628211);
            }
            counts[(h % self.buckets as u64) as usize] += 1.0;
        }
        let mut out = vec![0f32; self.dim];
        for (b, &c) in counts.iter().enumerate() {
            if c != 0.0 {
                for (d, o) in out.iter_mut().enumerate() {
                    *o += c * self.proj[b * self.dim + d];
                }
            }
        }
        let n = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        out.iter_mut().for_each(|v| *v /= n);
        out
    }
}

fn l2n(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-6, f64::MAX)?;
    x.broadcast_div(&n)
}

/// Bag-of-words text encoder: mean of word embeddings, a two-layer MLP, L2-normalised output.
pub struct BowTextEncoder {
    emb: Embedding,
    l1: Linear,
    l2: Linear,
    pub dim: usize,
}

impl BowTextEncoder {
    pub fn new(vocab: usize, hidden: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            emb: candle_nn::embedding(vocab, hidden, vb.pp("emb"))?,
            l1: candle_nn::linear(hidden, hidden, vb.pp("l1"))?,
            l2: candle_nn::linear(hidden, dim, vb.pp("l2"))?,
            dim,
        })
    }
    /// Encodes a batch of texts given as word ids.
    pub fn forward(&self, ids: &[Vec<u32>], dev: &Device) -> Result<Tensor> {
        let rows: Vec<Tensor> = ids
            .iter()
            .map(|w| {
                let t = Tensor::new(w.as_slice(), dev)?;
                self.emb.forward(&t)?.mean(0)
            })
            .collect::<candle_core::Result<_>>()?;
        let x = Tensor::stack(&rows, 0)?;
        let h = self.l1.forward(&x)?.relu()?;
        Ok(l2n(&self.l2.forward(&h)?)?)
    }
}

/// 1-D convolutional motion encoder over a fixed-length window `(B, T, in_dim)`: three convs (two
/// with stride 2), mean over time, a linear head, L2-normalised (or raw logits with `normalize`
/// off, for classifiers). The convolutions are [`crate::conv::Conv1dLayer`]s on the unfolded
/// path (candle's op trains with wrong gradients for batches) with candle's initialisation.
pub struct MotionEncoder {
    c1: Conv1dLayer,
    c2: Conv1dLayer,
    c3: Conv1dLayer,
    head: Linear,
    normalize: bool,
}

impl MotionEncoder {
    pub fn new(
        in_dim: usize,
        width: usize,
        out: usize,
        normalize: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let p1 = Conv1dConfig {
            padding: 1,
            ..Default::default()
        };
        let s2 = Conv1dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            c1: conv(in_dim, width, 3, p1, vb.pp("c1"))?,
            c2: conv(width, width, 4, s2, vb.pp("c2"))?,
            c3: conv(width, width, 4, s2, vb.pp("c3"))?,
            head: candle_nn::linear(width, out, vb.pp("head"))?,
            normalize,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.transpose(1, 2)?.contiguous()?;
        let h = self.c1.forward(&h)?.relu()?;
        let h = self.c2.forward(&h)?.relu()?;
        let h = self.c3.forward(&h)?.relu()?;
        let h = self.head.forward(&h.mean(2)?)?;
        Ok(if self.normalize { l2n(&h)? } else { h })
    }
}

/// Symmetric InfoNCE over a batch of matched rows (row i of `a` pairs with row i of `b`), both
/// L2-normalised, at temperature `tau`.
pub fn info_nce(a: &Tensor, b: &Tensor, tau: f64) -> Result<Tensor> {
    let n = a.dim(0)?;
    let logits = (a.matmul(&b.t()?)? / tau)?;
    let labels = Tensor::arange(0u32, n as u32, a.device())?;
    let l1 = candle_nn::loss::cross_entropy(&logits, &labels)?;
    let l2 = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &labels)?;
    Ok(((l1 + l2)? * 0.5)?)
}

/// A text encoder and a motion encoder trained together with [`info_nce`].
pub struct ContrastivePair {
    pub text: BowTextEncoder,
    pub motion: MotionEncoder,
}

impl ContrastivePair {
    pub fn new(vocab: usize, motion_dim: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            text: BowTextEncoder::new(vocab, 64, dim, vb.pp("text"))?,
            motion: MotionEncoder::new(motion_dim, 64, dim, true, vb.pp("motion"))?,
        })
    }
}

/// Resamples a `(T, C)` sequence to `len` rows by linear interpolation (so segments of any
/// length meet the fixed-window encoders).
pub fn resample(x: &[Vec<f32>], len: usize) -> Vec<Vec<f32>> {
    let t = x.len();
    (0..len)
        .map(|i| {
            let pos = if len == 1 {
                0.0
            } else {
                i as f32 * (t - 1) as f32 / (len - 1) as f32
            };
            let a = pos.floor() as usize;
            let b = (a + 1).min(t - 1);
            let w = pos - a as f32;
            x[a].iter()
                .zip(&x[b])
                .map(|(p, q)| (1.0 - w) * p + w * q)
                .collect()
        })
        .collect()
}

/// Stacks `(T, C)` windows into a `(B, T, C)` tensor.
pub fn batch_tensor(windows: &[Vec<Vec<f32>>], dev: &Device) -> Result<Tensor> {
    let b = windows.len();
    let t = windows[0].len();
    let c = windows[0][0].len();
    let flat: Vec<f32> = windows
        .iter()
        .flat_map(|w| w.iter().flatten().copied())
        .collect();
    Ok(Tensor::from_vec(flat, (b, t, c), dev)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_encoder_keeps_left_and_right_close_but_distinct() {
        let enc = FrozenTextEncoder::new(32, 0);
        let a = enc.encode("raise the left arm");
        let b = enc.encode("raise the right arm");
        let c = enc.encode("sit down");
        let cos = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        assert!(cos(&a, &b) > cos(&a, &c));
        assert!(cos(&a, &b) < 0.999);
    }

    #[test]
    fn vocab_maps_unknown_words_to_zero() {
        let v = Vocab::default();
        assert!(v.covers("turn left"));
        assert!(!v.covers("moonwalk"));
        assert_eq!(v.ids("moonwalk"), vec![0]);
    }
}
