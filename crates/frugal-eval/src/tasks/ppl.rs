//! Perplexity of held-out speeches (1990 and later) in windows of the given length; only the
//! last quarter of each window is scored, so what a policy does to the earlier three quarters
//! of the context shows in the score.

use super::{Answer, Sample, TaskText};
use anyhow::{bail, Result};
use frugal_engine::structure::{TokenKind, TokenStructure};

pub fn make_sample(text: &TaskText, length: usize, index: usize) -> Result<Sample> {
    let windows = text.held_out.len() / length;
    if windows == 0 {
        bail!(
            "held-out text has {} tokens, fewer than one window of {length}",
            text.held_out.len()
        );
    }
    // Consecutive non-overlapping windows; wraps around if more samples than windows.
    let start = (index % windows) * length;
    let tokens = text.held_out[start..start + length].to_vec();
    let score_from = length - length / 4;
    let mut structure = TokenStructure::default();
    structure.push(TokenKind::Context, 0, score_from);
    structure.push(TokenKind::Question, 0, length - score_from);
    Ok(Sample {
        tokens,
        structure,
        answer: Answer::Perplexity { score_from },
        depth: None,
        context_end: score_from,
        phrasing: None,
    })
}
