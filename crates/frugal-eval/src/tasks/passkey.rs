//! Passkey retrieval: a 5-digit number hidden at a chosen depth of a haystack of speeches;
//! the model must repeat it (exact match).

use super::{
    haystack_window, sentence_boundary, Answer, ChatFrame, Sample, TaskText, ANSWER_TOKENS,
};
use anyhow::Result;
use frugal_engine::model::LoadedModel;

pub fn make_sample(
    lm: &LoadedModel,
    text: &TaskText,
    length: usize,
    depth: f64,
    rng: &mut impl rand::Rng,
) -> Result<Sample> {
    let key: u32 = rng.gen_range(10000..100000);
    let frame = ChatFrame::new(
        lm,
        "Read the document and find the pass key.",
        "What is the pass key? Answer with the number only.",
        // The reply's opening is given, so the 5 digits come first (digits are one token each).
        "The pass key is",
    )?;
    let needle = lm.tokenizer.encode(&format!(
        " The pass key is {key}. Remember it. {key} is the pass key. "
    ))?;
    let hay_len = frame
        .context_budget(length - ANSWER_TOKENS.min(length))?
        .saturating_sub(needle.len());
    let mut hay = haystack_window(text, hay_len, rng)?;
    let at = sentence_boundary(lm, &hay, (depth * hay_len as f64).round() as usize);
    let tail = hay.split_off(at);
    let (tokens, structure) = frame.assemble(&[hay, needle, tail]);
    Ok(Sample {
        context_end: tokens.len() - frame.suffix.len(),
        tokens,
        structure,
        answer: Answer::Digits {
            expected: key.to_string(),
            max_new_tokens: ANSWER_TOKENS,
        },
        depth: Some(depth),
        phrasing: None,
    })
}
