//! A small, resumable training loop: AdamW with linear warm-up, a progress bar, and a
//! safetensors checkpoint (weights + a JSON sidecar with the step and loss history) written every
//! few hundred steps and at the end.
//!
//! This is a stand-in until frugal-nn's shared training loop lands; it is deliberately generic
//! (a closure computes the loss for a step) so the motion code can switch to the shared one by
//! replacing this module. On resume the weights and the step come back; the AdamW moments do not
//! (they are not saved), so the first steps after a resume re-warm them.

use anyhow::{Context, Result};
use candle_core::Tensor;
use candle_nn::{Optimizer, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub steps: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            lr: 2e-4,
            warmup: 100,
            weight_decay: 1e-5,
            checkpoint_every: 250,
        }
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Progress {
    step: usize,
    losses: Vec<f32>,
}

fn save(varmap: &VarMap, ckpt: &Path, p: &Progress) -> Result<()> {
    let tmp = ckpt.with_extension("safetensors.part");
    varmap.save(&tmp).context("saving checkpoint")?;
    std::fs::rename(&tmp, ckpt)?;
    std::fs::write(ckpt.with_extension("json"), serde_json::to_string(p)?)?;
    Ok(())
}

/// Trains the variables of `varmap` (all of them; variables that get no gradient are left
/// alone) for `cfg.steps` steps. With `ckpt`, resumes from it if present and saves to it.
/// Returns the loss per step (including the steps of earlier runs when resumed).
pub fn train_loop(
    varmap: &VarMap,
    cfg: &TrainConfig,
    ckpt: Option<&Path>,
    label: &str,
    mut loss_at: impl FnMut(usize) -> Result<Tensor>,
) -> Result<Vec<f32>> {
    let mut progress = Progress::default();
    if let Some(c) = ckpt {
        if c.is_file() && c.with_extension("json").is_file() {
            let mut vm = varmap.clone();
            vm.load(c)
                .with_context(|| format!("loading checkpoint {}", c.display()))?;
            progress = serde_json::from_str(&std::fs::read_to_string(c.with_extension("json"))?)
                .context("reading checkpoint progress")?;
        }
    }
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: cfg.lr,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg} [{elapsed}<{eta}]")
            .unwrap(),
    );
    bar.set_prefix(label.to_string());
    bar.set_position(progress.step as u64);
    while progress.step < cfg.steps {
        let step = progress.step;
        let lr = cfg.lr * ((step + 1) as f64 / cfg.warmup.max(1) as f64).min(1.0);
        opt.set_learning_rate(lr);
        let loss = loss_at(step)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            anyhow::bail!("{label}: loss became {l} at step {step}");
        }
        opt.backward_step(&loss)?;
        progress.losses.push(l);
        progress.step += 1;
        bar.inc(1);
        if step % 20 == 0 {
            bar.set_message(format!("loss {l:.4}"));
        }
        if let Some(c) = ckpt {
            if progress.step % cfg.checkpoint_every == 0 || progress.step == cfg.steps {
                save(varmap, c, &progress)?;
            }
        }
    }
    bar.finish();
    Ok(progress.losses)
}

/// Mean of the first and last `k` losses, for "the loss fell" checks.
pub fn loss_drop(losses: &[f32], k: usize) -> (f32, f32) {
    let k = k.min(losses.len() / 2).max(1);
    let first = losses[..k].iter().sum::<f32>() / k as f32;
    let last = losses[losses.len() - k..].iter().sum::<f32>() / k as f32;
    (first, last)
}
