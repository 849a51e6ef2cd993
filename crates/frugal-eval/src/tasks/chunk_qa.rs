//! Chunked "frame" QA: the context is N labelled chunks (the text analogue of video frames),
//! each stating one fact ("The color of frame 3 is blue."); the question asks about one chunk
//! and is scored by the log-likelihood rank of the gold answer among the N frames' answers.
//! Every token's chunk is recorded, so structure-aware policies can use it.

use super::{haystack_window, Answer, ChatFrame, Sample, TaskText};
use anyhow::{bail, Result};
use frugal_engine::model::LoadedModel;
use rand::seq::SliceRandom;

/// Frames per sample (chance accuracy is 1 / FRAMES).
pub const FRAMES: usize = 8;
const COLORS: &[&str] = &[
    "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "pink",
    "gray", "gold",
];

pub fn make_sample(
    lm: &LoadedModel,
    text: &TaskText,
    length: usize,
    rng: &mut impl rand::Rng,
) -> Result<Sample> {
    // Answers must be single tokens (with their leading space) for a one-step rank.
    let single: Vec<(&str, u32)> = COLORS
        .iter()
        .filter_map(
            |c| match lm.tokenizer.encode(&format!(" {c}")).ok()?.as_slice() {
                [id] => Some((*c, *id)),
                _ => None,
            },
        )
        .collect();
    if single.len() < FRAMES {
        bail!(
            "chunk-qa needs {FRAMES} single-token color words; this tokenizer has {}",
            single.len()
        );
    }
    let colors: Vec<(&str, u32)> = single.choose_multiple(rng, FRAMES).copied().collect();
    let asked = rng.gen_range(0..FRAMES);
    let frame = ChatFrame::new(
        lm,
        &format!("Read the {FRAMES} frames below. Each frame states its color."),
        &format!("What is the color of frame {}?", asked + 1),
        &format!("The color of frame {} is", asked + 1),
    )?;
    let facts: Vec<Vec<u32>> = colors
        .iter()
        .enumerate()
        .map(|(i, (c, _))| {
            lm.tokenizer.encode(&format!(
                "\nFrame {}: The color of frame {} is {c}. ",
                i + 1,
                i + 1
            ))
        })
        .collect::<Result<_, _>>()?;
    let budget = frame
        .context_budget(length)?
        .saturating_sub(facts.iter().map(Vec::len).sum());
    let per_frame = budget / FRAMES;
    let mut chunks = Vec::new();
    for fact in facts {
        // The fact opens its frame; filler text from the haystack follows.
        let mut chunk = fact;
        chunk.extend(haystack_window(text, per_frame, rng)?);
        chunks.push(chunk);
    }
    let (tokens, structure) = frame.assemble(&chunks);
    Ok(Sample {
        context_end: tokens.len() - frame.suffix.len(),
        tokens,
        structure,
        answer: Answer::Choice {
            candidates: colors.iter().map(|c| c.1).collect(),
            gold: asked,
        },
        depth: None,
        phrasing: None,
    })
}
