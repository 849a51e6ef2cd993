//! Command-line front ends (`frugal zpressor bench|train|eval`): clap argument structs and one
//! `run` function per subcommand, wired into the `frugal` binary by the CLI crate.

use crate::bench::{run_scaling, ScalingConfig, ScalingRow};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// Picks the compute device by name: `cpu`, or `cuda` (needs the `cuda` cargo feature).
pub fn device_from_name(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                Ok(Device::new_cuda(0).context("opening CUDA device 0")?)
            }
            #[cfg(not(feature = "cuda"))]
            {
                bail!("--device cuda needs a build with the `cuda` cargo feature (cargo build --features frugal-zpressor/cuda)")
            }
        }
        other => bail!("unknown device `{other}` (expected cpu or cuda)"),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, so a failure never
/// leaves a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(())
}

/// `frugal zpressor bench`: the scaling table (time and peak memory against the number of views).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Numbers of input views K to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,12,24,36,100,200")]
    pub views: Vec<usize>,
    /// Number of anchor views N.
    #[arg(long, default_value_t = 6)]
    pub anchors: usize,
    /// Feature-map height and width (DepthSplat's 1/8 scale of 256×448).
    #[arg(long, default_value_t = 32)]
    pub height: usize,
    #[arg(long, default_value_t = 56)]
    pub width: usize,
    #[arg(long, default_value_t = 128)]
    pub channels: usize,
    /// ZPressor blocks.
    #[arg(long, default_value_t = 6)]
    pub blocks: usize,
    /// Blocks of the downstream stand-in (a global multi-view transformer).
    #[arg(long, default_value_t = 2)]
    pub standin_blocks: usize,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Do not attempt runs whose estimated memory exceeds this (GiB). On the CPU a real
    /// out-of-memory would kill the process, so keep it below the machine's free memory.
    #[arg(long, default_value_t = 6.0)]
    pub mem_cap_gb: f64,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the rows as JSON (with the configuration and the device).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A label stored with the rows, e.g. "measured under load, not a result".
    #[arg(long, default_value = "")]
    pub label: String,
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// Markdown table of scaling rows.
pub fn scaling_table(rows: &[ScalingRow]) -> String {
    let mut s = String::from(
        "| K | path | status | ms | compressor ms | stand-in ms | peak MiB | estimate MiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            r.views,
            r.path,
            r.status,
            fmt_opt(r.ms, 1),
            fmt_opt(r.compressor_ms, 1),
            fmt_opt(r.standin_ms, 1),
            fmt_opt(r.peak_mb, 0),
            r.estimate_mb
        );
    }
    s
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    let device = device_from_name(&args.device)?;
    let cfg = ScalingConfig {
        views: args.views.clone(),
        anchors: args.anchors,
        height: args.height,
        width: args.width,
        channels: args.channels,
        zpressor_blocks: args.blocks,
        standin_blocks: args.standin_blocks,
        standin_heads: 1,
        reps: args.reps,
        warmup: args.warmup,
        mem_cap_mb: args.mem_cap_gb * 1024.0,
        seed: args.seed,
    };
    let bar = indicatif::ProgressBar::new(2 * cfg.views.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let rows = run_scaling(&cfg, &device, |r| {
        bar.set_message(format!("K={} {} {}", r.views, r.path, r.status));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    println!("{}", scaling_table(&rows));
    if let Some(out) = &args.out {
        let doc = serde_json::json!({
            "device": args.device,
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "label": args.label,
            "config": cfg,
            "rows": rows,
        });
        write_atomically(out, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// `frugal zpressor train`: trains the toy next-view model with or without ZPressor.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Train the baseline (the decoder attends to every context view) instead of ZPressor.
    #[arg(long)]
    pub no_zpressor: bool,
    /// Context views per training episode.
    #[arg(long, default_value_t = 12)]
    pub views: usize,
    /// Anchor views (ZPressor only).
    #[arg(long, default_value_t = 6)]
    pub anchors: usize,
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder of the photographs (scripts/zpressor/fetch-textures.sh); default
    /// $HOME/.cache/frugal/zpressor-textures.
    #[arg(long)]
    pub textures: Option<PathBuf>,
    /// Checkpoint folder to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    use crate::toy;
    let tex = toy::textures::load(
        &args
            .textures
            .clone()
            .unwrap_or_else(toy::textures::default_dir),
        64,
    )?;
    let mut cfg = toy::TrainConfig {
        views: args.views,
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        ..Default::default()
    };
    cfg.model.zpressor_anchors = (!args.no_zpressor).then_some(args.anchors);
    if args.no_zpressor {
        cfg.ib_weight = 0.0;
    }
    let bar = indicatif::ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} loss {msg} [{elapsed}<{eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t0 = std::time::Instant::now();
    let mut avg = None::<f32>;
    let (vm, losses) = toy::train(&cfg, &tex, &Device::Cpu, |_, l| {
        let a = avg.map_or(l, |a| 0.98 * a + 0.02 * l);
        avg = Some(a);
        bar.set_message(format!("{a:.4}"));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    toy::save(&args.out, &vm, &cfg, &losses)?;
    let k = losses.len().min(50);
    println!(
        "trained {} steps in {:.0} s; mean MSE of the first {k} steps {:.4}, of the last {k} {:.4}; checkpoint {}",
        losses.len(),
        t0.elapsed().as_secs_f64(),
        losses[..k].iter().sum::<f32>() / k as f32,
        losses[losses.len() - k..].iter().sum::<f32>() / k as f32,
        args.out.display()
    );
    Ok(())
}

/// `frugal zpressor eval`: PSNR/SSIM, time and memory of trained toy models against the number of
/// context views, on held-out scenes.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Checkpoint folders written by `train` (one or more).
    #[arg(long, required = true, num_args = 1..)]
    pub checkpoint: Vec<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "8,12,24,36,100")]
    pub views: Vec<usize>,
    #[arg(long, default_value_t = 50)]
    pub scenes: usize,
    #[arg(long)]
    pub textures: Option<PathBuf>,
    /// Where to write the rows as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    use crate::toy;
    if args.scenes < 2 {
        bail!("--scenes must be at least 2 (for an interval)");
    }
    let tex = toy::textures::load(
        &args
            .textures
            .clone()
            .unwrap_or_else(toy::textures::default_dir),
        64,
    )?;
    let mut all = serde_json::Map::new();
    for ck in &args.checkpoint {
        let (model, cfg) = toy::load(ck, &Device::Cpu)?;
        let name = match cfg.model.zpressor_anchors {
            Some(_) => "zpressor",
            None => "baseline",
        };
        let bar = indicatif::ProgressBar::new((args.views.len() * args.scenes) as u64);
        bar.set_message(name);
        let rows = toy::evaluate(&model, &args.views, args.scenes, &tex, &Device::Cpu, || {
            bar.inc(1)
        })?;
        bar.finish_and_clear();
        println!("{name} ({})", ck.display());
        println!("| K | PSNR | ±95% | SSIM | ±95% | ms/scene | peak MiB | nearest-view PSNR |\n|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.1} | {} | {:.2} |",
                r.views,
                r.psnr,
                r.psnr_ci95,
                r.ssim,
                r.ssim_ci95,
                r.ms,
                fmt_opt(r.peak_mb, 1),
                r.nearest_view_psnr
            );
        }
        all.insert(
            name.to_string(),
            serde_json::json!({"checkpoint": ck, "config": cfg, "rows": rows}),
        );
    }
    if let Some(out) = &args.out {
        write_atomically(out, serde_json::to_string_pretty(&all)?.as_bytes())?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
