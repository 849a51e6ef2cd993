//! The adjacent-layer K/V cosine-similarity profile across depth (MiniCache's premise,
//! docs/methods/minicache.md): windows of held-out text run through the model with the engine's
//! [`KvSimilarityProbe`]; per layer pair the mean and 10/50/90th percentiles of the per-(token,
//! KV head) cosine of K and of V, as JSON, Markdown and a plot.

use crate::plot::{plot_err, save, Figure};
use crate::tasks::TaskText;
use anyhow::{bail, Context, Result};
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::probe::{CosineSummary, KvSimilarityProbe};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    pub count: usize,
}

impl From<CosineSummary> for Summary {
    fn from(s: CosineSummary) -> Self {
        Summary {
            mean: s.mean,
            p10: s.p10,
            median: s.median,
            p90: s.p90,
            count: s.count,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairRow {
    /// Layers `(layer, layer + 1)`.
    pub layer: usize,
    pub k: Summary,
    pub v: Summary,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KvSimilarityReport {
    pub model: String,
    pub length: usize,
    pub samples: usize,
    pub pairs: Vec<PairRow>,
}

/// Runs `samples` consecutive windows of `length` held-out tokens.
pub fn run(
    lm: &LoadedModel,
    text: &TaskText,
    length: usize,
    samples: usize,
) -> Result<KvSimilarityReport> {
    if samples == 0 || length < 2 {
        bail!("kv-similarity needs at least one sample of at least 2 tokens");
    }
    if text.held_out.len() < length * samples {
        bail!(
            "held-out text has {} tokens, fewer than {samples} × {length}",
            text.held_out.len()
        );
    }
    let layout = lm.model.config().kv_layout();
    let (mut k, mut v) = (
        vec![Vec::new(); layout.n_layers - 1],
        vec![Vec::new(); layout.n_layers - 1],
    );
    for s in 0..samples {
        let ids = &text.held_out[s * length..(s + 1) * length];
        let (mut seq, sink) = KvSimilarityProbe::sequence(layout);
        lm.model
            .forward(ids, &mut seq, LogitRows::Last)
            .context("kv-similarity forward")?;
        let got = sink.lock().expect("probe sink");
        for l in 0..layout.n_layers - 1 {
            k[l].extend_from_slice(&got.k[l]);
            v[l].extend_from_slice(&got.v[l]);
        }
        eprintln!("kv-similarity: sample {}/{samples} done", s + 1);
    }
    let pairs = (0..layout.n_layers - 1)
        .map(|l| PairRow {
            layer: l,
            k: CosineSummary::of(&k[l]).into(),
            v: CosineSummary::of(&v[l]).into(),
        })
        .collect();
    Ok(KvSimilarityReport {
        model: lm.path.display().to_string(),
        length,
        samples,
        pairs,
    })
}

impl Figure for KvSimilarityReport {
    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, plotters::coord::Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let r = self;
        area.fill(&WHITE).map_err(plot_err)?;
        let n = r.pairs.len() as f64;
        let ymin = r
            .pairs
            .iter()
            .map(|p| p.k.p10.min(p.v.p10))
            .fold(0.0, f64::min)
            - 0.05;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "adjacent-layer cosine similarity ({} × {} tokens)",
                    r.samples, r.length
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5..n - 0.5, ymin..1.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("layer pair (l, l+1), by l")
            .y_desc("cosine")
            .draw()
            .map_err(plot_err)?;
        for (name, colour, pick) in [("K", BLUE, 0usize), ("V", RED, 1)] {
            let get = |p: &PairRow| if pick == 0 { p.k.clone() } else { p.v.clone() };
            chart
                .draw_series(LineSeries::new(
                    r.pairs.iter().map(|p| (p.layer as f64, get(p).mean)),
                    colour.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(format!("{name} mean"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            for q in [0usize, 1] {
                chart
                    .draw_series(LineSeries::new(
                        r.pairs.iter().map(|p| {
                            (p.layer as f64, if q == 0 { get(p).p10 } else { get(p).p90 })
                        }),
                        colour.mix(0.35),
                    ))
                    .map_err(plot_err)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        area.present().map_err(plot_err)?;
        Ok(())
    }
}

/// Writes `out` (JSON) and, beside it, `.md` and `.svg`/`.png` plots.
pub fn write(r: &KvSimilarityReport, out: &Path) -> Result<()> {
    std::fs::write(out, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("writing {}", out.display()))?;
    let mut md = String::new();
    writeln!(
        md,
        "| pair | K mean | K p10 | K median | K p90 | V mean | V p10 | V median | V p90 |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for p in &r.pairs {
        writeln!(
            md,
            "| {}–{} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            p.layer,
            p.layer + 1,
            p.k.mean,
            p.k.p10,
            p.k.median,
            p.k.p90,
            p.v.mean,
            p.v.p10,
            p.v.median,
            p.v.p90
        )?;
    }
    std::fs::write(out.with_extension("md"), md)?;
    save(r, &out.with_extension(""), (720, 420))?;
    Ok(())
}
