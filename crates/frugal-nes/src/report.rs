//! Writing an evaluation: JSON summary with the results page's field names, raw CSVs, Markdown
//! tables, the accuracy-vs-PSNR plot (SVG) and the picture strip (PNG).

use crate::eval::{Cell, EvalReport};
use crate::ne::Mode;
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Role of a model relative to an authorized one, for grouping ("patch4x8 (other seed)").
fn group(c: &Cell) -> String {
    let name = |stem: &str| stem.rsplit_once("-s").map(|(n, _)| n.to_string());
    if c.is_authorized {
        "authorized".into()
    } else if name(&c.authorized) == name(&c.model) {
        format!("{} (other seed)", c.arch)
    } else {
        c.arch.clone()
    }
}

/// Spearman rank correlation (ties get average ranks).
fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let rank = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    };
    let (rx, ry) = (rank(x), rank(y));
    let (mx, my) = (mean(&rx), mean(&ry));
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// Write everything under `out` (`nes.json`, `nes-data/…`).
pub fn write(report: &EvalReport, out: &Path, seeds: &[u64], attack_psnr: f64) -> Result<()> {
    let data = out.join("nes-data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let exact: Vec<&Cell> = report
        .cells
        .iter()
        .filter(|c| c.mode == Mode::Exact)
        .collect();
    // Authorized fidelity (exact mode): worst drop over strengths and authorized seeds.
    let auth: Vec<&&Cell> = exact.iter().filter(|c| c.is_authorized).collect();
    let drop_float = auth
        .iter()
        .map(|c| 100.0 * (c.clean_acc - c.ne_float_acc))
        .fold(f64::MIN, f64::max);
    let drop_rel = auth
        .iter()
        .map(|c| 100.0 * (c.clean_acc - c.ne_released_acc))
        .fold(f64::MIN, f64::max);
    let unauth_10: Vec<&&Cell> = exact
        .iter()
        .filter(|c| !c.is_authorized && c.target_psnr <= 10.0)
        .collect();
    let unauth_max = unauth_10
        .iter()
        .map(|c| c.ne_released_acc)
        .fold(f64::MIN, f64::max);
    let at = |f: &dyn Fn(&Cell) -> bool, g: &dyn Fn(&Cell) -> f64| -> f64 {
        mean(
            &exact
                .iter()
                .filter(|c| f(c))
                .map(|c| g(c))
                .collect::<Vec<_>>(),
        )
    };
    let gauss_auth = at(&|c| c.is_authorized && c.target_psnr == 10.0, &|c| {
        c.gauss_acc
    });
    let gauss_unauth = at(&|c| !c.is_authorized && c.target_psnr == 10.0, &|c| {
        c.gauss_acc
    });
    // Degradation vs λ at 10 dB over (authorized, model) pairs of the exact mode.
    let mut lam = vec![];
    let mut drop = vec![];
    for p in &report.pairs {
        if let Some(c) = exact
            .iter()
            .find(|c| c.authorized == p.authorized && c.model == p.model && c.target_psnr == 10.0)
        {
            lam.push(p.leakage_ratio);
            drop.push(c.clean_acc - c.ne_released_acc);
        }
    }
    let mut attacks = BTreeMap::new();
    let mut names: Vec<String> = vec![];
    for a in &report.attacks {
        if !names.contains(&a.name) {
            names.push(a.name.clone());
        }
    }
    for name in &names {
        let rows: Vec<_> = report
            .attacks
            .iter()
            .filter(|a| &a.name == name && exact.iter().any(|c| c.authorized == a.authorized))
            .collect();
        attacks.insert(
            name.clone(),
            json!({
                "unauthorized_acc": mean(&rows.iter().map(|a| a.unauthorized_acc).collect::<Vec<_>>()),
                "authorized_acc": mean(&rows.iter().map(|a| a.authorized_acc).collect::<Vec<_>>()),
                "n_authorized_models": rows.len(),
            }),
        );
    }
    let summary = json!({
        "digits": {
            "authorized_min_acc_drop_pts": drop_float,
            "authorized_min_acc_drop_pts_released_8bit": drop_rel,
            "unauthorized_max_acc_at_10db": unauth_max,
            "seeds": seeds,
            "n_test": report.n_test,
            "gaussian_acc_at_10db": {"authorized": gauss_auth, "unauthorized_mean": gauss_unauth},
            "spearman_leakage_vs_drop_at_10db": spearman(&lam, &drop),
            "n_pairs": lam.len(),
        },
        "attacks": attacks,
        "attack_true_psnr_db": attack_psnr,
    });
    std::fs::write(out.join("nes.json"), serde_json::to_vec_pretty(&summary)?)?;
    std::fs::write(
        data.join("cells.json"),
        serde_json::to_vec_pretty(&report.cells)?,
    )?;
    std::fs::write(
        data.join("pairs.json"),
        serde_json::to_vec_pretty(&report.pairs)?,
    )?;
    std::fs::write(
        data.join("attacks.json"),
        serde_json::to_vec_pretty(&report.attacks)?,
    )?;
    std::fs::write(data.join("tables.md"), tables(report)?)?;
    plot(report, &data.join("accuracy-vs-psnr.svg"))?;
    let rows: Vec<Vec<_>> = report.strip.iter().map(|(_, v)| v.clone()).collect();
    if !rows.is_empty() {
        frugal_nn::image_io::grid(&rows, 8)?
            .save(data.join("strip.png"))
            .context("writing strip.png")?;
        let labels: Vec<&str> = report.strip.iter().map(|(l, _)| l.as_str()).collect();
        std::fs::write(data.join("strip-rows.txt"), labels.join("\n") + "\n")?;
    }
    Ok(())
}

/// Mean accuracy per (mode, strength, group) over authorized seeds and model seeds.
fn grouped(report: &EvalReport) -> BTreeMap<(String, i64, String), Vec<&Cell>> {
    let mut g: BTreeMap<(String, i64, String), Vec<&Cell>> = BTreeMap::new();
    for c in &report.cells {
        let mode = format!("{:?}", c.mode);
        g.entry((mode, -(c.target_psnr as i64), group(c)))
            .or_default()
            .push(c);
    }
    g
}

fn tables(report: &EvalReport) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "| mode | target dB | NE true dB | noise true dB | model group | n models | clean | NE float | NE 8-bit | noise 8-bit |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|---|---|---|---|")?;
    for ((mode, p, grp), cells) in grouped(report) {
        let m = |f: &dyn Fn(&Cell) -> f64| mean(&cells.iter().map(|c| f(c)).collect::<Vec<_>>());
        writeln!(
            s,
            "| {mode} | {} | {:.1} | {:.1} | {grp} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            -p,
            m(&|c| c.ne_true_psnr),
            m(&|c| c.gauss_true_psnr),
            cells.len(),
            100.0 * m(&|c| c.clean_acc),
            100.0 * m(&|c| c.ne_float_acc),
            100.0 * m(&|c| c.ne_released_acc),
            100.0 * m(&|c| c.gauss_acc),
        )?;
    }
    writeln!(
        s,
        "\n| authorized | model | leakage ratio λ | spectral gap |"
    )?;
    writeln!(s, "|---|---|---|---|")?;
    for p in &report.pairs {
        writeln!(
            s,
            "| {} | {} | {:.3} | {:.4} |",
            p.authorized, p.model, p.leakage_ratio, p.spectral_gap
        )?;
    }
    writeln!(
        s,
        "\n| attack | authorized | authorized acc | unauthorized mean acc |"
    )?;
    writeln!(s, "|---|---|---|---|")?;
    for a in &report.attacks {
        writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} |",
            a.name,
            a.authorized,
            100.0 * a.authorized_acc,
            100.0 * a.unauthorized_acc
        )?;
    }
    Ok(s)
}

fn plot(report: &EvalReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let g = grouped(report);
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for ((mode, _, grp), cells) in &g {
        if mode != "Exact" {
            continue;
        }
        let x = mean(&cells.iter().map(|c| c.ne_true_psnr).collect::<Vec<_>>());
        let y = mean(&cells.iter().map(|c| c.ne_released_acc).collect::<Vec<_>>());
        series
            .entry(format!("{grp} on NE"))
            .or_default()
            .push((x, 100.0 * y));
        if grp == "authorized" {
            let xg = mean(&cells.iter().map(|c| c.gauss_true_psnr).collect::<Vec<_>>());
            let yg = mean(&cells.iter().map(|c| c.gauss_acc).collect::<Vec<_>>());
            series
                .entry("authorized on equal-energy noise".into())
                .or_default()
                .push((xg, 100.0 * yg));
        }
    }
    let root = SVGBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "digits: top-1 accuracy vs true PSNR of the released 8-bit image (exact mode)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..45f64, 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("true PSNR (dB)")
        .y_desc("top-1 accuracy (%)")
        .draw()?;
    for (i, (name, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
