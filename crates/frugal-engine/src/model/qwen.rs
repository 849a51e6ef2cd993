//! Qwen 2 and Qwen 3, from GGUF (`qwen2`, `qwen3`) or a Hugging Face directory
//! (`Qwen2ForCausalLM`, `Qwen3ForCausalLM`).
//!
//! Both are llama blocks (RMSNorm, SwiGLU, grouped-query attention) with RoPE over the two
//! halves of each head. Qwen 2 adds biases to the Q, K and V projections; Qwen 3 drops them and
//! instead applies RMSNorm to each query and key head before RoPE (QK-norm), with a head
//! dimension set apart from `d_model / heads` (`attention.key_length` / `head_dim`). Each file
//! must carry the tensors its family has, so a Qwen 2 file without biases, or a Qwen 3 file
//! without QK-norm weights, is refused by name rather than run as something else.
//!
//! Qwen 2's optional sliding window (`use_sliding_window`, off in the released models) is not
//! implemented; a directory that turns it on is refused.
//!
//! The forward pass is [`super::decoder::Decoder`]'s.

use super::decoder::{Activation, ArchFlags, Decoder};
use super::llama::{LlamaConfig, TensorSource, WeightFormat};
use crate::error::{EngineError, Result};

/// The two families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QwenFamily {
    Qwen2,
    Qwen3,
}

impl QwenFamily {
    pub fn name(self) -> &'static str {
        match self {
            QwenFamily::Qwen2 => "qwen2",
            QwenFamily::Qwen3 => "qwen3",
        }
    }

    /// From a GGUF `general.architecture` or a Hugging Face `architectures` entry.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "qwen2" | "Qwen2ForCausalLM" => Some(QwenFamily::Qwen2),
            "qwen3" | "Qwen3ForCausalLM" => Some(QwenFamily::Qwen3),
            _ => None,
        }
    }
}

/// Loads a Qwen model from `source` (GGUF names; the safetensors directory renames to them).
pub fn load(
    family: QwenFamily,
    cfg: LlamaConfig,
    source: &mut dyn TensorSource,
    format: WeightFormat,
) -> Result<Decoder> {
    let n = cfg.n_layers;
    let arch = ArchFlags {
        name: family.name().into(),
        activation: Activation::Silu,
        embed_scale: None,
        windows: vec![None; n],
        rope_bases: vec![cfg.rope_theta; n],
    };
    let origin = source.origin().to_path_buf();
    let model = Decoder::load(cfg, arch, source, format)?;
    let (has, what) = match family {
        QwenFamily::Qwen2 => (
            model.has_qkv_bias(),
            "Q/K/V biases (`blk.N.attn_q.bias`, …)",
        ),
        QwenFamily::Qwen3 => (
            model.has_qk_norm(),
            "QK-norm weights (`blk.N.attn_q_norm.weight`, …)",
        ),
    };
    if !has {
        return Err(EngineError::CorruptModel {
            path: origin,
            reason: format!(
                "a {} model has {what} in every layer; this file does not",
                family.name()
            ),
        });
    }
    Ok(model)
}
