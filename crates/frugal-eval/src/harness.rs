//! `frugal eval`: every (task, length) generates its samples once, then every policy runs on
//! exactly those samples, in one process. Each finished (policy, task, length) cell is written
//! to the JSON report at once, so an interrupted run keeps what it finished and `--resume`
//! skips it.

use crate::perplexity::negative_log_likelihood;
use crate::tasks::{generate_samples, Answer, Sample, TaskKind, TaskText};
use anyhow::{Context, Result};
use frugal_engine::generate::{argmax, GenerateRequest, Generation};
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use frugal_methods::{build, PolicySpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct EvalPlan {
    pub tasks: Vec<TaskKind>,
    pub policies: Vec<PolicySpec>,
    pub lengths: Vec<usize>,
    pub samples: usize,
    pub seed: u64,
    /// Needle depths for passkey (fractions of the context), cycled over samples.
    pub depths: Vec<f64>,
    /// Whether the policy sees the question before it compresses.
    pub mode: Mode,
    /// Prefill calls of at most this many tokens (0: the whole prompt, or the whole context,
    /// in one call). Evicting policies compress after every call, so a chunked prefill bounds
    /// their peak bytes.
    pub prefill_chunk: usize,
}

/// When the question reaches the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One prompt, context and question together (the question is seen before compression).
    #[default]
    QuestionAware,
    /// The context is prefilled (and compressed) first; the question is prefilled afterwards,
    /// as one call, then the answer generated (kvpress's pipeline; a cached, reused prefix).
    QuestionAgnostic,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::QuestionAware => "question-aware",
            Mode::QuestionAgnostic => "question-agnostic",
        }
    }

    pub fn from_name(s: &str) -> Result<Mode, String> {
        [Mode::QuestionAware, Mode::QuestionAgnostic]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode `{s}` (modes: question-aware, question-agnostic)"))
    }
}

/// Provenance of a report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub frugal_version: String,
    pub git_commit: String,
    pub model: String,
    pub model_sha256: String,
    pub seed: u64,
    pub samples: usize,
    pub machine: String,
    pub threads: usize,
    pub date_utc: String,
}

/// One passkey depth's result inside a cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DepthResult {
    pub depth: f64,
    pub correct: usize,
    pub total: usize,
}

/// JSON has no NaN: serde_json writes it as `null`, which reads back as NaN here.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One phrasing's result inside a cell (user-format tasks).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhrasingResult {
    /// `question` or `needle`.
    pub kind: String,
    pub index: usize,
    pub correct: usize,
    pub total: usize,
}

/// One sample of a generation task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemResult {
    pub expected: String,
    pub answer: String,
    pub correct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,
    /// Question phrasing index (user-format tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<usize>,
    /// Needle phrasing index (user-format tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needle: Option<usize>,
}

/// One (policy, task, length, mode, prefill chunk) cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellResult {
    pub policy: String,
    pub task: TaskKind,
    pub length: usize,
    /// When the policy saw the question (reports from before modes existed were aware).
    #[serde(default)]
    pub mode: Mode,
    /// Prefill chunk in tokens, 0 for one call.
    #[serde(default)]
    pub prefill_chunk: usize,
    /// `user`, `forced` or `-` (see `TaskKind::format`).
    #[serde(default)]
    pub format: String,
    pub metric: String,
    pub value: f64,
    /// 95% interval: Wilson for accuracy; for perplexity, exp of a t-interval on the
    /// per-sample mean NLL, NaN from a single sample (stored as JSON `null`).
    #[serde(deserialize_with = "null_as_nan")]
    pub ci_low: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub ci_high: f64,
    pub samples: usize,
    /// Largest KV footprint reached in any sample, bytes held by the store.
    pub kv_peak_bytes: usize,
    /// Mean KV bytes held at the end of a sample.
    pub kv_end_bytes: f64,
    /// Full attention's KV at 16 bits per value for the same tokens, divided by what the
    /// policy held at the end (`full`'s own store holds f32, so its ratio is about 0.5).
    pub compression_vs_f16: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: Option<f64>,
    pub by_depth: Vec<DepthResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_phrasing: Vec<PhrasingResult>,
    /// Every sample of a generation task: its depth, phrasings, answer and verdict (the raw
    /// data behind the accuracy and the breakdowns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemResult>,
    pub seconds: f64,
    /// The attention policy's `report()` after each sample (budgets, kept fractions), when
    /// it has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub run: RunInfo,
    pub cells: Vec<CellResult>,
}

impl EvalReport {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a frugal eval report", path.display()))
    }

    /// Writes atomically (temp file + rename), so an interrupt never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    pub fn has(
        &self,
        policy: &str,
        task: TaskKind,
        length: usize,
        mode: Mode,
        prefill_chunk: usize,
    ) -> bool {
        self.cells.iter().any(|c| {
            c.policy == policy
                && c.task == task
                && c.length == length
                && c.mode == mode
                && c.prefill_chunk == prefill_chunk
        })
    }
}

/// What the harness reports while it runs.
pub trait Progress {
    fn start(&mut self, total_samples: u64);
    fn prompt_done(&mut self, label: &str);
    fn skip(&mut self, samples: u64);
}

/// Runs the plan, appending finished cells to `report` and saving it to `out` after each.
pub fn run_plan(
    lm: &LoadedModel,
    text: &TaskText,
    plan: &EvalPlan,
    report: &mut EvalReport,
    out: &Path,
    progress: &mut dyn Progress,
    interrupted: &dyn Fn() -> bool,
) -> Result<()> {
    let cells = plan.tasks.len() * plan.lengths.len() * plan.policies.len();
    progress.start((cells * plan.samples) as u64);
    let layout = lm.model.config().kv_layout();
    for &task in &plan.tasks {
        for &length in &plan.lengths {
            let todo: Vec<&PolicySpec> = plan
                .policies
                .iter()
                .filter(|p| {
                    !report.has(&p.to_string(), task, length, plan.mode, plan.prefill_chunk)
                })
                .collect();
            progress.skip(((plan.policies.len() - todo.len()) * plan.samples) as u64);
            if todo.is_empty() {
                continue;
            }
            let samples = generate_samples(
                task,
                lm,
                text,
                length,
                plan.samples,
                plan.seed,
                &plan.depths,
            )
            .with_context(|| format!("generating {} samples at length {length}", task.name()))?;
            for spec in todo {
                let label = format!("{} {} @{length} {}", spec, task.name(), plan.mode.name());
                let t0 = Instant::now();
                let mut outcomes = Vec::with_capacity(samples.len());
                for s in &samples {
                    if interrupted() {
                        return Ok(());
                    }
                    let mut seq = build(spec, layout)?;
                    seq.structure = Some(std::sync::Arc::new(s.structure.clone()));
                    outcomes.push(run_sample(lm, &mut seq, s, plan.mode, plan.prefill_chunk)?);
                    progress.prompt_done(&label);
                }
                let mut cell = summarise(
                    spec.to_string(),
                    task,
                    length,
                    &samples,
                    &outcomes,
                    lm,
                    t0.elapsed().as_secs_f64(),
                );
                cell.mode = plan.mode;
                cell.prefill_chunk = plan.prefill_chunk;
                report.cells.push(cell);
                report.save(out)?;
            }
        }
    }
    Ok(())
}

/// The measurements of one sample under one policy.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// 1.0/0.0 for accuracy tasks; summed NLL for perplexity.
    pub score: f64,
    pub scored_tokens: usize,
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_tokens: usize,
    pub decode_secs: f64,
    pub kv_peak: usize,
    pub kv_end: usize,
    pub context_tokens: usize,
    /// The attention policy's `report()` at the end of the sample.
    pub report: Option<String>,
    /// For generation tasks: the expected key and the generated text.
    pub answer: Option<(String, String)>,
}

/// Prefills `tokens` in calls of at most `chunk` tokens (0: one call); the last call's logits.
fn prefill(lm: &LoadedModel, seq: &mut Sequence, tokens: &[u32], chunk: usize) -> Result<Vec<f32>> {
    let step = if chunk == 0 { tokens.len() } else { chunk };
    let mut logits = Vec::new();
    for part in tokens.chunks(step.max(1)) {
        logits = lm.model.last_logits(part, seq)?;
    }
    Ok(logits)
}

/// Runs one sample. In question-agnostic mode the context (`tokens[..context_end]`) is
/// prefilled first, so the policy compresses it without the question; the question is then
/// prefilled as one call (too short for an evicting policy to compress) and the answer
/// generated. In question-aware mode the whole prompt is one prefill (in `chunk`-token calls
/// when `chunk > 0`).
pub fn run_sample(
    lm: &LoadedModel,
    seq: &mut Sequence,
    s: &Sample,
    mode: Mode,
    chunk: usize,
) -> Result<Outcome> {
    let split = match mode {
        Mode::QuestionAware => 0,
        Mode::QuestionAgnostic => s.context_end.min(s.tokens.len()),
    };
    let t0 = Instant::now();
    let mut o = Outcome {
        score: 0.0,
        scored_tokens: 1,
        prefill_tokens: s.tokens.len(),
        prefill_secs: 0.0,
        decode_tokens: 0,
        decode_secs: 0.0,
        kv_peak: 0,
        kv_end: 0,
        context_tokens: 0,
        report: None,
        answer: None,
    };
    match &s.answer {
        Answer::Digits {
            expected,
            max_new_tokens,
        }
        | Answer::Contains {
            expected,
            max_new_tokens,
        } => {
            // Greedy, no stop strings: the engine's one generation loop.
            let req = GenerateRequest {
                max_tokens: *max_new_tokens,
                ..Default::default()
            };
            prefill(lm, seq, &s.tokens[..split], chunk)?;
            let rest = s.tokens[split..].to_vec();
            let step = if chunk == 0 || split > 0 {
                rest.len()
            } else {
                chunk
            };
            let mut g = Generation::new(lm, seq, rest, &req)?;
            while !g.prefill_done() {
                g.step(lm, seq, step)?;
            }
            o.prefill_secs = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            while g.finish().is_none() {
                g.step(lm, seq, 1)?;
            }
            let generated = g.tokens().to_vec();
            o.decode_secs = t1.elapsed().as_secs_f64();
            // Decode speed counts forward steps; the first token comes from the prefill.
            o.decode_tokens = generated.len().saturating_sub(1);
            let text = lm.tokenizer.decode(&generated, true)?;
            if std::env::var_os("FRUGAL_EVAL_SHOW").is_some() {
                eprintln!("expected {expected}, generated {text:?}");
            }
            o.score = match &s.answer {
                Answer::Contains { .. } => {
                    crate::tasks::user::answer_contains(&text, expected) as u8 as f64
                }
                _ => (first_digit_run(&text) == Some(expected.as_str())) as u8 as f64,
            };
            o.answer = Some((expected.clone(), text));
        }
        Answer::Choice { candidates, gold } => {
            let logits = if split > 0 {
                prefill(lm, seq, &s.tokens[..split], chunk)?;
                lm.model.last_logits(&s.tokens[split..], seq)?
            } else {
                prefill(lm, seq, &s.tokens, chunk)?
            };
            o.prefill_secs = t0.elapsed().as_secs_f64();
            let cand: Vec<f32> = candidates.iter().map(|&c| logits[c as usize]).collect();
            o.score = (argmax(&cand) as usize == *gold) as u8 as f64;
        }
        Answer::Perplexity { score_from } => {
            // Context first (the policy compresses it), then the scored quarter in one call.
            prefill(lm, seq, &s.tokens[..*score_from], chunk)?;
            let hidden = lm
                .model
                .forward_hidden(&s.tokens[*score_from..], seq, LogitRows::All)?;
            o.prefill_secs = t0.elapsed().as_secs_f64();
            let n = s.tokens.len() - score_from - 1;
            let mut nll = 0.0;
            // Logits in chunks of 256 rows: a row is 200 KB for a 49k vocabulary.
            for start in (0..n).step_by(256) {
                let rows = 256.min(n - start);
                let logits = lm.model.logits(&hidden.narrow(0, start, rows)?)?;
                for r in 0..rows {
                    nll += negative_log_likelihood(
                        &logits.get(r)?,
                        s.tokens[score_from + start + r + 1],
                    )?;
                }
            }
            o.score = nll;
            o.scored_tokens = n;
        }
    }
    o.report = seq.report();
    // An evicting cache also counts the moments inside a call before its eviction.
    let inner_peak = o
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .and_then(|v| v.get("kv_peak_bytes").and_then(|p| p.as_u64()))
        .unwrap_or(0) as usize;
    o.kv_peak = seq.peak_kv_bytes().max(inner_peak);
    o.kv_end = seq.cache.resident_bytes();
    o.context_tokens = seq.len();
    Ok(o)
}

/// The first maximal run of ASCII digits in `text`.
pub fn first_digit_run(text: &str) -> Option<&str> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let len = text[start..]
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len() - start);
    Some(&text[start..start + len])
}

/// Wilson score interval for `k` successes in `n` trials at 95%.
pub fn wilson_interval(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n_f, p) = (1.96f64, n as f64, k as f64 / n as f64);
    let denom = 1.0 + z * z / n_f;
    let centre = (p + z * z / (2.0 * n_f)) / denom;
    let half = z * (p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn summarise(
    policy: String,
    task: TaskKind,
    length: usize,
    samples: &[Sample],
    outcomes: &[Outcome],
    lm: &LoadedModel,
    seconds: f64,
) -> CellResult {
    let n = outcomes.len();
    let (value, ci_low, ci_high) = match task {
        TaskKind::Ppl => {
            let tokens: usize = outcomes.iter().map(|o| o.scored_tokens).sum();
            let mean = outcomes.iter().map(|o| o.score).sum::<f64>() / tokens as f64;
            let per: Vec<f64> = outcomes
                .iter()
                .map(|o| o.score / o.scored_tokens as f64)
                .collect();
            let m = per.iter().sum::<f64>() / n as f64;
            let sd =
                (per.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64).sqrt();
            if n < 2 {
                // One sample has no spread to build an interval from: NaN (null in the JSON),
                // printed as "–" and drawn without an error bar.
                (mean.exp(), f64::NAN, f64::NAN)
            } else {
                let half = t_quantile_975(n - 1) * sd / (n as f64).sqrt();
                (mean.exp(), (mean - half).exp(), (mean + half).exp())
            }
        }
        _ => {
            let k = outcomes.iter().filter(|o| o.score > 0.5).count();
            let (lo, hi) = wilson_interval(k, n);
            (k as f64 / n as f64, lo, hi)
        }
    };
    let cfg = lm.model.config();
    // The reference is the full store at f16, counted as the store counts itself: keys and
    // values at 2 bytes each plus one u32 position per token per head, so `full` at the
    // default f16 reads exactly 1.0 and an f32 store about 0.5.
    let f16_bytes = |tokens: usize| {
        (tokens * cfg.n_layers * cfg.n_kv_heads * (cfg.head_dim * 2 * 2 + 4)) as f64
    };
    let kv_end_total: usize = outcomes.iter().map(|o| o.kv_end).sum();
    let f16_total: f64 = outcomes.iter().map(|o| f16_bytes(o.context_tokens)).sum();
    let sum = |f: fn(&Outcome) -> f64| outcomes.iter().map(f).sum::<f64>();
    let decode_tokens = sum(|o| o.decode_tokens as f64);
    let mut by_depth: Vec<DepthResult> = Vec::new();
    for (s, o) in samples.iter().zip(outcomes) {
        if let Some(d) = s.depth {
            match by_depth.iter_mut().find(|r| r.depth == d) {
                Some(r) => {
                    r.total += 1;
                    r.correct += (o.score > 0.5) as usize;
                }
                None => by_depth.push(DepthResult {
                    depth: d,
                    correct: (o.score > 0.5) as usize,
                    total: 1,
                }),
            }
        }
    }
    by_depth.sort_by(|a, b| a.depth.total_cmp(&b.depth));
    let mut by_phrasing: Vec<PhrasingResult> = Vec::new();
    for (s, o) in samples.iter().zip(outcomes) {
        if let Some((q, nd)) = s.phrasing {
            for (kind, index) in [("question", q), ("needle", nd)] {
                let ok = (o.score > 0.5) as usize;
                match by_phrasing
                    .iter_mut()
                    .find(|r| r.kind == kind && r.index == index)
                {
                    Some(r) => {
                        r.total += 1;
                        r.correct += ok;
                    }
                    None => by_phrasing.push(PhrasingResult {
                        kind: kind.into(),
                        index,
                        correct: ok,
                        total: 1,
                    }),
                }
            }
        }
    }
    by_phrasing.sort_by(|a, b| a.kind.cmp(&b.kind).then(a.index.cmp(&b.index)));
    let items = samples
        .iter()
        .zip(outcomes)
        .filter_map(|(s, o)| {
            let (expected, answer) = o.answer.clone()?;
            Some(ItemResult {
                expected,
                answer,
                correct: o.score > 0.5,
                depth: s.depth,
                question: s.phrasing.map(|p| p.0),
                needle: s.phrasing.map(|p| p.1),
            })
        })
        .collect();
    CellResult {
        policy,
        task,
        length,
        mode: Mode::QuestionAware,
        prefill_chunk: 0,
        format: task.format().into(),
        metric: task.metric().into(),
        value,
        ci_low,
        ci_high,
        samples: n,
        kv_peak_bytes: outcomes.iter().map(|o| o.kv_peak).max().unwrap_or(0),
        kv_end_bytes: kv_end_total as f64 / n as f64,
        compression_vs_f16: f16_total / kv_end_total.max(1) as f64,
        prefill_tok_s: sum(|o| o.prefill_tokens as f64) / sum(|o| o.prefill_secs),
        decode_tok_s: (decode_tokens > 0.0).then(|| decode_tokens / sum(|o| o.decode_secs)),
        by_depth,
        by_phrasing,
        items,
        seconds,
        reports: outcomes
            .iter()
            .filter_map(|o| o.report.as_deref())
            .map(|r| serde_json::from_str(r).unwrap_or_else(|_| r.into()))
            .collect(),
    }
}

/// Two-sided 95% Student-t quantile for `df` degrees of freedom (table up to 30, then normal).
fn t_quantile_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

/// Default output paths next to the JSON: `<stem>.md` and `<stem>_plots/`.
pub fn sibling_paths(out: &Path) -> (PathBuf, PathBuf) {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "results".into());
    let dir = out.parent().unwrap_or(Path::new("."));
    (
        dir.join(format!("{stem}.md")),
        dir.join(format!("{stem}_plots")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_and_intervals() {
        assert_eq!(first_digit_run("The pass key is 71432."), Some("71432"));
        assert_eq!(first_digit_run("no digits"), None);
        assert_eq!(first_digit_run("714 32"), Some("714"));
        let (lo, hi) = wilson_interval(10, 10);
        assert!(hi == 1.0 && (lo - 0.7225).abs() < 1e-3, "{lo}");
        let (lo, hi) = wilson_interval(5, 10);
        assert!((lo - 0.2366).abs() < 1e-3 && (hi - 0.7634).abs() < 1e-3);
    }
}
