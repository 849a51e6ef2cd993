//! The attention half of OmniSparse: plans each prefill step (which keys each KV head of a query
//! block visits, which queries are computed), measures the long-context span's attention mass
//! and picks the span rows to free, and keeps the statistics it reports.

use super::store::OmniFindings;
use super::{Budget, Config, SlimBudget, TokenSlim, BLOCK};
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, Findings, StepContext};
use frugal_engine::cache::{KvDtype, KvLayout};
use frugal_engine::structure::TokenKind;
use frugal_numerics::attention::{AttentionShape, KeyMask, KvSlices};
use frugal_numerics::key_selection::{
    chunk_recall, chunk_rows, max_pool, probe_importance, probe_probabilities, ranked_recall,
    recall_budget, select_rows, ChunkKeys,
};
use frugal_numerics::sparse_attention::{BlockPlan, KeySet, SparsePlan};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

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
pub(super) struct LayerStats {
    pub(super) blocks: usize,
    pub(super) budget_sum: usize,
    pub(super) selected_sum: usize,
    pub(super) visible_sum: usize,
    pub(super) audit: Audit,
}

/// True recall of the selected keys, measured over every (query, query head) row of the
/// sparse blocks (`audit=1`): the share of the row's dense attention mass that falls on the
/// keys its block kept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Audit {
    pub(super) rows: usize,
    pub(super) recall_sum: f64,
    pub(super) recall_min: f32,
    pub(super) below_90: usize,
    /// Lowest recall over the query heads of the call's last token (the one whose logits
    /// answer a prompt), `None` when the last token's block was not sparse.
    pub(super) last_min: Option<f32>,
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

/// The attention half: plans each step, measures the span, keeps the statistics it reports.
pub(super) struct OmniAttention {
    pub(super) name: String,
    pub(super) cfg: Config,
    pub(super) n_kv_heads: usize,
    /// `span[pos]`: position belongs to the long-context span.
    pub(super) span: Arc<Vec<bool>>,
    /// Largest span mass observed per (layer, KV head) (reported).
    pub(super) mass_max: Vec<f32>,
    /// Per layer, from the last token-level selection: (span rows, span rows kept) over heads.
    pub(super) slim_rows: Vec<(usize, usize)>,
    pub(super) layers: Vec<LayerStats>,
    pub(super) queries: usize,
    pub(super) computed: usize,
    findings: Option<OmniFindings>,
}

impl OmniAttention {
    pub(super) fn new(name: String, cfg: Config, layout: KvLayout) -> Self {
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

    fn report(&self) -> Option<String> {
        serde_json::to_string(&super::report::Report::of(self)).ok()
    }

    fn take_findings(&mut self) -> Option<Findings> {
        self.findings.take().map(|f| Box::new(f) as Findings)
    }

    fn reset(&mut self) {
        let layout = KvLayout {
            n_layers: self.layers.len(),
            n_kv_heads: self.n_kv_heads,
            head_dim: 0,
            dtype: KvDtype::default(),
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
