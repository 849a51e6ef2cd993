//! `frugal seg`: CIT's class-incremental segmentation — the scene data, one training run per
//! call (resumable), and the summary of finished runs — and ESA's active domain adaptation
//! (`seg adapt`, `seg adapt-report`). The methods live in `frugal-seg`; this file only routes
//! the subcommands.

use anyhow::Result;
use clap::{Args, Subcommand};
use frugal_seg::cli;

#[derive(Args)]
pub struct SegArgs {
    #[command(subcommand)]
    command: SegCommand,
}

#[derive(Subcommand)]
enum SegCommand {
    /// Generate scenes from the photographs and write a preview grid of images and label maps.
    Dataset(cli::DatasetArgs),
    /// Train one protocol × method × seed run (resumable).
    Train(cli::TrainArgs),
    /// Summarise finished runs: base/new/all mIoU, forgetting, plots, prediction strips.
    Eval(cli::EvalArgs),
    /// ESA active domain adaptation: one acquisition × clicks × seed run (resumable), or
    /// `--preview` pictures of what an acquisition selects.
    Adapt(cli::AdaptArgs),
    /// Summarise finished adaptation runs: table, esa.json, mIoU-vs-clicks curves.
    AdaptReport(cli::AdaptReportArgs),
}

pub fn run(args: SegArgs) -> Result<()> {
    match &args.command {
        SegCommand::Dataset(a) => cli::run_dataset(a),
        SegCommand::Train(a) => cli::run_train(a),
        SegCommand::Eval(a) => cli::run_eval(a),
        SegCommand::Adapt(a) => cli::run_adapt(a),
        SegCommand::AdaptReport(a) => cli::run_adapt_report(a),
    }
}
