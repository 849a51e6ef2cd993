//! `frugal protect`, `protect-train`, `protect-eval`: non-transferable examples (the method
//! lives in `frugal-nes`; this file only routes the commands).

pub use frugal_nes::cli::{
    run_eval, run_protect, run_train, EvalArgs as ProtectEvalArgs, ProtectArgs,
    TrainArgs as ProtectTrainArgs,
};
