//! A thin test binary for the KMM commands (the `frugal` CLI wires the same argument structs as
//! `frugal motion train | eval | generate | bvh-check | tokenizer-check`).

use clap::{Parser, Subcommand};
use frugal_motion::{cli, tokenizer_check};

#[derive(Parser)]
#[command(about = "KMM: key-frame masked bidirectional Mamba for text-to-motion")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Train(cli::TrainArgs),
    Eval(cli::EvalArgs),
    Generate(cli::GenerateArgs),
    BvhCheck(cli::BvhCheckArgs),
    /// Train a tokenizer alone and log codebook use and held-out reconstruction.
    TokenizerCheck(tokenizer_check::TokenizerCheckArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Train(a) => cli::train(a),
        Cmd::Eval(a) => cli::eval(a),
        Cmd::Generate(a) => cli::generate(a),
        Cmd::BvhCheck(a) => cli::bvh_check(a),
        Cmd::TokenizerCheck(a) => tokenizer_check::tokenizer_check(a),
    }
}
