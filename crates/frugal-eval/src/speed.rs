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
    /// The KV store's dtype (`F16` or `F32`).
    pub kv_dtype: String,
    /// Weight bytes one decode step reads (GGUF models; see
    /// `GgufFile::bytes_read_per_token`), `None` for safetensors directories.
    pub decode_weight_bytes: Option<u64>,
    /// Bytes one decode step reads at the decode run's mean depth: the weights plus the KV
    /// rows attention reads (the store's bytes at `decode_depth + decode_tokens / 2`).
    pub decode_bytes_per_token: Option<u64>,
}

/// This machine's read bandwidth: `threads` threads summing disjoint parts of a buffer far
/// larger than any cache, best of `runs`. A plain streaming read, the access pattern of a
/// decode step's weight reads, so decode speed can be stated as a fraction of it.
#[derive(Clone, Debug, Serialize)]
pub struct ReadBandwidth {
    pub threads: usize,
    pub buffer_bytes: u64,
    pub runs_gb_s: Vec<f64>,
    pub best_gb_s: f64,
}

/// Measures [`ReadBandwidth`] over a `buffer_bytes` buffer on the current rayon pool. Run it
/// after reading peak RSS: the buffer is resident while it runs.
pub fn read_bandwidth(threads: usize, buffer_bytes: usize, runs: usize) -> ReadBandwidth {
    use rayon::prelude::*;
    let words = buffer_bytes / 8;
    // Distinct values, written once so every page is resident before timing.
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads.max(1) * 4).max(1);
    let mut runs_gb_s = Vec::new();
    let mut checksum = 0u64;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(chunk)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        let secs = t.elapsed().as_secs_f64();
        checksum = checksum.wrapping_add(s);
        runs_gb_s.push(words as f64 * 8.0 / secs / 1e9);
    }
    // The sum is checked so the reads cannot be optimised away.
    let n = words as u64;
    let expect = (n.wrapping_mul(n.wrapping_sub(1)) / 2).wrapping_mul(runs.max(1) as u64);
    assert_eq!(checksum, expect, "bandwidth buffer sum");
    let best_gb_s = runs_gb_s.iter().copied().fold(0.0, f64::max);
    ReadBandwidth {
        threads,
        buffer_bytes: (words * 8) as u64,
        runs_gb_s,
        best_gb_s,
    }
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
    let decode_weight_bytes = lm
        .path
        .extension()
        .is_some_and(|e| e == "gguf")
        .then(|| frugal_engine::model::gguf::GgufFile::open(&lm.path))
        .transpose()?
        .map(|g| g.bytes_read_per_token());
    // The store grows linearly over the run: its bytes at the mean depth.
    let kv_end = seq.kv_resident_bytes() as u64;
    let kv_mean = kv_end * (2 * cfg.decode_depth + cfg.decode_tokens) as u64
        / (2 * (cfg.decode_depth + cfg.decode_tokens)).max(1) as u64;
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
        kv_dtype: format!("{:?}", layout.dtype),
        decode_weight_bytes,
        decode_bytes_per_token: decode_weight_bytes.map(|w| w + kv_mean),
    })
}

/// Aggregate decode throughput of `batch` sequences stepping together (continuous batching's
/// steady state, [`frugal_engine::model::Model::forward_batch`]): each sequence first
/// prefills its own `depth`-token synthetic prompt (shifted per sequence so no two are the
/// same), then `steps` batched steps each add one token to every sequence (its argmax).
/// Returns tokens per second over all sequences; one warm-up step is not timed.
pub fn batched_decode_tok_s(
    lm: &LoadedModel,
    policy: &PolicySpec,
    depth: usize,
    steps: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    use frugal_engine::model::batch::BatchItem;
    anyhow::ensure!(batch > 0, "a batch needs at least one sequence");
    let layout = lm.model.config().kv_layout();
    let vocab = lm.model.config().vocab_size;
    let mut seqs = Vec::with_capacity(batch);
    let mut next = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut seq = frugal_methods::build(policy, layout)?;
        let ids: Vec<u32> = synthetic_prompt(depth.max(1) + b, vocab)[b..].to_vec();
        next.push(argmax(&lm.model.last_logits(&ids, &mut seq)?));
        seqs.push(seq);
    }
    let mut step = |next: &mut Vec<u32>| -> anyhow::Result<()> {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut items: Vec<BatchItem<'_>> = tokens
            .iter()
            .zip(seqs.iter_mut())
            .map(|(t, seq)| BatchItem::new(t, seq, LogitRows::Last))
            .collect();
        let logits = lm.model.forward_batch(&mut items)?;
        for (n, l) in next.iter_mut().zip(&logits) {
            *n = argmax(&l.squeeze(0)?.to_vec1::<f32>()?);
        }
        Ok(())
    };
    step(&mut next)?;
    let t = Instant::now();
    for _ in 0..steps {
        step(&mut next)?;
    }
    Ok((steps * batch) as f64 / t.elapsed().as_secs_f64())
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
