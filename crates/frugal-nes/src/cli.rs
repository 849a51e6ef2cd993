//! Command-line entry points (`frugal protect`, `frugal protect-eval`, `frugal protect-train`):
//! clap argument structs and one `run` function each, wired into the `frugal` binary by the CLI
//! crate and into this crate's thin test binary `nes`.

use crate::digits::Digits;
use crate::eval::{evaluate, EvalConfig};
use crate::models::{zoo, DigitNet};
use crate::ne::{self, Pattern, SubspaceConfig};
use crate::train_digits::{train_one, DigitTraining};
use anyhow::{Context, Result};
use frugal_nn::image_io::{self, Channels};
use rand::SeedableRng;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PatternArg {
    /// One pattern per image repeated on every patch (the released code's behaviour).
    Tiled,
    /// An independent pattern on every patch (ours).
    PerPatch,
}

impl From<PatternArg> for Pattern {
    fn from(p: PatternArg) -> Self {
        match p {
            PatternArg::Tiled => Pattern::Tiled,
            PatternArg::PerPatch => Pattern::PerPatch,
        }
    }
}

/// Recode every image in IN_DIR so that only the model M still reads it; writes PNGs to OUT_DIR.
#[derive(Debug, clap::Args)]
pub struct ProtectArgs {
    /// Authorized model: a checkpoint (`.safetensors` with its `.state.json`).
    #[arg(long)]
    pub model: PathBuf,
    /// True PSNR of the released 8-bit images against the originals, in dB (0–100).
    #[arg(long)]
    pub psnr: f64,
    /// Seed of the random coefficients.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = PatternArg::Tiled)]
    pub pattern: PatternArg,
    /// Singular-value threshold of the rank rule (used only when the first layer has at least as
    /// many outputs as patch values).
    #[arg(long, default_value_t = 1e-2)]
    pub tau: f64,
    /// Folder of PNG/JPEG images.
    pub in_dir: PathBuf,
    /// Output folder (must not exist or be empty); written only when every image succeeded.
    pub out_dir: PathBuf,
}

fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read input folder {}", dir.display()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
                    .unwrap_or(false)
        })
        .collect();
    v.sort();
    if v.is_empty() {
        anyhow::bail!("no .png/.jpg/.jpeg images in {}", dir.display());
    }
    Ok(v)
}

pub fn run_protect(args: &ProtectArgs) -> Result<()> {
    if !(args.psnr.is_finite() && args.psnr > 0.0 && args.psnr <= 100.0) {
        anyhow::bail!("--psnr must be in (0, 100] dB, got {}", args.psnr);
    }
    if args.out_dir.exists()
        && std::fs::read_dir(&args.out_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!(
            "output folder {} already exists and is not empty",
            args.out_dir.display()
        );
    }
    let net = DigitNet::load(&args.model)?;
    let sub = ne::patch_subspace(&net.first_layer(), &SubspaceConfig { tau: args.tau })
        .with_context(|| format!("model {}", args.model.display()))?;
    let want = if sub.channels == 3 {
        Channels::Rgb
    } else if sub.channels == 1 {
        Channels::Gray
    } else {
        anyhow::bail!(
            "models with {} input channels are not supported",
            sub.channels
        );
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut results = vec![];
    for path in list_images(&args.in_dir)? {
        let img = image_io::load(&path, want)?;
        let delta = ne::draw_pattern(
            &sub,
            (img.channels, img.height, img.width),
            args.pattern.into(),
            &mut rng,
        )
        .with_context(|| format!("{}", path.display()))?;
        let r = ne::calibrate(&img, &delta, args.psnr)?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        results.push((format!("{name}.png"), r));
    }
    // Write to a staging folder beside OUT_DIR and rename, so OUT_DIR is complete or absent.
    let parent = args
        .out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let stage = parent.join(format!(
        ".{}.partial-{}",
        args.out_dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("out"),
        std::process::id()
    ));
    let write = || -> Result<()> {
        std::fs::create_dir_all(&stage)?;
        let mut manifest = vec![];
        for (name, r) in &results {
            r.released.save_png(&stage.join(name))?;
            manifest.push(serde_json::json!({"file": name, "true_psnr_db": r.true_psnr}));
        }
        let meta = serde_json::json!({
            "mode": sub.mode.label(),
            "model": args.model.display().to_string(),
            "subspace_dim": sub.basis.len(),
            "target_psnr_db": args.psnr,
            "seed": args.seed,
            "images": manifest,
        });
        std::fs::write(
            stage.join("protect.json"),
            serde_json::to_vec_pretty(&meta)?,
        )?;
        if args.out_dir.exists() {
            std::fs::remove_dir(&args.out_dir)?; // empty, checked above
        }
        std::fs::rename(&stage, &args.out_dir)?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e.context(format!("writing {}", args.out_dir.display())));
    }
    let worst = results
        .iter()
        .map(|(_, r)| r.true_psnr)
        .fold(f64::INFINITY, f64::min);
    println!(
        "{} images recoded ({}; subspace dim {}), lowest true PSNR {worst:.2} dB -> {}",
        results.len(),
        sub.mode.label(),
        sub.basis.len(),
        args.out_dir.display()
    );
    Ok(())
}

/// Train the digit models (authorized and unauthorized architectures, several seeds).
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Folder for the checkpoints (a partial run there is resumed).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
}

pub fn run_train(args: &TrainArgs) -> Result<()> {
    let (train, test) = Digits::split()?;
    let hp = DigitTraining {
        steps: args.steps,
        ..Default::default()
    };
    for spec in zoo(&args.seeds) {
        let acc = train_one(&spec, &train, &test, &args.out, &hp, true)?;
        println!("{:<16} test top-1 {:.2} %", spec.stem(), 100.0 * acc);
    }
    Ok(())
}

/// Evaluate NEs on the digit models: accuracy tables, λ, spectral gaps, attacks, plot, strip.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Folder with the checkpoints written by `protect-train`.
    #[arg(long)]
    pub models: PathBuf,
    /// Folder for `nes.json` and `nes-data/`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    #[arg(long, value_delimiter = ',', default_value = "40,30,20,15,10,5")]
    pub psnr: Vec<f64>,
    #[arg(long, default_value_t = 10.0)]
    pub attack_psnr: f64,
    #[arg(long, value_enum, default_value_t = PatternArg::Tiled)]
    pub pattern: PatternArg,
}

pub fn run_eval(args: &EvalArgs) -> Result<()> {
    for &p in &args.psnr {
        if !(p.is_finite() && p > 0.0 && p <= 100.0) {
            anyhow::bail!("--psnr values must be in (0, 100] dB, got {p}");
        }
    }
    let (train, test) = Digits::split()?;
    let models = zoo(&args.seeds)
        .iter()
        .map(|s| DigitNet::load(&args.models.join(format!("{}.safetensors", s.stem()))))
        .collect::<Result<Vec<_>>>()
        .context("loading the digit models (train them with protect-train first)")?;
    let cfg = EvalConfig {
        psnrs: args.psnr.clone(),
        attack_psnr: args.attack_psnr,
        pattern: args.pattern.into(),
        ..Default::default()
    };
    let report = evaluate(&models, &train, &test, &cfg)?;
    crate::report::write(&report, &args.out, &args.seeds, args.attack_psnr)?;
    print!(
        "{}",
        std::fs::read_to_string(args.out.join("nes.json")).unwrap_or_default()
    );
    Ok(())
}
