//! `frugal serve`: an OpenAI-compatible HTTP server (layer 5 of docs/design.md). It holds wire
//! formats ([`api`]), HTTP routing (here), admission and scheduling ([`scheduler`]) and
//! [`metrics`]; the model runs in the engine crate and policies are built by the methods
//! registry, so a policy registered there is servable here without a change.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both also as SSE streams
//! ending in `data: [DONE]`), `GET /v1/models`, `GET /health`, `GET /metrics`, and vLLM's
//! `GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize` ([`tokenize`]). A request picks
//! its KV/attention policy with the extension field `"frugal": {"policy": "<spec>"}` or the
//! `X-Frugal-Policy` header.
//!
//! Running requests advance together, one batched forward pass per step, whatever policy each
//! uses ([`scheduler`]). `n` > 1 and completions prompt batches run as several sequences of one
//! request; `logprobs` (with `echo`, the prompt's too) come from the model's own distribution;
//! prompts that begin with a cached prefix resume from it ([`prefix`], opt-in).

pub mod allocator;
pub mod api;
pub mod cli;
pub mod error;
pub mod metrics;
pub mod prefix;
pub mod scheduler;
pub mod tokenize;

use api::{Endpoint, Prepared, RequestContext, ResponseMeta};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
pub use cli::{configure_allocator, serve, ServeArgs};
use error::ApiError;
use frugal_engine::generate::{GenerateRequest, Generation, SamplingParams, TokenLogprob};
use frugal_engine::model::LoadedModel;
use frugal_methods::PolicySpec;
use metrics::Metrics;
use scheduler::{Admission, EngineConfig, Event, Job, Limits, Summary};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc as tmpsc;

/// Everything `frugal serve` can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (tests); [`RunningServer::addr`] says which.
    pub port: u16,
    /// The id clients must send as `model`; default: the model file's stem.
    pub model_id: Option<String>,
    /// Policy for requests that name none.
    pub default_policy: PolicySpec,
    /// KV bytes all admitted requests may reserve together.
    pub kv_budget: usize,
    pub max_concurrent: usize,
    /// Requests that may wait for capacity; beyond that, 429.
    pub max_queue: usize,
    /// Longest wait in the queue before a 503.
    pub queue_timeout: Duration,
    pub max_body_bytes: usize,
    /// `max_tokens` for requests that give none (OpenAI's default is the rest of the context;
    /// a bound keeps the worst-case KV reservation of such requests reasonable).
    pub default_max_tokens: usize,
    /// Prompt tokens prefilled per batched step, over all prefilling requests; smaller keeps
    /// decoding streams smoother while long prompts come in.
    pub prefill_chunk: usize,
    /// Bytes the prefix cache may hold (0: off). Off by default: a request resumed from a
    /// cached prefix under a compressing policy gets that prefix compressed without its
    /// question in view (see [`prefix`]), so reuse is the operator's choice.
    pub prefix_cache_bytes: usize,
    /// Prefixes are cached at multiples of this many tokens.
    pub prefix_block: usize,
    /// How many of the last block boundaries before each prompt's end are cached (ours: 2,
    /// so a follow-up question up to one block long always finds the shared part cached).
    pub prefix_snapshots: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            model_id: None,
            default_policy: "full".parse().expect("static spec"),
            kv_budget: 1 << 30,
            max_concurrent: 4,
            max_queue: 16,
            queue_timeout: Duration::from_secs(30),
            max_body_bytes: 1 << 20,
            default_max_tokens: 512,
            prefill_chunk: 256,
            prefix_cache_bytes: 0,
            prefix_block: 64,
            prefix_snapshots: 2,
        }
    }
}

/// Parses a byte count with an optional binary suffix: `1048576`, `512K`, `64M`, `2G`.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("`{s}`: unknown suffix `{c}` (use K, M or G)")),
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count like 1048576, 512M or 2G"))?;
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("`{s}`: must be > 0 and fit in memory"))
}

struct AppState {
    lm: Arc<LoadedModel>,
    model_id: String,
    cfg: ServerConfig,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Bytes a full cache holds per token (f32 keys and values plus a position per head): the
    /// per-token reservation.
    full_bytes_per_token: usize,
    started: SystemTime,
}

/// A server running on its own threads; dropping it stops accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets open requests end, and waits for the server thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Blocks until the server ends (for `frugal serve`, which runs until interrupted).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Binds, starts the engine thread and the HTTP runtime, and returns once the socket listens.
pub fn spawn(lm: LoadedModel, cfg: ServerConfig) -> anyhow::Result<RunningServer> {
    if cfg.max_concurrent == 0 {
        anyhow::bail!("invalid --max-concurrent 0: must be at least 1");
    }
    frugal_methods::validate(&cfg.default_policy)
        .map_err(|e| anyhow::anyhow!("invalid --policy: {e}"))?;
    let model_id = cfg.model_id.clone().unwrap_or_else(|| {
        lm.path
            .file_stem()
            .map_or("frugal".into(), |s| s.to_string_lossy().into_owned())
    });
    let layout = lm.model.config().kv_layout();
    let full_bytes_per_token = layout.n_layers * layout.n_kv_heads * (2 * layout.head_dim * 4 + 4);
    let lm = Arc::new(lm);
    let metrics = Arc::new(Metrics::default());
    if cfg.prefill_chunk == 0 || cfg.prefix_block == 0 {
        anyhow::bail!("invalid --prefill-chunk or --prefix-block 0: must be at least 1");
    }
    let (jobs, engine) = scheduler::start_engine(
        lm.clone(),
        metrics.clone(),
        EngineConfig {
            prefill_tokens: cfg.prefill_chunk,
            prefix_cache_bytes: cfg.prefix_cache_bytes,
            prefix_block: cfg.prefix_block,
            prefix_snapshots: cfg.prefix_snapshots,
        },
    )?;
    let admission = Admission::new(Limits {
        kv_budget: cfg.kv_budget,
        max_concurrent: cfg.max_concurrent,
        max_queue: cfg.max_queue,
        queue_timeout: cfg.queue_timeout,
    });
    let state = Arc::new(AppState {
        lm,
        model_id,
        cfg: cfg.clone(),
        admission,
        metrics: metrics.clone(),
        jobs: Mutex::new(jobs),
        full_bytes_per_token,
        started: SystemTime::now(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("frugal-http")
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(state);
    let thread = std::thread::Builder::new()
        .name("frugal-http-main".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
            });
            if let Err(e) = served {
                eprintln!("frugal serve: server error: {e}");
            }
            // Dropping the runtime and the state closes the job channel; the engine thread ends.
            drop(runtime);
            let _ = engine.join();
        })?;
    Ok(RunningServer {
        addr,
        metrics,
        shutdown: Some(shutdown),
        thread: Some(thread),
    })
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/tokenizer_info", get(tokenizer_info))
        .route("/tokenize", post(tokenize_text))
        .route("/detokenize", post(detokenize_ids))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let resp = complete(&st, Endpoint::Chat, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    st.metrics
        .request("chat_completions", resp.status().as_u16());
    resp
}

async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let resp = complete(&st, Endpoint::Completion, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    st.metrics.request("completions", resp.status().as_u16());
    resp
}

fn model_card(st: &AppState) -> serde_json::Value {
    let created = st
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"id": st.model_id, "object": "model", "created": created, "owned_by": "frugal"})
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.request("models", 200);
    Json(json!({"object": "list", "data": [model_card(&st)]})).into_response()
}

async fn model_by_id(State(st): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    let resp = match id == st.model_id {
        true => Json(model_card(&st)).into_response(),
        false => ApiError::model_not_found(&id, &st.model_id).into_response(),
    };
    st.metrics.request("models", resp.status().as_u16());
    resp
}

async fn tokenizer_info(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.request("tokenizer_info", 200);
    Json(tokenize::tokenizer_info(&st.lm)).into_response()
}

async fn tokenize_text(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let resp = read_body(&st, body)
        .and_then(|b| tokenize::tokenize(&b, &st.lm))
        .map(Json)
        .into_response();
    st.metrics.request("tokenize", resp.status().as_u16());
    resp
}

async fn detokenize_ids(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let resp = read_body(&st, body)
        .and_then(|b| tokenize::detokenize(&b, &st.lm))
        .map(Json)
        .into_response();
    st.metrics.request("detokenize", resp.status().as_u16());
    resp
}

/// The request body, or the error a client gets for one that cannot be read.
fn read_body(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| match rej.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(st.cfg.max_body_bytes),
        _ => ApiError::invalid(format!("cannot read request body: {}", rej.body_text())),
    })
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.request("health", 200);
    let a = st.admission.snapshot();
    Json(json!({"status": "ok", "model": st.model_id, "active": a.active, "queued": a.queued}))
        .into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.request("metrics", 200);
    let body = st.metrics.render(st.admission.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Checks, admits and runs one completion request (one sequence per prompt and choice);
/// answers JSON or an SSE stream.
async fn complete(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = read_body(st, body)?;
    let policy_header = match headers.get(api::POLICY_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::invalid_param(
                api::POLICY_HEADER,
                format!("the {} header is not visible ASCII", api::POLICY_HEADER),
            )
        })?),
    };
    let cx = RequestContext {
        model: &st.lm,
        model_id: &st.model_id,
        default_policy: &st.cfg.default_policy,
        default_max_tokens: st.cfg.default_max_tokens,
        policy_header,
    };
    let req: Prepared = match endpoint {
        Endpoint::Chat => api::prepare_chat(&body, &cx)?,
        Endpoint::Completion => api::prepare_completion(&body, &cx)?,
    };
    let layout = st.lm.model.config().kv_layout();
    let mut parts = Vec::with_capacity(req.prompts.len() * req.n);
    let mut reserves = Vec::with_capacity(req.prompts.len() * req.n);
    for (p, ids) in req.prompts.iter().enumerate() {
        for j in 0..req.n {
            let seq = frugal_methods::build(&req.policy, layout).map_err(|e| {
                ApiError::invalid_param(
                    "frugal.policy",
                    format!("invalid policy `{}`: {e}", req.policy),
                )
                .with_code("invalid_policy")
            })?;
            // The choices of one prompt draw with consecutive seeds, so they differ.
            let sampling = SamplingParams {
                seed: req.sampling.seed.wrapping_add(j as u64),
                ..req.sampling.clone()
            };
            let generation = Generation::new(
                &st.lm,
                &seq,
                ids.clone(),
                &GenerateRequest {
                    sampling,
                    max_tokens: req.max_tokens,
                    stop: req.stop.clone(),
                },
            )
            .map_err(|e| ApiError::invalid(e.to_string()))?
            .ignore_eos(req.ignore_eos);
            reserves.push((ids.len() + req.max_tokens) * st.full_bytes_per_token);
            parts.push((p * req.n + j, seq, generation));
        }
    }
    let permits = st.admission.acquire(&reserves).await?;

    let (events, rx) = tmpsc::unbounded_channel();
    let policy_label = req
        .policy
        .parts
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join("+");
    {
        let jobs = st.jobs.lock().unwrap_or_else(|p| p.into_inner());
        for ((index, seq, generation), permit) in parts.into_iter().zip(permits) {
            jobs.send(Job {
                index,
                seq,
                generation,
                spec: req.policy.clone(),
                policy: req.policy.to_string(),
                policy_label: policy_label.clone(),
                arrived,
                events: events.clone(),
                permit,
                logprobs: req.logprobs,
                score_prompt: req.echo && req.logprobs.is_some(),
            })
            .map_err(|_| ApiError::internal("the engine thread has stopped"))?;
        }
    }
    drop(events);

    let meta = ResponseMeta {
        id: format!(
            "{}-{:x}",
            if endpoint == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            random_id()
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: st.model_id.clone(),
    };
    if req.stream {
        return Ok(stream_response(st.clone(), endpoint, meta, req, rx));
    }
    let count = req.prompts.len() * req.n;
    let mut texts = vec![String::new(); count];
    let mut sampled: Vec<Vec<TokenLogprob>> = vec![Vec::new(); count];
    let mut summaries: Vec<Option<Summary>> = vec![None; count];
    let mut rx = rx;
    let mut remaining = count;
    while remaining > 0 {
        match rx.recv().await {
            Some((i, Event::Token { text, logprob })) => {
                texts[i].push_str(&text);
                sampled[i].extend(logprob);
            }
            Some((i, Event::Done(sum))) => {
                summaries[i] = Some(sum);
                remaining -= 1;
            }
            Some((_, Event::Failed(msg))) => {
                return Err(ApiError::internal(format!("generation failed: {msg}")))
            }
            None => {
                return Err(ApiError::internal(
                    "the engine dropped the request without an answer",
                ))
            }
        }
    }
    let summaries: Vec<Summary> = summaries.into_iter().flatten().collect();
    let mut choices = Vec::with_capacity(count);
    for (i, sum) in summaries.iter().enumerate() {
        let ids = &req.prompts[i / req.n];
        let prompt_text = match req.echo || req.logprobs.is_some() {
            true => st.lm.tokenizer.decode(ids, true).unwrap_or_default(),
            false => String::new(),
        };
        let logprobs = match (endpoint, req.logprobs) {
            (_, None) => serde_json::Value::Null,
            (Endpoint::Chat, Some(_)) => api::chat_logprobs(&st.lm, &sampled[i]),
            (Endpoint::Completion, Some(_)) => {
                let mut list: Vec<(u32, Option<TokenLogprob>)> = Vec::new();
                if req.echo {
                    list.extend(
                        ids.iter().copied().zip(
                            sum.prompt_logprobs
                                .iter()
                                .cloned()
                                .chain(std::iter::repeat(None)),
                        ),
                    );
                }
                list.extend(sampled[i].iter().map(|t| (t.id, Some(t.clone()))));
                // Offsets count from the start of the prompt, as OpenAI's do.
                let offset = if req.echo { 0 } else { prompt_text.len() };
                api::completion_logprobs(&st.lm, &list, offset)
            }
        };
        choices.push(api::ChoiceOut {
            index: i,
            text: match req.echo {
                true => prompt_text + &texts[i],
                false => std::mem::take(&mut texts[i]),
            },
            finish: api::finish_reason(sum.finish),
            logprobs,
        });
    }
    let body = api::full_response(
        endpoint,
        &meta,
        &choices,
        usage_of(&req, &summaries),
        frugal_extension(&summaries),
    );
    Ok(Json(body).into_response())
}

/// Usage over a request's sequences: each prompt counted once (as OpenAI counts `n` > 1),
/// every choice's completion tokens, and the prompt tokens its first choice resumed from the
/// prefix cache.
fn usage_of(req: &Prepared, summaries: &[Summary]) -> serde_json::Value {
    let prompt: usize = req.prompts.iter().map(Vec::len).sum();
    let completion: usize = summaries.iter().map(|s| s.completion_tokens).sum();
    let cached: usize = summaries
        .iter()
        .step_by(req.n.max(1))
        .map(|s| s.cached_tokens)
        .sum();
    api::usage(prompt, completion, cached)
}

fn frugal_extension(summaries: &[Summary]) -> serde_json::Value {
    let policy = summaries
        .first()
        .map_or(String::new(), |s| s.policy.clone());
    let peak = summaries.iter().map(|s| s.peak_kv_bytes).max().unwrap_or(0);
    json!({"policy": policy, "kv_peak_bytes": peak})
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// The SSE stream: chunks as text settles (each tagged with its choice index), a closing
/// chunk with `finish_reason` per choice, optionally a `usage` chunk once every choice is
/// done, then `data: [DONE]`. When the client goes away, hyper drops this stream and with it
/// the event receiver, which is how the engine learns to free the sequences.
fn stream_response(
    st: Arc<AppState>,
    endpoint: Endpoint,
    meta: ResponseMeta,
    req: Prepared,
    rx: tmpsc::UnboundedReceiver<(usize, scheduler::Event)>,
) -> Response {
    struct S {
        rx: tmpsc::UnboundedReceiver<(usize, scheduler::Event)>,
        pending: VecDeque<String>,
        remaining: usize,
        summaries: Vec<Option<Summary>>,
        done: bool,
    }
    let count = req.prompts.len() * req.n;
    let mut pending = VecDeque::new();
    for i in 0..count {
        let echoed = match req.echo {
            true => Some(
                st.lm
                    .tokenizer
                    .decode(&req.prompts[i / req.n], true)
                    .unwrap_or_default(),
            ),
            false => None,
        };
        if endpoint == Endpoint::Chat || echoed.is_some() {
            let first = api::chunk(
                endpoint,
                &meta,
                i,
                Some(echoed.as_deref().unwrap_or("")),
                true,
                None,
                serde_json::Value::Null,
            );
            pending.push_back(first.to_string());
        }
    }
    let init = S {
        rx,
        pending,
        remaining: count,
        summaries: vec![None; count],
        done: false,
    };
    let meta = Arc::new(meta);
    let req = Arc::new(req);
    let stream = futures_util::stream::unfold(init, move |mut s| {
        let meta = meta.clone();
        let req = req.clone();
        let st = st.clone();
        async move {
            loop {
                if let Some(d) = s.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(SseEvent::default().data(d)), s));
                }
                if s.done {
                    return None;
                }
                let failed = |msg: String| ApiError::internal(msg).body().to_string();
                match s.rx.recv().await {
                    Some((i, Event::Token { text, logprob })) => {
                        let logprobs = match (endpoint, logprob) {
                            (_, None) => serde_json::Value::Null,
                            (Endpoint::Chat, Some(lp)) => api::chat_logprobs(&st.lm, &[lp]),
                            (Endpoint::Completion, Some(lp)) => {
                                api::completion_logprobs(&st.lm, &[(lp.id, Some(lp))], 0)
                            }
                        };
                        s.pending.push_back(
                            api::chunk(endpoint, &meta, i, Some(&text), false, None, logprobs)
                                .to_string(),
                        );
                        continue;
                    }
                    Some((i, Event::Done(sum))) => {
                        let finish = api::finish_reason(sum.finish);
                        s.pending.push_back(
                            api::chunk(
                                endpoint,
                                &meta,
                                i,
                                None,
                                false,
                                Some(finish),
                                serde_json::Value::Null,
                            )
                            .to_string(),
                        );
                        s.summaries[i] = Some(sum);
                        s.remaining -= 1;
                        if s.remaining > 0 {
                            continue;
                        }
                        if req.include_usage {
                            let sums: Vec<Summary> = std::mem::take(&mut s.summaries)
                                .into_iter()
                                .flatten()
                                .collect();
                            s.pending.push_back(
                                api::usage_chunk(endpoint, &meta, usage_of(&req, &sums))
                                    .to_string(),
                            );
                        }
                    }
                    Some((_, Event::Failed(msg))) => s
                        .pending
                        .push_back(failed(format!("generation failed: {msg}"))),
                    None => s
                        .pending
                        .push_back(failed("the engine dropped the request".into())),
                }
                s.pending.push_back("[DONE]".into());
                s.done = true;
            }
        }
    });
    Sse::new(stream).into_response()
}
