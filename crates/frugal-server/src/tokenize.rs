//! vLLM's tokenizer endpoints, which clients use to count and align tokens without a local
//! copy of the model's tokenizer: lm-evaluation-harness's API models switch to them when
//! `GET /tokenizer_info` and `POST /tokenize` answer (its "remote" tokenizer backend), so it
//! needs neither transformers nor the Hugging Face hub to score log-likelihoods against us.
//!
//! - `GET /tokenizer_info`: `eos_token`, `bos_token`, `pad_token` (strings or null),
//!   `chat_template`, `model_max_length`, `add_bos_token`;
//! - `POST /tokenize` `{"prompt": str, "add_special_tokens": bool = true}` →
//!   `{"tokens": [...], "count": n, "max_model_len": n}`; with `add_special_tokens: false` no
//!   BOS is prepended whatever the model's default (special tokens written in the text still
//!   map to their ids, as in a chat prompt);
//! - `POST /detokenize` `{"tokens": [...]}` → `{"prompt": str}` (special tokens kept).

use crate::api::{parse_object, Fields};
use crate::error::ApiError;
use frugal_engine::model::LoadedModel;
use serde_json::{json, Value};

/// The body of `GET /tokenizer_info`.
pub fn tokenizer_info(lm: &LoadedModel) -> Value {
    let t = &lm.tokenizer;
    let name = |id: Option<u32>| id.and_then(|i| t.id_to_token(i));
    json!({
        "eos_token": name(t.eos_token_id()),
        "bos_token": name(t.bos_token_id()),
        "pad_token": name(t.pad_token_id()),
        "chat_template": lm.chat_template.source(),
        "model_max_length": lm.model.config().context_length,
        "add_bos_token": t.adds_bos(),
    })
}

/// Answers `POST /tokenize`.
pub fn tokenize(body: &[u8], lm: &LoadedModel) -> Result<Value, ApiError> {
    let obj = parse_object(body)?;
    let f = Fields(&obj);
    known(&obj, &["prompt", "add_special_tokens", "model"])?;
    let prompt = f
        .string("prompt")?
        .ok_or_else(|| ApiError::invalid_param("prompt", "`prompt` is required"))?;
    let special = f.bool("add_special_tokens")?.unwrap_or(true);
    let mut tokens = lm
        .tokenizer
        .encode(prompt)
        .map_err(|e| ApiError::invalid_param("prompt", format!("cannot tokenize `prompt`: {e}")))?;
    if !special && lm.tokenizer.adds_bos() && tokens.first() == lm.tokenizer.bos_token_id().as_ref()
    {
        tokens.remove(0);
    }
    Ok(json!({
        "tokens": tokens,
        "count": tokens.len(),
        "max_model_len": lm.model.config().context_length,
    }))
}

/// Answers `POST /detokenize`.
pub fn detokenize(body: &[u8], lm: &LoadedModel) -> Result<Value, ApiError> {
    let obj = parse_object(body)?;
    let f = Fields(&obj);
    known(&obj, &["tokens", "model"])?;
    let wrong = |v: &Value| Fields::wrong("tokens", "an array of token ids", v);
    let tokens = match f.get("tokens") {
        None => return Err(ApiError::invalid_param("tokens", "`tokens` is required")),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(wrong(other)),
    };
    let vocab = lm.model.config().vocab_size as u64;
    let ids = tokens
        .iter()
        .map(|v| match v.as_u64() {
            Some(id) if id < vocab => Ok(id as u32),
            Some(id) => Err(ApiError::invalid_param(
                "tokens",
                format!("token id {id} is outside the vocabulary (0..{vocab})"),
            )),
            None => Err(wrong(v)),
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let prompt = lm
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::invalid_param("tokens", format!("cannot decode `tokens`: {e}")))?;
    Ok(json!({ "prompt": prompt }))
}

fn known(obj: &serde_json::Map<String, Value>, fields: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !fields.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid_param(
            k,
            format!("unknown field `{k}` (known: {})", fields.join(", ")),
        )),
        None => Ok(()),
    }
}
