//! `frugal serve`: an OpenAI-compatible HTTP server (layer 5 of docs/design.md). It holds wire
//! formats ([`api`]), HTTP routing (here), admission and scheduling ([`scheduler`]) and
//! [`metrics`]; the model runs in the engine crate and policies are built by the methods
//! registry, so a policy registered there is servable here without a change.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both also as SSE streams
//! ending in `data: [DONE]`), `GET /v1/models`, `GET /health`, `GET /metrics`. A request picks
//! its KV/attention policy with the extension field `"frugal": {"policy": "<spec>"}`.

pub mod api;
pub mod cli;
pub mod error;
pub mod metrics;
pub mod scheduler;

use api::{Endpoint, Prepared, RequestContext, ResponseMeta};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
pub use cli::{serve, ServeArgs};
use error::ApiError;
use frugal_engine::generate::{GenerateRequest, Generation};
use frugal_engine::model::LoadedModel;
use frugal_methods::PolicySpec;
use metrics::Metrics;
use scheduler::{Admission, Event, Job, Limits, Summary};
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
    /// Prompt tokens per prefill step; smaller interleaves more finely with other requests.
    pub prefill_chunk: usize,
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
    let (jobs, engine) = scheduler::start_engine(lm.clone(), metrics.clone(), cfg.prefill_chunk)?;
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
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let resp = complete(&st, Endpoint::Chat, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    st.metrics
        .request("chat_completions", resp.status().as_u16());
    resp
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let resp = complete(&st, Endpoint::Completion, body)
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

/// Checks, admits and runs one completion request; answers JSON or an SSE stream.
async fn complete(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body.map_err(|rej| match rej.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(st.cfg.max_body_bytes),
        _ => ApiError::invalid(format!("cannot read request body: {}", rej.body_text())),
    })?;
    let cx = RequestContext {
        model: &st.lm,
        model_id: &st.model_id,
        default_policy: &st.cfg.default_policy,
        default_max_tokens: st.cfg.default_max_tokens,
    };
    let req: Prepared = match endpoint {
        Endpoint::Chat => api::prepare_chat(&body, &cx)?,
        Endpoint::Completion => api::prepare_completion(&body, &cx)?,
    };
    let seq =
        frugal_methods::build(&req.policy, st.lm.model.config().kv_layout()).map_err(|e| {
            ApiError::invalid_param(
                "frugal.policy",
                format!("invalid policy `{}`: {e}", req.policy),
            )
            .with_code("invalid_policy")
        })?;
    let generation = Generation::new(
        &st.lm,
        &seq,
        req.prompt_ids.clone(),
        &GenerateRequest {
            sampling: req.sampling.clone(),
            max_tokens: req.max_tokens,
            stop: req.stop.clone(),
        },
    )
    .map_err(|e| ApiError::invalid(e.to_string()))?
    .ignore_eos(req.ignore_eos);
    let reserve = (req.prompt_ids.len() + req.max_tokens) * st.full_bytes_per_token;
    let permit = st.admission.acquire(reserve).await?;

    let (events, rx) = tmpsc::unbounded_channel();
    let job = Job {
        prompt_tokens: req.prompt_ids.len(),
        seq,
        generation,
        policy: req.policy.to_string(),
        policy_label: req
            .policy
            .parts
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        arrived,
        events,
        permit,
    };
    st.jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| ApiError::internal("the engine thread has stopped"))?;

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
        return Ok(stream_response(endpoint, meta, req.include_usage, rx));
    }
    let mut rx = rx;
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done(sum) => {
                let body = api::full_response(
                    endpoint,
                    &meta,
                    &text,
                    api::finish_reason(sum.finish),
                    api::usage(sum.prompt_tokens, sum.completion_tokens),
                    frugal_extension(&sum),
                );
                return Ok(Json(body).into_response());
            }
            Event::Failed(msg) => {
                return Err(ApiError::internal(format!("generation failed: {msg}")))
            }
        }
    }
    Err(ApiError::internal(
        "the engine dropped the request without an answer",
    ))
}

fn frugal_extension(sum: &Summary) -> serde_json::Value {
    json!({"policy": sum.policy, "kv_peak_bytes": sum.peak_kv_bytes})
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// The SSE stream: chunks as text settles, a closing chunk with `finish_reason`, optionally a
/// `usage` chunk, then `data: [DONE]`. When the client goes away, hyper drops this stream and
/// with it the event receiver, which is how the engine learns to free the sequence.
fn stream_response(
    endpoint: Endpoint,
    meta: ResponseMeta,
    include_usage: bool,
    rx: tmpsc::UnboundedReceiver<Event>,
) -> Response {
    struct S {
        rx: tmpsc::UnboundedReceiver<Event>,
        pending: VecDeque<String>,
        done: bool,
    }
    let mut pending = VecDeque::new();
    if endpoint == Endpoint::Chat {
        pending.push_back(api::chunk(endpoint, &meta, Some(""), true, None).to_string());
    }
    let init = S {
        rx,
        pending,
        done: false,
    };
    let meta = Arc::new(meta);
    let stream = futures_util::stream::unfold(init, move |mut s| {
        let meta = meta.clone();
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
                    Some(Event::Text(t)) => {
                        s.pending.push_back(
                            api::chunk(endpoint, &meta, Some(&t), false, None).to_string(),
                        );
                        continue;
                    }
                    Some(Event::Done(sum)) => {
                        let finish = api::finish_reason(sum.finish);
                        s.pending.push_back(
                            api::chunk(endpoint, &meta, None, false, Some(finish)).to_string(),
                        );
                        if include_usage {
                            let usage = api::usage(sum.prompt_tokens, sum.completion_tokens);
                            s.pending
                                .push_back(api::usage_chunk(endpoint, &meta, usage).to_string());
                        }
                    }
                    Some(Event::Failed(msg)) => s
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
