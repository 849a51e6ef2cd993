//! A thin binary for testing the `zpressor` commands outside the `frugal` CLI.

use clap::{Parser, Subcommand};
use frugal_zpressor::cli;

#[derive(Parser)]
#[command(
    name = "zpressor",
    about = "ZPressor: compress many views into a few anchors"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time and peak memory against the number of views.
    Bench(cli::BenchArgs),
    /// Train the toy next-view model.
    Train(cli::TrainArgs),
    /// Evaluate toy checkpoints against the number of views.
    Eval(cli::EvalArgs),
}

fn main() {
    let parsed = Cli::parse();
    let res = match parsed.cmd {
        Cmd::Bench(a) => cli::run_bench(a),
        Cmd::Train(a) => cli::run_train(a),
        Cmd::Eval(a) => cli::run_eval(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
