//! Reports of an eval run: a Markdown table and plots (PNG and SVG, drawn with plotters).

use crate::harness::{CellResult, EvalReport};
use crate::plot::{file_safe, plot_err, save, Figure, Grid, GridCell};
use crate::tasks::TaskKind;
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// A cell's 95 % interval, if it has one (a perplexity from one sample has none).
fn interval(c: &CellResult) -> Option<(f64, f64)> {
    (c.ci_low.is_finite() && c.ci_high.is_finite()).then_some((c.ci_low, c.ci_high))
}

/// The interval as the table prints it.
fn ci(c: &CellResult) -> String {
    interval(c).map_or("–".into(), |(lo, hi)| format!("[{lo:.4}, {hi:.4}]"))
}

pub fn markdown(report: &EvalReport) -> String {
    let r = &report.run;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "frugal {} (commit {}), model `{}` (sha256 {}…), seed {}, {} samples per cell, {} on {} threads, {}\n",
        r.frugal_version,
        r.git_commit,
        r.model,
        &r.model_sha256[..r.model_sha256.len().min(12)],
        r.seed,
        r.samples,
        r.machine,
        r.threads,
        r.date_utc
    );
    let _ = writeln!(
        s,
        "| task | format | mode | prefill chunk | length | policy | metric | value | 95% CI | KV peak (MiB) | KV end (MiB) | × vs f16 full | prefill tok/s | decode tok/s |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---:|---:|---|---|---:|---|---:|---:|---:|---:|---:|"
    );
    let mut cells: Vec<&CellResult> = report.cells.iter().collect();
    cells.sort_by_key(|a| (a.task, a.mode.name(), a.prefill_chunk, a.length));
    for c in cells {
        let mib = |b: f64| b / 1048576.0;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | `{}` | {} | {:.4} | {} | {:.1} | {:.1} | {:.2} | {:.1} | {} |",
            c.task.name(),
            c.task.format(),
            c.mode.name(),
            if c.prefill_chunk == 0 {
                "whole".to_string()
            } else {
                c.prefill_chunk.to_string()
            },
            c.length,
            c.policy,
            c.metric,
            c.value,
            ci(c),
            mib(c.kv_peak_bytes as f64),
            mib(c.kv_end_bytes),
            c.compression_vs_f16,
            c.prefill_tok_s,
            c.decode_tok_s.map_or("–".into(), |d| format!("{d:.1}"))
        );
    }
    s
}

/// Writes every plot the report supports into `dir`; returns the files written.
pub fn plots(report: &EvalReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let policies: BTreeSet<&str> = report.cells.iter().map(|c| c.policy.as_str()).collect();
    for policy in &policies {
        let cells: Vec<&CellResult> = report
            .cells
            .iter()
            .filter(|c| {
                c.policy == *policy && c.task == TaskKind::Passkey && !c.by_depth.is_empty()
            })
            .collect();
        if cells.is_empty() {
            continue;
        }
        let stem = dir.join(format!("passkey_heatmap_{}", file_safe(policy)));
        let grid = passkey_grid(&format!("passkey accuracy, {policy}"), &cells);
        written.extend(save(&grid, &stem, (640, 420))?);
    }
    let tasks: BTreeSet<TaskKind> = report.cells.iter().map(|c| c.task).collect();
    if policies.len() > 1 {
        for task in tasks {
            let cells: Vec<&CellResult> = report.cells.iter().filter(|c| c.task == task).collect();
            let stem = dir.join(format!("{}_vs_compression", task.name()));
            written.extend(save(&Tradeoff { task, cells }, &stem, (640, 420))?);
        }
    }
    Ok(written)
}

/// Accuracy over (context length × needle depth), one cell per pair.
fn passkey_grid(title: &str, cells: &[&CellResult]) -> Grid {
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut depths: Vec<f64> = cells
        .iter()
        .flat_map(|c| c.by_depth.iter().map(|d| d.depth))
        .collect();
    depths.sort_by(f64::total_cmp);
    depths.dedup();
    let mut grid_cells = Vec::new();
    for c in cells {
        let x = lengths.iter().position(|l| *l == c.length).unwrap_or(0);
        for d in &c.by_depth {
            let y = depths.iter().position(|v| *v == d.depth).unwrap_or(0);
            let acc = d.correct as f64 / d.total.max(1) as f64;
            grid_cells.push(GridCell {
                x,
                y,
                good: acc,
                label: format!("{:.0}%", 100.0 * acc),
            });
        }
    }
    Grid {
        title: title.into(),
        x_desc: "context length (tokens)".into(),
        y_desc: "needle depth".into(),
        x_names: lengths.iter().map(|l| l.to_string()).collect(),
        y_names: depths.iter().map(|d| format!("{d:.2}")).collect(),
        cells: grid_cells,
    }
}

/// The task metric against compression ratio, one series per length, points labelled by policy.
struct Tradeoff<'a> {
    task: TaskKind,
    cells: Vec<&'a CellResult>,
}

impl Figure for Tradeoff<'_> {
    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, plotters::coord::Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (task, cells) = (self.task, &self.cells);
        area.fill(&WHITE).map_err(plot_err)?;
        let xmax = cells
            .iter()
            .map(|c| c.compression_vs_f16)
            .fold(1.0, f64::max)
            * 1.15;
        // The y range covers every value and every interval that exists (one sample has none).
        let (ymin, ymax) = cells.iter().fold((f64::MAX, f64::MIN), |(lo, hi), c| {
            let (l, h) = interval(c).unwrap_or((c.value, c.value));
            (lo.min(l).min(c.value), hi.max(h).max(c.value))
        });
        let pad = ((ymax - ymin) * 0.1).max(1e-3);
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("{} vs KV compression", task.name()),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax, (ymin - pad)..(ymax + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("compression vs full KV at 16 bits (×)")
            .y_desc(task.metric())
            .draw()
            .map_err(plot_err)?;
        let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
        lengths.sort_unstable();
        lengths.dedup();
        for (i, len) in lengths.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let pts: Vec<&&CellResult> = cells.iter().filter(|c| c.length == *len).collect();
            chart
                .draw_series(
                    pts.iter()
                        .map(|c| Circle::new((c.compression_vs_f16, c.value), 5, colour.filled())),
                )
                .map_err(plot_err)?
                .label(format!("{len} tokens"))
                .legend(move |(x, y)| Circle::new((x, y), 5, colour.filled()));
            chart
                .draw_series(pts.iter().filter_map(|c| {
                    let (lo, hi) = interval(c)?;
                    Some(PathElement::new(
                        vec![(c.compression_vs_f16, lo), (c.compression_vs_f16, hi)],
                        colour,
                    ))
                }))
                .map_err(plot_err)?;
            chart
                .draw_series(pts.iter().map(|c| {
                    Text::new(
                        c.policy.clone(),
                        (c.compression_vs_f16, c.value),
                        ("sans-serif", 11).into_font(),
                    )
                }))
                .map_err(plot_err)?;
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
