//! Text ↔ token ids.
//!
//! Two sources are supported:
//! * **GGUF metadata** ([`TextTokenizer::from_gguf`]): the `tokenizer.ggml.*` arrays are turned
//!   into a Hugging Face `tokenizers::Tokenizer` in memory. Only byte-level BPE
//!   (`tokenizer.ggml.model = "gpt2"`) is built; this is what SmolLM2 (our default model),
//!   GPT-2/NeoX, Qwen, Llama 3 and most recent models use. The recipe (vocab + merges +
//!   pre-tokenizer per `tokenizer.ggml.pre`, ByteLevel decoder, control tokens as special
//!   added tokens) was checked against transformers' own GGUF conversion for SmolLM2: identical
//!   ids (docs/results/engine.md).
//! * **tokenizer.json** ([`TextTokenizer::from_file`]) for safetensors model directories.
//!
//! The wrapped tokenizer sits behind an `Arc`, so [`TextTokenizer`] is cheap to clone; a
//! [`StreamDecoder`] owns such a clone and can be kept in a long-lived generation state.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::error::{EngineError, Result};

/// GGUF `tokenizer.ggml.token_type` value of a control token (llama.cpp's
/// `LLAMA_TOKEN_TYPE_CONTROL`): `<|im_start|>`, `<|endoftext|>` and the like.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `tokenizer.ggml.token_type` value of a user-defined token (`LLAMA_TOKEN_TYPE_USER_DEFINED`).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A tokenizer plus the few facts generation needs (BOS/EOS, whether to prepend BOS).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Arc<Tokenizer>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    special: Arc<HashSet<u32>>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// Any GGUF integer value as i64 (GGUF writers differ in the integer widths they use for ids
/// and token types, so we accept all of them rather than one exact type).
pub(crate) fn value_as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn string_array<'a>(
    md: &'a HashMap<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Vec<&'a str>> {
    let missing = |what: &str| EngineError::MissingTokenizer {
        path: path.to_path_buf(),
        reason: format!("metadata field `{key}` {what}"),
    };
    let arr = match md.get(key) {
        None => return Err(missing("is absent")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(missing("is not an array")),
    };
    arr.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(missing("holds a non-string entry")),
        })
        .collect()
}

impl TextTokenizer {
    /// Builds the tokenizer from a parsed GGUF file's metadata. `path` only names the file in
    /// errors.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        Self::from_gguf_metadata(&content.metadata, path)
    }

    /// Same as [`from_gguf`](Self::from_gguf), from the metadata map alone (handy for tests and
    /// for callers that assemble metadata themselves).
    ///
    /// Fields read:
    /// * `tokenizer.ggml.model` must be `gpt2` (byte-level BPE). Other models, notably `llama`
    ///   (SentencePiece), are refused with [`EngineError::Tokenizer`] naming the type and file:
    ///   building them exactly needs a different model (Unigram/BPE with byte fallback and
    ///   Metaspace), which we have not implemented or verified.
    /// * `tokenizer.ggml.tokens` (id order) and `tokenizer.ggml.merges` (`"a b"` pairs, in rank
    ///   order); absent → [`EngineError::MissingTokenizer`] naming the field.
    /// * `tokenizer.ggml.token_type` (optional): type 3 (control) tokens become *special* added
    ///   tokens, so they are matched whole in input text and can be skipped on decode; type 4
    ///   (user-defined) become ordinary added tokens (matched whole, kept on decode), as
    ///   llama.cpp treats them.
    /// * `tokenizer.ggml.{bos,eos,unknown,padding}_token_id` (optional).
    /// * `tokenizer.ggml.add_bos_token`: **default false when absent** (our choice: GPT-2-style
    ///   BPE models are not trained with a BOS in front; SmolLM2 sets it false explicitly).
    /// * `tokenizer.ggml.pre`, the pre-tokenizer (how text is split before BPE):
    ///   - `smollm`: `Sequence[Digits(individual), ByteLevel(add_prefix_space=false,
    ///     trim_offsets=true, use_regex=true)]`, exactly SmolLM2's tokenizer.json.
    ///   - anything else, or absent (`gpt2`, `llama-bpe`, `qwen2`, …): plain `ByteLevel` with the
    ///     GPT-2 split regex. This is exact for `gpt2`; for other values it is **our
    ///     approximation** (their split regexes differ, e.g. digit grouping), so ids can differ
    ///     from the reference tokenizer on some inputs while text still round-trips. It loads
    ///     silently by design: the engine has no logger, and a model that tokenizes slightly
    ///     differently still runs.
    ///
    /// No `unk` token is set on the BPE model: the 256-symbol byte-level alphabet covers every
    /// input, so nothing can be unknown.
    pub fn from_gguf_metadata(md: &HashMap<String, Value>, path: &Path) -> Result<Self> {
        match md.get("tokenizer.ggml.model") {
            None => {
                return Err(EngineError::MissingTokenizer {
                    path: path.to_path_buf(),
                    reason: "metadata field `tokenizer.ggml.model` is absent".into(),
                })
            }
            Some(Value::String(m)) if m == "gpt2" => {}
            Some(Value::String(m)) if m == "llama" => return Self::sentencepiece(md, path),
            Some(Value::String(m)) => {
                return Err(EngineError::Tokenizer(format!(
                    "{}: tokenizer model `{m}` is not supported; byte-level BPE \
                     (`tokenizer.ggml.model = gpt2`) and SentencePiece BPE (`llama`) can be \
                     built from GGUF metadata",
                    path.display()
                )));
            }
            Some(other) => {
                return Err(EngineError::MissingTokenizer {
                    path: path.to_path_buf(),
                    reason: format!(
                        "metadata field `tokenizer.ggml.model` is not a string: {other:?}"
                    ),
                })
            }
        }

        let tokens = string_array(md, "tokenizer.ggml.tokens", path)?;
        let merge_strs = string_array(md, "tokenizer.ggml.merges", path)?;

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            // Duplicate strings would make ids ambiguous; the token → id map must be a bijection.
            return Err(EngineError::Tokenizer(format!(
                "{}: `tokenizer.ggml.tokens` has duplicate entries ({} tokens, {} distinct)",
                path.display(),
                tokens.len(),
                vocab.len()
            )));
        }
        let merges: Merges = merge_strs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        EngineError::Tokenizer(format!(
                            "{}: `tokenizer.ggml.merges[{i}]` = {m:?} is not a space-separated pair",
                            path.display()
                        ))
                    })
            })
            .collect::<Result<_>>()?;

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| {
                EngineError::Tokenizer(format!("{}: building BPE: {e}", path.display()))
            })?;
        let mut tok = Tokenizer::new(bpe);

        let pre: Option<&str> = match md.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        };
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = match pre {
            Some("smollm") => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            _ => byte_level.into(),
        };
        tok.with_pre_tokenizer(Some(pre_tok));
        tok.with_decoder(Some(ByteLevelDecoder::default()));

        if let Some(Value::Array(types)) = md.get("tokenizer.ggml.token_type") {
            let mut special = Vec::new();
            let mut user = Vec::new();
            for (i, t) in types.iter().enumerate() {
                let Some(content) = tokens.get(i) else { break };
                match value_as_i64(t) {
                    Some(TOKEN_TYPE_CONTROL) => special.push(AddedToken::from(*content, true)),
                    Some(TOKEN_TYPE_USER_DEFINED) => {
                        user.push(AddedToken::from(*content, false).normalized(false))
                    }
                    _ => {}
                }
            }
            // The contents are already in the BPE vocab, so the added tokens keep those ids.
            tok.add_special_tokens(special).map_err(tok_err)?;
            tok.add_tokens(user).map_err(tok_err)?;
        }

        let id = |key: &str| -> Option<u32> {
            md.get(key)
                .and_then(value_as_i64)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            Some(v) => value_as_i64(v).is_some_and(|x| x != 0),
            None => false,
        };
        Ok(Self::assemble(
            tok,
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
            id("tokenizer.ggml.unknown_token_id"),
            id("tokenizer.ggml.padding_token_id"),
            add_bos,
        ))
    }

    /// A SentencePiece-style vocabulary (`tokenizer.ggml.model = llama`), built by
    /// [`super::sentencepiece`]. `add_bos_token` defaults to **true** when absent, as llama.cpp
    /// and transformers assume for these files.
    fn sentencepiece(md: &HashMap<String, Value>, path: &Path) -> Result<Self> {
        let tokens = string_array(md, "tokenizer.ggml.tokens", path)?;
        let tok = super::sentencepiece::from_gguf_metadata(md, &tokens, path)?;
        let id = |key: &str| -> Option<u32> {
            md.get(key)
                .and_then(value_as_i64)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            Some(v) => value_as_i64(v).is_some_and(|x| x != 0),
            None => true,
        };
        Ok(Self::assemble(
            tok,
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
            id("tokenizer.ggml.unknown_token_id"),
            id("tokenizer.ggml.padding_token_id"),
            add_bos,
        ))
    }

    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// BOS/EOS are found best-effort, in this order (our choice; nothing here is fatal):
    /// 1. a sibling `tokenizer_config.json`: `bos_token` / `eos_token` / `pad_token` /
    ///    `unk_token` (a string or an `{"content": …}` object), looked up in the vocab, and
    ///    `add_bos_token`;
    /// 2. a sibling `config.json`: `bos_token_id` / `eos_token_id` / `pad_token_id` (a number or,
    ///    for EOS, a list whose first entry is taken).
    ///
    /// When `add_bos_token` is not given, we probe the tokenizer's own post-processor: if
    /// encoding with special tokens puts the BOS id first, BOS is prepended. [`encode`]
    /// itself never runs the post-processor; it prepends BOS by hand so both sources behave
    /// the same.
    ///
    /// [`encode`]: Self::encode
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(EngineError::MissingTokenizer {
                path: path.to_path_buf(),
                reason: "file does not exist".into(),
            });
        }
        let tok = Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let read_json = |name: &str| -> Option<serde_json::Value> {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            serde_json::from_str(&text).ok()
        };
        let tcfg = read_json("tokenizer_config.json");
        let cfg = read_json("config.json");

        let from_tcfg = |key: &str| -> Option<u32> {
            let v = tcfg.as_ref()?.get(key)?;
            let s = match v {
                serde_json::Value::String(s) => s.as_str(),
                serde_json::Value::Object(o) => o.get("content")?.as_str()?,
                _ => return None,
            };
            tok.token_to_id(s)
        };
        let from_cfg = |key: &str| -> Option<u32> {
            let v = cfg.as_ref()?.get(key)?;
            let n = match v {
                serde_json::Value::Array(a) => a.first()?.as_u64()?,
                other => other.as_u64()?,
            };
            u32::try_from(n).ok()
        };
        let bos = from_tcfg("bos_token").or_else(|| from_cfg("bos_token_id"));
        let eos = from_tcfg("eos_token").or_else(|| from_cfg("eos_token_id"));
        let pad = from_tcfg("pad_token").or_else(|| from_cfg("pad_token_id"));
        let unk = from_tcfg("unk_token");
        let add_bos = match tcfg
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
        {
            Some(b) => b,
            None => bos.is_some_and(|b| {
                let with = tok.encode("a", true).map(|e| e.get_ids().first().copied());
                let without = tok.encode("a", false).map(|e| e.get_ids().first().copied());
                matches!((with, without), (Ok(Some(w)), Ok(wo)) if w == b && wo != Some(b))
            }),
        };
        Ok(Self::assemble(tok, bos, eos, unk, pad, add_bos))
    }

    fn assemble(
        tok: Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        unk: Option<u32>,
        pad: Option<u32>,
        add_bos: bool,
    ) -> Self {
        let special: HashSet<u32> = tok
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Self {
            inner: Arc::new(tok),
            bos,
            eos,
            unk,
            pad,
            add_bos,
            special: Arc::new(special),
        }
    }

    /// Text → ids. Special tokens written in the text (`<|im_start|>`) map to their single id,
    /// which is what chat templates rely on. BOS is prepended only when the model asks for it
    /// ([`adds_bos`](Self::adds_bos)).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let ids = enc.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Ids → text. With `skip_special`, special (control) tokens produce no text.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn unk_token_id(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether [`encode`](Self::encode) prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The id of a token given by its vocab string (e.g. `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocab string of an id (byte-level form: a space shows as `Ġ`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The wrapped Hugging Face tokenizer (e.g. to save it as tokenizer.json).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// A fresh incremental decoder for one generated sequence.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(self, skip_special)
    }
}

/// Incremental detokenisation for streaming output.
///
/// Decoding ids one at a time is wrong for byte-level BPE: a multi-byte character (CJK, emoji)
/// is often split over several tokens, and decoding a token alone gives U+FFFD. We keep the
/// ids since the last emitted text as context, decode context and context + new ids, and emit
/// the difference only once it no longer ends in U+FFFD (an incomplete character). Decoding
/// with context also keeps decoders that treat the first token specially (SentencePiece's
/// leading space) correct.
///
/// Our choice: if text still ends in U+FFFD after [`MAX_HELD`](Self::MAX_HELD) pending ids,
/// the bytes are genuinely invalid (a UTF-8 character is at most 4 bytes and every byte-level
/// token is at least one), so it is emitted as is rather than held forever.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: TextTokenizer,
    skip_special: bool,
    /// `ids[..emitted]` is already-emitted context; `ids[emitted..]` is pending.
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    /// Pending ids after which a trailing U+FFFD is emitted anyway.
    pub const MAX_HELD: usize = 8;

    pub fn new(tokenizer: &TextTokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer: tokenizer.clone(),
            skip_special,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds one generated id; returns the text completed by it (often empty while a
    /// multi-byte character is still incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let full = self.tokenizer.decode(&self.ids, self.skip_special)?;
        if full.ends_with('\u{FFFD}') && self.ids.len() - self.emitted < Self::MAX_HELD {
            return Ok(String::new());
        }
        self.emit(full)
    }

    /// Flushes whatever is pending (possibly with U+FFFD for an unfinished character) and
    /// resets the decoder.
    pub fn finish(&mut self) -> Result<String> {
        if self.ids.len() == self.emitted {
            self.ids.clear();
            self.emitted = 0;
            return Ok(String::new());
        }
        let full = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let out = self.emit(full)?;
        self.ids.clear();
        self.emitted = 0;
        Ok(out)
    }

    fn emit(&mut self, full: String) -> Result<String> {
        let prefix = self
            .tokenizer
            .decode(&self.ids[..self.emitted], self.skip_special)?;
        let new = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => {
                // Should not happen for byte-level BPE; fall back to the longest common prefix
                // on a char boundary so we never panic or repeat much text.
                let common = full
                    .char_indices()
                    .zip(prefix.chars())
                    .find(|((_, a), b)| a != b)
                    .map(|((i, _), _)| i)
                    .unwrap_or_else(|| prefix.len().min(full.len()));
                let common = (0..=common)
                    .rev()
                    .find(|&i| full.is_char_boundary(i))
                    .unwrap_or(0);
                full[common..].to_string()
            }
        };
        // The ids just emitted become the context for the next step; older ones are dropped.
        self.ids.drain(..self.emitted);
        self.emitted = self.ids.len();
        Ok(new)
    }
}

/// GPT-2's byte → printable char map used by byte-level BPE: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
pub(crate) fn byte_level_char(b: u8) -> char {
    let printable = |x: u8| matches!(x, 33..=126 | 161..=172 | 174..=255);
    if printable(b) {
        b as char
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).expect("valid char")
    }
}

/// Test fixtures shared with other modules' tests (the lead's tiny random llama).
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// Merges of the tiny tokenizer, in rank order; each adds the concatenated token.
    pub const TINY_MERGES: &[(&str, &str)] = &[
        ("h", "e"),
        ("Ġ", "t"),
        ("Ġt", "he"),
        ("i", "n"),
        ("e", "r"),
        ("Ġ", "a"),
        ("o", "n"),
        ("l", "l"),
        ("Ġ", "w"),
        ("o", "r"),
        ("Ġw", "or"),
        ("Ġwor", "l"),
        ("Ġworl", "d"),
        ("H", "e"),
        ("He", "ll"),
        ("Hell", "o"),
        // Eight colour words as single tokens, so the harness's chunk-qa task (which ranks
        // one-token answers) also runs on the tiny model.
        ("Ġ", "r"),
        ("Ġr", "e"),
        ("Ġre", "d"),
        ("Ġ", "b"),
        ("Ġb", "l"),
        ("Ġbl", "u"),
        ("Ġblu", "e"),
        ("Ġ", "g"),
        ("Ġg", "r"),
        ("Ġgr", "e"),
        ("Ġgre", "e"),
        ("Ġgree", "n"),
        ("Ġbl", "a"),
        ("Ġbla", "c"),
        ("Ġblac", "k"),
        ("Ġw", "h"),
        ("Ġwh", "i"),
        ("Ġwhi", "t"),
        ("Ġwhit", "e"),
        ("Ġ", "p"),
        ("Ġp", "in"),
        ("Ġpin", "k"),
        ("Ġgr", "a"),
        ("Ġgra", "y"),
        ("Ġg", "o"),
        ("Ġgo", "l"),
        ("Ġgol", "d"),
    ];

    /// Number of tokens in [`tiny_test_metadata`]: 3 control + 256 bytes + one per merge.
    pub const TINY_VOCAB_SIZE: usize = 3 + 256 + TINY_MERGES.len();

    /// A small ChatML template (same shape as SmolLM2's, without the default system prompt).
    pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// GGUF tokenizer metadata for a tiny byte-level BPE that can encode any text:
    /// ids 0 `<|endoftext|>`, 1 `<|im_start|>`, 2 `<|im_end|>` (control, like SmolLM2),
    /// ids 3..=258 the 256 byte symbols in byte order, then one token per [`TINY_MERGES`]
    /// entry. bos 1, eos 2, unk 0, pad 2, `add_bos_token` false, `pre = smollm`, plus
    /// `tokenizer.chat_template` = [`TINY_CHAT_TEMPLATE`]. Only `tokenizer.*` keys: add the
    /// architecture fields yourself.
    pub fn tiny_test_metadata() -> HashMap<String, Value> {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        tokens.extend((0..=255u8).map(|b| byte_level_char(b).to_string()));
        let mut types = vec![Value::I32(3); 3];
        types.extend(std::iter::repeat_n(Value::I32(1), 256));
        let mut merges = Vec::new();
        for (a, b) in TINY_MERGES {
            tokens.push(format!("{a}{b}"));
            types.push(Value::I32(1));
            merges.push(Value::String(format!("{a} {b}")));
        }
        let s = |x: &str| Value::String(x.to_string());
        HashMap::from([
            ("tokenizer.ggml.model".to_string(), s("gpt2")),
            ("tokenizer.ggml.pre".to_string(), s("smollm")),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
            ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
            ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
            ("tokenizer.ggml.padding_token_id".to_string(), Value::U32(2)),
            (
                "tokenizer.ggml.add_bos_token".to_string(),
                Value::Bool(false),
            ),
            ("tokenizer.chat_template".to_string(), s(TINY_CHAT_TEMPLATE)),
        ])
    }

    /// [`tiny_test_metadata`] wrapped in a GGUF `Content` with no tensors.
    pub fn tiny_test_content() -> gguf_file::Content {
        gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata: tiny_test_metadata(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::testing::*;
    use super::*;
    use std::path::PathBuf;

    fn tiny() -> TextTokenizer {
        TextTokenizer::from_gguf(&tiny_test_content(), Path::new("tiny.gguf")).unwrap()
    }

    #[test]
    fn byte_level_alphabet_is_a_bijection() {
        let chars: HashSet<char> = (0..=255u8).map(byte_level_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_level_char(b' '), 'Ġ');
        assert_eq!(byte_level_char(b'\n'), 'Ċ');
        assert_eq!(byte_level_char(b'A'), 'A');
    }

    #[test]
    fn tiny_encodes_with_merges_and_specials() {
        let t = tiny();
        assert_eq!(t.vocab_size(), TINY_VOCAB_SIZE);
        let the = t.token_to_id("Ġthe").unwrap();
        let hello = t.token_to_id("Hello").unwrap();
        let world = t.token_to_id("Ġworld").unwrap();
        assert_eq!(
            t.encode("Hello world the").unwrap(),
            vec![hello, world, the]
        );
        assert_eq!(t.encode("<|im_start|>user\n").unwrap()[0], 1);
        let ids = t.encode("<|im_start|>Hello<|im_end|>").unwrap();
        assert_eq!(ids, vec![1, hello, 2]);
        assert!(t.is_special(0) && t.is_special(1) && t.is_special(2) && !t.is_special(hello));
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            "<|im_start|>Hello<|im_end|>"
        );
        assert_eq!(t.decode(&ids, true).unwrap(), "Hello");
        assert_eq!((t.bos_token_id(), t.eos_token_id()), (Some(1), Some(2)));
        assert_eq!((t.unk_token_id(), t.pad_token_id()), (Some(0), Some(2)));
        assert!(!t.adds_bos());
    }

    #[test]
    fn tiny_round_trips_any_text_and_splits_digits() {
        let t = tiny();
        for text in [
            "héllo wörld",
            "日本語のテキスト",
            "emoji 🦀👍🏽!",
            "a\t\tb\n\n  c   ",
            "",
            "12345",
        ] {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids, false).unwrap(), text, "{text:?} -> {ids:?}");
        }
        // smollm pre-tokenizer: each digit its own token.
        assert_eq!(t.encode("2024").unwrap().len(), 4);
    }

    #[test]
    fn add_bos_prepends() {
        let mut md = tiny_test_metadata();
        md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        let t = TextTokenizer::from_gguf_metadata(&md, Path::new("x.gguf")).unwrap();
        assert_eq!(
            t.encode("he").unwrap(),
            vec![1, t.token_to_id("he").unwrap()]
        );
        md.remove("tokenizer.ggml.add_bos_token");
        let t = TextTokenizer::from_gguf_metadata(&md, Path::new("x.gguf")).unwrap();
        assert!(!t.adds_bos(), "absent add_bos_token means false");
    }

    #[test]
    fn missing_merges_is_missing_tokenizer() {
        let mut md = tiny_test_metadata();
        md.remove("tokenizer.ggml.merges");
        match TextTokenizer::from_gguf_metadata(&md, Path::new("m.gguf")) {
            Err(EngineError::MissingTokenizer { path, reason }) => {
                assert_eq!(path, PathBuf::from("m.gguf"));
                assert!(reason.contains("tokenizer.ggml.merges"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut md = tiny_test_metadata();
        md.remove("tokenizer.ggml.tokens");
        let err = TextTokenizer::from_gguf_metadata(&md, Path::new("m.gguf")).unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
    }

    #[test]
    fn unknown_model_type_is_refused_by_name() {
        let mut md = tiny_test_metadata();
        md.insert("tokenizer.ggml.model".into(), Value::String("rwkv".into()));
        let err = TextTokenizer::from_gguf_metadata(&md, Path::new("sp.gguf")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EngineError::Tokenizer(_)));
        assert!(
            msg.contains("`rwkv`") && msg.contains("sp.gguf") && msg.contains("SentencePiece"),
            "{msg}"
        );
        md.remove("tokenizer.ggml.model");
        let err = TextTokenizer::from_gguf_metadata(&md, Path::new("sp.gguf")).unwrap_err();
        assert!(matches!(err, EngineError::MissingTokenizer { .. }), "{err}");
    }

    #[test]
    fn bad_merge_entry_is_named() {
        let mut md = tiny_test_metadata();
        md.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("nospace".into())]),
        );
        let err = TextTokenizer::from_gguf_metadata(&md, Path::new("b.gguf")).unwrap_err();
        assert!(err.to_string().contains("merges[0]"), "{err}");
    }

    fn stream_all(t: &TextTokenizer, ids: &[u32], skip: bool) -> (Vec<String>, String) {
        let mut d = t.stream_decoder(skip);
        let mut pieces = Vec::new();
        for &id in ids {
            pieces.push(d.push(id).unwrap());
        }
        pieces.push(d.finish().unwrap());
        let joined = pieces.concat();
        (pieces, joined)
    }

    #[test]
    fn stream_decoder_holds_back_split_chars() {
        let t = tiny();
        let text = "Hello 🦀 世界, the world\n";
        let ids = t.encode(text).unwrap();
        let (pieces, joined) = stream_all(&t, &ids, false);
        assert_eq!(joined, text);
        for p in &pieces {
            assert!(!p.contains('\u{FFFD}'), "broken piece {p:?} in {pieces:?}");
        }
        // The crab is 4 byte tokens: 3 empty pushes, then the whole char at once.
        assert!(pieces.iter().any(|p| p == "🦀"), "{pieces:?}");
        let ids = t.encode("<|im_start|>Hello<|im_end|>").unwrap();
        assert_eq!(stream_all(&t, &ids, true).1, "Hello");
        assert_eq!(stream_all(&t, &ids, false).1, "<|im_start|>Hello<|im_end|>");
    }

    #[test]
    fn stream_decoder_flushes_invalid_bytes() {
        let t = tiny();
        // A lone UTF-8 lead byte (0xE4) never completes: finish() must flush it.
        let lead = t.token_to_id(&byte_level_char(0xE4).to_string()).unwrap();
        let mut d = t.stream_decoder(false);
        assert_eq!(d.push(lead).unwrap(), "");
        assert_eq!(d.finish().unwrap(), "\u{FFFD}");
        // And a long run of invalid continuation bytes is not held forever.
        let cont = t.token_to_id(&byte_level_char(0x80).to_string()).unwrap();
        let mut d = t.stream_decoder(false);
        let out: String = (0..StreamDecoder::MAX_HELD)
            .map(|_| d.push(cont).unwrap())
            .collect();
        assert!(!out.is_empty());
    }

    #[test]
    fn from_file_reads_sibling_config() {
        let dir = std::env::temp_dir().join(format!("frugal-tok-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = tiny();
        let tj = dir.join("tokenizer.json");
        t.inner().save(&tj, false).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>", "add_bos_token": true}"#,
        )
        .unwrap();
        let f = TextTokenizer::from_file(&tj).unwrap();
        assert_eq!(
            (f.bos_token_id(), f.eos_token_id(), f.adds_bos()),
            (Some(1), Some(2), true)
        );
        assert_eq!(
            f.encode("Hello").unwrap(),
            vec![1, t.token_to_id("Hello").unwrap()]
        );
        assert!(f.is_special(2));
        std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"bos_token_id": 1, "eos_token_id": [2, 0]}"#,
        )
        .unwrap();
        let f = TextTokenizer::from_file(&tj).unwrap();
        assert_eq!(
            (f.bos_token_id(), f.eos_token_id(), f.adds_bos()),
            (Some(1), Some(2), false)
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap_err();
        assert!(matches!(err, EngineError::MissingTokenizer { .. }));
    }

    /// The real SmolLM2 GGUF: `FRUGAL_TEST_GGUF` if set, else the default model (fetched
    /// into the cache on first use).
    pub(crate) fn smollm() -> (gguf_file::Content, PathBuf) {
        let path = match std::env::var_os("FRUGAL_TEST_GGUF") {
            Some(p) => PathBuf::from(p),
            None => {
                crate::fetch::ensure_model(&crate::fetch::DEFAULT_MODEL, &mut |m| eprintln!("{m}"))
                    .unwrap()
            }
        };
        let mut f = std::fs::File::open(&path).unwrap();
        (gguf_file::Content::read(&mut f).unwrap(), path)
    }

    #[test]
    #[ignore = "needs the real SmolLM2 GGUF (FRUGAL_TEST_GGUF, else fetched on first use)"]
    fn smollm_gguf_tokenizer() {
        let (content, path) = smollm();
        let t = TextTokenizer::from_gguf(&content, &path).unwrap();
        assert_eq!(t.vocab_size(), 49152);
        assert_eq!(
            (t.bos_token_id(), t.eos_token_id(), t.adds_bos()),
            (Some(1), Some(2), false)
        );
        assert_eq!(t.encode("<|im_start|>").unwrap(), vec![1]);
        assert_eq!(t.encode("<|im_end|>").unwrap(), vec![2]);
        assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
        assert!(t.is_special(0) && t.is_special(1) && t.is_special(2));
        let texts = [
            "Héllo, café crème brûlée — naïve façade",
            "中文字符和日本語のひらがな、한국어",
            "emoji: 🦀🚀👍🏽 👨‍👩‍👧 done",
            "digits 1234567890 and 3.14159",
            "tabs\t\tand  spaces    and\nnewlines\n\n\r\n end ",
            "    indented code:\n\tfn main() { println!(\"{}\", 42); }\n",
        ];
        for text in texts {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids, false).unwrap(), text, "{text:?}");
            let (_, streamed) = stream_all(&t, &ids, false);
            assert_eq!(streamed, text);
        }
        // Each digit its own token (pre = smollm).
        let ids = t.encode("1234567890").unwrap();
        assert_eq!(ids.len(), 10);
        for (id, d) in ids.iter().zip("1234567890".chars()) {
            assert_eq!(t.decode(&[*id], false).unwrap(), d.to_string());
        }
        // The SmolLM2 chat prompt that transformers' own GGUF conversion tokenizes to 42 ids
        // (docs/results/engine.md).
        let chat = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in two sentences.<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(t.encode(chat).unwrap().len(), 42);
        let prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        let ids = t.encode(prompt).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);
        assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1);
        assert_eq!(t.decode(&ids, false).unwrap(), prompt);
        assert_eq!(t.decode(&ids, true).unwrap(), "user\nHi\nassistant\n");
    }
}
