//! OmniSparse, **training-free variant** (docs/methods/omnisparse.md; arXiv 2511.12201).
//! The paper fine-tunes the model with its sparse pattern switched on; nothing here trains —
//! this is the same mechanics applied to a frozen model, an ablation of the paper's method,
//! not the method itself. The paper's equations are unavailable: every rule below follows the
//! formalisation in docs/methods/omnisparse.md and every choice is a knob, marked **[ours]** where the paper
//! is silent.
//!
//! Three axes:
//! 1. **KV selection, shared head-level budget** (prefill). Per layer and planning group of
//!    `share` query blocks of 64 tokens (default one block — sharing is [ours]): `probe`
//!    queries of the group (the last one and a stride through it — [ours]) attend to every
//!    visible key; per KV head, column importance `s_g(j)` = mean over probe tokens of
//!    the group's query heads' probabilities combined by `agg` (sum or max — paper unknown);
//!    per-head recall budget `k_g` = fewest non-forced keys whose mass, added to the forced
//!    keys' mass, reaches `tau` of the total; shared budget `B = max_g k_g` (the flattest head);
//!    each head keeps its own top-`B` keys plus the forced keys: the first `sink` tokens and
//!    the `window` tokens before the group together with the group itself ([ours], as the
//!    method notes recommend). The blocks holding the call's last `tail` tokens attend to every key
//!    ([ours]: they produce the logits that answer; the probes stand in for the other queries
//!    of a block only on average — `audit=1` measures every query's true recall). `B` per
//!    layer is reported. With `chunk=N` ([ours], after Quest's pooled key blocks) the probe is
//!    replaced: *every* query of the group scores the means of N consecutive keys, at 1/N of
//!    the exact cost (at 8k, 8 probes lose +2.3 % perplexity at 40 % of keys where exact
//!    importance loses +0.23 % at 32 %). Chunks alone are selected whole (the recall budget
//!    counts their free rows); with `chunk_mix=w` each chunk's importance is spread evenly over
//!    its rows and mixed with the probes' row importance, `(1-w)·chunk + w·probe`, which gives
//!    the row detail chunks lack (at 8k, `chunk=8,chunk_mix=0.5,probe=2`: +0.94 % at 30 % of
//!    keys; docs/results/omnisparse.md §3a).
//! 2. **Query selection** (prefill; **off by default** [ours]: training-free, skipping a query
//!    copies its neighbour's attention output, which breaks previous-token heads — passkey
//!    0/4 at 2k with 2.6 % of queries skipped, docs/results/omnisparse.md). A query is lazy
//!    when its (post-RoPE, all heads) vector has cosine similarity ≥ `theta` with the previous
//!    token's (`lazy=cos`, test (b) of the method notes); among a run of lazy queries every `keep_every`-th
//!    is still computed ("most lazy queries are discarded"), as are each block's first token
//!    and the tail ([ours]). Skipped rows are filled from the nearest computed query of the
//!    block (`fill=copy`) or get zero attention output (`fill=residual`, only the residual
//!    stream passes). The locality test (a) is not implemented: it needs each query's full
//!    attention row, which is the very cost the skip avoids. The kept fraction is reported.
//! 3. **Decode-time KV slimming.** The long-context span is the input's context tokens when
//!    the caller gives a token structure, else positions from `sink` on; in both cases minus
//!    the prefill's last `span_recent` positions, which every head keeps ([ours]). Per (layer,
//!    KV head) the attention mass that queries put on the span is measured (max over the
//!    group's query heads — the KV head is dropped only if all of them skip it), at the
//!    prefill's last token and at every decode step. Every `recheck` decode steps (first at
//!    the first decode step) a head whose largest mass since the last check is below `eps`
//!    has its span rows freed from the KV store — resident bytes really drop, and the head
//!    never reads the span again (irreversible; [ours]). The largest mass each head showed is
//!    reported (`span_mass_max`).
//! 4. **Token-level decode slimming** (**[ours]**, beyond the paper's head-level rule, which
//!    frees little on text: most heads read the context span, docs/results/omnisparse.md §5b).
//!    At the end of every multi-token call, per (layer, KV head), the call's last `slim_obs`
//!    queries (the group's query heads combined by `agg`, mean over queries) give each span
//!    token an importance; tokens are ranked by that importance max-pooled over `slim_pool`
//!    rows either side (SnapKV's pooling, arXiv 2404.14469 §4.2), and the head keeps the
//!    fewest span tokens, in that order, that hold `slim_tau` of the queries' mass together
//!    with everything outside the span — the recall rule of axis 1 applied to the store.
//!    `slim_budget=shared` gives every head of the layer the flattest head's count (axis 1's
//!    rule), `own` lets each head keep only what it needs, and `mean` gives every head the
//!    layer's mean of those counts (the same bytes as `own`, spread evenly: the baseline).
//!    The other span rows are freed from the store before the next call stores its tokens
//!    (irreversible). `slim_tau=1` is off.
//!
//! Baselines with the same probe, forced keys and kernel: `uniform-budget:keys=N` (every head
//! of every block keeps `N` non-forced keys, set `N` to OmniSparse's measured mean to compare
//! at equal mean budget) and `topk:ratio=r` (every head keeps the top `r` of its visible
//! non-forced keys). Both compute every query and keep the full store.
//!
//! With `tau=1`, `lazy=none` and `eps=0` every step is the dense kernel itself (bit-identical).

use crate::policy::{configure, Component, KnobKind, KnobValue, PolicyConfig, PolicyEntry};
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, Findings, StepContext};
use frugal_engine::cache::{CachePolicy, HeadView, KvLayout, KvStore};
use frugal_engine::structure::TokenKind;
use frugal_numerics::attention::{AttentionShape, KeyMask, KvSlices};
use frugal_numerics::sparse_attention::{
    chunk_recall, chunk_rows, max_pool, probe_importance, probe_probabilities, ranked_recall,
    recall_budget, select_rows, BlockPlan, ChunkKeys, GroupAgg, KeySet, LazyFill, SparsePlan,
};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// Query block of the sparse kernel (the dense kernel's block).
const BLOCK: usize = 64;

const AGG: KnobKind = KnobKind::Choice {
    options: &["sum", "max"],
};
const FILL: KnobKind = KnobKind::Choice {
    options: &["copy", "residual"],
};
const LAZY: KnobKind = KnobKind::Choice {
    options: &["cos", "none"],
};
const COUNT: KnobKind = KnobKind::Int {
    min: 0,
    max: 1 << 20,
};
const SHARE: KnobKind = KnobKind::Float { min: 0.0, max: 1.0 };

impl KnobValue for GroupAgg {
    fn parse_knob(text: &str) -> Option<Self> {
        match text.trim() {
            "sum" => Some(GroupAgg::Sum),
            "max" => Some(GroupAgg::Max),
            _ => None,
        }
    }
    fn show_knob(&self) -> String {
        (if *self == GroupAgg::Max { "max" } else { "sum" }).into()
    }
}

impl KnobValue for LazyFill {
    fn parse_knob(text: &str) -> Option<Self> {
        match text.trim() {
            "copy" => Some(LazyFill::Copy),
            "residual" => Some(LazyFill::Residual),
            _ => None,
        }
    }
    fn show_knob(&self) -> String {
        (if *self == LazyFill::Residual { "residual" } else { "copy" }).into()
    }
}

crate::knob_choice! {
    /// The lazy-query test.
    pub enum LazyTest {
        /// Cosine similarity to the previous query.
        Cos = "cos",
        /// Every query computed.
        None = "none",
    }
}

crate::knob_choice! {
    /// Token-level slimming budget per KV head of a layer [ours].
    pub enum SlimBudget {
        /// What the head's own recall needs.
        Own = "own",
        /// The flattest head's count (axis 1's rule).
        Shared = "shared",
        /// The layer's mean of the own counts: the same bytes as `Own`, spread evenly.
        Mean = "mean",
    }
}

crate::policy_config! {
    /// The probe and selection knobs OmniSparse and its two baselines share.
    pub struct Selection {
        /// probe queries per planning group (`share` blocks of 64 queries): the last one + a stride [ours]
        pub probe: usize = 8, KnobKind::Int { min: 1, max: 1 << 16 };
        /// how a GQA group's query heads combine into column importance (paper unknown)
        pub agg: GroupAgg = GroupAgg::Sum, AGG;
        /// first tokens always kept [ours]
        pub sink: u32 = 4, COUNT;
        /// keys before each query block always kept, besides the block itself [ours]
        pub window: u32 = 64, COUNT;
        /// the call's last `tail` query tokens (their whole blocks) attend to every key [ours]
        pub tail: usize = 64, COUNT;
        /// 1 = measure every query's true recall of the kept keys (a dense pass; diagnostics only)
        pub audit: bool = false, KnobKind::Switch;
        /// consecutive 64-query blocks sharing one probe + selection (probes spread over the
        /// group, one key set for all) [ours]
        pub share: usize = 1, KnobKind::Int { min: 1, max: 1024 };
        /// 0 = `probe` queries score every key; N = every query of the group scores means of N
        /// consecutive keys; alone, whole chunks are selected [ours, after Quest]
        pub chunk: usize = 0, KnobKind::Int { min: 0, max: 4096 };
        /// with chunk: weight of the `probe` queries' row-level importance mixed into the chunk
        /// estimate (0 = chunks alone, selected whole chunks at a time) [ours]
        pub chunk_mix: f32 = 0.0, SHARE;
    }
}

crate::policy_config! {
    /// OmniSparse, training-free (see the module doc for the four axes).
    pub struct OmniSparseConfig {
        flatten pub selection: Selection;
        /// attention recall each head keeps (1 = every key)
        pub tau: f64 = 0.95, KnobKind::Float { min: 0.0, max: 1.0 };
        /// lazy-query test: cosine similarity to the previous query, or none (every query
        /// computed; our default [ours]: training-free, skipping breaks previous-token heads)
        pub lazy: LazyTest = LazyTest::None, LAZY;
        /// cosine threshold above which a query is lazy [ours]
        pub theta: f32 = 0.9, KnobKind::Float { min: -1.0, max: 2.0 };
        /// every m-th query of a lazy run is still computed [ours]
        pub keep_every: usize = 4, KnobKind::Int { min: 1, max: 1 << 20 };
        /// output row of a skipped query: nearest computed neighbour's, or residual only
        pub fill: LazyFill = LazyFill::Copy, FILL;
        /// decode slimming: a KV head whose span mass stays below eps stops reading the span
        /// (0 = off) [ours]
        pub eps: f32 = 0.05, KnobKind::Float { min: 0.0, max: 1.0 };
        /// decode slimming: context tokens among the prefill's last span_recent positions stay
        /// outside the slimmable span (local heads keep them) [ours]
        pub span_recent: usize = 64, COUNT;
        /// decode steps between slimming checks
        pub recheck: usize = 4, KnobKind::Int { min: 1, max: 1 << 20 };
        /// token-level decode slimming: share of the last queries' span mass each KV head
        /// keeps in the store (1 = off) [ours]
        pub slim_tau: f64 = 1.0, KnobKind::Float { min: 0.0, max: 1.0 };
        /// token-level slimming: the call's last queries that score the span [ours, after SnapKV]
        pub slim_obs: usize = 32, KnobKind::Int { min: 1, max: 1 << 20 };
        /// token-level slimming: max-pool radius (rows) of the ranking [ours, after SnapKV; 16
        /// rather than its 3: at 3 the needle's last digits were freed]
        pub slim_pool: usize = 16, KnobKind::Int { min: 0, max: 1 << 10 };
        /// token-level slimming: each head keeps what its recall needs; every head of a layer
        /// the flattest head's count; or every head the layer's mean count (same bytes as own:
        /// the uniform baseline) [ours]
        pub slim_budget: SlimBudget = SlimBudget::Own, SlimBudget::KIND;
    }
}

crate::policy_config! {
    /// The uniform-budget baseline.
    pub struct UniformBudgetConfig {
        flatten pub selection: Selection;
        /// non-forced keys each head keeps per query block
        pub keys: usize = 512, COUNT;
    }
}

crate::policy_config! {
    /// The top-k baseline.
    pub struct TopkConfig {
        flatten pub selection: Selection;
        /// fraction of visible non-forced keys each head keeps
        pub ratio: f64 = 0.1, KnobKind::Float { min: 0.0, max: 1.0 };
    }
}

pub const OMNISPARSE: PolicyEntry = PolicyEntry::new(
    "omnisparse",
    "OmniSparse, training-free: flattest-head shared KV budget at recall tau, lazy-query skipping, decode-time per-head KV slimming",
    OmniSparseConfig::knobs,
    "omnisparse:tau=1,lazy=none,eps=0",
    |part, b| {
        let c: OmniSparseConfig = configure(part)?;
        Ok(build(b.spec.clone(), omnisparse_config(&c), b.layout))
    },
);

pub const UNIFORM_BUDGET: PolicyEntry = PolicyEntry::new(
    "uniform-budget",
    "OmniSparse baseline: every head of every query block keeps the same fixed number of top keys (plus sink/window)",
    UniformBudgetConfig::knobs,
    "uniform-budget:keys=1048576",
    |part, b| {
        let c: UniformBudgetConfig = configure(part)?;
        let cfg = common(&c.selection, Budget::Uniform { keys: c.keys });
        Ok(build(b.spec.clone(), cfg, b.layout))
    },
);

pub const TOPK: PolicyEntry = PolicyEntry::new(
    "topk",
    "OmniSparse baseline: every head keeps a fixed fraction of its visible keys (top by probe importance, plus sink/window)",
    TopkConfig::knobs,
    "topk:ratio=1",
    |part, b| {
        let c: TopkConfig = configure(part)?;
        let cfg = common(&c.selection, Budget::Ratio { ratio: c.ratio });
        Ok(build(b.spec.clone(), cfg, b.layout))
    },
);

/// How the per-block key budget is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// OmniSparse: `B = max_g k_g` at recall `tau`.
    Flattest { tau: f64 },
    /// Fixed count per head.
    Uniform { keys: usize },
    /// Fixed fraction of the visible non-forced keys.
    Ratio { ratio: f64 },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub budget: Budget,
    pub probe: usize,
    pub agg: GroupAgg,
    pub sink: u32,
    pub window: u32,
    /// Cosine threshold; `None` = every query computed.
    pub lazy_theta: Option<f32>,
    pub keep_every: usize,
    pub fill: LazyFill,
    /// Decode slimming threshold; 0 = off.
    pub eps: f32,
    pub recheck: usize,
    /// The prefill's last `span_recent` positions are never part of the slimmable span.
    pub span_recent: usize,
    /// The call's last `tail` query tokens attend to every key (their blocks are dense).
    pub tail: usize,
    /// Query blocks that share one probe + selection.
    pub share: usize,
    /// 0 = probe queries over every key; N = every query over N-key chunk means.
    pub chunk: usize,
    /// With `chunk`, the weight of the probes' importance in the mix (0 = chunks alone).
    pub chunk_mix: f32,
    /// Measure every query's true recall of the selected keys (costs a dense pass).
    pub audit: bool,
    /// Token-level decode slimming; `None` = off.
    pub slim: Option<TokenSlim>,
}

/// Token-level decode slimming (axis 4 of the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSlim {
    /// Share of the observation queries' span mass each head keeps.
    pub tau: f64,
    /// The call's last `obs` queries score the span.
    pub obs: usize,
    /// Max-pool radius of the ranking, in rows.
    pub pool: usize,
    /// How many span rows each head of a layer keeps.
    pub budget: SlimBudget,
}

impl Config {
    fn keeps_every_key(&self) -> bool {
        match self.budget {
            Budget::Flattest { tau } => tau >= 1.0,
            Budget::Uniform { keys } => keys >= 1 << 20,
            Budget::Ratio { ratio } => ratio >= 1.0,
        }
    }
}

/// One KV head's keys ranked for selection, by chunk or by row, with its recall budget.
enum Ranked {
    Chunks {
        order: Vec<u32>,
        chunk: usize,
        budget: usize,
    },
    Rows {
        imp: Vec<f32>,
        forced: Vec<bool>,
        budget: usize,
    },
}

impl Ranked {
    /// Whole chunks in order of importance per row (`imp` per chunk; chunk-granular budget).
    fn chunks(imp: &[f32], chunk: usize, n: usize, free: Range<usize>, tau: f64) -> Self {
        let (order, budget) = chunk_recall(imp, chunk, n, free, tau);
        Ranked::Chunks {
            order,
            chunk,
            budget,
        }
    }

    fn rows(imp: Vec<f32>, n: usize, free: Range<usize>, tau: f64) -> Self {
        let forced: Vec<bool> = (0..n).map(|j| !free.contains(&j)).collect();
        let budget = recall_budget(&imp, &forced, tau);
        Ranked::Rows {
            imp,
            forced,
            budget,
        }
    }

    /// Non-forced rows this head needs for its recall `tau`.
    fn budget(&self) -> usize {
        match self {
            Ranked::Chunks { budget, .. } | Ranked::Rows { budget, .. } => *budget,
        }
    }

    /// The forced rows plus (at least, for chunks) the `b` best free rows, ascending.
    fn select(&self, b: usize, n: usize, free: Range<usize>) -> Vec<u32> {
        match self {
            Ranked::Chunks { order, chunk, .. } => chunk_rows(order, *chunk, n, free, b),
            Ranked::Rows { imp, forced, .. } => select_rows(imp, forced, b),
        }
    }
}

/// Per-layer selection statistics.
#[derive(Clone, Debug, Default)]
struct LayerStats {
    blocks: usize,
    budget_sum: usize,
    selected_sum: usize,
    visible_sum: usize,
    audit: Audit,
}

/// True recall of the selected keys, measured over every (query, query head) row of the
/// sparse blocks (`audit=1`): the share of the row's dense attention mass that falls on the
/// keys its block kept.
#[derive(Clone, Copy, Debug)]
struct Audit {
    rows: usize,
    recall_sum: f64,
    recall_min: f32,
    below_90: usize,
    /// Lowest recall over the query heads of the call's last token (the one whose logits
    /// answer a prompt), `None` when the last token's block was not sparse.
    last_min: Option<f32>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            rows: 0,
            recall_sum: 0.0,
            recall_min: 1.0,
            below_90: 0,
            last_min: None,
        }
    }
}

impl Audit {
    fn add(&mut self, o: &Audit) {
        self.rows += o.rows;
        self.recall_sum += o.recall_sum;
        self.recall_min = self.recall_min.min(o.recall_min);
        self.below_90 += o.below_90;
        if o.last_min.is_some() {
            self.last_min = o.last_min;
        }
    }
}

/// What the attention half found in one layer's step for the cache half (through the
/// engine's findings hook, never shared state).
struct OmniFindings {
    /// The long-context span, when this step (re)defined it.
    span: Option<Arc<Vec<bool>>>,
    /// Span mass of the step's last token per KV head of the layer (axis 3).
    mass: Vec<f32>,
    /// Span rows each KV head of the layer frees before the next call (axis 4), ascending.
    drops: Option<Vec<Vec<u32>>>,
}

/// The attention half: plans each step, measures the span, keeps the statistics it reports.
struct OmniAttention {
    name: String,
    cfg: Config,
    n_kv_heads: usize,
    /// `span[pos]`: position belongs to the long-context span.
    span: Arc<Vec<bool>>,
    /// Largest span mass observed per (layer, KV head) (reported).
    mass_max: Vec<f32>,
    /// Per layer, from the last token-level selection: (span rows, span rows kept) over heads.
    slim_rows: Vec<(usize, usize)>,
    layers: Vec<LayerStats>,
    queries: usize,
    computed: usize,
    findings: Option<OmniFindings>,
}

/// The cache half: the store, and the eviction rules applied to what attention found.
struct OmniCache {
    name: String,
    store: KvStore,
    cfg: Config,
    span: Arc<Vec<bool>>,
    /// Largest span mass since the last check, per (layer, KV head); `None` = not observed.
    mass: Vec<Option<f32>>,
    slimmed: Vec<bool>,
    decode_step: usize,
    /// Span positions each (layer, KV head) frees before the next call stores (ascending).
    pending_drop: Vec<Vec<u32>>,
}

impl OmniAttention {
    fn new(name: String, cfg: Config, layout: KvLayout) -> Self {
        OmniAttention {
            name,
            cfg,
            n_kv_heads: layout.n_kv_heads,
            span: Arc::default(),
            mass_max: vec![0.0; layout.n_layers * layout.n_kv_heads],
            slim_rows: vec![(0, 0); layout.n_layers],
            layers: vec![LayerStats::default(); layout.n_layers],
            queries: 0,
            computed: 0,
            findings: None,
        }
    }

    fn findings(&mut self) -> &mut OmniFindings {
        self.findings.get_or_insert_with(|| OmniFindings {
            span: None,
            mass: Vec::new(),
            drops: None,
        })
    }
}

impl OmniCache {
    fn new(name: String, cfg: Config, layout: KvLayout) -> Self {
        let heads = layout.n_layers * layout.n_kv_heads;
        OmniCache {
            name,
            store: KvStore::new(layout),
            cfg,
            span: Arc::default(),
            mass: vec![None; heads],
            slimmed: vec![false; heads],
            decode_step: 0,
            pending_drop: vec![Vec::new(); heads],
        }
    }
}

impl CachePolicy for OmniCache {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        let n_kv = self.store.layout().n_kv_heads;
        if self.cfg.slim.is_some() {
            for g in 0..n_kv {
                let drop = std::mem::take(&mut self.pending_drop[layer * n_kv + g]);
                if !drop.is_empty() {
                    self.store
                        .head_mut(layer, g)
                        .retain(|p| drop.binary_search(&p).is_err());
                }
            }
        }
        if self.cfg.eps > 0.0 && positions.len() == 1 && !self.store.head(layer, 0).is_empty() {
            if layer == 0 {
                self.decode_step += 1;
            }
            if (self.decode_step - 1).is_multiple_of(self.cfg.recheck) {
                for g in 0..n_kv {
                    let i = layer * n_kv + g;
                    if !self.slimmed[i] && self.mass[i].is_some_and(|m| m < self.cfg.eps) {
                        let span = &self.span;
                        self.store
                            .head_mut(layer, g)
                            .retain(|p| !span.get(p as usize).copied().unwrap_or(false));
                        self.slimmed[i] = true;
                    }
                    self.mass[i] = None;
                }
            }
        }
        self.store.append_layer(layer, positions, k, v);
    }

    fn observe(&mut self, layer: usize, findings: Findings) {
        let Ok(f) = findings.downcast::<OmniFindings>() else {
            return;
        };
        let n_kv = self.store.layout().n_kv_heads;
        if let Some(span) = f.span {
            self.span = span;
        }
        for (g, &m) in f.mass.iter().enumerate() {
            let i = layer * n_kv + g;
            if !self.slimmed[i] {
                self.mass[i] = Some(self.mass[i].map_or(m, |x| x.max(m)));
            }
        }
        if let Some(drops) = f.drops {
            for (g, d) in drops.into_iter().enumerate() {
                self.pending_drop[layer * n_kv + g] = d;
            }
        }
    }

    fn view(&self, layer: usize, kv_head: usize) -> HeadView<'_> {
        HeadView::borrowed(self.store.head(layer, kv_head).view())
    }

    fn resident_bytes(&self) -> usize {
        self.store.resident_bytes()
    }

    fn reset(&mut self) {
        *self = OmniCache::new(self.name.clone(), self.cfg.clone(), self.store.layout());
    }

    fn report(&self) -> Option<String> {
        Some(format!(
            "{{\"slimmed_heads\":{},\"heads\":{}}}",
            self.slimmed.iter().filter(|&&s| s).count(),
            self.slimmed.len()
        ))
    }
}

impl OmniAttention {
    /// Which tokens of block `t0..t1` are computed; `None` = all.
    fn computed(&self, q: &[f32], t0: usize, t1: usize, t: usize, row: usize) -> Option<Vec<bool>> {
        let theta = self.cfg.lazy_theta?;
        let mut flags = vec![true; t1 - t0];
        let mut run = 0usize;
        for tok in t0 + 1..t1 {
            let a = &q[tok * row..(tok + 1) * row];
            let b = &q[(tok - 1) * row..tok * row];
            let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
            for (x, y) in a.iter().zip(b) {
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
            let cos = dot / (na.sqrt() * nb.sqrt()).max(1e-20);
            if cos >= theta && tok != t - 1 {
                flags[tok - t0] = run % self.cfg.keep_every == self.cfg.keep_every - 1;
                run += 1;
            } else {
                run = 0;
            }
        }
        if flags.iter().all(|&f| f) {
            None
        } else {
            Some(flags)
        }
    }

    /// Span mass of the call's last token per KV head (max over the group's query heads).
    fn measure_span(
        &mut self,
        ctx: &StepContext<'_>,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) {
        let last = positions.len() - 1;
        let group = shape.group();
        let mut mass = Vec::with_capacity(kv.len());
        for (g, head) in kv.iter().enumerate() {
            let n = head.positions.len();
            let probs = probe_probabilities(q, positions, &[last], g, head, n, shape);
            let mut worst = 0f32;
            for h in 0..group {
                let m: f32 = probs[h * n..(h + 1) * n]
                    .iter()
                    .zip(head.positions)
                    .filter(|(_, &p)| self.span.get(p as usize).copied().unwrap_or(false))
                    .map(|(x, _)| x)
                    .sum();
                worst = worst.max(m);
            }
            let i = ctx.layer * shape.n_kv_heads + g;
            self.mass_max[i] = self.mass_max[i].max(worst);
            mass.push(worst);
        }
        self.findings().mass = mass;
    }

    /// Token-level decode slimming (axis 4): which span rows each KV head frees before the
    /// next call.
    fn select_span_tokens(
        &mut self,
        ctx: &StepContext<'_>,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
        slim: TokenSlim,
    ) {
        let t = positions.len();
        let obs: Vec<usize> = (t.saturating_sub(slim.obs)..t).collect();
        let span = self.span.clone();
        let in_span = |p: u32| span.get(p as usize).copied().unwrap_or(false);
        // Per head: its span rows in keeping order, and how many its own recall needs.
        let heads: Vec<(Vec<u32>, usize)> = kv
            .par_iter()
            .enumerate()
            .map(|(g, h)| {
                let n = h.positions.len();
                let imp = probe_importance(q, positions, &obs, g, h, n, shape, self.cfg.agg);
                let rank = max_pool(&imp, slim.pool);
                let outside: Vec<bool> = h.positions.iter().map(|&p| !in_span(p)).collect();
                ranked_recall(&imp, &rank, &outside, slim.tau)
            })
            .collect();
        let shared_budget = heads.iter().map(|h| h.1).max().unwrap_or(0);
        let mean_budget = (heads.iter().map(|h| h.1).sum::<usize>() as f64
            / heads.len().max(1) as f64)
            .round() as usize;
        let mut drops = Vec::with_capacity(kv.len());
        let (mut span_rows, mut kept_rows) = (0, 0);
        for (g, (order, own)) in heads.iter().enumerate() {
            let keep = match slim.budget {
                SlimBudget::Own => *own,
                SlimBudget::Shared => shared_budget,
                SlimBudget::Mean => mean_budget,
            }
            .min(order.len());
            span_rows += order.len();
            kept_rows += keep;
            let mut drop: Vec<u32> = order[keep..]
                .iter()
                .map(|&j| kv[g].positions[j as usize])
                .collect();
            drop.sort_unstable();
            drops.push(drop);
        }
        self.findings().drops = Some(drops);
        self.slim_rows[ctx.layer] = (span_rows, kept_rows);
    }

    fn set_span(&mut self, ctx: &StepContext<'_>, positions: &[u32]) {
        let end = *positions.last().unwrap() as usize + 1;
        let recent = self.cfg.span_recent;
        let span: Vec<bool> = match ctx.structure {
            Some(s) if s.len() >= end => s
                .per_token()
                .iter()
                .enumerate()
                .map(|(p, (k, _))| *k == TokenKind::Context && p + recent < end)
                .collect(),
            _ => (0..end)
                .map(|p| p >= self.cfg.sink as usize && p + recent < end)
                .collect(),
        };
        self.span = Arc::new(span);
        self.findings().span = Some(self.span.clone());
    }
}

impl AttentionPolicy for OmniAttention {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        None
    }

    fn take_findings(&mut self) -> Option<Findings> {
        self.findings.take().map(|f| Box::new(f) as Findings)
    }

    fn reset(&mut self) {
        let layout = KvLayout {
            n_layers: self.layers.len(),
            n_kv_heads: self.n_kv_heads,
            head_dim: 0,
        };
        *self = OmniAttention::new(self.name.clone(), self.cfg.clone(), layout);
    }

    fn plan<'a>(
        &'a mut self,
        ctx: &StepContext<'a>,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) -> AttentionPlan<'a> {
        let t = positions.len();
        if t > 1 && ctx.layer == 0 && (self.cfg.eps > 0.0 || self.cfg.slim.is_some()) {
            self.set_span(ctx, positions);
        }
        if self.cfg.eps > 0.0 {
            self.measure_span(ctx, q, positions, shape, kv);
        }
        if let (true, Some(slim)) = (t > 1, self.cfg.slim) {
            self.select_span_tokens(ctx, q, positions, shape, kv, slim);
        }
        if t == 1 || (self.cfg.keeps_every_key() && self.cfg.lazy_theta.is_none()) {
            return AttentionPlan::Mask(None);
        }
        let n_blocks = t.div_ceil(BLOCK);
        let row = shape.n_heads * shape.head_dim;
        let this = &*self;
        let cfg = &this.cfg;
        // Planning groups of `share` query blocks: one probe + selection per group.
        let span = BLOCK * cfg.share;
        type Stats = Option<(usize, usize, usize, Audit)>;
        let chunk_keys: Option<Vec<ChunkKeys>> = (cfg.chunk > 0).then(|| {
            kv.iter()
                .map(|h| ChunkKeys::new(h, h.positions.len(), cfg.chunk, shape.head_dim))
                .collect()
        });
        let groups: Vec<(Vec<BlockPlan>, Stats)> = (0..t.div_ceil(span))
            .into_par_iter()
            .map(|gi| {
                let (t0, t1) = (gi * span, ((gi + 1) * span).min(t));
                // The call's tail (the tokens whose logits answer): every key, every query.
                let in_tail = |b0: usize| (b0 + BLOCK).min(t) + cfg.tail > t;
                let dense_block = || BlockPlan {
                    keys: vec![KeySet::All; kv.len()],
                    computed: None,
                };
                let fill = |keys: &[KeySet]| -> Vec<BlockPlan> {
                    (t0..t1)
                        .step_by(BLOCK)
                        .map(|b0| {
                            if in_tail(b0) {
                                dense_block()
                            } else {
                                BlockPlan {
                                    keys: keys.to_vec(),
                                    computed: this.computed(q, b0, (b0 + BLOCK).min(t1), t, row),
                                }
                            }
                        })
                        .collect()
                };
                let all = vec![KeySet::All; kv.len()];
                if in_tail(t0) {
                    return (fill(&all), None);
                }
                let (first, last) = (positions[t0], positions[t1 - 1]);
                let visible: Vec<usize> = kv
                    .iter()
                    .map(|h| h.positions.partition_point(|&p| p <= last))
                    .collect();
                // Forced rows are a prefix (the sinks) and a suffix (the window and the group
                // itself): each head's free rows are one range.
                let free: Vec<Range<usize>> = kv
                    .iter()
                    .zip(&visible)
                    .map(|(h, &n)| {
                        let lead = h.positions[..n].partition_point(|&p| p < cfg.sink);
                        let trail = h.positions[..n].partition_point(|&p| p + cfg.window < first);
                        lead..trail.max(lead)
                    })
                    .collect();
                if cfg.keeps_every_key() || free.iter().all(|f| f.is_empty()) {
                    return (fill(&all), None);
                }
                // Chunk scoring reads every query of the group; the probe path a stride of them.
                let toks: Vec<usize> = match chunk_keys {
                    Some(_) => (t0..t1).collect(),
                    None => Vec::new(),
                };
                let probes: Vec<usize> = if chunk_keys.is_none() || cfg.chunk_mix > 0.0 {
                    let stride = ((t1 - t0) / cfg.probe).max(1);
                    (t0..t1).rev().step_by(stride).take(cfg.probe).collect()
                } else {
                    Vec::new()
                };
                // The recall count only matters for the flattest-head budget.
                let tau = match cfg.budget {
                    Budget::Flattest { tau } => tau,
                    _ => 1.0,
                };
                let ranked: Vec<Ranked> = kv
                    .iter()
                    .enumerate()
                    .map(|(g, h)| {
                        let n = visible[g];
                        let probe =
                            || probe_importance(q, positions, &probes, g, h, n, shape, cfg.agg);
                        let imp = match &chunk_keys {
                            None => probe(),
                            Some(ck) => {
                                let c = ck[g].importance(
                                    q,
                                    positions,
                                    &toks,
                                    g,
                                    h.positions,
                                    n,
                                    shape,
                                    cfg.agg,
                                );
                                if cfg.chunk_mix == 0.0 {
                                    return Ranked::chunks(&c, cfg.chunk, n, free[g].clone(), tau);
                                }
                                ck[g].mix_rows(&c, n, &probe(), cfg.chunk_mix)
                            }
                        };
                        Ranked::rows(imp, n, free[g].clone(), tau)
                    })
                    .collect();
                let budget = match cfg.budget {
                    Budget::Flattest { .. } => ranked.iter().map(|r| r.budget()).max().unwrap_or(0),
                    Budget::Uniform { keys } => keys,
                    Budget::Ratio { ratio } => {
                        (ratio * free.iter().map(|f| f.len()).max().unwrap() as f64).ceil() as usize
                    }
                };
                let mut selected = 0;
                let mut audit = Audit::default();
                // The group's blocks before the tail use the selection.
                let sparse_end = (t0..t1)
                    .step_by(BLOCK)
                    .find(|&b0| in_tail(b0))
                    .unwrap_or(t1);
                let keys: Vec<KeySet> = (0..kv.len())
                    .map(|g| {
                        let rows = ranked[g].select(budget, visible[g], free[g].clone());
                        selected += rows.len();
                        if cfg.audit {
                            audit.add(&audit_recall(
                                q,
                                positions,
                                t0..sparse_end,
                                g,
                                &kv[g],
                                visible[g],
                                &rows,
                                shape,
                            ));
                        }
                        if rows.len() == visible[g] {
                            KeySet::All
                        } else {
                            KeySet::Rows(rows)
                        }
                    })
                    .collect();
                if sparse_end < t {
                    audit.last_min = None;
                }
                (
                    fill(&keys),
                    Some((budget, selected, visible.iter().sum(), audit)),
                )
            })
            .collect();

        let fill = self.cfg.fill;
        let mut dense = true;
        let mut plan_blocks = Vec::with_capacity(n_blocks);
        for (bps, stats) in groups {
            if let Some((budget, selected, visible, audit)) = stats {
                let l = &mut self.layers[ctx.layer];
                l.blocks += 1;
                l.budget_sum += budget;
                l.selected_sum += selected;
                l.visible_sum += visible;
                l.audit.add(&audit);
            }
            for bp in bps {
                let b = plan_blocks.len();
                let len = ((b + 1) * BLOCK).min(t) - b * BLOCK;
                self.queries += len;
                self.computed += bp
                    .computed
                    .as_ref()
                    .map_or(len, |c| c.iter().filter(|&&x| x).count());
                dense &= bp.computed.is_none() && bp.keys.iter().all(|k| *k == KeySet::All);
                plan_blocks.push(bp);
            }
        }
        if dense {
            return AttentionPlan::Mask(None);
        }
        AttentionPlan::Sparse(SparsePlan {
            block: BLOCK,
            blocks: plan_blocks,
            fill,
        })
    }

    fn report(&self) -> Option<String> {
        let sh = self;
        let n_kv = self.n_kv_heads.max(1) as f64;
        let layers: Vec<String> = sh
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let n = l.blocks.max(1) as f64;
                let a = &l.audit;
                let audit = if a.rows > 0 {
                    format!(
                        ",\"recall_mean\":{:.4},\"recall_min\":{:.4},\"rows_below_0.9\":{:.4},\"last_token_recall_min\":{}",
                        a.recall_sum / a.rows as f64,
                        a.recall_min,
                        a.below_90 as f64 / a.rows as f64,
                        a.last_min.map_or("null".into(), |x| format!("{x:.4}"))
                    )
                } else {
                    String::new()
                };
                let (span_rows, kept_rows) = sh.slim_rows[i];
                let slim = if span_rows > 0 {
                    format!(",\"slim_span_kept\":{:.4}", kept_rows as f64 / span_rows as f64)
                } else {
                    String::new()
                };
                format!(
                    "{{\"layer\":{i},\"blocks\":{},\"mean_budget\":{:.1},\"mean_selected_per_head\":{:.1},\"mean_visible_per_head\":{:.1}{audit}{slim}}}",
                    l.blocks,
                    l.budget_sum as f64 / n,
                    l.selected_sum as f64 / n / n_kv,
                    l.visible_sum as f64 / n / n_kv,
                )
            })
            .collect();
        let (sel, vis): (usize, usize) = sh
            .layers
            .iter()
            .fold((0, 0), |a, l| (a.0 + l.selected_sum, a.1 + l.visible_sum));
        let (span_rows, kept_rows) = sh
            .slim_rows
            .iter()
            .fold((0, 0), |a, r| (a.0 + r.0, a.1 + r.1));
        Some(format!(
            "{{\"policy\":\"{}\",\"query_kept_fraction\":{:.4},\"key_kept_fraction\":{:.4},\"slim_span_kept\":{:.4},\"span_tokens\":{},\"span_mass_max\":[{}],\"layers\":[{}]}}",
            self.name,
            sh.computed as f64 / sh.queries.max(1) as f64,
            sel as f64 / vis.max(1) as f64,
            kept_rows as f64 / span_rows.max(1) as f64,
            sh.span.iter().filter(|&&s| s).count(),
            sh.mass_max
                .iter()
                .map(|m| format!("{m:.4}"))
                .collect::<Vec<_>>()
                .join(","),
            layers.join(",")
        ))
    }
}

/// True recall of key rows `rows` (ascending) for every query of tokens `toks` and every
/// query head of KV group `g`: the dense attention mass on the kept rows.
#[allow(clippy::too_many_arguments)]
fn audit_recall(
    q: &[f32],
    positions: &[u32],
    toks: std::ops::Range<usize>,
    g: usize,
    kv: &KvSlices<'_>,
    n: usize,
    rows: &[u32],
    shape: AttentionShape,
) -> Audit {
    let last_tok = toks.end - 1;
    let toks: Vec<usize> = toks.collect();
    let probs = probe_probabilities(q, positions, &toks, g, kv, n, shape);
    let group = shape.group();
    let mut a = Audit::default();
    for (i, &tok) in toks.iter().enumerate() {
        for h in 0..group {
            let row = &probs[(i * group + h) * n..(i * group + h + 1) * n];
            let r: f32 = rows
                .iter()
                .map(|&j| row.get(j as usize).copied().unwrap_or(0.0))
                .sum();
            a.rows += 1;
            a.recall_sum += r as f64;
            a.recall_min = a.recall_min.min(r);
            a.below_90 += (r < 0.9) as usize;
            if tok == last_tok {
                a.last_min = Some(a.last_min.map_or(r, |m: f32| m.min(r)));
            }
        }
    }
    a
}

fn common(sel: &Selection, budget: Budget) -> Config {
    Config {
        budget,
        probe: sel.probe,
        agg: sel.agg,
        sink: sel.sink,
        window: sel.window,
        lazy_theta: None,
        keep_every: 1,
        fill: LazyFill::Copy,
        eps: 0.0,
        recheck: 1,
        span_recent: 0,
        tail: sel.tail,
        share: sel.share,
        chunk: sel.chunk,
        chunk_mix: sel.chunk_mix,
        audit: sel.audit,
        slim: None,
    }
}

fn omnisparse_config(c: &OmniSparseConfig) -> Config {
    Config {
        lazy_theta: (c.lazy == LazyTest::Cos).then_some(c.theta),
        keep_every: c.keep_every,
        fill: c.fill,
        eps: c.eps,
        recheck: c.recheck,
        span_recent: c.span_recent,
        slim: (c.slim_tau < 1.0).then_some(TokenSlim {
            tau: c.slim_tau,
            obs: c.slim_obs,
            pool: c.slim_pool,
            budget: c.slim_budget,
        }),
        ..common(&c.selection, Budget::Flattest { tau: c.tau })
    }
}

fn build(name: String, cfg: Config, layout: KvLayout) -> Component {
    Component {
        cache: Some(Box::new(OmniCache::new(name.clone(), cfg.clone(), layout))),
        attention: Some(Box::new(OmniAttention::new(name, cfg, layout))),
    }
}
