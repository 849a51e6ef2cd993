//! Errors the engine reports to its callers. Every variant names the thing that is wrong
//! (file, field, limit) so the CLI and the server can print it as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file not found: {0}")]
    ModelNotFound(PathBuf),
    #[error("cannot read model file {path}: {reason}")]
    CorruptModel { path: PathBuf, reason: String },
    #[error("unsupported architecture `{arch}` in {path} (supported: {supported})")]
    UnsupportedArchitecture {
        arch: String,
        path: PathBuf,
        supported: String,
    },
    #[error("model metadata field `{field}` is missing or invalid in {path}")]
    MissingMetadata { field: String, path: PathBuf },
    #[error("{path} has no tokenizer: {reason}")]
    MissingTokenizer { path: PathBuf, reason: String },
    #[error("prompt has {tokens} tokens, over the context window of {limit} tokens")]
    ContextOverflow { tokens: usize, limit: usize },
    #[error("invalid sampling parameter `{name}` = {value}: {expected}")]
    InvalidSampling {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("fetch: {0}")]
    Fetch(String),
    #[error("tensor op: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("--device {device}: {reason}")]
    DeviceUnsupported { device: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
