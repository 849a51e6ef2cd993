//! `frugal zpressor`: ZPressor's scaling bench and its trainable toy (the method lives in
//! `frugal-zpressor`; this file only routes the subcommands).

use anyhow::Result;
use clap::{Args, Subcommand};
use frugal_zpressor::cli;

#[derive(Args)]
pub struct ZpressorArgs {
    #[command(subcommand)]
    command: ZpressorCommand,
}

#[derive(Subcommand)]
enum ZpressorCommand {
    /// Time and peak memory of ZPressor + a stand-in against the stand-in over all views.
    Bench(cli::BenchArgs),
    /// Train the toy next-view model with or without ZPressor.
    Train(cli::TrainArgs),
    /// Evaluate toy checkpoints against the number of views.
    Eval(cli::EvalArgs),
}

pub fn run(args: ZpressorArgs) -> Result<()> {
    match args.command {
        ZpressorCommand::Bench(a) => cli::run_bench(a),
        ZpressorCommand::Train(a) => cli::run_train(a),
        ZpressorCommand::Eval(a) => cli::run_eval(a),
    }
}
