//! What each token of an input is: prefix (instructions), context (chunk / "frame" `i`), or
//! question. Produced by the harness's tasks or a user's JSON file; read by attention
//! policies that act on structure (knockouts, OmniSparse's chunk-aware selection).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Prefix,
    Context,
    Question,
}

/// A run of `len` consecutive tokens of one kind (and, for context, one chunk).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub kind: TokenKind,
    #[serde(default)]
    pub chunk: u32,
    pub len: usize,
}

/// The segments of a whole input, in order, with per-position lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStructure {
    pub segments: Vec<Segment>,
}

impl TokenStructure {
    /// Appends a run, merging it into the previous one when kind and chunk match.
    pub fn push(&mut self, kind: TokenKind, chunk: u32, len: usize) {
        if len == 0 {
            return;
        }
        match self.segments.last_mut() {
            Some(last) if last.kind == kind && last.chunk == chunk => last.len += len,
            _ => self.segments.push(Segment { kind, chunk, len }),
        }
    }

    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Kind and chunk of every position, expanded (for policies that look up many positions).
    pub fn per_token(&self) -> Vec<(TokenKind, u32)> {
        self.segments
            .iter()
            .flat_map(|s| std::iter::repeat_n((s.kind, s.chunk), s.len))
            .collect()
    }
}
