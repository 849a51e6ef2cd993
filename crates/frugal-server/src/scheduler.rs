//! Admission control and the engine thread.
//!
//! The model is CPU-bound and already spreads one forward pass over every core, so running
//! requests on several threads at once would only make them fight. One dedicated engine thread
//! owns every live sequence instead and goes round-robin: per round, each sequence gets one
//! step (a prefill chunk of at most `prefill_chunk` tokens, or one decode token). That
//! interleaves requests fairly, so a long prompt cannot stall other streams for its whole
//! prefill, and a new request starts within one round.
//!
//! Memory is bounded by admission, not discovered by running out: a request reserves, before it
//! is admitted, the KV bytes a full cache would hold for its prompt plus `max_tokens` (an upper
//! bound for every policy that stores no more than full; if a policy ever holds more, its
//! reservation grows to match, so the books stay exact). Requests wait in a bounded queue for
//! a slot and budget; past the queue they get 429, after `queue_timeout` in it 503, both with
//! `Retry-After`. A request whose reservation could never fit the budget gets a 400 that says so.
//! What the budget does not cover (known gap): the budget is in resident bytes, as the cache
//! policies report them; the store's vectors grow by doubling during decode, so the allocator
//! may hold up to about twice the resident bytes, and each live request also holds its logits
//! (vocabulary × 4 bytes) and activations. Size `--kv-budget` with that headroom.
//!
//! A client that goes away drops its event receiver; the engine sees the closed channel at
//! that sequence's next turn (within one round) and drops the sequence, which frees its KV and
//! its reservation at once.

use crate::error::ApiError;
use crate::metrics::{AdmissionSnapshot, KvUsage, Metrics};
use frugal_engine::generate::{FinishReason, Generation, Step as GenStep};
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, Notify};

/// Limits the scheduler enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub kv_budget: usize,
    pub max_concurrent: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
}

#[derive(Debug, Default)]
struct AdmissionState {
    active: usize,
    queued: usize,
    reserved: usize,
}

/// Slots and KV budget, shared by the handlers (which acquire) and the engine (which releases
/// by dropping [`Permit`]s).
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<AdmissionState>,
    freed: Notify,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(AdmissionState::default()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> AdmissionSnapshot {
        let s = self.lock();
        AdmissionSnapshot {
            queued: s.queued,
            active: s.active,
            reserved_bytes: s.reserved,
            budget_bytes: self.limits.kv_budget,
            max_concurrent: self.limits.max_concurrent,
        }
    }

    fn try_admit(self: &Arc<Self>, s: &mut AdmissionState, bytes: usize) -> Option<Permit> {
        if s.active < self.limits.max_concurrent && s.reserved + bytes <= self.limits.kv_budget {
            s.active += 1;
            s.reserved += bytes;
            Some(Permit {
                admission: self.clone(),
                bytes,
            })
        } else {
            None
        }
    }

    /// Waits for a slot and `bytes` of KV budget, within the queue's bounds.
    pub async fn acquire(self: &Arc<Self>, bytes: usize) -> Result<Permit, ApiError> {
        if bytes > self.limits.kv_budget {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!(
                    "this request may need {bytes} bytes of KV cache (prompt + max_tokens at full size), over the server's whole budget of {} bytes (--kv-budget); lower max_tokens or shorten the prompt",
                    self.limits.kv_budget
                ),
            )
            .with_code("kv_budget_exceeded"));
        }
        {
            let mut s = self.lock();
            // Arrivals do not jump ahead of requests already waiting.
            if s.queued == 0 {
                if let Some(p) = self.try_admit(&mut s, bytes) {
                    return Ok(p);
                }
            }
            if s.queued >= self.limits.max_queue {
                return Err(ApiError::busy(format!(
                    "server is at capacity ({} running, {} queued, {} of {} KV bytes reserved); retry shortly",
                    s.active, s.queued, s.reserved, self.limits.kv_budget
                )));
            }
            s.queued += 1;
        }
        // Leaves the queue however this future ends, including a client hanging up.
        let _in_queue = QueueSlot(self);
        let start = tokio::time::Instant::now();
        let deadline = start + self.limits.queue_timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.try_admit(&mut self.lock(), bytes) {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(ApiError::queue_timeout(start.elapsed().as_secs_f64()));
            }
        }
    }
}

struct QueueSlot<'a>(&'a Arc<Admission>);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.lock().queued -= 1;
    }
}

/// An admitted request's slot and KV reservation; dropping it gives both back.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    bytes: usize,
}

impl Permit {
    /// Raises the reservation to what the sequence really holds, if that is more.
    fn cover(&mut self, resident: usize) {
        if resident > self.bytes {
            self.admission.lock().reserved += resident - self.bytes;
            self.bytes = resident;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut s = self.admission.lock();
            s.active -= 1;
            s.reserved -= self.bytes;
        }
        self.admission.freed.notify_waiters();
    }
}

/// What the engine sends back to a request's handler.
#[derive(Debug)]
pub enum Event {
    /// Settled text (never part of a stop string).
    Text(String),
    Done(Summary),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub peak_kv_bytes: usize,
    pub policy: String,
}

/// One admitted request, handed to the engine thread.
pub struct Job {
    pub prompt_tokens: usize,
    pub seq: Sequence,
    /// The request's sampling, stop strings and limits, stepped by the engine thread.
    pub generation: Generation,
    /// The spec as requested, for the response.
    pub policy: String,
    /// The policy's part names, the label of its KV metrics.
    pub policy_label: String,
    pub arrived: Instant,
    pub events: tmpsc::UnboundedSender<Event>,
    pub permit: Permit,
}

/// A job in progress on the engine thread: its request and the engine's step-wise generation.
struct Live {
    job: Job,
    last_token: Option<Instant>,
}

impl From<Job> for Live {
    fn from(job: Job) -> Self {
        Live {
            job,
            last_token: None,
        }
    }
}

enum Step {
    Continue,
    /// Done; the last event goes out only after the sequence is dropped and the metrics are
    /// updated, so a client that has its answer sees its KV already freed.
    Finished(Option<(tmpsc::UnboundedSender<Event>, Event)>),
}

/// Starts the engine thread; it ends when every sender of its job channel is gone.
pub fn start_engine(
    lm: Arc<LoadedModel>,
    metrics: Arc<Metrics>,
    prefill_chunk: usize,
) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<Job>();
    let handle = std::thread::Builder::new()
        .name("frugal-engine".into())
        .spawn(move || engine_loop(&lm, &rx, &metrics, prefill_chunk.max(1)))?;
    Ok((tx, handle))
}

fn engine_loop(
    lm: &LoadedModel,
    rx: &mpsc::Receiver<Job>,
    metrics: &Metrics,
    prefill_chunk: usize,
) {
    let layout = lm.model.config().kv_layout();
    // A full f16 cache: keys and values, 2 bytes per element, no positions.
    let f16_per_token = layout.n_layers * layout.n_kv_heads * layout.head_dim * 2 * 2;
    let mut live: Vec<Live> = Vec::new();
    loop {
        if live.is_empty() {
            match rx.recv() {
                Ok(job) => live.push(Live::from(job)),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            live.push(Live::from(job));
        }
        // Dropping a finished `Live` drops its sequence (KV) and permit (reservation).
        let mut outbox = Vec::new();
        live.retain_mut(|s| match step(lm, s, metrics, prefill_chunk) {
            Step::Continue => true,
            Step::Finished(last) => {
                outbox.extend(last);
                false
            }
        });
        let mut kv: BTreeMap<String, KvUsage> = BTreeMap::new();
        for s in &mut live {
            let resident = s.job.seq.cache.resident_bytes();
            s.job.permit.cover(resident);
            let u = kv.entry(s.job.policy_label.clone()).or_default();
            u.sequences += 1;
            u.resident_bytes += resident;
            u.full_f16_bytes += s.job.seq.len() * f16_per_token;
        }
        metrics.set_kv(kv);
        for (tx, ev) in outbox {
            let _ = tx.send(ev);
        }
    }
}

impl Live {
    fn generated(&self) -> usize {
        self.job.generation.tokens().len()
    }

    fn summary(&self, finish: FinishReason) -> Summary {
        Summary {
            finish,
            prompt_tokens: self.job.prompt_tokens,
            completion_tokens: self.generated(),
            peak_kv_bytes: self.job.seq.peak_kv_bytes(),
            policy: self.job.policy.clone(),
        }
    }
}

fn step(lm: &LoadedModel, s: &mut Live, metrics: &Metrics, prefill_chunk: usize) -> Step {
    if s.job.events.is_closed() {
        metrics.finished("cancelled", s.job.prompt_tokens, s.generated());
        return Step::Finished(None);
    }
    // A panic inside the model (a bug) fails this request only; the engine thread and every
    // other sequence keep going. The model is only read by a step, so it stays usable.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        try_step(lm, s, metrics, prefill_chunk)
    }))
    .map_err(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned());
        format!("internal error (panic): {}", what.unwrap_or_default())
    })
    .and_then(|r| r.map_err(|e| e.to_string()));
    match result {
        Ok(None) => Step::Continue,
        Ok(Some(finish)) => {
            let reason = crate::api::finish_reason(finish);
            metrics.finished(reason, s.job.prompt_tokens, s.generated());
            Step::Finished(Some((s.job.events.clone(), Event::Done(s.summary(finish)))))
        }
        Err(e) => {
            metrics.finished("error", s.job.prompt_tokens, s.generated());
            Step::Finished(Some((s.job.events.clone(), Event::Failed(e))))
        }
    }
}

/// One turn: a prefill chunk, or one sampled token (and the forward pass that feeds it back).
fn try_step(
    lm: &LoadedModel,
    s: &mut Live,
    metrics: &Metrics,
    prefill_chunk: usize,
) -> frugal_engine::Result<Option<FinishReason>> {
    match s.job.generation.step(lm, &mut s.job.seq, prefill_chunk)? {
        GenStep::Prefilled(_) => Ok(None),
        GenStep::Token { text, finish, .. } => {
            let now = Instant::now();
            match s.last_token {
                None => {
                    metrics.time_to_first_token(now.duration_since(s.job.arrived).as_secs_f64())
                }
                Some(t) => metrics.inter_token(now.duration_since(t).as_secs_f64()),
            }
            s.last_token = Some(now);
            if !text.is_empty() {
                // A closed channel is noticed at the top of the next turn.
                let _ = s.job.events.send(Event::Text(text));
            }
            Ok(finish)
        }
    }
}
