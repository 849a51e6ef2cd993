//! Gemma 3 (text) from GGUF: what sets it apart from llama, and where each piece lives.
//!
//! * **Local / global interleave.** Every sixth layer (5, 11, 17, …) attends globally; the
//!   others see a sliding window of `gemma3.attention.sliding_window` tokens (512 for 270M).
//!   The period 6 is not in the file; it is the released models' pattern, which llama.cpp and
//!   transformers both hard-code. Knob: [`Gemma3Options::global_every`].
//! * **Two RoPE bases.** Global layers use `gemma3.rope.freq_base` (1e6); sliding layers use
//!   10 000, which the file does not store either (`rope.freq_base_swa` is read if present).
//!   RoPE pairs the two halves of each head (llama.cpp leaves Gemma's Q/K rows unpermuted).
//! * **QK-norm**: RMSNorm over each head of Q and K before RoPE (`attn_q_norm`, `attn_k_norm`).
//! * **Sandwich norms**: the attention and MLP outputs are normalised again
//!   (`post_attention_norm`, `post_ffw_norm`) before joining the residual stream.
//! * **Gemma RMSNorm** multiplies by `1 + w`. llama.cpp's converter stores `1 + w` in the GGUF
//!   already, so from GGUF every norm is the plain `x / rms(x) · w'`.
//! * **Scaled embeddings**: rows multiplied by `sqrt(d_model)`; the LM head is the unscaled
//!   embedding matrix (tied).
//! * **GeGLU** MLP with the tanh approximation of GELU.
//! * Attention scale `1/sqrt(head_dim)`: Gemma 3's `query_pre_attn_scalar` equals `head_dim`
//!   in every size but 27B, which the file cannot tell apart, so 27B is refused by shape.
//!
//! The forward pass is [`super::decoder::Decoder`]'s.

use super::decoder::{Activation, ArchFlags, Decoder};
use super::gguf::GgufFile;
use super::llama::{TensorSource, WeightFormat};
use crate::error::{EngineError, Result};

/// Choices the file does not record (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma3Options {
    /// Every `global_every`-th layer (1-based) attends globally.
    pub global_every: usize,
    /// RoPE base of the sliding layers when the file has no `rope.freq_base_swa`.
    pub local_rope_base: f64,
}

impl Default for Gemma3Options {
    fn default() -> Self {
        Gemma3Options {
            global_every: 6,
            local_rope_base: 10_000.0,
        }
    }
}

/// Which layers slide and with which RoPE base, from the file and `opts`.
pub fn layer_plan(
    n_layers: usize,
    window: usize,
    global_base: f64,
    local_base: f64,
    opts: &Gemma3Options,
) -> (Vec<Option<usize>>, Vec<f64>) {
    (0..n_layers)
        .map(|i| {
            if (i + 1) % opts.global_every.max(1) == 0 {
                (None, global_base)
            } else {
                (Some(window), local_base)
            }
        })
        .unzip()
}

/// Loads a `gemma3` GGUF file.
pub fn load(file: &mut GgufFile, format: WeightFormat) -> Result<Decoder> {
    let opts = Gemma3Options::default();
    let cfg = file.llama_config()?;
    let window = file.usize("gemma3.attention.sliding_window")?;
    if window == 0 {
        return Err(EngineError::MissingMetadata {
            field: "gemma3.attention.sliding_window (must be > 0)".into(),
            path: file.path.clone(),
        });
    }
    // 27B is the one size whose attention scale is not 1/sqrt(head_dim) (d_model 5376).
    if cfg.d_model == 5376 {
        return Err(EngineError::UnsupportedArchitecture {
            arch: "gemma3 27B (query_pre_attn_scalar differs from head_dim)".into(),
            path: file.path.clone(),
            supported: "gemma3 270M, 1B, 4B, 12B".into(),
        });
    }
    if file
        .content
        .metadata
        .contains_key("gemma3.rope.scaling.factor")
    {
        return Err(EngineError::UnsupportedArchitecture {
            arch: "gemma3 with RoPE scaling (4B and larger)".into(),
            path: file.path.clone(),
            supported: "gemma3 without rope.scaling (270M, 1B)".into(),
        });
    }
    let local_base = file.f64_or("gemma3.rope.freq_base_swa", opts.local_rope_base)?;
    let (windows, rope_bases) = layer_plan(cfg.n_layers, window, cfg.rope_theta, local_base, &opts);
    let arch = ArchFlags {
        name: "gemma3".into(),
        activation: Activation::GeluTanh,
        embed_scale: Some((cfg.d_model as f32).sqrt()),
        windows,
        rope_bases,
    };
    Decoder::load(cfg, arch, file as &mut dyn TensorSource, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_layer_is_global_with_its_own_base() {
        let (w, b) = layer_plan(18, 512, 1e6, 1e4, &Gemma3Options::default());
        let global: Vec<usize> = (0..18).filter(|&i| w[i].is_none()).collect();
        assert_eq!(global, vec![5, 11, 17]);
        assert_eq!(w[0], Some(512));
        assert_eq!((b[5], b[4]), (1e6, 1e4));
    }
}
