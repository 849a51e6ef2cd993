//! The llama-family decoder (Llama 2/3, SmolLM, Mistral without sliding window): RMSNorm,
//! RoPE, grouped-query attention, SwiGLU MLP, optionally tied embeddings.
//!
//! The forward pass is ours so that attention goes through the cache-policy and
//! attention-policy interfaces ([`crate::cache`], [`crate::attention`]). Projections use
//! candle's `QMatMul`, so weights stay in their GGUF quantisation (Q4_0/Q4_1/Q8_0/K-quants) or
//! are dequantised to f32 once at load ([`WeightFormat::F32`]).

use super::batch::{check_items, stacked_ids, BatchItem, BatchRows};
use crate::cache::{KvDtype, KvLayout};
use crate::error::{EngineError, Result};
use crate::sequence::Sequence;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use frugal_numerics::attention::AttentionShape;
use frugal_numerics::rope::{RopePairing, RopeTable};

/// Hyper-parameters of a llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub context_length: usize,
    pub rope_pairing: RopePairing,
    /// What the KV stores hold (a run-time choice, not read from the weights file; f16 by
    /// default, `--kv-dtype f32` for exact keys and values).
    pub kv_dtype: KvDtype,
}

impl LlamaConfig {
    pub fn kv_layout(&self) -> KvLayout {
        KvLayout {
            n_layers: self.n_layers,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            dtype: self.kv_dtype,
        }
    }

    pub fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Checks the relations the forward pass relies on; `origin` names the file for errors.
    pub fn validate(&self, origin: &std::path::Path) -> Result<()> {
        let bad = |field: &str| {
            Err(EngineError::MissingMetadata {
                field: field.into(),
                path: origin.to_path_buf(),
            })
        };
        if self.n_layers == 0 {
            return bad("block_count (must be > 0)");
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad("attention.head_count_kv (must divide attention.head_count)");
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad("attention head dimension (must be even and > 0)");
        }
        if self.context_length == 0 {
            return bad("context_length (must be > 0)");
        }
        Ok(())
    }
}

/// How projection weights are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored in the file (quantised blocks for GGUF).
    #[default]
    Native,
    /// Dequantised to f32 at load: exact with respect to the file, 4-8× the memory.
    F32,
}

/// Where the loader reads tensors by their GGUF names (`blk.0.attn_q.weight`, …).
pub trait TensorSource {
    /// The tensor, or `None` when the file has no tensor of that name.
    fn tensor(&mut self, name: &str) -> Result<Option<QTensor>>;
    /// Names the file for error messages.
    fn origin(&self) -> &std::path::Path;
}

/// Rows from which a quantised projection dequantises its weight for the call and runs an
/// f32 GEMM instead of multiplying the quantised blocks directly: the model's setting where
/// one is given ([`Llama::set_dequant_rows`], `--dequant-rows`), else chosen per weight by the
/// kernel that multiplies its format (ours, by timing):
/// * the AVX-512 panel kernel (Q4_0, Q4_1, Q8_0 where the CPU has AVX-512 VNNI): never.
///   Timed with `scripts/tile_kernel_ab.sh` and `frugal bench --dequant-rows` on
///   SmolLM2-135M Q4_1 (2 threads): prefill of 256–4096 tokens runs 1.2–2.1× faster on it
///   than dequantised (1024: 1484/1530 against 723/736 tok/s; 4096: 705 against 509), 8192
///   about even (365 against 372), where attention dominates; and no f32 copy of a layer's
///   weights is made;
/// * anything else (the grouped kernel one activation row at a time, candle's K-quant
///   products): [`DEQUANT_ROWS_ROW_KERNEL`].
///
/// Decode (one row) keeps the quantised kernel either way: it reads 4–8× fewer weight bytes.
pub(crate) fn switch_rows(w: &QMatMul, setting: Option<usize>) -> usize {
    use frugal_numerics::quant_matvec::QuantFormat;
    if let Some(rows) = setting {
        return rows;
    }
    let panel = match w {
        QMatMul::QTensor(q) => {
            frugal_numerics::quant_matvec::panel_kernel_available()
                && matches!(
                    ours_format(q),
                    Some(QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0)
                )
        }
        _ => false,
    };
    if panel {
        usize::MAX
    } else {
        DEQUANT_ROWS_ROW_KERNEL
    }
}

/// The switch where several activation rows run the grouped kernel one row at a time (no
/// AVX-512 VNNI) or candle's K-quant products: their per-row products run far below GEMM
/// speed.
pub const DEQUANT_ROWS_ROW_KERNEL: usize = 32;

/// A projection `y = x · Wᵀ`.
pub(crate) struct Linear(pub(crate) QMatMul);

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor, dequant_rows: Option<usize>) -> Result<Tensor> {
        match &self.0 {
            QMatMul::QTensor(q) if x.dim(0)? >= switch_rows(&self.0, dequant_rows) => {
                let w = q.dequantize(&Device::Cpu)?;
                Ok(x.matmul(&w.t()?)?)
            }
            w => few_rows_product(w, x),
        }
    }

    /// `[x · W₁ᵀ, x · W₂ᵀ, …]` for projections of one input (a layer's Q, K and V; its gate
    /// and up). A call below the dequantising switch on our kernel quantises the input once
    /// and runs every weight in one parallel loop (each call starts a fork-join: seven a layer
    /// become four). Anything else runs each projection as [`Linear::forward`].
    pub(crate) fn forward_many(
        ls: &[&Linear],
        x: &Tensor,
        dequant_rows: Option<usize>,
    ) -> Result<Vec<Tensor>> {
        let switch = ls
            .iter()
            .map(|l| switch_rows(&l.0, dequant_rows))
            .min()
            .unwrap_or(usize::MAX);
        if x.dim(0)? < switch {
            if let Some(ys) = fused_matvec(ls, x)? {
                return Ok(ys);
            }
        }
        ls.iter().map(|l| l.forward(x, dequant_rows)).collect()
    }
}

/// A projection made ready for calls of a known number of rows: for calls long enough to run
/// on dequantised weights, the weight is dequantised once and shared by every row block.
pub(crate) enum Prepared<'a> {
    Gemm(Tensor),
    Linear(&'a Linear, Option<usize>),
}

impl Linear {
    pub(crate) fn prepare(&self, rows: usize, dequant_rows: Option<usize>) -> Result<Prepared<'_>> {
        Ok(match &self.0 {
            QMatMul::QTensor(q) if rows >= switch_rows(&self.0, dequant_rows) => {
                Prepared::Gemm(q.dequantize(&Device::Cpu)?)
            }
            _ => Prepared::Linear(self, dequant_rows),
        })
    }
}

impl Prepared<'_> {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Prepared::Gemm(w) => Ok(x.matmul(&w.t()?)?),
            Prepared::Linear(l, dq) => l.forward(x, *dq),
        }
    }
}

/// Rows per block in which a long call runs its MLP (ours). The MLP is row-wise and its
/// hidden activations (gate, up, their activation and product: four `[rows, ffn_dim]` f32
/// buffers, 200 MB for SmolLM2 at 8192 tokens) are the largest buffers of a long prefill; in
/// blocks of 1024 rows they stay under 26 MB, and the GEMMs are still large.
pub const MLP_ROW_BLOCK: usize = 1024;

/// `silu(gate) · up`, a SwiGLU MLP's input to its down projection, in one pass of our
/// vectorised activation ([`frugal_numerics::activation`]) instead of candle's `silu` and a
/// second multiply.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let shape = gate.shape().clone();
    let mut g = gate.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let u = up.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    frugal_numerics::activation::silu_mul_in_place(&mut g, &u);
    Ok(Tensor::from_vec(g, shape, &Device::Cpu)?)
}

/// `f` applied to `x` in blocks of [`MLP_ROW_BLOCK`] rows, the results stacked.
pub(crate) fn in_row_blocks(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let rows = x.dim(0)?;
    if rows <= MLP_ROW_BLOCK {
        return f(x);
    }
    let parts = (0..rows)
        .step_by(MLP_ROW_BLOCK)
        .map(|s| f(&x.narrow(0, s, MLP_ROW_BLOCK.min(rows - s))?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// The LM head's product: our kernel below the dequantising switch (decode; on the panel
/// kernel every call), candle's quantised matmul from it (scoring elsewhere), whose
/// activation rounding the golden logits were checked with.
pub(crate) fn lm_head_product(
    w: &QMatMul,
    hidden: &Tensor,
    dequant_rows: Option<usize>,
) -> Result<Tensor> {
    if hidden.dim(0)? < switch_rows(w, dequant_rows) {
        few_rows_product(w, hidden)
    } else {
        Ok(w.forward(hidden)?)
    }
}

/// Which kernel multiplies quantised weights by the few rows of a decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernel {
    /// Per format, the faster of the two as measured on this project's machine (ours):
    /// our kernel for Q4_0/Q4_1/Q8_0 (candle has no SIMD Q4_1 dot product; 1.32× decode on
    /// SmolLM2), candle's for Q4_K/Q6_K (its AVX2 K-quant kernels were ~10 % faster than ours
    /// on Gemma 3 270M). See docs/results/engine.md.
    Auto,
    /// Ours (`frugal_numerics::quant_matvec`) for every format it has: int8 activations,
    /// AVX2 where the CPU has it, parallel over weight rows on our thread pool.
    Ours,
    /// candle's quantised matmul (its own per-format dot products and thread pool).
    Candle,
}

/// The decode kernel in use: `Auto` unless `FRUGAL_DECODE_KERNEL` is `ours` or `candle` (a
/// diagnostic switch for A/B runs of one binary), read once.
pub fn decode_kernel() -> DecodeKernel {
    static KERNEL: std::sync::OnceLock<DecodeKernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| match std::env::var("FRUGAL_DECODE_KERNEL").as_deref() {
        Ok("candle") => DecodeKernel::Candle,
        Ok("ours") => DecodeKernel::Ours,
        _ => DecodeKernel::Auto,
    })
}

/// `x · Wᵀ` for calls of few rows (decode steps, short chunks): our quantised kernel where
/// [`decode_kernel`] picks it for the weight's format and the weight lives on the CPU, else
/// candle's.
pub(crate) fn few_rows_product(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    if let QMatMul::QTensor(q) = w {
        if let Some(format) = ours_format(q) {
            if let Some(y) = quant_matvec_product(q, format, x)? {
                return Ok(y);
            }
        }
    }
    Ok(w.forward(x)?)
}

/// The format our kernel reads `q` as, where [`decode_kernel`] gives it to our kernel and it
/// lives on the CPU; `None` leaves it to candle.
fn ours_format(q: &QTensor) -> Option<frugal_numerics::quant_matvec::QuantFormat> {
    use candle_core::quantized::GgmlDType;
    use frugal_numerics::quant_matvec::QuantFormat;
    let ours = match decode_kernel() {
        DecodeKernel::Ours => true,
        DecodeKernel::Candle => false,
        DecodeKernel::Auto => matches!(
            q.dtype(),
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0
        ),
    };
    if !ours || !q.device().is_cpu() {
        return None;
    }
    match q.dtype() {
        GgmlDType::Q4_0 => Some(QuantFormat::Q4_0),
        GgmlDType::Q4_1 => Some(QuantFormat::Q4_1),
        GgmlDType::Q8_0 => Some(QuantFormat::Q8_0),
        GgmlDType::Q4K => Some(QuantFormat::Q4K),
        GgmlDType::Q6K => Some(QuantFormat::Q6K),
        _ => None,
    }
}

fn kernel_error(e: frugal_numerics::quant_matvec::QuantMatvecError) -> EngineError {
    EngineError::Internal(format!("quantised product: {e}"))
}

/// The rows of a CPU f32 input `[m, k]`, or `None` for another device or rank.
fn host_rows(x: &Tensor) -> Result<Option<(usize, usize, Vec<f32>)>> {
    if !x.device().is_cpu() || x.rank() != 2 {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    Ok(Some((
        m,
        k,
        x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
    )))
}

/// Our kernel's product, or `None` when it does not apply (device, shape).
fn quant_matvec_product(
    q: &QTensor,
    format: frugal_numerics::quant_matvec::QuantFormat,
    x: &Tensor,
) -> Result<Option<Tensor>> {
    use frugal_numerics::quant_matvec::{matmul, Q8Activations, QuantMatrix};
    let (rows, cols) = q.shape().dims2()?;
    let Some((m, k, xs)) = host_rows(x)? else {
        return Ok(None);
    };
    if k != cols {
        return Ok(None);
    }
    let data = q.data()?;
    let w = QuantMatrix::new(format, rows, cols, &data).map_err(kernel_error)?;
    let xq = Q8Activations::quantize(&xs, k).map_err(kernel_error)?;
    let mut out = vec![0f32; m * rows];
    matmul(&w, &xq, &mut out);
    Ok(Some(Tensor::from_vec(out, (m, rows), &Device::Cpu)?))
}

/// Several projections of one input, quantised once and shared out in one parallel loop (see
/// [`frugal_numerics::quant_matvec::matmul_many`]), or `None` when any weight is not on our
/// kernel or the input is not on the host.
fn fused_matvec(ls: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
    use frugal_numerics::quant_matvec::{matmul_many, Q8Activations, QuantMatrix};
    let mut weights = Vec::with_capacity(ls.len());
    for l in ls {
        let QMatMul::QTensor(q) = &l.0 else {
            return Ok(None);
        };
        let Some(format) = ours_format(q) else {
            return Ok(None);
        };
        weights.push((q, format));
    }
    let Some((m, k, xs)) = host_rows(x)? else {
        return Ok(None);
    };
    let data = weights
        .iter()
        .map(|(q, _)| q.data())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut ws = Vec::with_capacity(ls.len());
    for ((q, format), bytes) in weights.iter().zip(&data) {
        let (rows, cols) = q.shape().dims2()?;
        if cols != k {
            return Ok(None);
        }
        ws.push(QuantMatrix::new(*format, rows, cols, bytes).map_err(kernel_error)?);
    }
    let xq = Q8Activations::quantize(&xs, k).map_err(kernel_error)?;
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; m * w.rows()]).collect();
    matmul_many(
        &ws,
        &xq,
        outs.iter_mut().map(|o| o.as_mut_slice()).collect(),
    );
    outs.into_iter()
        .map(|o| {
            let n = o.len() / m;
            Ok(Tensor::from_vec(o, (m, n), &Device::Cpu)?)
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

pub(super) struct Block {
    pub(super) attn_norm: Tensor,
    pub(super) wq: Linear,
    pub(super) wk: Linear,
    pub(super) wv: Linear,
    pub(super) wo: Linear,
    pub(super) ffn_norm: Tensor,
    pub(super) w_gate: Linear,
    pub(super) w_up: Linear,
    pub(super) w_down: Linear,
}

/// A loaded llama-family model.
pub struct Llama {
    pub(super) cfg: LlamaConfig,
    pub(super) embed: QMatMul,
    pub(super) blocks: Vec<Block>,
    pub(super) norm: Tensor,
    /// The LM head never takes the dequantise-for-long-calls rule: with it the tiny-model round
    /// trip no longer matched `--dtype f32` (unexplained, docs/results/engine.md). Few-row calls
    /// (decode) run on our quantised kernel, longer ones on candle's ([`lm_head_product`]).
    pub(super) lm_head: QMatMul,
    pub(super) rope: RopeTable,
    pub(super) dequant_rows: Option<usize>,
}

/// Which positions of a forward call produce logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last token (generation).
    Last,
    /// Every token of the call (golden tests).
    All,
    /// Tokens from this index of the call on (perplexity scores a window's tail).
    From(usize),
}

impl Llama {
    pub fn load(
        cfg: LlamaConfig,
        source: &mut dyn TensorSource,
        format: WeightFormat,
    ) -> Result<Self> {
        cfg.validate(source.origin())?;
        let origin = source.origin().to_path_buf();
        let mut get = |name: &str, shape: &[usize]| -> Result<QTensor> {
            let t = source
                .tensor(name)?
                .ok_or_else(|| EngineError::CorruptModel {
                    path: origin.clone(),
                    reason: format!("tensor `{name}` is missing"),
                })?;
            if t.shape().dims() != shape {
                return Err(EngineError::CorruptModel {
                    path: origin.clone(),
                    reason: format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.shape().dims()
                    ),
                });
            }
            Ok(t)
        };
        let qmatmul = |t: QTensor| -> Result<QMatMul> {
            Ok(match format {
                WeightFormat::F32 => QMatMul::Tensor(t.dequantize(&Device::Cpu)?),
                WeightFormat::Native => QMatMul::from_qtensor(t)?,
            })
        };
        let matmul = |t: QTensor| -> Result<Linear> { Ok(Linear(qmatmul(t)?)) };
        let vector = |t: QTensor| -> Result<Tensor> { Ok(t.dequantize(&Device::Cpu)?) };
        let (d, q_dim, kv_dim) = (
            cfg.d_model,
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
        );

        let embed = qmatmul(get("token_embd.weight", &[cfg.vocab_size, d])?)?;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            blocks.push(Block {
                attn_norm: vector(get(&p("attn_norm"), &[d])?)?,
                wq: matmul(get(&p("attn_q"), &[q_dim, d])?)?,
                wk: matmul(get(&p("attn_k"), &[kv_dim, d])?)?,
                wv: matmul(get(&p("attn_v"), &[kv_dim, d])?)?,
                wo: matmul(get(&p("attn_output"), &[d, q_dim])?)?,
                ffn_norm: vector(get(&p("ffn_norm"), &[d])?)?,
                w_gate: matmul(get(&p("ffn_gate"), &[cfg.ffn_dim, d])?)?,
                w_up: matmul(get(&p("ffn_up"), &[cfg.ffn_dim, d])?)?,
                w_down: matmul(get(&p("ffn_down"), &[d, cfg.ffn_dim])?)?,
            });
        }
        let norm = vector(get("output_norm.weight", &[d])?)?;
        // Tied embeddings: without `output.weight` the embedding matrix is the LM head.
        let lm_head = match source.tensor("output.weight")? {
            Some(t) => qmatmul(t)?,
            None => embed.clone(),
        };
        let rope = RopeTable::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.context_length,
            cfg.rope_pairing,
        );
        Ok(Llama {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            rope,
            dequant_rows: None,
        })
    }

    /// Calls with at least `rows` tokens dequantise projection weights for an f32 GEMM,
    /// whatever the format (by default the switch is per weight: see [`switch_rows`]);
    /// `usize::MAX` keeps the quantised kernel everywhere.
    pub fn set_dequant_rows(&mut self, rows: usize) {
        self.dequant_rows = Some(rows);
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Sets the dtype of the KV stores built from [`LlamaConfig::kv_layout`].
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.cfg.kv_dtype = dtype;
    }

    /// Runs `tokens` through the model after the `seq.len()` tokens already in `seq`, storing
    /// their K/V through the sequence's cache policy. Returns logits `[rows, vocab]`.
    pub fn forward(&self, tokens: &[u32], seq: &mut Sequence, rows: LogitRows) -> Result<Tensor> {
        let hidden = self.forward_hidden(tokens, seq, rows)?;
        self.logits(&hidden)
    }

    /// Logits for final hidden states from [`Llama::forward_hidden`]; callers scoring many
    /// rows call this in chunks, since `[rows, vocab]` f32 is 200 KB a row for a 49k vocabulary.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        lm_head_product(&self.lm_head, hidden, self.dequant_rows)
    }

    /// As [`Llama::forward`], but returns the final-norm hidden states `[rows, d_model]`.
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        seq: &mut Sequence,
        rows: LogitRows,
    ) -> Result<Tensor> {
        self.forward_batch_hidden(&mut [BatchItem::new(tokens, seq, rows)])
    }

    /// One forward pass over every item of the batch (see [`super::batch`]): projections and
    /// MLP over the stacked rows, attention per item through its own policies. Returns the
    /// final-norm hidden states of every item's output rows, stacked in item order
    /// ([`super::batch::split_rows`] splits them).
    pub fn forward_batch_hidden(&self, items: &mut [BatchItem<'_>]) -> Result<Tensor> {
        check_items(items, &self.cfg)?;
        let ids = Tensor::new(stacked_ids(items).as_slice(), &Device::Cpu)?;
        let mut x = Some(self.embed.embedding(&ids)?.to_dtype(DType::F32)?);
        let shape = self.cfg.attention_shape();
        let mut book = BatchRows::new(items);
        let n_layers = self.cfg.n_layers;

        for (layer, b) in self.blocks.iter().enumerate() {
            let Some(xs) =
                book.select(x.take().expect("rows remain"), items, layer, n_layers, None)?
            else {
                break;
            };
            let positions = book.positions();
            let n = positions.len();
            let h = rms_norm(&xs, &b.attn_norm, self.cfg.rms_eps)?;
            let qkv = Linear::forward_many(&[&b.wq, &b.wk, &b.wv], &h, self.dequant_rows)?;
            let [q, k, v] = [0, 1, 2].map(|i| qkv[i].flatten_all()?.to_vec1::<f32>());
            let (mut q, mut k, v) = (q?, k?, v?);
            self.rope.apply(&mut q, &positions, self.cfg.n_heads);
            self.rope.apply(&mut k, &positions, self.cfg.n_kv_heads);
            let attn = book.attend(items, layer, n_layers, None, &q, &k, &v, shape);
            let attn = Tensor::from_vec(attn, (n, shape.n_heads * shape.head_dim), &Device::Cpu)?;
            let xs = (xs + b.wo.forward(&attn, self.dequant_rows)?)?;

            let h = rms_norm(&xs, &b.ffn_norm, self.cfg.rms_eps)?;
            let mlp = if n < MLP_ROW_BLOCK {
                let gate_up = Linear::forward_many(&[&b.w_gate, &b.w_up], &h, self.dequant_rows)?;
                b.w_down
                    .forward(&silu_mul(&gate_up[0], &gate_up[1])?, self.dequant_rows)?
            } else {
                let [gate, up, down] = [&b.w_gate, &b.w_up, &b.w_down]
                    .map(|w| w.prepare(MLP_ROW_BLOCK, self.dequant_rows));
                let (gate, up, down) = (gate?, up?, down?);
                in_row_blocks(&h, |h| {
                    down.forward(&silu_mul(&gate.forward(h)?, &up.forward(h)?)?)
                })?
            };
            x = Some((xs + mlp)?);
        }
        let out = book.finish(x, items, self.cfg.d_model)?;
        rms_norm(&out, &self.norm, self.cfg.rms_eps)
    }
}

/// `x / sqrt(mean(x²) + eps) * w` over the last dimension.
/// One pass of our row kernel ([`frugal_numerics::activation::rms_norm_rows_in_place`]) on
/// f32 inputs; the tensor composition for anything else.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && w.rank() == 1 {
        let d = w.dim(0)?;
        if x.dim(candle_core::D::Minus1)? == d {
            let shape = x.shape().clone();
            let mut v = x.flatten_all()?.to_vec1::<f32>()?;
            frugal_numerics::activation::rms_norm_rows_in_place(
                &mut v,
                &w.to_vec1::<f32>()?,
                eps as f32,
            );
            return Ok(Tensor::from_vec(v, shape, &Device::Cpu)?);
        }
    }
    let mean_sq = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    let inv = (mean_sq + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}
