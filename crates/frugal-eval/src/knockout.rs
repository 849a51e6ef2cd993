//! `frugal knockout`: the attention-knockout bench (docs/methods/knockout.md).
//!
//! On structured inputs (a harness task such as `chunk-qa`, or a user's JSON file of segments)
//! it runs, on the same samples in one process:
//! - the dense baseline;
//! - each knockout type (LV, VT, VS) above every cut-off layer `i` (layers `i..L`; `i = 0` is
//!   "all layers", the paper's global setting 2);
//! - each type on a sliding window of `w` layers (the fine-grained setting);
//! - the efficiency policies `early-exit:layer=i` and `frame-local:layers=a-b`, timed against
//!   dense (prefill seconds and KV bytes held, in the same run, interleaved per sample).
//!
//! Scoring: the next-token logits at the end of the prompt rank the candidate answers
//! (accuracy = gold ranked first; chance 1/candidates), plus the gold answer's log-probability
//! among the candidates, a finer signal than accuracy on few samples.
//!
//! Shortcut (exact, tested in frugal-methods/tests/knockout.rs): LV-K only changes question
//! rows, so every LV condition reuses one dense prefill of the tokens before the first question
//! token and recomputes only the question under the knockout. Conditions that are timed never
//! use the shortcut.

use crate::harness::{wilson_interval, RunInfo};
use crate::report::plot_err;
use crate::tasks::{Answer, Sample};
use anyhow::{bail, Context, Result};
use frugal_engine::attention::{AttentionPolicy, Dense};
use frugal_engine::cache::{CachePolicy, FullCache, KvLayout};
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use frugal_engine::structure::{TokenKind, TokenStructure};
use frugal_methods::knockout::Path;
use frugal_methods::{build, PolicySpec};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Which sweeps to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepPlan {
    pub paths: Vec<String>,
    /// Cut-off layers `i` (knockout in layers `i..L`); 0 is "all layers".
    pub cutoffs: Vec<usize>,
    /// Sliding-window width in layers (0: no window sweep) and the step between windows.
    pub window: usize,
    pub window_step: usize,
    /// `early-exit:layer=i` values (timed against dense).
    pub early_exit: Vec<usize>,
    /// `frame-local:layers=a-b` ranges (timed against dense).
    pub frame_local: Vec<(usize, usize)>,
}

/// What a condition is, for tables and heat maps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "sweep")]
pub enum Setting {
    Dense,
    Cutoff {
        path: String,
        from: usize,
    },
    Window {
        path: String,
        from: usize,
        width: usize,
    },
    EarlyExit {
        layer: usize,
    },
    FrameLocal {
        first: usize,
        last: usize,
    },
}

impl Setting {
    pub fn spec(&self) -> String {
        match self {
            Setting::Dense => "full".into(),
            Setting::Cutoff { path, from } => format!("knockout:type={path},from={from}"),
            Setting::Window { path, from, width } => {
                format!("knockout:type={path},from={from},width={width}")
            }
            Setting::EarlyExit { layer } => format!("early-exit:layer={layer}"),
            Setting::FrameLocal { first, last } => format!("frame-local:layers={first}-{last}"),
        }
    }

    /// Timed conditions run a full prefill, never the LV shortcut.
    fn timed(&self) -> bool {
        matches!(
            self,
            Setting::Dense | Setting::EarlyExit { .. } | Setting::FrameLocal { .. }
        )
    }

    fn lv_shortcut(&self) -> bool {
        matches!(self, Setting::Cutoff { path, .. } | Setting::Window { path, .. } if path == "lv")
    }
}

impl SweepPlan {
    /// Every condition, dense first; checked against the model's depth.
    pub fn settings(&self, n_layers: usize) -> Result<Vec<Setting>> {
        let mut out = vec![Setting::Dense];
        for p in &self.paths {
            if Path::parse(p).is_none() {
                bail!("unknown knockout type `{p}` (types: lv, vt, vs)");
            }
        }
        if let Some(i) = self.cutoffs.iter().find(|&&i| i > n_layers) {
            bail!("cut-off layer {i} is past the model's {n_layers} layers");
        }
        if self.window > n_layers {
            bail!(
                "window of {} layers is wider than the model's {n_layers} layers",
                self.window
            );
        }
        for p in &self.paths {
            for &from in &self.cutoffs {
                out.push(Setting::Cutoff {
                    path: p.clone(),
                    from,
                });
            }
            if self.window > 0 {
                let step = self.window_step.max(1);
                let mut from = 0;
                while from + self.window <= n_layers {
                    out.push(Setting::Window {
                        path: p.clone(),
                        from,
                        width: self.window,
                    });
                    from += step;
                }
            }
        }
        for &layer in &self.early_exit {
            out.push(Setting::EarlyExit { layer });
        }
        for &(first, last) in &self.frame_local {
            if first > last {
                bail!("frame-local range {first}-{last} is empty");
            }
            out.push(Setting::FrameLocal { first, last });
        }
        for s in &out {
            let spec: PolicySpec = s.spec().parse()?;
            frugal_methods::validate(&spec)?;
        }
        Ok(out)
    }
}

/// One condition's measurements over all samples.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConditionResult {
    pub policy: String,
    pub setting: Setting,
    pub samples: usize,
    pub accuracy: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Accuracy divided by dense accuracy (the paper's "performance ratio").
    pub relative_accuracy: f64,
    /// Mean log-probability of the gold answer among the candidates.
    pub gold_logprob: f64,
    /// Fraction of samples whose top candidate equals dense's top candidate.
    pub agreement_with_dense: f64,
    /// Timed conditions: mean prefill seconds and its ratio to dense (same samples, same run).
    pub prefill_secs: Option<f64>,
    pub prefill_speedup_vs_dense: Option<f64>,
    /// KV bytes held after the prompt (timed conditions), and the fraction of dense's.
    pub kv_bytes: Option<f64>,
    pub kv_fraction_of_dense: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnockoutReport {
    pub run: RunInfo,
    /// Where the samples came from (task and length, or the input file).
    pub input: String,
    pub n_layers: usize,
    pub plan: SweepPlan,
    pub conditions: Vec<ConditionResult>,
}

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

/// One sample under one condition.
#[derive(Clone, Debug, Default)]
struct Obs {
    correct: bool,
    top: usize,
    gold_logprob: f64,
    prefill_secs: f64,
    kv_bytes: usize,
}

fn score(logits: &[f32], candidates: &[u32], gold: usize) -> (bool, usize, f64) {
    let c: Vec<f64> = candidates
        .iter()
        .map(|&i| logits[i as usize] as f64)
        .collect();
    let max = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + c.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    let top = c
        .iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > c[b] { i } else { b });
    (top == gold, top, c[gold] - lse)
}

/// A full copy of what a cache holds, as a [`FullCache`] (for the LV shortcut).
fn snapshot(cache: &dyn CachePolicy, layout: KvLayout) -> FullCache {
    let mut out = FullCache::new(layout);
    let d = layout.head_dim;
    for layer in 0..layout.n_layers {
        let views: Vec<_> = (0..layout.n_kv_heads)
            .map(|g| cache.view(layer, g))
            .collect();
        let positions = views[0].positions.to_vec();
        let t = positions.len();
        let (mut k, mut v) = (
            vec![0f32; t * layout.n_kv_heads * d],
            vec![0f32; t * layout.n_kv_heads * d],
        );
        for (g, view) in views.iter().enumerate() {
            assert_eq!(
                view.positions.as_ref(),
                positions.as_slice(),
                "dense store: every head holds every token"
            );
            for tok in 0..t {
                let dst = (tok * layout.n_kv_heads + g) * d;
                k[dst..dst + d].copy_from_slice(&view.keys[tok * d..(tok + 1) * d]);
                v[dst..dst + d].copy_from_slice(&view.values[tok * d..(tok + 1) * d]);
            }
        }
        out.store(layer, &positions, &k, &v);
    }
    out
}

fn sequence(spec: &str, layout: KvLayout, structure: &Arc<TokenStructure>) -> Result<Sequence> {
    let mut seq = build(&spec.parse()?, layout)?;
    seq.structure = Some(structure.clone());
    Ok(seq)
}

/// Runs every condition on every sample. `progress(done, total, label)` after each
/// (sample, condition); `interrupted()` stops early (finished samples are kept).
pub fn run_sweeps(
    lm: &LoadedModel,
    samples: &[Sample],
    settings: &[Setting],
    progress: &mut dyn FnMut(u64, u64, &str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Vec<ConditionResult>> {
    let layout = lm.model.config().kv_layout();
    let total = (samples.len() * settings.len()) as u64;
    let mut obs: Vec<Vec<Obs>> = vec![Vec::new(); settings.len()];
    let mut done = 0u64;
    for (si, s) in samples.iter().enumerate() {
        if interrupted() {
            break;
        }
        let Answer::Choice { candidates, gold } = &s.answer else {
            bail!("knockout scores candidate answers; this task's samples have none (use chunk-qa or kv-like choice tasks)");
        };
        let structure = Arc::new(s.structure.clone());
        let q_start = structure
            .per_token()
            .iter()
            .position(|k| k.0 == TokenKind::Question)
            .unwrap_or(s.tokens.len());
        // Dense prefix for the LV shortcut (only when there is something before the question).
        let mut base: Option<FullCache> = None;
        if q_start > 0 && settings.iter().any(Setting::lv_shortcut) {
            let mut seq = Sequence::new(Box::new(FullCache::new(layout)), Box::new(Dense));
            seq.structure = Some(structure.clone());
            lm.model
                .forward(&s.tokens[..q_start], &mut seq, LogitRows::Last)?;
            base = Some(snapshot(&*seq.cache, layout));
        }
        for (ci, setting) in settings.iter().enumerate() {
            let spec = setting.spec();
            let mut o = Obs::default();
            let logits = match (&base, setting.lv_shortcut()) {
                (Some(b), true) => {
                    let attention: Box<dyn AttentionPolicy> =
                        build(&spec.parse()?, layout)?.attention;
                    let mut seq = Sequence::resume(Box::new(b.clone()), attention, q_start);
                    seq.structure = Some(structure.clone());
                    lm.model.last_logits(&s.tokens[q_start..], &mut seq)?
                }
                _ => {
                    let mut seq = sequence(&spec, layout, &structure)?;
                    let t0 = Instant::now();
                    let l = lm.model.last_logits(&s.tokens, &mut seq)?;
                    o.prefill_secs = t0.elapsed().as_secs_f64();
                    o.kv_bytes = seq.cache.resident_bytes();
                    l
                }
            };
            let (correct, top, lp) = score(&logits, candidates, *gold);
            o.correct = correct;
            o.top = top;
            o.gold_logprob = lp;
            obs[ci].push(o);
            done += 1;
            progress(
                done,
                total,
                &format!("sample {}/{} {spec}", si + 1, samples.len()),
            );
        }
    }
    let n = obs[0].len();
    if n == 0 {
        bail!("interrupted before the first sample finished");
    }
    let dense = &obs[0];
    let mean = |v: &[Obs], f: fn(&Obs) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let dense_acc = mean(dense, |o| o.correct as u8 as f64);
    let dense_secs = mean(dense, |o| o.prefill_secs);
    let dense_kv = mean(dense, |o| o.kv_bytes as f64);
    Ok(settings
        .iter()
        .zip(&obs)
        .map(|(setting, v)| {
            let v = &v[..n];
            let k = v.iter().filter(|o| o.correct).count();
            let (lo, hi) = wilson_interval(k, n);
            let acc = k as f64 / n as f64;
            let timed = setting.timed();
            let secs = mean(v, |o| o.prefill_secs);
            let kv = mean(v, |o| o.kv_bytes as f64);
            ConditionResult {
                policy: setting.spec(),
                setting: setting.clone(),
                samples: n,
                accuracy: acc,
                ci_low: lo,
                ci_high: hi,
                relative_accuracy: if dense_acc > 0.0 {
                    acc / dense_acc
                } else {
                    f64::NAN
                },
                gold_logprob: mean(v, |o| o.gold_logprob),
                agreement_with_dense: v.iter().zip(dense).filter(|(a, b)| a.top == b.top).count()
                    as f64
                    / n as f64,
                prefill_secs: timed.then_some(secs),
                prefill_speedup_vs_dense: timed.then_some(dense_secs / secs),
                kv_bytes: timed.then_some(kv),
                kv_fraction_of_dense: timed.then_some(kv / dense_kv),
            }
        })
        .collect())
}

/// The smallest early-exit layer whose accuracy is within `points` percentage points of dense.
pub fn smallest_safe_early_exit(report: &KnockoutReport, points: f64) -> Option<&ConditionResult> {
    let dense = report
        .conditions
        .iter()
        .find(|c| c.setting == Setting::Dense)?
        .accuracy;
    report
        .conditions
        .iter()
        .filter(|c| {
            matches!(c.setting, Setting::EarlyExit { .. })
                && c.accuracy >= dense - points / 100.0 - 1e-12
        })
        .min_by_key(|c| match c.setting {
            Setting::EarlyExit { layer } => layer,
            _ => usize::MAX,
        })
}

pub fn markdown(report: &KnockoutReport) -> String {
    let r = &report.run;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "frugal {} (commit {}), model `{}` (sha256 {}…), input {}, {} samples, seed {}, {} on {} threads, {}\n",
        r.frugal_version,
        r.git_commit,
        r.model,
        &r.model_sha256[..r.model_sha256.len().min(12)],
        report.input,
        r.samples,
        r.seed,
        r.machine,
        r.threads,
        r.date_utc
    );
    let row = |s: &mut String, c: &ConditionResult| {
        let _ = writeln!(
            s,
            "| `{}` | {:.3} | [{:.3}, {:.3}] | {:.3} | {:.3} | {:.2} |",
            c.policy,
            c.accuracy,
            c.ci_low,
            c.ci_high,
            c.relative_accuracy,
            c.gold_logprob,
            c.agreement_with_dense
        );
    };
    let head = "| condition | accuracy | 95% CI | relative to dense | gold log-prob | agrees with dense |\n|---|---:|---|---:|---:|---:|";
    for (title, pick) in [
        (
            "Baseline",
            (|c: &Setting| matches!(c, Setting::Dense)) as fn(&Setting) -> bool,
        ),
        (
            "Cut-off sweep: knockout in layers i..L (i = 0: all layers)",
            |c| matches!(c, Setting::Cutoff { .. }),
        ),
        ("Sliding windows", |c| matches!(c, Setting::Window { .. })),
    ] {
        let cells: Vec<&ConditionResult> = report
            .conditions
            .iter()
            .filter(|c| pick(&c.setting))
            .collect();
        if cells.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n### {title}\n\n{head}");
        cells.into_iter().for_each(|c| row(&mut s, c));
    }
    let timed: Vec<&ConditionResult> = report
        .conditions
        .iter()
        .filter(|c| c.prefill_secs.is_some())
        .collect();
    if timed.len() > 1 {
        let _ = writeln!(
            s,
            "\n### Efficiency policies against dense (same samples, interleaved per sample)\n\n| policy | accuracy | 95% CI | gold log-prob | prefill s (mean) | prefill speed-up | KV MiB held | KV fraction of dense |\n|---|---:|---|---:|---:|---:|---:|---:|"
        );
        for c in timed {
            let _ = writeln!(
                s,
                "| `{}` | {:.3} | [{:.3}, {:.3}] | {:.3} | {:.3} | {:.2}× | {:.2} | {:.3} |",
                c.policy,
                c.accuracy,
                c.ci_low,
                c.ci_high,
                c.gold_logprob,
                c.prefill_secs.unwrap_or(0.0),
                c.prefill_speedup_vs_dense.unwrap_or(0.0),
                c.kv_bytes.unwrap_or(0.0) / 1048576.0,
                c.kv_fraction_of_dense.unwrap_or(0.0)
            );
        }
        let tried = report
            .conditions
            .iter()
            .any(|c| matches!(c.setting, Setting::EarlyExit { .. }));
        match smallest_safe_early_exit(report, 1.0).filter(|_| tried) {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "\nSmallest early-exit layer within 1 point of dense accuracy: `{}`.",
                    c.policy
                );
            }
            None if tried => {
                let _ = writeln!(
                    s,
                    "\nNo early-exit layer tried is within 1 point of dense accuracy."
                );
            }
            None => {}
        }
    }
    s
}

/// Heat maps (type × cut-off layer, type × window start → relative accuracy and Δ gold
/// log-prob) and line plots of the cut-off curves, as PNG and SVG. Returns the files written.
pub fn plots(report: &KnockoutReport, dir: &FsPath) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::report::register_font();
    let dense_lp = report
        .conditions
        .iter()
        .find(|c| c.setting == Setting::Dense)
        .map_or(0.0, |c| c.gold_logprob);
    let mut written = Vec::new();
    for (kind, xlabel) in [
        ("cutoff", "cut-off layer i (knockout in layers i..L)"),
        ("window", "window start layer"),
    ] {
        let cells: Vec<(String, usize, &ConditionResult)> = report
            .conditions
            .iter()
            .filter_map(|c| match &c.setting {
                Setting::Cutoff { path, from } if kind == "cutoff" => {
                    Some((path.clone(), *from, c))
                }
                Setting::Window { path, from, .. } if kind == "window" => {
                    Some((path.clone(), *from, c))
                }
                _ => None,
            })
            .collect();
        if cells.is_empty() {
            continue;
        }
        for (metric, value) in [
            (
                "relacc",
                (|c: &ConditionResult, _d: f64| c.relative_accuracy)
                    as fn(&ConditionResult, f64) -> f64,
            ),
            ("dlogprob", |c, d| c.gold_logprob - d),
        ] {
            let name = format!("knockout_{kind}_{metric}");
            let title = match metric {
                "relacc" => format!("accuracy relative to dense, {kind} sweep"),
                _ => format!("Δ gold log-prob vs dense, {kind} sweep"),
            };
            for ext in ["png", "svg"] {
                let path = dir.join(format!("{name}.{ext}"));
                let data: Vec<(String, usize, f64)> = cells
                    .iter()
                    .map(|(p, x, c)| (p.clone(), *x, value(c, dense_lp)))
                    .collect();
                if ext == "png" {
                    heatmap(
                        BitMapBackend::new(&path, (900, 300)).into_drawing_area(),
                        &title,
                        xlabel,
                        &data,
                        metric == "relacc",
                    )?;
                } else {
                    heatmap(
                        SVGBackend::new(&path, (900, 300)).into_drawing_area(),
                        &title,
                        xlabel,
                        &data,
                        metric == "relacc",
                    )?;
                }
                written.push(path);
            }
        }
    }
    Ok(written)
}

fn heatmap<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    xlabel: &str,
    data: &[(String, usize, f64)],
    ratio: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(plot_err)?;
    let mut xs: Vec<usize> = data.iter().map(|d| d.1).collect();
    xs.sort_unstable();
    xs.dedup();
    let mut ys: Vec<String> = Vec::new();
    for d in data {
        if !ys.contains(&d.0) {
            ys.push(d.0.clone());
        }
    }
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xs.len() as f64, 0f64..ys.len() as f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(xlabel)
        .y_desc("knockout")
        .x_labels(xs.len() * 2 + 1)
        .y_labels(ys.len() * 2 + 1)
        .x_label_formatter(&|v| label_at(*v, &xs.iter().map(|x| x.to_string()).collect::<Vec<_>>()))
        .y_label_formatter(&|v| {
            label_at(
                *v,
                &ys.iter()
                    .map(|p| format!("{}-K", p.to_uppercase()))
                    .collect::<Vec<_>>(),
            )
        })
        .draw()
        .map_err(plot_err)?;
    for (p, x, v) in data {
        let xi = xs.iter().position(|a| a == x).unwrap();
        let yi = ys.iter().position(|a| a == p).unwrap();
        // Green = as good as dense, red = worse: ratio 1 → green, 0 → red; Δlogprob 0 → green, -3 → red.
        let good = if ratio {
            v.clamp(0.0, 1.0)
        } else {
            (1.0 + v / 3.0).clamp(0.0, 1.0)
        };
        let good = if v.is_nan() { 0.5 } else { good };
        let shade = RGBColor(
            (230.0 * (1.0 - good) + 20.0) as u8,
            (200.0 * good + 30.0) as u8,
            60,
        );
        let (x0, y0) = (xi as f64, yi as f64);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                shade.filled(),
            )))
            .map_err(plot_err)?;
        let label = if ratio {
            format!("{v:.2}")
        } else {
            format!("{v:.1}")
        };
        let style = ("sans-serif", 13)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (x0 + 0.5, y0 + 0.5),
                style,
            )))
            .map_err(plot_err)?;
    }
    area.present().map_err(plot_err)?;
    Ok(())
}

/// Axis label for a tick at `v`: the name of the cell whose centre is at `v`, else nothing.
fn label_at(v: f64, names: &[String]) -> String {
    let i = (v - 0.5).round();
    if (v - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_expands_sweeps_and_rejects_bad_layers() {
        let plan = SweepPlan {
            paths: vec!["lv".into(), "vt".into()],
            cutoffs: vec![0, 10, 30],
            window: 4,
            window_step: 4,
            early_exit: vec![8],
            frame_local: vec![(0, 29)],
        };
        let s = plan.settings(30).unwrap();
        // dense + 2 × (3 cut-offs + 7 windows) + 1 + 1
        assert_eq!(s.len(), 1 + 2 * (3 + 7) + 2);
        assert_eq!(s[0].spec(), "full");
        assert!(s.contains(&Setting::Window {
            path: "vt".into(),
            from: 24,
            width: 4
        }));
        assert!(s[1].lv_shortcut() && !s[1].timed());
        let mut bad = plan.clone();
        bad.cutoffs = vec![31];
        assert!(bad
            .settings(30)
            .unwrap_err()
            .to_string()
            .contains("past the model's 30 layers"));
        bad = plan.clone();
        bad.paths = vec!["xx".into()];
        assert!(bad
            .settings(30)
            .unwrap_err()
            .to_string()
            .contains("unknown knockout type"));
    }

    #[test]
    fn candidate_scoring() {
        let logits = vec![0.0, 2.0, 1.0, 5.0];
        let (ok, top, lp) = score(&logits, &[1, 2], 0);
        assert!(ok && top == 0);
        assert!((lp - (2.0 - (2f64.exp() + 1f64.exp()).ln())).abs() < 1e-9);
    }
}
