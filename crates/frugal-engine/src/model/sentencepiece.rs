//! SentencePiece-style BPE vocabularies from GGUF metadata (`tokenizer.ggml.model = llama`):
//! Gemma's 262k vocabulary, and the llama-2-style ones.
//!
//! The file holds tokens, scores and token types but no merges. SentencePiece's BPE merges, at
//! each step, the adjacent pair whose concatenation is the best-ranked vocabulary entry, and
//! falls back to `<0xXX>` byte tokens for characters the vocabulary lacks. We rebuild that as
//! a Hugging Face BPE: every split of a token into two vocabulary entries becomes a merge,
//! ranked by the token's rank (the same rule transformers uses for these files, so its
//! tokenizer is an independent check of ours), with byte fallback on.
//!
//! * Rank: for Gemma (`general.architecture` starting with `gemma`) a token's place in the file,
//!   because Gemma's scores do not follow its merge order; otherwise its score (higher first).
//! * Among the splits of one token: longer left piece first.
//! * Text: spaces become `▁` (U+2581); a `▁` is put in front of the text only where the file
//!   says `tokenizer.ggml.add_space_prefix = true` (default true for non-Gemma files, as
//!   llama.cpp assumes; Gemma files say false).
//! * Tokens made only of two or more spaces are spelled with `▁` instead (Gemma stores its
//!   whitespace-run tokens with real spaces, while the text reaching BPE has `▁`).
//! * Control tokens (type 3) are special added tokens; user-defined tokens (type 4) are added
//!   tokens matched whole in the raw text, as llama.cpp does.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{EngineError, Result};

const SPACE: char = '\u{2581}';
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn err(path: &Path, what: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(format!("{}: {what}", path.display()))
}

/// The BPE merges a vocabulary implies: every split of token `t` into two vocabulary entries,
/// ordered by `rank[t]` (lower first), then by longer left piece.
pub fn merges_from_vocab(tokens: &[String], rank: &[f64]) -> Merges {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut found: Vec<(f64, usize, usize, usize)> = Vec::new(); // (rank, -, left len, token)
    for (i, t) in tokens.iter().enumerate() {
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if index.contains_key(l) && index.contains_key(r) {
                found.push((rank[i], usize::MAX - l.chars().count(), cut, i));
            }
        }
    }
    found.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    found
        .into_iter()
        .map(|(_, _, cut, i)| {
            let (l, r) = tokens[i].split_at(cut);
            (l.to_string(), r.to_string())
        })
        .collect()
}

/// The wrapped tokenizer for a `tokenizer.ggml.model = llama` file (see the module doc).
pub fn from_gguf_metadata(
    md: &HashMap<String, Value>,
    raw_tokens: &[&str],
    path: &Path,
) -> Result<Tokenizer> {
    let gemma =
        matches!(md.get("general.architecture"), Some(Value::String(a)) if a.starts_with("gemma"));
    let tokens: Vec<String> = raw_tokens
        .iter()
        .map(|t| {
            if t.chars().count() >= 2 && t.chars().all(|c| c == ' ') {
                SPACE.to_string().repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(err(path, "`tokenizer.ggml.tokens` has duplicate entries"));
    }
    let rank: Vec<f64> = if gemma {
        (0..tokens.len()).map(|i| i as f64).collect()
    } else {
        let scores = match md.get("tokenizer.ggml.scores") {
            Some(Value::Array(a)) if a.len() == tokens.len() => a
                .iter()
                .map(|v| v.to_f32().map(|x| -(x as f64)).map_err(|_| ()))
                .collect::<std::result::Result<Vec<f64>, ()>>()
                .map_err(|_| err(path, "`tokenizer.ggml.scores` holds a non-f32 entry"))?,
            _ => {
                return Err(EngineError::MissingTokenizer {
                    path: path.to_path_buf(),
                    reason: "metadata field `tokenizer.ggml.scores` is absent or the wrong length"
                        .into(),
                })
            }
        };
        scores
    };
    let merges = merges_from_vocab(&tokens, &rank);
    let unk = match md.get("tokenizer.ggml.unknown_token_id") {
        Some(v) => v
            .to_u32()
            .ok()
            .and_then(|i| tokens.get(i as usize))
            .cloned(),
        None => None,
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u);
    }
    let bpe = builder
        .build()
        .map_err(|e| err(path, format!("building BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);

    let prefix = match md.get("tokenizer.ggml.add_space_prefix") {
        Some(Value::Bool(b)) => *b,
        _ => !gemma,
    };
    let replace: NormalizerWrapper = Replace::new(" ", SPACE.to_string())
        .map_err(|e| err(path, e))?
        .into();
    let normalizer: NormalizerWrapper = if prefix {
        NormalizerSequence::new(vec![Prepend::new(SPACE.to_string()).into(), replace]).into()
    } else {
        replace
    };
    tok.with_normalizer(Some(normalizer))
        .map_err(|e| err(path, e))?;
    // As transformers' Gemma tokenizer: splitting on a plain space after the normalizer turned
    // every space into `▁` never cuts anything; kept so the pipelines match stage for stage.
    tok.with_pre_tokenizer(Some(
        Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
            .map_err(|e| err(path, e))?,
    ));
    tok.with_decoder(Some(DecoderSequence::new(vec![
        Replace::new(SPACE.to_string(), " ")
            .map_err(|e| err(path, e))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));

    if let Some(Value::Array(types)) = md.get("tokenizer.ggml.token_type") {
        let (mut special, mut user) = (Vec::new(), Vec::new());
        for (i, t) in types.iter().enumerate() {
            let (Some(raw), Some(spelled)) = (raw_tokens.get(i), tokens.get(i)) else {
                break;
            };
            match super::tokenizer::value_as_i64(t) {
                Some(TOKEN_TYPE_CONTROL) => {
                    special.push(AddedToken::from(*raw, true).normalized(false))
                }
                // Respelled whitespace runs are reached through the merges instead.
                Some(TOKEN_TYPE_USER_DEFINED) if raw == spelled => {
                    user.push(AddedToken::from(*raw, false).normalized(false))
                }
                _ => {}
            }
        }
        tok.add_special_tokens(special).map_err(|e| err(path, e))?;
        tok.add_tokens(user).map_err(|e| err(path, e))?;
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_rank_then_longer_left_piece() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rank: Vec<f64> = (0..tokens.len()).map(|i| i as f64).collect();
        let m = merges_from_vocab(&tokens, &rank);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]);
    }

    fn tiny_metadata() -> HashMap<String, Value> {
        let toks = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "\n",
            "  ",
            "▁",
            "h",
            "e",
            "l",
            "o",
            "he",
            "ll",
            "hell",
            "hello",
            "▁hello",
            "<0xC3>",
            "<0xA9>",
        ];
        let types = [3, 3, 3, 3, 3, 4, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6, 6];
        let s = |x: &str| Value::String(x.to_string());
        HashMap::from([
            ("general.architecture".into(), s("gemma3")),
            ("tokenizer.ggml.model".into(), s("llama")),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(toks.iter().map(|t| s(t)).collect()),
            ),
            (
                "tokenizer.ggml.scores".into(),
                Value::Array(toks.iter().map(|_| Value::F32(0.0)).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
            ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
        ])
    }

    #[test]
    fn gemma_style_vocabulary_encodes_with_byte_fallback_and_whole_added_tokens() {
        use crate::model::tokenizer::TextTokenizer;
        let t =
            TextTokenizer::from_gguf_metadata(&tiny_metadata(), Path::new("tiny.gguf")).unwrap();
        // BOS first (add_bos), "hello" merged, the space reached as `▁` and merged into the
        // next word, é (not in the vocabulary) as its two UTF-8 bytes, "\n" whole.
        assert_eq!(
            t.encode("hello hello\né").unwrap(),
            vec![2, 15, 16, 5, 17, 18]
        );
        // Two spaces: the whitespace-run token, respelled `▁▁`, is reached by merging `▁`+`▁`.
        assert_eq!(t.encode("  ").unwrap(), vec![2, 6]);
        assert_eq!(
            t.decode(&[2, 15, 16, 5, 17, 18], true).unwrap(),
            "hello hello\né"
        );
        assert_eq!(t.encode("<start_of_turn>hello").unwrap(), vec![2, 4, 15]);
    }
}
