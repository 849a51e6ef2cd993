//! The decoder on a compute device: weights, KV store and attention as candle tensor ops, so
//! the whole forward pass runs where the tensors live (candle's CUDA backend on a GPU; the same
//! code runs on the CPU, which is how the tests pin it to the reference path).
//!
//! What it is, honestly: a first GPU path. Projections and the MLP use candle's kernels
//! (quantised GGUF matmuls kept quantised, or f32 weights with cuBLAS); RMSNorm, RoPE and
//! softmax use candle-nn's fused kernels; the KV store is per (layer, KV head) on the device
//! ([`DeviceKvStore`]); attention is dense and written with candle tensor ops:
//! `softmax(q·Kᵀ/√d + mask)·V` over each KV head's rows (one batched matmul for a layer's heads
//! when they hold the same positions), queries in chunks so the score block stays bounded,
//! causal and sliding-window masks built from the heads' own positions (so holes would be
//! honoured). It is not a fused attention kernel: every step materialises its scores. Policies
//! that rewrite the cache or plan attention paths run on the host only; a sequence that carries
//! one is refused with an error that says so.
//!
//! The CPU path ([`super::llama`], [`super::decoder`]) stays the reference; this one follows its
//! formulas (RMSNorm, gated MLP, RoPE tables, grouped-query attention) with device kernels, and
//! `tests/device_model.rs` compares the two.

use super::decoder::{Activation, ArchFlags, Decoder};
use super::llama::{Llama, LlamaConfig, LogitRows};
use crate::cache::device_store::DeviceKvStore;
use crate::error::{EngineError, Result};
use crate::sequence::Sequence;
use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use frugal_numerics::rope::RopePairing;
use std::sync::Arc;

/// Default for [`DeviceModel::set_score_budget`]: most score entries (query rows × keys) one
/// attention matmul materialises; larger calls are split into query chunks (ours: 2²⁶ f32 =
/// 256 MiB, small beside an H100's memory, large enough that a chunk keeps the GPU busy).
pub const DEFAULT_SCORE_BUDGET: usize = 1 << 26;

/// Weights of one block on the device. Optional parts as in [`super::decoder`].
struct DeviceBlock {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    bias_q: Option<Tensor>,
    bias_k: Option<Tensor>,
    bias_v: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    w_gate: QMatMul,
    w_up: QMatMul,
    w_down: QMatMul,
    post_ffn_norm: Option<Tensor>,
    window: Option<usize>,
    rope: usize,
}

/// cos/sin of every position below the context length, `[positions, head_dim / 2]`, computed
/// with the formula of [`frugal_numerics::rope::RopeTable`] (angles in f64, rounded to f32).
struct DeviceRope {
    cos: Tensor,
    sin: Tensor,
    pairing: RopePairing,
}

impl DeviceRope {
    fn new(
        head_dim: usize,
        base: f64,
        positions: usize,
        pairing: RopePairing,
        dev: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for f in &inv_freq {
                let angle = (pos as f64 * f) as f32;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(DeviceRope {
            cos: Tensor::from_vec(cos, (positions, half), dev)?,
            sin: Tensor::from_vec(sin, (positions, half), dev)?,
            pairing,
        })
    }

    /// Rotates `x` (`[heads, T, head_dim]`, contiguous) at `positions` (u32 `[T]` on the
    /// device), with candle's fused RoPE kernels (interleaved or half pairing).
    fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let cos = self.cos.index_select(positions, 0)?;
        let sin = self.sin.index_select(positions, 0)?;
        let x = x.unsqueeze(0)?;
        let y = match self.pairing {
            RopePairing::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            RopePairing::Half => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
        };
        Ok(y.squeeze(0)?)
    }
}

/// A decoder (llama, Gemma 3, Qwen 2/3) whose weights live on a compute device.
pub struct DeviceModel {
    cfg: LlamaConfig,
    arch: ArchFlags,
    device: Device,
    embed: QMatMul,
    blocks: Vec<DeviceBlock>,
    norm: Tensor,
    lm_head: QMatMul,
    ropes: Vec<DeviceRope>,
    score_budget: usize,
}

/// A projection's weight on `dev`: quantised blocks stay quantised (candle's device kernels
/// multiply them), dense weights are copied as they are.
fn matmul_to(w: &QMatMul, dev: &Device) -> Result<QMatMul> {
    Ok(match w {
        QMatMul::QTensor(q) => {
            let storage = QStorage::from_data(q.data()?, dev, q.dtype())?;
            QMatMul::QTensor(Arc::new(QTensor::new(storage, q.shape().clone())?))
        }
        QMatMul::Tensor(t) => QMatMul::Tensor(t.to_device(dev)?),
        QMatMul::TensorF16(t) => QMatMul::TensorF16(t.to_device(dev)?),
    })
}

/// Whether two projections hold the same weights (tied embeddings share one tensor).
fn same_weights(a: &QMatMul, b: &QMatMul) -> bool {
    match (a, b) {
        (QMatMul::QTensor(x), QMatMul::QTensor(y)) => Arc::ptr_eq(x, y),
        (QMatMul::Tensor(x), QMatMul::Tensor(y))
        | (QMatMul::TensorF16(x), QMatMul::TensorF16(y)) => x.id() == y.id(),
        _ => false,
    }
}

fn opt_to(t: &Option<Tensor>, dev: &Device) -> Result<Option<Tensor>> {
    Ok(t.as_ref().map(|t| t.to_device(dev)).transpose()?)
}

/// RoPE tables for each distinct base, and each layer's index into them.
fn rope_tables(
    cfg: &LlamaConfig,
    bases: &[f64],
    dev: &Device,
) -> Result<(Vec<DeviceRope>, Vec<usize>)> {
    let mut distinct: Vec<f64> = Vec::new();
    let mut index = Vec::with_capacity(bases.len());
    for &b in bases {
        index.push(match distinct.iter().position(|&x| x == b) {
            Some(i) => i,
            None => {
                distinct.push(b);
                distinct.len() - 1
            }
        });
    }
    let tables = distinct
        .iter()
        .map(|&b| DeviceRope::new(cfg.head_dim, b, cfg.context_length, cfg.rope_pairing, dev))
        .collect::<Result<Vec<_>>>()?;
    Ok((tables, index))
}

impl DeviceModel {
    /// Copies a llama-family model's weights onto `dev`.
    pub fn from_llama(m: &Llama, dev: &Device) -> Result<Self> {
        let cfg = m.cfg.clone();
        let n = cfg.n_layers;
        let arch = ArchFlags {
            name: "llama".into(),
            activation: Activation::Silu,
            embed_scale: None,
            windows: vec![None; n],
            rope_bases: vec![cfg.rope_theta; n],
        };
        let (ropes, rope_of) = rope_tables(&cfg, &arch.rope_bases, dev)?;
        let blocks = m
            .blocks
            .iter()
            .zip(&rope_of)
            .map(|(b, &rope)| {
                Ok(DeviceBlock {
                    attn_norm: b.attn_norm.to_device(dev)?,
                    wq: matmul_to(&b.wq.0, dev)?,
                    wk: matmul_to(&b.wk.0, dev)?,
                    wv: matmul_to(&b.wv.0, dev)?,
                    wo: matmul_to(&b.wo.0, dev)?,
                    bias_q: None,
                    bias_k: None,
                    bias_v: None,
                    q_norm: None,
                    k_norm: None,
                    post_attn_norm: None,
                    ffn_norm: b.ffn_norm.to_device(dev)?,
                    w_gate: matmul_to(&b.w_gate.0, dev)?,
                    w_up: matmul_to(&b.w_up.0, dev)?,
                    w_down: matmul_to(&b.w_down.0, dev)?,
                    post_ffn_norm: None,
                    window: None,
                    rope,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = matmul_to(&m.embed, dev)?;
        let lm_head = match same_weights(&m.embed, &m.lm_head) {
            true => embed.clone(),
            false => matmul_to(&m.lm_head, dev)?,
        };
        Ok(DeviceModel {
            norm: m.norm.to_device(dev)?,
            cfg,
            arch,
            device: dev.clone(),
            embed,
            blocks,
            lm_head,
            ropes,
            score_budget: DEFAULT_SCORE_BUDGET,
        })
    }

    /// Copies a Gemma 3 / Qwen 2/3 model's weights onto `dev`.
    pub fn from_decoder(m: &Decoder, dev: &Device) -> Result<Self> {
        let cfg = m.cfg.clone();
        let arch = m.arch.clone();
        let (ropes, rope_of) = rope_tables(&cfg, &arch.rope_bases, dev)?;
        let blocks = m
            .blocks
            .iter()
            .zip(&rope_of)
            .map(|(b, &rope)| {
                Ok(DeviceBlock {
                    attn_norm: b.attn_norm.to_device(dev)?,
                    wq: matmul_to(&b.wq.0, dev)?,
                    wk: matmul_to(&b.wk.0, dev)?,
                    wv: matmul_to(&b.wv.0, dev)?,
                    wo: matmul_to(&b.wo.0, dev)?,
                    bias_q: opt_to(&b.bias_q, dev)?,
                    bias_k: opt_to(&b.bias_k, dev)?,
                    bias_v: opt_to(&b.bias_v, dev)?,
                    q_norm: opt_to(&b.q_norm, dev)?,
                    k_norm: opt_to(&b.k_norm, dev)?,
                    post_attn_norm: opt_to(&b.post_attn_norm, dev)?,
                    ffn_norm: b.ffn_norm.to_device(dev)?,
                    w_gate: matmul_to(&b.w_gate.0, dev)?,
                    w_up: matmul_to(&b.w_up.0, dev)?,
                    w_down: matmul_to(&b.w_down.0, dev)?,
                    post_ffn_norm: opt_to(&b.post_ffn_norm, dev)?,
                    window: b.window,
                    rope,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = matmul_to(&m.embed, dev)?;
        let lm_head = match same_weights(&m.embed, &m.lm_head) {
            true => embed.clone(),
            false => matmul_to(&m.lm_head, dev)?,
        };
        Ok(DeviceModel {
            norm: m.norm.to_device(dev)?,
            cfg,
            arch,
            device: dev.clone(),
            embed,
            blocks,
            lm_head,
            ropes,
            score_budget: DEFAULT_SCORE_BUDGET,
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

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Most score entries one attention matmul may hold (see [`DEFAULT_SCORE_BUDGET`]); a
    /// smaller budget splits calls into more query chunks, same result.
    pub fn set_score_budget(&mut self, entries: usize) {
        self.score_budget = entries.max(1);
    }

    /// Logits `[rows, vocab]` on the device for final hidden states (moved to the device first).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = hidden.to_device(&self.device)?;
        Ok(self.lm_head.forward(&h)?)
    }

    /// As [`Llama::forward_hidden`], on the device: returns the final-norm hidden states
    /// `[rows, d_model]` on the device. The sequence must carry the `full` cache and `dense`
    /// attention (the host policies cannot see device tensors); its K/V go to a
    /// [`DeviceKvStore`] it holds.
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        seq: &mut Sequence,
        rows: LogitRows,
    ) -> Result<Tensor> {
        let t = tokens.len();
        let start = seq.len();
        if t == 0 {
            return Err(EngineError::Tokenizer("empty input: nothing to run".into()));
        }
        if start + t > self.cfg.context_length {
            return Err(EngineError::ContextOverflow {
                tokens: start + t,
                limit: self.cfg.context_length,
            });
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(EngineError::Tokenizer(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.cfg.vocab_size
            )));
        }
        check_policies(seq, &self.device)?;
        let layout = self.cfg.kv_layout();
        let kv = seq
            .device_kv
            .get_or_insert_with(|| DeviceKvStore::new(layout, self.device.clone()));
        if kv.layout() != layout {
            return Err(EngineError::Internal(
                "the sequence's device KV store belongs to another model".into(),
            ));
        }
        if kv.positions(0, 0).len() != start {
            return Err(EngineError::DeviceUnsupported {
                device: device_name(&self.device),
                reason: format!(
                    "the sequence has {start} tokens but its device KV store holds {} (a \
                     sequence resumed from a host cache cannot continue on the device)",
                    kv.positions(0, 0).len()
                ),
            });
        }
        let positions: Vec<u32> = (start as u32..(start + t) as u32).collect();
        let dev = &self.device;
        let pos = Tensor::new(positions.as_slice(), dev)?;
        let ids = Tensor::new(tokens, dev)?;
        let mut x = self.embed.embedding(&ids)?.to_dtype(DType::F32)?;
        if let Some(s) = self.arch.embed_scale {
            x = (x * s as f64)?;
        }
        let (hd, eps) = (self.cfg.head_dim, self.cfg.rms_eps);
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = norm(&x, &b.attn_norm, eps)?;
            // Each projection as `[heads, T, head_dim]`: heads first, as RoPE, the store and
            // attention read it.
            let project = |w: &QMatMul, bias: &Option<Tensor>, qk_norm: &Option<Tensor>, heads| {
                let mut y = w.forward(&h)?;
                if let Some(bias) = bias {
                    y = y.broadcast_add(bias)?;
                }
                let mut y = y.reshape((t, heads, hd))?;
                if let Some(w) = qk_norm {
                    y = norm(&y, w, eps)?;
                }
                Ok::<Tensor, EngineError>(y.transpose(0, 1)?.contiguous()?)
            };
            let q = project(&b.wq, &b.bias_q, &b.q_norm, self.cfg.n_heads)?;
            let k = project(&b.wk, &b.bias_k, &b.k_norm, self.cfg.n_kv_heads)?;
            let v = project(&b.wv, &b.bias_v, &None, self.cfg.n_kv_heads)?;
            let rope = &self.ropes[b.rope];
            let q = rope.apply(&q, &pos)?;
            let k = rope.apply(&k, &pos)?;
            kv.append_layer(layer, &positions, &k, &v)?;
            let attn = self.attention(&q, &positions, kv, layer, b.window)?;
            let mut o = b.wo.forward(&attn)?;
            if let Some(w) = &b.post_attn_norm {
                o = norm(&o, w, eps)?;
            }
            x = (x + o)?;

            let h = norm(&x, &b.ffn_norm, eps)?;
            let gate = b.w_gate.forward(&h)?;
            let gate = match self.arch.activation {
                Activation::Silu => gate.silu()?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let up = b.w_up.forward(&h)?;
            let mut m = b.w_down.forward(&(gate * up)?)?;
            if let Some(w) = &b.post_ffn_norm {
                m = norm(&m, w, eps)?;
            }
            x = (x + m)?;
        }
        seq.advance(t);
        let x = match rows {
            LogitRows::Last => x.narrow(0, t - 1, 1)?,
            LogitRows::All => x,
            LogitRows::From(i) => x.narrow(0, i.min(t - 1), t - i.min(t - 1))?,
        };
        norm(&x.contiguous()?, &self.norm, eps)
    }

    /// Dense attention of `q` (`[n_heads, T, head_dim]`, RoPE applied, at `positions`) over
    /// `layer`'s heads in `kv`; returns `[T, n_heads * head_dim]`. Query head `h` reads KV head
    /// `h / group` (grouped-query attention without copying K/V per query head). Heads that hold
    /// the same positions run as one batched matmul; otherwise one head at a time.
    fn attention(
        &self,
        q: &Tensor,
        positions: &[u32],
        kv: &DeviceKvStore,
        layer: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (n_heads, t, d) = q.dims3()?;
        let n_kv = self.cfg.n_kv_heads;
        let q = q.reshape((n_kv, n_heads / n_kv, t, d))?;
        let out = match kv.shared_positions(layer) {
            Some(held) => self.attend(
                &q,
                positions,
                held,
                &|s, e| kv.keys(layer, s, e),
                &|s, e| kv.values(layer, s, e),
                window,
            )?,
            None => {
                let mut heads = Vec::with_capacity(n_kv);
                for g in 0..n_kv {
                    heads.push(self.attend(
                        &q.narrow(0, g, 1)?,
                        positions,
                        kv.positions(layer, g),
                        &|s, e| Ok(kv.keys(layer, s, e)?.narrow(0, g, 1)?),
                        &|s, e| Ok(kv.values(layer, s, e)?.narrow(0, g, 1)?),
                        window,
                    )?);
                }
                Tensor::cat(&heads, 0)?
            }
        };
        Ok(out
            .reshape((n_heads, t, d))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, n_heads * d))?)
    }

    /// `softmax(q·Kᵀ/√d + mask)·V` for `q` `[B, group, T, d]` over keys held at `held`
    /// (`keys(s, e)`/`values(s, e)` give rows `s..e` as `[B, e - s, d]`); returns
    /// `[B, group, T, d]`. Queries run in chunks of at most the score budget.
    fn attend(
        &self,
        q: &Tensor,
        positions: &[u32],
        held: &[u32],
        keys: &dyn Fn(usize, usize) -> Result<Tensor>,
        values: &dyn Fn(usize, usize) -> Result<Tensor>,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (b, group, t, d) = q.dims4()?;
        let scale = 1.0 / (d as f64).sqrt();
        let first_visible = |p: u32| window.map_or(0, |w| (p + 1).saturating_sub(w as u32));
        let chunk = (self.score_budget / (b * group * held.len().max(1))).clamp(1, t);
        let mut outs = Vec::with_capacity(t.div_ceil(chunk));
        for c0 in (0..t).step_by(chunk) {
            let c = chunk.min(t - c0);
            let qpos = &positions[c0..c0 + c];
            // Keys some query of the chunk may see: from the first query's window start up to
            // the last query's position (positions ascend in both lists).
            let ks = held.partition_point(|&p| p < first_visible(qpos[0]));
            let ke = held.partition_point(|&p| p <= qpos[c - 1]);
            if ks >= ke {
                outs.push(Tensor::zeros((b, group, c, d), DType::F32, &self.device)?);
                continue;
            }
            let l = ke - ks;
            let qc = q
                .narrow(2, c0, c)?
                .contiguous()?
                .reshape((b, group * c, d))?;
            let mut scores = (qc.matmul(&keys(ks, ke)?.t()?)? * scale)?; // [B, group*c, L]
                                                                         // A mask is needed only where some key lies after a query (causality inside the
                                                                         // chunk) or before a later query's window.
            let causal = held[ke - 1] > qpos[0];
            let windowed = first_visible(qpos[c - 1]) > held[ks];
            if causal || windowed {
                let mask = self.mask(qpos, &held[ks..ke], window)?; // [c, L]
                scores = scores
                    .reshape((b, group, c, l))?
                    .broadcast_add(&mask)?
                    .reshape((b, group * c, l))?;
            }
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            outs.push(p.matmul(&values(ks, ke)?)?.reshape((b, group, c, d))?);
        }
        Ok(Tensor::cat(&outs, 2)?)
    }

    /// Additive mask `[queries, keys]`: 0 where the key is visible (at or before the query,
    /// inside its window), -1e30 elsewhere (finite, so a product with 0 stays 0 and the exp
    /// underflows to exactly 0).
    fn mask(&self, qpos: &[u32], kpos: &[u32], window: Option<usize>) -> Result<Tensor> {
        let dev = &self.device;
        let q = Tensor::new(qpos, dev)?.to_dtype(DType::F32)?.unsqueeze(1)?;
        let k = Tensor::new(kpos, dev)?.to_dtype(DType::F32)?.unsqueeze(0)?;
        let mut visible = k.broadcast_le(&q)?.to_dtype(DType::F32)?;
        if let Some(w) = window {
            let inside = (k + w as f64)?.broadcast_gt(&q)?.to_dtype(DType::F32)?;
            visible = (visible * inside)?;
        }
        Ok(((visible - 1.0)? * 1e30)?)
    }
}

/// RMSNorm over the last dimension with candle's fused kernel (one launch instead of six); the
/// same formula as the host path's `rms_norm`, summed in f32.
fn norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, w, eps as f32)?)
}

/// The device path keeps K/V in its own store and computes dense attention: a sequence whose
/// policies would store or select differently must run on the host.
fn check_policies(seq: &Sequence, dev: &Device) -> Result<()> {
    let (cache, attention) = (seq.cache.name(), seq.attention.name());
    if cache != "full" || attention != "dense" {
        let spec = if cache == attention {
            cache
        } else {
            format!("{cache} + {attention}")
        };
        return Err(EngineError::DeviceUnsupported {
            device: device_name(dev),
            reason: format!(
                "policy `{spec}` runs on the CPU only until it is ported (only `full` runs on \
                 the device path); run it without --device"
            ),
        });
    }
    if seq.cache.resident_bytes() > 0 {
        return Err(EngineError::DeviceUnsupported {
            device: device_name(dev),
            reason: "the sequence already holds K/V in a host cache".into(),
        });
    }
    if let Some(kv) = &seq.device_kv {
        if !kv.device().same_device(dev) {
            return Err(EngineError::DeviceUnsupported {
                device: device_name(dev),
                reason: "the sequence's KV store is on another device".into(),
            });
        }
    }
    Ok(())
}

/// `cpu` or `cuda:N`, for messages.
pub fn device_name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The compute device a name asks for: `cpu`, `cuda` (device 0) or `cuda:N`.
pub fn open_device(name: &str) -> Result<Device> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| EngineError::DeviceUnsupported {
                device: name.into(),
                reason: "unknown device (expected cpu, cuda or cuda:N)".into(),
            })?,
    };
    if cfg!(not(feature = "cuda")) {
        return Err(EngineError::DeviceUnsupported {
            device: name.into(),
            reason: "this binary was built without CUDA support; build it with \
                     scripts/cuda/build_candle_cuda.sh (cargo feature `cuda`)"
                .into(),
        });
    }
    Device::new_cuda(ordinal).map_err(|e| EngineError::DeviceUnsupported {
        device: name.into(),
        reason: format!("cannot open CUDA device {ordinal}: {e}"),
    })
}

/// Peak device memory, from the high-water mark of the device's default memory pool: candle's
/// CUDA backend allocates through cudarc's stream-ordered allocator (`cuMemAllocAsync`), which
/// draws from that pool, so the mark counts every tensor and KV buffer exactly, not sampled.
/// Libraries' own workspaces (cuBLAS allocates its own with `cudaMalloc`) are not counted.
/// `None` on the CPU and in builds without the `cuda` feature.
pub fn reset_peak_device_memory(dev: &Device) -> Option<()> {
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        return cuda_pool::set_used_high(dev, 0);
    }
    let _ = dev;
    None
}

/// Bytes in use at the peak since [`reset_peak_device_memory`] (see there).
pub fn peak_device_memory(dev: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        return cuda_pool::used_high(dev);
    }
    let _ = dev;
    None
}

#[cfg(feature = "cuda")]
mod cuda_pool {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::Device;

    fn pool(dev: &Device) -> Option<sys::CUmemoryPool> {
        let ctx = dev.as_cuda_device().ok()?.cuda_stream().context().clone();
        // Without stream-ordered allocation candle's buffers do not come from a pool.
        if !ctx.has_async_alloc() {
            return None;
        }
        ctx.bind_to_thread().ok()?;
        dev.synchronize().ok()?;
        // SAFETY: the device handle comes from a live context.
        unsafe { result::device::get_mem_pool(ctx.cu_device()).ok() }
    }

    pub fn used_high(dev: &Device) -> Option<u64> {
        let pool = pool(dev)?;
        let mut v: sys::cuuint64_t = 0;
        // SAFETY: USED_MEM_HIGH is a cuuint64_t attribute of a valid pool.
        unsafe {
            result::mem_pool::get_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut v as *mut _ as *mut core::ffi::c_void,
            )
            .ok()?;
        }
        Some(v)
    }

    pub fn set_used_high(dev: &Device, value: u64) -> Option<()> {
        let pool = pool(dev)?;
        let mut v: sys::cuuint64_t = value;
        // SAFETY: as above; the driver only accepts 0 (a reset) for this attribute.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut v as *mut _ as *mut core::ffi::c_void,
            )
            .ok()
        }
    }
}
