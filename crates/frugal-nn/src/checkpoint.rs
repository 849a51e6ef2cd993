//! Checkpoints: the variables as safetensors plus a JSON sidecar with the training state.
//!
//! Both files are written to a temporary name and renamed into place, so an interrupted save
//! never leaves a truncated checkpoint that a resume would then trust.

use anyhow::{Context, Result};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a resume needs besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Number of optimiser steps already taken.
    pub step: usize,
    /// Seed of the run (batches and init derive from it).
    pub seed: u64,
    /// Free-form description of the model (architecture, hyper-parameters).
    pub model: serde_json::Value,
    /// Loss of every step taken so far.
    pub losses: Vec<f32>,
}

/// The sidecar path of a checkpoint: `x.safetensors` → `x.state.json`.
pub fn state_path(path: &Path) -> PathBuf {
    path.with_extension("state.json")
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Save the variables and the state next to each other, atomically per file.
pub fn save(vars: &VarMap, path: &Path, state: &TrainState) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating checkpoint folder {}", dir.display()))?;
        }
    }
    let tmp = tmp_path(path);
    vars.save(&tmp)
        .with_context(|| format!("writing checkpoint {}", tmp.display()))?;
    let sp = state_path(path);
    let stmp = tmp_path(&sp);
    std::fs::write(&stmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", stmp.display()))?;
    std::fs::rename(&tmp, path)?;
    std::fs::rename(&stmp, &sp)?;
    Ok(())
}

/// Load weights into `vars` (whose variables must already exist with matching shapes, i.e. the
/// model has been built) and return the state.
pub fn load(vars: &mut VarMap, path: &Path) -> Result<TrainState> {
    if !path.is_file() {
        anyhow::bail!("checkpoint {} does not exist", path.display());
    }
    vars.load(path)
        .with_context(|| format!("reading checkpoint {}", path.display()))?;
    let sp = state_path(path);
    let state: TrainState = serde_json::from_slice(
        &std::fs::read(&sp).with_context(|| format!("reading {}", sp.display()))?,
    )
    .with_context(|| format!("parsing {}", sp.display()))?;
    Ok(state)
}
