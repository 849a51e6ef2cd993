//! Model loading (GGUF files and Hugging Face checkpoint directories) and architectures.

pub mod batch;
pub mod chat_template;
pub mod decoder;
pub mod device_model;
pub mod gemma3;
pub mod gguf;
pub mod hub;
pub mod llama;
pub mod qwen;
pub mod safetensors;
pub mod sentencepiece;
pub mod tokenizer;

use crate::error::{EngineError, Result};
use batch::{split_rows, BatchItem};
use candle_core::Tensor;
use chat_template::ChatTemplate;
use decoder::Decoder;
use device_model::DeviceModel;
use llama::{Llama, LlamaConfig, LogitRows, TensorSource, WeightFormat};
use qwen::QwenFamily;
use std::path::{Path, PathBuf};
use tokenizer::TextTokenizer;

use crate::sequence::Sequence;

/// A loaded decoder of any architecture we run. Callers use the methods, which every
/// architecture answers the same way; [`Model::config`] gives the hyper-parameters they share.
pub enum Model {
    /// Llama, SmolLM, Mistral without sliding window.
    Llama(Llama),
    /// Gemma 3, Qwen 2, Qwen 3 ([`Decoder::arch`] says which).
    Decoder(Decoder),
    /// Any of the above with its weights on a compute device (`--device cuda`): see
    /// [`device_model`]. Its calls return logits and hidden states on the host, like the
    /// others, so callers need not know where it runs.
    Device(DeviceModel),
}

impl Model {
    pub fn config(&self) -> &LlamaConfig {
        match self {
            Model::Llama(m) => m.config(),
            Model::Decoder(m) => m.config(),
            Model::Device(m) => m.config(),
        }
    }

    /// Sets what the KV stores built from [`LlamaConfig::kv_layout`] hold (the device path
    /// keeps its own store and ignores it).
    pub fn set_kv_dtype(&mut self, dtype: crate::cache::KvDtype) {
        match self {
            Model::Llama(m) => m.set_kv_dtype(dtype),
            Model::Decoder(m) => m.set_kv_dtype(dtype),
            Model::Device(m) => m.set_kv_dtype(dtype),
        }
    }

    /// Moves the weights onto `device`; a CPU device keeps the host path (the reference), so
    /// `--device cpu` changes nothing.
    pub fn to_device(self, device: &candle_core::Device) -> Result<Model> {
        if device.is_cpu() {
            return Ok(self);
        }
        self.onto_device(device)
    }

    /// Moves the weights onto `device` and runs the device path there, the CPU included (how
    /// the tests compare the device path with the host path on a machine without a GPU).
    pub fn onto_device(self, device: &candle_core::Device) -> Result<Model> {
        let on = match &self {
            Model::Device(m) => Some(m.device().same_device(device)),
            _ => None,
        };
        match on {
            Some(true) => return Ok(self),
            Some(false) => {
                return Err(EngineError::Internal(
                    "a model on one device cannot move to another".into(),
                ))
            }
            None => {}
        }
        let moved = match &self {
            Model::Llama(m) => DeviceModel::from_llama(m, device)?,
            Model::Decoder(m) => DeviceModel::from_decoder(m, device)?,
            Model::Device(_) => unreachable!("a device model answered above"),
        };
        Ok(Model::Device(moved))
    }

    /// Where the forward pass runs: `cpu` for the host path, else the device's name.
    pub fn device_name(&self) -> String {
        match self {
            Model::Device(m) => device_model::device_name(m.device()),
            _ => "cpu".into(),
        }
    }

    /// `llama`, `gemma3`, `qwen2` or `qwen3`.
    pub fn architecture(&self) -> &str {
        match self {
            Model::Llama(_) => "llama",
            Model::Decoder(m) => &m.arch().name,
            Model::Device(m) => &m.arch().name,
        }
    }

    /// Each layer's sliding window (`None`: global attention).
    pub fn layer_windows(&self) -> Vec<Option<usize>> {
        match self {
            Model::Llama(m) => vec![None; m.config().n_layers],
            Model::Decoder(m) => m.arch().windows.clone(),
            Model::Device(m) => m.arch().windows.clone(),
        }
    }

    /// See [`Llama::set_dequant_rows`].
    pub fn set_dequant_rows(&mut self, rows: usize) {
        match self {
            Model::Llama(m) => m.set_dequant_rows(rows),
            Model::Decoder(m) => m.set_dequant_rows(rows),
            // The device kernels choose their own path by batch size.
            Model::Device(_) => {}
        }
    }

    /// See [`Llama::forward`].
    /// The logits of the call's last token, as a vector: what sampling reads after a prefill
    /// chunk or a decode step.
    pub fn last_logits(&self, tokens: &[u32], seq: &mut Sequence) -> crate::Result<Vec<f32>> {
        Ok(self
            .forward(tokens, seq, LogitRows::Last)?
            .squeeze(0)?
            .to_vec1::<f32>()?)
    }

    pub fn forward(
        &self,
        tokens: &[u32],
        seq: &mut Sequence,
        rows: LogitRows,
    ) -> crate::Result<Tensor> {
        match self {
            Model::Llama(m) => on_worker(|| m.forward(tokens, seq, rows)),
            Model::Decoder(m) => on_worker(|| m.forward(tokens, seq, rows)),
            Model::Device(m) => {
                let hidden = m.forward_hidden(tokens, seq, rows)?;
                Ok(m.logits(&hidden)?.to_device(&candle_core::Device::Cpu)?)
            }
        }
    }

    /// See [`Llama::forward_hidden`].
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        seq: &mut Sequence,
        rows: LogitRows,
    ) -> crate::Result<Tensor> {
        match self {
            Model::Llama(m) => on_worker(|| m.forward_hidden(tokens, seq, rows)),
            Model::Decoder(m) => on_worker(|| m.forward_hidden(tokens, seq, rows)),
            Model::Device(m) => Ok(m
                .forward_hidden(tokens, seq, rows)?
                .to_device(&candle_core::Device::Cpu)?),
        }
    }

    /// One forward pass over several sequences (continuous batching, see [`batch`]): each
    /// item's logits `[output rows, vocab]`, in item order. The LM head runs once over every
    /// item's output rows.
    pub fn forward_batch(&self, items: &mut [BatchItem<'_>]) -> crate::Result<Vec<Tensor>> {
        let hidden = match self {
            Model::Llama(m) => on_worker(|| m.forward_batch_hidden(items))?,
            Model::Decoder(m) => on_worker(|| m.forward_batch_hidden(items))?,
            Model::Device(_) => {
                return Err(crate::EngineError::DeviceUnsupported {
                    device: "cuda".into(),
                    reason: "continuous batching runs on the CPU path only; the CUDA path \
                             serves one sequence per forward"
                        .into(),
                })
            }
        };
        split_rows(&self.logits(&hidden)?, items)
    }

    /// See [`Llama::logits`].
    pub fn logits(&self, hidden: &Tensor) -> crate::Result<Tensor> {
        match self {
            Model::Llama(m) => on_worker(|| m.logits(hidden)),
            Model::Decoder(m) => on_worker(|| m.logits(hidden)),
            Model::Device(m) => Ok(m.logits(hidden)?.to_device(&candle_core::Device::Cpu)?),
        }
    }
}

/// Runs a host forward pass on a worker of the global rayon pool (at once when the caller is
/// one). A decode step starts hundreds of short parallel loops (the projections, attention
/// over heads); started from a thread outside the pool, each is a hand-off (wake a worker,
/// sleep on a latch, be woken), while on a worker each is a fork-join the caller takes part
/// in, and the only hand-off is this one per call.
fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

impl From<Llama> for Model {
    fn from(m: Llama) -> Self {
        Model::Llama(m)
    }
}

/// A model ready to run: weights, tokenizer and chat template.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    /// The model's own template, or frugal's ChatML fallback when the model ships none.
    pub chat_template: ChatTemplate,
    /// The file or directory it was loaded from.
    pub path: PathBuf,
    /// Short description for logs and reports, e.g. `llama gguf (file type 3)`.
    pub description: String,
}

/// Loads a GGUF file, or a directory holding `config.json`, `*.safetensors` and
/// `tokenizer.json`.
pub fn load(path: &Path, format: WeightFormat) -> Result<LoadedModel> {
    if path.is_dir() {
        return load_safetensors_dir(path, format);
    }
    if !path.exists() {
        return Err(EngineError::ModelNotFound(path.to_path_buf()));
    }
    let mut file = gguf::GgufFile::open(path)?;
    // Checks the architecture is one we run before anything else is read.
    let cfg = file.llama_config()?;
    let arch = file.architecture()?;
    let tokenizer = TextTokenizer::from_gguf(&file.content, path)?;
    let chat_template = match ChatTemplate::from_gguf(&file.content, path)? {
        Some(t) => t,
        None => ChatTemplate::chatml_fallback(),
    };
    let description = format!(
        "{} gguf, file type {}",
        file.architecture()?,
        file.file_type().map_or("unknown".into(), |t| t.to_string())
    );
    // The one dispatch on the architecture.
    let model = match (arch.as_str(), QwenFamily::from_name(&arch)) {
        ("gemma3", _) => Model::Decoder(gemma3::load(&mut file, format)?),
        (_, Some(family)) => Model::Decoder(qwen::load(
            family,
            cfg,
            &mut file as &mut dyn TensorSource,
            format,
        )?),
        _ => Model::Llama(Llama::load(
            cfg,
            &mut file as &mut dyn TensorSource,
            format,
        )?),
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: path.to_path_buf(),
        description,
    })
}

fn load_safetensors_dir(dir: &Path, format: WeightFormat) -> Result<LoadedModel> {
    let mut st = safetensors::SafetensorsDir::open(dir)?;
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let config = dir.join("tokenizer_config.json");
    let chat_template = match config.is_file() {
        true => ChatTemplate::from_tokenizer_config(&config)?,
        false => None,
    }
    .unwrap_or_else(ChatTemplate::chatml_fallback);
    let cfg = st.config.clone();
    let (model, arch) = match st.architecture.as_deref().and_then(QwenFamily::from_name) {
        Some(family) => (
            Model::Decoder(qwen::load(
                family,
                cfg,
                &mut st as &mut dyn TensorSource,
                format,
            )?),
            family.name(),
        ),
        None => (
            Model::Llama(Llama::load(cfg, &mut st as &mut dyn TensorSource, format)?),
            "llama",
        ),
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: dir.to_path_buf(),
        description: format!("{arch} safetensors"),
    })
}
