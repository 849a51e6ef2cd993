//! Admission control and the engine thread.
//!
//! The model is CPU-bound and already spreads one forward pass over every core, so running
//! requests on several threads at once would only make them fight. One dedicated engine thread
//! owns every live sequence instead and advances them together (continuous batching): each
//! step, every decoding sequence samples its next token and every prefilling sequence takes a
//! chunk of its prompt, and all of those tokens go through **one** batched forward call
//! ([`frugal_engine::model::Model::forward_batch`]): the projections and the MLP are one
//! matrix product over the stacked rows, attention runs per sequence through its own cache and
//! attention policy, so one batch mixes policies freely. Prompt tokens per step are capped
//! (`prefill_tokens`, handed out first come, first served), so a long prompt is prefilled over
//! several steps and never stalls the decoding streams for its whole length. New requests
//! join between steps.
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
//! (vocabulary × 4 bytes) and activations. Size `--kv-budget` with that headroom. The prefix
//! cache has its own budget ([`crate::prefix`]).
//!
//! A client that goes away drops its event receiver; the engine sees the closed channel at
//! that sequence's next step and drops the sequence, which frees its KV and its reservation at
//! once.

use crate::error::ApiError;
use crate::metrics::{AdmissionSnapshot, EngineGauges, KvUsage, Metrics};
use crate::prefix::PrefixCache;
use candle_core::Tensor;
use frugal_engine::generate::{
    token_logprob, FinishReason, Generation, Step as GenStep, TokenLogprob, Turn,
};
use frugal_engine::model::batch::BatchItem;
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use frugal_methods::PolicySpec;
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

    fn try_admit(self: &Arc<Self>, s: &mut AdmissionState, bytes: &[usize]) -> Option<Vec<Permit>> {
        let total: usize = bytes.iter().sum();
        if s.active + bytes.len() <= self.limits.max_concurrent
            && s.reserved + total <= self.limits.kv_budget
        {
            s.active += bytes.len();
            s.reserved += total;
            Some(
                bytes
                    .iter()
                    .map(|&b| Permit {
                        admission: self.clone(),
                        bytes: b,
                    })
                    .collect(),
            )
        } else {
            None
        }
    }

    /// Waits for one slot and its KV bytes per sequence of the request (`n` > 1 and prompt
    /// batches run several), all admitted together, within the queue's bounds.
    pub async fn acquire(self: &Arc<Self>, bytes: &[usize]) -> Result<Vec<Permit>, ApiError> {
        let total: usize = bytes.iter().sum();
        if total > self.limits.kv_budget {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!(
                    "this request may need {total} bytes of KV cache (prompt + max_tokens at full size, for each of its {} sequences), over the server's whole budget of {} bytes (--kv-budget); lower max_tokens, n, or shorten the prompt",
                    bytes.len(),
                    self.limits.kv_budget
                ),
            )
            .with_code("kv_budget_exceeded"));
        }
        if bytes.len() > self.limits.max_concurrent {
            return Err(ApiError::invalid_param(
                "n",
                format!(
                    "this request runs {} sequences (n × prompts), more than the server runs at once ({}, --max-concurrent)",
                    bytes.len(),
                    self.limits.max_concurrent
                ),
            )
            .with_code("too_many_sequences"));
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

/// What the engine sends back to a request's handler, tagged with the choice index.
#[derive(Debug)]
pub enum Event {
    /// One step's settled text (never part of a stop string; may be empty while held back)
    /// and, when the request asked for `logprobs`, the sampled token's log-probability.
    Token {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done(Summary),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens resumed from the prefix cache instead of prefilled.
    pub cached_tokens: usize,
    pub peak_kv_bytes: usize,
    pub policy: String,
    /// With `echo` and `logprobs`: each prompt token's log-probability given the tokens before
    /// it (`None` for the first, which has no context), else empty.
    pub prompt_logprobs: Vec<Option<TokenLogprob>>,
}

/// One admitted sequence, handed to the engine thread.
pub struct Job {
    /// The choice index this sequence answers (prompt index × n + sample index).
    pub index: usize,
    pub seq: Sequence,
    /// The request's prompt, sampling, stop strings and limits, stepped by the engine thread.
    pub generation: Generation,
    /// The policy as requested: rebuilt to resume a cached prefix, and the prefix cache's key.
    pub spec: PolicySpec,
    /// The spec as requested, for the response.
    pub policy: String,
    /// The policy's part names, the label of its KV metrics.
    pub policy_label: String,
    pub arrived: Instant,
    pub events: EventSender,
    pub permit: Permit,
    /// Report each sampled token's log-probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Score the prompt (`echo` with `logprobs`): every prefill row's logits are read, and the
    /// prefix cache is not used (a cached prefix has no logits to score).
    pub score_prompt: bool,
}

/// The engine thread's knobs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Prompt tokens prefilled per step over all sequences, and the size of each sequence's
    /// prefill chunk: smaller keeps decoding streams smoother while a long prompt comes in,
    /// larger prefills faster.
    pub prefill_tokens: usize,
    /// Bytes the prefix cache may hold; 0 turns it off.
    pub prefix_cache_bytes: usize,
    /// Prefixes are cached at multiples of this many tokens.
    pub prefix_block: usize,
    /// How many block boundaries before a prompt's end are cached (the last ones).
    pub prefix_snapshots: usize,
}

/// A job in progress on the engine thread.
struct Live {
    job: Job,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    cached_tokens: usize,
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    /// This step's forward call: its tokens and which rows' logits it needs.
    pending: Option<(Vec<u32>, LogitRows)>,
    /// Prompt lengths at which the cache is copied into the prefix cache, ascending.
    snapshots: Vec<usize>,
}

/// Where a request's events go: each tagged with its choice index.
pub type EventSender = tmpsc::UnboundedSender<(usize, Event)>;

enum Outcome {
    Continue,
    /// Done; the last event goes out only after the sequence is dropped and the metrics are
    /// updated, so a client that has its answer sees its KV already freed.
    Finished(Option<(EventSender, usize, Event)>),
}

/// Starts the engine thread; it ends when every sender of its job channel is gone.
pub fn start_engine(
    lm: Arc<LoadedModel>,
    metrics: Arc<Metrics>,
    cfg: EngineConfig,
) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<Job>();
    let handle = std::thread::Builder::new()
        .name("frugal-engine".into())
        .spawn(move || engine_loop(&lm, &rx, &metrics, &cfg))?;
    Ok((tx, handle))
}

/// Prompt lengths at which a prompt of `len` tokens, resumed after `from`, is copied into the
/// prefix cache: the last `keep` multiples of `block` below `len` (one prompt token must stay
/// to be run) and above `from`, ascending. Several points, because a follow-up request shares
/// only the part before its own question: with two, a question shorter than one block always
/// leaves one point inside the shared part.
pub fn snapshot_points(len: usize, from: usize, block: usize, keep: usize) -> Vec<usize> {
    if block == 0 || len < 2 {
        return Vec::new();
    }
    let last = (len - 1) / block * block;
    let mut points: Vec<usize> = (0..keep)
        .filter_map(|i| last.checked_sub(i * block))
        .filter(|&p| p > from && p > 0)
        .collect();
    points.reverse();
    points
}

fn engine_loop(lm: &LoadedModel, rx: &mpsc::Receiver<Job>, metrics: &Metrics, cfg: &EngineConfig) {
    let layout = lm.model.config().kv_layout();
    // A full f16 cache: keys and values, 2 bytes per element, no positions.
    let f16_per_token = layout.n_layers * layout.n_kv_heads * layout.head_dim * 2 * 2;
    let mut prefix = PrefixCache::new(cfg.prefix_cache_bytes);
    let mut live: Vec<Live> = Vec::new();
    let mut busy = false;
    loop {
        if live.is_empty() {
            if busy {
                crate::allocator::release_free_memory();
            }
            match rx.recv() {
                Ok(job) => live.push(admit(lm, job, &mut prefix, metrics, cfg)),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            live.push(admit(lm, job, &mut prefix, metrics, cfg));
        }
        busy = true;
        // Dropping a finished `Live` drops its sequence (KV) and permit (reservation).
        let mut outbox = Vec::new();
        let chunk_tokens = cfg.prefill_tokens.max(1);
        let mut budget = chunk_tokens;
        live.retain_mut(
            |s| match first_half(lm, s, metrics, &mut budget, chunk_tokens) {
                Outcome::Continue => true,
                Outcome::Finished(last) => {
                    outbox.extend(last);
                    false
                }
            },
        );
        let mut results = run_batch(lm, &mut live, metrics).into_iter();
        live.retain_mut(|s| {
            if s.pending.is_none() {
                return true;
            }
            let result = results
                .next()
                .unwrap_or_else(|| Err("no result for a batch item".into()));
            match second_half(s, result, &mut prefix, metrics) {
                Outcome::Continue => true,
                Outcome::Finished(last) => {
                    outbox.extend(last);
                    false
                }
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
        metrics.set_engine(EngineGauges {
            running: live.len(),
            prefilling: live
                .iter()
                .filter(|s| !s.job.generation.prefill_done())
                .count(),
            prefix_entries: prefix.len(),
            prefix_bytes: prefix.bytes(),
        });
        for (tx, index, ev) in outbox {
            let _ = tx.send((index, ev));
        }
    }
}

/// Takes a job into the engine: resumes it from the longest cached prefix of its prompt (same
/// policy) when the prefix cache holds one, and plans where its own prefixes are cached.
fn admit(
    lm: &LoadedModel,
    job: Job,
    prefix: &mut PrefixCache,
    metrics: &Metrics,
    cfg: &EngineConfig,
) -> Live {
    let mut s = Live {
        prompt_logprobs: match job.score_prompt {
            true => vec![None],
            false => Vec::new(),
        },
        job,
        first_token: None,
        last_token: None,
        cached_tokens: 0,
        pending: None,
        snapshots: Vec::new(),
    };
    if !prefix.enabled() || s.job.score_prompt {
        return s;
    }
    let prompt_len = s.job.generation.prompt_len();
    let hit = prefix.lookup(&s.job.policy, s.job.generation.prompt());
    if let Some((n, cache)) = hit {
        // The cached prefix brings its cache; the attention policy starts fresh from the spec.
        if let Ok(fresh) = frugal_methods::build(&s.job.spec, lm.model.config().kv_layout()) {
            if s.job.generation.assume_prefilled(n).is_ok() {
                s.job.seq = Sequence::resume(cache, fresh.attention, n);
                s.cached_tokens = n;
            }
        }
    }
    metrics.prefix_lookup(prompt_len, s.cached_tokens);
    s.snapshots = snapshot_points(
        prompt_len,
        s.cached_tokens,
        cfg.prefix_block,
        cfg.prefix_snapshots,
    );
    s
}

impl Live {
    fn generated(&self) -> usize {
        self.job.generation.tokens().len()
    }

    fn summary(&mut self, finish: FinishReason) -> Summary {
        Summary {
            finish,
            prompt_tokens: self.job.generation.prompt_len(),
            completion_tokens: self.generated(),
            cached_tokens: self.cached_tokens,
            peak_kv_bytes: self.job.seq.peak_kv_bytes(),
            policy: self.job.policy.clone(),
            prompt_logprobs: std::mem::take(&mut self.prompt_logprobs),
        }
    }

    /// Sends one step's text (and the sampled token's log-probability) and times it.
    fn emit(&mut self, id: Option<u32>, text: String, metrics: &Metrics) {
        let logprob = match (id, self.job.logprobs) {
            (Some(id), Some(top)) => Some(token_logprob(self.job.generation.logits(), id, top)),
            _ => None,
        };
        if id.is_some() {
            let now = Instant::now();
            match self.last_token {
                None => {
                    metrics.time_to_first_token(now.duration_since(self.job.arrived).as_secs_f64());
                    self.first_token = Some(now);
                }
                Some(t) => metrics.inter_token(now.duration_since(t).as_secs_f64()),
            }
            self.last_token = Some(now);
        }
        if !text.is_empty() || logprob.is_some() {
            // A closed channel is noticed at the start of the next step.
            let _ = self
                .job
                .events
                .send((self.job.index, Event::Token { text, logprob }));
        }
    }

    fn finished(&mut self, finish: FinishReason, metrics: &Metrics) -> Outcome {
        let reason = crate::api::finish_reason(finish);
        metrics.finished(reason, self.job.generation.prompt_len(), self.generated());
        if let (Some(a), Some(b)) = (self.first_token, self.last_token) {
            if self.generated() >= 2 {
                metrics.time_per_output_token(
                    b.duration_since(a).as_secs_f64() / (self.generated() - 1) as f64,
                );
            }
        }
        let summary = self.summary(finish);
        Outcome::Finished(Some((
            self.job.events.clone(),
            self.job.index,
            Event::Done(summary),
        )))
    }

    fn failed(&mut self, msg: String, metrics: &Metrics) -> Outcome {
        metrics.finished("error", self.job.generation.prompt_len(), self.generated());
        Outcome::Finished(Some((
            self.job.events.clone(),
            self.job.index,
            Event::Failed(msg),
        )))
    }
}

/// What a panic carried, for the failed request's error message.
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned());
    format!("internal error (panic): {}", what.unwrap_or_default())
}

/// The first half of a sequence's step: its next prefill chunk (within this step's remaining
/// prompt-token `budget`) or its next sampled token, whose text goes out at once.
fn first_half(
    lm: &LoadedModel,
    s: &mut Live,
    metrics: &Metrics,
    budget: &mut usize,
    chunk_tokens: usize,
) -> Outcome {
    if s.job.events.is_closed() {
        metrics.finished("cancelled", s.job.generation.prompt_len(), s.generated());
        return Outcome::Finished(None);
    }
    let prefilling = !s.job.generation.prefill_done();
    let chunk = match prefilling {
        false => 1,
        true => {
            let done = s.job.generation.prefilled();
            // A chunk ends at the next point where the prefix is cached.
            let want = s
                .snapshots
                .first()
                .map_or(chunk_tokens, |&p| chunk_tokens.min(p - done))
                .min(s.job.generation.prompt_len() - done);
            // A whole chunk or none: a sequence's chunks then never depend on what else runs
            // (a policy whose result depends on the chunking, such as KIVI's, answers as it
            // does alone), and the first prefilling sequence of a step always fits.
            if want > *budget {
                return Outcome::Continue;
            }
            want
        }
    };
    // A panic inside a step (a bug) fails this request only; the engine thread and every
    // other sequence keep going.
    let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.job.generation.prepare(lm, &s.job.seq, chunk)
    }));
    match turn {
        Ok(Ok(Turn::Forward { tokens, step })) => {
            if prefilling {
                *budget = budget.saturating_sub(tokens.len());
            }
            let rows = match prefilling && s.job.score_prompt {
                true => LogitRows::All,
                false => LogitRows::Last,
            };
            s.pending = Some((tokens, rows));
            if let GenStep::Token { id, text, .. } = step {
                s.emit(id, text, metrics);
            }
            Outcome::Continue
        }
        Ok(Ok(Turn::Done(step))) => match step {
            GenStep::Token {
                id,
                text,
                finish: Some(finish),
            } => {
                s.emit(id, text, metrics);
                s.finished(finish, metrics)
            }
            other => s.failed(
                format!("internal error: a generation ended with {other:?}"),
                metrics,
            ),
        },
        Ok(Err(e)) => s.failed(e.to_string(), metrics),
        Err(p) => s.failed(panic_message(p), metrics),
    }
}

/// Runs every pending forward call of this step as one batched forward pass; one result per
/// pending sequence, in order. If the batch is refused (a bad item, found before anything is
/// stored), each item runs alone so only the bad one fails; a panic fails the whole batch.
fn run_batch(
    lm: &LoadedModel,
    live: &mut [Live],
    metrics: &Metrics,
) -> Vec<Result<Tensor, String>> {
    let mut items: Vec<BatchItem<'_>> = live
        .iter_mut()
        .filter_map(|s| {
            let Live { pending, job, .. } = s;
            pending
                .as_ref()
                .map(|(tokens, rows)| BatchItem::new(tokens, &mut job.seq, *rows))
        })
        .collect();
    if items.is_empty() {
        return Vec::new();
    }
    let tokens = items.iter().map(|i| i.tokens.len()).sum();
    metrics.batch(items.len(), tokens);
    let n = items.len();
    let batched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lm.model.forward_batch(&mut items)
    }));
    match batched {
        Ok(Ok(logits)) => logits.into_iter().map(Ok).collect(),
        Ok(Err(_)) if n > 1 => items
            .iter_mut()
            .map(|item| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    lm.model.forward_batch(std::slice::from_mut(item))
                }))
                .map_err(panic_message)
                .and_then(|r| r.map_err(|e| e.to_string()))
                .and_then(|mut v| v.pop().ok_or_else(|| "no logits".to_string()))
            })
            .collect(),
        Ok(Err(e)) => vec![Err(e.to_string())],
        Err(p) => {
            let msg = panic_message(p);
            (0..n).map(|_| Err(msg.clone())).collect()
        }
    }
}

/// The second half of a sequence's step: its logits back into its generation; prompt rows
/// scored when asked; the cache copied into the prefix cache at a planned point.
fn second_half(
    s: &mut Live,
    result: Result<Tensor, String>,
    prefix: &mut PrefixCache,
    metrics: &Metrics,
) -> Outcome {
    let Some((tokens, rows)) = s.pending.take() else {
        return Outcome::Continue;
    };
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let logits = result?;
        let last = match rows {
            LogitRows::All => {
                let mut all = logits.to_vec2::<f32>().map_err(|e| e.to_string())?;
                let start = s.job.generation.prefilled();
                let prompt = s.job.generation.prompt();
                let top = s.job.logprobs.unwrap_or(0);
                for (r, row) in all.iter().enumerate() {
                    if let Some(&next) = prompt.get(start + r + 1) {
                        s.prompt_logprobs.push(Some(token_logprob(row, next, top)));
                    }
                }
                all.pop().ok_or("no logits for the chunk")?
            }
            _ => logits
                .squeeze(0)
                .and_then(|l| l.to_vec1::<f32>())
                .map_err(|e| e.to_string())?,
        };
        debug_assert!(!tokens.is_empty());
        s.job.generation.complete(last).map_err(|e| e.to_string())?;
        let at = s.job.generation.prefilled();
        if s.snapshots.first() == Some(&at) && s.job.seq.len() == at {
            s.snapshots.remove(0);
            match s.job.seq.cache.fork() {
                Some(copy) => prefix.insert(&s.job.policy, &s.job.generation.prompt()[..at], copy),
                // A policy that cannot be copied is not asked again.
                None => s.snapshots.clear(),
            }
        }
        Ok::<(), String>(())
    }));
    match done {
        Ok(Ok(())) => Outcome::Continue,
        Ok(Err(e)) => s.failed(e, metrics),
        Err(p) => s.failed(panic_message(p), metrics),
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_points;

    #[test]
    fn prefixes_are_cached_at_the_last_block_boundaries_before_the_prompt_end() {
        assert_eq!(snapshot_points(100, 0, 16, 2), vec![80, 96]);
        assert_eq!(
            snapshot_points(97, 0, 16, 2),
            vec![80, 96],
            "one token stays to be run"
        );
        assert_eq!(snapshot_points(96, 0, 16, 2), vec![64, 80]);
        assert_eq!(
            snapshot_points(96, 70, 16, 2),
            vec![80],
            "only past what was resumed"
        );
        assert_eq!(snapshot_points(20, 0, 16, 3), vec![16]);
        assert!(snapshot_points(10, 0, 16, 2).is_empty());
        assert!(snapshot_points(100, 0, 0, 2).is_empty());
    }
}
