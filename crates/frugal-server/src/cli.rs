//! The `frugal serve` flags, defined here so the CLI crate only adds one subcommand that
//! forwards to [`serve`].

use crate::{parse_bytes, ServerConfig};
use frugal_engine::model::LoadedModel;
use frugal_methods::PolicySpec;
use std::time::Duration;

/// Flags of `frugal serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Keep the loopback default unless the server must be reachable
    /// from other machines (there is no authentication).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// KV/attention policy for requests that name none in `"frugal": {"policy": …}`, same
    /// syntax as everywhere (e.g. `full`, `streaming:sink=4,window=1024`).
    #[arg(long, default_value = "full", value_parser = parse_policy)]
    pub policy: PolicySpec,
    /// KV bytes all running requests may reserve together (suffixes K, M, G). Each request
    /// reserves what a full cache would hold for its prompt + max_tokens.
    #[arg(long, default_value = "1G", value_parser = parse_bytes)]
    pub kv_budget: usize,
    /// Sequences running at once: every step advances all of them in one batched forward
    /// pass (a request with `n` > 1 or several prompts runs several).
    #[arg(long, default_value_t = 4)]
    pub max_concurrent: usize,
    /// Requests that may wait for capacity; beyond that they get 429 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub max_queue: usize,
    /// Seconds a request may wait in the queue before a 503 with Retry-After.
    #[arg(long, default_value_t = 30.0)]
    pub queue_timeout: f64,
    /// Largest request body accepted (suffixes K, M, G); larger bodies get 413.
    #[arg(long, default_value = "1M", value_parser = parse_bytes)]
    pub max_body_bytes: usize,
    /// max_tokens for requests that give none (clamped to the rest of the context).
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// Prompt tokens prefilled per batched step, over all prefilling requests; smaller keeps
    /// decoding streams smoother while long prompts come in.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Bytes of prompt prefixes kept for reuse (suffixes K, M, G; 0 = off): a request that
    /// starts with a cached prefix under the same policy resumes from its cache, kept as the
    /// policy stores it (compressed), evicted least-recently-used. Under a compressing policy
    /// a resumed prefix was compressed without the request's question in view.
    #[arg(long, default_value = "0", value_parser = parse_bytes_or_zero)]
    pub prefix_cache_bytes: usize,
    /// Prefixes are cached at multiples of this many tokens (the last two before each
    /// prompt's end).
    #[arg(long, default_value_t = 64)]
    pub prefix_block: usize,
    /// How many of the last block boundaries before each prompt's end are cached.
    #[arg(long, default_value_t = 2)]
    pub prefix_snapshots: usize,
    /// glibc's mmap threshold (suffixes K, M; 0 = glibc's dynamic default): heap
    /// blocks at least this large get their own mapping, returned to the OS when freed, so the
    /// large per-step buffers of batched load do not leave the idle server's RSS raised.
    #[arg(long, default_value = "1M", value_parser = parse_bytes_or_zero)]
    pub malloc_mmap_threshold: usize,
    /// glibc heap arenas (0 = glibc's default, eight per core): one keeps the step threads'
    /// freed memory returnable, so the idle server's RSS comes back after load.
    #[arg(long, default_value_t = 1)]
    pub malloc_arenas: usize,
    /// Model id clients send as `model` (default: the model file's stem).
    #[arg(long)]
    pub served_model_name: Option<String>,
}

fn parse_bytes_or_zero(s: &str) -> Result<usize, String> {
    match s.trim() {
        "0" => Ok(0),
        other => parse_bytes(other),
    }
}

fn parse_policy(s: &str) -> Result<PolicySpec, String> {
    let spec: PolicySpec = s
        .parse()
        .map_err(|e: frugal_methods::SpecError| e.to_string())?;
    frugal_methods::validate(&spec).map_err(|e| e.to_string())?;
    Ok(spec)
}

impl ServeArgs {
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        if !(self.queue_timeout.is_finite() && self.queue_timeout >= 0.0) {
            anyhow::bail!(
                "invalid --queue-timeout {}: must be a number of seconds >= 0",
                self.queue_timeout
            );
        }
        for (name, v) in [
            ("--max-concurrent", self.max_concurrent),
            ("--default-max-tokens", self.default_max_tokens),
            ("--prefill-chunk", self.prefill_chunk),
            ("--prefix-block", self.prefix_block),
        ] {
            if v == 0 {
                anyhow::bail!("invalid {name} 0: must be at least 1");
            }
        }
        Ok(ServerConfig {
            host: self.host.clone(),
            port: self.port,
            model_id: self.served_model_name.clone(),
            default_policy: self.policy.clone(),
            kv_budget: self.kv_budget,
            max_concurrent: self.max_concurrent,
            max_queue: self.max_queue,
            queue_timeout: Duration::from_secs_f64(self.queue_timeout),
            max_body_bytes: self.max_body_bytes,
            default_max_tokens: self.default_max_tokens,
            prefill_chunk: self.prefill_chunk,
            prefix_cache_bytes: self.prefix_cache_bytes,
            prefix_block: self.prefix_block,
            prefix_snapshots: self.prefix_snapshots,
        })
    }
}

/// Applies the server's allocator settings (`--malloc-mmap-threshold`, `--malloc-arenas`).
/// Call it first, before the model loads and threads start: a thread keeps the arena it
/// first allocated from.
pub fn configure_allocator(args: &ServeArgs) -> anyhow::Result<()> {
    use crate::allocator::{set_arena_max, set_mmap_threshold, ThresholdError};
    for (flag, result) in [
        (
            "--malloc-mmap-threshold",
            set_mmap_threshold(args.malloc_mmap_threshold),
        ),
        ("--malloc-arenas", set_arena_max(args.malloc_arenas)),
    ] {
        match result {
            Ok(()) => {}
            Err(ThresholdError::NotGlibc) => {
                eprintln!("frugal serve: {flag} has no effect with this allocator")
            }
            Err(ThresholdError::Refused(n)) => {
                anyhow::bail!("invalid {flag} {n}: the allocator refused it")
            }
        }
    }
    Ok(())
}

/// Runs `frugal serve` until the process is interrupted (after [`configure_allocator`]).
pub fn serve(lm: LoadedModel, args: &ServeArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let description = lm.description.clone();
    let server = crate::spawn(lm, cfg.clone())?;
    eprintln!(
        "frugal serve: {description}, policy {}, KV budget {} bytes, {} concurrent; listening on http://{}",
        cfg.default_policy, cfg.kv_budget, cfg.max_concurrent, server.addr
    );
    server.wait();
    Ok(())
}
