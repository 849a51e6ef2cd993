//! OpenAI wire formats: request bodies are checked field by field into a [`Prepared`] request
//! (so each rejection names its field, as OpenAI's `param` does), and responses and stream
//! chunks are built with OpenAI's field names so a stock client parses them.
//!
//! Fields a stock client sends that change nothing here (`user`, `stream_options`, zero
//! penalties, …) are accepted; fields asking for something we do not do (`n` > 1, `logprobs`,
//! non-zero penalties, tools) are refused with a 400 rather than silently ignored.

use crate::error::ApiError;
use frugal_engine::generate::{FinishReason, SamplingParams};
use frugal_engine::model::chat_template::ChatMessage;
use frugal_engine::model::LoadedModel;
use frugal_methods::PolicySpec;
use serde_json::{json, Map, Value};

/// Which endpoint a request came through; decides the response shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// What the server needs to check a request, independent of HTTP.
pub struct RequestContext<'a> {
    pub model: &'a LoadedModel,
    pub model_id: &'a str,
    pub default_policy: &'a PolicySpec,
    /// `max_tokens` when the request gives none (clamped to the rest of the context).
    pub default_max_tokens: usize,
}

/// A request that passed every check and is ready for the scheduler.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub endpoint: Endpoint,
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: send a last chunk with `usage`.
    pub include_usage: bool,
    pub policy: PolicySpec,
    /// vLLM's `ignore_eos` extension: generate exactly `max_tokens` (for load tests).
    pub ignore_eos: bool,
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!("malformed JSON in request body: {e}")).with_code("invalid_json")
    })?;
    match value {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::invalid(format!(
            "request body must be a JSON object, got {}",
            type_name(&other)
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to optional fields; `null` counts as absent, as in OpenAI's API.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn wrong(name: &str, expected: &str, got: &Value) -> ApiError {
        ApiError::invalid_param(
            name,
            format!("`{name}` must be {expected}, got {}", type_name(got)),
        )
    }

    fn f32(&self, name: &str) -> Result<Option<f32>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| Self::wrong(name, "a number", v))
            })
            .transpose()
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| v.as_i64().ok_or_else(|| Self::wrong(name, "an integer", v)))
            .transpose()
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.as_u64()
                    .or_else(|| v.as_i64().map(|x| x as u64))
                    .ok_or_else(|| Self::wrong(name, "an integer", v))
            })
            .transpose()
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| v.as_bool().ok_or_else(|| Self::wrong(name, "a boolean", v)))
            .transpose()
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        self.get(name)
            .map(|v| v.as_str().ok_or_else(|| Self::wrong(name, "a string", v)))
            .transpose()
    }
}

/// Checks a `/v1/chat/completions` body and renders its messages with the model's template.
pub fn prepare_chat(body: &[u8], cx: &RequestContext) -> Result<Prepared, ApiError> {
    let obj = parse_object(body)?;
    let f = Fields(&obj);
    check_model(&f, cx)?;
    let messages = match f.get("messages") {
        None => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` is required",
            ))
        }
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must hold at least one message",
            ))
        }
        Some(Value::Array(a)) => a,
        Some(other) => return Err(Fields::wrong("messages", "an array of messages", other)),
    };
    let mut chat = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        chat.push(parse_message(i, m)?);
    }
    for name in ["tools", "functions", "tool_choice", "response_format"] {
        if f.get(name).is_some() && !(name == "response_format" && is_text_format(f.get(name))) {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}` is not supported by this server"),
            ));
        }
    }
    let prompt = cx.model.chat_template.render(&chat, true).map_err(|e| {
        ApiError::invalid_param("messages", format!("cannot apply the chat template: {e}"))
    })?;
    let ids = encode(cx, &prompt, "messages")?;
    finish_prepare(
        Endpoint::Chat,
        &f,
        ids,
        cx,
        &["max_completion_tokens", "max_tokens"],
    )
}

fn is_text_format(v: Option<&Value>) -> bool {
    v.and_then(|v| v.get("type")).and_then(Value::as_str) == Some("text")
}

fn parse_message(i: usize, m: &Value) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    let Value::Object(obj) = m else {
        return Err(ApiError::invalid_param(
            &param,
            format!("`{param}` must be an object with `role` and `content`"),
        ));
    };
    let role = match obj.get("role").and_then(Value::as_str) {
        Some(r @ ("system" | "user" | "assistant")) => r.to_string(),
        // OpenAI's newer name for the system role.
        Some("developer") => "system".to_string(),
        Some(other) => {
            return Err(ApiError::invalid_param(
                &format!("{param}.role"),
                format!("unsupported role `{other}` in {param} (supported: system, developer, user, assistant)"),
            ))
        }
        None => return Err(ApiError::invalid_param(&format!("{param}.role"), format!("{param} has no `role` string"))),
    };
    let content = match obj.get("content") {
        Some(Value::String(s)) => s.clone(),
        // The array form: text parts are joined; other parts (images, audio) are refused.
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => return Err(ApiError::invalid_param(
                        &format!("{param}.content[{j}]"),
                        "only text content parts ({\"type\": \"text\", \"text\": …}) are supported",
                    )),
                }
            }
            text
        }
        Some(Value::Null) | None if role == "assistant" => String::new(),
        _ => {
            return Err(ApiError::invalid_param(
                &format!("{param}.content"),
                format!("{param} needs `content`: a string or an array of text parts"),
            ))
        }
    };
    Ok(ChatMessage { role, content })
}

/// Checks a `/v1/completions` body: `prompt` is a string, a one-element array of strings, or
/// an array of token ids.
pub fn prepare_completion(body: &[u8], cx: &RequestContext) -> Result<Prepared, ApiError> {
    let obj = parse_object(body)?;
    let f = Fields(&obj);
    check_model(&f, cx)?;
    let ids = match f.get("prompt") {
        None => return Err(ApiError::invalid_param("prompt", "`prompt` is required")),
        Some(Value::String(s)) => encode(cx, s, "prompt")?,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => encode(cx, a[0].as_str().unwrap_or(""), "prompt")?,
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            let vocab = cx.model.model.config().vocab_size as u64;
            a.iter()
                .map(|v| match v.as_u64() {
                    Some(id) if id < vocab => Ok(id as u32),
                    _ => Err(ApiError::invalid_param("prompt", format!("token id {v} is outside the vocabulary of {vocab}"))),
                })
                .collect::<Result<_, _>>()?
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid_param(
                "prompt",
                "`prompt` must be a string, one string in an array, or an array of token ids (batches of prompts are not supported)",
            ))
        }
        Some(other) => return Err(Fields::wrong("prompt", "a string or an array", other)),
    };
    if f.bool("echo")?.unwrap_or(false) {
        return Err(ApiError::invalid_param(
            "echo",
            "`echo` is not supported by this server",
        ));
    }
    if f.get("suffix").is_some() {
        return Err(ApiError::invalid_param(
            "suffix",
            "`suffix` is not supported by this server",
        ));
    }
    finish_prepare(Endpoint::Completion, &f, ids, cx, &["max_tokens"])
}

fn check_model(f: &Fields, cx: &RequestContext) -> Result<(), ApiError> {
    match f.string("model")? {
        None => Err(ApiError::invalid_param(
            "model",
            format!("`model` is required (this server serves `{}`)", cx.model_id),
        )),
        Some(m) if m == cx.model_id => Ok(()),
        Some(m) => Err(ApiError::model_not_found(m, cx.model_id)),
    }
}

fn encode(cx: &RequestContext, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    let ids =
        cx.model.tokenizer.encode(text).map_err(|e| {
            ApiError::invalid_param(param, format!("cannot tokenise `{param}`: {e}"))
        })?;
    if ids.is_empty() {
        return Err(ApiError::invalid_param(
            param,
            format!("`{param}` tokenises to nothing: give some text"),
        ));
    }
    Ok(ids)
}

/// The fields both endpoints share: sampling, limits, stop strings, streaming, policy.
fn finish_prepare(
    endpoint: Endpoint,
    f: &Fields,
    prompt_ids: Vec<u32>,
    cx: &RequestContext,
    max_names: &[&str],
) -> Result<Prepared, ApiError> {
    let context = cx.model.model.config().context_length;
    if prompt_ids.len() >= context {
        return Err(ApiError::invalid_param(
            max_names.last().copied().unwrap_or("max_tokens"),
            format!(
                "This model's maximum context length is {context} tokens. However, your prompt has {} tokens, which leaves no room to generate",
                prompt_ids.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = context - prompt_ids.len();
    let mut max_tokens = None;
    for name in max_names {
        if let Some(n) = f.int(name)? {
            if n < 1 {
                return Err(ApiError::invalid_param(
                    name,
                    format!("`{name}` must be at least 1, got {n}"),
                ));
            }
            if n as u64 > room as u64 {
                return Err(ApiError::invalid_param(
                    name,
                    format!(
                        "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the prompt, {n} for the completion). Please reduce `{name}`",
                        prompt_ids.len() as u64 + n as u64,
                        prompt_ids.len()
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            max_tokens = Some(n as usize);
            break;
        }
    }
    let max_tokens = max_tokens.unwrap_or(cx.default_max_tokens.min(room)).max(1);

    // OpenAI's default temperature is 1 and its range [0, 2].
    let temperature = f.f32("temperature")?.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("`temperature` must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = f.f32("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param(
            "top_p",
            format!("`top_p` must be in (0, 1], got {top_p}"),
        ));
    }
    // `top_k` is not OpenAI's, but vLLM and llama.cpp accept it at the top level too.
    let top_k = match f.int("top_k")? {
        None | Some(-1) => 0,
        Some(k) if k >= 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("`top_k` must be >= 0 (or -1 for none), got {k}"),
            ))
        }
    };
    // Without a seed each request draws differently, as OpenAI's does.
    let seed = f.u64("seed")?.unwrap_or_else(random_seed);
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
    };
    sampling
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;

    if let Some(n) = f.int("n")? {
        if n != 1 {
            return Err(ApiError::invalid_param(
                "n",
                format!("only `n` = 1 is supported, got {n}"),
            ));
        }
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if f.f32(name)?.is_some_and(|p| p != 0.0) {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}` is not supported by this server (only 0)"),
            ));
        }
    }
    let wants_logprobs = match f.get("logprobs") {
        None | Some(Value::Bool(false)) => false,
        Some(_) => true,
    };
    if wants_logprobs
        || f.get("top_logprobs").is_some()
        || f.get("logit_bias")
            .is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()))
    {
        return Err(ApiError::invalid_param(
            "logprobs",
            "`logprobs`, `top_logprobs` and `logit_bias` are not supported by this server",
        ));
    }

    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "stop",
                "`stop` must be a string or an array of up to 4 strings",
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "stop strings must not be empty",
        ));
    }

    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        Some(o) => o
            .get("include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        None => false,
    };
    let policy = parse_policy(f, cx.default_policy)?;
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    Ok(Prepared {
        endpoint,
        prompt_ids,
        sampling,
        max_tokens,
        stop,
        stream,
        include_usage,
        policy,
        ignore_eos,
    })
}

/// The extension field `"frugal": {"policy": "<spec>"}`, same syntax as the CLI's `--policy`;
/// checked against the registry so a bad spec is a 400 naming the problem.
fn parse_policy(f: &Fields, default: &PolicySpec) -> Result<PolicySpec, ApiError> {
    let Some(ext) = f.get("frugal") else {
        return Ok(default.clone());
    };
    let Value::Object(ext) = ext else {
        return Err(Fields::wrong(
            "frugal",
            "an object like {\"policy\": \"streaming:window=256\"}",
            ext,
        ));
    };
    if let Some(unknown) = ext.keys().find(|k| k.as_str() != "policy") {
        return Err(ApiError::invalid_param(
            &format!("frugal.{unknown}"),
            format!("unknown field `frugal.{unknown}` (known: policy)"),
        ));
    }
    let spec = match ext.get("policy") {
        None | Some(Value::Null) => return Ok(default.clone()),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(Fields::wrong(
                "frugal.policy",
                "a policy spec string",
                other,
            ))
        }
    };
    let bad = |e: frugal_methods::SpecError| {
        ApiError::invalid_param("frugal.policy", format!("invalid policy `{spec}`: {e}"))
            .with_code("invalid_policy")
    };
    let parsed: PolicySpec = spec.parse().map_err(bad)?;
    frugal_methods::validate(&parsed).map_err(bad)?;
    Ok(parsed)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// OpenAI's `finish_reason`; a cancelled request has no client left to read it.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

/// `usage` as OpenAI counts it.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Identity of one response: every chunk of a stream repeats it.
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A whole (non-streaming) response. `frugal` is our extension: the policy that ran and the
/// KV bytes it held at its peak, so a client can see what the policy saved.
pub fn full_response(
    endpoint: Endpoint,
    meta: &ResponseMeta,
    text: &str,
    finish: &str,
    usage: Value,
    frugal: Value,
) -> Value {
    let (object, choice) = match endpoint {
        Endpoint::Chat => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish}),
        ),
        Endpoint::Completion => (
            "text_completion",
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        ),
    };
    json!({
        "id": meta.id, "object": object, "created": meta.created, "model": meta.model,
        "choices": [choice], "usage": usage, "system_fingerprint": null, "frugal": frugal,
    })
}

/// One stream chunk: `text` is a content delta (the first chat chunk also carries the role),
/// `finish` closes the choice.
pub fn chunk(
    endpoint: Endpoint,
    meta: &ResponseMeta,
    text: Option<&str>,
    first: bool,
    finish: Option<&str>,
) -> Value {
    let (object, choice) = match endpoint {
        Endpoint::Chat => {
            let mut delta = Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            (
                "chat.completion.chunk",
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
            )
        }
        Endpoint::Completion => (
            "text_completion",
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
        ),
    };
    json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model, "choices": [choice]})
}

/// The last chunk when `stream_options.include_usage` is set: no choices, only `usage`.
pub fn usage_chunk(endpoint: Endpoint, meta: &ResponseMeta, usage: Value) -> Value {
    let object = match endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completion => "text_completion",
    };
    json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model, "choices": [], "usage": usage})
}
