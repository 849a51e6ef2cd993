//! One pre-norm decoder forward pass with the switches that separate the Gemma 3 and Qwen 2/3
//! families from llama: sandwich norms (a norm after attention and after the MLP, Gemma),
//! per-head RMSNorm of queries and keys before RoPE (Gemma 3, Qwen 3), biases on the Q/K/V
//! projections (Qwen 2), GELU-gated or SiLU-gated MLP, a scaled embedding (Gemma), and per-layer
//! sliding windows and RoPE bases (Gemma 3's local/global interleave).
//!
//! [`super::gemma3`] and [`super::qwen`] read their files into a [`Decoder`]; the llama path
//! ([`super::llama`]) keeps its own forward pass, which the SmolLM2 golden test pins.
//!
//! Attention goes through the same cache-policy and attention-policy calls as llama
//! ([`crate::cache`], [`crate::attention`]), so every policy runs on these architectures. A
//! sliding-window layer tells the policies twice: [`StepContext::window`](crate::attention::StepContext::window) names the window at
//! every step (the step itself enforces it), and after each call the cache policy hears
//! [`CachePolicy::forget_before`](crate::cache::CachePolicy::forget_before), so it need not
//! keep keys no later query of that layer can see.

use super::batch::{check_items, stacked_ids, BatchItem, BatchRows};
use super::llama::{
    in_row_blocks, rms_norm, silu_mul, Linear, LlamaConfig, LogitRows, TensorSource, WeightFormat,
    MLP_ROW_BLOCK,
};
use crate::error::{EngineError, Result};
use crate::sequence::Sequence;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use frugal_numerics::rope::RopeTable;

/// The gate non-linearity of the gated MLP `down(act(gate(x)) · up(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (llama, Qwen).
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// What one architecture does differently from a plain llama block.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchFlags {
    /// Name for logs and errors (`gemma3`, `qwen2`, `qwen3`).
    pub name: String,
    pub activation: Activation,
    /// Embedding rows are multiplied by this (Gemma: `sqrt(d_model)`).
    pub embed_scale: Option<f32>,
    /// Per-layer sliding window in tokens (`None` = global attention). A query at position
    /// `p` sees keys at positions `p - window + 1 ..= p`, as transformers and llama.cpp do.
    pub windows: Vec<Option<usize>>,
    /// Per-layer RoPE base (Gemma 3: 10 000 on sliding layers, the file's base on global ones).
    pub rope_bases: Vec<f64>,
}

/// Weights of one block. Optional parts are present only in the families that have them.
pub(super) struct Block {
    pub(super) attn_norm: Tensor,
    pub(super) wq: Linear,
    pub(super) wk: Linear,
    pub(super) wv: Linear,
    pub(super) wo: Linear,
    /// Qwen 2: biases added to the Q, K and V projections.
    pub(super) bias_q: Option<Tensor>,
    pub(super) bias_k: Option<Tensor>,
    pub(super) bias_v: Option<Tensor>,
    /// Gemma 3, Qwen 3: RMSNorm over each head's `head_dim` values of Q and K, before RoPE.
    pub(super) q_norm: Option<Tensor>,
    pub(super) k_norm: Option<Tensor>,
    /// Gemma: RMSNorm of the attention output before it joins the residual stream.
    pub(super) post_attn_norm: Option<Tensor>,
    pub(super) ffn_norm: Tensor,
    pub(super) w_gate: Linear,
    pub(super) w_up: Linear,
    pub(super) w_down: Linear,
    /// Gemma: RMSNorm of the MLP output before it joins the residual stream.
    pub(super) post_ffn_norm: Option<Tensor>,
    pub(super) window: Option<usize>,
    /// Index into [`Decoder::ropes`].
    pub(super) rope: usize,
}

/// A loaded Gemma 3 or Qwen 2/3 model.
pub struct Decoder {
    pub(super) cfg: LlamaConfig,
    pub(super) arch: ArchFlags,
    pub(super) embed: QMatMul,
    pub(super) blocks: Vec<Block>,
    pub(super) norm: Tensor,
    pub(super) lm_head: QMatMul,
    /// One table per distinct RoPE base.
    pub(super) ropes: Vec<RopeTable>,
    pub(super) dequant_rows: Option<usize>,
}

impl Decoder {
    /// Reads the tensors (GGUF names: `blk.N.attn_q.weight`, `blk.N.attn_q.bias`,
    /// `blk.N.attn_q_norm.weight`, `blk.N.post_attention_norm.weight`,
    /// `blk.N.post_ffw_norm.weight`, …). Optional tensors are taken when present.
    pub fn load(
        cfg: LlamaConfig,
        arch: ArchFlags,
        source: &mut dyn TensorSource,
        format: WeightFormat,
    ) -> Result<Self> {
        cfg.validate(source.origin())?;
        if arch.windows.len() != cfg.n_layers || arch.rope_bases.len() != cfg.n_layers {
            return Err(EngineError::CorruptModel {
                path: source.origin().to_path_buf(),
                reason: format!(
                    "{}: {} layer windows and {} RoPE bases for {} layers",
                    arch.name,
                    arch.windows.len(),
                    arch.rope_bases.len(),
                    cfg.n_layers
                ),
            });
        }
        let qmatmul = |t: QTensor| -> Result<QMatMul> {
            Ok(match format {
                WeightFormat::F32 => QMatMul::Tensor(t.dequantize(&Device::Cpu)?),
                WeightFormat::Native => QMatMul::from_qtensor(t)?,
            })
        };
        let vector = |t: QTensor| -> Result<Tensor> { Ok(t.dequantize(&Device::Cpu)?) };
        let (d, hd, q_dim, kv_dim, f) = (
            cfg.d_model,
            cfg.head_dim,
            cfg.n_heads * cfg.head_dim,
            cfg.n_kv_heads * cfg.head_dim,
            cfg.ffn_dim,
        );
        let name = arch.name.as_str();
        let embed = qmatmul(required(
            source,
            name,
            "token_embd.weight",
            &[cfg.vocab_size, d],
        )?)?;
        let mut bases: Vec<f64> = Vec::new();
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let w = |s: &str| format!("blk.{i}.{s}.weight");
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            let mut req = |n: String, shape: &[usize]| required(source, name, &n, shape);
            let attn_norm = vector(req(w("attn_norm"), &[d])?)?;
            let wq = Linear(qmatmul(req(w("attn_q"), &[q_dim, d])?)?);
            let wk = Linear(qmatmul(req(w("attn_k"), &[kv_dim, d])?)?);
            let wv = Linear(qmatmul(req(w("attn_v"), &[kv_dim, d])?)?);
            let wo = Linear(qmatmul(req(w("attn_output"), &[d, q_dim])?)?);
            let ffn_norm = vector(req(w("ffn_norm"), &[d])?)?;
            let w_gate = Linear(qmatmul(req(w("ffn_gate"), &[f, d])?)?);
            let w_up = Linear(qmatmul(req(w("ffn_up"), &[f, d])?)?);
            let w_down = Linear(qmatmul(req(w("ffn_down"), &[d, f])?)?);
            let mut opt = |n: String, shape: &[usize]| -> Result<Option<Tensor>> {
                optional(source, &n, shape)?.map(vector).transpose()
            };
            let bias_q = opt(b("attn_q"), &[q_dim])?;
            let bias_k = opt(b("attn_k"), &[kv_dim])?;
            let bias_v = opt(b("attn_v"), &[kv_dim])?;
            let q_norm = opt(w("attn_q_norm"), &[hd])?;
            let k_norm = opt(w("attn_k_norm"), &[hd])?;
            let post_attn_norm = opt(w("post_attention_norm"), &[d])?;
            let post_ffn_norm = opt(w("post_ffw_norm"), &[d])?;
            let base = arch.rope_bases[i];
            let rope = match bases.iter().position(|&x| x == base) {
                Some(r) => r,
                None => {
                    bases.push(base);
                    bases.len() - 1
                }
            };
            blocks.push(Block {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                bias_q,
                bias_k,
                bias_v,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm,
                w_gate,
                w_up,
                w_down,
                post_ffn_norm,
                window: arch.windows[i],
                rope,
            });
        }
        let norm = vector(required(source, name, "output_norm.weight", &[d])?)?;
        // Tied embeddings: without `output.weight` the embedding matrix is the LM head.
        let lm_head = match optional(source, "output.weight", &[cfg.vocab_size, d])? {
            Some(t) => qmatmul(t)?,
            None => embed.clone(),
        };
        let ropes = bases
            .iter()
            .map(|&base| RopeTable::new(hd, base, cfg.context_length, cfg.rope_pairing))
            .collect();
        Ok(Decoder {
            cfg,
            arch,
            embed,
            blocks,
            norm,
            lm_head,
            ropes,
            dequant_rows: None,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Sets the dtype of the KV stores built from [`LlamaConfig::kv_layout`].
    pub fn set_kv_dtype(&mut self, dtype: crate::cache::KvDtype) {
        self.cfg.kv_dtype = dtype;
    }

    pub fn arch(&self) -> &ArchFlags {
        &self.arch
    }

    /// Whether every layer has Q, K and V biases (Qwen 2).
    pub fn has_qkv_bias(&self) -> bool {
        self.blocks
            .iter()
            .all(|b| b.bias_q.is_some() && b.bias_k.is_some() && b.bias_v.is_some())
    }

    /// Whether every layer normalises its query and key heads (Gemma 3, Qwen 3).
    pub fn has_qk_norm(&self) -> bool {
        self.blocks
            .iter()
            .all(|b| b.q_norm.is_some() && b.k_norm.is_some())
    }

    /// See [`super::llama::Llama::set_dequant_rows`].
    pub fn set_dequant_rows(&mut self, rows: usize) {
        self.dequant_rows = Some(rows);
    }

    /// See [`super::llama::Llama::forward`].
    pub fn forward(&self, tokens: &[u32], seq: &mut Sequence, rows: LogitRows) -> Result<Tensor> {
        let hidden = self.forward_hidden(tokens, seq, rows)?;
        self.logits(&hidden)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        super::llama::lm_head_product(&self.lm_head, hidden, self.dequant_rows)
    }

    /// See [`super::llama::Llama::forward_hidden`]; the early-exit contract of
    /// [`crate::attention::AttentionPolicy::computed_rows`] holds here too.
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        seq: &mut Sequence,
        rows: LogitRows,
    ) -> Result<Tensor> {
        self.forward_batch_hidden(&mut [BatchItem::new(tokens, seq, rows)])
    }

    /// See [`super::llama::Llama::forward_batch_hidden`].
    pub fn forward_batch_hidden(&self, items: &mut [BatchItem<'_>]) -> Result<Tensor> {
        check_items(items, &self.cfg)?;
        let ids = Tensor::new(stacked_ids(items).as_slice(), &Device::Cpu)?;
        let mut x0 = self.embed.embedding(&ids)?.to_dtype(DType::F32)?;
        if let Some(s) = self.arch.embed_scale {
            x0 = (x0 * s as f64)?;
        }
        let mut x = Some(x0);
        let shape = self.cfg.attention_shape();
        let eps = self.cfg.rms_eps;
        let dq = self.dequant_rows;
        let n_layers = self.cfg.n_layers;
        let mut book = BatchRows::new(items);

        for (layer, b) in self.blocks.iter().enumerate() {
            let Some(xs) = book.select(
                x.take().expect("rows remain"),
                items,
                layer,
                n_layers,
                b.window,
            )?
            else {
                break;
            };
            let positions = book.positions();
            let n = positions.len();
            let h = rms_norm(&xs, &b.attn_norm, eps)?;
            let project = |w: &Linear, bias: &Option<Tensor>, norm: &Option<Tensor>, heads| {
                let mut y = w.forward(&h, dq)?;
                if let Some(bias) = bias {
                    y = y.broadcast_add(bias)?;
                }
                if let Some(norm) = norm {
                    let y3 = y.reshape((n, heads, self.cfg.head_dim))?;
                    y = rms_norm(&y3, norm, eps)?.reshape((n, heads * self.cfg.head_dim))?;
                }
                Ok::<Vec<f32>, EngineError>(y.flatten_all()?.to_vec1::<f32>()?)
            };
            let mut q = project(&b.wq, &b.bias_q, &b.q_norm, self.cfg.n_heads)?;
            let mut k = project(&b.wk, &b.bias_k, &b.k_norm, self.cfg.n_kv_heads)?;
            let v = project(&b.wv, &b.bias_v, &None, self.cfg.n_kv_heads)?;
            let rope = &self.ropes[b.rope];
            rope.apply(&mut q, &positions, self.cfg.n_heads);
            rope.apply(&mut k, &positions, self.cfg.n_kv_heads);
            let attn = book.attend(items, layer, n_layers, b.window, &q, &k, &v, shape);
            let attn = Tensor::from_vec(attn, (n, shape.n_heads * shape.head_dim), &Device::Cpu)?;
            let mut o = b.wo.forward(&attn, dq)?;
            if let Some(norm) = &b.post_attn_norm {
                o = rms_norm(&o, norm, eps)?;
            }
            let xs = (xs + o)?;

            let h = rms_norm(&xs, &b.ffn_norm, eps)?;
            let rows = h.dim(0)?;
            let [gate, up, down] =
                [&b.w_gate, &b.w_up, &b.w_down].map(|w| w.prepare(rows.min(MLP_ROW_BLOCK), dq));
            let (gate, up, down) = (gate?, up?, down?);
            let m = in_row_blocks(&h, |h| {
                let g = gate.forward(h)?;
                let gated = match self.arch.activation {
                    Activation::Silu => silu_mul(&g, &up.forward(h)?)?,
                    Activation::GeluTanh => (g.gelu()? * up.forward(h)?)?,
                };
                let mut m = down.forward(&gated)?;
                if let Some(norm) = &b.post_ffn_norm {
                    m = rms_norm(&m, norm, eps)?;
                }
                Ok(m)
            })?;
            x = Some((xs + m)?);
        }
        let out = book.finish(x, items, self.cfg.d_model)?;
        rms_norm(&out, &self.norm, eps)
    }
}

/// The tensor `name` if the file has it, checked against `shape`.
fn optional(source: &mut dyn TensorSource, name: &str, shape: &[usize]) -> Result<Option<QTensor>> {
    match source.tensor(name)? {
        Some(t) if t.shape().dims() != shape => Err(EngineError::CorruptModel {
            path: source.origin().to_path_buf(),
            reason: format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.shape().dims()
            ),
        }),
        other => Ok(other),
    }
}

/// As [`optional`], but a missing tensor is an error naming the architecture.
fn required(
    source: &mut dyn TensorSource,
    arch: &str,
    name: &str,
    shape: &[usize],
) -> Result<QTensor> {
    optional(source, name, shape)?.ok_or_else(|| EngineError::CorruptModel {
        path: source.origin().to_path_buf(),
        reason: format!("tensor `{name}` is missing ({arch} layout)"),
    })
}
