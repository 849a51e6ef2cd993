//! Chat prompt formatting with the model's own Jinja chat template.
//!
//! Hugging Face chat templates are Jinja2 programs run by transformers in a sandboxed
//! environment with `trim_blocks` and `lstrip_blocks` on, a `raise_exception` global, a
//! `strftime_now` global, and a `tojson` filter that behaves like Python's `json.dumps`
//! (`ensure_ascii=False`). We render them with minijinja set up the same way, plus
//! `minijinja-contrib`'s `pycompat` so Python string/dict methods that templates call
//! (`.strip()`, `.startswith()`, `.split()`, `.items()`, …) work.
//!
//! Context variables: `messages` (list of `{role, content}`), `add_generation_prompt`,
//! `bos_token`, `eos_token`. Tool-calling variables (`tools`, `documents`) are left undefined.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Our fallback when a model ships no template: plain ChatML
/// (`<|im_start|>role\ncontent<|im_end|>\n` per turn, then `<|im_start|>assistant\n`).
/// Chosen because it is the most common format among small instruct models (SmolLM2, Qwen),
/// and it adds no default system prompt. For a model trained on another format the output
/// will be worse; pass a proper template then.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template plus the BOS/EOS strings it may reference.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `src`. Syntax errors are reported here (as [`EngineError::ChatTemplate`] with
    /// minijinja's message and line), not at the first render.
    pub fn from_str(src: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::build(src, bos_token, eos_token, None)
    }

    fn build(src: &str, bos_token: &str, eos_token: &str, origin: Option<&Path>) -> Result<Self> {
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, src.to_string())
            .map_err(|e| {
                let from = origin
                    .map(|p| format!(" from {}", p.display()))
                    .unwrap_or_default();
                EngineError::ChatTemplate(format!(
                    "cannot compile template{from}: {}",
                    describe(&e)
                ))
            })?;
        Ok(Self {
            env,
            source: src.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The fallback ChatML template ([`CHATML_TEMPLATE`]).
    pub fn chatml_fallback() -> Self {
        Self::from_str(CHATML_TEMPLATE, "", "<|im_end|>")
            .expect("the built-in ChatML template compiles")
    }

    /// The template in GGUF field `tokenizer.chat_template`, if any; `bos_token`/`eos_token`
    /// are the token strings at `tokenizer.ggml.{bos,eos}_token_id` (empty when absent).
    /// `path` only names the file in errors.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Option<Self>> {
        Self::from_gguf_metadata(&content.metadata, path)
    }

    /// [`from_gguf`](Self::from_gguf) on the metadata map alone.
    pub fn from_gguf_metadata(
        md: &HashMap<String, GgufValue>,
        path: &Path,
    ) -> Result<Option<Self>> {
        let src = match md.get("tokenizer.chat_template") {
            None => return Ok(None),
            Some(GgufValue::String(s)) => s,
            Some(_) => {
                return Err(EngineError::ChatTemplate(format!(
                    "{}: metadata field `tokenizer.chat_template` is not a string",
                    path.display()
                )))
            }
        };
        let token = |key: &str| -> String {
            let id = match md.get(key) {
                Some(GgufValue::U32(v)) => *v as usize,
                Some(GgufValue::I32(v)) if *v >= 0 => *v as usize,
                Some(GgufValue::U64(v)) => *v as usize,
                Some(GgufValue::I64(v)) if *v >= 0 => *v as usize,
                _ => return String::new(),
            };
            match md.get("tokenizer.ggml.tokens") {
                Some(GgufValue::Array(toks)) => match toks.get(id) {
                    Some(GgufValue::String(s)) => s.clone(),
                    _ => String::new(),
                },
                _ => String::new(),
            }
        };
        let bos = token("tokenizer.ggml.bos_token_id");
        let eos = token("tokenizer.ggml.eos_token_id");
        Self::build(src, &bos, &eos, Some(path)).map(Some)
    }

    /// The `chat_template` of a Hugging Face `tokenizer_config.json`, if any (a string, or
    /// the list-of-named-templates form, where `default` — else the first — is taken), with
    /// its `bos_token`/`eos_token` (string or `{"content": …}`).
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path)?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            EngineError::ChatTemplate(format!("{}: invalid JSON: {e}", path.display()))
        })?;
        let src = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => {
                let named = |n: &str| {
                    list.iter()
                        .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(n))
                };
                match named("default")
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                {
                    Some(s) => s.to_string(),
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        let tok = |key: &str| -> String {
            match cfg.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Object(o)) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        };
        Self::build(&src, &tok("bos_token"), &tok("eos_token"), Some(path)).map(Some)
    }

    /// Renders the conversation. With `add_generation_prompt`, the template appends the
    /// header that starts the assistant's turn, so generation continues from there.
    /// A template's `raise_exception("…")` becomes [`EngineError::ChatTemplate`] with that message.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::ChatTemplate(describe(&e)))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| EngineError::ChatTemplate(format!("cannot render: {}", describe(&e))))
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

/// minijinja's message plus its causes (an error raised inside a function shows as the cause).
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("template raised: {msg}"),
    ))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// i.e. Python's separators (`", "`/`": "` inline, `","`/`": "` with indent) and non-ASCII
/// kept as is. (minijinja's own `tojson` is compact and HTML-escapes `<>&'`, which would change
/// prompts that embed JSON.) Map key order is minijinja's (insertion order in this build).
fn tojson(
    value: Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, Error> {
    let kw_indent: Option<Value> = kwargs.get("indent")?;
    // Python also accepts these; we accept and ignore them.
    let _: Option<Value> = kwargs.get("separators")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match kw_indent.or(indent) {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(v.as_usize().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: indent must be a non-negative integer, got {v}"),
            )
        })?),
    };
    let mut out = String::new();
    py_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn py_json(
    v: &Value,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => py_string(v.as_str().unwrap_or_default(), out),
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                match k.as_str() {
                    Some(s) => py_string(s, out),
                    None => py_string(&k.to_string(), out),
                }
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                py_json(item, indent, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {} value", v.kind()),
            ))
        }
    }
    Ok(())
}

/// Python's `json.dumps` string escaping with `ensure_ascii=False`.
fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (what `json.dumps` prints): shortest round-trip digits, `.0` on
/// integral values, exponent as `e+XX`/`e-XX` with at least two digits.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let s = format!("{f:?}"); // Rust switches to exponent form at the same thresholds as Python.
    match s.split_once('e') {
        None => s,
        Some((mant, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            let mant = mant.strip_suffix(".0").unwrap_or(mant);
            format!("{mant}e{sign}{digits:0>2}")
        }
    }
}

/// `strftime_now(format)` (used by Llama 3.x templates for "Today Date"). Our choice: the
/// current time in **UTC** (no time-zone database), supporting `%Y %y %m %d %e %H %M %S %b %B
/// %a %A %j %%`; other directives are copied through as written.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime_utc(&fmt, secs)
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Days since 1970-01-01 → proleptic Gregorian (year, month, day), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn strftime_utc(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let wday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][m as usize - 1];
    let yday = cum + d + u32::from(leap && m > 2);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('a') => out.push_str(&DAYS[wday][..3]),
            Some('A') => out.push_str(DAYS[wday]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::testing::tiny_test_content;

    const EXPECTED_SYS_USER: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";

    fn sys_user() -> Vec<ChatMessage> {
        vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user("What is 2+2?"),
        ]
    }

    #[test]
    fn chatml_renders_exactly() {
        let t = ChatTemplate::chatml_fallback();
        assert_eq!(t.render(&sys_user(), true).unwrap(), EXPECTED_SYS_USER);
        let no_prompt = t.render(&sys_user(), false).unwrap();
        assert_eq!(
            no_prompt,
            EXPECTED_SYS_USER
                .strip_suffix("<|im_start|>assistant\n")
                .unwrap()
        );
    }

    #[test]
    fn handwritten_template_with_trim_blocks_and_pycompat() {
        // Block tags on their own lines: trim_blocks/lstrip_blocks must remove the layout
        // whitespace, as in transformers.
        let src = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'system' %}\n<<SYS {{ m.content.strip() }}>>\n    {% else %}\n[{{ m.role.upper() }}] {{ m.content }}{{ eos_token }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}[ASSISTANT]{% endif %}";
        let t = ChatTemplate::from_str(src, "<s>", "</s>").unwrap();
        let msgs = vec![ChatMessage::system("  be brief  "), ChatMessage::user("hi")];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<s>\n<<SYS be brief>>\n[USER] hi</s>\n[ASSISTANT]"
        );
        let t =
            ChatTemplate::from_str("{{ messages[0].content.startswith('be') }}", "", "").unwrap();
        // Printed as Python/Jinja2 print it.
        assert_eq!(t.render(&[ChatMessage::user("be")], false).unwrap(), "True");
    }

    #[test]
    fn raise_exception_is_reported() {
        let src = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('Tools are not supported') }}{% endif %}{% endfor %}";
        let t = ChatTemplate::from_str(src, "", "").unwrap();
        let err = t
            .render(&[ChatMessage::new("tool", "x")], false)
            .unwrap_err();
        assert!(matches!(err, EngineError::ChatTemplate(_)));
        assert!(err.to_string().contains("Tools are not supported"), "{err}");
    }

    #[test]
    fn bad_syntax_is_a_chat_template_error() {
        let err =
            ChatTemplate::from_str("{% for m in messages %}{{ m.content }}", "", "").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EngineError::ChatTemplate(_)));
        assert!(
            msg.contains("syntax error") && msg.contains("end of block") && msg.contains(":1)"),
            "{msg}"
        );
        let err = ChatTemplate::from_str("{{ 'a' + }}", "", "").unwrap_err();
        assert!(err.to_string().contains("syntax error"), "{err}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::from_str(
            "{{ messages[0] | tojson }}|{{ [1, 2.5, none, true, 'é\"\\n'] | tojson }}|{{ {'a': [1, {}], 'b': []} | tojson(indent=2) }}|{{ 1e20 | tojson }}|{{ '<b>&' | tojson }}",
            "",
            "",
        )
        .unwrap();
        let out = t.render(&[ChatMessage::user("héllo")], false).unwrap();
        let parts: Vec<&str> = out.split('|').collect();
        // Struct field order, as Python would print the message dict.
        assert_eq!(parts[0], r#"{"role": "user", "content": "héllo"}"#);
        assert_eq!(parts[1], r#"[1, 2.5, null, true, "é\"\n"]"#);
        assert_eq!(
            parts[2],
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
        assert_eq!(parts[3], "1e+20");
        assert_eq!(parts[4], "\"<b>&\"");
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let secs = 1_709_211_909;
        assert_eq!(
            strftime_utc("%d %b %Y %H:%M:%S %A %j %%", secs),
            "29 Feb 2024 13:05:09 Thursday 060 %"
        );
        assert_eq!(strftime_utc("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        let t = ChatTemplate::from_str("{{ strftime_now('%Y') }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap().len(), 4);
    }

    #[test]
    fn gguf_metadata_template_and_tokens() {
        let content = tiny_test_content();
        let t = ChatTemplate::from_gguf(&content, Path::new("tiny.gguf"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.bos_token(), t.eos_token()),
            ("<|im_start|>", "<|im_end|>")
        );
        assert_eq!(t.render(&sys_user(), true).unwrap(), EXPECTED_SYS_USER);
        let mut md = content.metadata;
        md.remove("tokenizer.chat_template");
        assert!(
            ChatTemplate::from_gguf_metadata(&md, Path::new("tiny.gguf"))
                .unwrap()
                .is_none()
        );
        md.insert(
            "tokenizer.chat_template".into(),
            GgufValue::String("{% if %}".into()),
        );
        let err = ChatTemplate::from_gguf_metadata(&md, Path::new("bad.gguf")).unwrap_err();
        assert!(err.to_string().contains("bad.gguf"), "{err}");
    }

    #[test]
    fn tokenizer_config_template() {
        let dir = std::env::temp_dir().join(format!("frugal-chat-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokenizer_config.json");
        let cfg = serde_json::json!({
            "bos_token": {"content": "<s>"}, "eos_token": "</s>",
            "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]
        });
        std::fs::write(&p, cfg.to_string()).unwrap();
        let t = ChatTemplate::from_tokenizer_config(&p).unwrap().unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("hi")], false).unwrap(),
            "<s>hi</s>"
        );
        std::fs::write(&p, "{}").unwrap();
        assert!(ChatTemplate::from_tokenizer_config(&p).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chat_message_serde() {
        let m: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).unwrap();
        assert_eq!(m, ChatMessage::user("hi"));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":"hi"}"#
        );
    }

    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// SmolLM2-135M-Instruct's template as copied from the GGUF (checked equal to the file in
    /// the gated test below), so this runs without the file.
    #[test]
    fn smollm2_template_copy() {
        let t = ChatTemplate::from_str(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>").unwrap();
        assert_eq!(t.render(&sys_user(), true).unwrap(), EXPECTED_SYS_USER);
        // No system message: the template inserts its default one.
        assert_eq!(
            t.render(&[ChatMessage::user("Hi")], true).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    #[ignore = "needs the real SmolLM2 GGUF (FRUGAL_TEST_GGUF, else fetched on first use)"]
    fn smollm2_gguf_template() {
        let (content, path) = crate::model::tokenizer::tests::smollm();
        let t = ChatTemplate::from_gguf(&content, &path)
            .unwrap()
            .expect("SmolLM2 has a template");
        assert_eq!(t.source(), SMOLLM2_TEMPLATE);
        assert_eq!(
            (t.bos_token(), t.eos_token()),
            ("<|im_start|>", "<|im_end|>")
        );
        assert_eq!(t.render(&sys_user(), true).unwrap(), EXPECTED_SYS_USER);
    }
}
