//! `frugal ppl`: sliding-window perplexity of a text file, under any policy.

use crate::args::PolicyArg;
use crate::session::{progress_bar, Session};
use anyhow::{Context, Result};
use clap::Args;
use frugal_eval::perplexity::sliding_window_perplexity;
use std::path::PathBuf;

#[derive(Args)]
pub struct PplArgs {
    /// UTF-8 text file to score.
    file: PathBuf,
    /// Window length in tokens.
    #[arg(long, default_value_t = 1024)]
    context: usize,
    /// Step between windows in tokens (default: half the context).
    #[arg(long)]
    stride: Option<usize>,
    /// Score at most this many tokens of the file (default: all).
    #[arg(long)]
    max_tokens: Option<usize>,
    #[command(flatten)]
    policy: PolicyArg,
}

pub fn run(session: &Session, args: &PplArgs) -> Result<()> {
    let spec = args.policy.spec()?;
    session.check_policy(&spec)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read text file {}", args.file.display()))?;
    let lm = session.load_model()?;
    let mut ids = lm.tokenizer.encode(&text)?;
    if let Some(n) = args.max_tokens {
        ids.truncate(n);
    }
    let stride = args.stride.unwrap_or(args.context / 2).max(1);
    let layout = lm.model.config().kv_layout();
    // Built once here so a spec that cannot be built for this model fails before any work.
    frugal_methods::build(&spec, layout)?;
    let bar = progress_bar("windows");
    let report = sliding_window_perplexity(
        &lm,
        &ids,
        args.context,
        stride,
        &|| frugal_methods::build(&spec, layout).expect("built once above"),
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    println!(
        "perplexity {:.4} over {} tokens ({} windows of {}, stride {}), {:.1} tokens/s on {} threads, policy {spec}",
        report.perplexity,
        report.scored_tokens,
        report.windows,
        report.context,
        report.stride,
        report.tokens_per_second(),
        session.threads
    );
    Ok(())
}
