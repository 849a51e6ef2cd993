//! `frugal bench`: prefill and decode throughput on synthetic prompts, with the protocol that
//! `scripts/peer/llamacpp_bench.py` follows for llama.cpp, so the two JSON reports compare
//! figure by figure.
//!
//! Protocol: prompt token `i` is `1000 + (i * 7919) % 40000` (content does not change the work
//! of a dense model); prefill at N = one forward call over N tokens from an empty cache, one
//! warm-up at the smallest N, best of `repeats`; decode = `decode_tokens` single-token steps
//! after a `decode_depth`-token prompt, each feeding back the argmax, never stopping at EOS.

use frugal_engine::generate::argmax;
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_methods::PolicySpec;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct SpeedConfig {
    pub prefill_lengths: Vec<usize>,
    pub decode_depth: usize,
    pub decode_tokens: usize,
    pub repeats: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpeedReport {
    pub engine: String,
    /// The policy every run used (`full` unless asked otherwise).
    pub policy: String,
    pub version: String,
    pub threads: usize,
    pub model: String,
    pub prefill_tok_s: BTreeMap<String, f64>,
    pub prefill_runs_s: BTreeMap<String, Vec<f64>>,
    pub decode_tok_s: f64,
    pub decode_depth: usize,
    pub decode_tokens: usize,
    /// KV bytes the store held at the end of the decode run.
    pub decode_kv_bytes: usize,
    pub peak_rss_bytes: u64,
    pub rss_after_load_bytes: u64,
    /// Where the forward pass ran: `cpu`, or `cuda:N` for the device path.
    pub device: String,
    /// Peak bytes in use on the device over the whole bench (the default memory pool's
    /// high-water mark: weights, KV store, activations); `None` on the CPU.
    pub peak_device_bytes: Option<u64>,
}

/// The synthetic prompt shared with the llama.cpp peer script.
pub fn synthetic_prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((1000 + (i * 7919) % 40000) % vocab) as u32)
        .collect()
}

/// Runs the protocol on a loaded model; `threads` is recorded as given (the caller sets up
/// the thread pools before loading).
pub fn run_speed_bench(
    lm: &LoadedModel,
    cfg: &SpeedConfig,
    threads: usize,
    policy: &PolicySpec,
    on_step: &mut dyn FnMut(&str),
) -> anyhow::Result<SpeedReport> {
    let layout = lm.model.config().kv_layout();
    let new_sequence = || frugal_methods::build(policy, layout);
    let rss_after_load_bytes = rss_bytes().0;
    let device = match &lm.model {
        frugal_engine::model::Model::Device(m) => Some(m.device().clone()),
        _ => None,
    };
    if let Some(dev) = &device {
        frugal_engine::model::device_model::reset_peak_device_memory(dev);
    }
    let vocab = lm.model.config().vocab_size;
    let time_prefill = |n: usize| -> anyhow::Result<f64> {
        let ids = synthetic_prompt(n, vocab);
        let mut seq = new_sequence()?;
        let t = Instant::now();
        lm.model.forward(&ids, &mut seq, LogitRows::Last)?;
        Ok(t.elapsed().as_secs_f64())
    };
    if let Some(&smallest) = cfg.prefill_lengths.iter().min() {
        on_step(&format!("warm-up prefill {smallest}"));
        time_prefill(smallest)?;
    }
    let (mut tok_s, mut runs) = (BTreeMap::new(), BTreeMap::new());
    for &n in &cfg.prefill_lengths {
        let mut times = Vec::new();
        for r in 0..cfg.repeats.max(1) {
            on_step(&format!("prefill {n} tokens, run {}", r + 1));
            times.push(time_prefill(n)?);
        }
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        tok_s.insert(n.to_string(), n as f64 / best);
        runs.insert(n.to_string(), times);
    }
    on_step(&format!(
        "decode {} tokens after {}",
        cfg.decode_tokens, cfg.decode_depth
    ));
    let mut seq = new_sequence()?;
    let ids = synthetic_prompt(cfg.decode_depth.max(1), vocab);
    let mut next = argmax(&lm.model.last_logits(&ids, &mut seq)?);
    let t = Instant::now();
    for _ in 0..cfg.decode_tokens {
        next = argmax(&lm.model.last_logits(&[next], &mut seq)?);
    }
    let decode_tok_s = cfg.decode_tokens as f64 / t.elapsed().as_secs_f64();
    Ok(SpeedReport {
        engine: "frugal".into(),
        policy: policy.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        threads,
        model: lm.path.display().to_string(),
        prefill_tok_s: tok_s,
        prefill_runs_s: runs,
        decode_tok_s,
        decode_depth: cfg.decode_depth,
        decode_tokens: cfg.decode_tokens,
        decode_kv_bytes: seq.kv_resident_bytes(),
        peak_rss_bytes: rss_bytes().1,
        rss_after_load_bytes,
        device: lm.model.device_name(),
        peak_device_bytes: device
            .as_ref()
            .and_then(frugal_engine::model::device_model::peak_device_memory),
    })
}

/// (current RSS, peak RSS) of this process in bytes, from /proc/self/status (0 where absent).
pub fn rss_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
