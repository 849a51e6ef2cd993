//! A thin stand-alone `serve` for testing the server without building the whole CLI: the same
//! flags as `frugal --model PATH serve …` (`frugal-serve --model PATH serve …`), so
//! `scripts/server/load_test.py --binary target/release/frugal-serve --model PATH` drives it.

use clap::{Parser, Subcommand};
use frugal_engine::model::{self, llama::WeightFormat};
use frugal_server::ServeArgs;
use std::path::PathBuf;

#[derive(Parser)]
struct Cli {
    /// A GGUF file or a Hugging Face checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The OpenAI-compatible HTTP server.
    Serve(ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let lm = model::load(&cli.model, WeightFormat::Native)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", cli.model.display()))?;
    match cli.command {
        Command::Serve(args) => frugal_server::serve(lm, &args),
    }
}
