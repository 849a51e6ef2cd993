//! The scaling bench: time and peak memory of ZPressor followed by a fixed-size downstream
//! stand-in over the N anchors, against the same stand-in over all K views, as K grows.
//!
//! Inputs are random features of DepthSplat's 1/8 scale (32×56, 128 channels by default) and
//! cameras scattered on a sphere; weights are randomly initialised (speed and memory do not depend
//! on their values). Before each run we estimate its memory; a run over the cap is recorded as
//! `skipped` with the estimate (on the CPU a real out-of-memory kills the process instead of
//! returning an error), and a run whose allocation fails (on a GPU) as `oom`.

use crate::anchors::{self, Assignment};
use crate::memory::measure_peak;
use crate::standin::MultiViewTransformer;
use crate::zpressor::{Zpressor, ZpressorConfig};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

/// What the bench measures; the defaults are DepthSplat's 1/8-scale features (32×56, 128
/// channels), N = 6 anchors and K from 8 to 200.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingConfig {
    pub views: Vec<usize>,
    pub anchors: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub zpressor_blocks: usize,
    /// Blocks of the downstream stand-in (ours).
    pub standin_blocks: usize,
    pub standin_heads: usize,
    /// Timed runs per configuration (the median is reported), after `warmup` untimed runs.
    pub reps: usize,
    pub warmup: usize,
    /// Runs whose estimated memory exceeds this many MiB are not attempted.
    pub mem_cap_mb: f64,
    pub seed: u64,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            views: vec![8, 12, 24, 36, 100, 200],
            anchors: 6,
            height: 32,
            width: 56,
            channels: 128,
            zpressor_blocks: 6,
            standin_blocks: 2,
            standin_heads: 1,
            reps: 3,
            warmup: 1,
            mem_cap_mb: 6144.0,
            seed: 0,
        }
    }
}

/// One measured (or refused) configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingRow {
    pub views: usize,
    /// `zpressor` (compressor + stand-in over N anchors) or `baseline` (stand-in over K views).
    pub path: String,
    /// `ok`, `skipped` (estimate over the cap) or `oom` (the allocation failed).
    pub status: String,
    /// Median wall time of the whole path (ms).
    pub ms: Option<f64>,
    /// The compressor's share (anchor selection + blocks), median (ms); zpressor path only.
    pub compressor_ms: Option<f64>,
    /// The stand-in's share, median (ms).
    pub standin_ms: Option<f64>,
    /// Peak memory added by the path (MiB), largest over the timed runs.
    pub peak_mb: Option<f64>,
    /// Our estimate of the path's peak memory (MiB), which decides `skipped`.
    pub estimate_mb: f64,
    pub note: String,
}

/// Cameras at random points of a sphere of radius 2 looking along the axes (identity rotation):
/// rigid camera-to-world matrices [1, K, 4, 4].
pub fn random_cameras(k: usize, rng: &mut impl Rng, device: &Device) -> Result<Tensor> {
    let mut m = Vec::with_capacity(k * 16);
    for _ in 0..k {
        let (mut x, mut y, mut z): (f32, f32, f32);
        loop {
            x = rng.gen_range(-1.0..1.0);
            y = rng.gen_range(-1.0..1.0);
            z = rng.gen_range(-1.0..1.0);
            let n = (x * x + y * y + z * z).sqrt();
            if n > 0.1 && n <= 1.0 {
                x *= 2.0 / n;
                y *= 2.0 / n;
                z *= 2.0 / n;
                break;
            }
        }
        m.extend_from_slice(&[
            1.0, 0.0, 0.0, x, 0.0, 1.0, 0.0, y, 0.0, 0.0, 1.0, z, 0.0, 0.0, 0.0, 1.0,
        ]);
    }
    Ok(Tensor::from_vec(m, (1, k, 4, 4), device)?)
}

const F32: f64 = 4.0;
const MIB: f64 = 1024.0 * 1024.0;

/// Estimated peak (MiB) of the stand-in over `v` views: two T×T score buffers per head alive at
/// once (scores and softmax) plus about ten T×C activations.
pub fn estimate_standin_mb(cfg: &ScalingConfig, v: usize) -> f64 {
    let t = (v * cfg.height * cfg.width) as f64;
    (2.0 * cfg.standin_heads as f64 * t * t + 10.0 * t * cfg.channels as f64) * F32 / MIB
}

/// Estimated peak (MiB) of compressor + stand-in over the anchors, given the largest support set.
pub fn estimate_zpressor_mb(cfg: &ScalingConfig, k: usize, largest_support: usize) -> f64 {
    let hw = (cfg.height * cfg.width) as f64;
    let c = cfg.channels as f64;
    let inputs = 3.0 * k as f64 * hw * c; // features, tokens, gathered contexts
    let ctx = largest_support as f64 * hw;
    let cross = 2.0 * hw * ctx + 4.0 * ctx * c; // scores + softmax, normed ctx and K/V
    let compressor = (inputs + cross) * F32 / MIB;
    compressor.max(estimate_standin_mb(cfg, cfg.anchors) + inputs * F32 / MIB)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn is_oom(e: &anyhow::Error) -> bool {
    let s = format!("{e:?}").to_lowercase();
    s.contains("out of memory") || s.contains("out_of_memory") || s.contains("alloc")
}

/// Runs the bench on `device`, calling `progress` after each configuration.
pub fn run_scaling(
    cfg: &ScalingConfig,
    device: &Device,
    mut progress: impl FnMut(&ScalingRow),
) -> Result<Vec<ScalingRow>> {
    if cfg.anchors == 0 || cfg.views.iter().any(|&k| k < cfg.anchors) {
        return Err(crate::ZpressorError::TooFewViews {
            views: cfg.views.iter().copied().min().unwrap_or(0),
            anchors: cfg.anchors,
        }
        .into());
    }
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let zcfg = ZpressorConfig {
        embed_dims: vec![cfg.channels],
        num_heads: 1,
        num_layers: cfg.zpressor_blocks,
        no_self_attn: false,
    };
    let zp = Zpressor::new(zcfg, vb.pp("zpressor"))?;
    let standin = MultiViewTransformer::new(
        cfg.channels,
        cfg.standin_heads,
        cfg.standin_blocks,
        false,
        vb.pp("standin"),
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut rows = Vec::new();
    for &k in &cfg.views {
        let cams = random_cameras(k, &mut rng, device)?;
        let x = Tensor::randn(
            0f32,
            1.0,
            (1, k, cfg.channels, cfg.height, cfg.width),
            device,
        )?;
        let centres = zp.camera_centres(&cams)?;
        let asg: Assignment = anchors::posed_assignment(&centres[0], cfg.anchors)?;
        let largest = (0..cfg.anchors)
            .map(|j| asg.supporters(j).len())
            .max()
            .unwrap_or(0);

        // ZPressor path.
        let est = estimate_zpressor_mb(cfg, k, largest);
        let row = measure_path(cfg, device, k, "zpressor", est, |times| {
            let t0 = Instant::now();
            let a = zp.select_anchors(&cams, cfg.anchors)?;
            let z = zp.compress(&x, &a, 0)?;
            device.synchronize()?;
            let t1 = Instant::now();
            let y = standin.forward(&z.squeeze(0)?)?;
            device.synchronize()?;
            drop(y);
            times.push((t1 - t0, t1.elapsed()));
            Ok(())
        })?;
        progress(&row);
        rows.push(row);

        // Baseline: the stand-in over every view.
        let est = estimate_standin_mb(cfg, k)
            + 2.0 * (k * cfg.height * cfg.width * cfg.channels) as f64 * F32 / MIB;
        let row = measure_path(cfg, device, k, "baseline", est, |times| {
            let t0 = Instant::now();
            let y = standin.forward(&x.squeeze(0)?)?;
            device.synchronize()?;
            drop(y);
            times.push((std::time::Duration::ZERO, t0.elapsed()));
            Ok(())
        })?;
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

type Times = Vec<(std::time::Duration, std::time::Duration)>;

fn measure_path(
    cfg: &ScalingConfig,
    device: &Device,
    k: usize,
    path: &str,
    estimate_mb: f64,
    mut run: impl FnMut(&mut Times) -> Result<()>,
) -> Result<ScalingRow> {
    let mut row = ScalingRow {
        views: k,
        path: path.into(),
        status: "ok".into(),
        ms: None,
        compressor_ms: None,
        standin_ms: None,
        peak_mb: None,
        estimate_mb,
        note: String::new(),
    };
    if estimate_mb > cfg.mem_cap_mb {
        row.status = "skipped".into();
        row.note = format!(
            "estimated {:.0} MiB exceeds the cap of {:.0} MiB",
            estimate_mb, cfg.mem_cap_mb
        );
        return Ok(row);
    }
    let mut times: Times = Vec::new();
    let mut peak: Option<f64> = None;
    for i in 0..cfg.warmup + cfg.reps.max(1) {
        let (res, mb) = measure_peak(device, || run(&mut times));
        if let Err(e) = res {
            if is_oom(&e) {
                row.status = "oom".into();
                row.note = format!("{e}");
                return Ok(row);
            }
            return Err(e);
        }
        if i < cfg.warmup {
            times.clear();
        } else if let Some(mb) = mb {
            peak = Some(peak.map_or(mb, |p: f64| p.max(mb)));
        }
    }
    let ms = |f: &dyn Fn(&(std::time::Duration, std::time::Duration)) -> f64| {
        median(times.iter().map(f).collect())
    };
    row.ms = ms(&|t| (t.0 + t.1).as_secs_f64() * 1e3);
    row.standin_ms = ms(&|t| t.1.as_secs_f64() * 1e3);
    if path == "zpressor" {
        row.compressor_ms = ms(&|t| t.0.as_secs_f64() * 1e3);
    }
    row.peak_mb = peak;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bench_runs_both_paths_and_skips_over_the_cap() {
        let cfg = ScalingConfig {
            views: vec![6, 12],
            anchors: 3,
            height: 4,
            width: 6,
            channels: 16,
            zpressor_blocks: 2,
            standin_blocks: 1,
            reps: 1,
            warmup: 0,
            mem_cap_mb: estimate_standin_mb(
                &ScalingConfig {
                    height: 4,
                    width: 6,
                    channels: 16,
                    ..Default::default()
                },
                8,
            ),
            ..Default::default()
        };
        let rows = run_scaling(&cfg, &Device::Cpu, |_| {}).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows
            .iter()
            .filter(|r| r.status == "ok")
            .all(|r| r.ms.unwrap() > 0.0));
        let base12 = rows
            .iter()
            .find(|r| r.views == 12 && r.path == "baseline")
            .unwrap();
        assert_eq!(base12.status, "skipped", "{base12:?}");
        let zp12 = rows
            .iter()
            .find(|r| r.views == 12 && r.path == "zpressor")
            .unwrap();
        assert_eq!(zp12.status, "ok", "{zp12:?}");
    }
}
