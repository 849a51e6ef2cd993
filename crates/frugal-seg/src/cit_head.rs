//! The CIT head: class-independent outputs from one learned query per class
//! (see `docs/methods/cit.md`).
//!
//! Pixel features `F` (a small trainable neck of two 1×1 convolutions on the encoder output, our stand-in for DeepLabV3's
//! ASPP) are attended by a table of `K` class queries `Q` with 8-head cross-attention whose
//! query, value and output projections are the identity and whose key projection is a learned
//! linear map. The per-head attention logits `A_h = Q_h K_hᵀ / √(C/8)` averaged over heads are
//! the mask logits of each class; the attended values update the queries through a residual and
//! LayerNorm, and a linear map of the updated query gives two logits, "present" (index 0) and
//! "no object" (index 1). A pixel's score for class `k` is
//! `softmax(c_k)[0] · sigmoid(M_k(p))`, computed for every class on its own: no softmax runs
//! across classes, so adding a class cannot change another class's score.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Embedding, LayerNorm, Linear, VarBuilder};
use frugal_nn::layers::{conv2d, layer_norm, linear, to_tokens};
use frugal_nn::segmentation::upsample_bilinear;

/// Head settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CitHeadConfig {
    /// Feature width C (the paper's DeepLabV3 head: 512; ours: 64).
    pub dim: usize,
    /// Attention heads (the code: 8).
    pub heads: usize,
    /// Dropout on the attended values before the residual (the code has a dropout there; its
    /// rate is not in the brief, and we train without it: ours).
    pub dropout: f64,
}

impl Default for CitHeadConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            heads: 8,
            dropout: 0.0,
        }
    }
}

/// What the head computes for a batch.
#[derive(Debug, Clone)]
pub struct CitOutput {
    /// Mask logits `(B, K, h, w)` at feature resolution (pre-sigmoid).
    pub masks: Tensor,
    /// Class logits `(B, K, 2)`: present, no object.
    pub classes: Tensor,
}

impl CitOutput {
    /// Scores `softmax(c)[present] · sigmoid(M)`, `(B, K, h, w)`.
    pub fn scores(&self) -> Result<Tensor> {
        let present = candle_nn::ops::softmax_last_dim(&self.classes)?.narrow(2, 0, 1)?; // (B,K,1)
        let present = present.unsqueeze(3)?; // (B,K,1,1)
        candle_nn::ops::sigmoid(&self.masks)?.broadcast_mul(&present)
    }

    /// Scores upsampled bilinearly to `(size, size)` and the arg-max class of every pixel.
    pub fn predict(&self, size: usize) -> Result<Vec<u32>> {
        let s = upsample_bilinear(&self.scores()?, size, size)?;
        s.argmax(1)?.flatten_all()?.to_vec1::<u32>()
    }

    /// The outputs of classes `start..end` only.
    pub fn narrow(&self, start: usize, end: usize) -> Result<Self> {
        Ok(Self {
            masks: self.masks.narrow(1, start, end - start)?.contiguous()?,
            classes: self.classes.narrow(1, start, end - start)?.contiguous()?,
        })
    }
}

/// Neck + class queries + cross-attention + class logits.
#[derive(Debug, Clone)]
pub struct CitHead {
    pub cfg: CitHeadConfig,
    pub num_classes: usize,
    neck1: Conv2d,
    neck2: Conv2d,
    queries: Embedding,
    key: Linear,
    norm: LayerNorm,
    cls: Linear,
}

impl CitHead {
    /// A head for `num_classes` classes on `in_channels` encoder features. The query table is
    /// the variable `queries.weight` of shape `(K, C)`; growing the head means building a larger
    /// one and copying the old rows in (see `grow`).
    pub fn new(
        cfg: &CitHeadConfig,
        in_channels: usize,
        num_classes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if cfg.heads == 0 || cfg.dim % cfg.heads != 0 {
            candle_core::bail!(
                "CIT head: dim {} not divisible by {} heads",
                cfg.dim,
                cfg.heads
            );
        }
        let q = vb.pp("queries").get_with_hints(
            (num_classes, cfg.dim),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            num_classes,
            neck1: conv2d(in_channels, cfg.dim, 1, 1, 0, vb.pp("neck1"))?,
            neck2: conv2d(cfg.dim, cfg.dim, 1, 1, 0, vb.pp("neck2"))?,
            queries: Embedding::new(q, cfg.dim),
            key: linear(cfg.dim, cfg.dim, vb.pp("key"))?,
            norm: layer_norm(cfg.dim, 1e-5, vb.pp("norm"))?,
            cls: linear(cfg.dim, 2, vb.pp("cls"))?,
        })
    }

    /// `(B, C_in, h, w)` encoder features → mask and class logits for every class.
    pub fn forward(&self, feats: &Tensor) -> Result<CitOutput> {
        let (b, _, h, w) = feats.dims4()?;
        let f = self.neck2.forward(&self.neck1.forward(feats)?.relu()?)?;
        self.attend(&to_tokens(&f)?, b, h, w)
    }

    /// The cross-attention on `(B, HW, C)` pixel tokens.
    pub fn attend(&self, tokens: &Tensor, b: usize, h: usize, w: usize) -> Result<CitOutput> {
        let (c, nh, k) = (self.cfg.dim, self.cfg.heads, self.num_classes);
        let hd = c / nh;
        let hw = h * w;
        let keys = self.key.forward(tokens)?; // (B, HW, C)
        let split = |t: &Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, n, nh, hd))?.transpose(1, 2)?.contiguous() // (B, nh, n, hd)
        };
        let q = self
            .queries
            .embeddings()
            .unsqueeze(0)?
            .broadcast_as((b, k, c))?;
        let qh = split(&q, k)?;
        let kh = split(&keys, hw)?;
        let vh = split(tokens, hw)?; // identity value projection
        let att = (qh.matmul(&kh.t()?)? / (hd as f64).sqrt())?; // (B, nh, K, HW)
        let masks = att.mean(1)?.reshape((b, k, h, w))?;
        let attended = candle_nn::ops::softmax_last_dim(&att)?
            .matmul(&vh)? // (B, nh, K, hd)
            .transpose(1, 2)?
            .reshape((b, k, c))?; // identity output projection
        let attended = if self.cfg.dropout > 0.0 {
            candle_nn::ops::dropout(&attended, self.cfg.dropout as f32)?
        } else {
            attended
        };
        let updated = self.norm.forward(&(q + attended)?)?;
        let classes = self.cls.forward(&updated)?; // (B, K, 2)
        Ok(CitOutput { masks, classes })
    }

    /// The query table `(K, C)`.
    pub fn queries(&self) -> &Tensor {
        self.queries.embeddings()
    }
}
