//! The attention step and the attention-policy interface.
//!
//! An [`AttentionPolicy`] decides, per layer, which (query, key) paths exist beyond causality.
//! The step itself gathers one [`KvSlices`] view per KV head from the cache policy and runs the
//! numerics kernel, so every policy shares one kernel and the dense path stays the reference.

use crate::cache::{CachePolicy, HeadView, PatchView};
use crate::structure::TokenStructure;
use frugal_numerics::attention::{causal_attention, AttentionShape, KeyMask, KvSlices};
use frugal_numerics::block_sparse::Fp8Opts;
use frugal_numerics::fps_attention::{fps_attention, CausalBlockWindow};
use frugal_numerics::half_attention::{causal_attention_half, HalfKv};
use frugal_numerics::sparse_attention::{sparse_attention, SparsePlan};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What a policy may look at when deciding a layer's attention paths.
#[derive(Clone, Copy, Debug)]
pub struct StepContext<'a> {
    pub layer: usize,
    pub n_layers: usize,
    /// Kind and chunk of every token of the input, when the caller provided them.
    pub structure: Option<&'a TokenStructure>,
    /// The layer's sliding window in tokens (Gemma 3's local layers), `None` for global
    /// attention: a query at position `p` sees only keys at `p - window + 1 ..= p`. The step
    /// enforces it whatever the policy plans (see [`attention_step`]); a policy may read it
    /// to plan within the window.
    pub window: Option<usize>,
    /// Sequences whose steps run side by side in this forward call (1: this one alone). A
    /// kernel splits its own work over the thread pool only when alone: in a batch the caller
    /// already spreads the sequences over the pool, and tasks split further only add
    /// hand-offs.
    pub sequences_in_step: usize,
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
    /// Whether this policy computes every causal path with no planning of its own (only
    /// [`Dense`]): the step may then run the dense kernel straight on an f16 store's rows.
    fn is_dense(&self) -> bool {
        false
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
    fn is_dense(&self) -> bool {
        true
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
///
/// On a sliding-window layer (`ctx.window`) the policy plans over the views trimmed to the
/// keys the call's first query can see; a masking plan gets the window added to its mask
/// (exact for every query), and any other plan runs as is when every key it is handed lies
/// inside every query's window (always so for one decode token), otherwise once per query row
/// on views trimmed to that row's window (exact, slower; only multi-token calls on a layer
/// whose held keys reach past the window take this path).
pub fn attention_step(
    ctx: &StepContext<'_>,
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    cache: &mut dyn CachePolicy,
    policy: &mut dyn AttentionPolicy,
) -> Vec<f32> {
    if let Some(out) = dense_on_half_rows(ctx, q, positions, shape, cache, policy) {
        return out;
    }
    let out = {
        let cache: &dyn CachePolicy = cache;
        let views: Vec<HeadView<'_>> = (0..shape.n_kv_heads)
            .into_par_iter()
            .map(|g| cache.view(ctx.layer, g))
            .collect();
        run_step(ctx, q, positions, shape, &views, policy)
    };
    if let Some(findings) = policy.take_findings() {
        cache.observe(ctx.layer, findings);
    }
    out
}

/// Query rows up to which a dense step over an f16 store reads the rows in place (decode
/// steps, short chunks); longer calls decode the rows once for the blocked kernel, whose GEMMs
/// reuse each row across many queries (ours, a threshold where both cost about the same).
pub const HALF_ROWS_MAX_QUERIES: usize = 16;

/// The dense step on the store's own f16 rows, when the policy is [`Dense`], every head
/// holds f16 rows and the call is short; on a sliding-window layer only a single query
/// (its window is one cut of the keys). `None` leaves the step to the general path.
fn dense_on_half_rows(
    ctx: &StepContext<'_>,
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    cache: &dyn CachePolicy,
    policy: &dyn AttentionPolicy,
) -> Option<Vec<f32>> {
    if !policy.is_dense() || positions.is_empty() || positions.len() > HALF_ROWS_MAX_QUERIES {
        return None;
    }
    let first_visible = match ctx.window {
        None => 0,
        Some(w) if positions.len() == 1 => (positions[0] + 1).saturating_sub(w as u32),
        Some(_) => return None,
    };
    let d = shape.head_dim;
    let mut heads = Vec::with_capacity(shape.n_kv_heads);
    for g in 0..shape.n_kv_heads {
        let h = cache.half_rows(ctx.layer, g)?;
        let s = h.positions.partition_point(|&p| p < first_visible);
        heads.push(HalfKv {
            keys: &h.keys[s * d..],
            values: &h.values[s * d..],
            positions: &h.positions[s..],
        });
    }
    let t1 = Instant::now();
    let out = causal_attention_half(q, positions, &heads, shape, ctx.sequences_in_step <= 1);
    STEP_TIMES
        .kernel_ns
        .fetch_add(t1.elapsed().as_nanos() as u64, Ordering::Relaxed);
    STEP_TIMES.steps.fetch_add(1, Ordering::Relaxed);
    Some(out)
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
    let Some(window) = ctx.window.filter(|_| !positions.is_empty()) else {
        let slices: Vec<KvSlices<'_>> = views.iter().map(HeadView::slices).collect();
        return planned_step(ctx, q, positions, shape, &slices, policy);
    };
    let first_visible = |p: u32| (p + 1).saturating_sub(window as u32);
    let lo = positions.iter().copied().min().map_or(0, first_visible);
    let hi = positions.iter().copied().max().map_or(0, first_visible);
    let trimmed: Vec<HeadView<'_>> = views.iter().map(|v| trim_view(v, lo)).collect();
    let slices: Vec<KvSlices<'_>> = trimmed.iter().map(HeadView::slices).collect();
    let all_visible = slices
        .iter()
        .all(|s| s.positions.first().is_none_or(|&p| p >= hi));
    if all_visible {
        return planned_step(ctx, q, positions, shape, &slices, policy);
    }
    let window_mask = SlidingWindow(window as u32);
    let t0 = Instant::now();
    let plan = policy.plan(ctx, q, positions, shape, &slices);
    if let AttentionPlan::Mask(mask) = plan {
        let both = BothMasks(&window_mask, mask.as_deref());
        let plan = AttentionPlan::Mask(Some(Box::new(both)));
        return run_plan(&plan, q, positions, shape, &slices, t0, Instant::now());
    }
    drop(plan);
    // Row by row: each query planned and run on exactly its own window.
    let row = shape.n_heads * shape.head_dim;
    let mut out = Vec::with_capacity(q.len());
    for (i, &p) in positions.iter().enumerate() {
        let own: Vec<HeadView<'_>> = trimmed
            .iter()
            .map(|v| trim_view(v, first_visible(p)))
            .collect();
        let own: Vec<KvSlices<'_>> = own.iter().map(HeadView::slices).collect();
        out.extend(planned_step(
            ctx,
            &q[i * row..(i + 1) * row],
            &positions[i..i + 1],
            shape,
            &own,
            policy,
        ));
    }
    out
}

/// Plans with the policy and runs the plan's kernel, timing both.
fn planned_step(
    ctx: &StepContext<'_>,
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    slices: &[KvSlices<'_>],
    policy: &mut dyn AttentionPolicy,
) -> Vec<f32> {
    let t0 = Instant::now();
    let plan = policy.plan(ctx, q, positions, shape, slices);
    let t1 = Instant::now();
    run_plan(&plan, q, positions, shape, slices, t0, t1)
}

fn run_plan(
    plan: &AttentionPlan<'_>,
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    slices: &[KvSlices<'_>],
    t0: Instant,
    t1: Instant,
) -> Vec<f32> {
    let out = match plan {
        AttentionPlan::Mask(mask) => causal_attention(q, positions, slices, shape, mask.as_deref()),
        AttentionPlan::Sparse(sparse) => sparse_attention(q, positions, slices, shape, sparse),
        AttentionPlan::BlockWindow { window, fp8 } => {
            fps_attention(q, positions, slices, shape, window, fp8.as_ref())
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

/// A key is visible when it lies in the query's sliding window.
struct SlidingWindow(u32);

impl KeyMask for SlidingWindow {
    fn allows(&self, _q_head: usize, q_pos: u32, k_pos: u32) -> bool {
        k_pos + self.0 > q_pos
    }
}

/// The window and the policy's own mask together.
struct BothMasks<'m>(&'m SlidingWindow, Option<&'m dyn KeyMask>);

impl KeyMask for BothMasks<'_> {
    fn allows(&self, q_head: usize, q_pos: u32, k_pos: u32) -> bool {
        self.0.allows(q_head, q_pos, k_pos) && self.1.is_none_or(|m| m.allows(q_head, q_pos, k_pos))
    }
}

/// The rows of `view` at positions `>= first` (positions are ascending), borrowing where the
/// view borrows; per-row scales and row patches follow their rows.
fn trim_view<'a>(view: &'a HeadView<'_>, first: u32) -> HeadView<'a> {
    let s = view.positions.partition_point(|&p| p < first);
    let d = view
        .keys
        .len()
        .checked_div(view.positions.len())
        .unwrap_or(0);
    let patch = |p: &'a Option<PatchView<'_>>| {
        p.as_ref().map(|(rows, data)| {
            if s == 0 {
                return (Cow::Borrowed(&rows[..]), Cow::Borrowed(&data[..]));
            }
            let (mut r, mut x) = (Vec::new(), Vec::new());
            for (i, &row) in rows.iter().enumerate() {
                if row as usize >= s {
                    r.push(row - s as u32);
                    x.extend_from_slice(&data[i * d..(i + 1) * d]);
                }
            }
            (Cow::Owned(r), Cow::Owned(x))
        })
    };
    HeadView {
        keys: Cow::Borrowed(&view.keys[s * d..]),
        values: Cow::Borrowed(&view.values[s * d..]),
        positions: Cow::Borrowed(&view.positions[s..]),
        key_scale: view.key_scale.as_ref().map(|x| Cow::Borrowed(&x[s..])),
        value_scale: view.value_scale.as_ref().map(|x| Cow::Borrowed(&x[s..])),
        key_patch: patch(&view.key_patch),
        value_patch: patch(&view.value_patch),
    }
}
