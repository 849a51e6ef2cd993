//! OpenAI wire formats: request bodies are checked field by field into a [`Prepared`] request
//! (so each rejection names its field, as OpenAI's `param` does), and responses and stream
//! chunks are built with OpenAI's field names so a stock client parses them.
//!
//! Fields a stock client sends that change nothing here (`user`, `stream_options`, zero
//! penalties, …) are accepted; fields asking for something we do not do (non-zero penalties,
//! tools, `logit_bias`) are refused with a 400 rather than silently ignored, and so is a field
//! this server does not know at all (a misspelt `max_token` would otherwise be dropped
//! without a word).
//!
//! `logprobs` follow OpenAI's two shapes: the legacy completions object (`tokens`,
//! `token_logprobs`, `top_logprobs`, `text_offset`; with `echo` the prompt's tokens come first,
//! the first with `null`, which is what lm-evaluation-harness's log-likelihood tasks read) and
//! the chat object (`content`: one entry per token with its `top_logprobs`). Log-probabilities
//! are of the model's own distribution (log-softmax of the raw logits), as vLLM reports them.

use crate::error::ApiError;
use frugal_engine::generate::{FinishReason, SamplingParams, TokenLogprob};
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
    /// The request's [`POLICY_HEADER`], for clients that can add headers but not body fields
    /// (lm-evaluation-harness's API models take a `header` dict).
    pub policy_header: Option<&'a str>,
}

/// HTTP header naming a request's policy, as the body's `"frugal": {"policy": …}` does.
pub const POLICY_HEADER: &str = "x-frugal-policy";

/// Most `top_logprobs` a request may ask for (OpenAI allows 20 on chat, 5 on completions).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most choices (`n`) a request may ask for.
pub const MAX_N: usize = 16;

/// A request that passed every check and is ready for the scheduler.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub endpoint: Endpoint,
    /// One prompt, or several for a completions batch; each runs `n` times.
    pub prompts: Vec<Vec<u32>>,
    /// Choices per prompt.
    pub n: usize,
    /// Report the sampled tokens' log-probabilities with this many alternatives each.
    pub logprobs: Option<usize>,
    /// Completions' `echo`: the answer starts with the prompt (and, with `logprobs`, the
    /// prompt tokens' log-probabilities).
    pub echo: bool,
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

/// Fields both endpoints know (OpenAI's, plus vLLM's `top_k` and `ignore_eos`, plus ours).
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "user",
    "ignore_eos",
    "frugal",
];
const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "functions",
    "function_call",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "metadata",
    "store",
    "service_tier",
];
const COMPLETION_FIELDS: &[&str] = &["prompt", "echo", "suffix", "best_of"];

/// A field neither OpenAI's API (for this endpoint) nor this server knows is refused by name.
fn check_known(obj: &Map<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
    let own = match endpoint {
        Endpoint::Chat => CHAT_FIELDS,
        Endpoint::Completion => COMPLETION_FIELDS,
    };
    match obj
        .keys()
        .find(|k| !COMMON_FIELDS.contains(&k.as_str()) && !own.contains(&k.as_str()))
    {
        Some(k) => Err(ApiError::invalid_param(
            k,
            format!("unknown field `{k}`: this server does not recognise it"),
        )
        .with_code("unknown_parameter")),
        None => Ok(()),
    }
}

pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
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
pub(crate) struct Fields<'a>(pub(crate) &'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub(crate) fn wrong(name: &str, expected: &str, got: &Value) -> ApiError {
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

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| v.as_bool().ok_or_else(|| Self::wrong(name, "a boolean", v)))
            .transpose()
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
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
    check_known(&obj, Endpoint::Chat)?;
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
    // Chat's `logprobs` is a boolean; `top_logprobs` asks for alternatives and needs it.
    let top = f.int("top_logprobs")?;
    let logprobs = match (f.bool("logprobs")?.unwrap_or(false), top) {
        (false, Some(_)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs` set to true",
            ))
        }
        (false, None) => None,
        (true, top) => Some(top_count("top_logprobs", top.unwrap_or(0))?),
    };
    finish_prepare(
        Endpoint::Chat,
        &f,
        vec![ids],
        cx,
        &["max_completion_tokens", "max_tokens"],
        Extras {
            logprobs,
            echo: false,
        },
    )
}

fn top_count(name: &str, k: i64) -> Result<usize, ApiError> {
    if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
        return Err(ApiError::invalid_param(
            name,
            format!("`{name}` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        ));
    }
    Ok(k as usize)
}

/// What only one endpoint parses but [`finish_prepare`] carries.
struct Extras {
    logprobs: Option<usize>,
    echo: bool,
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

/// Checks a `/v1/completions` body: `prompt` is a string, an array of token ids, or a batch:
/// an array of strings or of token-id arrays (each prompt gets its own choices).
pub fn prepare_completion(body: &[u8], cx: &RequestContext) -> Result<Prepared, ApiError> {
    let obj = parse_object(body)?;
    let f = Fields(&obj);
    check_model(&f, cx)?;
    check_known(&obj, Endpoint::Completion)?;
    let vocab = cx.model.model.config().vocab_size as u64;
    let ids_of = |a: &Vec<Value>, param: &str| -> Result<Vec<u32>, ApiError> {
        if a.is_empty() {
            return Err(ApiError::invalid_param(
                param,
                format!("`{param}` is an empty list of token ids"),
            ));
        }
        a.iter()
            .map(|v| match v.as_u64() {
                Some(id) if id < vocab => Ok(id as u32),
                _ => Err(ApiError::invalid_param(
                    param,
                    format!("token id {v} in `{param}` is not in the vocabulary of {vocab}"),
                )),
            })
            .collect()
    };
    let prompts = match f.get("prompt") {
        None => return Err(ApiError::invalid_param("prompt", "`prompt` is required")),
        Some(Value::String(s)) => vec![encode(cx, s, "prompt")?],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => {
            vec![ids_of(a, "prompt")?]
        }
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let param = format!("prompt[{i}]");
                match p {
                    Value::String(s) => encode(cx, s, &param),
                    Value::Array(ids) => ids_of(ids, &param),
                    other => Err(Fields::wrong(
                        &param,
                        "a string or an array of token ids",
                        other,
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid_param(
                "prompt",
                "`prompt` is an empty array",
            ))
        }
        Some(other) => return Err(Fields::wrong("prompt", "a string or an array", other)),
    };
    if prompts.len() > MAX_N {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "at most {MAX_N} prompts in one request, got {}",
                prompts.len()
            ),
        ));
    }
    if f.get("suffix").is_some() {
        return Err(ApiError::invalid_param(
            "suffix",
            "`suffix` is not supported by this server",
        ));
    }
    let echo = f.bool("echo")?.unwrap_or(false);
    // Completions' `logprobs` is the number of alternatives (0: only the sampled token's).
    let logprobs = match f.get("logprobs") {
        None | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(0),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(k) => Some(top_count("logprobs", k)?),
            None => {
                return Err(Fields::wrong(
                    "logprobs",
                    "an integer",
                    &Value::Number(n.clone()),
                ))
            }
        },
        Some(other) => return Err(Fields::wrong("logprobs", "an integer", other)),
    };
    finish_prepare(
        Endpoint::Completion,
        &f,
        prompts,
        cx,
        &["max_tokens"],
        Extras { logprobs, echo },
    )
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
    prompts: Vec<Vec<u32>>,
    cx: &RequestContext,
    max_names: &[&str],
    extras: Extras,
) -> Result<Prepared, ApiError> {
    let context = cx.model.model.config().context_length;
    // The longest prompt of a batch decides what room is left.
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let prompt_ids = &prompts[prompts.iter().position(|p| p.len() == longest).unwrap_or(0)];
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
            // `echo` with `max_tokens` 0 scores the prompt without generating.
            let least = if extras.echo { 0 } else { 1 };
            if n < least {
                return Err(ApiError::invalid_param(
                    name,
                    format!("`{name}` must be at least {least}, got {n}"),
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
    let max_tokens = max_tokens.unwrap_or(cx.default_max_tokens.min(room).max(1));

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

    let n = match f.int("n")? {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid_param(
                "n",
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
            ))
        }
    };
    if let Some(b) = f.int("best_of")? {
        if b != n as i64 {
            return Err(ApiError::invalid_param(
                "best_of",
                format!("`best_of` other than `n` is not supported (got {b}, n = {n})"),
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
    if f.get("logit_bias")
        .is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()))
    {
        return Err(ApiError::invalid_param(
            "logit_bias",
            "`logit_bias` is not supported by this server",
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
    if stream && extras.echo && extras.logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "`echo` with `logprobs` is answered whole, not streamed: drop `stream` or one of them",
        ));
    }
    let policy = parse_policy(f, cx.default_policy, cx.policy_header)?;
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    Ok(Prepared {
        endpoint,
        prompts,
        n,
        logprobs: extras.logprobs,
        echo: extras.echo,
        sampling,
        max_tokens,
        stop,
        stream,
        include_usage,
        policy,
        ignore_eos,
    })
}

/// The extension field `"frugal": {"policy": "<spec>"}` or the [`POLICY_HEADER`], same syntax
/// as the CLI's `--policy`; checked against the registry so a bad spec is a 400 naming the
/// problem. A request that gives both must give the same spec.
fn parse_policy(
    f: &Fields,
    default: &PolicySpec,
    header: Option<&str>,
) -> Result<PolicySpec, ApiError> {
    let from_body = policy_in_body(f, default)?;
    let Some(spec) = header else {
        return Ok(from_body);
    };
    let parsed: PolicySpec = spec.parse().map_err(|e| bad_header(spec, e))?;
    frugal_methods::validate(&parsed).map_err(|e| bad_header(spec, e))?;
    if f.get("frugal").is_some() && from_body.to_string() != parsed.to_string() {
        return Err(ApiError::invalid_param(
            "frugal.policy",
            format!(
                "the body's policy `{from_body}` and the {POLICY_HEADER} header's `{parsed}` differ"
            ),
        )
        .with_code("invalid_policy"));
    }
    Ok(parsed)
}

fn bad_header(spec: &str, e: frugal_methods::SpecError) -> ApiError {
    ApiError::invalid_param(
        POLICY_HEADER,
        format!("invalid policy `{spec}` in the {POLICY_HEADER} header: {e}"),
    )
    .with_code("invalid_policy")
}

fn policy_in_body(f: &Fields, default: &PolicySpec) -> Result<PolicySpec, ApiError> {
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

/// `usage` as OpenAI counts it; `prompt_tokens_details.cached_tokens` counts prompt tokens
/// resumed from the prefix cache rather than prefilled.
pub fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

/// Identity of one response: every chunk of a stream repeats it.
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// One choice of a whole response.
pub struct ChoiceOut {
    pub index: usize,
    pub text: String,
    pub finish: &'static str,
    /// The endpoint's `logprobs` object, or `null`.
    pub logprobs: Value,
}

/// A whole (non-streaming) response. `frugal` is our extension: the policy that ran and the
/// KV bytes it held at its peak, so a client can see what the policy saved.
pub fn full_response(
    endpoint: Endpoint,
    meta: &ResponseMeta,
    choices: &[ChoiceOut],
    usage: Value,
    frugal: Value,
) -> Value {
    let object = match endpoint {
        Endpoint::Chat => "chat.completion",
        Endpoint::Completion => "text_completion",
    };
    let choices: Vec<Value> = choices
        .iter()
        .map(|c| match endpoint {
            Endpoint::Chat => json!({"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": c.logprobs, "finish_reason": c.finish}),
            Endpoint::Completion => json!({"index": c.index, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish}),
        })
        .collect();
    json!({
        "id": meta.id, "object": object, "created": meta.created, "model": meta.model,
        "choices": choices, "usage": usage, "system_fingerprint": null, "frugal": frugal,
    })
}

/// One stream chunk of choice `index`: `text` is a content delta (the first chat chunk also
/// carries the role), `finish` closes the choice, `logprobs` covers the chunk's tokens.
pub fn chunk(
    endpoint: Endpoint,
    meta: &ResponseMeta,
    index: usize,
    text: Option<&str>,
    first: bool,
    finish: Option<&str>,
    logprobs: Value,
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
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}),
            )
        }
        Endpoint::Completion => (
            "text_completion",
            json!({"index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish}),
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

/// A token as text, for `logprobs` (a piece of a multi-byte character decodes lossily; the
/// chat shape's `bytes` field carries its exact bytes).
pub fn token_text(lm: &LoadedModel, id: u32) -> String {
    lm.tokenizer.decode(&[id], false).unwrap_or_default()
}

/// Finite log-probabilities for JSON (an impossible token's −∞ becomes the f32 minimum, as
/// JSON has no infinity).
fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        f32::MIN
    }
}

/// The legacy completions `logprobs` object for `tokens` (`None`: a position with no
/// log-probability, the first prompt token under `echo`), offsets counted in bytes from
/// `offset`.
pub fn completion_logprobs(
    lm: &LoadedModel,
    tokens: &[(u32, Option<TokenLogprob>)],
    offset: usize,
) -> Value {
    let mut texts = Vec::with_capacity(tokens.len());
    let mut lps = Vec::with_capacity(tokens.len());
    let mut tops = Vec::with_capacity(tokens.len());
    let mut offsets = Vec::with_capacity(tokens.len());
    let mut at = offset;
    for (id, lp) in tokens {
        let text = token_text(lm, *id);
        offsets.push(at);
        at += text.len();
        texts.push(text);
        match lp {
            None => {
                lps.push(Value::Null);
                tops.push(Value::Null);
            }
            Some(lp) => {
                lps.push(json!(finite(lp.logprob)));
                let mut top = Map::new();
                for (t, l) in &lp.top {
                    top.entry(token_text(lm, *t)).or_insert(json!(finite(*l)));
                }
                tops.push(Value::Object(top));
            }
        }
    }
    json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// The chat `logprobs` object: `content`, one entry per sampled token.
pub fn chat_logprobs(lm: &LoadedModel, tokens: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let text = token_text(lm, id);
        let bytes: Vec<u8> = text.as_bytes().to_vec();
        json!({"token": text, "logprob": finite(lp), "bytes": bytes})
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, t.logprob);
            e["top_logprobs"] = Value::Array(t.top.iter().map(|&(i, l)| entry(i, l)).collect());
            e
        })
        .collect();
    json!({"content": content})
}
