//! Thin test binary for `frugal motion`; the `frugal` front-end wires the same functions.

use clap::{Parser, Subcommand};
use frugal_motion::cli;

#[derive(Parser)]
#[command(
    name = "frugal-motion",
    about = "Long text-to-motion with KMM (key-frame masked Mamba)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train the shared stages and the generators (resumable), evaluating each run.
    Train(cli::TrainArgs),
    /// Generate a motion from several instructions: BVH + picture strip + GIF.
    Generate(cli::GenerateArgs),
    /// Aggregate the runs into kmm.json and the results table.
    Eval(cli::EvalArgs),
    /// BVH round trip and tokenizer reconstruction of a real motion-capture clip.
    BvhCheck(cli::BvhCheckArgs),
}

fn main() {
    let r = match Cli::parse().cmd {
        Cmd::Train(a) => cli::train(a),
        Cmd::Generate(a) => cli::generate(a),
        Cmd::Eval(a) => cli::eval(a),
        Cmd::BvhCheck(a) => cli::bvh_check(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
