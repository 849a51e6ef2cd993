//! Thin test binary for the NEs commands (the `frugal` CLI wires the same functions).

use clap::{Parser, Subcommand};
use frugal_nes::cli;

#[derive(Parser)]
#[command(name = "nes", about = "Non-transferable examples")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Recode images so that only the given model reads them.
    Protect(cli::ProtectArgs),
    /// Train the digit models.
    ProtectTrain(cli::TrainArgs),
    /// Evaluate NEs on the digit models.
    ProtectEval(cli::EvalArgs),
}

fn main() {
    let r = match Cli::parse().cmd {
        Cmd::Protect(a) => cli::run_protect(&a),
        Cmd::ProtectTrain(a) => cli::run_train(&a),
        Cmd::ProtectEval(a) => cli::run_eval(&a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
