//! Training the digit zoo (the classifiers NEs is measured on) with frugal-nn's training loop.

use crate::digits::{to_tensor, Digits};
use crate::models::{DigitNet, ModelSpec};
use anyhow::Result;
use candle_core::{Device, Tensor};
use frugal_nn::data::ShuffledBatches;
use frugal_nn::train::{train, LrSchedule, TrainConfig};
use std::path::Path;

/// Hyper-parameters of the digit classifiers (ours; chosen to train in seconds on a laptop core).
#[derive(Debug, Clone)]
pub struct DigitTraining {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

impl Default for DigitTraining {
    fn default() -> Self {
        Self {
            steps: 1500,
            batch: 64,
            lr: 3e-3,
            weight_decay: 1e-2,
        }
    }
}

/// Train one model into `dir/<stem>.safetensors` (resuming a partial run); returns its test
/// accuracy.
pub fn train_one(
    spec: &ModelSpec,
    train_set: &Digits,
    test_set: &Digits,
    dir: &Path,
    hp: &DigitTraining,
    progress: bool,
) -> Result<f64> {
    let (net, vm) = DigitNet::build(spec)?;
    let dev = Device::Cpu;
    let x = to_tensor(&train_set.images, &dev)?;
    let y = Tensor::new(train_set.labels.as_slice(), &dev)?;
    let batches = ShuffledBatches::new(train_set.len(), hp.batch, spec.seed)?;
    let cfg = TrainConfig {
        steps: hp.steps,
        lr: hp.lr,
        weight_decay: hp.weight_decay,
        schedule: LrSchedule::WarmupCosine {
            warmup: hp.steps / 20,
            min_frac: 0.02,
        },
        seed: spec.seed,
        checkpoint: Some(dir.join(format!("{}.safetensors", spec.stem()))),
        checkpoint_every: 500,
        resume: true,
        progress,
        model: serde_json::to_value(spec)?,
    };
    train(
        &net,
        &mut vm.varmap().clone(),
        |step| {
            let idx = Tensor::new(batches.indices(step).as_slice(), &dev)?;
            Ok((x.index_select(&idx, 0)?, y.index_select(&idx, 0)?))
        },
        &cfg,
    )?;
    let xt = to_tensor(&test_set.images, &dev)?;
    Ok(frugal_nn::metrics::top1(
        &net.forward(&xt)?,
        &test_set.labels,
    )?)
}
