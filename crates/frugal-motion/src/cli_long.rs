//! `frugal motion long-eval | long`: InfiniMotion's experiment and the streaming long run
//! (argument structs and run functions for the front-end to wire in, beside [`crate::cli`]).

use crate::long_experiment::{
    long_run_dir, run_long_variant, stream_long, LongConfig, LongPrepared, LongRun, LongVariant,
    StreamSettings, StreamStats,
};
use crate::metrics::mean_ci95;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<u64>()
                .with_context(|| format!("bad seed {x:?}"))
        })
        .collect()
}

/// Sizes of the long-motion experiment; `--quick` shrinks everything for a smoke run.
#[derive(clap::Args, Debug, Clone)]
pub struct LongSizeArgs {
    /// Output folder for checkpoints and metrics.
    #[arg(long, default_value = "runs/infinimotion")]
    pub out: PathBuf,
    /// Tiny budgets (a smoke run in seconds, not a result).
    #[arg(long)]
    pub quick: bool,
    /// Training steps of the memory / no-memory models (default from the config).
    #[arg(long)]
    pub memory_steps: Option<usize>,
    /// Training steps of KMM's generator (default from the config).
    #[arg(long)]
    pub generator_steps: Option<usize>,
    /// Segments per evaluation script (default 24 = 6 training horizons).
    #[arg(long)]
    pub eval_segments: Option<usize>,
    /// Evaluation scripts (default 32).
    #[arg(long)]
    pub eval_scripts: Option<usize>,
}

impl LongSizeArgs {
    pub fn config(&self) -> LongConfig {
        let mut c = LongConfig::default();
        if self.quick {
            let b = &mut c.base;
            b.n_train = 24;
            b.n_test = 8;
            b.tokenizer_steps = 20;
            b.evaluator_steps = 20;
            b.classifier_steps = 10;
            b.align_steps = 20;
            b.generator_steps = 10;
            b.d_model = 16;
            b.layers = 1;
            b.decode.steps = 3;
            c.d_model = 16;
            c.layers = 1;
            c.memory_steps = 10;
            c.residual_steps = 10;
            c.batch = 4;
            c.eval_scripts = 4;
            c.eval_segments = 8;
        }
        if let Some(s) = self.memory_steps {
            c.memory_steps = s;
        }
        if let Some(s) = self.generator_steps {
            c.base.generator_steps = s;
        }
        if let Some(s) = self.eval_segments {
            c.eval_segments = s;
        }
        if let Some(s) = self.eval_scripts {
            c.eval_scripts = s;
        }
        c
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct LongEvalArgs {
    #[command(flatten)]
    pub size: LongSizeArgs,
    /// Variants (default: all five).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub variant: Vec<LongVariant>,
    #[arg(long, default_value = "0,1,2")]
    pub seeds: String,
    /// Folder for infinimotion.json and the raw data (infinimotion-data/).
    #[arg(long, default_value = "docs/results")]
    pub results: PathBuf,
    /// Only aggregate runs that exist (never train or evaluate a missing one).
    #[arg(long)]
    pub existing_only: bool,
}

fn agg(runs: &[&LongRun], f: impl Fn(&LongRun) -> f64) -> serde_json::Value {
    let v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
    let (m, ci) = mean_ci95(&v);
    serde_json::json!({"mean": m, "ci95": ci, "values": v})
}

fn agg_vec(runs: &[&LongRun], f: impl Fn(&LongRun) -> &Vec<f64>) -> Vec<serde_json::Value> {
    let n = runs.first().map(|r| f(r).len()).unwrap_or(0);
    (0..n).map(|i| agg(runs, |r| f(r)[i])).collect()
}

/// Trains and evaluates every missing variant × seed, then writes `infinimotion.json`,
/// `infinimotion-data/` (runs, real reference, drift plot, memory/time plot when stream stats
/// are there) and prints the table.
pub fn long_eval(args: LongEvalArgs) -> Result<()> {
    let seeds = parse_seeds(&args.seeds)?;
    let variants = if args.variant.is_empty() {
        LongVariant::ALL.to_vec()
    } else {
        args.variant.clone()
    };
    let out = &args.size.out;
    let lp = LongPrepared::prepare(out, args.size.config())?;
    let reference = lp.reference_embeddings()?;
    let mut all: Vec<LongRun> = Vec::new();
    // seed-major, so that every variant of a seed is done before the next seed starts
    for &s in &seeds {
        for &v in &variants {
            let p = long_run_dir(out, v, s).join("metrics.json");
            let r = if p.is_file() {
                serde_json::from_str(&std::fs::read_to_string(&p)?)?
            } else if args.existing_only {
                continue;
            } else {
                run_long_variant(&lp, out, v, s, &reference)?
            };
            eprintln!(
                "{} seed {s}: FID {:.3}, R@1 {:.3}, boundary jerk {:.3}, skate {:.3}, drift slope {:.3}",
                r.variant, r.metrics.fid, r.metrics.rprec[0], r.metrics.jerk, r.metrics.skate, r.metrics.drift_slope
            );
            all.push(r);
        }
    }
    let (scripts, real) = lp.real_scripts(lp.cfg.script_seed)?;
    let real_m = lp.score(&scripts, &real, &reference, 0)?;
    let rc = lp.residual_check()?;
    println!(
        "residual tokens (test split, {} frames): normalised MSE base layer only {:.4}, base + predicted residual layers {:.4}, all true layers {:.4}; residual tokens exactly right {:.3}",
        rc.frames, rc.nmse_base_only, rc.nmse_predicted_residual, rc.nmse_all_layers, rc.residual_token_accuracy
    );
    let data = args.results.join("infinimotion-data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("runs.json"), serde_json::to_string_pretty(&all)?)?;
    std::fs::write(
        data.join("real.json"),
        serde_json::to_string_pretty(&real_m)?,
    )?;
    std::fs::write(
        data.join("config.json"),
        serde_json::to_string_pretty(&lp.cfg)?,
    )?;

    let mut fid = serde_json::Map::new();
    let mut full = serde_json::Map::new();
    let mut jerk = serde_json::Map::new();
    let mut drift = serde_json::Map::new();
    let mut series = Vec::new();
    let fmt = |j: &serde_json::Value| {
        format!(
            "{:.3} [{:.3}, {:.3}]",
            j["mean"].as_f64().unwrap_or(f64::NAN),
            j["ci95"][0].as_f64().unwrap_or(f64::NAN),
            j["ci95"][1].as_f64().unwrap_or(f64::NAN)
        )
    };
    println!("| variant | seeds | FID | R@1 | R@3 | boundary jerk | boundary skate | drift slope (FID / training length) |");
    println!("|---|---|---|---|---|---|---|---|");
    for v in LongVariant::ALL {
        let runs: Vec<&LongRun> = all.iter().filter(|r| r.variant == v.key()).collect();
        if runs.is_empty() {
            continue;
        }
        let f = agg(&runs, |r| r.metrics.fid);
        let j = agg(&runs, |r| r.metrics.jerk);
        let d = agg(&runs, |r| r.metrics.drift_slope);
        let e = serde_json::json!({
            "fid": f, "rprec_top1": agg(&runs, |r| r.metrics.rprec[0]),
            "rprec_top3": agg(&runs, |r| r.metrics.rprec[2]),
            "jerk": j, "skate": agg(&runs, |r| r.metrics.skate), "drift_slope": d,
            "fid_by_horizon": agg_vec(&runs, |r| &r.metrics.fid_by_horizon),
            "jerk_by_horizon": agg_vec(&runs, |r| &r.metrics.jerk_by_horizon),
            "skate_by_horizon": agg_vec(&runs, |r| &r.metrics.skate_by_horizon),
            "horizon_centre_training_lengths": runs[0].metrics.horizon_centre_training_lengths,
            "seeds": runs.iter().map(|r| r.seed).collect::<Vec<_>>(),
        });
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            v.key(),
            runs.len(),
            fmt(&f),
            fmt(&e["rprec_top1"]),
            fmt(&e["rprec_top3"]),
            fmt(&j),
            fmt(&e["skate"]),
            fmt(&d)
        );
        let pts: Vec<(f64, f64)> = runs[0]
            .metrics
            .horizon_centre_training_lengths
            .iter()
            .zip(e["fid_by_horizon"].as_array().unwrap())
            .map(|(x, y)| (*x, y["mean"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        series.push((v.key().to_string(), pts));
        fid.insert(v.key().into(), f["mean"].clone());
        jerk.insert(v.key().into(), j["mean"].clone());
        drift.insert(v.key().into(), d["mean"].clone());
        full.insert(v.key().into(), e);
    }
    println!(
        "| real motion (same scripts) | – | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        real_m.fid, real_m.rprec[0], real_m.rprec[2], real_m.jerk, real_m.skate, real_m.drift_slope
    );
    series.push((
        "real".into(),
        real_m
            .horizon_centre_training_lengths
            .iter()
            .copied()
            .zip(real_m.fid_by_horizon.iter().copied())
            .collect(),
    ));
    write_svg_lines(
        &data.join("drift.svg"),
        "per-position FID (mean over seeds) vs position",
        "position (training lengths of 4 segments)",
        "FID vs pooled real",
        &series,
    )?;
    // stream stats written by `motion long --stats`
    let mut peak = serde_json::Map::new();
    let mut wall = serde_json::Map::new();
    let mut stream_pts = Vec::new();
    let mut max_frames = serde_json::Value::Null;
    for entry in std::fs::read_dir(&data)? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("long-") && name.ends_with(".json") {
            let st: StreamStats = serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("reading {}", p.display()))?;
            peak.insert(st.frames.to_string(), st.peak_rss_mb.into());
            wall.insert(st.frames.to_string(), st.wall_s.into());
            stream_pts.push(st);
        }
    }
    stream_pts.sort_by_key(|s| s.frames);
    if let Some(last) = stream_pts.last() {
        max_frames = last.frames.into();
        let rss: Vec<(f64, f64)> = stream_pts
            .iter()
            .map(|s| (s.frames as f64, s.peak_rss_mb))
            .collect();
        let secs: Vec<(f64, f64)> = stream_pts
            .iter()
            .map(|s| (s.frames as f64, s.wall_s))
            .collect();
        write_svg_lines(
            &data.join("memory-time.svg"),
            "streaming generation: peak RSS (MiB) and wall time (s) vs frames",
            "frames generated",
            "MiB / s",
            &[
                ("peak RSS (MiB)".into(), rss),
                ("wall time (s)".into(), secs),
            ],
        )?;
    }
    let json = serde_json::json!({
        "frames": max_frames,
        "peak_rss_mb": peak,
        "wall_s": wall,
        "fid": fid,
        "jerk": jerk,
        "drift_slope": drift.get("memory").cloned().unwrap_or(serde_json::Value::Null),
        "drift_slope_by_variant": drift,
        "variants": full,
        "real": real_m,
        "residual_tokens": rc,
        "config": lp.cfg,
    });
    std::fs::write(
        args.results.join("infinimotion.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}

/// A line chart as a small hand-written SVG (no plotting dependency needed for lines).
pub fn write_svg_lines(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    if pts.is_empty() {
        bail!("nothing to plot for {}", path.display());
    }
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 190.0, 40.0, 50.0);
    let x0 = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x1 = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y1 = pts.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1;
    let y1 = if y1 > 0.0 { y1 } else { 1.0 };
    let xr = if x1 > x0 { x1 - x0 } else { 1.0 };
    let sx = |x: f64| l + (x - x0) / xr * (w - l - r);
    let sy = |y: f64| h - b - y / y1 * (h - t - b);
    let colors = [
        "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#7f7f7f",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = writeln!(s, r#"<text x="{}" y="22" font-size="14">{title}</text>"#, l);
    let _ = writeln!(
        s,
        r#"<line x1="{l}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{l}" y1="{t}" x2="{l}" y2="{0}" stroke="black"/>"#,
        h - b,
        w - r
    );
    for i in 0..=4 {
        let yv = y1 * i as f64 / 4.0;
        let xv = x0 + xr * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{:.3}</text><text x="{}" y="{}" text-anchor="middle">{:.1}</text>"#,
            l - 5.0,
            sy(yv) + 4.0,
            yv,
            sx(xv),
            h - b + 16.0,
            xv
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{ylabel}</text>"#,
        (l + w - r) / 2.0,
        h - 12.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let line: Vec<String> = p
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        for q in &line {
            let (x, y) = q.split_once(',').unwrap();
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
        }
        let ly = t + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{2}" y="{3}">{name}</text>"#,
            w - r + 10.0,
            w - r + 30.0,
            w - r + 35.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct LongArgs {
    #[command(flatten)]
    pub size: LongSizeArgs,
    /// Seed of the trained memory model to use.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Total frames to generate.
    #[arg(long, default_value_t = 80_000)]
    pub frames: usize,
    /// Frames per instruction segment (a multiple of 4, 8–80); the last segment may be shorter.
    #[arg(long, default_value_t = 64)]
    pub frames_per_segment: usize,
    /// Output BVH (written incrementally, renamed into place when complete).
    #[arg(long, default_value = "long.bvh")]
    pub output: PathBuf,
    /// Picture strip of the last frames (PNG), optional.
    #[arg(long)]
    pub strip: Option<PathBuf>,
    /// Write frames, wall time and peak RSS as JSON here (name it long-<frames>.json inside
    /// the results data folder for `long-eval` to plot it).
    #[arg(long)]
    pub stats: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub sample_seed: u64,
    /// The instructions, repeated in order until the frames are done.
    #[arg(default_values_t = [
        "walk forward".to_string(), "turn left".to_string(), "raise the right arm".to_string(),
        "walk backward".to_string(), "kick with the left leg".to_string(), "turn right".to_string(),
        "jump".to_string(), "wave the left hand".to_string(),
    ])]
    pub script: Vec<String>,
}

/// Streams a long motion with the trained memory model (see [`stream_long`]).
pub fn long(args: LongArgs) -> Result<()> {
    let lp = LongPrepared::prepare(&args.size.out, args.size.config())?;
    if let Some(dir) = args.output.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let settings = StreamSettings {
        seed: args.seed,
        frames: args.frames,
        frames_per_segment: args.frames_per_segment,
        script: args.script.clone(),
        output: args.output.clone(),
        fps: 30.0,
        sample_seed: args.sample_seed,
        strip_frames: 240,
    };
    let (stats, tail) = stream_long(&lp, &args.size.out, &settings)?;
    eprintln!(
        "wrote {} ({} frames, {} segments) in {:.1} s ({:.0} frames/s), peak RSS {:.1} MiB (after the first segment {:.1} MiB, at the end {:.1} MiB)",
        args.output.display(),
        stats.frames,
        stats.segments,
        stats.wall_s,
        stats.frames_per_s,
        stats.peak_rss_mb,
        stats.rss_after_first_segment_mb,
        stats.rss_end_mb
    );
    if let Some(p) = &args.strip {
        crate::render::write_strip(p, &tail, 8)?;
    }
    if let Some(p) = &args.stats {
        std::fs::write(p, serde_json::to_string_pretty(&stats)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bvh::read_bvh;

    #[test]
    fn quick_long_pipeline_trains_evaluates_and_streams() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("frugal-infinimotion-{}", std::process::id()));
        let size = LongSizeArgs {
            out: dir.join("run"),
            quick: true,
            memory_steps: None,
            generator_steps: None,
            eval_segments: None,
            eval_scripts: None,
        };
        long_eval(LongEvalArgs {
            size: size.clone(),
            variant: vec![],
            seeds: "0".into(),
            results: dir.join("results"),
            existing_only: false,
        })?;
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            dir.join("results/infinimotion.json"),
        )?)?;
        for k in [
            "memory",
            "no_memory",
            "independent",
            "transformer_memory",
            "kmm",
        ] {
            assert!(j["fid"][k].as_f64().unwrap().is_finite(), "{k}");
            assert!(j["jerk"][k].as_f64().unwrap().is_finite(), "{k}");
        }
        assert!(dir.join("results/infinimotion-data/drift.svg").is_file());
        // stream 200 frames (4 segments of 48 and one of 8)
        let bvh = dir.join("long.bvh");
        long(LongArgs {
            size: size.clone(),
            seed: 0,
            frames: 200,
            frames_per_segment: 48,
            output: bvh.clone(),
            strip: Some(dir.join("strip.png")),
            stats: Some(dir.join("results/infinimotion-data/long-200.json")),
            sample_seed: 0,
            script: vec!["walk forward".into(), "turn left".into()],
        })?;
        assert_eq!(read_bvh(&bvh)?.motion.len(), 200);
        assert!(dir.join("strip.png").is_file());
        let st: StreamStats = serde_json::from_str(&std::fs::read_to_string(
            dir.join("results/infinimotion-data/long-200.json"),
        )?)?;
        assert_eq!(st.segments, 5);
        // bad input: an unknown word is an error and writes nothing
        let bad = dir.join("bad.bvh");
        let r = long(LongArgs {
            size,
            seed: 0,
            frames: 100,
            frames_per_segment: 48,
            output: bad.clone(),
            strip: None,
            stats: None,
            sample_seed: 0,
            script: vec!["moonwalk backwards".into()],
        });
        assert!(r.is_err());
        assert!(!bad.exists());
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
