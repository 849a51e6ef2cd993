//! OmniSparse's statistics as one serde type: what `report()` returns (one JSON object), read
//! back by the harness and the results pages' scripts.

use super::planner::OmniAttention;
use serde::Serialize;

/// Rounds for the report: fractions to 4 decimals, means to 1 (what the figures need).
fn r4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Serialize)]
pub(super) struct Report {
    policy: String,
    /// Queries computed / queries seen (lazy-query skipping).
    query_kept_fraction: f64,
    /// Selected / causally visible keys over the sparse blocks.
    key_kept_fraction: f64,
    /// Span rows kept / span rows at token-level slimming.
    slim_span_kept: f64,
    span_tokens: usize,
    /// Largest span mass observed per (layer, KV head).
    span_mass_max: Vec<f64>,
    layers: Vec<LayerReport>,
}

#[derive(Serialize)]
struct LayerReport {
    layer: usize,
    blocks: usize,
    mean_budget: f64,
    mean_selected_per_head: f64,
    mean_visible_per_head: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    audit: Option<AuditReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slim_span_kept: Option<f64>,
}

/// True recall of the kept keys (`audit=1` only).
#[derive(Serialize)]
struct AuditReport {
    recall_mean: f64,
    recall_min: f64,
    #[serde(rename = "rows_below_0.9")]
    rows_below_0_9: f64,
    last_token_recall_min: Option<f64>,
}

impl Report {
    pub(super) fn of(a: &OmniAttention) -> Report {
        let n_kv = a.n_kv_heads.max(1) as f64;
        let layers = a
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let n = l.blocks.max(1) as f64;
                let au = &l.audit;
                let (span_rows, kept_rows) = a.slim_rows[i];
                LayerReport {
                    layer: i,
                    blocks: l.blocks,
                    mean_budget: r1(l.budget_sum as f64 / n),
                    mean_selected_per_head: r1(l.selected_sum as f64 / n / n_kv),
                    mean_visible_per_head: r1(l.visible_sum as f64 / n / n_kv),
                    audit: (au.rows > 0).then(|| AuditReport {
                        recall_mean: r4(au.recall_sum / au.rows as f64),
                        recall_min: r4(au.recall_min as f64),
                        rows_below_0_9: r4(au.below_90 as f64 / au.rows as f64),
                        last_token_recall_min: au.last_min.map(|x| r4(x as f64)),
                    }),
                    slim_span_kept: (span_rows > 0)
                        .then(|| r4(kept_rows as f64 / span_rows as f64)),
                }
            })
            .collect();
        let (sel, vis) = a
            .layers
            .iter()
            .fold((0, 0), |s, l| (s.0 + l.selected_sum, s.1 + l.visible_sum));
        let (span_rows, kept_rows) = a
            .slim_rows
            .iter()
            .fold((0, 0), |s, r| (s.0 + r.0, s.1 + r.1));
        Report {
            policy: a.name.clone(),
            query_kept_fraction: r4(a.computed as f64 / a.queries.max(1) as f64),
            key_kept_fraction: r4(sel as f64 / vis.max(1) as f64),
            slim_span_kept: r4(kept_rows as f64 / span_rows.max(1) as f64),
            span_tokens: a.span.iter().filter(|&&s| s).count(),
            span_mass_max: a.mass_max.iter().map(|&m| r4(m as f64)).collect(),
            layers,
        }
    }
}
