//! `frugal motion tokenizer-check`: trains a motion tokenizer on the synthetic training set and
//! logs what a collapsing VQ-VAE hides behind a falling loss: codebook perplexity and use, dead
//! codes re-seeded, and held-out reconstruction error against predicting the mean pose and
//! against decoding shuffled codes (equal errors mean the decoder ignores its codes). Every
//! quantiser knob of [`TokenizerConfig`] is a flag, and `--legacy` starts from the settings the
//! tokenizer had before its codebook fixes, so the collapse and its fix are both one command.

use crate::conv::{ConvInit, ConvPath};
use crate::data::{build_dataset, DataConfig};
use crate::experiment::frames;
use crate::tokenizer::{
    code_perplexity, reconstruction_report, train_tokenizer, CodebookInit, MotionTokenizer,
    ReconReport, TokenizerConfig, TokenizerTraining,
};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct TokenizerCheckArgs {
    /// Training sequences of the synthetic set (data seed 0, as the experiment).
    #[arg(long, default_value_t = 300)]
    pub n_train: usize,
    /// Held-out sequences for the reconstruction statistics.
    #[arg(long, default_value_t = 48)]
    pub n_test: usize,
    #[arg(long, default_value_t = 600)]
    pub steps: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Steps between log rows (each row evaluates the held-out set).
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
    /// Start from the pre-fix settings (Kaiming-normal convolutions, random codebook, reset
    /// threshold 0.01, no quantiser dropout); the flags below override either starting point.
    #[arg(long)]
    pub legacy: bool,
    #[arg(long, value_enum)]
    pub init: Option<CodebookInit>,
    #[arg(long, value_enum)]
    pub conv_init: Option<ConvInit>,
    #[arg(long, value_enum)]
    pub conv_path: Option<ConvPath>,
    #[arg(long)]
    pub dead_threshold: Option<f32>,
    #[arg(long)]
    pub ema_decay: Option<f32>,
    #[arg(long)]
    pub commitment: Option<f32>,
    #[arg(long)]
    pub quantizer_dropout: Option<f32>,
    #[arg(long)]
    pub vq_layers: Option<usize>,
    #[arg(long)]
    pub codebook_size: Option<usize>,
    #[arg(long)]
    pub width: Option<usize>,
    /// Seed of crops, codebook initialisation and resets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the log rows and the final report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl TokenizerCheckArgs {
    pub fn tokenizer_config(&self) -> TokenizerConfig {
        let d = crate::skeleton::FEATURE_DIM;
        let mut c = if self.legacy {
            TokenizerConfig::legacy(d)
        } else {
            TokenizerConfig::for_dim(d)
        };
        if let Some(v) = self.init {
            c.codebook_init = v;
        }
        if let Some(v) = self.conv_init {
            c.conv_init = v;
        }
        if let Some(v) = self.conv_path {
            c.conv_path = v;
        }
        if let Some(v) = self.dead_threshold {
            c.dead_threshold = v;
        }
        if let Some(v) = self.ema_decay {
            c.ema_decay = v;
        }
        if let Some(v) = self.commitment {
            c.commitment = v;
        }
        if let Some(v) = self.quantizer_dropout {
            c.quantizer_dropout = v;
        }
        if let Some(v) = self.vq_layers {
            c.vq_layers = v;
        }
        if let Some(v) = self.codebook_size {
            c.codebook_size = v;
        }
        if let Some(v) = self.width {
            c.width = v;
        }
        c
    }
}

/// One log row: means over the steps since the previous row, then held-out statistics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckRow {
    pub step: usize,
    pub loss: f64,
    pub recon: f64,
    pub velocity: f64,
    pub commit: f64,
    /// Perplexity of the base-layer codes of all batches since the previous row.
    pub train_perplexity: f64,
    pub resets: usize,
    pub test: ReconReport,
}

pub fn tokenizer_check(args: TokenizerCheckArgs) -> Result<()> {
    if args.steps == 0 || args.log_every == 0 || args.batch == 0 {
        bail!("--steps, --log-every and --batch must be positive");
    }
    let cfg = args.tokenizer_config();
    if cfg.vq_layers == 0 || cfg.codebook_size == 0 {
        bail!("--vq-layers and --codebook-size must be positive");
    }
    let ds = build_dataset(0, args.n_train, args.n_test, &DataConfig::default());
    let train: Vec<Vec<Vec<f32>>> = ds.train.iter().map(frames).collect();
    let test: Vec<Vec<Vec<f32>>> = ds.test.iter().map(frames).collect();
    let vm = VarMap::new();
    let tok = MotionTokenizer::new(cfg, &vm, &Device::Cpu)?;
    let budget = TokenizerTraining {
        steps: args.steps,
        batch: args.batch,
        window: 64,
        lr: args.lr,
        warmup: args.warmup,
    };
    eprintln!("tokenizer config: {cfg:?}");
    {
        // what the normalisation does to each channel: heavy tails show as large maxima
        let all: Vec<Vec<f32>> = train.iter().flatten().cloned().collect();
        tok.fit_normalization(&all)?;
        let x = crate::text::batch_tensor(&[all], &Device::Cpu)?;
        let xn = tok.normalize(&x)?.squeeze(0)?;
        let maxabs = xn.abs()?.max(0)?.to_vec1::<f32>()?;
        let var = xn.sqr()?.mean(0)?.to_vec1::<f32>()?;
        let moving = var.iter().filter(|&&v| v > 0.5).count();
        let mut m: Vec<(usize, f32)> = maxabs.iter().copied().enumerate().collect();
        m.sort_by(|a, b| b.1.total_cmp(&a.1));
        eprintln!(
            "normalised training frames: {moving} of {} channels have variance > 0.5; largest |value| per channel (channel: max): {}",
            var.len(),
            m.iter().take(8).map(|(k, v)| format!("{k}: {v:.1}")).collect::<Vec<_>>().join(", ")
        );
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut eval_rng = StdRng::seed_from_u64(args.seed + 1);
    let mut rows: Vec<CheckRow> = Vec::new();
    let mut acc = (0f64, 0f64, 0f64, 0f64, 0usize, 0usize);
    let mut codes: Vec<Vec<u32>> = Vec::new();
    let header = "step  loss    recon   vel     commit  train-ppl resets | test mse  mean-pose shuffled rel.err ppl   used";
    eprintln!("{header}");
    let mut log = |step: usize,
                   acc: &mut (f64, f64, f64, f64, usize, usize),
                   codes: &mut Vec<Vec<u32>>,
                   tok: &MotionTokenizer|
     -> Result<()> {
        let k = acc.5.max(1) as f64;
        let test_r = reconstruction_report(tok, &test, &mut eval_rng)?;
        let row = CheckRow {
            step,
            loss: acc.0 / k,
            recon: acc.1 / k,
            velocity: acc.2 / k,
            commit: acc.3 / k,
            train_perplexity: code_perplexity(codes, 0, cfg.codebook_size),
            resets: acc.4,
            test: test_r,
        };
        eprintln!(
            "{:<5} {:<7.4} {:<7.4} {:<7.4} {:<7.4} {:<9.2} {:<6} | {:<9.4} {:<9.4} {:<8.4} {:<7.4} {:<5.1} {}",
            row.step,
            row.loss,
            row.recon,
            row.velocity,
            row.commit,
            row.train_perplexity,
            row.resets,
            row.test.mse,
            row.test.mse_mean_pose,
            row.test.mse_shuffled_codes,
            row.test.relative_error(),
            row.test.perplexity,
            row.test.codes_used
        );
        rows.push(row);
        *acc = (0.0, 0.0, 0.0, 0.0, 0, 0);
        codes.clear();
        Ok(())
    };
    train_tokenizer(&tok, &vm, &train, &budget, None, &mut rng, |step, l| {
        if step > 0 && step % args.log_every == 0 {
            log(step, &mut acc, &mut codes, &tok)?;
        }
        acc.0 += l.loss.to_scalar::<f32>()? as f64;
        acc.1 += l.recon as f64;
        acc.2 += l.velocity as f64;
        acc.3 += l.commit as f64;
        acc.4 += l.reset;
        acc.5 += 1;
        codes.extend(l.codes.iter().cloned());
        Ok(())
    })?;
    log(args.steps, &mut acc, &mut codes, &tok)?;
    if let Some(p) = &args.json {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let v = serde_json::json!({
            "command_args": format!("{args:?}"),
            "tokenizer": cfg,
            "budget": budget,
            "rows": rows,
        });
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
