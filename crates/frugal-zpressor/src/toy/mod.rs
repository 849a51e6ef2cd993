//! The trainable toy (ours): procedural posed scenes rendered by a small ray caster with
//! photographic textures, and a feed-forward next-view model trained with and without ZPressor at
//! one number of context views and evaluated at many.

pub mod metrics;
pub mod model;
pub mod render;
pub mod textures;

use crate::memory::measure_peak;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use model::{Batch, NextViewModel, ToyModelConfig};
use rand::{Rng, SeedableRng};
use render::{Camera, Scene, Texture};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How episodes are drawn (ours): cameras on an arc of the orbit around the scene, the target at
/// a random place on the same arc, all looking at the scene's centre.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EpisodeConfig {
    pub image: usize,
    /// Angular span of the arc (degrees).
    pub arc_deg: f32,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        Self {
            image: 32,
            arc_deg: 180.0,
        }
    }
}

/// One scene seen from `k` context cameras and one target camera, drawn from `seed`. The scene and
/// the target depend only on the seed; the context cameras also on `k`.
pub struct Episode {
    pub context: Vec<(Camera, Vec<f32>)>,
    pub target: (Camera, Vec<f32>),
}

fn orbit_camera(rng: &mut impl Rng, start: f32, arc: f32) -> Camera {
    let a = start + rng.gen_range(0.0..arc);
    Camera::on_orbit(a, rng.gen_range(3.5..4.5), rng.gen_range(1.0..2.2))
}

pub fn episode(seed: u64, k: usize, cfg: EpisodeConfig, textures: &[Texture]) -> Episode {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let scene = Scene::random(&mut rng, textures.len());
    let start = rng.gen_range(0.0..std::f32::consts::TAU);
    let arc = cfg.arc_deg.to_radians();
    let tcam = orbit_camera(&mut rng, start, arc);
    let target = (tcam, render::render(&scene, &tcam, cfg.image, textures));
    let mut crng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k as u64 + 1)),
    );
    let context = (0..k)
        .map(|_| {
            let c = orbit_camera(&mut crng, start, arc);
            (c, render::render(&scene, &c, cfg.image, textures))
        })
        .collect();
    Episode { context, target }
}

/// Stacks episodes (all with the same number of context views) into a batch on `device`.
pub fn batch(episodes: &[Episode], device: &Device) -> Result<Batch> {
    let b = episodes.len();
    let k = episodes[0].context.len();
    let s = (episodes[0].target.1.len() / 3).isqrt();
    let (mut crgb, mut cray, mut cext, mut tray, mut trgb) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in episodes {
        for (cam, img) in &e.context {
            crgb.extend_from_slice(img);
            cray.extend(render::plucker(cam, s));
            cext.extend(cam.extrinsic());
        }
        tray.extend(render::plucker(&e.target.0, s));
        trgb.extend_from_slice(&e.target.1);
    }
    Ok(Batch {
        context_rgb: Tensor::from_vec(crgb, (b, k, 3, s, s), device)?,
        context_rays: Tensor::from_vec(cray, (b, k, 6, s, s), device)?,
        context_extrinsics: Tensor::from_vec(cext, (b, k, 4, 4), device)?,
        target_rays: Tensor::from_vec(tray, (b, 6, s, s), device)?,
        target_rgb: Tensor::from_vec(trgb, (b, 3, s, s), device)?,
    })
}

/// Training settings (ours, except the information-bottleneck weight, which is the reference's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub model: ToyModelConfig,
    pub episodes: EpisodeConfig,
    pub views: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub ib_weight: f64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ToyModelConfig::default(),
            episodes: EpisodeConfig::default(),
            views: 12,
            steps: 1500,
            batch: 4,
            lr: 1e-3,
            ib_weight: 1e-5,
            seed: 0,
        }
    }
}

/// Training seeds are below this; evaluation scenes start here, so they are never trained on.
pub const EVAL_SEED_BASE: u64 = 1 << 40;

/// Trains a model; calls `progress(step, loss)` after each step. Returns the variables and the
/// loss curve.
pub fn train(
    cfg: &TrainConfig,
    textures: &[Texture],
    device: &Device,
    mut progress: impl FnMut(usize, f32),
) -> Result<(VarMap, Vec<f32>)> {
    if let Some(n) = cfg.model.zpressor_anchors {
        if n > cfg.views {
            return Err(crate::ZpressorError::TooFewViews {
                views: cfg.views,
                anchors: n,
            }
            .into());
        }
    }
    if cfg.model.image % cfg.model.patch != 0 || cfg.model.image != cfg.episodes.image {
        bail!(
            "image size {} must equal the episodes' ({}) and be a multiple of the patch size {}",
            cfg.model.image,
            cfg.episodes.image,
            cfg.model.patch
        );
    }
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
    let model = NextViewModel::new(cfg.model.clone(), true, vb)?;
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let eps: Vec<Episode> = (0..cfg.batch)
            .map(|i| {
                let seed = cfg.seed.wrapping_mul(1_000_003) + (step * cfg.batch + i) as u64;
                episode(seed % EVAL_SEED_BASE, cfg.views, cfg.episodes, textures)
            })
            .collect();
        let b = batch(&eps, device)?;
        let (pred, ib) = model.forward(&b)?;
        let mse = (pred - &b.target_rgb)?.sqr()?.mean_all()?;
        let loss = (&mse + (ib * cfg.ib_weight)?)?;
        opt.backward_step(&loss)?;
        let l = mse.to_scalar::<f32>()?;
        if !l.is_finite() {
            bail!("training diverged at step {step} (loss {l})");
        }
        losses.push(l);
        progress(step, l);
    }
    Ok((vm, losses))
}

/// Saves a trained model into `dir` (`model.safetensors` + `config.json`), through a temporary
/// folder so a failure leaves no half-written checkpoint.
pub fn save(dir: &Path, vm: &VarMap, cfg: &TrainConfig, losses: &[f32]) -> Result<()> {
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    vm.save(tmp.join("model.safetensors"))?;
    let doc = serde_json::json!({ "config": cfg, "losses": losses });
    std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&doc)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("moving checkpoint to {}", dir.display()))?;
    Ok(())
}

/// Loads a checkpoint written by [`save`] for inference.
pub fn load(dir: &Path, device: &Device) -> Result<(NextViewModel, TrainConfig)> {
    let cfg_path = dir.join("config.json");
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {} (is this a checkpoint?)", cfg_path.display()))?,
    )?;
    let cfg: TrainConfig = serde_json::from_value(doc["config"].clone())
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let model = NextViewModel::new(cfg.model.clone(), false, vb)
        .with_context(|| format!("checkpoint {} does not match its config", dir.display()))?;
    Ok((model, cfg))
}

/// Quality, time and memory at one number of context views.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    pub views: usize,
    pub scenes: usize,
    pub psnr: f64,
    pub psnr_ci95: f64,
    pub ssim: f64,
    pub ssim_ci95: f64,
    /// Mean forward time per scene (ms), batch 1.
    pub ms: f64,
    /// Largest peak memory of one forward (MiB).
    pub peak_mb: Option<f64>,
    /// PSNR of copying the context view whose camera is nearest the target's (a floor).
    pub nearest_view_psnr: f64,
}

fn mean_ci(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, 1.96 * (var / n).sqrt())
}

/// Evaluates on `scenes` held-out scenes at each number of context views.
pub fn evaluate(
    model: &NextViewModel,
    views: &[usize],
    scenes: usize,
    textures: &[Texture],
    device: &Device,
    mut progress: impl FnMut(),
) -> Result<Vec<EvalRow>> {
    let ecfg = EpisodeConfig {
        image: model.cfg.image,
        ..Default::default()
    };
    let mut rows = Vec::new();
    for &k in views {
        if let Some(n) = model.cfg.zpressor_anchors {
            if n > k {
                return Err(crate::ZpressorError::TooFewViews {
                    views: k,
                    anchors: n,
                }
                .into());
            }
        }
        let (mut ps, mut ss, mut near, mut times) = (vec![], vec![], vec![], vec![]);
        let mut peak: Option<f64> = None;
        for i in 0..scenes {
            let e = episode(EVAL_SEED_BASE + i as u64, k, ecfg, textures);
            let b = batch(std::slice::from_ref(&e), device)?;
            let t0 = std::time::Instant::now();
            let (res, mb) = measure_peak(device, || model.forward(&b));
            let (pred, _) = res?;
            let pred = pred.flatten_all()?.to_vec1::<f32>()?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            if let Some(mb) = mb {
                peak = Some(peak.map_or(mb, |p: f64| p.max(mb)));
            }
            ps.push(metrics::psnr(&pred, &e.target.1));
            ss.push(metrics::ssim(&pred, &e.target.1, 3, ecfg.image));
            let tc = e.target.0.centre;
            let nearest = e
                .context
                .iter()
                .min_by(|a, b| {
                    let d = |c: &Camera| (0..3).map(|j| (c.centre[j] - tc[j]).powi(2)).sum::<f32>();
                    d(&a.0).total_cmp(&d(&b.0))
                })
                .expect("k >= 1");
            near.push(metrics::psnr(&nearest.1, &e.target.1));
            progress();
        }
        let (psnr, psnr_ci95) = mean_ci(&ps);
        let (ssim, ssim_ci95) = mean_ci(&ss);
        rows.push(EvalRow {
            views: k,
            scenes,
            psnr,
            psnr_ci95,
            ssim,
            ssim_ci95,
            ms: times.iter().sum::<f64>() / times.len() as f64,
            peak_mb: peak,
            nearest_view_psnr: mean_ci(&near).0,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker_textures() -> Vec<Texture> {
        (0..3)
            .map(|t| Texture {
                width: 4,
                height: 4,
                rgb: (0..16)
                    .map(|i| {
                        let on = ((i % 4) + (i / 4) + t) % 2 == 0;
                        if on {
                            [0.9, 0.2 * t as f32, 0.1]
                        } else {
                            [0.1, 0.5, 0.8]
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn tiny_training_lowers_the_loss_and_the_checkpoint_round_trips() {
        let tex = checker_textures();
        let cfg = TrainConfig {
            model: ToyModelConfig {
                image: 16,
                patch: 4,
                width: 16,
                heads: 2,
                decoder_blocks: 1,
                zpressor_anchors: Some(2),
                zpressor_blocks: 1,
            },
            episodes: EpisodeConfig {
                image: 16,
                arc_deg: 180.0,
            },
            views: 4,
            steps: 60,
            batch: 4,
            lr: 3e-3,
            ib_weight: 1e-5,
            seed: 3,
        };
        let dev = Device::Cpu;
        let (vm, losses) = train(&cfg, &tex, &dev, |_, _| {}).unwrap();
        let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
        let last: f32 = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
        assert!(last < 0.8 * first, "loss {first} -> {last}");
        let dir = std::env::temp_dir().join(format!("zp-toy-ckpt-{}", std::process::id()));
        save(&dir, &vm, &cfg, &losses).unwrap();
        let (model, back) = load(&dir, &dev).unwrap();
        assert_eq!(back, cfg);
        // the loaded (inference) model reproduces the trained (training-mode) one
        let trained = NextViewModel::new(
            cfg.model.clone(),
            true,
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap();
        let e = episode(EVAL_SEED_BASE, 4, cfg.episodes, &tex);
        let b = batch(std::slice::from_ref(&e), &dev).unwrap();
        let a = model.forward(&b).unwrap().0;
        let t = trained.forward(&b).unwrap().0;
        let d = (a - t)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "loaded model differs by {d}");
        let rows = evaluate(&model, &[2, 6], 2, &tex, &dev, || {}).unwrap();
        assert!(rows.iter().all(|r| r.psnr.is_finite() && r.ssim <= 1.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
