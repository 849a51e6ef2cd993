//! Command-line entry points of `frugal seg`: clap argument structs and one `run` function per
//! subcommand, wired into the `frugal` binary by the CLI crate and into this crate's thin test
//! binary `frugal-seg`.

use crate::acquisition::Acquire;
use crate::adapt::{AdaptConfig, EntitySource};
use crate::domains::DomainPhotos;
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

/// `seg adapt`: one active domain-adaptation run (source pre-training shared per seed, then five
/// acquisition + training rounds; resumable: rerun the same command), or with `--preview` the
/// selection pictures of the chosen acquisition.
#[derive(Debug, clap::Args)]
pub struct AdaptArgs {
    /// Acquisition: esa, ripu-pa, ripu-ra, random-sp, entropy-sp, full, source-only.
    #[arg(long, value_enum, default_value_t = Acquire::Esa)]
    pub acquire: Acquire,
    /// Clicks per target image over all rounds (superpixels; PA pixels; RA 3×3 regions).
    #[arg(long, default_value_t = 40)]
    pub clicks: usize,
    /// RIPU-RA only: label this share of each image's pixels (e.g. 0.022) instead of --clicks.
    #[arg(long)]
    pub ra_ratio: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Entity proposals for ESA: felzenszwalb, or oracle (ground-truth instances; an upper bound).
    #[arg(long, value_enum, default_value_t = EntitySource::Felzenszwalb)]
    pub entities: EntitySource,
    /// Folder of all runs (source models are shared by every method of a seed).
    #[arg(long, default_value = "runs/esa")]
    pub runs: PathBuf,
    /// Folder with the photographs (export them with scripts/seg/fetch-photos.sh).
    #[arg(long)]
    pub photos: Option<PathBuf>,
    #[arg(long)]
    pub source_steps: Option<usize>,
    /// Training steps after each round's acquisition.
    #[arg(long)]
    pub round_steps: Option<usize>,
    /// Extra training steps after the last round.
    #[arg(long)]
    pub final_steps: Option<usize>,
    #[arg(long)]
    pub source_scenes: Option<usize>,
    #[arg(long)]
    pub target_scenes: Option<usize>,
    #[arg(long)]
    pub val_scenes: Option<usize>,
    /// Weight of RIPU's negative-learning term (0 = off).
    #[arg(long)]
    pub neg_weight: Option<f64>,
    /// Learning rate of the adaptation rounds.
    #[arg(long)]
    pub adapt_lr: Option<f64>,
    /// Train BatchNorm statistics on the mixed source + target batches while adapting
    /// (default: frozen at the source model's, as RIPU freezes them).
    #[arg(long)]
    pub bn_train: bool,
    /// ESA: entities kept per image and round.
    #[arg(long)]
    pub top_entities: Option<usize>,
    /// ESA: switch off the entity-uncertainty ranking (every entity is a candidate).
    #[arg(long)]
    pub no_entity_uncertainty: bool,
    /// ESA: switch off the superpixel-impurity term.
    #[arg(long)]
    pub no_impurity: bool,
    /// ESA: switch off the superpixel-entropy term.
    #[arg(long)]
    pub no_entropy: bool,
    /// RIPU-PA window / exclusion radius (RIPU: 32 on 2048-px frames; default 2 at 64 px).
    #[arg(long)]
    pub pa_radius: Option<usize>,
    /// Write selection pictures here (PNG) instead of training; needs the seed's source model.
    #[arg(long)]
    pub preview: Option<PathBuf>,
    /// Target scenes in the preview.
    #[arg(long, default_value_t = 6)]
    pub preview_count: usize,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The run configuration the arguments describe.
pub fn adapt_config(args: &AdaptArgs) -> Result<AdaptConfig> {
    let mut cfg = AdaptConfig {
        acquire: args.acquire,
        clicks: args.clicks,
        ra_ratio: args.ra_ratio,
        entities: args.entities,
        seed: args.seed,
        progress: !args.quiet,
        ..Default::default()
    };
    if args.ra_ratio.is_some() && args.acquire != Acquire::RipuRa {
        anyhow::bail!("--ra-ratio applies to --acquire ripu-ra only");
    }
    if args.entities == EntitySource::Oracle && args.acquire != Acquire::Esa {
        anyhow::bail!("--entities oracle applies to --acquire esa only");
    }
    let set = |dst: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    set(&mut cfg.source_steps, args.source_steps);
    set(&mut cfg.round_steps, args.round_steps);
    set(&mut cfg.final_steps, args.final_steps);
    set(&mut cfg.source_scenes, args.source_scenes);
    set(&mut cfg.target_scenes, args.target_scenes);
    set(&mut cfg.val_scenes, args.val_scenes);
    set(&mut cfg.esa.top_entities, args.top_entities);
    set(&mut cfg.ripu.pa_radius, args.pa_radius);
    if let Some(w) = args.neg_weight {
        cfg.neg_weight = w;
    }
    if let Some(lr) = args.adapt_lr {
        if !(lr.is_finite() && lr > 0.0) {
            anyhow::bail!("--adapt-lr must be a positive number, got {lr}");
        }
        cfg.adapt_lr = lr;
    }
    cfg.freeze_bn = !args.bn_train;
    cfg.esa.entity_uncertainty = !args.no_entity_uncertainty;
    cfg.esa.impurity = !args.no_impurity;
    cfg.esa.entropy = !args.no_entropy;
    let no_clicks = matches!(args.acquire, Acquire::Full | Acquire::SourceOnly)
        || (args.acquire == Acquire::RipuRa && args.ra_ratio.is_some());
    let uses_clicks = !no_clicks;
    if uses_clicks && args.clicks == 0 {
        anyhow::bail!("--clicks must be positive");
    }
    cfg.check()?;
    Ok(cfg)
}

pub fn run_adapt(args: &AdaptArgs) -> Result<()> {
    let cfg = adapt_config(args)?;
    let photos = DomainPhotos::load(
        &args
            .photos
            .clone()
            .unwrap_or_else(scenes::default_photo_dir),
    )?;
    if let Some(out) = &args.preview {
        return crate::adapt_report::preview(&cfg, &args.runs, &photos, out, args.preview_count);
    }
    let results = crate::adapt::run(&cfg, &args.runs, &photos)?;
    println!("round  clicks/img  labelled %  wrong %  target mIoU %");
    for r in &results {
        println!(
            "{:>5} {:>11.1} {:>11.2} {:>8.2} {:>14.1}",
            r.round,
            r.clicks_per_image,
            100.0 * r.labelled_share,
            100.0 * r.label_noise,
            100.0 * r.eval.miou
        );
    }
    Ok(())
}

/// `seg adapt-report`: summarise the finished adaptation runs under `--runs`.
#[derive(Debug, clap::Args)]
pub struct AdaptReportArgs {
    #[arg(long, default_value = "runs/esa")]
    pub runs: PathBuf,
    /// Folder for `esa.json` and `esa-data/`.
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    /// Rounds of every run (the final round is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

pub fn run_adapt_report(args: &AdaptReportArgs) -> Result<()> {
    crate::adapt_report::write(&args.runs, &args.out, args.rounds)
}
