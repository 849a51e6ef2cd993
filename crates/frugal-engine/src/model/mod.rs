//! Model loading (GGUF files and Hugging Face checkpoint directories) and architectures.

pub mod chat_template;
pub mod gguf;
pub mod hub;
pub mod llama;
pub mod safetensors;
pub mod tokenizer;

use crate::error::{EngineError, Result};
use chat_template::ChatTemplate;
use llama::{Llama, TensorSource, WeightFormat};
use std::path::{Path, PathBuf};
use tokenizer::TextTokenizer;

/// A model ready to run: weights, tokenizer and chat template.
pub struct LoadedModel {
    pub model: Llama,
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
    let cfg = file.llama_config()?;
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
    let model = Llama::load(cfg, &mut file as &mut dyn TensorSource, format)?;
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
    let model = Llama::load(cfg, &mut st as &mut dyn TensorSource, format)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: dir.to_path_buf(),
        description: "llama safetensors".into(),
    })
}
