//! `seg eval`: reads the stage results of every finished run under the runs folder and writes
//! `cit.json` (per protocol and method: forgetting and mIoU, mean and spread over seeds),
//! `cit-data/runs.json` (every stage of every run), `cit-data/table.md`, one plot of base-class
//! mIoU against the number of classes seen per protocol, and a strip of predictions after the
//! last task for each method.

use crate::cli::EvalArgs;
use crate::incremental::{load_stage, stage_file, Method, RunConfig, StageResult};
use crate::protocol::{task_labels, Protocol};
use crate::scenes::{self, Photos, IGNORE, NUM_CLASSES};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use frugal_nn::segmentation::ConfusionMatrix;
use serde_json::{json, Value};
use std::path::Path;

/// The protocols of the page.
pub const PROTOCOLS: [&str; 3] = ["10-10", "10-2", "10-1"];

/// One finished run: its stages, base first.
#[derive(Debug, Clone)]
pub struct Run {
    pub protocol: String,
    pub method: Method,
    pub seed: u64,
    pub stages: Vec<StageResult>,
}

impl Run {
    /// Relative drop of base-class mIoU from the end of the base task to the end, in %.
    pub fn forgetting_pct(&self) -> Option<f64> {
        if self.method == Method::Oracle {
            return None;
        }
        let b0 = self.stages.first()?.miou_base?;
        let b1 = self.stages.last()?.miou_base?;
        (b0 > 0.0).then(|| 100.0 * (b0 - b1) / b0)
    }

    fn last(&self) -> &StageResult {
        self.stages.last().expect("a run has stages")
    }
}

fn read_stage(path: &Path) -> Option<StageResult> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn seeds_in(dir: &Path, prefix: &str) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix(prefix)?
                        .parse::<u64>()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every finished run under `root` (unfinished runs are skipped and listed in the second value).
pub fn collect(root: &Path) -> Result<(Vec<Run>, Vec<String>)> {
    let mut runs = vec![];
    let mut unfinished = vec![];
    for seed in seeds_in(root, "oracle-s") {
        if let Some(s) = read_stage(&root.join(format!("oracle-s{seed}/stage.json"))) {
            for p in PROTOCOLS {
                runs.push(Run {
                    protocol: p.into(),
                    method: Method::Oracle,
                    seed,
                    stages: vec![s.clone()],
                });
            }
        }
    }
    for p in PROTOCOLS {
        let protocol = Protocol::parse(p, NUM_CLASSES)?;
        let n_tasks = protocol.tasks().len();
        for method in Method::ALL.into_iter().filter(|m| *m != Method::Oracle) {
            let dir = root.join(p);
            for seed in seeds_in(&dir, &format!("{}-s", method.name())) {
                let cfg = RunConfig {
                    protocol,
                    method,
                    seed,
                    ..Default::default()
                };
                let stages: Vec<StageResult> = (0..n_tasks)
                    .map_while(|t| read_stage(&stage_file(&cfg, root, t).with_extension("json")))
                    .collect();
                if stages.len() == n_tasks {
                    runs.push(Run {
                        protocol: p.into(),
                        method,
                        seed,
                        stages,
                    });
                } else {
                    unfinished.push(format!(
                        "{p} {} s{seed}: {}/{n_tasks} tasks",
                        method.name(),
                        stages.len()
                    ));
                }
            }
        }
    }
    Ok((runs, unfinished))
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

fn stat(vals: &[Option<f64>], scale: f64) -> Value {
    let v: Vec<f64> = vals.iter().flatten().map(|x| x * scale).collect();
    if v.is_empty() {
        return Value::Null;
    }
    let (m, sd) = mean_sd(&v);
    json!({"mean": m, "sd": sd, "n": v.len()})
}

fn fmt(v: &Value) -> String {
    match (v.get("mean"), v.get("sd"), v.get("n")) {
        (Some(m), Some(sd), Some(n)) => {
            let (m, sd) = (m.as_f64().unwrap_or(0.0), sd.as_f64().unwrap_or(0.0));
            if n.as_u64() == Some(1) {
                format!("{m:.1}")
            } else {
                format!("{m:.1} ± {sd:.1}")
            }
        }
        _ => "–".into(),
    }
}

/// The summary JSON: `{protocol: {method: {...}}}` with the field names
/// (`forgetting_pct`, `miou_all`) as seed means, plus spreads and the other mIoUs.
pub fn summary(runs: &[Run]) -> Value {
    let mut out = serde_json::Map::new();
    for p in PROTOCOLS {
        let mut per = serde_json::Map::new();
        for m in Method::ALL {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.protocol == p && r.method == m)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let f = stat(
                &rs.iter().map(|r| r.forgetting_pct()).collect::<Vec<_>>(),
                1.0,
            );
            let all = stat(
                &rs.iter().map(|r| r.last().miou_all).collect::<Vec<_>>(),
                100.0,
            );
            let base = stat(
                &rs.iter().map(|r| r.last().miou_base).collect::<Vec<_>>(),
                100.0,
            );
            let new = stat(
                &rs.iter().map(|r| r.last().miou_new).collect::<Vec<_>>(),
                100.0,
            );
            let base0 = stat(
                &rs.iter().map(|r| r.stages[0].miou_base).collect::<Vec<_>>(),
                100.0,
            );
            let g = |v: &Value| v.get("mean").cloned().unwrap_or(Value::Null);
            let sd = |v: &Value| v.get("sd").cloned().unwrap_or(Value::Null);
            per.insert(
                m.name().into(),
                json!({
                    "forgetting_pct": g(&f),
                    "forgetting_pct_sd": sd(&f),
                    "miou_all": g(&all),
                    "miou_all_sd": sd(&all),
                    "miou_base": g(&base),
                    "miou_base_sd": sd(&base),
                    "miou_new": g(&new),
                    "miou_new_sd": sd(&new),
                    "miou_base_after_base_task": g(&base0),
                    "n": rs.len(),
                    "seeds": rs.iter().map(|r| r.seed).collect::<Vec<_>>(),
                }),
            );
        }
        if !per.is_empty() {
            out.insert(p.into(), Value::Object(per));
        }
    }
    Value::Object(out)
}

/// Markdown tables: results per protocol, and per-task cost of the 10-1 runs.
pub fn table(runs: &[Run]) -> String {
    let mut s = String::new();
    for p in PROTOCOLS {
        let rows: Vec<Method> = Method::ALL
            .into_iter()
            .filter(|m| runs.iter().any(|r| r.protocol == p && r.method == *m))
            .collect();
        if rows.is_empty() {
            continue;
        }
        s += &format!(
            "\n**{p}** (mIoU % on the test scenes after the last task; forgetting = relative drop of base-class mIoU since the base task; mean ± sample sd over the seeds listed)\n\n"
        );
        s += "| method | seeds | base after base task | base | new | all | forgetting % | new-class cost vs oracle (points) |\n|---|---|---|---|---|---|---|---|\n";
        let oracle_new: Vec<f64> = runs
            .iter()
            .filter(|r| r.protocol == p && r.method == Method::Oracle)
            .filter_map(|r| r.last().miou_new)
            .collect();
        for m in rows {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.protocol == p && r.method == m)
                .collect();
            let col = |f: &dyn Fn(&Run) -> Option<f64>, scale: f64| {
                fmt(&stat(&rs.iter().map(|r| f(r)).collect::<Vec<_>>(), scale))
            };
            let cost = if m == Method::Oracle || oracle_new.is_empty() {
                "–".to_string()
            } else {
                let on = mean_sd(&oracle_new).0;
                let v: Vec<Option<f64>> = rs
                    .iter()
                    .map(|r| r.last().miou_new.map(|x| on - x))
                    .collect();
                fmt(&stat(&v, 100.0))
            };
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                m.name(),
                rs.iter()
                    .map(|r| r.seed.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                if m == Method::Oracle {
                    "–".into()
                } else {
                    col(&|r| r.stages[0].miou_base, 100.0)
                },
                col(&|r| r.last().miou_base, 100.0),
                col(&|r| r.last().miou_new, 100.0),
                col(&|r| r.last().miou_all, 100.0),
                col(&|r| r.forgetting_pct(), 1.0),
                cost
            );
        }
    }
    // Cost per task of the 10-1 distillation runs (seed-mean seconds).
    let cost_rows: Vec<&Run> = runs
        .iter()
        .filter(|r| r.protocol == "10-1" && matches!(r.method, Method::Cit | Method::Iterative))
        .collect();
    if !cost_rows.is_empty() {
        s += "\n**Cost per task, 10-1** (seconds on the shared 2-core machine under load from other jobs, one thread; teacher = computing the frozen heads' outputs for the task's training scenes; peak RSS of the process)\n\n| method | seed | task | frozen heads run | teacher s | train s | peak RSS MiB |\n|---|---|---|---|---|---|---|\n";
        for r in cost_rows {
            for st in r.stages.iter().skip(1) {
                s += &format!(
                    "| {} | {} | {} | {} | {:.2} | {:.0} | {:.0} |\n",
                    r.method.name(),
                    r.seed,
                    st.task,
                    st.teacher_heads,
                    st.teacher_seconds,
                    st.train_seconds,
                    st.peak_rss_mib
                );
            }
        }
    }
    s
}

/// Base-class mIoU against the number of classes seen, one line per method (seed mean).
pub fn plot(runs: &[Run], protocol: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (760, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{protocol}: base-class mIoU after each task (mean over seeds)"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(9.5f64..20.5f64, 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("classes seen")
        .y_desc("mIoU of the 10 base classes (%)")
        .draw()?;
    for (i, m) in Method::ALL.into_iter().enumerate() {
        let rs: Vec<&Run> = runs
            .iter()
            .filter(|r| r.protocol == protocol && r.method == m)
            .collect();
        if rs.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = if m == Method::Oracle {
            let v: Vec<f64> = rs.iter().filter_map(|r| r.last().miou_base).collect();
            let y = 100.0 * mean_sd(&v).0;
            vec![(10.0, y), (20.0, y)]
        } else {
            (0..rs[0].stages.len())
                .map(|t| {
                    let v: Vec<f64> = rs.iter().filter_map(|r| r.stages[t].miou_base).collect();
                    (rs[0].stages[t].classes_seen as f64, 100.0 * mean_sd(&v).0)
                })
                .collect()
        };
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(format!("{} (n={})", m.name(), rs.len()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Prediction strip: columns are test scenes; rows are the image, the ground truth, then the
/// prediction of each method after its last task (in the order returned).
pub fn strip(
    runs: &[Run],
    root: &Path,
    protocol: &str,
    seed: u64,
    photos: &Photos,
    path: &Path,
) -> Result<Vec<String>> {
    let base_cfg = RunConfig::default();
    let test = scenes::generate(photos, &base_cfg.scene, base_cfg.test_data_seed, 8);
    let s = base_cfg.scene.size;
    let mut rows = vec![
        (0..test.len())
            .map(|i| scenes::image_tile(test.image(i), s))
            .collect::<Vec<_>>(),
        (0..test.len())
            .map(|i| scenes::label_tile(test.label(i)))
            .collect(),
    ];
    let mut names = vec!["image".to_string(), "ground truth".to_string()];
    let images = Tensor::from_vec(test.images.clone(), (test.len(), 3, s, s), &Device::Cpu)?;
    for m in Method::ALL {
        let Some(r) = runs
            .iter()
            .find(|r| r.protocol == protocol && r.method == m && r.seed == seed)
        else {
            continue;
        };
        let cfg = RunConfig {
            protocol: Protocol::parse(protocol, NUM_CLASSES)?,
            method: m,
            seed,
            ..Default::default()
        };
        let last = r.stages.len() - 1;
        let stage = load_stage(
            &cfg,
            &stage_file(&cfg, root, last),
            m == Method::SoftmaxKd,
            r.last().classes_seen,
        )?;
        let feats = stage.encoder.forward_t(&images, false)?;
        let pred = stage.head.predict(&feats, s)?;
        let labels = &test.labels;
        rows.push(
            (0..test.len())
                .map(|i| {
                    (0..s * s)
                        .map(|p| {
                            // Background pixels are not a class: show them dark, as in the labels.
                            if labels[i * s * s + p] == IGNORE {
                                let c = scenes::class_colour(pred[i * s * s + p] as u8);
                                [c[0] / 4, c[1] / 4, c[2] / 4]
                            } else {
                                scenes::class_colour(pred[i * s * s + p] as u8)
                            }
                        })
                        .collect()
                })
                .collect(),
        );
        names.push(m.name().into());
    }
    let img = scenes::tile_rows(&rows, s, 2)?;
    img.save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(names)
}

/// Base-class mIoU after the last task of every run of `seed`, with the arg-max over all seen
/// classes (the reported number) and over the base classes only. The gap is the share of the
/// loss caused by new classes taking base pixels; what remains is drift of the base classes' own
/// outputs.
pub fn base_only(
    runs: &[Run],
    root: &Path,
    seed: u64,
    photos: &Photos,
) -> Result<Vec<(String, Method, f64, f64)>> {
    let base_cfg = RunConfig::default();
    let test = scenes::generate(
        photos,
        &base_cfg.scene,
        base_cfg.test_data_seed,
        base_cfg.test_scenes,
    );
    let s = base_cfg.scene.size;
    let nb = base_cfg.protocol.base;
    let mut out = vec![];
    for r in runs
        .iter()
        .filter(|r| r.seed == seed && r.method != Method::Oracle)
    {
        let cfg = RunConfig {
            protocol: Protocol::parse(&r.protocol, NUM_CLASSES)?,
            method: r.method,
            seed,
            ..Default::default()
        };
        let stage = load_stage(
            &cfg,
            &stage_file(&cfg, root, r.stages.len() - 1),
            r.method == Method::SoftmaxKd,
            r.last().classes_seen,
        )?;
        let mut cm = ConfusionMatrix::new(nb);
        let all: Vec<usize> = (0..test.len()).collect();
        for chunk in all.chunks(64) {
            let mut v = Vec::with_capacity(chunk.len() * 3 * s * s);
            let mut labels = Vec::with_capacity(chunk.len() * s * s);
            for &i in chunk {
                v.extend_from_slice(test.image(i));
                labels.extend(task_labels(test.label(i), &(0..nb)));
            }
            let x = Tensor::from_vec(v, (chunk.len(), 3, s, s), &Device::Cpu)?;
            let f = stage.encoder.forward_t(&x, false)?;
            cm.add(&stage.head.predict_among(&f, s, nb)?, &labels, IGNORE)?;
        }
        let only = cm.miou(0..nb).unwrap_or(0.0);
        out.push((
            r.protocol.clone(),
            r.method,
            100.0 * r.last().miou_base.unwrap_or(0.0),
            100.0 * only,
        ));
    }
    Ok(out)
}

/// `seg eval`.
pub fn write(args: &EvalArgs) -> Result<()> {
    let (runs, unfinished) = collect(&args.runs)?;
    if runs.is_empty() {
        anyhow::bail!(
            "no finished run under {} (train some with `seg train`)",
            args.runs.display()
        );
    }
    let data = args.out.join("cit-data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let sum = summary(&runs);
    std::fs::write(args.out.join("cit.json"), serde_json::to_vec_pretty(&sum)?)?;
    let raw: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({"protocol": r.protocol, "method": r.method.name(), "seed": r.seed,
                   "forgetting_pct": r.forgetting_pct(), "stages": r.stages})
        })
        .collect();
    std::fs::write(data.join("runs.json"), serde_json::to_vec_pretty(&raw)?)?;
    let md = table(&runs);
    for p in PROTOCOLS {
        if runs
            .iter()
            .any(|r| r.protocol == p && r.method != Method::Oracle)
        {
            plot(&runs, p, &data.join(format!("base-miou-{p}.svg")))?;
        }
    }
    let photos = Photos::load(
        &args
            .photos
            .clone()
            .unwrap_or_else(scenes::default_photo_dir),
    )?;
    let names = strip(
        &runs,
        &args.runs,
        &args.strip_protocol,
        args.strip_seed,
        &photos,
        &data.join(format!("strip-{}.png", args.strip_protocol)),
    )?;
    let diag = base_only(&runs, &args.runs, args.strip_seed, &photos)?;
    let mut md = md;
    if !diag.is_empty() {
        md += &format!(
            "\n**Where the base-class loss comes from** (seed {}, after the last task; base-class mIoU % with the arg-max over all seen classes, as reported, and over the 10 base classes only)\n\n| protocol | method | base (all classes compete) | base (base classes only) |\n|---|---|---|---|\n",
            args.strip_seed
        );
        for (p, m, a, b) in &diag {
            md += &format!("| {p} | {} | {a:.1} | {b:.1} |\n", m.name());
        }
    }
    std::fs::write(data.join("table.md"), &md)?;
    print!("{md}");
    println!(
        "\nstrip rows ({} s{}): {}",
        args.strip_protocol,
        args.strip_seed,
        names.join(", ")
    );
    if !unfinished.is_empty() {
        println!("unfinished runs (not counted): {}", unfinished.join("; "));
    }
    Ok(())
}
