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

mod planner;
mod report;
mod store;

use crate::policy::{configure, Component, KnobKind, KnobValue, PolicyConfig, PolicyEntry};
use frugal_engine::cache::KvLayout;
use frugal_numerics::key_selection::GroupAgg;
use frugal_numerics::sparse_attention::LazyFill;
use planner::OmniAttention;
use store::OmniCache;

/// Query block of the sparse kernel (the dense kernel's block).
pub(crate) const BLOCK: usize = 64;

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
