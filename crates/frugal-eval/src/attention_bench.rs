//! The attention step of a policy against the dense kernel on the same q/K/V, layer by layer
//! (`frugal bench --attention-step`).
//!
//! For each length the prompts are the harness's passkey samples (real text, seed 0). First
//! `full` runs (end-to-end prefill time, its attention-kernel time). Then each policy runs under
//! a wrapper that, at every layer, first runs the dense kernel on exactly the step's q/K/V
//! (timed: `dense_attn_same_inputs_s`), then the policy's own plan (timed: `plan_s` = probe +
//! selection + lazy test) and its kernel (`sparse_kernel_s`). The policy's end-to-end prefill
//! time is the wrapped run's wall time minus the dense kernel time the wrapper added. With
//! `e2e_reps = N`, unwrapped `full` and the policy also alternate N times each on the first
//! prompt, and the minimum wall times give the end-to-end speed-up, the attention share and
//! the Amdahl limit from those same runs.

use crate::tasks::{generate_samples, TaskKind, TaskText};
use anyhow::Result;
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, StepContext, STEP_TIMES};
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_methods::PolicySpec;
use frugal_numerics::attention::{causal_attention, AttentionShape, KeyMask, KvSlices};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct AttentionBenchConfig {
    pub lengths: Vec<usize>,
    /// Prompts per length.
    pub samples: usize,
    /// Unwrapped full/policy alternations for the end-to-end line (0 = none).
    pub e2e_reps: usize,
    pub threads: usize,
}

/// One line of the report; `serde(untagged)` keeps the three shapes of the original JSON lines.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum AttentionBenchLine {
    Full(FullLine),
    Policy(PolicyLine),
    EndToEnd(EndToEndLine),
}

#[derive(Clone, Debug, Serialize)]
pub struct FullLine {
    pub length: usize,
    pub tokens: usize,
    pub spec: String,
    pub threads: usize,
    pub prefill_s: f64,
    pub attn_s: f64,
    pub attn_share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyLine {
    pub length: usize,
    pub spec: String,
    pub threads: usize,
    pub prefill_s: f64,
    pub e2e_speedup_vs_full: f64,
    pub dense_attn_same_inputs_s: f64,
    pub plan_s: f64,
    pub sparse_kernel_s: f64,
    pub attn_speedup_kernel_only: f64,
    pub attn_speedup_with_plan: f64,
    pub amdahl_limit_at_this_attn_speedup: f64,
    /// The policy's own statistics (its `report()`), when it keeps any.
    pub report: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndToEndLine {
    pub length: usize,
    pub spec: String,
    pub threads: usize,
    pub e2e_reps: usize,
    pub full_min_s: f64,
    pub full_attn_s: f64,
    pub attn_share: f64,
    pub spec_min_s: f64,
    pub spec_attn_s: f64,
    pub attn_speedup_unwrapped: f64,
    pub e2e_speedup_min: f64,
    pub amdahl_at_unwrapped_attn_speedup: f64,
    pub amdahl_free_attention: f64,
}

/// Runs the dense kernel on the step's own inputs before the wrapped policy's plan.
struct SameInputs {
    inner: Box<dyn AttentionPolicy>,
    dense_ns: Arc<AtomicU64>,
    plan_ns: Arc<AtomicU64>,
}

impl AttentionPolicy for SameInputs {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn mask<'a>(&'a self, ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        self.inner.mask(ctx)
    }
    fn plan<'a>(
        &'a mut self,
        ctx: &StepContext<'a>,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) -> AttentionPlan<'a> {
        let t0 = Instant::now();
        std::hint::black_box(causal_attention(q, positions, kv, shape, None));
        let t1 = Instant::now();
        let plan = self.inner.plan(ctx, q, positions, shape, kv);
        self.dense_ns
            .fetch_add((t1 - t0).as_nanos() as u64, Ordering::Relaxed);
        self.plan_ns
            .fetch_add(t1.elapsed().as_nanos() as u64, Ordering::Relaxed);
        plan
    }
    fn report(&self) -> Option<String> {
        self.inner.report()
    }
    fn take_findings(&mut self) -> Option<frugal_engine::attention::Findings> {
        self.inner.take_findings()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn computed_rows(&self, ctx: &StepContext<'_>, positions: &[u32]) -> Option<Vec<bool>> {
        self.inner.computed_rows(ctx, positions)
    }
}

/// Runs the benchmark, handing each line to `emit` as soon as it is measured.
pub fn run(
    lm: &LoadedModel,
    text: &TaskText,
    specs: &[PolicySpec],
    cfg: &AttentionBenchConfig,
    emit: &mut dyn FnMut(AttentionBenchLine) -> Result<()>,
) -> Result<()> {
    let layout = lm.model.config().kv_layout();
    let full: PolicySpec = "full".parse()?;
    let threads = cfg.threads;
    for &length in &cfg.lengths {
        let prompts =
            generate_samples(TaskKind::Passkey, lm, text, length, cfg.samples, 0, &[0.5])?;
        let (mut full_wall, mut full_kernel) = (0.0, 0.0);
        for s in &prompts {
            let mut seq = frugal_methods::build(&full, layout)?;
            STEP_TIMES.reset();
            let t0 = Instant::now();
            lm.model.forward(&s.tokens, &mut seq, LogitRows::Last)?;
            full_wall += t0.elapsed().as_secs_f64();
            full_kernel += STEP_TIMES.get().1;
        }
        emit(AttentionBenchLine::Full(FullLine {
            length,
            tokens: prompts[0].tokens.len(),
            spec: "full".into(),
            threads,
            prefill_s: full_wall,
            attn_s: full_kernel,
            attn_share: full_kernel / full_wall,
        }))?;
        for spec in specs {
            let (mut wall, mut dense, mut plan, mut kernel) = (0.0, 0.0, 0.0, 0.0);
            let mut report = None;
            for s in &prompts {
                let mut seq = frugal_methods::build(spec, layout)?;
                let dense_ns = Arc::new(AtomicU64::new(0));
                let plan_ns = Arc::new(AtomicU64::new(0));
                let inner = std::mem::replace(
                    &mut seq.attention,
                    Box::new(frugal_engine::attention::Dense),
                );
                seq.attention = Box::new(SameInputs {
                    inner,
                    dense_ns: dense_ns.clone(),
                    plan_ns: plan_ns.clone(),
                });
                seq.structure = Some(Arc::new(s.structure.clone()));
                STEP_TIMES.reset();
                let t0 = Instant::now();
                lm.model.forward(&s.tokens, &mut seq, LogitRows::Last)?;
                let d = dense_ns.load(Ordering::Relaxed) as f64 * 1e-9;
                wall += t0.elapsed().as_secs_f64() - d;
                dense += d;
                plan += plan_ns.load(Ordering::Relaxed) as f64 * 1e-9;
                kernel += STEP_TIMES.get().1;
                report = seq.report();
            }
            let share = full_kernel / full_wall;
            emit(AttentionBenchLine::Policy(PolicyLine {
                length,
                spec: spec.to_string(),
                threads,
                prefill_s: wall,
                e2e_speedup_vs_full: full_wall / wall,
                dense_attn_same_inputs_s: dense,
                plan_s: plan,
                sparse_kernel_s: kernel,
                attn_speedup_kernel_only: dense / kernel,
                attn_speedup_with_plan: dense / (kernel + plan),
                amdahl_limit_at_this_attn_speedup: 1.0
                    / ((1.0 - share) + share * (kernel + plan) / dense),
                report: report.and_then(|r| serde_json::from_str(&r).ok()),
            }))?;
            if cfg.e2e_reps > 0 {
                emit(AttentionBenchLine::EndToEnd(end_to_end(
                    lm,
                    &prompts[0],
                    spec,
                    length,
                    cfg,
                )?))?;
            }
        }
    }
    Ok(())
}

/// Full and the policy alternate on one prompt, unwrapped, `e2e_reps` times each; the minimum
/// of each is the least load-disturbed.
fn end_to_end(
    lm: &LoadedModel,
    s: &crate::tasks::Sample,
    spec: &PolicySpec,
    length: usize,
    cfg: &AttentionBenchConfig,
) -> Result<EndToEndLine> {
    let layout = lm.model.config().kv_layout();
    let full: PolicySpec = "full".parse()?;
    let run = |spec: &PolicySpec| -> Result<(f64, f64)> {
        let mut seq = frugal_methods::build(spec, layout)?;
        seq.structure = Some(Arc::new(s.structure.clone()));
        STEP_TIMES.reset();
        let t0 = Instant::now();
        lm.model.forward(&s.tokens, &mut seq, LogitRows::Last)?;
        let (p, k, _) = STEP_TIMES.get();
        Ok((t0.elapsed().as_secs_f64(), p + k))
    };
    let (mut f_min, mut s_min) = ((f64::MAX, 0.0), (f64::MAX, 0.0));
    for _ in 0..cfg.e2e_reps {
        let f = run(&full)?;
        if f.0 < f_min.0 {
            f_min = f;
        }
        let x = run(spec)?;
        if x.0 < s_min.0 {
            s_min = x;
        }
    }
    let share = f_min.1 / f_min.0;
    let attn_speedup = f_min.1 / s_min.1;
    Ok(EndToEndLine {
        length,
        spec: spec.to_string(),
        threads: cfg.threads,
        e2e_reps: cfg.e2e_reps,
        full_min_s: f_min.0,
        full_attn_s: f_min.1,
        attn_share: share,
        spec_min_s: s_min.0,
        spec_attn_s: s_min.1,
        attn_speedup_unwrapped: attn_speedup,
        e2e_speedup_min: f_min.0 / s_min.0,
        amdahl_at_unwrapped_attn_speedup: 1.0 / ((1.0 - share) + share / attn_speedup),
        amdahl_free_attention: 1.0 / (1.0 - share),
    })
}
