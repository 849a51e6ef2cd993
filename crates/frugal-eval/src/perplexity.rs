//! Perplexity of a token stream with a sliding window.
//!
//! Windows of `context` tokens start every `stride` tokens; each window scores only the tokens
//! no earlier window scored, so every token after the first is scored exactly once and (after
//! the first window) with at least `context - stride` tokens of history. This is the usual
//! sliding-window protocol (as in Hugging Face's perplexity guide).

use candle_core::{DType, Tensor};
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use frugal_engine::{EngineError, Result};
use serde::Serialize;
use std::time::Instant;

/// Rows of logits computed at once (each row is `vocab` floats).
const LOGIT_CHUNK: usize = 256;

#[derive(Clone, Debug, Serialize)]
pub struct PerplexityReport {
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    pub scored_tokens: usize,
    pub windows: usize,
    pub context: usize,
    pub stride: usize,
    /// Tokens run through the model (windows overlap, so more than the stream's length).
    pub processed_tokens: usize,
    pub seconds: f64,
}

impl PerplexityReport {
    pub fn tokens_per_second(&self) -> f64 {
        self.processed_tokens as f64 / self.seconds
    }
}

/// Scores `tokens` with a fresh sequence per window made by `new_sequence`.
pub fn sliding_window_perplexity(
    lm: &LoadedModel,
    tokens: &[u32],
    context: usize,
    stride: usize,
    new_sequence: &dyn Fn() -> Sequence,
    on_window: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityReport> {
    let limit = lm.model.config().context_length;
    if context < 2 || context > limit {
        return Err(EngineError::ContextOverflow {
            tokens: context,
            limit,
        });
    }
    if stride == 0 || stride > context {
        return Err(EngineError::Tokenizer(format!(
            "stride {stride} must be in 1..={context}"
        )));
    }
    if tokens.len() < 2 {
        return Err(EngineError::Tokenizer(
            "perplexity needs at least 2 tokens of text".into(),
        ));
    }
    let starts: Vec<usize> = {
        let mut v = vec![0];
        while v.last().unwrap() + context < tokens.len() {
            v.push(v.last().unwrap() + stride);
        }
        v
    };
    let t0 = Instant::now();
    let (mut nll, mut scored, mut processed, mut scored_until) = (0f64, 0usize, 0usize, 1usize);
    for (w, &start) in starts.iter().enumerate() {
        let end = (start + context).min(tokens.len());
        let window = &tokens[start..end];
        // Row i of the window predicts token start + i + 1; score targets from `scored_until`.
        let first_row = scored_until - 1 - start;
        let mut seq = new_sequence();
        let hidden = lm
            .model
            .forward_hidden(window, &mut seq, LogitRows::From(first_row))?;
        let rows = hidden.dim(0)?;
        for chunk_start in (0..rows).step_by(LOGIT_CHUNK) {
            let n = LOGIT_CHUNK.min(rows - chunk_start);
            let logits = lm.model.logits(&hidden.narrow(0, chunk_start, n)?)?;
            for r in 0..n {
                let target_index = start + first_row + chunk_start + r + 1;
                if target_index >= end {
                    break; // the last row predicts past the window
                }
                let row = logits.get(r)?;
                nll += negative_log_likelihood(&row, tokens[target_index])?;
                scored += 1;
            }
        }
        scored_until = end;
        processed += window.len();
        on_window(w + 1, starts.len());
    }
    let mean_nll = nll / scored as f64;
    Ok(PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        scored_tokens: scored,
        windows: starts.len(),
        context,
        stride,
        processed_tokens: processed,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `logsumexp(logits) - logits[target]`, accumulated in f64.
pub fn negative_log_likelihood(logits: &Tensor, target: u32) -> Result<f64> {
    let v = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    Ok(lse - v[target as usize] as f64)
}
