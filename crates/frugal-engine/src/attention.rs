//! The attention step and the attention-policy interface.
//!
//! An [`AttentionPolicy`] decides, per layer, which (query, key) paths exist beyond causality.
//! The step itself gathers one [`KvSlices`] view per KV head from the cache policy and runs the
//! numerics kernel, so every policy shares one kernel and the dense path stays the reference.

use crate::cache::{CachePolicy, HeadView};
use crate::structure::TokenStructure;
use frugal_numerics::attention::{causal_attention, AttentionShape, KeyMask, KvSlices};
use frugal_numerics::block_sparse::Fp8Opts;
use frugal_numerics::fps_attention::{fps_attention, CausalBlockWindow};
use frugal_numerics::sparse_attention::{sparse_attention, SparsePlan};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What a policy may look at when deciding a layer's attention paths.
#[derive(Clone, Copy, Debug)]
pub struct StepContext<'a> {
    pub layer: usize,
    pub n_layers: usize,
    /// Kind and chunk of every token of the input, when the caller provided them.
    pub structure: Option<&'a TokenStructure>,
}

/// What an attention policy saw in one layer's step that its cache policy acts on (e.g. which
/// keys the queries ignored): taken from [`AttentionPolicy::take_findings`] after the kernel
/// and handed to [`CachePolicy::observe`]. The one sanctioned path between the two halves of a
/// method, so no policy needs shared state behind a lock; the concrete type is private to the
/// method that sends and receives it.
pub type Findings = Box<dyn std::any::Any + Send>;

/// Decides which attention paths each layer computes.
pub trait AttentionPolicy: Send + Sync {
    /// The policy spec, e.g. `dense`.
    fn name(&self) -> String;
    /// Extra restriction on top of causality for this step; `None` means every causal path.
    fn mask<'a>(&'a self, ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>>;
    /// The work of this step, decided from the step's own queries and keys (OmniSparse probes
    /// them). The default wraps [`AttentionPolicy::mask`], so mask-only policies need nothing
    /// more and the dense path runs the dense kernel exactly as before. Time spent here is
    /// counted as planning (probe + selection) in [`STEP_TIMES`], apart from the kernel.
    fn plan<'a>(
        &'a mut self,
        ctx: &StepContext<'a>,
        _q: &[f32],
        _positions: &[u32],
        _shape: AttentionShape,
        _kv: &[KvSlices<'_>],
    ) -> AttentionPlan<'a> {
        AttentionPlan::Mask(self.mask(ctx))
    }
    /// What this step's plan found for the cache policy (see [`Findings`]); `None` for
    /// policies whose cache needs nothing from attention.
    fn take_findings(&mut self) -> Option<Findings> {
        None
    }
    /// Forgets what it gathered (a new sequence starts).
    fn reset(&mut self) {}
    /// Statistics the policy gathered so far (e.g. OmniSparse's budgets and kept fractions),
    /// as one line of JSON; `None` for policies with nothing to report.
    fn report(&self) -> Option<String> {
        None
    }
    /// Which of this call's still-computed tokens (at `positions`, ascending) are computed in
    /// `ctx.layer`; `None` (the default) computes all of them. A token left out exits the
    /// network at this layer: its K/V are not stored here or in any later layer, none of its
    /// later attention or MLP work is done, and its output row is its hidden state entering
    /// this layer. The forward pass never asks again about a token that exited (early exit of
    /// context tokens, docs/methods/knockout.md).
    fn computed_rows(&self, _ctx: &StepContext<'_>, _positions: &[u32]) -> Option<Vec<bool>> {
        None
    }
}

/// Every causal path in every layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dense;

impl AttentionPolicy for Dense {
    fn name(&self) -> String {
        "dense".into()
    }
    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        None
    }
}

/// What one attention step computes.
pub enum AttentionPlan<'a> {
    /// Every causal path the mask allows (`None`: every causal path), dense kernel.
    Mask(Option<Box<dyn KeyMask + 'a>>),
    /// Per-(KV head, query block) key lists and computed queries, sparse kernel.
    Sparse(SparsePlan),
    /// A causal block window with optional FP8 fake quantisation (FPSAttention's CPU
    /// emulation, `frugal_numerics::fps_attention`).
    BlockWindow {
        window: CausalBlockWindow,
        fp8: Option<Fp8Opts>,
    },
}

/// Time spent in attention steps since the last [`StepTimes::reset`], process-wide: planning
/// (the policy's `plan`: probes, selection) apart from the kernel. For benchmarks, which run
/// one sequence at a time; concurrent sequences add up.
pub struct StepTimes {
    plan_ns: AtomicU64,
    kernel_ns: AtomicU64,
    steps: AtomicU64,
}

pub static STEP_TIMES: StepTimes = StepTimes {
    plan_ns: AtomicU64::new(0),
    kernel_ns: AtomicU64::new(0),
    steps: AtomicU64::new(0),
};

impl StepTimes {
    pub fn reset(&self) {
        self.plan_ns.store(0, Ordering::Relaxed);
        self.kernel_ns.store(0, Ordering::Relaxed);
        self.steps.store(0, Ordering::Relaxed);
    }
    /// (planning seconds, kernel seconds, attention steps).
    pub fn get(&self) -> (f64, f64, u64) {
        (
            self.plan_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            self.kernel_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            self.steps.load(Ordering::Relaxed),
        )
    }
}

/// Runs attention for `ctx.layer`: `q` is `[T, n_heads, head_dim]` (RoPE applied) at `positions`.
pub fn attention_step(
    ctx: &StepContext<'_>,
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    cache: &mut dyn CachePolicy,
    policy: &mut dyn AttentionPolicy,
) -> Vec<f32> {
    let out = {
        let cache: &dyn CachePolicy = cache;
        let views: Vec<HeadView<'_>> = (0..shape.n_kv_heads)
            .map(|g| cache.view(ctx.layer, g))
            .collect();
        run_step(ctx, q, positions, shape, &views, policy)
    };
    if let Some(findings) = policy.take_findings() {
        cache.observe(ctx.layer, findings);
    }
    out
}

/// Plans and runs one step over the cache's views, timing planning and kernel apart.
fn run_step(
    ctx: &StepContext<'_>,
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    views: &[HeadView<'_>],
    policy: &mut dyn AttentionPolicy,
) -> Vec<f32> {
    let slices: Vec<KvSlices<'_>> = views.iter().map(HeadView::slices).collect();
    let t0 = Instant::now();
    let plan = policy.plan(ctx, q, positions, shape, &slices);
    let t1 = Instant::now();
    let out = match &plan {
        AttentionPlan::Mask(mask) => {
            causal_attention(q, positions, &slices, shape, mask.as_deref())
        }
        AttentionPlan::Sparse(sparse) => sparse_attention(q, positions, &slices, shape, sparse),
        AttentionPlan::BlockWindow { window, fp8 } => {
            fps_attention(q, positions, &slices, shape, window, fp8.as_ref())
        }
    };
    let t2 = Instant::now();
    STEP_TIMES
        .plan_ns
        .fetch_add((t1 - t0).as_nanos() as u64, Ordering::Relaxed);
    STEP_TIMES
        .kernel_ns
        .fetch_add((t2 - t1).as_nanos() as u64, Ordering::Relaxed);
    STEP_TIMES.steps.fetch_add(1, Ordering::Relaxed);
    out
}
