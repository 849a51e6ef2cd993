//! One file per command: its flags (`…Args`) and its `run`.

pub mod bench;
pub mod chat;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod knockout;
pub mod motion;
pub mod policies;
pub mod ppl;
pub mod probe;
pub mod protect;
pub mod seg;
pub mod zpressor;

use crate::args::{Cli, Command};
use crate::session::Session;
use anyhow::{bail, Result};

pub fn run(cli: Cli) -> Result<()> {
    let on_device_path = matches!(
        cli.command,
        Command::Generate(_)
            | Command::Chat(_)
            | Command::Ppl(_)
            | Command::Bench(_)
            | Command::Fetch(_)
            | Command::Policies(_)
    );
    if cli.global.device != "cpu" && !on_device_path {
        bail!(
            "--device {}: this command runs on the CPU only for now (generate, chat, ppl and bench run on the device path; ZPressor's bench has its own flag: frugal zpressor bench --device cuda)",
            cli.global.device
        );
    }
    if let Command::Serve(a) = &cli.command {
        // Before the model loads and the thread pools start (see the function).
        frugal_server::configure_allocator(a)?;
    }
    let session = Session::new(cli.global)?;
    match cli.command {
        Command::Fetch(a) => fetch::run(&a),
        Command::Policies(a) => policies::run(&a),
        Command::Generate(a) => generate::run(&session, &a),
        Command::Chat(a) => chat::run(&session, &a),
        Command::Ppl(a) => ppl::run(&session, &a),
        Command::Eval(a) => eval::run(&session, &a),
        Command::Probe(a) => probe::run(&session, &a),
        Command::Knockout(a) => knockout::run(&session, &a),
        Command::Bench(a) => bench::run(&session, &a),
        Command::Serve(a) => frugal_server::serve(session.load_model()?, &a),
        Command::Zpressor(a) => zpressor::run(a),
        Command::Motion(a) => motion::run(a),
        Command::Seg(a) => seg::run(a),
        Command::Protect(a) => protect::run_protect(&a),
        Command::ProtectTrain(a) => protect::run_train(&a),
        Command::ProtectEval(a) => protect::run_eval(&a),
    }
}
