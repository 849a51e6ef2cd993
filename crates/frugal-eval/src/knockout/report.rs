//! The knockout report as a Markdown table and heat maps.

use super::*;

/// The smallest early-exit layer whose accuracy is within `points` percentage points of dense.
pub fn smallest_safe_early_exit(report: &KnockoutReport, points: f64) -> Option<&ConditionResult> {
    let dense = report
        .conditions
        .iter()
        .find(|c| c.setting == Setting::Dense)?
        .accuracy;
    report
        .conditions
        .iter()
        .filter(|c| {
            matches!(c.setting, Setting::EarlyExit { .. })
                && c.accuracy >= dense - points / 100.0 - 1e-12
        })
        .min_by_key(|c| match c.setting {
            Setting::EarlyExit { layer } => layer,
            _ => usize::MAX,
        })
}

pub fn markdown(report: &KnockoutReport) -> String {
    let r = &report.run;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "frugal {} (commit {}), model `{}` (sha256 {}…), input {}, {} samples, seed {}, {} on {} threads, {}\n",
        r.frugal_version,
        r.git_commit,
        r.model,
        &r.model_sha256[..r.model_sha256.len().min(12)],
        report.input,
        r.samples,
        r.seed,
        r.machine,
        r.threads,
        r.date_utc
    );
    let row = |s: &mut String, c: &ConditionResult| {
        let _ = writeln!(
            s,
            "| `{}` | {:.3} | [{:.3}, {:.3}] | {:.3} | {:.3} | {:.2} |",
            c.policy,
            c.accuracy,
            c.ci_low,
            c.ci_high,
            c.relative_accuracy,
            c.gold_logprob,
            c.agreement_with_dense
        );
    };
    let head = "| condition | accuracy | 95% CI | relative to dense | gold log-prob | agrees with dense |\n|---|---:|---|---:|---:|---:|";
    for (title, pick) in [
        (
            "Baseline",
            (|c: &Setting| matches!(c, Setting::Dense)) as fn(&Setting) -> bool,
        ),
        (
            "Cut-off sweep: knockout in layers i..L (i = 0: all layers)",
            |c| matches!(c, Setting::Cutoff { .. }),
        ),
        ("Sliding windows", |c| matches!(c, Setting::Window { .. })),
    ] {
        let cells: Vec<&ConditionResult> = report
            .conditions
            .iter()
            .filter(|c| pick(&c.setting))
            .collect();
        if cells.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n### {title}\n\n{head}");
        cells.into_iter().for_each(|c| row(&mut s, c));
    }
    let timed: Vec<&ConditionResult> = report
        .conditions
        .iter()
        .filter(|c| c.prefill_secs.is_some())
        .collect();
    if timed.len() > 1 {
        let _ = writeln!(
            s,
            "\n### Efficiency policies against dense (same samples, interleaved per sample)\n\n| policy | accuracy | 95% CI | gold log-prob | prefill s (mean) | prefill speed-up | KV MiB held | KV fraction of dense |\n|---|---:|---|---:|---:|---:|---:|---:|"
        );
        for c in timed {
            let _ = writeln!(
                s,
                "| `{}` | {:.3} | [{:.3}, {:.3}] | {:.3} | {:.3} | {:.2}× | {:.2} | {:.3} |",
                c.policy,
                c.accuracy,
                c.ci_low,
                c.ci_high,
                c.gold_logprob,
                c.prefill_secs.unwrap_or(0.0),
                c.prefill_speedup_vs_dense.unwrap_or(0.0),
                c.kv_bytes.unwrap_or(0.0) / 1048576.0,
                c.kv_fraction_of_dense.unwrap_or(0.0)
            );
        }
        let tried = report
            .conditions
            .iter()
            .any(|c| matches!(c.setting, Setting::EarlyExit { .. }));
        match smallest_safe_early_exit(report, 1.0).filter(|_| tried) {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "\nSmallest early-exit layer within 1 point of dense accuracy: `{}`.",
                    c.policy
                );
            }
            None if tried => {
                let _ = writeln!(
                    s,
                    "\nNo early-exit layer tried is within 1 point of dense accuracy."
                );
            }
            None => {}
        }
    }
    s
}

/// Heat maps (type × cut-off layer, type × window start → relative accuracy and Δ gold
/// log-prob) and line plots of the cut-off curves, as PNG and SVG. Returns the files written.
pub fn plots(report: &KnockoutReport, dir: &FsPath) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dense_lp = report
        .conditions
        .iter()
        .find(|c| c.setting == Setting::Dense)
        .map_or(0.0, |c| c.gold_logprob);
    let mut written = Vec::new();
    for (kind, xlabel) in [
        ("cutoff", "cut-off layer i (knockout in layers i..L)"),
        ("window", "window start layer"),
    ] {
        let cells: Vec<(String, usize, &ConditionResult)> = report
            .conditions
            .iter()
            .filter_map(|c| match &c.setting {
                Setting::Cutoff { path, from } if kind == "cutoff" => {
                    Some((path.clone(), *from, c))
                }
                Setting::Window { path, from, .. } if kind == "window" => {
                    Some((path.clone(), *from, c))
                }
                _ => None,
            })
            .collect();
        if cells.is_empty() {
            continue;
        }
        let mut xs: Vec<usize> = cells.iter().map(|d| d.1).collect();
        xs.sort_unstable();
        xs.dedup();
        let mut ys: Vec<String> = Vec::new();
        for d in &cells {
            if !ys.contains(&d.0) {
                ys.push(d.0.clone());
            }
        }
        for relacc in [true, false] {
            // Green = as good as dense, red = worse: ratio 1 → green, 0 → red; Δlogprob 0 →
            // green, -3 → red.
            let grid_cells = cells
                .iter()
                .map(|(p, x, c)| {
                    let (good, label) = if relacc {
                        let v = c.relative_accuracy;
                        (v, format!("{v:.2}"))
                    } else {
                        let v = c.gold_logprob - dense_lp;
                        (1.0 + v / 3.0, format!("{v:.1}"))
                    };
                    GridCell {
                        x: xs.iter().position(|a| a == x).unwrap_or(0),
                        y: ys.iter().position(|a| a == p).unwrap_or(0),
                        good,
                        label,
                    }
                })
                .collect();
            let grid = Grid {
                title: if relacc {
                    format!("accuracy relative to dense, {kind} sweep")
                } else {
                    format!("Δ gold log-prob vs dense, {kind} sweep")
                },
                x_desc: xlabel.into(),
                y_desc: "knockout".into(),
                x_names: xs.iter().map(|x| x.to_string()).collect(),
                y_names: ys
                    .iter()
                    .map(|p| format!("{}-K", p.to_uppercase()))
                    .collect(),
                cells: grid_cells,
            };
            let metric = if relacc { "relacc" } else { "dlogprob" };
            let stem = dir.join(format!("knockout_{kind}_{metric}"));
            written.extend(save(&grid, &stem, (900, 300))?);
        }
    }
    Ok(written)
}
