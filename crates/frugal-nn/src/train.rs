//! A model-agnostic training loop.
//!
//! A model implements [`TrainModel`] (the loss of one batch); the caller supplies batches as a
//! function of the step number. The loop owns what every trained model here needs: candle-nn's
//! AdamW, a warm-up + cosine learning-rate schedule, an indicatif progress bar, periodic
//! checkpoints and resume. Classification (digits), segmentation and motion models differ only
//! in their `Batch` type and `loss`.
//!
//! Resume restores the weights, the step (so the schedule and the step-indexed batches continue
//! exactly) and the loss history. It does not restore AdamW's moment estimates: candle-nn keeps
//! them private, so they restart from zero after a resume (a short re-warm-up of the moments).

use crate::checkpoint::{self, TrainState};
use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use std::path::PathBuf;

/// A model that can be trained: the scalar loss of a batch, differentiable w.r.t. its variables.
pub trait TrainModel {
    type Batch;
    fn loss(&self, batch: &Self::Batch) -> candle_core::Result<Tensor>;
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    Constant,
    /// Linear warm-up over `warmup` steps, then cosine decay to `min_frac` × the peak rate.
    WarmupCosine {
        warmup: usize,
        min_frac: f64,
    },
}

impl LrSchedule {
    /// Rate at `step` (0-based) of a run of `total` steps with peak rate `lr`.
    pub fn rate(&self, lr: f64, step: usize, total: usize) -> f64 {
        match *self {
            LrSchedule::Constant => lr,
            LrSchedule::WarmupCosine { warmup, min_frac } => {
                if step < warmup {
                    return lr * (step + 1) as f64 / warmup as f64;
                }
                let span = total.saturating_sub(warmup).max(1) as f64;
                let t = ((step - warmup) as f64 / span).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                lr * (min_frac + (1.0 - min_frac) * cos)
            }
        }
    }
}

/// Settings of one training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: LrSchedule,
    /// Seed recorded in checkpoints (init and batches derive from the caller's use of it).
    pub seed: u64,
    /// Where to checkpoint; with `resume`, an existing checkpoint there is continued.
    pub checkpoint: Option<PathBuf>,
    /// Checkpoint every this many steps (and always at the end) when `checkpoint` is set.
    pub checkpoint_every: usize,
    pub resume: bool,
    /// Show an indicatif progress bar (hidden automatically when stderr is not a terminal).
    pub progress: bool,
    /// Description stored in the checkpoint state.
    pub model: serde_json::Value,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            lr: 1e-3,
            weight_decay: 1e-2,
            schedule: LrSchedule::WarmupCosine {
                warmup: 50,
                min_frac: 0.05,
            },
            seed: 0,
            checkpoint: None,
            checkpoint_every: 500,
            resume: false,
            progress: true,
            model: serde_json::Value::Null,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Loss of every step, including steps restored from a checkpoint.
    pub losses: Vec<f32>,
    /// Step the run started from (non-zero after a resume).
    pub start_step: usize,
}

/// Train `model` (whose variables live in `vars`) for `cfg.steps` steps.
pub fn train<M: TrainModel>(
    model: &M,
    vars: &mut VarMap,
    mut next_batch: impl FnMut(usize) -> Result<M::Batch>,
    cfg: &TrainConfig,
) -> Result<TrainReport> {
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        anyhow::bail!("learning rate must be a positive number, got {}", cfg.lr);
    }
    let mut losses = Vec::with_capacity(cfg.steps);
    let mut start = 0;
    if cfg.resume {
        if let Some(path) = &cfg.checkpoint {
            if path.is_file() {
                let state = checkpoint::load(vars, path)?;
                start = state.step.min(cfg.steps);
                losses = state.losses;
                losses.truncate(start);
            }
        }
    }
    let trainable: Vec<Var> = vars.all_vars();
    let mut opt = AdamW::new(
        trainable,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let bar = if cfg.progress {
        indicatif::ProgressBar::new(cfg.steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps, loss {msg} [{elapsed}<{eta}]",
        )
        .expect("static template"),
    );
    bar.set_position(start as u64);
    let save = |losses: &Vec<f32>, step: usize, vars: &VarMap| -> Result<()> {
        if let Some(path) = &cfg.checkpoint {
            let state = TrainState {
                step,
                seed: cfg.seed,
                model: cfg.model.clone(),
                losses: losses.clone(),
            };
            checkpoint::save(vars, path, &state)?;
        }
        Ok(())
    };
    for step in start..cfg.steps {
        opt.set_learning_rate(cfg.schedule.rate(cfg.lr, step, cfg.steps));
        let batch = next_batch(step).with_context(|| format!("building batch {step}"))?;
        let loss = model.loss(&batch)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            anyhow::bail!("loss became {value} at step {step}; lower the learning rate");
        }
        opt.backward_step(&loss)?;
        losses.push(value);
        bar.inc(1);
        if step % 10 == 0 {
            bar.set_message(format!("{value:.4}"));
        }
        if cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0 {
            save(&losses, step + 1, vars)?;
        }
    }
    bar.finish_and_clear();
    save(&losses, cfg.steps, vars)?;
    Ok(TrainReport {
        losses,
        start_step: start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::SeededVarMap;
    use crate::layers::Mlp;
    use candle_core::{DType, Device, Module};

    /// A 2-class problem a tiny MLP learns in a few hundred steps: label = (x0 · x1 > 0).
    struct Xor {
        mlp: Mlp,
    }

    impl TrainModel for Xor {
        type Batch = (Tensor, Tensor);
        fn loss(&self, (x, y): &Self::Batch) -> candle_core::Result<Tensor> {
            candle_nn::loss::cross_entropy(&self.mlp.forward(x)?, y)
        }
    }

    fn batch(step: usize) -> Result<(Tensor, Tensor)> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(step as u64);
        let xs: Vec<f32> = (0..64).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let ys: Vec<u32> = xs.chunks(2).map(|p| (p[0] * p[1] > 0.0) as u32).collect();
        Ok((
            Tensor::from_vec(xs, (32, 2), &Device::Cpu)?,
            Tensor::from_vec(ys, 32, &Device::Cpu)?,
        ))
    }

    fn model(seed: u64) -> (Xor, SeededVarMap) {
        let vm = SeededVarMap::new(seed);
        let mlp = Mlp::new(2, 32, 2, vm.var_builder(DType::F32, &Device::Cpu).pp("mlp")).unwrap();
        (Xor { mlp }, vm)
    }

    fn cfg(steps: usize, ckpt: Option<PathBuf>) -> TrainConfig {
        TrainConfig {
            steps,
            lr: 1e-2,
            progress: false,
            checkpoint: ckpt,
            checkpoint_every: 50,
            resume: true,
            schedule: LrSchedule::WarmupCosine {
                warmup: 10,
                min_frac: 0.1,
            },
            ..Default::default()
        }
    }

    #[test]
    fn loss_falls_on_a_learnable_problem() -> Result<()> {
        let (m, vm) = model(1);
        let r = train(&m, &mut vm.varmap().clone(), batch, &cfg(300, None))?;
        let first: f32 = r.losses[..20].iter().sum::<f32>() / 20.0;
        let last: f32 = r.losses[280..].iter().sum::<f32>() / 20.0;
        assert!(last < 0.5 * first, "loss {first} -> {last}");
        Ok(())
    }

    #[test]
    fn checkpoint_round_trips_and_resume_continues() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("frugal-nn-ckpt-{}", std::process::id()));
        let path = dir.join("m.safetensors");
        let _ = std::fs::remove_dir_all(&dir);
        let (m, vm) = model(2);
        train(
            &m,
            &mut vm.varmap().clone(),
            batch,
            &cfg(60, Some(path.clone())),
        )?;
        let x = batch(999)?.0;
        let want = m.mlp.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        // A fresh model with another seed, loaded from the checkpoint, computes the same outputs.
        let (m2, vm2) = model(77);
        let state = checkpoint::load(&mut vm2.varmap().clone(), &path)?;
        assert_eq!(state.step, 60);
        assert_eq!(state.losses.len(), 60);
        let got = m2.mlp.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(want, got);
        // Resuming to 80 steps runs only the 20 missing steps and keeps the history.
        let r = train(
            &m2,
            &mut vm2.varmap().clone(),
            batch,
            &cfg(80, Some(path.clone())),
        )?;
        assert_eq!(r.start_step, 60);
        assert_eq!(r.losses.len(), 80);
        assert_eq!(checkpoint::load(&mut vm2.varmap().clone(), &path)?.step, 80);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = LrSchedule::WarmupCosine {
            warmup: 10,
            min_frac: 0.1,
        };
        assert!((s.rate(1.0, 9, 100) - 1.0).abs() < 1e-12);
        assert!(s.rate(1.0, 0, 100) < 0.2);
        assert!((s.rate(1.0, 100, 100) - 0.1).abs() < 1e-9);
        assert!(s.rate(1.0, 50, 100) < 1.0 && s.rate(1.0, 50, 100) > 0.1);
    }
}
