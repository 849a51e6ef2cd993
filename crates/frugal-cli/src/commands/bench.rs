//! `frugal bench`: prefill/decode throughput and peak memory under one or more policies, or
//! (`--attention-step`) each policy's attention step against the dense kernel on the same
//! q/K/V.

use crate::session::Session;
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_eval::attention_bench::{self, AttentionBenchConfig};
use frugal_eval::speed::{batched_decode_tok_s, read_bandwidth, run_speed_bench, SpeedConfig};
use frugal_methods::PolicySpec;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// Prompt lengths for the prefill measurement, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "512,2048,8192")]
    prefill: Vec<usize>,
    /// Context depth at which decode speed is measured.
    #[arg(long, default_value_t = 512)]
    decode_depth: usize,
    /// Decode steps timed.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Timed runs per prefill length (the best is reported).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Policy spec(s) to measure (repeatable). Default: full.
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Time each policy's attention step (plan + kernel) against the dense kernel on the same
    /// q/K/V, layer by layer, on passkey prompts of the --prefill lengths; one JSON line per
    /// (length, policy) on stdout.
    #[arg(long)]
    attention_step: bool,
    /// With --attention-step: prompts per length.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// With --attention-step: unwrapped full/policy alternations for an end-to-end line (0 =
    /// none).
    #[arg(long, default_value_t = 0)]
    e2e_reps: usize,
    /// Also measure batched decode: for each B (comma-separated), B sequences at the decode
    /// depth step together through one batched forward pass per token (what `frugal serve`
    /// runs with B clients in flight), --decode-tokens steps; prints aggregate tok/s and the
    /// ratio to B = 1 measured in the same run.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Bytes of the buffer the read-bandwidth measurement streams through (after the policies'
    /// runs, so peak RSS is not affected); 0 skips it.
    #[arg(long, default_value_t = 1 << 30)]
    bandwidth_bytes: usize,
}

pub fn run(session: &Session, args: &BenchArgs) -> Result<()> {
    // Every spec is checked before the model loads, so a typo fails at once.
    let mut specs: Vec<PolicySpec> = Vec::new();
    for p in &args.policies {
        let spec: PolicySpec = p.parse()?;
        frugal_methods::validate(&spec)?;
        session.check_policy(&spec)?;
        specs.push(spec);
    }
    if args.batch.contains(&0) {
        bail!("--batch sizes must be at least 1");
    }
    if !args.batch.is_empty() && session.on_device() {
        bail!("--batch measures the CPU path's batched forward: run it without --device");
    }
    if args.attention_step && session.on_device() {
        bail!("--attention-step times the host attention kernels: run it without --device");
    }
    if args.attention_step {
        return attention_step(session, args, &specs);
    }
    if specs.is_empty() {
        specs.push("full".parse()?);
    }
    let lm = session.load_model()?;
    let cfg = SpeedConfig {
        prefill_lengths: args.prefill.clone(),
        decode_depth: args.decode_depth,
        decode_tokens: args.decode_tokens,
        repeats: args.repeats,
    };
    let limit = lm.model.config().context_length;
    if let Some(&n) = args
        .prefill
        .iter()
        .chain([&(args.decode_depth + args.decode_tokens)])
        .find(|&&n| n > limit)
    {
        bail!("bench length {n} is over the model's context window of {limit} tokens");
    }
    let mut reports = Vec::new();
    for spec in &specs {
        let report = run_speed_bench(&lm, &cfg, session.threads, spec, &mut |s| {
            eprintln!("bench ({spec}): {s}")
        })?;
        println!("policy {spec}");
        for (n, v) in &report.prefill_tok_s {
            println!("prefill {n:>6} tokens: {v:8.1} tok/s");
        }
        println!(
            "decode @{:>5} depth : {:8.1} tok/s",
            report.decode_depth, report.decode_tok_s
        );
        println!(
            "peak RSS           : {:8.1} MiB",
            report.peak_rss_bytes as f64 / 1048576.0
        );
        if let Some(b) = report.peak_device_bytes {
            println!("peak device memory : {:8.1} MiB", b as f64 / 1048576.0);
        }
        if let Some(b) = report.decode_bytes_per_token {
            println!(
                "decode reads       : {:8.1} MiB/token",
                b as f64 / 1048576.0
            );
        }
        reports.push(report);
        if !args.batch.is_empty() {
            let mut sizes = vec![1];
            sizes.extend(args.batch.iter().copied().filter(|&b| b != 1));
            let mut one = None;
            for &b in &sizes {
                eprintln!("bench ({spec}): batched decode, {b} sequences");
                let tok_s =
                    batched_decode_tok_s(&lm, spec, args.decode_depth, args.decode_tokens, b)?;
                let base = *one.get_or_insert(tok_s);
                println!(
                    "decode batch {b:>3}   : {tok_s:8.1} tok/s ({:.2}x batch 1)",
                    tok_s / base
                );
            }
        }
    }
    let bandwidth = (args.bandwidth_bytes > 0 && !session.on_device()).then(|| {
        eprintln!(
            "bench: read bandwidth over {} MiB",
            args.bandwidth_bytes >> 20
        );
        read_bandwidth(session.threads, args.bandwidth_bytes, 5)
    });
    if let Some(bw) = &bandwidth {
        println!(
            "read bandwidth     : {:8.2} GB/s ({} threads, best of {})",
            bw.best_gb_s,
            bw.threads,
            bw.runs_gb_s.len()
        );
        for r in &reports {
            if let Some(b) = r.decode_bytes_per_token {
                let used = b as f64 * r.decode_tok_s / 1e9;
                println!(
                    "decode ({})  : {used:.2} GB/s = {:.0} % of read bandwidth",
                    r.policy,
                    100.0 * used / bw.best_gb_s
                );
            }
        }
    }
    if let Some(path) = &args.json {
        // One policy: the report object itself, with the bandwidth beside it (the peer scripts
        // read it); several: a list.
        let json = match reports.as_slice() {
            [one] => {
                let mut v = serde_json::to_value(one)?;
                v["read_bandwidth"] = serde_json::to_value(&bandwidth)?;
                serde_json::to_string_pretty(&v)?
            }
            many => serde_json::to_string_pretty(many)?,
        };
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn attention_step(session: &Session, args: &BenchArgs, specs: &[PolicySpec]) -> Result<()> {
    if specs.is_empty() {
        bail!("--attention-step compares policies with full: give at least one --policy");
    }
    if args.samples == 0 {
        bail!("invalid --samples 0: must be at least 1");
    }
    let speeches = session.speeches(None)?;
    let lm = session.load_model()?;
    let limit = lm.model.config().context_length;
    if let Some(&n) = args.prefill.iter().find(|&&n| n > limit) {
        bail!("bench length {n} is over the model's context window of {limit} tokens");
    }
    let text = frugal_eval::load_task_text(&lm, &speeches)?;
    let cfg = AttentionBenchConfig {
        lengths: args.prefill.clone(),
        samples: args.samples,
        e2e_reps: args.e2e_reps,
        threads: session.threads,
    };
    let mut lines = Vec::new();
    let mut stdout = std::io::stdout();
    attention_bench::run(&lm, &text, specs, &cfg, &mut |line| {
        writeln!(stdout, "{}", serde_json::to_string(&line)?)?;
        lines.push(line);
        Ok(())
    })?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&lines)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
