//! Outputs of the active-adaptation runs: the selection pictures (`seg adapt --preview`) and the
//! summary of finished runs (`seg adapt-report`: table, JSON with the results page's field
//! names, mIoU-vs-clicks curves, raw per-round data).

use crate::acquisition::{ImageLabels, ImageView, RoundBudget};
use crate::adapt::{self, AdaptConfig, AdaptData, RoundResult};
use crate::domains::{DomainPhotos, CLASS_NAMES, NUM_CLASSES};
use crate::scenes::{class_colour, image_tile, tile_rows, IGNORE};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Pixels whose right or lower neighbour holds another id (one-pixel boundary lines).
fn boundaries(ids: &[u32], size: usize) -> Vec<bool> {
    (0..size * size)
        .map(|p| {
            let (x, y) = (p % size, p / size);
            (x + 1 < size && ids[p + 1] != ids[p]) || (y + 1 < size && ids[p + size] != ids[p])
        })
        .collect()
}

fn blend(a: [u8; 3], b: [u8; 3], t: f32) -> [u8; 3] {
    [0, 1, 2].map(|c| (a[c] as f32 * (1.0 - t) + b[c] as f32 * t).round() as u8)
}

/// Selection pictures for the first `count` target training scenes. Columns: image, ground
/// truth, SLIC superpixels, entities (those `cfg.acquire` keeps in its first round tinted), the
/// acquired labels after all rounds over the dimmed image (wrong labels white), and the seed's
/// source-model prediction. The acquired labels are the run's own (`<run>/round<R>.labels.bin`)
/// when that run has finished; otherwise every round is simulated with the source model (no
/// training in between), which the caption line printed says.
pub fn preview(
    cfg: &AdaptConfig,
    root: &Path,
    photos: &DomainPhotos,
    out: &Path,
    count: usize,
) -> Result<()> {
    if count == 0 || count > 32 {
        bail!("--preview-count must be in 1..=32, got {count}");
    }
    let model_path = root
        .join(format!("source-s{}", cfg.seed))
        .join("model.safetensors");
    if !model_path.is_file() {
        bail!(
            "no source model at {} (run `seg adapt --acquire source-only --seed {}` first)",
            model_path.display(),
            cfg.seed
        );
    }
    let small = AdaptConfig {
        target_scenes: count.min(cfg.target_scenes),
        source_scenes: cfg.batch.max(1),
        val_scenes: 1,
        ..cfg.clone()
    };
    let data = AdaptData::generate(&small, photos);
    let model = adapt::load_segmenter(cfg, &model_path)?;
    let probs = adapt::probabilities(&model, &data.target)?;
    let s = cfg.domain.size;
    let run_labels = root
        .join(cfg.run_name())
        .join(format!("round{}.labels.bin", cfg.rounds));
    let from_run = if run_labels.is_file() {
        let st = adapt::decode_labels(&std::fs::read(&run_labels)?)
            .with_context(|| format!("reading {}", run_labels.display()))?;
        Some(st)
    } else {
        None
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut rows = vec![];
    let (mut labelled, mut wrong) = (0usize, 0usize);
    for (i, probs_i) in probs.iter().enumerate() {
        let view = ImageView {
            height: s,
            width: s,
            probs: probs_i,
            classes: NUM_CLASSES,
            superpixels: &data.superpixels[i].0,
            n_superpixels: data.superpixels[i].1,
            entities: &data.entities[i].0,
            n_entities: data.entities[i].1,
            truth: data.target.label(i),
        };
        let mut st = ImageLabels::new(s * s, data.superpixels[i].1);
        let mut first_entities = vec![];
        for r in 0..cfg.rounds {
            let picked = crate::acquisition::acquire_round(
                cfg.acquire,
                &view,
                &mut st,
                RoundBudget {
                    clicks: cfg.round_clicks(r, s * s),
                },
                &cfg.esa,
                &cfg.ripu,
                &mut rng,
            );
            if r == 0 {
                first_entities = picked.entities;
            }
        }
        if let Some(run) = &from_run {
            st = run
                .get(i)
                .cloned()
                .context("the run's annotation file has fewer scenes than the preview")?;
        }
        let img = image_tile(data.target.image(i), s);
        let truth = data.target.label(i);
        let (l, w) = st.noise(truth);
        labelled += l;
        wrong += w;
        let sp_edge = boundaries(&data.superpixels[i].0, s);
        let ent_edge = boundaries(&data.entities[i].0, s);
        let slic_tile: Vec<[u8; 3]> = (0..s * s)
            .map(|p| if sp_edge[p] { [255, 255, 0] } else { img[p] })
            .collect();
        let ent_tile: Vec<[u8; 3]> = (0..s * s)
            .map(|p| {
                let e = data.entities[i].0[p];
                if ent_edge[p] {
                    [0, 255, 255]
                } else if first_entities.contains(&e) {
                    blend(img[p], [255, 0, 255], 0.5)
                } else {
                    blend(img[p], [0, 0, 0], 0.4)
                }
            })
            .collect();
        let sel_tile: Vec<[u8; 3]> = (0..s * s)
            .map(|p| {
                let l = st.labels[p];
                if l == IGNORE {
                    blend(img[p], [0, 0, 0], 0.7)
                } else if l != truth[p] {
                    [255, 255, 255]
                } else {
                    class_colour(l)
                }
            })
            .collect();
        let pred = adapt::predicted(probs_i);
        rows.push(vec![
            img,
            truth.iter().map(|&l| class_colour(l)).collect(),
            slic_tile,
            ent_tile,
            sel_tile,
            pred.iter().map(|&l| class_colour(l)).collect(),
        ]);
    }
    let pic = tile_rows(&rows, s, 3)?;
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    pic.save_with_format(out, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{}: {} scenes, labels {} -> {} ({:.1} % of their pixels labelled, {:.1} % of those wrong)",
        cfg.acquire.name(),
        rows.len(),
        if from_run.is_some() {
            format!("of the finished run {}", cfg.run_name())
        } else {
            "simulated with the source model".to_string()
        },
        out.display(),
        100.0 * labelled as f64 / (rows.len() * s * s) as f64,
        100.0 * wrong as f64 / labelled.max(1) as f64
    );
    Ok(())
}

/// Every finished round of every run under `root` (source models as round 0 of `source-only`).
pub fn collect(root: &Path) -> Result<Vec<RoundResult>> {
    let mut out = vec![];
    let entries = std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
    let mut dirs: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        let mut files: Vec<_> = std::fs::read_dir(d)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                (n.starts_with("round") || n == "model.json")
                    && n.ends_with(".json")
                    && !n.contains("state")
            })
            .collect();
        files.sort();
        for f in files {
            let r: RoundResult = serde_json::from_slice(&std::fs::read(&f)?)
                .with_context(|| format!("parsing {}", f.display()))?;
            out.push(r);
        }
    }
    Ok(out)
}

/// Run group (the run name without its seed): `esa-c40`, `ripu-ra-r0.022`, `source-only`.
pub fn group(r: &RoundResult) -> String {
    match r.run.rfind("-s") {
        Some(i) => r.run[..i].to_string(),
        None => r.run.clone(),
    }
}

/// Mean and sample standard deviation.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        f64::NAN
    };
    (m, sd)
}

fn fmt_ms(v: &[f64]) -> String {
    let (m, sd) = mean_sd(v);
    if v.len() > 1 {
        format!("{m:.1} ± {sd:.1}")
    } else {
        format!("{m:.1}")
    }
}

/// A curve: method name and (clicks, mean mIoU, seeds) points.
type Curve = (String, Vec<(f64, f64, usize)>);

/// Final rounds by group, then by seed.
type Finals = BTreeMap<String, BTreeMap<u64, RoundResult>>;

fn finals(all: &[RoundResult], rounds: usize) -> Finals {
    let mut f: Finals = BTreeMap::new();
    for r in all {
        let g = if r.acquire == "source-only" {
            "source-only".to_string()
        } else {
            group(r)
        };
        if r.round == rounds || (r.acquire == "source-only" && r.round == 0) {
            f.entry(g).or_default().insert(r.seed, r.clone());
        }
    }
    f
}

/// Write `esa.json`, `esa-data/{runs.json, table.md, curves.svg}` under `out`.
pub fn write(root: &Path, out: &Path, rounds: usize) -> Result<()> {
    let all = collect(root)?;
    if all.is_empty() {
        bail!("no finished rounds under {}", root.display());
    }
    let data_dir = out.join("esa-data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::write(data_dir.join("runs.json"), serde_json::to_vec_pretty(&all)?)?;
    let f = finals(&all, rounds);
    let miou = |g: &str| -> Vec<(u64, f64)> {
        f.get(g)
            .map(|m| m.iter().map(|(s, r)| (*s, 100.0 * r.eval.miou)).collect())
            .unwrap_or_default()
    };
    let entry = |g: &str| -> serde_json::Value {
        let rs: Vec<&RoundResult> = f.get(g).map(|m| m.values().collect()).unwrap_or_default();
        if rs.is_empty() {
            return serde_json::Value::Null;
        }
        let v: Vec<f64> = rs.iter().map(|r| 100.0 * r.eval.miou).collect();
        let (m, sd) = mean_sd(&v);
        let c: Vec<f64> = rs.iter().map(|r| r.clicks_per_image).collect();
        let lab: Vec<f64> = rs.iter().map(|r| 100.0 * r.labelled_share).collect();
        let noise: Vec<f64> = rs.iter().map(|r| 100.0 * r.label_noise).collect();
        let sd_v: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.source_domain_miou)
            .map(|x| 100.0 * x)
            .collect();
        let src_dom = if sd_v.is_empty() {
            serde_json::Value::Null
        } else {
            json!(mean_sd(&sd_v).0)
        };
        json!({
            "miou": m,
            "miou_sd": if sd.is_nan() { serde_json::Value::Null } else { json!(sd) },
            "miou_per_seed": rs.iter().map(|r| json!({"seed": r.seed, "miou": 100.0 * r.eval.miou})).collect::<Vec<_>>(),
            "n": rs.len(),
            "clicks": mean_sd(&c).0,
            "labelled_pct": mean_sd(&lab).0,
            "label_noise_pct": mean_sd(&noise).0,
            "source_domain_miou": src_dom,
        })
    };
    let seeds: Vec<u64> = f
        .get("esa-c40")
        .map(|m| m.keys().copied().collect())
        .unwrap_or_default();
    let mut c40 = serde_json::Map::new();
    for (k, g) in [
        ("esa", "esa-c40"),
        ("ripu_pa", "ripu-pa-c40"),
        ("ripu_ra", "ripu-ra-r0.022"),
        ("source_only", "source-only"),
        ("full", "full"),
        ("random_sp", "random-sp-c40"),
        ("entropy_sp", "entropy-sp-c40"),
        ("esa_oracle_entities", "esa-oracle-c40"),
    ] {
        c40.insert(k.into(), entry(g));
    }
    // Curves: mIoU against clicks per image, by method.
    let methods = [
        "esa",
        "esa-oracle",
        "ripu-pa",
        "ripu-ra",
        "random-sp",
        "entropy-sp",
    ];
    let mut curves = serde_json::Map::new();
    let mut curve_pts: Vec<Curve> = vec![];
    for m in methods {
        let mut pts = vec![];
        for c in [10, 20, 40, 80] {
            let v: Vec<f64> = miou(&format!("{m}-c{c}")).iter().map(|x| x.1).collect();
            if !v.is_empty() {
                pts.push((c as f64, mean_sd(&v).0, v.len()));
            }
        }
        if !pts.is_empty() {
            curves.insert(
                m.replace('-', "_"),
                json!(pts
                    .iter()
                    .map(|p| json!({"clicks": p.0, "miou": p.1, "n": p.2}))
                    .collect::<Vec<_>>()),
            );
            curve_pts.push((m.to_string(), pts));
        }
    }
    // Paired per-seed comparisons behind the bar.
    let paired = |a: &str, b: &str| -> Vec<f64> {
        let (ma, mb) = (miou(a), miou(b));
        ma.iter()
            .filter_map(|(s, x)| mb.iter().find(|(t, _)| t == s).map(|(_, y)| x - y))
            .collect()
    };
    let esa_minus_pa = paired("esa-c40", "ripu-pa-c40");
    let ra_minus_esa = paired("ripu-ra-r0.022", "esa-c40");
    let bar = json!({
        "esa_minus_ripu_pa": esa_minus_pa,
        "ripu_ra_minus_esa": ra_minus_esa,
        "esa_beats_ripu_pa_every_seed": !esa_minus_pa.is_empty() && esa_minus_pa.iter().all(|d| *d > 0.0),
        "esa_within_3_of_ripu_ra_every_seed": !ra_minus_esa.is_empty() && ra_minus_esa.iter().all(|d| *d <= 3.0),
    });
    let doc = json!({
        "clicks_40": c40,
        "seeds": seeds,
        "curves": curves,
        "bar": bar,
        "units": "mIoU in % over the 8 classes on 100 target validation scenes; clicks per target image",
    });
    std::fs::write(out.join("esa.json"), serde_json::to_vec_pretty(&doc)?)?;
    // Markdown tables.
    let mut md = String::new();
    md += "| run | seeds | mIoU % (mean ± sd) | clicks / image | labelled pixels % | wrong labels % |\n|---|---|---|---|---|---|\n";
    for (g, m) in &f {
        let v: Vec<f64> = m.values().map(|r| 100.0 * r.eval.miou).collect();
        let c: Vec<f64> = m.values().map(|r| r.clicks_per_image).collect();
        let l: Vec<f64> = m.values().map(|r| 100.0 * r.labelled_share).collect();
        let n: Vec<f64> = m.values().map(|r| 100.0 * r.label_noise).collect();
        md += &format!(
            "| {g} | {} | {} | {:.1} | {:.2} | {:.2} |\n",
            m.keys()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            fmt_ms(&v),
            mean_sd(&c).0,
            mean_sd(&l).0,
            mean_sd(&n).0
        );
    }
    md += "\nPer-class IoU % (final round, mean over seeds):\n\n| run |";
    for c in CLASS_NAMES {
        md += &format!(" {c} |");
    }
    md += "\n|---|";
    md += &"---|".repeat(NUM_CLASSES);
    md += "\n";
    for (g, m) in &f {
        md += &format!("| {g} |");
        for c in 0..NUM_CLASSES {
            let v: Vec<f64> = m
                .values()
                .filter_map(|r| r.eval.iou[c])
                .map(|x| 100.0 * x)
                .collect();
            md += &format!(" {:.1} |", mean_sd(&v).0);
        }
        md += "\n";
    }
    md += "\nmIoU % after each round (mean over seeds):\n\n| run | r1 | r2 | r3 | r4 | r5 |\n|---|---|---|---|---|---|\n";
    let mut by_round: BTreeMap<String, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for r in all.iter().filter(|r| r.round > 0) {
        by_round
            .entry(group(r))
            .or_default()
            .entry(r.round)
            .or_default()
            .push(100.0 * r.eval.miou);
    }
    for (g, rs) in &by_round {
        md += &format!("| {g} |");
        for r in 1..=rounds {
            match rs.get(&r) {
                Some(v) => md += &format!(" {:.1} |", mean_sd(v).0),
                None => md += " – |",
            }
        }
        md += "\n";
    }
    std::fs::write(data_dir.join("table.md"), &md)?;
    let full = f
        .get("full")
        .map(|m| mean_sd(&m.values().map(|r| 100.0 * r.eval.miou).collect::<Vec<_>>()).0);
    let src = f
        .get("source-only")
        .map(|m| mean_sd(&m.values().map(|r| 100.0 * r.eval.miou).collect::<Vec<_>>()).0);
    let ra = f.get("ripu-ra-r0.022").map(|m| {
        let v: Vec<f64> = m.values().map(|r| 100.0 * r.eval.miou).collect();
        let c: Vec<f64> = m.values().map(|r| r.clicks_per_image).collect();
        (mean_sd(&c).0, mean_sd(&v).0)
    });
    plot_curves(&curve_pts, full, src, ra, &data_dir.join("curves.svg"))?;
    print!("{md}");
    println!(
        "wrote {}, {}",
        out.join("esa.json").display(),
        data_dir.display()
    );
    Ok(())
}

/// DejaVu Sans, the font every results plot embeds (licence beside the file).
const PLOT_FONT: &[u8] = include_bytes!("../../frugal-eval/assets/DejaVuSans.ttf");

fn plot_curves(
    curves: &[Curve],
    full: Option<f64>,
    source: Option<f64>,
    ra_ratio: Option<(f64, f64)>,
    path: &Path,
) -> Result<()> {
    use plotters::prelude::*;
    // The workspace's plotters measures text with fonts registered by name only (no system
    // fonts), so the curves register the embedded DejaVu Sans the results plots use.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, PLOT_FONT);
    let root = SVGBackend::new(path, (760, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut lo = 100f64;
    let mut hi = 0f64;
    for (_, pts) in curves {
        for p in pts {
            lo = lo.min(p.1);
            hi = hi.max(p.1);
        }
    }
    for v in [full, source, ra_ratio.map(|r| r.1)].into_iter().flatten() {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (lo, hi) = ((lo - 5.0).max(0.0).floor(), (hi + 5.0).min(100.0).ceil());
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "target mIoU after 5 rounds against clicks per image (mean over seeds)",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((8f64..100f64).log_scale(), lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("clicks per target image (superpixels / PA pixels / RA 3×3 regions), log scale")
        .y_desc("target mIoU (%)")
        .draw()?;
    for (i, (name, pts)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
        let n = pts.iter().map(|p| p.2).min().unwrap_or(0);
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(format!("{name} (n≥{n})"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    for (label, v, col) in [
        ("full target labels", full, BLACK),
        ("source only", source, RGBColor(150, 150, 150)),
    ] {
        if let Some(y) = v {
            chart
                .draw_series(LineSeries::new(
                    vec![(8.0, y), (100.0, y)],
                    col.stroke_width(1),
                ))?
                .label(label)
                .legend(move |(x, yy)| PathElement::new(vec![(x, yy), (x + 18, yy)], col));
        }
    }
    if let Some((c, y)) = ra_ratio {
        chart
            .draw_series(std::iter::once(TriangleMarker::new(
                (c.clamp(8.0, 100.0), y),
                7,
                RED.filled(),
            )))?
            .label("ripu-ra at 2.2 % of pixels")
            .legend(|(x, y)| TriangleMarker::new((x + 9, y), 5, RED.filled()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_spread() {
        let r = RoundResult {
            run: "ripu-ra-r0.022-s2".into(),
            acquire: "ripu-ra".into(),
            entities: "-".into(),
            seed: 2,
            round: 5,
            budget_clicks: 15,
            clicks_per_image: 15.0,
            labelled_share: 0.03,
            label_noise: 0.0,
            eval: adapt::Evaluation {
                miou: 0.5,
                iou: vec![],
                pixel_accuracy: 0.9,
            },
            source_domain_miou: None,
            steps: 1,
            final_loss: 0.0,
            acquire_seconds: 0.0,
            train_seconds: 0.0,
        };
        assert_eq!(group(&r), "ripu-ra-r0.022");
        let (m, sd) = mean_sd(&[1.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((sd - 2f64.sqrt()).abs() < 1e-12);
    }
}
