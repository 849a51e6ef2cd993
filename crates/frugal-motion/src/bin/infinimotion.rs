//! A thin test binary for the long-motion commands (the `frugal` CLI wires the same argument
//! structs as `frugal motion long-eval | long`).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "InfiniMotion: long motion in bounded memory")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train (if needed) and evaluate the memory model and its baselines on long scripts.
    LongEval(frugal_motion::cli_long::LongEvalArgs),
    /// Stream a long motion to a BVH written incrementally.
    Long(frugal_motion::cli_long::LongArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::LongEval(a) => frugal_motion::cli_long::long_eval(a),
        Cmd::Long(a) => frugal_motion::cli_long::long(a),
    }
}
