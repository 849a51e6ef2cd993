//! `frugal probe`: read-only analyses of the model (adjacent-layer KV similarity).

use crate::session::Session;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ProbeArgs {
    /// What to measure.
    #[arg(value_parser = ["kv-similarity"])]
    what: String,
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    length: usize,
    /// Windows of held-out text.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    /// Output JSON (Markdown and plots are written beside it).
    #[arg(long)]
    out: PathBuf,
    /// Use this corpus directory instead of fetching the default one.
    #[arg(long)]
    corpus_dir: Option<PathBuf>,
}

pub fn run(session: &Session, args: &ProbeArgs) -> Result<()> {
    let speeches = session.speeches(args.corpus_dir.as_deref())?;
    let lm = session.load_model()?;
    let limit = lm.model.config().context_length;
    if args.length > limit {
        bail!(
            "--length {} is over the model's context window of {limit} tokens",
            args.length
        );
    }
    let text = frugal_eval::load_task_text(&lm, &speeches)?;
    let report = frugal_eval::kv_similarity::run(&lm, &text, args.length, args.samples)?;
    frugal_eval::kv_similarity::write(&report, &args.out)?;
    println!(
        "wrote {} (and .md, .svg, .png beside it)",
        args.out.display()
    );
    Ok(())
}
