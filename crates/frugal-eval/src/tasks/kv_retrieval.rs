//! Multi-key retrieval (RULER-style multi-key needle): several "secret number for the
//! <animal>" facts scattered through the haystack; the question asks for one of them.

use super::{haystack_window, scatter_needles, Answer, ChatFrame, Sample, TaskText, ANSWER_TOKENS};
use anyhow::Result;
use frugal_engine::model::LoadedModel;
use rand::seq::SliceRandom;

/// Keys per sample (one is asked, the others are distractors).
pub const PAIRS: usize = 2;
const KEYS: &[&str] = &[
    "lion", "eagle", "turtle", "wolf", "dolphin", "falcon", "rabbit", "tiger", "horse", "owl",
];

pub fn make_sample(
    lm: &LoadedModel,
    text: &TaskText,
    length: usize,
    rng: &mut impl rand::Rng,
) -> Result<Sample> {
    let keys: Vec<&str> = KEYS.choose_multiple(rng, PAIRS).copied().collect();
    let values: Vec<u32> = (0..PAIRS).map(|_| rng.gen_range(10000..100000)).collect();
    let asked = rng.gen_range(0..PAIRS);
    let frame = ChatFrame::new(
        lm,
        "Read the document. It hides several secret numbers, each for a different animal.",
        &format!(
            "What is the secret number for the {}? Answer with the number only.",
            keys[asked]
        ),
        // The reply's opening is given, so the 5 digits come first (digits are one token each).
        &format!("The secret number for the {} is", keys[asked]),
    )?;
    let needles: Vec<Vec<u32>> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| {
            lm.tokenizer
                .encode(&format!(" The secret number for the {k} is {v}. "))
        })
        .collect::<Result<_, _>>()?;
    let hay_len = frame
        .context_budget(length - ANSWER_TOKENS.min(length))?
        .saturating_sub(needles.iter().map(Vec::len).sum());
    let hay = haystack_window(text, hay_len, rng)?;
    // Needles at sorted random depths, each at a sentence end.
    let chunks = scatter_needles(lm, &hay, needles, rng);
    let (tokens, structure) = frame.assemble(&chunks);
    Ok(Sample {
        context_end: tokens.len() - frame.suffix.len(),
        tokens,
        structure,
        answer: Answer::Digits {
            expected: values[asked].to_string(),
            max_new_tokens: ANSWER_TOKENS,
        },
        depth: None,
        phrasing: None,
    })
}
