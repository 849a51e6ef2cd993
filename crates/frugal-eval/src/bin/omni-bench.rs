//! OmniSparse prefill speed benchmark (issue 5 items 4 and 8): dense vs sparse attention on
//! the same q/K/V in the same run, probe+selection cost apart, and end-to-end prefill with the
//! attention share.
//!
//! `omni-bench [--threads 2] [--lengths 4096,8192] [--samples 1] [--e2e-reps 0] SPEC…`
//!
//! For each length, the prompts are the harness's passkey samples (real text, seed 0). First
//! `full` runs (end-to-end prefill time, its attention-kernel time). Then each SPEC runs under
//! a wrapper policy that, at every layer, first runs the dense kernel on exactly the step's
//! q/K/V (timed: `dense_attn_s`), then the spec's own plan (timed: `plan_s` = probe +
//! selection + lazy test) and its kernel (`kernel_s`). The spec's end-to-end prefill time is
//! the wrapped run's wall time minus the dense kernel time the wrapper added. One JSON line per
//! (length, spec) on stdout. With `--e2e-reps N`, a second line per spec: unwrapped `full` and
//! the spec alternate N times each on the first prompt, and the minimum wall times give the
//! end-to-end speedup, the attention share and the Amdahl limit from those same runs.

use anyhow::{Context, Result};
use clap::Parser;
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, StepContext, STEP_TIMES};
use frugal_engine::fetch::{ensure_model, DEFAULT_MODEL};
use frugal_engine::model::llama::{LogitRows, WeightFormat};
use frugal_engine::model::{self, LoadedModel};
use frugal_eval::corpus::{ensure_corpus, load_speeches, SOTU};
use frugal_eval::tasks::{generate_samples, TaskKind};
use frugal_numerics::attention::{causal_attention, AttentionShape, KeyMask, KvSlices};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
        &'a self,
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
}

/// Dense against sparse attention on the same inputs, layer by layer (module doc).
#[derive(Parser)]
#[command(name = "omni-bench")]
struct Args {
    /// Worker threads (rayon) for every run.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Prompt lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4096,8192")]
    lengths: Vec<usize>,
    /// Prompts per length (passkey samples, seed 0).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Unwrapped full/spec alternations for the end-to-end line (0 = none).
    #[arg(long = "e2e-reps", default_value_t = 0)]
    e2e_reps: usize,
    /// Policy specs to compare with `full`, e.g. `omnisparse:tau=0.99,share=4`.
    #[arg(required = true)]
    specs: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Every spec is checked before the model loads, so a typo fails at once.
    for spec in &args.specs {
        frugal_methods::validate(&spec.parse().with_context(|| format!("spec {spec}"))?)
            .with_context(|| format!("spec {spec}"))?;
    }
    let (threads, lengths, samples, reps, specs) = (
        args.threads,
        args.lengths,
        args.samples,
        args.e2e_reps,
        args.specs,
    );
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
    let path = ensure_model(&DEFAULT_MODEL, &mut |m| eprintln!("{m}"))?;
    let lm: LoadedModel = model::load(&path, WeightFormat::Native)?;
    let speeches = load_speeches(&ensure_corpus(&SOTU, &mut |m| eprintln!("{m}"))?)?;
    let text = frugal_eval::load_task_text(&lm, &speeches)?;
    let layout = lm.model.config().kv_layout();

    for &length in &lengths {
        let prompts = generate_samples(TaskKind::Passkey, &lm, &text, length, samples, 0, &[0.5])?;
        // Dense reference: end-to-end and kernel time.
        let (mut full_wall, mut full_kernel) = (0.0, 0.0);
        for s in &prompts {
            let mut seq = frugal_methods::build(&"full".parse()?, layout)?;
            STEP_TIMES.reset();
            let t0 = Instant::now();
            lm.model.forward(&s.tokens, &mut seq, LogitRows::Last)?;
            full_wall += t0.elapsed().as_secs_f64();
            full_kernel += STEP_TIMES.get().1;
        }
        println!(
            "{{\"length\":{length},\"tokens\":{},\"spec\":\"full\",\"threads\":{threads},\"prefill_s\":{full_wall:.3},\"attn_s\":{full_kernel:.3},\"attn_share\":{:.3}}}",
            prompts[0].tokens.len(),
            full_kernel / full_wall
        );
        for spec in &specs {
            let (mut wall, mut dense, mut plan, mut kernel) = (0.0, 0.0, 0.0, 0.0);
            let mut report = None;
            for s in &prompts {
                let mut seq = frugal_methods::build(
                    &spec.parse().with_context(|| format!("spec {spec}"))?,
                    layout,
                )?;
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
                report = seq.attention.report();
            }
            println!(
                "{{\"length\":{length},\"spec\":\"{spec}\",\"threads\":{threads},\"prefill_s\":{wall:.3},\"e2e_speedup_vs_full\":{:.3},\"dense_attn_same_inputs_s\":{dense:.3},\"plan_s\":{plan:.3},\"sparse_kernel_s\":{kernel:.3},\"attn_speedup_kernel_only\":{:.3},\"attn_speedup_with_plan\":{:.3},\"amdahl_limit_at_this_attn_speedup\":{:.3},\"report\":{}}}",
                full_wall / wall,
                dense / kernel,
                dense / (kernel + plan),
                1.0 / ((1.0 - full_kernel / full_wall) + full_kernel / full_wall * (kernel + plan) / dense),
                report.unwrap_or_else(|| "null".into())
            );
            if reps > 0 {
                // End to end without the wrapper: full and the spec alternate on the first
                // prompt, `reps` times each; the minimum of each is the least load-disturbed.
                let s = &prompts[0];
                let run = |spec: &str| -> Result<(f64, f64)> {
                    let mut seq = frugal_methods::build(
                        &spec.parse().with_context(|| format!("spec {spec}"))?,
                        layout,
                    )?;
                    seq.structure = Some(Arc::new(s.structure.clone()));
                    STEP_TIMES.reset();
                    let t0 = Instant::now();
                    lm.model.forward(&s.tokens, &mut seq, LogitRows::Last)?;
                    let (p, k, _) = STEP_TIMES.get();
                    Ok((t0.elapsed().as_secs_f64(), p + k))
                };
                let (mut f_min, mut s_min) = ((f64::MAX, 0.0), (f64::MAX, 0.0));
                for _ in 0..reps {
                    let f = run("full")?;
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
                println!(
                    "{{\"length\":{length},\"spec\":\"{spec}\",\"threads\":{threads},\"e2e_reps\":{reps},\"full_min_s\":{:.3},\"full_attn_s\":{:.3},\"attn_share\":{share:.3},\"spec_min_s\":{:.3},\"spec_attn_s\":{:.3},\"attn_speedup_unwrapped\":{attn_speedup:.3},\"e2e_speedup_min\":{:.3},\"amdahl_at_unwrapped_attn_speedup\":{:.3},\"amdahl_free_attention\":{:.3}}}",
                    f_min.0,
                    f_min.1,
                    s_min.0,
                    s_min.1,
                    f_min.0 / s_min.0,
                    1.0 / ((1.0 - share) + share / attn_speedup),
                    1.0 / (1.0 - share),
                );
            }
        }
    }
    Ok(())
}
