//! Structured samples from a user's JSON file of segments (or tokens + structure).

use super::*;

/// A user's structured input file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    pub samples: Vec<InputSample>,
}

/// One sample: either `segments` of text, or pre-tokenised `tokens` with a `structure`
/// (the engine's [`TokenStructure`], segments of `{kind, chunk, len}`); `candidates` are
/// answer strings (each scored by its first token), `gold` the index of the right one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSample {
    #[serde(default)]
    pub segments: Vec<TextSegment>,
    #[serde(default)]
    pub tokens: Vec<u32>,
    #[serde(default)]
    pub structure: Option<TokenStructure>,
    pub candidates: Vec<String>,
    pub gold: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSegment {
    pub kind: TokenKind,
    #[serde(default)]
    pub chunk: u32,
    pub text: String,
}

/// Reads and checks a structured input file into samples.
pub fn load_input(lm: &LoadedModel, path: &FsPath) -> Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: InputFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a knockout input file (see `frugal knockout --help`)",
            path.display()
        )
    })?;
    if file.samples.is_empty() {
        bail!("{} has no samples", path.display());
    }
    let limit = lm.model.config().context_length;
    file.samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let at = || format!("{} sample {i}", path.display());
            let (tokens, structure) = match (&s.segments[..], &s.structure) {
                ([], Some(st)) => {
                    if st.len() != s.tokens.len() {
                        bail!("{}: structure covers {} tokens, `tokens` has {}", at(), st.len(), s.tokens.len());
                    }
                    (s.tokens.clone(), st.clone())
                }
                (segs, None) if !segs.is_empty() && s.tokens.is_empty() => {
                    let mut tokens = Vec::new();
                    let mut st = TokenStructure::default();
                    for seg in segs {
                        let ids = lm.tokenizer.encode(&seg.text)?;
                        st.push(seg.kind, seg.chunk, ids.len());
                        tokens.extend(ids);
                    }
                    (tokens, st)
                }
                _ => bail!("{}: give either `segments` (text) or `tokens` with `structure`", at()),
            };
            if tokens.is_empty() || tokens.len() > limit {
                bail!("{}: {} tokens (must be 1..={limit})", at(), tokens.len());
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= lm.model.config().vocab_size) {
                bail!("{}: token id {bad} is outside the vocabulary", at());
            }
            if structure.segments.last().map(|g| g.kind) != Some(TokenKind::Question) {
                bail!("{}: the input must end with a `question` segment (the answer is read after it)", at());
            }
            if s.candidates.len() < 2 || s.gold >= s.candidates.len() {
                bail!("{}: need at least 2 candidates and `gold` < {}", at(), s.candidates.len());
            }
            let mut candidates = Vec::new();
            for c in &s.candidates {
                let ids = lm.tokenizer.encode(c)?;
                let Some(&first) = ids.first() else { bail!("{}: candidate {c:?} has no tokens", at()) };
                if candidates.contains(&first) {
                    bail!("{}: two candidates start with the same token ({c:?})", at());
                }
                candidates.push(first);
            }
            Ok(Sample { context_end: tokens.len(), tokens, structure, answer: Answer::Choice { candidates, gold: s.gold }, depth: None, phrasing: None })
        })
        .collect()
}
