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
use crate::plot::{save, Grid, GridCell};
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

mod input;
mod report;
mod run;

pub use input::*;
pub use report::*;
pub use run::*;

#[cfg(test)]
mod tests {
    use super::run::score;
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
