//! OmniSparse, **training-free variant** (papers/attention-kv-methods.md §1; arXiv 2511.12201).
//! The paper fine-tunes the model with its sparse pattern switched on; nothing here trains —
//! this is the same mechanics applied to a frozen model, an ablation of the paper's method,
//! not the method itself. The paper's equations are unavailable: every rule below follows the
//! brief's formalisation (§1.4) and every choice is a knob, marked **[ours]** where the paper
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
//!    brief recommends). The blocks holding the call's last `tail` tokens attend to every key
//!    ([ours]: they produce the logits that answer; the probes stand in for the other queries
//!    of a block only on average — `audit=1` measures every query's true recall). `B` per
//!    layer is reported. With `chunk=N` ([ours], after Quest's pooled key blocks) the probe is
//!    replaced: *every* query of the group scores the means of N consecutive keys, at 1/N of
//!    the exact cost (at 8k, 8 probes lose +2.3 % perplexity at 40 % of keys where exact
//!    importance loses +0.23 % at 32 %). Chunks alone are selected whole (the recall budget
//!    counts their free rows); with `chunk_mix=w` each chunk's importance is spread evenly over
//!    its rows and mixed with the probes' row importance, `(1-w)·chunk + w·probe`, which gives
//!    the row detail chunks lack (at 8k, `chunk=8,chunk_mix=0.5,probe=2`: +0.94 % at 30 % of
//!    keys; docs/results/omnisparse.md §1c).
//! 2. **Query selection** (prefill; **off by default** [ours]: training-free, skipping a query
//!    copies its neighbour's attention output, which breaks previous-token heads — passkey
//!    0/4 at 2k with 2.6 % of queries skipped, docs/results/omnisparse.md). A query is lazy
//!    when its (post-RoPE, all heads) vector has cosine similarity ≥ `theta` with the previous
//!    token's (`lazy=cos`, brief test (b)); among a run of lazy queries every `keep_every`-th
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
//! 4. **Token-level decode slimming** (**[ours]**, beyond the brief's head-level rule, which
//!    frees little on text: most heads read the context span, docs/results/omnisparse.md §3).
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

use crate::registry::{Component, KnobInfo, KnobKind, Knobs, PolicyInfo};
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, StepContext};
use frugal_engine::cache::{CachePolicy, HeadView, KvLayout, KvStore};
use frugal_engine::structure::TokenKind;
use frugal_numerics::attention::{AttentionShape, KeyMask, KvSlices};
use frugal_numerics::sparse_attention::{
    chunk_recall, chunk_rows, max_pool, probe_importance, probe_probabilities, ranked_recall,
    recall_budget, select_rows, BlockPlan, ChunkKeys, GroupAgg, KeySet, LazyFill, SparsePlan,
};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Query block of the sparse kernel (the dense kernel's block).
const BLOCK: usize = 64;

const COMMON_KNOBS: [KnobInfo; 9] = [
    KnobInfo {
        name: "probe",
        kind: KnobKind::Int { min: 1, max: 1 << 16 },
        default: "8",
        doc: "probe queries per planning group (`share` blocks of 64 queries): the last one + a stride [ours]",
    },
    KnobInfo {
        name: "agg",
        kind: KnobKind::Choice {
            options: &["sum", "max"],
        },
        default: "sum",
        doc: "how a GQA group's query heads combine into column importance (paper unknown)",
    },
    KnobInfo {
        name: "sink",
        kind: KnobKind::Int {
            min: 0,
            max: 1 << 20,
        },
        default: "4",
        doc: "first tokens always kept [ours]",
    },
    KnobInfo {
        name: "window",
        kind: KnobKind::Int {
            min: 0,
            max: 1 << 20,
        },
        default: "64",
        doc: "keys before each query block always kept, besides the block itself [ours]",
    },
    KnobInfo {
        name: "tail",
        kind: KnobKind::Int {
            min: 0,
            max: 1 << 20,
        },
        default: "64",
        doc: "the call's last `tail` query tokens (their whole blocks) attend to every key [ours]",
    },
    KnobInfo {
        name: "audit",
        kind: KnobKind::Int { min: 0, max: 1 },
        default: "0",
        doc: "1 = measure every query's true recall of the kept keys (a dense pass; diagnostics only)",
    },
    KnobInfo {
        name: "share",
        kind: KnobKind::Int { min: 1, max: 1024 },
        default: "1",
        doc: "consecutive 64-query blocks sharing one probe + selection (probes spread over the group, one key set for all) [ours]",
    },
    KnobInfo {
        name: "chunk",
        kind: KnobKind::Int { min: 0, max: 4096 },
        default: "0",
        doc: "0 = `probe` queries score every key; N = every query of the group scores means of N consecutive keys; alone, whole chunks are selected [ours, after Quest]",
    },
    KnobInfo {
        name: "chunk_mix",
        kind: KnobKind::Float { min: 0.0, max: 1.0 },
        default: "0",
        doc: "with chunk: weight of the `probe` queries' row-level importance mixed into the chunk estimate (0 = chunks alone, selected whole chunks at a time) [ours]",
    },
];

pub const INFO: PolicyInfo = PolicyInfo {
    name: "omnisparse",
    doc: "OmniSparse, training-free: flattest-head shared KV budget at recall tau, lazy-query skipping, decode-time per-head KV slimming",
    knobs: &[
        KnobInfo { name: "tau", kind: KnobKind::Float { min: 0.0, max: 1.0 }, default: "0.95", doc: "attention recall each head keeps (1 = every key)" },
        COMMON_KNOBS[0],
        COMMON_KNOBS[1],
        COMMON_KNOBS[2],
        COMMON_KNOBS[3],
        COMMON_KNOBS[4],
        COMMON_KNOBS[5],
        COMMON_KNOBS[6],
        COMMON_KNOBS[7],
        COMMON_KNOBS[8],
        KnobInfo { name: "lazy", kind: KnobKind::Choice { options: &["cos", "none"] }, default: "none", doc: "lazy-query test: cosine similarity to the previous query, or none (every query computed; our default [ours]: training-free, skipping breaks previous-token heads, see docs/results/omnisparse.md)" },
        KnobInfo { name: "theta", kind: KnobKind::Float { min: -1.0, max: 2.0 }, default: "0.9", doc: "cosine threshold above which a query is lazy [ours]" },
        KnobInfo { name: "keep_every", kind: KnobKind::Int { min: 1, max: 1 << 20 }, default: "4", doc: "every m-th query of a lazy run is still computed [ours]" },
        KnobInfo { name: "fill", kind: KnobKind::Choice { options: &["copy", "residual"] }, default: "copy", doc: "output row of a skipped query: nearest computed neighbour's, or residual only" },
        KnobInfo { name: "eps", kind: KnobKind::Float { min: 0.0, max: 1.0 }, default: "0.05", doc: "decode slimming: a KV head whose span mass stays below eps stops reading the span (0 = off) [ours]" },
        KnobInfo { name: "span_recent", kind: KnobKind::Int { min: 0, max: 1 << 20 }, default: "64", doc: "decode slimming: context tokens among the prefill's last span_recent positions stay outside the slimmable span (local heads keep them) [ours]" },
        KnobInfo { name: "recheck", kind: KnobKind::Int { min: 1, max: 1 << 20 }, default: "4", doc: "decode steps between slimming checks" },
        KnobInfo { name: "slim_tau", kind: KnobKind::Float { min: 0.0, max: 1.0 }, default: "1", doc: "token-level decode slimming: share of the last queries' span mass each KV head keeps in the store (1 = off) [ours]" },
        KnobInfo { name: "slim_obs", kind: KnobKind::Int { min: 1, max: 1 << 20 }, default: "32", doc: "token-level slimming: the call's last queries that score the span [ours, after SnapKV]" },
        KnobInfo { name: "slim_pool", kind: KnobKind::Int { min: 0, max: 1 << 10 }, default: "16", doc: "token-level slimming: max-pool radius (rows) of the ranking [ours, after SnapKV; 16 rather than its 3: at 3 the needle's last digits were freed, docs/results/omnisparse.md §3]" },
        KnobInfo { name: "slim_budget", kind: KnobKind::Choice { options: &["own", "shared", "mean"] }, default: "own", doc: "token-level slimming: each head keeps what its recall needs; every head of a layer the flattest head's count; or every head the layer's mean count (same bytes as own: the uniform baseline) [ours]" },
    ],
    keep_everything: "omnisparse:tau=1,lazy=none,eps=0",
};

pub const UNIFORM_INFO: PolicyInfo = PolicyInfo {
    name: "uniform-budget",
    doc: "OmniSparse baseline: every head of every query block keeps the same fixed number of top keys (plus sink/window)",
    knobs: &[
        KnobInfo { name: "keys", kind: KnobKind::Int { min: 0, max: 1 << 20 }, default: "512", doc: "non-forced keys each head keeps per query block" },
        COMMON_KNOBS[0],
        COMMON_KNOBS[1],
        COMMON_KNOBS[2],
        COMMON_KNOBS[3],
        COMMON_KNOBS[4],
        COMMON_KNOBS[5],
        COMMON_KNOBS[6],
        COMMON_KNOBS[7],
        COMMON_KNOBS[8],
    ],
    keep_everything: "uniform-budget:keys=1048576",
};

pub const TOPK_INFO: PolicyInfo = PolicyInfo {
    name: "topk",
    doc: "OmniSparse baseline: every head keeps a fixed fraction of its visible keys (top by probe importance, plus sink/window)",
    knobs: &[
        KnobInfo { name: "ratio", kind: KnobKind::Float { min: 0.0, max: 1.0 }, default: "0.1", doc: "fraction of visible non-forced keys each head keeps" },
        COMMON_KNOBS[0],
        COMMON_KNOBS[1],
        COMMON_KNOBS[2],
        COMMON_KNOBS[3],
        COMMON_KNOBS[4],
        COMMON_KNOBS[5],
        COMMON_KNOBS[6],
        COMMON_KNOBS[7],
        COMMON_KNOBS[8],
    ],
    keep_everything: "topk:ratio=1",
};

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

/// Token-level slimming budget per KV head of a layer [ours].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlimBudget {
    /// What the head's own recall needs.
    Own,
    /// The flattest head's count (axis 1's rule).
    Shared,
    /// The layer's mean of the own counts: the same bytes as `Own`, spread evenly.
    Mean,
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

/// State the attention policy and the cache policy of one spec share.
#[derive(Debug, Default)]
struct Shared {
    /// `span[pos]`: position belongs to the long-context span.
    span: Vec<bool>,
    /// Largest span mass since the last check, per (layer, KV head); `None` = not observed.
    mass: Vec<Option<f32>>,
    slimmed: Vec<bool>,
    /// Largest span mass ever observed per (layer, KV head) before it was slimmed (reported).
    mass_max: Vec<f32>,
    decode_step: usize,
    /// Span positions each (layer, KV head) frees before the next call stores (ascending).
    pending_drop: Vec<Vec<u32>>,
    /// Per layer, from the last token-level selection: (span rows, span rows kept) over heads.
    slim_rows: Vec<(usize, usize)>,
    layers: Vec<LayerStats>,
    queries: usize,
    computed: usize,
}

impl Shared {
    fn new(layout: KvLayout) -> Self {
        let heads = layout.n_layers * layout.n_kv_heads;
        Shared {
            mass: vec![None; heads],
            slimmed: vec![false; heads],
            mass_max: vec![0.0; heads],
            pending_drop: vec![Vec::new(); heads],
            slim_rows: vec![(0, 0); layout.n_layers],
            layers: vec![LayerStats::default(); layout.n_layers],
            ..Default::default()
        }
    }
}

struct OmniAttention {
    name: String,
    cfg: Config,
    shared: Arc<Mutex<Shared>>,
}

struct OmniCache {
    name: String,
    store: KvStore,
    cfg: Config,
    shared: Arc<Mutex<Shared>>,
}

impl CachePolicy for OmniCache {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        if self.cfg.slim.is_some() {
            let n_kv = self.store.layout().n_kv_heads;
            let mut sh = self.shared.lock().unwrap();
            for g in 0..n_kv {
                let drop = std::mem::take(&mut sh.pending_drop[layer * n_kv + g]);
                if !drop.is_empty() {
                    self.store
                        .head_mut(layer, g)
                        .retain(|p| drop.binary_search(&p).is_err());
                }
            }
        }
        if self.cfg.eps > 0.0 && positions.len() == 1 && !self.store.head(layer, 0).is_empty() {
            let n_kv = self.store.layout().n_kv_heads;
            let mut sh = self.shared.lock().unwrap();
            if layer == 0 {
                sh.decode_step += 1;
            }
            if (sh.decode_step - 1).is_multiple_of(self.cfg.recheck) {
                for g in 0..n_kv {
                    let i = layer * n_kv + g;
                    if !sh.slimmed[i] && sh.mass[i].is_some_and(|m| m < self.cfg.eps) {
                        let span = &sh.span;
                        self.store
                            .head_mut(layer, g)
                            .retain(|p| !span.get(p as usize).copied().unwrap_or(false));
                        sh.slimmed[i] = true;
                    }
                    sh.mass[i] = None;
                }
            }
        }
        self.store.append_layer(layer, positions, k, v);
    }

    fn view(&self, layer: usize, kv_head: usize) -> HeadView<'_> {
        HeadView::borrowed(self.store.head(layer, kv_head).view())
    }

    fn resident_bytes(&self) -> usize {
        self.store.resident_bytes()
    }

    fn reset(&mut self) {
        self.store.clear();
        *self.shared.lock().unwrap() = Shared::new(self.store.layout());
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
        &self,
        ctx: &StepContext<'_>,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) {
        let last = positions.len() - 1;
        let group = shape.group();
        let mut sh = self.shared.lock().unwrap();
        for (g, head) in kv.iter().enumerate() {
            let i = ctx.layer * shape.n_kv_heads + g;
            if sh.slimmed[i] {
                continue;
            }
            let n = head.positions.len();
            let probs = probe_probabilities(q, positions, &[last], g, head, n, shape);
            let mut worst = 0f32;
            for h in 0..group {
                let m: f32 = probs[h * n..(h + 1) * n]
                    .iter()
                    .zip(head.positions)
                    .filter(|(_, &p)| sh.span.get(p as usize).copied().unwrap_or(false))
                    .map(|(x, _)| x)
                    .sum();
                worst = worst.max(m);
            }
            sh.mass[i] = Some(sh.mass[i].map_or(worst, |m| m.max(worst)));
            sh.mass_max[i] = sh.mass_max[i].max(worst);
        }
    }

    /// Token-level decode slimming (axis 4): which span rows each KV head frees before the
    /// next call.
    fn select_span_tokens(
        &self,
        ctx: &StepContext<'_>,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
        slim: TokenSlim,
    ) {
        let t = positions.len();
        let obs: Vec<usize> = (t.saturating_sub(slim.obs)..t).collect();
        let span = self.shared.lock().unwrap().span.clone();
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
        let mut sh = self.shared.lock().unwrap();
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
            sh.pending_drop[ctx.layer * kv.len() + g] = drop;
        }
        sh.slim_rows[ctx.layer] = (span_rows, kept_rows);
    }

    fn set_span(&self, ctx: &StepContext<'_>, positions: &[u32]) {
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
        self.shared.lock().unwrap().span = span;
    }
}

impl AttentionPolicy for OmniAttention {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        None
    }

    fn plan<'a>(
        &'a self,
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
        let cfg = &self.cfg;
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
                                    computed: self.computed(q, b0, (b0 + BLOCK).min(t1), t, row),
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

        let mut sh = self.shared.lock().unwrap();
        let mut dense = true;
        let mut plan_blocks = Vec::with_capacity(n_blocks);
        for (bps, stats) in groups {
            if let Some((budget, selected, visible, audit)) = stats {
                let l = &mut sh.layers[ctx.layer];
                l.blocks += 1;
                l.budget_sum += budget;
                l.selected_sum += selected;
                l.visible_sum += visible;
                l.audit.add(&audit);
            }
            for bp in bps {
                let b = plan_blocks.len();
                let len = ((b + 1) * BLOCK).min(t) - b * BLOCK;
                sh.queries += len;
                sh.computed += bp
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
            fill: cfg.fill,
        })
    }

    fn report(&self) -> Option<String> {
        let sh = self.shared.lock().unwrap();
        let n_kv = (sh.slimmed.len() / sh.layers.len().max(1)).max(1) as f64;
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
            "{{\"policy\":\"{}\",\"query_kept_fraction\":{:.4},\"key_kept_fraction\":{:.4},\"slim_span_kept\":{:.4},\"slimmed_heads\":{},\"heads\":{},\"span_tokens\":{},\"span_mass_max\":[{}],\"layers\":[{}]}}",
            self.name,
            sh.computed as f64 / sh.queries.max(1) as f64,
            sel as f64 / vis.max(1) as f64,
            kept_rows as f64 / span_rows.max(1) as f64,
            sh.slimmed.iter().filter(|&&s| s).count(),
            sh.slimmed.len(),
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

fn common(knobs: &Knobs<'_>, budget: Budget) -> Config {
    Config {
        budget,
        probe: knobs.usize("probe"),
        agg: if knobs.choice("agg") == "max" {
            GroupAgg::Max
        } else {
            GroupAgg::Sum
        },
        sink: knobs.usize("sink") as u32,
        window: knobs.usize("window") as u32,
        lazy_theta: None,
        keep_every: 1,
        fill: LazyFill::Copy,
        eps: 0.0,
        recheck: 1,
        span_recent: 0,
        tail: knobs.usize("tail"),
        share: knobs.usize("share"),
        chunk: knobs.usize("chunk"),
        chunk_mix: knobs.f64("chunk_mix") as f32,
        audit: knobs.usize("audit") > 0,
        slim: None,
    }
}

fn build(name: String, cfg: Config, layout: KvLayout) -> Component {
    let shared = Arc::new(Mutex::new(Shared::new(layout)));
    Component {
        cache: Some(Box::new(OmniCache {
            name: name.clone(),
            store: KvStore::new(layout),
            cfg: cfg.clone(),
            shared: shared.clone(),
        })),
        attention: Some(Box::new(OmniAttention { name, cfg, shared })),
    }
}

pub(crate) fn component(knobs: &Knobs<'_>, layout: KvLayout, spec: String) -> Component {
    let mut cfg = common(
        knobs,
        Budget::Flattest {
            tau: knobs.f64("tau"),
        },
    );
    cfg.lazy_theta = (knobs.choice("lazy") == "cos").then(|| knobs.f64("theta") as f32);
    cfg.keep_every = knobs.usize("keep_every");
    cfg.fill = if knobs.choice("fill") == "residual" {
        LazyFill::Residual
    } else {
        LazyFill::Copy
    };
    cfg.eps = knobs.f64("eps") as f32;
    cfg.recheck = knobs.usize("recheck");
    cfg.span_recent = knobs.usize("span_recent");
    let slim_tau = knobs.f64("slim_tau");
    cfg.slim = (slim_tau < 1.0).then(|| TokenSlim {
        tau: slim_tau,
        obs: knobs.usize("slim_obs"),
        pool: knobs.usize("slim_pool"),
        budget: match knobs.choice("slim_budget") {
            "shared" => SlimBudget::Shared,
            "mean" => SlimBudget::Mean,
            _ => SlimBudget::Own,
        },
    });
    build(spec, cfg, layout)
}

pub(crate) fn uniform_component(knobs: &Knobs<'_>, layout: KvLayout, spec: String) -> Component {
    build(
        spec,
        common(
            knobs,
            Budget::Uniform {
                keys: knobs.usize("keys"),
            },
        ),
        layout,
    )
}

pub(crate) fn topk_component(knobs: &Knobs<'_>, layout: KvLayout, spec: String) -> Component {
    build(
        spec,
        common(
            knobs,
            Budget::Ratio {
                ratio: knobs.f64("ratio"),
            },
        ),
        layout,
    )
}
