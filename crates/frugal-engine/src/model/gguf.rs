//! Reading GGUF files: header, metadata, tensor table, with every failure named.
//!
//! candle's `gguf_file` parses the format; this module adds what a user needs when a file is
//! wrong: a missing file, a file cut short (checked against the tensor table before any weight
//! is read), an architecture we do not run, a missing metadata field.

use super::llama::{LlamaConfig, TensorSource};
use crate::error::{EngineError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use frugal_numerics::rope::RopePairing;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// Architectures we run: `llama` ([`super::llama`]), `gemma3` ([`super::gemma3`]), `qwen2` and
/// `qwen3` ([`super::qwen`]).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3", "qwen2", "qwen3"];

/// An open GGUF file with its parsed header.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(EngineError::ModelNotFound(path.to_path_buf()));
        }
        let corrupt = |reason: String| EngineError::CorruptModel {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path)?;
        let file_size = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| corrupt(format!("not a readable GGUF file ({e})")))?;
        // A download cut short passes the header check but not this one.
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(corrupt(format!("tensor `{name}` has {elems} elements, not a multiple of its block size {block}")));
            }
            let end = content.tensor_data_offset
                + info.offset
                + (elems / block * info.ggml_dtype.type_size()) as u64;
            if end > file_size {
                return Err(corrupt(format!(
                    "file is truncated: tensor `{name}` ends at byte {end}, the file has {file_size} bytes"
                )));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn architecture(&self) -> Result<String> {
        Ok(self.string("general.architecture")?.to_string())
    }

    pub(crate) fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> EngineError {
        EngineError::MissingMetadata {
            field: key.into(),
            path: self.path.clone(),
        }
    }

    fn string(&self, key: &str) -> Result<&str> {
        self.value(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|_| self.missing(key))
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        let v = self.value(key)?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x as u64))
            .map(|x| x as usize)
            .map_err(|_| self.missing(key))
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.content.metadata.get(key) {
            None => Ok(default),
            Some(v) => v
                .to_f32()
                .map(f64::from)
                .or_else(|_| v.to_f64())
                .map_err(|_| self.missing(key)),
        }
    }

    /// The hyper-parameters every architecture shares, after checking the architecture is one
    /// we run. The head dimension is `attention.key_length` where given (Gemma 3 and Qwen 3
    /// decouple it from `d_model / heads`), else `rope.dimension_count`, else `d_model / heads`.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture()?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(EngineError::UnsupportedArchitecture {
                arch,
                path: self.path.clone(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let d_model = self.usize(&key("embedding_length"))?;
        let n_heads = self.usize(&key("attention.head_count"))?;
        let n_kv_heads = match self.content.metadata.get(&key("attention.head_count_kv")) {
            Some(_) => self.usize(&key("attention.head_count_kv"))?,
            None => n_heads,
        };
        let head_dim = if self
            .content
            .metadata
            .contains_key(&key("attention.key_length"))
        {
            self.usize(&key("attention.key_length"))?
        } else if self
            .content
            .metadata
            .contains_key(&key("rope.dimension_count"))
        {
            self.usize(&key("rope.dimension_count"))?
        } else {
            d_model.checked_div(n_heads).unwrap_or(0)
        };
        let vocab_size = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims()[0],
            None => {
                return Err(EngineError::CorruptModel {
                    path: self.path.clone(),
                    reason: "tensor `token_embd.weight` is missing".into(),
                })
            }
        };
        Ok(LlamaConfig {
            n_layers: self.usize(&key("block_count"))?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: self.usize(&key("feed_forward_length"))?,
            vocab_size,
            rope_theta: self.f64_or(&key("rope.freq_base"), 10_000.0)?,
            rms_eps: self.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            context_length: self.usize(&key("context_length"))?,
            // llama.cpp's converter permutes llama's Q/K rows so that RoPE pairs are adjacent;
            // it leaves Gemma's and Qwen's as trained (llama.cpp's "NeoX" RoPE: halves paired).
            rope_pairing: match arch.as_str() {
                "llama" => RopePairing::Interleaved,
                _ => RopePairing::Half,
            },
            kv_dtype: crate::cache::KvDtype::default(),
        })
    }

    /// The `general.file_type` code (3 = mostly Q4_1, …), if present.
    pub fn file_type(&self) -> Option<u32> {
        self.content
            .metadata
            .get("general.file_type")
            .and_then(|v| v.to_u32().ok())
    }

    /// Weight bytes one decode step reads: every tensor once, except the token embedding
    /// table when the model has its own output matrix (a step then reads one embedding row,
    /// not the table). The figure decode speed is set against memory bandwidth with.
    pub fn bytes_read_per_token(&self) -> u64 {
        let infos = &self.content.tensor_infos;
        let untied = infos.contains_key("output.weight");
        infos
            .iter()
            .filter(|(name, _)| !(untied && name.as_str() == "token_embd.weight"))
            .map(|(_, info)| {
                let blocks = info.shape.elem_count() / info.ggml_dtype.block_size();
                (blocks * info.ggml_dtype.type_size()) as u64
            })
            .sum()
    }
}

impl TensorSource for GgufFile {
    fn tensor(&mut self, name: &str) -> Result<Option<QTensor>> {
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map(Some)
            .map_err(|e| EngineError::CorruptModel {
                path: self.path.clone(),
                reason: format!("cannot read tensor `{name}`: {e}"),
            })
    }

    fn origin(&self) -> &Path {
        &self.path
    }
}
