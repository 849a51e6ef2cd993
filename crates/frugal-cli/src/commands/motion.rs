//! `frugal motion`: KMM's motion stack — train, generate, evaluate, and the BVH round-trip check
//! — and InfiniMotion's long generation on it (the methods live in `frugal-motion`; this file
//! only routes the subcommands).

use anyhow::Result;
use clap::{Args, Subcommand};
use frugal_motion::{cli, cli_long, tokenizer_check};

#[derive(Args)]
pub struct MotionArgs {
    #[command(subcommand)]
    command: MotionCommand,
}

#[derive(Subcommand)]
enum MotionCommand {
    /// Train the data, tokenizer, evaluator and generator stages of a variant (resumable).
    Train(cli::TrainArgs),
    /// Generate a motion from a sequence of instructions: BVH, picture strip and GIF.
    Generate(cli::GenerateArgs),
    /// Evaluate trained variants with the frozen evaluator (FID, R-precision, MM-Dist, …).
    Eval(cli::EvalArgs),
    /// Round-trip the bundled real BVH clip and reconstruct it with the tokenizer.
    BvhCheck(cli::BvhCheckArgs),
    /// Train the motion tokenizer alone and log codebook use and held-out reconstruction
    /// (the collapse diagnosis and its fix).
    TokenizerCheck(tokenizer_check::TokenizerCheckArgs),
    /// InfiniMotion's comparison: trains and evaluates the memory model and its baselines on
    /// long instruction scripts (per-segment FID, boundary jerk and skating, drift).
    LongEval(cli_long::LongEvalArgs),
    /// Streams an arbitrarily long motion (default 80,000 frames) from a repeating script with
    /// the trained memory model, to a BVH written as it goes, in constant memory.
    Long(cli_long::LongArgs),
}

pub fn run(args: MotionArgs) -> Result<()> {
    match args.command {
        MotionCommand::Train(a) => cli::train(a),
        MotionCommand::Generate(a) => cli::generate(a),
        MotionCommand::Eval(a) => cli::eval(a),
        MotionCommand::BvhCheck(a) => cli::bvh_check(a),
        MotionCommand::TokenizerCheck(a) => tokenizer_check::tokenizer_check(a),
        MotionCommand::LongEval(a) => cli_long::long_eval(a),
        MotionCommand::Long(a) => cli_long::long(a),
    }
}
