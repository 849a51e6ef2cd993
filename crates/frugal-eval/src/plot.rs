//! Every plot of every results page goes through here: the embedded font, one drawing written
//! as PNG and SVG, and the labelled heat-map grid that the passkey and knockout pages share.

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// DejaVu Sans, embedded once so PNG text renders on machines without fonts (licence beside it).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font as `sans-serif` for plotters (registering twice is harmless).
pub(crate) fn register_font() {
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
}

pub(crate) fn plot_err<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

/// A drawing that can go to any plotters backend.
pub(crate) trait Figure {
    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `fig` as `stem.png` and `stem.svg` (the directory is created), returning both paths.
pub(crate) fn save(fig: &impl Figure, stem: &Path, size: (u32, u32)) -> Result<Vec<PathBuf>> {
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    fig.draw(BitMapBackend::new(&png, size).into_drawing_area())?;
    fig.draw(SVGBackend::new(&svg, size).into_drawing_area())?;
    Ok(vec![png, svg])
}

/// A name safe in a file name.
pub(crate) fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A heat map over named columns and rows: each cell is shaded by how good it is (0 = bad,
/// red; 1 = good, green; NaN = unknown, grey-brown) and carries a text label.
pub(crate) struct Grid {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub x_names: Vec<String>,
    pub y_names: Vec<String>,
    pub cells: Vec<GridCell>,
}

pub(crate) struct GridCell {
    pub x: usize,
    pub y: usize,
    pub good: f64,
    pub label: String,
}

impl Figure for Grid {
    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        area.fill(&WHITE).map_err(plot_err)?;
        let (nx, ny) = (self.x_names.len(), self.y_names.len());
        let mut chart = ChartBuilder::on(&area)
            .caption(&self.title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..nx as f64, 0f64..ny as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .x_labels(nx * 2 + 1)
            .y_labels(ny * 2 + 1)
            .x_label_formatter(&|v| label_at(*v, &self.x_names))
            .y_label_formatter(&|v| label_at(*v, &self.y_names))
            .draw()
            .map_err(plot_err)?;
        for c in &self.cells {
            let good = if c.good.is_nan() {
                0.5
            } else {
                c.good.clamp(0.0, 1.0)
            };
            let shade = RGBColor(
                (230.0 * (1.0 - good) + 20.0) as u8,
                (200.0 * good + 30.0) as u8,
                60,
            );
            let (x0, y0) = (c.x as f64, c.y as f64);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                    shade.filled(),
                )))
                .map_err(plot_err)?;
            let style = ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart
                .draw_series(std::iter::once(Text::new(
                    c.label.clone(),
                    (x0 + 0.5, y0 + 0.5),
                    style,
                )))
                .map_err(plot_err)?;
        }
        area.present().map_err(plot_err)?;
        Ok(())
    }
}

/// Axis label for a tick at `v`: the name of the cell whose centre is at `v`, else nothing.
fn label_at(v: f64, names: &[String]) -> String {
    let i = (v - 0.5).round();
    if (v - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}
