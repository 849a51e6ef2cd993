//! Active domain adaptation (RIPU's training scheme, ESA's and the baselines' acquisitions).
//!
//! One run = one acquisition method × clicks per image × seed:
//! 1. a segmenter (the crate's CNN encoder + softmax head) is trained on the labelled source
//!    domain once per seed (shared by every method of that seed; its target mIoU is the
//!    "source only" row);
//! 2. five rounds: the current model scores every target training image, the acquisition picks
//!    this round's share of the budget, a simulated annotator labels it, and the model trains on
//!    source cross-entropy + target cross-entropy on the acquired labels (+ RIPU's negative
//!    learning on all target pixels, a knob);
//! 3. after every round the model is evaluated on the target validation scenes.
//!
//! Layout under the runs folder (every file written atomically; rerunning resumes):
//! - `source-s<seed>/model.safetensors`, `model.json` (its evaluation);
//! - `<run>/round<r>.labels.bin` (annotation state after round r's acquisition),
//!   `round<r>.partial.safetensors` (training in progress), `round<r>.safetensors` + `.json`.

use crate::acquisition::{
    acquire_round, ra_regions_per_round, Acquire, EsaConfig, ImageLabels, ImageView, Picked,
    RipuConfig, RoundBudget,
};
use crate::domains::{self, Domain, DomainConfig, DomainPhotos, DomainSet, NUM_CLASSES};
use crate::encoder::{Encoder, EncoderConfig};
use crate::entities::{felzenszwalb, oracle_entities, FelzenszwalbConfig};
use crate::scenes::IGNORE;
use crate::softmax_head::SoftmaxHead;
use crate::superpixels::{slic, SlicConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use frugal_nn::data::ShuffledBatches;
use frugal_nn::init::SeededVarMap;
use frugal_nn::segmentation::{pixel_cross_entropy, upsample_bilinear, ConfusionMatrix};
use frugal_nn::train::{self, LrSchedule, TrainConfig, TrainModel};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where ESA's entities come from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum EntitySource {
    /// Felzenszwalb graph segmentation of the target image (ours: no trained proposer).
    #[default]
    Felzenszwalb,
    /// Ground-truth instance masks: an upper bound, not a method.
    Oracle,
}

/// Everything a run depends on. Sizes and step counts are ours (set by two shared CPU cores);
/// RIPU's settings are kept where they carry over: five rounds with the budget split evenly,
/// negative learning with weight 1 and threshold 0.05, frozen BatchNorm statistics while adapting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptConfig {
    pub acquire: Acquire,
    /// Clicks per target image over all rounds (superpixels, PA pixels, RA regions).
    pub clicks: usize,
    /// RIPU-RA only: label this share of every image's pixels instead of `clicks` regions.
    pub ra_ratio: Option<f64>,
    pub entities: EntitySource,
    pub seed: u64,
    pub source_data_seed: u64,
    pub target_data_seed: u64,
    pub source_scenes: usize,
    pub target_scenes: usize,
    pub val_scenes: usize,
    pub domain: DomainConfig,
    pub encoder: EncoderConfig,
    pub head_dim: usize,
    pub slic: SlicConfig,
    pub felzenszwalb: FelzenszwalbConfig,
    pub esa: EsaConfig,
    pub ripu: RipuConfig,
    pub rounds: usize,
    /// Scenes per domain in every batch (a step sees `batch` source and `batch` target scenes).
    pub batch: usize,
    pub source_steps: usize,
    /// Training steps after each round's acquisition.
    pub round_steps: usize,
    /// Extra steps after the last round (RIPU keeps training long after its last selection).
    pub final_steps: usize,
    pub source_lr: f64,
    pub adapt_lr: f64,
    pub weight_decay: f64,
    /// Weight of RIPU's negative-learning term (0 switches it off).
    pub neg_weight: f64,
    pub neg_threshold: f64,
    /// Keep BatchNorm statistics frozen while adapting (RIPU's FREEZE_BN; there they are
    /// ImageNet's, here the source model's). Off: batch statistics of the mixed source + target
    /// batch, running averages updated (ours).
    pub freeze_bn: bool,
    pub checkpoint_every: usize,
    #[serde(skip)]
    pub progress: bool,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            acquire: Acquire::Esa,
            clicks: 40,
            ra_ratio: None,
            entities: EntitySource::Felzenszwalb,
            seed: 0,
            source_data_seed: 10,
            target_data_seed: 11,
            source_scenes: 500,
            target_scenes: 300,
            val_scenes: 100,
            domain: DomainConfig::default(),
            encoder: EncoderConfig {
                widths: [16, 32, 48],
            },
            head_dim: 48,
            slic: SlicConfig::default(),
            felzenszwalb: FelzenszwalbConfig::default(),
            esa: EsaConfig::default(),
            ripu: RipuConfig::default(),
            rounds: 5,
            batch: 8,
            source_steps: 600,
            round_steps: 60,
            final_steps: 200,
            source_lr: 2e-3,
            adapt_lr: 5e-4,
            weight_decay: 0.01,
            neg_weight: 1.0,
            neg_threshold: 0.05,
            freeze_bn: true,
            checkpoint_every: 50,
            progress: true,
        }
    }
}

impl AdaptConfig {
    /// Folder name of the run.
    pub fn run_name(&self) -> String {
        let mut s = self.acquire.name().to_string();
        if self.acquire == Acquire::Esa && self.entities == EntitySource::Oracle {
            s.push_str("-oracle");
        }
        match (self.acquire, self.ra_ratio) {
            (Acquire::RipuRa, Some(r)) => s.push_str(&format!("-r{r}")),
            (Acquire::Full | Acquire::SourceOnly, _) => {}
            _ => s.push_str(&format!("-c{}", self.clicks)),
        }
        format!("{s}-s{}", self.seed)
    }

    /// Clicks per image in round `r` (0-based): the budget split evenly, the remainder going
    /// to the first rounds.
    pub fn round_clicks(&self, r: usize, pixels: usize) -> usize {
        if let (Acquire::RipuRa, Some(ratio)) = (self.acquire, self.ra_ratio) {
            return ra_regions_per_round(pixels, ratio, self.rounds, self.ripu.ra_radius);
        }
        self.clicks / self.rounds + (r < self.clicks % self.rounds) as usize
    }

    pub fn check(&self) -> Result<()> {
        if self.rounds == 0 {
            bail!("--rounds must be positive");
        }
        if self.batch == 0 || self.source_scenes < self.batch || self.target_scenes < self.batch {
            bail!(
                "need at least {} source and target scenes (the batch), got {} and {}",
                self.batch,
                self.source_scenes,
                self.target_scenes
            );
        }
        if self.val_scenes == 0 {
            bail!("need at least one validation scene");
        }
        if self.source_steps == 0 {
            bail!("--source-steps must be positive");
        }
        if let Some(r) = self.ra_ratio {
            if !(r > 0.0 && r <= 1.0) {
                bail!("--ra-ratio must be in (0, 1], got {r}");
            }
        }
        if !(self.neg_weight >= 0.0 && self.neg_weight.is_finite()) {
            bail!("--neg-weight must be a non-negative number");
        }
        if self.acquire == Acquire::Esa && self.esa.top_entities == 0 {
            bail!("--top-entities must be positive");
        }
        if self.domain.size < 8 {
            bail!("scenes must be at least 8 pixels wide");
        }
        Ok(())
    }
}

fn dev() -> Device {
    Device::Cpu
}

/// The segmenter: the crate's encoder and softmax head.
pub struct Segmenter {
    pub encoder: Encoder,
    pub head: SoftmaxHead,
}

impl Segmenter {
    pub fn new(cfg: &AdaptConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            encoder: Encoder::new(&cfg.encoder, vb.pp("enc"))?,
            head: SoftmaxHead::new(
                cfg.head_dim,
                cfg.encoder.out_channels(),
                NUM_CLASSES,
                vb.pp("head"),
            )?,
        })
    }

    /// Logits `(B, K, S, S)` at image resolution; `train` = BatchNorm batch statistics.
    pub fn logits(&self, images: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = images.dims4()?;
        let f = self.encoder.forward_t(images, train)?;
        upsample_bilinear(&self.head.forward(&f)?, h, w)
    }
}

/// A fresh segmenter with seeded weights, or one loaded from a checkpoint into a trainable map.
fn trainable_segmenter(cfg: &AdaptConfig, from: Option<&Path>) -> Result<(Segmenter, VarMap)> {
    let vm = SeededVarMap::new(cfg.seed);
    let model = Segmenter::new(cfg, vm.var_builder(DType::F32, &dev()))?;
    let mut map = vm.varmap().clone();
    if let Some(p) = from {
        map.load(p)
            .with_context(|| format!("reading model {}", p.display()))?;
    }
    Ok((model, map))
}

/// The data of a run.
pub struct AdaptData {
    pub source: DomainSet,
    /// Held-out source scenes (as many as the target validation set): the source model's
    /// in-domain accuracy, which shows the size of the domain gap.
    pub source_val: DomainSet,
    pub target: DomainSet,
    pub val: DomainSet,
    /// Superpixels and entities of every target training scene.
    pub superpixels: Vec<(Vec<u32>, usize)>,
    pub entities: Vec<(Vec<u32>, usize)>,
}

impl AdaptData {
    pub fn generate(cfg: &AdaptConfig, photos: &DomainPhotos) -> Self {
        let d = &cfg.domain;
        let source = domains::generate(
            photos,
            d,
            Domain::Source,
            cfg.source_data_seed,
            0,
            cfg.source_scenes,
        );
        let target = domains::generate(
            photos,
            d,
            Domain::Target,
            cfg.target_data_seed,
            0,
            cfg.target_scenes,
        );
        let source_val = domains::generate(
            photos,
            d,
            Domain::Source,
            cfg.source_data_seed,
            cfg.source_scenes,
            cfg.val_scenes,
        );
        // Validation scenes continue the target sequence: same distribution, disjoint scenes.
        let val = domains::generate(
            photos,
            d,
            Domain::Target,
            cfg.target_data_seed,
            cfg.target_scenes,
            cfg.val_scenes,
        );
        let s = d.size;
        let superpixels = (0..target.len())
            .map(|i| slic(target.image(i), s, s, &cfg.slic))
            .collect();
        let entities = (0..target.len())
            .map(|i| match cfg.entities {
                EntitySource::Felzenszwalb => {
                    felzenszwalb(target.image(i), s, s, &cfg.felzenszwalb)
                }
                EntitySource::Oracle => oracle_entities(target.instance(i), s, s),
            })
            .collect();
        Self {
            source,
            source_val,
            target,
            val,
            superpixels,
            entities,
        }
    }
}

fn images_tensor(set: &DomainSet, idx: &[usize]) -> Result<Tensor> {
    let s = set.size;
    let mut v = Vec::with_capacity(idx.len() * 3 * s * s);
    for &i in idx {
        v.extend_from_slice(set.image(i));
    }
    Ok(Tensor::from_vec(v, (idx.len(), 3, s, s), &dev())?)
}

/// Softmax probabilities `(C, S, S)` of every scene of `set` (evaluation mode), one `Vec` each.
pub fn probabilities(model: &Segmenter, set: &DomainSet) -> Result<Vec<Vec<f32>>> {
    let all: Vec<usize> = (0..set.len()).collect();
    let mut out = Vec::with_capacity(set.len());
    for chunk in all.chunks(50) {
        let p = candle_nn::ops::softmax(&model.logits(&images_tensor(set, chunk)?, false)?, 1)?;
        let flat = p.flatten_all()?.to_vec1::<f32>()?;
        let per = flat.len() / chunk.len();
        out.extend(flat.chunks(per).map(|c| c.to_vec()));
    }
    Ok(out)
}

/// Target-validation evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub miou: f64,
    pub iou: Vec<Option<f64>>,
    pub pixel_accuracy: f64,
}

pub fn evaluate(model: &Segmenter, set: &DomainSet) -> Result<Evaluation> {
    let mut cm = ConfusionMatrix::new(NUM_CLASSES);
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(50) {
        let pred = model
            .logits(&images_tensor(set, chunk)?, false)?
            .argmax(1)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let mut labels = Vec::with_capacity(pred.len());
        for &i in chunk {
            labels.extend_from_slice(set.label(i));
        }
        cm.add(&pred, &labels, IGNORE)?;
    }
    let k = NUM_CLASSES;
    let correct: u64 = (0..k).map(|c| cm.counts[c * k + c]).sum();
    let total: u64 = cm.counts.iter().sum();
    Ok(Evaluation {
        miou: cm.miou(0..k).unwrap_or(0.0),
        iou: cm.iou(),
        pixel_accuracy: correct as f64 / total.max(1) as f64,
    })
}

/// RIPU's negative learning: `−Σ 1[p < τ] log(1 − p + 1e-6) / Σ 1[p < τ]` over every class and
/// pixel of the target batch.
pub fn negative_learning(logits: &Tensor, threshold: f64) -> candle_core::Result<Tensor> {
    let p = candle_nn::ops::softmax(logits, 1)?;
    let mask = p.lt(threshold)?.to_dtype(DType::F32)?.detach();
    let n = mask.sum_all()?.to_scalar::<f32>()?;
    let term = (p.affine(-1.0, 1.0 + 1e-6)?.log()? * &mask)?.sum_all()?;
    term.affine(-1.0 / n.max(1.0) as f64, 0.0)
}

/// One adaptation batch: `batch` source scenes then `batch` target scenes, and their labels
/// (target labels are the acquired ones, [`IGNORE`] elsewhere).
pub struct AdaptBatch {
    images: Tensor,
    source_labels: Vec<u8>,
    target_labels: Vec<u8>,
    n_source: usize,
}

struct SourceModel<'a> {
    model: &'a Segmenter,
}

impl TrainModel for SourceModel<'_> {
    type Batch = AdaptBatch;
    fn loss(&self, b: &AdaptBatch) -> candle_core::Result<Tensor> {
        let logits = self.model.logits(&b.images, true)?;
        pixel_cross_entropy(&logits, &b.source_labels, IGNORE)
    }
}

struct TargetModel<'a> {
    model: &'a Segmenter,
    freeze_bn: bool,
    neg_weight: f64,
    neg_threshold: f64,
}

impl TrainModel for TargetModel<'_> {
    type Batch = AdaptBatch;
    fn loss(&self, b: &AdaptBatch) -> candle_core::Result<Tensor> {
        // Frozen BatchNorm statistics while adapting (RIPU's FREEZE_BN), unless switched off.
        let logits = self.model.logits(&b.images, !self.freeze_bn)?;
        let n = b.n_source;
        let total = logits.dim(0)?;
        let src = logits.narrow(0, 0, n)?;
        let tgt = logits.narrow(0, n, total - n)?;
        let mut loss = (pixel_cross_entropy(&src, &b.source_labels, IGNORE)?
            + pixel_cross_entropy(&tgt, &b.target_labels, IGNORE)?)?;
        if self.neg_weight > 0.0 {
            loss = (loss + (negative_learning(&tgt, self.neg_threshold)? * self.neg_weight)?)?;
        }
        Ok(loss)
    }
}

/// Result of one round (or of the source model, round 0).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    pub run: String,
    pub acquire: String,
    pub entities: String,
    pub seed: u64,
    pub round: usize,
    /// Clicks per image the run is budgeted for (RA with a ratio: the regions it spends).
    pub budget_clicks: usize,
    /// Mean clicks actually spent per target image so far.
    pub clicks_per_image: f64,
    /// Share of target training pixels that carry an acquired label.
    pub labelled_share: f64,
    /// Share of the acquired labels that are wrong (superpixel boundaries crossing objects).
    pub label_noise: f64,
    pub eval: Evaluation,
    /// Source model only: mIoU on held-out *source* scenes.
    #[serde(default)]
    pub source_domain_miou: Option<f64>,
    pub steps: usize,
    pub final_loss: f32,
    pub acquire_seconds: f64,
    pub train_seconds: f64,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

fn save_varmap(map: &VarMap, path: &Path) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp.safetensors");
    let tmp = PathBuf::from(tmp);
    map.save(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Binary annotation state: per image, `n` label bytes, `n` blocked bytes, the superpixel
/// count (u32 LE), one clicked byte per superpixel, the click count (u32 LE).
pub fn encode_labels(states: &[ImageLabels]) -> Vec<u8> {
    let mut out = vec![];
    out.extend((states.len() as u32).to_le_bytes());
    for s in states {
        out.extend((s.labels.len() as u32).to_le_bytes());
        out.extend(&s.labels);
        out.extend(s.blocked.iter().map(|&b| b as u8));
        out.extend((s.clicked.len() as u32).to_le_bytes());
        out.extend(s.clicked.iter().map(|&b| b as u8));
        out.extend((s.clicks as u32).to_le_bytes());
    }
    out
}

pub fn decode_labels(bytes: &[u8]) -> Result<Vec<ImageLabels>> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = bytes
            .get(pos..pos + n)
            .context("annotation file is truncated")?;
        pos += n;
        Ok(s)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = u32_at(take(4)?);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let n = u32_at(take(4)?);
        let labels = take(n)?.to_vec();
        let blocked = take(n)?.iter().map(|&b| b != 0).collect();
        let ns = u32_at(take(4)?);
        let clicked = take(ns)?.iter().map(|&b| b != 0).collect();
        let clicks = u32_at(take(4)?);
        out.push(ImageLabels {
            labels,
            blocked,
            clicked,
            clicks,
        });
    }
    if pos != bytes.len() {
        bail!("annotation file has {} trailing bytes", bytes.len() - pos);
    }
    Ok(out)
}

/// Train (or load) the source model of `cfg.seed`; returns its path and its evaluation.
pub fn source_model(
    cfg: &AdaptConfig,
    root: &Path,
    data: &AdaptData,
) -> Result<(PathBuf, RoundResult)> {
    let dir = root.join(format!("source-s{}", cfg.seed));
    let path = dir.join("model.safetensors");
    let json = dir.join("model.json");
    if path.is_file() && json.is_file() {
        let mut r: RoundResult = serde_json::from_slice(&std::fs::read(&json)?)
            .with_context(|| format!("reading {}", json.display()))?;
        if r.source_domain_miou.is_none() {
            // Written before the field existed: evaluate once and record it.
            let m = load_segmenter(cfg, &path)?;
            r.source_domain_miou = Some(evaluate(&m, &data.source_val)?.miou);
            write_atomic(&json, &serde_json::to_vec_pretty(&r)?)?;
        }
        return Ok((path, r));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (model, mut map) = trainable_segmenter(cfg, None)?;
    let s = cfg.domain.size;
    let batches = ShuffledBatches::new(data.source.len(), 2 * cfg.batch, cfg.seed)?;
    let next = |step: usize| -> Result<AdaptBatch> {
        let idx: Vec<usize> = batches.indices(step).iter().map(|&i| i as usize).collect();
        let mut labels = Vec::with_capacity(idx.len() * s * s);
        for &i in &idx {
            labels.extend_from_slice(data.source.label(i));
        }
        Ok(AdaptBatch {
            images: images_tensor(&data.source, &idx)?,
            source_labels: labels,
            target_labels: vec![],
            n_source: idx.len(),
        })
    };
    let tcfg = TrainConfig {
        steps: cfg.source_steps,
        lr: cfg.source_lr,
        weight_decay: cfg.weight_decay,
        schedule: LrSchedule::WarmupCosine {
            warmup: (cfg.source_steps / 10).clamp(1, 100),
            min_frac: 0.05,
        },
        seed: cfg.seed,
        checkpoint: Some(dir.join("partial.safetensors")),
        checkpoint_every: cfg.checkpoint_every,
        resume: true,
        progress: cfg.progress,
        model: serde_json::json!({"stage": "source", "config": cfg}),
    };
    eprintln!(
        "source model s{}: {} source scenes, {} steps",
        cfg.seed,
        data.source.len(),
        cfg.source_steps
    );
    let t0 = Instant::now();
    let report = train::train(&SourceModel { model: &model }, &mut map, next, &tcfg)?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let eval = evaluate(&model, &data.val)?;
    let source_domain_miou = evaluate(&model, &data.source_val)?.miou;
    let result = RoundResult {
        run: format!("source-only-s{}", cfg.seed),
        acquire: Acquire::SourceOnly.name().into(),
        entities: "-".into(),
        seed: cfg.seed,
        round: 0,
        budget_clicks: 0,
        clicks_per_image: 0.0,
        labelled_share: 0.0,
        label_noise: 0.0,
        eval,
        source_domain_miou: Some(source_domain_miou),
        steps: cfg.source_steps,
        final_loss: tail_mean(&report.losses),
        acquire_seconds: 0.0,
        train_seconds,
    };
    save_varmap(&map, &path)?;
    write_atomic(&json, &serde_json::to_vec_pretty(&result)?)?;
    let _ = std::fs::remove_file(dir.join("partial.safetensors"));
    let _ = std::fs::remove_file(dir.join("partial.state.json"));
    eprintln!(
        "source model s{}: target mIoU {:.1}, source mIoU {:.1} ({:.0} s)",
        cfg.seed,
        100.0 * result.eval.miou,
        100.0 * source_domain_miou,
        train_seconds
    );
    Ok((path, result))
}

fn tail_mean(v: &[f32]) -> f32 {
    let n = v.len().clamp(1, 20);
    v.iter().rev().take(20).sum::<f32>() / n as f32
}

/// One round of acquisition over every target training scene; returns what was picked.
pub fn acquire_all(
    cfg: &AdaptConfig,
    data: &AdaptData,
    probs: &[Vec<f32>],
    states: &mut [ImageLabels],
    round: usize,
) -> Vec<Picked> {
    let s = cfg.domain.size;
    let clicks = cfg.round_clicks(round, s * s);
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (round as u64 + 1),
    );
    (0..data.target.len())
        .map(|i| {
            let view = ImageView {
                height: s,
                width: s,
                probs: &probs[i],
                classes: NUM_CLASSES,
                superpixels: &data.superpixels[i].0,
                n_superpixels: data.superpixels[i].1,
                entities: &data.entities[i].0,
                n_entities: data.entities[i].1,
                truth: data.target.label(i),
            };
            acquire_round(
                cfg.acquire,
                &view,
                &mut states[i],
                RoundBudget { clicks },
                &cfg.esa,
                &cfg.ripu,
                &mut rng,
            )
        })
        .collect()
}

/// Labelled share, label noise and mean clicks of the annotation state.
pub fn annotation_summary(states: &[ImageLabels], target: &DomainSet) -> (f64, f64, f64) {
    let (mut lab, mut wrong, mut clicks) = (0usize, 0usize, 0usize);
    for (i, s) in states.iter().enumerate() {
        let (l, w) = s.noise(target.label(i));
        lab += l;
        wrong += w;
        clicks += s.clicks;
    }
    let pixels = target.labels.len().max(1);
    (
        lab as f64 / pixels as f64,
        wrong as f64 / lab.max(1) as f64,
        clicks as f64 / states.len().max(1) as f64,
    )
}

/// Run (or resume) one adaptation run; returns the source result and every round's result.
pub fn run(cfg: &AdaptConfig, root: &Path, photos: &DomainPhotos) -> Result<Vec<RoundResult>> {
    cfg.check()?;
    let data = AdaptData::generate(cfg, photos);
    let (source_path, source_result) = source_model(cfg, root, &data)?;
    let mut results = vec![source_result];
    if cfg.acquire == Acquire::SourceOnly {
        return Ok(results);
    }
    let name = cfg.run_name();
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let s = cfg.domain.size;
    let mut prev_model = source_path;
    let mut states: Vec<ImageLabels> = (0..data.target.len())
        .map(|i| ImageLabels::new(s * s, data.superpixels[i].1))
        .collect();
    for round in 0..cfg.rounds {
        let stem = format!("round{}", round + 1);
        let model_path = dir.join(format!("{stem}.safetensors"));
        let json = dir.join(format!("{stem}.json"));
        let labels_path = dir.join(format!("{stem}.labels.bin"));
        if model_path.is_file() && json.is_file() && labels_path.is_file() {
            states = decode_labels(&std::fs::read(&labels_path)?)
                .with_context(|| format!("reading {}", labels_path.display()))?;
            results.push(
                serde_json::from_slice(&std::fs::read(&json)?)
                    .with_context(|| format!("reading {}", json.display()))?,
            );
            prev_model = model_path;
            continue;
        }
        let (model, mut map) = trainable_segmenter(cfg, Some(&prev_model))?;
        let t0 = Instant::now();
        if labels_path.is_file() {
            states = decode_labels(&std::fs::read(&labels_path)?)
                .with_context(|| format!("reading {}", labels_path.display()))?;
            if states.len() != data.target.len() {
                bail!(
                    "{} holds {} images, the run has {}",
                    labels_path.display(),
                    states.len(),
                    data.target.len()
                );
            }
        } else {
            let probs = probabilities(&model, &data.target)?;
            acquire_all(cfg, &data, &probs, &mut states, round);
            write_atomic(&labels_path, &encode_labels(&states))?;
        }
        let acquire_seconds = t0.elapsed().as_secs_f64();
        let (labelled_share, label_noise, clicks_per_image) =
            annotation_summary(&states, &data.target);
        let last = round + 1 == cfg.rounds;
        let steps = cfg.round_steps + if last { cfg.final_steps } else { 0 };
        let round_seed = cfg.seed ^ ((round as u64 + 1) * 0x2545_f491_4f6c_dd1d);
        let src_batches = ShuffledBatches::new(data.source.len(), cfg.batch, round_seed)?;
        let tgt_batches = ShuffledBatches::new(data.target.len(), cfg.batch, round_seed ^ 1)?;
        let st = &states;
        let d = &data;
        let next = |step: usize| -> Result<AdaptBatch> {
            let si: Vec<usize> = src_batches
                .indices(step)
                .iter()
                .map(|&i| i as usize)
                .collect();
            let ti: Vec<usize> = tgt_batches
                .indices(step)
                .iter()
                .map(|&i| i as usize)
                .collect();
            let mut source_labels = Vec::with_capacity(si.len() * s * s);
            for &i in &si {
                source_labels.extend_from_slice(d.source.label(i));
            }
            let mut target_labels = Vec::with_capacity(ti.len() * s * s);
            for &i in &ti {
                target_labels.extend_from_slice(&st[i].labels);
            }
            let images = Tensor::cat(
                &[
                    images_tensor(&d.source, &si)?,
                    images_tensor(&d.target, &ti)?,
                ],
                0,
            )?;
            Ok(AdaptBatch {
                images,
                source_labels,
                target_labels,
                n_source: si.len(),
            })
        };
        let tcfg = TrainConfig {
            steps,
            lr: cfg.adapt_lr,
            weight_decay: cfg.weight_decay,
            // Constant rate through the rounds, cosine decay over the last (ours).
            schedule: if last {
                LrSchedule::WarmupCosine {
                    warmup: 1,
                    min_frac: 0.05,
                }
            } else {
                LrSchedule::Constant
            },
            seed: cfg.seed,
            checkpoint: Some(dir.join(format!("{stem}.partial.safetensors"))),
            checkpoint_every: cfg.checkpoint_every,
            resume: true,
            progress: cfg.progress,
            model: serde_json::json!({"stage": stem, "config": cfg}),
        };
        eprintln!(
            "{name} round {}/{}: {:.2} clicks/image, {:.1} % of target pixels labelled ({:.1} % wrong); {} steps",
            round + 1,
            cfg.rounds,
            clicks_per_image,
            100.0 * labelled_share,
            100.0 * label_noise,
            steps
        );
        let t1 = Instant::now();
        let report = train::train(
            &TargetModel {
                model: &model,
                freeze_bn: cfg.freeze_bn,
                neg_weight: cfg.neg_weight,
                neg_threshold: cfg.neg_threshold,
            },
            &mut map,
            next,
            &tcfg,
        )?;
        let train_seconds = t1.elapsed().as_secs_f64();
        let eval = evaluate(&model, &data.val)?;
        let result = RoundResult {
            run: name.clone(),
            acquire: cfg.acquire.name().into(),
            entities: if cfg.acquire == Acquire::Esa {
                format!("{:?}", cfg.entities).to_lowercase()
            } else {
                "-".into()
            },
            seed: cfg.seed,
            round: round + 1,
            budget_clicks: match (cfg.acquire, cfg.ra_ratio) {
                (Acquire::RipuRa, Some(_)) => {
                    (0..cfg.rounds).map(|r| cfg.round_clicks(r, s * s)).sum()
                }
                (Acquire::Full, _) => 0,
                _ => cfg.clicks,
            },
            clicks_per_image,
            labelled_share,
            label_noise,
            eval,
            source_domain_miou: None,
            steps,
            final_loss: tail_mean(&report.losses),
            acquire_seconds,
            train_seconds,
        };
        save_varmap(&map, &model_path)?;
        write_atomic(&json, &serde_json::to_vec_pretty(&result)?)?;
        let _ = std::fs::remove_file(dir.join(format!("{stem}.partial.safetensors")));
        let _ = std::fs::remove_file(dir.join(format!("{stem}.partial.state.json")));
        eprintln!(
            "{name} round {}: target mIoU {:.1} ({:.0} s train, {:.1} s acquisition)",
            round + 1,
            100.0 * result.eval.miou,
            train_seconds,
            acquire_seconds
        );
        results.push(result);
        prev_model = model_path;
    }
    Ok(results)
}

/// Load a finished model for inference.
pub fn load_segmenter(cfg: &AdaptConfig, path: &Path) -> Result<Segmenter> {
    let map = candle_core::safetensors::load(path, &dev())
        .with_context(|| format!("reading model {}", path.display()))?;
    let vb = VarBuilder::from_tensors(map, DType::F32, &dev());
    Segmenter::new(cfg, vb).with_context(|| format!("model in {}", path.display()))
}

/// Arg-max of a `(C, N)` probability vector (used by the preview).
pub fn predicted(probs: &[f32]) -> Vec<u8> {
    crate::acquisition::argmax(probs, NUM_CLASSES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_state_round_trips_and_rejects_truncation() {
        let mut a = ImageLabels::new(6, 3);
        a.labels[2] = 4;
        a.blocked[5] = true;
        a.clicked[1] = true;
        a.clicks = 7;
        let b = ImageLabels::new(4, 0);
        let bytes = encode_labels(&[a.clone(), b.clone()]);
        assert_eq!(decode_labels(&bytes).unwrap(), vec![a, b]);
        assert!(decode_labels(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn budget_is_split_evenly_over_rounds() {
        let cfg = AdaptConfig {
            clicks: 42,
            ..Default::default()
        };
        let per: Vec<usize> = (0..5).map(|r| cfg.round_clicks(r, 4096)).collect();
        assert_eq!(per, vec![9, 9, 8, 8, 8]);
        let ra = AdaptConfig {
            acquire: Acquire::RipuRa,
            ra_ratio: Some(0.022),
            ..Default::default()
        };
        assert_eq!(ra.round_clicks(0, 4096), 3);
        assert_eq!(ra.run_name(), "ripu-ra-r0.022-s0");
        assert_eq!(cfg.run_name(), "esa-c42-s0");
    }

    #[test]
    fn negative_learning_matches_hand_value() -> candle_core::Result<()> {
        // One pixel, logits giving p = (0.9, 0.07, 0.03) roughly: only p < 0.05 counts.
        let p = [0.9f32, 0.07, 0.03];
        let logits: Vec<f32> = p.iter().map(|v| v.ln()).collect();
        let t = Tensor::from_vec(logits, (1, 3, 1, 1), &Device::Cpu)?;
        let got = negative_learning(&t, 0.05)?.to_scalar::<f32>()?;
        let want = -(1.0f32 - 0.03 + 1e-6).ln();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        Ok(())
    }
}
