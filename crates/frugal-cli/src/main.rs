//! `frugal`: the command-line front-end. Parses flags, loads the model, calls the engine and
//! eval layers, prints. No model or method logic lives here: one file per command under
//! `commands/`, the flags in `args`, what every command shares in `session`.

mod args;
mod commands;
mod session;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
