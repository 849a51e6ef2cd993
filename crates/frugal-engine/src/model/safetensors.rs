//! Loading a Hugging Face llama checkpoint directory: `config.json`, `*.safetensors`,
//! `tokenizer.json`. Tensors are renamed to their GGUF names so one loader builds the model.

use super::llama::{LlamaConfig, TensorSource};
use crate::error::{EngineError, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use frugal_numerics::rope::RopePairing;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Hugging Face architectures we load: the llama layout, and Qwen 2/3 ([`super::qwen`]).
pub const SUPPORTED_HF_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
];

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    num_hidden_layers: usize,
    vocab_size: usize,
    rms_norm_eps: f64,
    /// Top level in transformers 4 configs; inside `rope_parameters` in transformers 5's.
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    max_position_embeddings: usize,
    head_dim: Option<usize>,
    #[serde(default)]
    use_sliding_window: bool,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// RoPE base when a config gives none (transformers' default).
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// A checkpoint directory with its tensors loaded (memory-mapped) under GGUF names.
pub struct SafetensorsDir {
    pub dir: PathBuf,
    tensors: HashMap<String, Tensor>,
    pub config: LlamaConfig,
    /// The first `architectures` entry of config.json, if any.
    pub architecture: Option<String>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|_| EngineError::ModelNotFound(config_path.clone()))?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| EngineError::CorruptModel {
            path: config_path.clone(),
            reason: format!("config.json is not a llama config: {e}"),
        })?;
        if let Some(arch) = hf
            .architectures
            .iter()
            .find(|a| !SUPPORTED_HF_ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(EngineError::UnsupportedArchitecture {
                arch: arch.clone(),
                path: config_path,
                supported: SUPPORTED_HF_ARCHITECTURES.join(", "),
            });
        }
        if let Some(kind) = hf
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
            .filter(|k| *k != "default")
        {
            return Err(EngineError::UnsupportedArchitecture {
                arch: format!("RoPE type `{kind}`"),
                path: config_path,
                supported: "rope_type = default".into(),
            });
        }
        let rope_theta = hf
            .rope_theta
            .or_else(|| hf.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(DEFAULT_ROPE_THETA);
        if hf.use_sliding_window {
            return Err(EngineError::UnsupportedArchitecture {
                arch: "Qwen 2 with use_sliding_window = true".into(),
                path: config_path,
                supported: "use_sliding_window = false".into(),
            });
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(EngineError::ModelNotFound(dir.join("*.safetensors")));
        }
        let mut tensors = HashMap::new();
        for f in &files {
            let loaded =
                candle_core::safetensors::load(f, &candle_core::Device::Cpu).map_err(|e| {
                    EngineError::CorruptModel {
                        path: f.clone(),
                        reason: format!("not a readable safetensors file ({e})"),
                    }
                })?;
            for (name, t) in loaded {
                if let Some(gguf) = gguf_name(&name) {
                    tensors.insert(gguf, t);
                }
            }
        }
        let config = LlamaConfig {
            n_layers: hf.num_hidden_layers,
            d_model: hf.hidden_size,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            ffn_dim: hf.intermediate_size,
            vocab_size: hf.vocab_size,
            rope_theta,
            rms_eps: hf.rms_norm_eps,
            context_length: hf.max_position_embeddings,
            // Hugging Face checkpoints rotate the two halves of each head together.
            rope_pairing: RopePairing::Half,
            kv_dtype: crate::cache::KvDtype::default(),
        };
        Ok(SafetensorsDir {
            dir: dir.to_path_buf(),
            tensors,
            config,
            architecture: hf.architectures.first().cloned(),
        })
    }
}

/// Hugging Face tensor name → GGUF tensor name (`None` for tensors the model does not use).
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let bias = match part {
        "self_attn.q_proj.bias" => Some("attn_q"),
        "self_attn.k_proj.bias" => Some("attn_k"),
        "self_attn.v_proj.bias" => Some("attn_v"),
        _ => None,
    };
    if let Some(b) = bias {
        return Some(format!("blk.{layer}.{b}.bias"));
    }
    let gguf = match part {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.q_norm.weight" => "attn_q_norm",
        "self_attn.k_norm.weight" => "attn_k_norm",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.weight"))
}

impl TensorSource for SafetensorsDir {
    fn tensor(&mut self, name: &str) -> Result<Option<QTensor>> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        let t = t.to_dtype(DType::F32)?;
        Ok(Some(QTensor::quantize(&t, GgmlDType::F32)?))
    }

    fn origin(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::gguf_name;

    #[test]
    fn hf_names_map_to_gguf_names() {
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(),
            Some("blk.12.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
    }
}
