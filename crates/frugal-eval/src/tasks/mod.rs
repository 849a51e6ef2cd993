//! The harness's tasks. Each generates [`Sample`]s deterministically from a seed, for a given
//! total prompt length in tokens, so every policy in a run sees the same inputs.

pub mod chunk_qa;
pub mod kv_retrieval;
pub mod passkey;
pub mod ppl;
pub mod user;

use anyhow::{bail, Result};
use frugal_engine::model::chat_template::ChatMessage;
use frugal_engine::model::LoadedModel;
use frugal_engine::structure::{TokenKind, TokenStructure};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    Ppl,
    Passkey,
    KvRetrieval,
    ChunkQa,
    /// Passkey in the user's format (see `user`).
    PasskeyUser,
    KvRetrievalUser,
    ChunkQaUser,
    /// The user-format passkey task over its whole pool of six question and six needle
    /// phrasings (for choosing the three of each in use).
    PasskeyUserPool,
    KvRetrievalUserPool,
}

impl TaskKind {
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Ppl => "ppl",
            TaskKind::Passkey => "passkey",
            TaskKind::KvRetrieval => "kv-retrieval",
            TaskKind::ChunkQa => "chunk-qa",
            TaskKind::PasskeyUser => "passkey-user",
            TaskKind::KvRetrievalUser => "kv-retrieval-user",
            TaskKind::ChunkQaUser => "chunk-qa-user",
            TaskKind::PasskeyUserPool => "passkey-user-pool",
            TaskKind::KvRetrievalUserPool => "kv-retrieval-user-pool",
        }
    }

    pub const ALL: [TaskKind; 9] = [
        TaskKind::Ppl,
        TaskKind::Passkey,
        TaskKind::KvRetrieval,
        TaskKind::ChunkQa,
        TaskKind::PasskeyUser,
        TaskKind::KvRetrievalUser,
        TaskKind::ChunkQaUser,
        TaskKind::PasskeyUserPool,
        TaskKind::KvRetrievalUserPool,
    ];

    /// The task of this name, or an error listing them all.
    pub fn from_name(s: &str) -> Result<TaskKind, String> {
        TaskKind::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = TaskKind::ALL.iter().map(|t| t.name()).collect();
                format!("unknown task `{s}` (tasks: {})", names.join(", "))
            })
    }

    /// The prompt format: `user` (chat template, question last, the model writes its whole
    /// answer), `forced` (the reply's opening is written for the model, or the answer is ranked
    /// by likelihood), or `-` (perplexity).
    pub fn format(&self) -> &'static str {
        match self {
            TaskKind::Ppl => "-",
            TaskKind::Passkey | TaskKind::KvRetrieval | TaskKind::ChunkQa => "forced",
            _ => "user",
        }
    }

    pub fn metric(&self) -> &'static str {
        match self {
            TaskKind::Ppl => "perplexity",
            _ => "accuracy",
        }
    }
}

/// Tokens generated for a digits answer: five digits, then a token or two of slack. Prompts
/// of generating tasks are this much shorter than the length asked for, so prompt and answer
/// fit in the context window (a task "at 8192" uses the whole 8192-token window).
pub const ANSWER_TOKENS: usize = 8;

/// How a sample is scored.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Greedy-generate up to `max_new_tokens`; correct when the first run of digits in the
    /// output equals `expected`.
    Digits {
        expected: String,
        max_new_tokens: usize,
    },
    /// The next token after the prompt; correct when `candidates[gold]` has the highest logit
    /// among the candidates (log-likelihood rank 1).
    Choice { candidates: Vec<u32>, gold: usize },
    /// Negative log-likelihood of tokens `score_from..` (each predicted from all before it).
    Perplexity { score_from: usize },
    /// Greedy-generate up to `max_new_tokens` (the whole answer); correct when the output
    /// contains `expected` (`user::answer_contains`).
    Contains {
        expected: String,
        max_new_tokens: usize,
    },
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub tokens: Vec<u32>,
    pub structure: TokenStructure,
    pub answer: Answer,
    /// Where the needle sits, as a fraction of the context (passkey), for heat maps.
    pub depth: Option<f64>,
    /// Where the question begins: `tokens[..context_end]` is what a question-agnostic run
    /// prefills (and lets the policy compress) before the question arrives.
    pub context_end: usize,
    /// (question, needle) phrasing of the user-format tasks: indices into the task's pools
    /// (`user::PASSKEY_QUESTIONS` and the like).
    pub phrasing: Option<(usize, usize)>,
}

/// Text every task draws from: tokenised haystack (train split) and held-out stream.
pub struct TaskText {
    pub haystack: Vec<u32>,
    pub held_out: Vec<u32>,
}

/// A chat-formatted prompt around a context: `prefix` (template + instructions) and `suffix`
/// (question + assistant header + optional forced answer start), tokenised separately so the
/// context can be assembled at token level to an exact length.
pub struct ChatFrame {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
}

impl ChatFrame {
    /// `intro` opens the user turn, `question` closes it, `answer_start` begins the
    /// assistant's reply (forced), e.g. "The color of frame 3 is".
    pub fn new(lm: &LoadedModel, intro: &str, question: &str, answer_start: &str) -> Result<Self> {
        const MARK: &str = "\u{1}CONTEXT\u{1}";
        let user = format!("{intro}\n\n{MARK}\n\n{question}");
        let text = lm.chat_template.render(
            &[ChatMessage {
                role: "user".into(),
                content: user,
            }],
            true,
        )?;
        let Some((before, after)) = text.split_once(MARK) else {
            bail!("chat template dropped the user message")
        };
        Ok(ChatFrame {
            prefix: lm.tokenizer.encode(before)?,
            suffix: lm.tokenizer.encode(&format!("{after}{answer_start}"))?,
        })
    }

    /// The user's format: the user turn is the context, a blank line, then `question`; the
    /// assistant's reply is left entirely to the model.
    pub fn question_last(lm: &LoadedModel, question: &str) -> Result<Self> {
        const MARK: &str = "\u{1}CONTEXT\u{1}";
        let text = lm.chat_template.render(
            &[ChatMessage {
                role: "user".into(),
                content: format!("{MARK}\n\n{question}"),
            }],
            true,
        )?;
        let Some((before, after)) = text.split_once(MARK) else {
            bail!("chat template dropped the user message")
        };
        Ok(ChatFrame {
            prefix: lm.tokenizer.encode(before)?,
            suffix: lm.tokenizer.encode(after)?,
        })
    }

    /// Room left for context in a prompt of `length` tokens.
    pub fn context_budget(&self, length: usize) -> Result<usize> {
        let fixed = self.prefix.len() + self.suffix.len();
        if length < fixed + 64 {
            bail!(
                "length {length} is too short: the task's prompt frame alone takes {fixed} tokens"
            );
        }
        Ok(length - fixed)
    }

    /// prefix + context chunks + suffix, with the structure recorded.
    pub fn assemble(&self, chunks: &[Vec<u32>]) -> (Vec<u32>, TokenStructure) {
        let mut tokens = self.prefix.clone();
        let mut s = TokenStructure::default();
        s.push(TokenKind::Prefix, 0, self.prefix.len());
        for (i, c) in chunks.iter().enumerate() {
            tokens.extend_from_slice(c);
            s.push(TokenKind::Context, i as u32, c.len());
        }
        tokens.extend_from_slice(&self.suffix);
        s.push(TokenKind::Question, 0, self.suffix.len());
        (tokens, s)
    }
}

/// A window of `n` haystack tokens starting at a seeded offset.
pub fn haystack_window(text: &TaskText, n: usize, rng: &mut impl rand::Rng) -> Result<Vec<u32>> {
    if text.haystack.len() < n + 1 {
        bail!(
            "the haystack has {} tokens, {n} needed",
            text.haystack.len()
        );
    }
    let start = rng.gen_range(0..text.haystack.len() - n);
    Ok(text.haystack[start..start + n].to_vec())
}

/// Index in `tokens` near `target` just after a sentence end, so insertions do not split
/// words (searches ±32 tokens; falls back to `target`).
pub fn sentence_boundary(lm: &LoadedModel, tokens: &[u32], target: usize) -> usize {
    let ends_sentence = |i: usize| {
        i > 0
            && lm
                .tokenizer
                .id_to_token(tokens[i - 1])
                .is_some_and(|t| t.ends_with('.'))
    };
    (0..=32usize)
        .flat_map(|d| [target.saturating_sub(d), target + d])
        .find(|&i| i <= tokens.len() && ends_sentence(i))
        .unwrap_or(target.min(tokens.len()))
}

/// The haystack cut into chunks with one needle inserted at each of `needles.len()` random
/// depths (sorted, each moved to a sentence end), in order: hay, needle, hay, …, hay.
pub fn scatter_needles(
    lm: &LoadedModel,
    hay: &[u32],
    needles: Vec<Vec<u32>>,
    rng: &mut impl rand::Rng,
) -> Vec<Vec<u32>> {
    let mut cuts: Vec<usize> = (0..needles.len())
        .map(|_| rng.gen_range(0..=hay.len()))
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(2 * needles.len() + 1);
    let mut prev = 0;
    for (cut, needle) in cuts.iter().zip(needles) {
        let at = sentence_boundary(lm, hay, *cut).max(prev);
        chunks.push(hay[prev..at].to_vec());
        chunks.push(needle);
        prev = at;
    }
    chunks.push(hay[prev..].to_vec());
    chunks
}

/// Generates `n` samples of `task` at `length` tokens.
pub fn generate_samples(
    task: TaskKind,
    lm: &LoadedModel,
    text: &TaskText,
    length: usize,
    n: usize,
    seed: u64,
    depths: &[f64],
) -> Result<Vec<Sample>> {
    use rand::SeedableRng;
    // One stream per (task, length): adding a task or length leaves the others' inputs alone.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (length as u64) << 20 ^ task as u64);
    (0..n)
        .map(|i| match task {
            TaskKind::Ppl => ppl::make_sample(text, length, i),
            TaskKind::Passkey => {
                passkey::make_sample(lm, text, length, depths[i % depths.len()], &mut rng)
            }
            TaskKind::KvRetrieval => kv_retrieval::make_sample(lm, text, length, &mut rng),
            TaskKind::ChunkQa => chunk_qa::make_sample(lm, text, length, &mut rng),
            TaskKind::PasskeyUser | TaskKind::PasskeyUserPool => {
                let phrasings = match task {
                    TaskKind::PasskeyUserPool => user::Phrasings::Pool,
                    _ => user::Phrasings::InUse(user::PASSKEY_IN_USE),
                };
                let depth = depths[i % depths.len()];
                user::passkey(lm, text, length, depth, i, phrasings, &mut rng)
            }
            TaskKind::KvRetrievalUser => {
                let phrasings = user::Phrasings::InUse(user::KV_IN_USE);
                user::kv_retrieval(lm, text, length, i, phrasings, &mut rng)
            }
            TaskKind::KvRetrievalUserPool => {
                user::kv_retrieval(lm, text, length, i, user::Phrasings::Pool, &mut rng)
            }
            TaskKind::ChunkQaUser => user::chunk_qa(lm, text, length, i, &mut rng),
        })
        .collect()
}
