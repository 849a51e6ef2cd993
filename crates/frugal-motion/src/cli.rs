//! `frugal motion train | generate | eval | bvh-check`: argument structs and their run
//! functions, for the front-end to wire in.

use crate::bvh::{mocapbank_clip_path, read_bvh, write_poses_bvh};
use crate::experiment::{
    reference_metrics, run_dir, run_variant, ExperimentConfig, Prepared, RunMetrics, SplitMetrics,
    Variant,
};
use crate::metrics::mean_ci95;
use crate::skeleton::features_to_poses;
use crate::tokenizer::{train_tokenizer, MotionTokenizer, TokenizerConfig, TokenizerTraining};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::SeedableRng;
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

/// Shared sizes; `--quick` shrinks everything for a smoke run.
#[derive(clap::Args, Debug, Clone)]
pub struct SizeArgs {
    /// Output folder for checkpoints and metrics.
    #[arg(long, default_value = "runs/kmm")]
    pub out: PathBuf,
    /// Tiny budgets (a smoke run in seconds, not a result).
    #[arg(long)]
    pub quick: bool,
    /// Generator training steps (default from the experiment config).
    #[arg(long)]
    pub generator_steps: Option<usize>,
    /// Generator width (default from the experiment config).
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Generator layers (default from the experiment config).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Tokenizer training steps (default from the experiment config).
    #[arg(long)]
    pub tokenizer_steps: Option<usize>,
    /// Tokenizer peak learning rate (default from the experiment config).
    #[arg(long)]
    pub tokenizer_lr: Option<f64>,
}

impl SizeArgs {
    pub fn config(&self) -> ExperimentConfig {
        let mut c = ExperimentConfig::default();
        if self.quick {
            c.n_train = 24;
            c.n_test = 8;
            c.tokenizer_steps = 20;
            c.evaluator_steps = 20;
            c.classifier_steps = 10;
            c.align_steps = 20;
            c.generator_steps = 10;
            c.d_model = 16;
            c.layers = 1;
            c.decode.steps = 3;
        }
        if let Some(s) = self.generator_steps {
            c.generator_steps = s;
        }
        if let Some(d) = self.d_model {
            c.d_model = d;
        }
        if let Some(l) = self.layers {
            c.layers = l;
        }
        if let Some(s) = self.tokenizer_steps {
            c.tokenizer_steps = s;
        }
        if let Some(lr) = self.tokenizer_lr {
            c.tokenizer_lr = lr;
        }
        c
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub size: SizeArgs,
    /// Variants to train (default: all four).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub variant: Vec<Variant>,
    /// Comma-separated generator seeds.
    #[arg(long, default_value = "0,1,2")]
    pub seeds: String,
}

/// Prepares the shared stages, then trains and evaluates each variant × seed (each resumable).
pub fn train(args: TrainArgs) -> Result<()> {
    let seeds = parse_seeds(&args.seeds)?;
    let variants = if args.variant.is_empty() {
        Variant::ALL.to_vec()
    } else {
        args.variant.clone()
    };
    let prep = Prepared::prepare(&args.size.out, args.size.config())?;
    for v in variants {
        for &s in &seeds {
            let m = run_variant(&prep, &args.size.out, v, s)?;
            eprintln!(
                "{} seed {s}: FID {:.3} (D {:.3}), R@1 {:.3} (D {:.3}), MM-Dist D {:.3}, L/R acc D {:.3}",
                m.variant, m.full.fid, m.d.fid, m.full.rprec[0], m.d.rprec[0], m.d.mmdist, m.d.lr_acc
            );
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub size: SizeArgs,
    #[arg(long, value_enum, default_value = "keyframe-align")]
    pub variant: Variant,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frames per instruction (40–80, a multiple of 4).
    #[arg(long, default_value_t = 64)]
    pub frames: usize,
    /// Output path prefix: writes PREFIX.bvh, PREFIX.png and PREFIX.gif.
    #[arg(long, default_value = "motion")]
    pub output: PathBuf,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub sample_seed: u64,
    /// The instructions, one per segment, e.g. "walk forward" "turn left".
    #[arg(required = true)]
    pub texts: Vec<String>,
}

/// Generates a multi-instruction motion with a trained generator.
pub fn generate(args: GenerateArgs) -> Result<()> {
    if !(40..=80).contains(&args.frames) || args.frames % 4 != 0 {
        bail!(
            "--frames must be a multiple of 4 between 40 and 80, got {}",
            args.frames
        );
    }
    let ckpt = run_dir(&args.size.out, args.variant, args.seed).join("generator.safetensors");
    if !ckpt.is_file() {
        bail!(
            "no trained generator at {}; run `motion train` first",
            ckpt.display()
        );
    }
    let prep = Prepared::prepare(&args.size.out, args.size.config())?;
    for t in &args.texts {
        if !prep.vocab.covers(t) {
            bail!("instruction {t:?} uses words outside the training vocabulary");
        }
    }
    let (gen, _vm) = prep.generator(&args.size.out, args.variant, args.seed)?;
    let plan: Vec<(String, usize)> = args
        .texts
        .iter()
        .map(|t| (t.clone(), args.frames / 4))
        .collect();
    let mut rng = StdRng::seed_from_u64(args.sample_seed);
    let aligned = matches!(args.variant, Variant::KeyframeAlign | Variant::Transformer);
    let frames = prep
        .generate_sequences(&gen, &[plan], aligned, &mut rng)?
        .remove(0);
    let poses = features_to_poses(&frames);
    let stem = args.output.clone();
    if let Some(dir) = stem.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    write_poses_bvh(&stem.with_extension("bvh"), &poses, 30.0)?;
    crate::render::write_strip(
        &stem.with_extension("png"),
        &poses,
        2 * args.texts.len() + 2,
    )?;
    crate::render::write_gif(&stem.with_extension("gif"), &poses, 2)?;
    eprintln!(
        "wrote {}.{{bvh,png,gif}} ({} frames)",
        stem.display(),
        poses.len()
    );
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub size: SizeArgs,
    #[arg(long, default_value = "0,1,2")]
    pub seeds: String,
    /// Folder for kmm.json and the raw per-run data (kmm-data/).
    #[arg(long, default_value = "docs/results")]
    pub results: PathBuf,
    /// Only aggregate runs that exist (never train a missing one).
    #[arg(long)]
    pub existing_only: bool,
}

fn agg(runs: &[&RunMetrics], f: impl Fn(&RunMetrics) -> f64) -> serde_json::Value {
    let v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
    let (m, ci) = mean_ci95(&v);
    serde_json::json!({"mean": m, "ci95": ci, "values": v})
}

fn split_json(m: &SplitMetrics) -> serde_json::Value {
    serde_json::to_value(m).unwrap()
}

/// Collects the per-run metrics (training and evaluating any run that is missing), writes
/// `kmm.json` and `kmm-data/`, and prints the results table.
pub fn eval(args: EvalArgs) -> Result<()> {
    let seeds = parse_seeds(&args.seeds)?;
    let prep = Prepared::prepare(&args.size.out, args.size.config())?;
    let mut all: Vec<RunMetrics> = Vec::new();
    for v in Variant::ALL {
        for &s in &seeds {
            let p = run_dir(&args.size.out, v, s).join("metrics.json");
            let m = if p.is_file() {
                serde_json::from_str(&std::fs::read_to_string(&p)?)?
            } else if args.existing_only {
                continue;
            } else {
                run_variant(&prep, &args.size.out, v, s)?
            };
            all.push(m);
        }
    }
    let (gt_full, gt_d, rec_full, rec_d) = reference_metrics(&prep)?;
    let data_dir = args.results.join("kmm-data");
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(
        data_dir.join("runs.json"),
        serde_json::to_string_pretty(&all)?,
    )?;
    std::fs::write(
        data_dir.join("reference.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "real_full": split_json(&gt_full), "real_d": split_json(&gt_d),
            "tokenizer_recon_full": split_json(&rec_full), "tokenizer_recon_d": split_json(&rec_d),
        }))?,
    )?;
    std::fs::write(
        data_dir.join("config.json"),
        serde_json::to_string_pretty(&prep.cfg)?,
    )?;
    let mut json = serde_json::Map::new();
    println!("| variant | FID full | R@1 full | R@3 full | MM-Dist full | Div full | FID D | R@1 D | R@3 D | MM-Dist D | L/R acc D | backbone params | backbone FLOPs/seq |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let fmt = |j: &serde_json::Value| {
        format!(
            "{:.3} [{:.3}, {:.3}]",
            j["mean"].as_f64().unwrap(),
            j["ci95"][0].as_f64().unwrap(),
            j["ci95"][1].as_f64().unwrap()
        )
    };
    for v in Variant::ALL {
        let runs: Vec<&RunMetrics> = all.iter().filter(|r| r.variant == v.key()).collect();
        if runs.is_empty() {
            println!("| {} | not run | | | | | | | | | | | |", v.key());
            continue;
        }
        let fid = agg(&runs, |r| r.full.fid);
        let e = serde_json::json!({
            "fid": fid["mean"], "fid_ci": fid["ci95"],
            "rprec": agg(&runs, |r| r.full.rprec[0]), "rprec_top3": agg(&runs, |r| r.full.rprec[2]),
            "mmdist": agg(&runs, |r| r.full.mmdist), "diversity": agg(&runs, |r| r.full.diversity),
            "fid_d": agg(&runs, |r| r.d.fid),
            "rprec_d": agg(&runs, |r| r.d.rprec[0])["mean"], "rprec_d_ci": agg(&runs, |r| r.d.rprec[0])["ci95"],
            "rprec_d_top3": agg(&runs, |r| r.d.rprec[2]),
            "mmdist_d": agg(&runs, |r| r.d.mmdist)["mean"], "mmdist_d_ci": agg(&runs, |r| r.d.mmdist)["ci95"],
            "lr_acc_d": agg(&runs, |r| r.d.lr_acc)["mean"], "lr_acc_d_ci": agg(&runs, |r| r.d.lr_acc)["ci95"],
            "diversity_d": agg(&runs, |r| r.d.diversity),
            "backbone_params": runs[0].backbone_params, "backbone_flops_per_sequence": runs[0].backbone_flops_per_sequence,
            "total_params": runs[0].total_params, "seeds": seeds,
        });
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v.key(),
            fmt(&agg(&runs, |r| r.full.fid)),
            fmt(&agg(&runs, |r| r.full.rprec[0])),
            fmt(&agg(&runs, |r| r.full.rprec[2])),
            fmt(&agg(&runs, |r| r.full.mmdist)),
            fmt(&agg(&runs, |r| r.full.diversity)),
            fmt(&agg(&runs, |r| r.d.fid)),
            fmt(&agg(&runs, |r| r.d.rprec[0])),
            fmt(&agg(&runs, |r| r.d.rprec[2])),
            fmt(&agg(&runs, |r| r.d.mmdist)),
            fmt(&agg(&runs, |r| r.d.lr_acc)),
            runs[0].backbone_params,
            runs[0].backbone_flops_per_sequence
        );
        json.insert(v.key().into(), e);
    }
    for (name, f, d) in [
        ("real motion", &gt_full, &gt_d),
        ("tokenizer reconstruction", &rec_full, &rec_d),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | – | – |",
            f.fid, f.rprec[0], f.rprec[2], f.mmdist, f.diversity, d.fid, d.rprec[0], d.rprec[2], d.mmdist, d.lr_acc
        );
    }
    json.insert(
        "real".into(),
        serde_json::json!({"full": split_json(&gt_full), "d": split_json(&gt_d)}),
    );
    json.insert(
        "tokenizer_recon".into(),
        serde_json::json!({"full": split_json(&rec_full), "d": split_json(&rec_d)}),
    );
    json.insert("config".into(), serde_json::to_value(prep.cfg)?);
    std::fs::write(
        args.results.join("kmm.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )?;
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct BvhCheckArgs {
    /// BVH file (default: the MocapBank clip bundled with the bvh_anim crate).
    #[arg(long)]
    pub bvh: Option<PathBuf>,
    /// Tokenizer training steps on the clip.
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    /// Where to write the round-tripped BVH (optional).
    #[arg(long)]
    pub write: Option<PathBuf>,
}

/// BVH round trip and tokenizer reconstruction of a real motion-capture clip: reads the clip,
/// writes it back through `bvh_anim` and compares, then trains a tokenizer on the clip's own
/// channels and reports its reconstruction error relative to the channel variance.
pub fn bvh_check(args: BvhCheckArgs) -> Result<()> {
    let path = match &args.bvh {
        Some(p) => p.clone(),
        None => mocapbank_clip_path()
            .context("bvh_anim's test_mocapbank.bvh is not in the cargo registry; pass --bvh")?,
    };
    let clip = read_bvh(&path)?;
    let bytes = std::fs::read(&path)?;
    let (bvh, _) = crate::bvh::parse_bvh(&bytes)?;
    let tmp = args
        .write
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("frugal-motion-roundtrip.bvh"));
    crate::bvh::write_bvh(&tmp, &bvh)?;
    let back = read_bvh(&tmp)?;
    let worst = clip
        .motion
        .iter()
        .zip(&back.motion)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    println!(
        "clip: {} joints, {} channels, {} frames at {:.1} fps; round trip: same joints {}, max abs channel difference {worst:.2e}",
        clip.joint_names.len(),
        clip.num_channels,
        clip.motion.len(),
        1.0 / clip.frame_time_s,
        back.joint_names == clip.joint_names
    );
    let r = tokenizer_on_clip(&clip.motion, args.steps)?;
    println!(
        "tokenizer on the clip ({} channels, {} frames used): reconstruction MSE / channel variance = {:.4} (train windows), {:.4} (whole clip, one pass); codes used {}",
        clip.num_channels, r.frames, r.window_nmse, r.clip_nmse, r.codes_used
    );
    Ok(())
}

pub struct ClipRecon {
    pub frames: usize,
    pub window_nmse: f64,
    pub clip_nmse: f64,
    pub codes_used: usize,
}

/// Trains a small tokenizer on one clip's channels and measures reconstruction.
pub fn tokenizer_on_clip(motion: &[Vec<f32>], steps: usize) -> Result<ClipRecon> {
    let dev = Device::Cpu;
    let n = motion.len() / 4 * 4;
    if n < 64 {
        bail!("clip too short ({n} frames) for the tokenizer check");
    }
    let frames: Vec<Vec<f32>> = motion[..n].to_vec();
    let c = frames[0].len();
    let vm = VarMap::new();
    let mut cfg = TokenizerConfig::for_dim(c);
    cfg.codebook_size = 64;
    let tok = MotionTokenizer::new(cfg, &vm, &dev)?;
    let mut rng = StdRng::seed_from_u64(0);
    let seqs = vec![frames.clone()];
    let budget = TokenizerTraining {
        steps,
        batch: 16,
        window: 64,
        lr: 1e-3,
        warmup: 50,
    };
    train_tokenizer(&tok, &vm, &seqs, &budget, None, &mut rng, |_, _| Ok(()))?;
    let recon = tok.reconstruct(&frames)?;
    let codes = tok.encode(&frames)?;
    let used: std::collections::BTreeSet<u32> = codes.iter().map(|c| c[0]).collect();
    let mean: Vec<f64> = (0..c)
        .map(|k| frames.iter().map(|f| f[k] as f64).sum::<f64>() / n as f64)
        .collect();
    let var: f64 = frames
        .iter()
        .flat_map(|f| {
            f.iter()
                .enumerate()
                .map(|(k, v)| (*v as f64 - mean[k]).powi(2))
        })
        .sum::<f64>();
    let err: f64 = frames
        .iter()
        .zip(&recon)
        .flat_map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        })
        .sum();
    // windowed error (the training condition: 64-frame windows)
    let mut werr = 0.0;
    let mut wvar = 0.0;
    for start in (0..n - 64 + 1).step_by(64) {
        let w = &frames[start..start + 64];
        let r = tok.reconstruct(w)?;
        for (a, b) in w.iter().zip(&r) {
            for k in 0..c {
                werr += (a[k] as f64 - b[k] as f64).powi(2);
                wvar += (a[k] as f64 - mean[k]).powi(2);
            }
        }
    }
    Ok(ClipRecon {
        frames: n,
        window_nmse: werr / wvar,
        clip_nmse: err / var,
        codes_used: used.len(),
    })
}

/// Helper for the results page: does `path` exist as a non-empty file.
pub fn exists(path: &Path) -> bool {
    path.metadata().map(|m| m.len() > 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_pipeline_trains_generates_and_evaluates() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("frugal-motion-quick-{}", std::process::id()));
        let size = SizeArgs {
            out: dir.join("run"),
            quick: true,
            generator_steps: None,
            d_model: None,
            layers: None,
            tokenizer_steps: None,
            tokenizer_lr: None,
        };
        eval(EvalArgs {
            size: size.clone(),
            seeds: "0".into(),
            results: dir.join("results"),
            existing_only: false,
        })?;
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results/kmm.json"))?)?;
        for k in ["random", "keyframe", "keyframe_align", "transformer"] {
            assert!(j[k]["fid"].as_f64().unwrap().is_finite(), "{k}");
        }
        assert!(j["keyframe_align"]["lr_acc_d"].as_f64().unwrap() >= 0.0);
        // generate from the trained quick model
        let prefix = dir.join("gen/walk");
        generate(GenerateArgs {
            size: size.clone(),
            variant: Variant::KeyframeAlign,
            seed: 0,
            frames: 48,
            output: prefix.clone(),
            sample_seed: 1,
            texts: vec!["walk forward".into(), "turn left".into()],
        })?;
        for ext in ["bvh", "png", "gif"] {
            assert!(exists(&prefix.with_extension(ext)), "{ext} missing");
        }
        let clip = read_bvh(&prefix.with_extension("bvh"))?;
        assert_eq!(clip.motion.len(), 96);
        // bad input is an error, not a panic or a file
        let bad = generate(GenerateArgs {
            size,
            variant: Variant::KeyframeAlign,
            seed: 0,
            frames: 48,
            output: dir.join("gen/bad"),
            sample_seed: 1,
            texts: vec!["moonwalk backwards".into()],
        });
        assert!(bad.is_err());
        assert!(!exists(&dir.join("gen/bad.bvh")));
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
