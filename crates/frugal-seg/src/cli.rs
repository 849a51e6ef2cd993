//! Command-line entry points of `frugal seg`: clap argument structs and one `run` function per
//! subcommand, wired into the `frugal` binary by the CLI crate and into this crate's thin test
//! binary `frugal-seg`.

use crate::incremental::{self, pct, Method, RunConfig};
use crate::protocol::Protocol;
use crate::scenes::{self, Photos, SceneConfig, NUM_CLASSES};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// `seg dataset`: generate scenes and write a preview grid.
#[derive(Debug, clap::Args)]
pub struct DatasetArgs {
    /// Write a PNG grid of scenes (image above its label map) here.
    #[arg(long)]
    pub preview: PathBuf,
    /// Folder with the photographs (export them with scripts/seg/fetch-photos.sh).
    #[arg(long)]
    pub photos: Option<PathBuf>,
    /// Number of scenes in the grid.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Dataset seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run_dataset(args: &DatasetArgs) -> Result<()> {
    if args.count == 0 || args.count > 256 {
        anyhow::bail!("--count must be in 1..=256, got {}", args.count);
    }
    let photos = Photos::load(
        &args
            .photos
            .clone()
            .unwrap_or_else(scenes::default_photo_dir),
    )?;
    let cfg = SceneConfig::default();
    let set = scenes::generate(&photos, &cfg, args.seed, args.count);
    let per_row = 8;
    let mut rows = vec![];
    for start in (0..args.count).step_by(per_row) {
        let idx: Vec<usize> = (start..(start + per_row).min(args.count)).collect();
        rows.push(
            idx.iter()
                .map(|&i| scenes::image_tile(set.image(i), cfg.size))
                .collect(),
        );
        rows.push(
            idx.iter()
                .map(|&i| scenes::label_tile(set.label(i)))
                .collect(),
        );
    }
    let img = scenes::tile_rows(&rows, cfg.size, 2)?;
    if let Some(dir) = args.preview.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    img.save_with_format(&args.preview, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", args.preview.display()))?;
    let mut counts = [0usize; NUM_CLASSES];
    for &l in &set.labels {
        if (l as usize) < NUM_CLASSES {
            counts[l as usize] += 1;
        }
    }
    println!(
        "{} scenes of {}x{} -> {}; labelled pixels per class: {:?}",
        args.count,
        cfg.size,
        cfg.size,
        args.preview.display(),
        counts
    );
    Ok(())
}

/// `seg train`: one run of one method on one protocol (resumable: rerun the same command).
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// BASE-INCREMENT over 20 classes: 10-10, 10-2 or 10-1.
    #[arg(long, default_value = "10-1")]
    pub protocol: String,
    #[arg(long, value_enum, default_value_t = Method::Cit)]
    pub method: Method,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder of all runs (base tasks are shared between methods and protocols).
    #[arg(long, default_value = "runs/seg")]
    pub runs: PathBuf,
    #[arg(long)]
    pub photos: Option<PathBuf>,
    /// Steps of the base task (default: the run config's).
    #[arg(long)]
    pub base_steps: Option<usize>,
    /// Steps of every incremental task.
    #[arg(long)]
    pub inc_steps: Option<usize>,
    /// Steps of the oracle's joint training.
    #[arg(long)]
    pub oracle_steps: Option<usize>,
    #[arg(long)]
    pub train_scenes: Option<usize>,
    #[arg(long)]
    pub test_scenes: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The run configuration the arguments describe.
pub fn train_config(args: &TrainArgs) -> Result<RunConfig> {
    let mut cfg = RunConfig {
        protocol: Protocol::parse(&args.protocol, NUM_CLASSES)?,
        method: args.method,
        seed: args.seed,
        progress: !args.quiet,
        ..Default::default()
    };
    if let Some(v) = args.base_steps {
        cfg.base_steps = v;
    }
    if let Some(v) = args.inc_steps {
        cfg.inc_steps = v;
    }
    if let Some(v) = args.oracle_steps {
        cfg.oracle_steps = v;
    }
    if let Some(v) = args.train_scenes {
        cfg.train_scenes = v;
    }
    if let Some(v) = args.test_scenes {
        cfg.test_scenes = v;
    }
    if cfg.base_steps == 0 || cfg.inc_steps == 0 || cfg.oracle_steps == 0 {
        anyhow::bail!("step counts must be positive");
    }
    if cfg.test_scenes == 0 || cfg.train_scenes < cfg.batch {
        anyhow::bail!(
            "need at least one test scene and at least {} training scenes",
            cfg.batch
        );
    }
    Ok(cfg)
}

pub fn run_train(args: &TrainArgs) -> Result<()> {
    let cfg = train_config(args)?;
    let photos = Photos::load(
        &args
            .photos
            .clone()
            .unwrap_or_else(scenes::default_photo_dir),
    )?;
    let results = incremental::run(&cfg, &args.runs, &photos)?;
    println!("task classes  mIoU base   new   all   train s  teacher s");
    for r in &results {
        println!(
            "{:>4} {:>7}  {:>9} {:>5} {:>5} {:>9.0} {:>10.2}",
            r.task,
            r.classes_seen,
            pct(r.miou_base),
            pct(r.miou_new),
            pct(r.miou_all),
            r.train_seconds,
            r.teacher_seconds
        );
    }
    Ok(())
}

/// `seg eval`: summarise the finished runs under `--runs`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[arg(long, default_value = "runs/seg")]
    pub runs: PathBuf,
    /// Folder for `cit.json` and `cit-data/`.
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    #[arg(long)]
    pub photos: Option<PathBuf>,
    /// Protocol and seed whose final models give the prediction strip.
    #[arg(long, default_value = "10-1")]
    pub strip_protocol: String,
    #[arg(long, default_value_t = 0)]
    pub strip_seed: u64,
}

pub fn run_eval(args: &EvalArgs) -> Result<()> {
    crate::report::write(args)
}
