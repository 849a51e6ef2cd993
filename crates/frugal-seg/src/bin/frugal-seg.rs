//! Thin test binary for `frugal seg …`: parses the same arguments and calls the crate's `cli`.

use clap::{Parser, Subcommand};
use frugal_seg::cli;

#[derive(Parser)]
#[command(
    name = "frugal-seg",
    about = "CIT class-incremental segmentation and ESA active domain adaptation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate scenes and write a preview grid of images and label maps.
    Dataset(cli::DatasetArgs),
    /// Train one run (resumable).
    Train(cli::TrainArgs),
    /// Summarise finished runs: table, JSON, forgetting plots, prediction strips.
    Eval(cli::EvalArgs),
    /// ESA active domain adaptation: one run (resumable), or --preview selection pictures.
    Adapt(cli::AdaptArgs),
    /// Summarise finished adaptation runs: table, esa.json, curves.
    AdaptReport(cli::AdaptReportArgs),
}

fn main() {
    let c = Cli::parse();
    let r = match &c.cmd {
        Cmd::Dataset(a) => cli::run_dataset(a),
        Cmd::Train(a) => cli::run_train(a),
        Cmd::Eval(a) => cli::run_eval(a),
        Cmd::Adapt(a) => cli::run_adapt(a),
        Cmd::AdaptReport(a) => cli::run_adapt_report(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
