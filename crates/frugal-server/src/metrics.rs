//! Counters, gauges and histograms for `GET /metrics`, written in the Prometheus text format by
//! hand (a few dozen lines; a metrics crate would add dependencies without adding checks).
//!
//! KV bytes are what the live sequences' cache policies report holding (counted from their
//! buffers), grouped by the policy's part names (`streaming`, `minicache+kivi`, …) rather than
//! the full spec, so per-request knob values cannot blow up the number of series. The
//! compression ratio divides what a full cache of the same tokens would hold in f16 (keys and
//! values, 2 bytes each, no positions) by what is resident: frugal's own `full` policy keeps
//! f32 plus positions, so it shows about 0.48, and a method beats the f16 baseline above 1.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Sequences in one batched forward step.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];
/// Tokens in one batched forward step (decode tokens plus prefill chunks).
const BATCH_TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

/// KV held by the live sequences of one policy.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KvUsage {
    pub sequences: usize,
    pub resident_bytes: usize,
    /// Bytes a full f16 cache of the same tokens would hold.
    pub full_f16_bytes: usize,
}

/// What the engine thread holds, reported after every step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineGauges {
    /// Sequences in the engine (prefilling or decoding).
    pub running: usize,
    /// Of those, still prefilling their prompt.
    pub prefilling: usize,
    /// Prefixes held by the prefix cache, and their bytes (cache policy bytes plus tokens).
    pub prefix_entries: usize,
    pub prefix_bytes: usize,
}

/// Admission figures, read from the scheduler when metrics are rendered.
#[derive(Clone, Copy, Debug, Default)]
pub struct AdmissionSnapshot {
    pub queued: usize,
    pub active: usize,
    pub reserved_bytes: usize,
    pub budget_bytes: usize,
    pub max_concurrent: usize,
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    finished: BTreeMap<&'static str, u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    ttft: Histogram,
    itl: Histogram,
    kv: BTreeMap<String, KvUsage>,
    tpot: Histogram,
    batch_seqs: Histogram,
    batch_tokens: Histogram,
    steps: u64,
    engine: EngineGauges,
    prefix_queried_tokens: u64,
    prefix_hit_tokens: u64,
    prefix_hits: u64,
    prefix_lookups: u64,
}

/// Everything `/metrics` reports; shared by the HTTP handlers and the engine thread.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                finished: BTreeMap::new(),
                prompt_tokens: 0,
                completion_tokens: 0,
                ttft: Histogram::new(TTFT_BUCKETS),
                itl: Histogram::new(ITL_BUCKETS),
                kv: BTreeMap::new(),
                tpot: Histogram::new(ITL_BUCKETS),
                batch_seqs: Histogram::new(BATCH_BUCKETS),
                batch_tokens: Histogram::new(BATCH_TOKEN_BUCKETS),
                steps: 0,
                engine: EngineGauges::default(),
                prefix_queried_tokens: 0,
                prefix_hit_tokens: 0,
                prefix_hits: 0,
                prefix_lookups: 0,
            }),
        }
    }
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic elsewhere while holding the lock leaves counters that are still valid numbers.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// One HTTP answer on `endpoint` with `status`.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.with(|m| *m.requests.entry((endpoint, status)).or_default() += 1);
    }

    /// A generation ended (`stop`, `length`, `cancelled`, `error`) after these token counts.
    pub fn finished(&self, reason: &'static str, prompt_tokens: usize, completion_tokens: usize) {
        self.with(|m| {
            *m.finished.entry(reason).or_default() += 1;
            m.prompt_tokens += prompt_tokens as u64;
            m.completion_tokens += completion_tokens as u64;
        });
    }

    pub fn time_to_first_token(&self, secs: f64) {
        self.with(|m| m.ttft.observe(secs));
    }

    pub fn inter_token(&self, secs: f64) {
        self.with(|m| m.itl.observe(secs));
    }

    /// A request's mean time per output token after the first (vLLM's
    /// `time_per_output_token`), observed once per request with at least two tokens.
    pub fn time_per_output_token(&self, secs: f64) {
        self.with(|m| m.tpot.observe(secs));
    }

    /// One batched forward step over `sequences` sequences and `tokens` tokens.
    pub fn batch(&self, sequences: usize, tokens: usize) {
        self.with(|m| {
            m.batch_seqs.observe(sequences as f64);
            m.batch_tokens.observe(tokens as f64);
            m.steps += 1;
        });
    }

    /// A prefix-cache lookup for a prompt of `prompt_tokens`, `hit_tokens` of which were found.
    pub fn prefix_lookup(&self, prompt_tokens: usize, hit_tokens: usize) {
        self.with(|m| {
            m.prefix_lookups += 1;
            m.prefix_hits += u64::from(hit_tokens > 0);
            m.prefix_queried_tokens += prompt_tokens as u64;
            m.prefix_hit_tokens += hit_tokens as u64;
        });
    }

    pub fn set_engine(&self, g: EngineGauges) {
        self.with(|m| m.engine = g);
    }

    /// The largest batch (in sequences) any step has run so far: 0 before the first.
    pub fn max_batch_sequences(&self) -> usize {
        self.with(|m| {
            m.batch_seqs
                .bounds
                .iter()
                .zip(&m.batch_seqs.counts)
                .rev()
                .find(|(_, c)| **c > 0)
                .map_or(0, |(b, _)| *b as usize)
        })
    }

    /// Replaces the KV figures; policies no longer live stay listed with zeros.
    pub fn set_kv(&self, now: BTreeMap<String, KvUsage>) {
        self.with(|m| {
            for v in m.kv.values_mut() {
                *v = KvUsage::default();
            }
            m.kv.extend(now);
        });
    }

    /// KV bytes resident over all policies (what the tests watch fall to zero).
    pub fn kv_resident_total(&self) -> usize {
        self.with(|m| m.kv.values().map(|k| k.resident_bytes).sum())
    }

    pub fn render(&self, adm: AdmissionSnapshot) -> String {
        self.with(|m| {
            let mut o = String::new();
            let _ = writeln!(o, "# HELP frugal_requests_total HTTP requests answered, by endpoint and status.\n# TYPE frugal_requests_total counter");
            for ((ep, st), n) in &m.requests {
                let _ = writeln!(o, "frugal_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}");
            }
            let _ = writeln!(o, "# HELP frugal_generations_total Generations ended, by reason.\n# TYPE frugal_generations_total counter");
            for (r, n) in &m.finished {
                let _ = writeln!(o, "frugal_generations_total{{reason=\"{r}\"}} {n}");
            }
            let _ = writeln!(o, "# HELP frugal_prompt_tokens_total Prompt tokens processed.\n# TYPE frugal_prompt_tokens_total counter\nfrugal_prompt_tokens_total {}", m.prompt_tokens);
            let _ = writeln!(o, "# HELP frugal_completion_tokens_total Tokens generated.\n# TYPE frugal_completion_tokens_total counter\nfrugal_completion_tokens_total {}", m.completion_tokens);
            m.ttft.render(&mut o, "frugal_time_to_first_token_seconds", "From request arrival (queue included) to the first sampled token.");
            m.itl.render(&mut o, "frugal_inter_token_latency_seconds", "Between consecutive sampled tokens of one sequence.");
            m.tpot.render(&mut o, "frugal_time_per_output_token_seconds", "Per request: (last token time - first token time) / (output tokens - 1).");
            m.batch_seqs.render(&mut o, "frugal_batch_size", "Sequences in one batched forward step.");
            m.batch_tokens.render(&mut o, "frugal_batch_tokens", "Tokens in one batched forward step (decode tokens plus prefill chunks).");
            let _ = writeln!(o, "# HELP frugal_engine_steps_total Batched forward steps run.\n# TYPE frugal_engine_steps_total counter\nfrugal_engine_steps_total {}", m.steps);
            let e = m.engine;
            let waiting = adm.queued;
            let rate = match m.prefix_queried_tokens {
                0 => 0.0,
                q => m.prefix_hit_tokens as f64 / q as f64,
            };
            let engine_gauges: [(&str, &str, String); 6] = [
                ("frugal_num_requests_running", "Sequences in the engine's batch (prefilling or decoding), as vLLM's num_requests_running.", e.running.to_string()),
                ("frugal_num_requests_prefilling", "Of the running sequences, those still prefilling their prompt.", e.prefilling.to_string()),
                ("frugal_num_requests_waiting", "Requests waiting for a slot or KV budget, as vLLM's num_requests_waiting.", waiting.to_string()),
                ("frugal_prefix_cache_entries", "Prompt prefixes held by the prefix cache (--prefix-cache-bytes).", e.prefix_entries.to_string()),
                ("frugal_prefix_cache_bytes", "Bytes the prefix cache holds: each prefix's cache as its policy stores it, plus its tokens.", e.prefix_bytes.to_string()),
                ("frugal_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / prompt tokens looked up, since start.", format!("{rate:.4}")),
            ];
            for (name, help, v) in engine_gauges {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
            let counters: [(&str, &str, u64); 4] = [
                ("frugal_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", m.prefix_queried_tokens),
                ("frugal_prefix_cache_hits_total", "Prompt tokens found in the prefix cache (not prefilled again).", m.prefix_hit_tokens),
                ("frugal_prefix_cache_lookups_total", "Requests that looked up the prefix cache.", m.prefix_lookups),
                ("frugal_prefix_cache_request_hits_total", "Requests that resumed from a cached prefix.", m.prefix_hits),
            ];
            for (name, help, v) in counters {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
            }
            let gauges: [(&str, &str, usize); 5] = [
                ("frugal_queue_depth", "Requests waiting for a slot or KV budget.", adm.queued),
                ("frugal_active_sequences", "Requests admitted to the engine (prefilling or decoding).", adm.active),
                ("frugal_max_concurrent", "Most requests admitted at once (--max-concurrent).", adm.max_concurrent),
                ("frugal_kv_budget_bytes", "KV byte budget (--kv-budget).", adm.budget_bytes),
                ("frugal_kv_reserved_bytes", "KV bytes reserved by admitted requests (worst case of each).", adm.reserved_bytes),
            ];
            for (name, help, v) in gauges {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
            let _ = writeln!(o, "# HELP frugal_kv_resident_bytes KV bytes held now by live sequences, by policy.\n# TYPE frugal_kv_resident_bytes gauge");
            for (p, k) in &m.kv {
                let _ = writeln!(o, "frugal_kv_resident_bytes{{policy=\"{p}\"}} {}", k.resident_bytes);
            }
            let _ = writeln!(o, "# HELP frugal_kv_sequences Live sequences, by policy.\n# TYPE frugal_kv_sequences gauge");
            for (p, k) in &m.kv {
                let _ = writeln!(o, "frugal_kv_sequences{{policy=\"{p}\"}} {}", k.sequences);
            }
            let _ = writeln!(o, "# HELP frugal_kv_compression_ratio Full-f16 KV bytes of the same tokens / resident bytes, by policy (live sequences only).\n# TYPE frugal_kv_compression_ratio gauge");
            for (p, k) in m.kv.iter().filter(|(_, k)| k.resident_bytes > 0) {
                let _ = writeln!(o, "frugal_kv_compression_ratio{{policy=\"{p}\"}} {:.4}", k.full_f16_bytes as f64 / k.resident_bytes as f64);
            }
            o
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_kv_goes_to_zero() {
        let m = Metrics::default();
        m.time_to_first_token(0.02);
        m.time_to_first_token(100.0);
        m.set_kv(
            [(
                "full".to_string(),
                KvUsage {
                    sequences: 1,
                    resident_bytes: 100,
                    full_f16_bytes: 50,
                },
            )]
            .into(),
        );
        let text = m.render(AdmissionSnapshot::default());
        assert!(
            text.contains("frugal_time_to_first_token_seconds_bucket{le=\"0.025\"} 1"),
            "{text}"
        );
        assert!(text.contains("frugal_time_to_first_token_seconds_bucket{le=\"60\"} 1"));
        assert!(text.contains("frugal_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("frugal_kv_compression_ratio{policy=\"full\"} 0.5000"));
        m.set_kv(BTreeMap::new());
        assert_eq!(m.kv_resident_total(), 0);
        assert!(m
            .render(AdmissionSnapshot::default())
            .contains("frugal_kv_resident_bytes{policy=\"full\"} 0"));
    }
}
