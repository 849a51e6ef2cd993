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
    /// Requests decoding at once (interleaved one token each, round-robin).
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
    /// Prompt tokens per prefill step; smaller interleaves long prompts more finely.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Model id clients send as `model` (default: the model file's stem).
    #[arg(long)]
    pub served_model_name: Option<String>,
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
        })
    }
}

/// Runs `frugal serve` until the process is interrupted.
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
