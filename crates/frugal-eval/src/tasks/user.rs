//! The retrieval tasks in the format a user sends: a chat prompt whose user turn is the document
//! followed by the question (nothing of the answer is written for the model), a greedy answer of
//! at most [`USER_ANSWER_TOKENS`] tokens, and success when the answer contains the key. Each task
//! has three phrasings of the question and three of the needle (sample `i` uses question
//! `⌊i/3⌋ mod 3` and needle `⌊i/9⌋ mod 3`, while its depth cycles with `i mod 3`, so every 27
//! consecutive samples hold each (depth, question, needle) once and no phrasing is confounded
//! with a depth), reported per phrasing, so no policy can fit one wording.
//! Nothing before the document names what will be asked: a question-agnostic policy that
//! compresses the document before the question arrives sees no hint of it.

use super::{
    haystack_window, scatter_needles, sentence_boundary, Answer, ChatFrame, Sample, TaskText,
};
use anyhow::{bail, Result};
use frugal_engine::model::LoadedModel;
use rand::seq::SliceRandom;

/// Tokens the model may write for its answer.
pub const USER_ANSWER_TOKENS: usize = 16;

/// Question phrasings of the passkey task: the pool the three in use are chosen from (see
/// [`PASSKEY_IN_USE`]); the `*-user-pool` tasks cycle through all of them.
pub const PASSKEY_QUESTIONS: [&str; 6] = [
    "What is the pass key? Answer with the number only.",
    "Which number is the pass key mentioned in the text above?",
    "Tell me the pass key hidden in the text.",
    "According to the text, what is the pass key?",
    "Find the pass key in the text above and write it down.",
    "What pass key does the text give? Reply with just the number.",
];

/// Needle phrasings of the passkey task (`{key}` is replaced); a pool as for the questions.
pub const PASSKEY_NEEDLES: [&str; 6] = [
    " The pass key is {key}. Remember it. {key} is the pass key. ",
    " Important: the secret pass key is {key}. ",
    " (Note to the reader: your pass key is {key}; keep it safe.) ",
    " By the way, the pass key is {key}. ",
    " Please remember this pass key: {key}. ",
    " The code you will need later is the pass key {key}. ",
];

/// Question phrasings of kv-retrieval (`{name}` is the animal asked about); a pool.
pub const KV_QUESTIONS: [&str; 6] = [
    "What is the secret number for the {name}? Answer with the number only.",
    "Which number belongs to the {name} in the text above?",
    "Tell me the secret number of the {name}.",
    "According to the text, what is the {name}'s secret number?",
    "Find the secret number of the {name} in the text above.",
    "What secret number does the text give for the {name}? Reply with just the number.",
];

/// Needle phrasings of kv-retrieval; a pool.
pub const KV_NEEDLES: [&str; 6] = [
    " The secret number for the {name} is {key}. ",
    " Remember: the {name}'s secret number is {key}. ",
    " ({name}: secret number {key}.) ",
    " The {name} has the secret number {key}. ",
    " Secret number of the {name}: {key}. ",
    " Note that the {name}'s secret number is {key}. ",
];

/// The three questions and three needles (indices into a task's pools) that the user-format
/// tasks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InUse {
    pub questions: [usize; 3],
    pub needles: [usize; 3],
}

/// The passkey task's phrasings in use: the three questions and three needles the dense model
/// answered most often over the whole pool (`passkey-user-pool` at 1024, 2048 and 4096 tokens,
/// 36 prompts each, seed 0, the selection set, question-agnostic;
/// `scripts/compression/phrasing_selection.py`). Question 2 ("Tell me the pass key hidden in
/// the text.") is out: the dense model answered it once in 18 (0 in 27 before), reading it as
/// asking for a phrase; the `*-pool` tasks keep it.
pub const PASSKEY_IN_USE: InUse = InUse {
    questions: [0, 1, 5],
    needles: [0, 1, 4],
};

/// kv-retrieval's phrasings in use, chosen the same way (`kv-retrieval-user-pool`).
pub const KV_IN_USE: InUse = InUse {
    questions: [0, 3, 4],
    needles: [0, 4, 5],
};

/// chunk-qa has three of each and uses them all.
pub const FRAME_IN_USE: InUse = InUse {
    questions: [0, 1, 2],
    needles: [0, 1, 2],
};

/// Which phrasings a task's samples draw on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phrasings {
    /// The three of each in use, crossed with the depths (see [`phrasing`]).
    InUse(InUse),
    /// The whole pool of six of each, for choosing the ones in use (see [`pool_phrasing`]).
    Pool,
}

impl Phrasings {
    /// (question, needle) pool indices of sample `i`.
    pub fn of(self, i: usize) -> (usize, usize) {
        match self {
            Phrasings::InUse(u) => {
                let (q, n) = phrasing(i);
                (u.questions[q], u.needles[n])
            }
            Phrasings::Pool => pool_phrasing(i),
        }
    }
}

/// Pool sampling: sample `i` is in block `j = ⌊i/3⌋` (its depth still cycles with `i mod 3`),
/// question `j mod 6`, needle `(j + ⌊j/6⌋) mod 6`, so 36 consecutive samples give each
/// question and each needle six times, every question with two needles, at every depth.
pub fn pool_phrasing(i: usize) -> (usize, usize) {
    let j = i / 3;
    (j % 6, (j + j / 6) % 6)
}

/// Question phrasings of chunk-qa (`{frame}` is the frame asked about).
pub const FRAME_QUESTIONS: [&str; 3] = [
    "What is the color of frame {frame}? Answer with one word.",
    "Which color does frame {frame} have?",
    "Tell me the color of frame {frame}.",
];

/// Fact phrasings of chunk-qa (open each frame).
pub const FRAME_FACTS: [&str; 3] = [
    "\nFrame {frame}: The color of frame {frame} is {key}. ",
    "\nFrame {frame}: this frame is colored {key}. ",
    "\nFrame {frame} (color: {key}) ",
];

const ANIMALS: &[&str] = &[
    "lion", "eagle", "turtle", "wolf", "dolphin", "falcon", "rabbit", "tiger", "horse", "owl",
];
const COLORS: &[&str] = &[
    "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "pink",
    "gray", "gold",
];

/// (question, needle) position among the three in use of sample `i` (its depth is `i mod 3`:
/// see the module doc).
pub fn phrasing(i: usize) -> (usize, usize) {
    ((i / 3) % 3, (i / 9) % 3)
}

fn fill(template: &str, name: &str, key: &str, frame: usize) -> String {
    template
        .replace("{name}", name)
        .replace("{key}", key)
        .replace("{frame}", &frame.to_string())
}

fn finish(
    frame: &ChatFrame,
    chunks: &[Vec<u32>],
    expected: String,
    depth: Option<f64>,
    phrasing: (usize, usize),
) -> Sample {
    let (tokens, structure) = frame.assemble(chunks);
    Sample {
        context_end: tokens.len() - frame.suffix.len(),
        tokens,
        structure,
        answer: Answer::Contains {
            expected,
            max_new_tokens: USER_ANSWER_TOKENS,
        },
        depth,
        phrasing: Some(phrasing),
    }
}

pub fn passkey(
    lm: &LoadedModel,
    text: &TaskText,
    length: usize,
    depth: f64,
    i: usize,
    phrasings: Phrasings,
    rng: &mut impl rand::Rng,
) -> Result<Sample> {
    let (qi, ni) = phrasings.of(i);
    let key = rng.gen_range(10000..100000u32).to_string();
    let frame = ChatFrame::question_last(lm, PASSKEY_QUESTIONS[qi])?;
    let needle = lm
        .tokenizer
        .encode(&fill(PASSKEY_NEEDLES[ni], "", &key, 0))?;
    let hay_len = frame
        .context_budget(length.saturating_sub(USER_ANSWER_TOKENS))?
        .saturating_sub(needle.len());
    let mut hay = haystack_window(text, hay_len, rng)?;
    let at = sentence_boundary(lm, &hay, (depth * hay_len as f64).round() as usize);
    let tail = hay.split_off(at);
    Ok(finish(
        &frame,
        &[hay, needle, tail],
        key,
        Some(depth),
        (qi, ni),
    ))
}

pub fn kv_retrieval(
    lm: &LoadedModel,
    text: &TaskText,
    length: usize,
    i: usize,
    phrasings: Phrasings,
    rng: &mut impl rand::Rng,
) -> Result<Sample> {
    let (qi, ni) = phrasings.of(i);
    let pairs = super::kv_retrieval::PAIRS;
    let names: Vec<&str> = ANIMALS.choose_multiple(rng, pairs).copied().collect();
    let values: Vec<String> = (0..pairs)
        .map(|_| rng.gen_range(10000..100000u32).to_string())
        .collect();
    let asked = rng.gen_range(0..pairs);
    let frame = ChatFrame::question_last(lm, &fill(KV_QUESTIONS[qi], names[asked], "", 0))?;
    let needles: Vec<Vec<u32>> = names
        .iter()
        .zip(&values)
        .map(|(n, v)| lm.tokenizer.encode(&fill(KV_NEEDLES[ni], n, v, 0)))
        .collect::<Result<_, _>>()?;
    let hay_len = frame
        .context_budget(length.saturating_sub(USER_ANSWER_TOKENS))?
        .saturating_sub(needles.iter().map(Vec::len).sum());
    let hay = haystack_window(text, hay_len, rng)?;
    // Needles at sorted random depths, each at a sentence end.
    let chunks = scatter_needles(lm, &hay, needles, rng);
    Ok(finish(
        &frame,
        &chunks,
        values[asked].clone(),
        None,
        (qi, ni),
    ))
}

pub fn chunk_qa(
    lm: &LoadedModel,
    text: &TaskText,
    length: usize,
    i: usize,
    rng: &mut impl rand::Rng,
) -> Result<Sample> {
    let (qi, ni) = Phrasings::InUse(FRAME_IN_USE).of(i);
    let frames = super::chunk_qa::FRAMES;
    if COLORS.len() < frames {
        bail!("chunk-qa needs {frames} colors");
    }
    let colors: Vec<&str> = COLORS.choose_multiple(rng, frames).copied().collect();
    let asked = rng.gen_range(0..frames);
    let frame = ChatFrame::question_last(lm, &fill(FRAME_QUESTIONS[qi], "", "", asked + 1))?;
    let facts: Vec<Vec<u32>> = colors
        .iter()
        .enumerate()
        .map(|(f, c)| lm.tokenizer.encode(&fill(FRAME_FACTS[ni], "", c, f + 1)))
        .collect::<Result<_, _>>()?;
    let budget = frame
        .context_budget(length.saturating_sub(USER_ANSWER_TOKENS))?
        .saturating_sub(facts.iter().map(Vec::len).sum());
    let per_frame = budget / frames;
    let mut chunks = Vec::new();
    for fact in facts {
        let mut chunk = fact;
        chunk.extend(haystack_window(text, per_frame, rng)?);
        chunks.push(chunk);
    }
    Ok(finish(
        &frame,
        &chunks,
        colors[asked].to_string(),
        None,
        (qi, ni),
    ))
}

/// Whether a generated answer contains the key (case-insensitive; a number must not be part of
/// a longer number, a word not part of a longer word).
pub fn answer_contains(answer: &str, key: &str) -> bool {
    let a = answer.to_lowercase();
    let k = key.to_lowercase();
    let digits = k.chars().all(|c| c.is_ascii_digit());
    let boundary = |c: Option<char>| match c {
        None => true,
        Some(c) if digits => !c.is_ascii_digit(),
        Some(c) => !c.is_alphanumeric(),
    };
    a.match_indices(&k).any(|(at, _)| {
        boundary(a[..at].chars().next_back()) && boundary(a[at + k.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_needs_the_whole_key() {
        assert!(answer_contains("The pass key is 71432.", "71432"));
        assert!(!answer_contains("The pass key is 714320.", "71432"));
        assert!(!answer_contains("22", "71432"));
        assert!(answer_contains("Frame 3 is Blue.", "blue"));
        assert!(!answer_contains("bluegreen", "blue"));
    }

    /// With the default three depths (sample `i` at depth `i mod 3`), every 27 consecutive
    /// samples hold each (depth, question, needle) exactly once: no phrasing rides on a depth.
    /// 36 consecutive pool samples give each question and each needle six times, each at
    /// every depth twice, and every question with two different needles.
    #[test]
    fn the_pool_is_covered_evenly() {
        let mut q = [[0; 3]; 6];
        let mut n = [[0; 3]; 6];
        let mut pairs = std::collections::HashSet::new();
        for i in 0..36 {
            let (a, b) = pool_phrasing(i);
            q[a][i % 3] += 1;
            n[b][i % 3] += 1;
            pairs.insert((a, b));
        }
        assert!(q.iter().chain(&n).all(|d| d == &[2, 2, 2]), "{q:?} {n:?}");
        assert_eq!(pairs.len(), 12);
        for a in 0..6 {
            assert_eq!(pairs.iter().filter(|p| p.0 == a).count(), 2);
        }
    }

    #[test]
    fn phrasings_and_depths_cross_fully() {
        for start in [0, 27, 54] {
            let seen: std::collections::HashSet<(usize, usize, usize)> = (start..start + 27)
                .map(|i| {
                    let (q, n) = phrasing(i);
                    (i % 3, q, n)
                })
                .collect();
            assert_eq!(seen.len(), 27);
        }
    }
}
