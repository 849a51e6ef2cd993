//! Non-transferable examples (NEs): recode an image inside the null space of one authorized
//! model's first layer so that this model's output does not change while models with any other
//! first layer see a large perturbation. Training-free; see `docs/methods/nes.md`.
//!
//! - [`ne`]: the subspace, the pattern, the strength (true PSNR or the released code's knob),
//!   the leakage ratio and the spectral gap;
//! - [`digits`], [`models`], [`train_digits`]: the digit classifiers it is measured on;
//! - [`attacks`], [`eval`], [`report`]: `protect-eval`;
//! - [`cli`]: `protect`, `protect-train`, `protect-eval`.

pub mod attacks;
pub mod cli;
pub mod digits;
pub mod eval;
pub mod models;
pub mod ne;
pub mod report;
pub mod train_digits;
