//! Class-incremental training: the base task, the incremental tasks of a protocol for each
//! method, the per-task evaluation and the on-disk layout that makes a run resumable.
//!
//! Layout under the runs folder:
//! - `base/<cit|softmax>-s<seed>/stage.safetensors` (+ `.state.json`, `stage.json`): the base
//!   task, shared by every method and protocol with that head (all protocols start from the same
//!   10 classes);
//! - `oracle-s<seed>/stage.*`: joint training on all classes;
//! - `<protocol>/<method>-s<seed>/task<t>.*` for `t ≥ 1`.
//!
//! A stage's `.safetensors` holds the whole model (`enc.*` encoder, `head.*` head) and is written
//! only after its task finished; a task in progress checkpoints to `partial.safetensors` and is
//! resumed from there. A stage's `.json` holds its evaluation and timings.

use crate::cit_head::{CitHead, CitHeadConfig, CitOutput};
use crate::encoder::{Encoder, EncoderConfig};
use crate::losses::{cit_distillation, cit_supervised, softmax_kd, LossConfig};
use crate::protocol::{task_labels, Protocol};
use crate::scenes::{self, Photos, SceneConfig, SceneSet, IGNORE, NUM_CLASSES};
use crate::softmax_head::{self, SoftmaxHead};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use frugal_nn::data::ShuffledBatches;
use frugal_nn::init::SeededVarMap;
use frugal_nn::segmentation::{mean_iou, upsample_bilinear, ConfusionMatrix};
use frugal_nn::train::{self, LrSchedule, TrainConfig, TrainModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The runs compared on the results page.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Method {
    /// Joint training on all classes at once (upper bound).
    Oracle,
    /// CIT head, encoder and head trained on each task, no distillation.
    Finetune,
    /// CIT head, encoder frozen after the base task, no distillation.
    Frozen,
    /// CIT head, frozen encoder, every old class distilled from the previous task's model.
    Iterative,
    /// Softmax per-pixel head, frozen encoder, plain KD from the previous task's model.
    SoftmaxKd,
    /// CIT: frozen encoder, every old class distilled from the frozen head of the task that
    /// learned it (accumulative).
    Cit,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Oracle,
        Method::Finetune,
        Method::Frozen,
        Method::Iterative,
        Method::SoftmaxKd,
        Method::Cit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Oracle => "oracle",
            Method::Finetune => "finetune",
            Method::Frozen => "frozen",
            Method::Iterative => "iterative",
            Method::SoftmaxKd => "softmax_kd",
            Method::Cit => "cit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    fn softmax(self) -> bool {
        self == Method::SoftmaxKd
    }

    fn trains_encoder(self) -> bool {
        matches!(self, Method::Oracle | Method::Finetune)
    }
}

/// Everything a run depends on. Sizes and step counts are ours, the budget of the results page
/// (the paper trains DeepLabV3 on ADE20K for 40k iterations per task); the loss weights are the
/// code's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub protocol: Protocol,
    pub method: Method,
    pub seed: u64,
    /// Seeds of the training and test scenes (fixed across runs: the run seed varies the model).
    pub train_data_seed: u64,
    pub test_data_seed: u64,
    pub train_scenes: usize,
    pub test_scenes: usize,
    pub scene: SceneConfig,
    pub encoder: EncoderConfig,
    pub head: CitHeadConfig,
    pub loss: LossConfig,
    pub batch: usize,
    pub base_steps: usize,
    pub inc_steps: usize,
    pub oracle_steps: usize,
    pub base_lr: f64,
    pub inc_lr: f64,
    pub weight_decay: f64,
    /// A scene joins a task's training pool when it has at least this many pixels of the task's
    /// classes (ours; the code keeps every image with a label of the task).
    pub min_pixels: usize,
    /// Checkpoint a task in progress every this many steps.
    pub checkpoint_every: usize,
    #[serde(skip)]
    pub progress: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol {
                base: 10,
                increment: 1,
                total: NUM_CLASSES,
            },
            method: Method::Cit,
            seed: 0,
            train_data_seed: 0,
            test_data_seed: 1,
            train_scenes: 1600,
            test_scenes: 300,
            scene: SceneConfig::default(),
            encoder: EncoderConfig::default(),
            head: CitHeadConfig::default(),
            loss: LossConfig::default(),
            batch: 16,
            base_steps: 300,
            inc_steps: 50,
            oracle_steps: 400,
            base_lr: 2e-3,
            inc_lr: 5e-4,
            weight_decay: 0.01,
            min_pixels: 16,
            checkpoint_every: 100,
            progress: true,
        }
    }
}

/// Evaluation and cost of one stage (base task, incremental task or oracle).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageResult {
    pub method: String,
    pub protocol: String,
    pub seed: u64,
    pub task: usize,
    pub classes_seen: usize,
    /// IoU of every seen class on the test scenes (null: class neither labelled nor predicted).
    pub iou: Vec<Option<f64>>,
    pub miou_base: Option<f64>,
    pub miou_new: Option<f64>,
    pub miou_all: Option<f64>,
    pub steps: usize,
    pub pool: usize,
    pub final_loss: f32,
    pub train_seconds: f64,
    /// Time to compute the teacher outputs of the task's training pool.
    pub teacher_seconds: f64,
    /// Frozen heads run as teachers in this task.
    pub teacher_heads: usize,
    /// Peak resident memory of the process so far (MiB).
    pub peak_rss_mib: f64,
}

/// The model of a stage, loaded for inference.
pub struct Stage {
    pub encoder: Encoder,
    pub head: Head,
}

/// Either head.
pub enum Head {
    Cit(CitHead),
    Softmax(SoftmaxHead),
}

impl Head {
    pub fn num_classes(&self) -> usize {
        match self {
            Head::Cit(h) => h.num_classes,
            Head::Softmax(h) => h.num_classes,
        }
    }

    /// Arg-max over the first `n` classes only (a diagnostic: how the old classes fare when the
    /// new classes cannot take their pixels).
    pub fn predict_among(&self, feats: &Tensor, size: usize, n: usize) -> Result<Vec<u32>> {
        Ok(match self {
            Head::Cit(h) => h.forward(feats)?.narrow(0, n)?.predict(size)?,
            Head::Softmax(h) => softmax_head::predict(&h.forward(feats)?.narrow(1, 0, n)?, size)?,
        })
    }

    /// Arg-max prediction of every pixel of `(B, C, h, w)` features at `size × size`.
    pub fn predict(&self, feats: &Tensor, size: usize) -> Result<Vec<u32>> {
        Ok(match self {
            Head::Cit(h) => h.forward(feats)?.predict(size)?,
            Head::Softmax(h) => softmax_head::predict(&h.forward(feats)?, size)?,
        })
    }
}

fn dev() -> Device {
    Device::Cpu
}

fn build_head(
    cfg: &RunConfig,
    softmax: bool,
    classes: usize,
    vb: VarBuilder,
) -> candle_core::Result<Head> {
    let c = cfg.encoder.out_channels();
    Ok(if softmax {
        Head::Softmax(SoftmaxHead::new(cfg.head.dim, c, classes, vb)?)
    } else {
        Head::Cit(CitHead::new(&cfg.head, c, classes, vb)?)
    })
}

/// Load a stage checkpoint for inference.
pub fn load_stage(cfg: &RunConfig, path: &Path, softmax: bool, classes: usize) -> Result<Stage> {
    let map = candle_core::safetensors::load(path, &dev())
        .with_context(|| format!("reading stage checkpoint {}", path.display()))?;
    let vb = VarBuilder::from_tensors(map, DType::F32, &dev());
    Ok(Stage {
        encoder: Encoder::new(&cfg.encoder, vb.pp("enc"))
            .with_context(|| format!("encoder in {}", path.display()))?,
        head: build_head(cfg, softmax, classes, vb.pp("head"))
            .with_context(|| format!("head with {classes} classes in {}", path.display()))?,
    })
}

/// Set every variable of `vm` from `prev` (same names). A variable whose first axis is longer
/// than in `prev` (the query table, the classifier rows) keeps its fresh rows beyond the old
/// ones: the table grows, old rows copied.
pub fn grow_from(vm: &VarMap, prev: &HashMap<String, Tensor>) -> Result<()> {
    let data = vm.data().lock().expect("var map poisoned");
    for (name, var) in data.iter() {
        let old = prev
            .get(name)
            .with_context(|| format!("previous stage has no variable {name}"))?;
        let new = var.as_tensor();
        if old.dims() == new.dims() {
            var.set(old)?;
        } else if old.rank() == new.rank()
            && old.dims()[1..] == new.dims()[1..]
            && old.dim(0)? < new.dim(0)?
        {
            let n_old = old.dim(0)?;
            let fresh = new.narrow(0, n_old, new.dim(0)? - n_old)?;
            var.set(&Tensor::cat(&[old, &fresh], 0)?)?;
        } else {
            anyhow::bail!(
                "variable {name}: previous shape {:?} cannot grow into {:?}",
                old.dims(),
                new.dims()
            );
        }
    }
    Ok(())
}

fn save_model(path: &Path, parts: &[&HashMap<String, Tensor>]) -> Result<()> {
    let mut all = HashMap::new();
    for p in parts {
        for (k, v) in p.iter() {
            all.insert(k.clone(), v.copy()?);
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    candle_core::safetensors::save(&all, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn varmap_tensors(vm: &VarMap) -> HashMap<String, Tensor> {
    vm.data()
        .lock()
        .expect("var map poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Peak resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The data of a run: scenes and, once the encoder is frozen, their features.
pub struct Data {
    pub train: SceneSet,
    pub test: SceneSet,
}

impl Data {
    pub fn generate(cfg: &RunConfig, photos: &Photos) -> Self {
        Self {
            train: scenes::generate(photos, &cfg.scene, cfg.train_data_seed, cfg.train_scenes),
            test: scenes::generate(photos, &cfg.scene, cfg.test_data_seed, cfg.test_scenes),
        }
    }
}

fn images_tensor(set: &SceneSet, idx: &[usize]) -> Result<Tensor> {
    let s = set.size;
    let mut v = Vec::with_capacity(idx.len() * 3 * s * s);
    for &i in idx {
        v.extend_from_slice(set.image(i));
    }
    Ok(Tensor::from_vec(v, (idx.len(), 3, s, s), &dev())?)
}

/// Encoder features (evaluation mode) of the scenes `idx`, in chunks.
fn features(enc: &Encoder, set: &SceneSet, idx: &[usize]) -> Result<Tensor> {
    let mut parts = vec![];
    for chunk in idx.chunks(64) {
        parts.push(enc.forward_t(&images_tensor(set, chunk)?, false)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// mIoU of the base, new and all seen classes.
type Mious = [Option<f64>; 3];

/// Evaluate a model on the test scenes over the classes `0..seen`, with `base` base classes.
fn evaluate(
    enc: &Encoder,
    head: &Head,
    test: &SceneSet,
    seen: usize,
    base: usize,
) -> Result<(Vec<Option<f64>>, Mious)> {
    let s = test.size;
    let mut cm = ConfusionMatrix::new(seen);
    let all: Vec<usize> = (0..test.len()).collect();
    for chunk in all.chunks(64) {
        let f = enc.forward_t(&images_tensor(test, chunk)?, false)?;
        let pred = head.predict(&f, s)?;
        let mut labels = Vec::with_capacity(chunk.len() * s * s);
        for &i in chunk {
            labels.extend(task_labels(test.label(i), &(0..seen)));
        }
        cm.add(&pred, &labels, IGNORE)?;
    }
    let iou = cm.iou();
    let m = [
        mean_iou(&iou, 0..base.min(seen)),
        mean_iou(&iou, base.min(seen)..seen),
        mean_iou(&iou, 0..seen),
    ];
    Ok((iou, m))
}

/// Teacher targets of one task's training pool.
enum Teacher {
    None,
    /// Old-class mask logits `(N, P, h, w)` and class logits `(N, P, 2)`.
    Cit {
        masks: Tensor,
        classes: Tensor,
    },
    /// Old-class logits `(N, P, h, w)` of the previous softmax head.
    Softmax(Tensor),
}

/// A training batch.
pub struct Batch {
    input: Tensor,
    labels: Vec<u8>,
    teacher: Option<(Tensor, Option<Tensor>)>,
}

/// The loss of one stage.
struct StageModel<'a> {
    encoder: Option<&'a Encoder>,
    head: &'a Head,
    old: usize,
    size: usize,
    loss: &'a LossConfig,
}

impl TrainModel for StageModel<'_> {
    type Batch = Batch;

    fn loss(&self, b: &Batch) -> candle_core::Result<Tensor> {
        let feats = match self.encoder {
            Some(e) => e.forward_t(&b.input, true)?,
            None => b.input.clone(),
        };
        let s = self.size;
        match self.head {
            Head::Cit(h) => {
                let out = h.forward(&feats)?;
                let up = upsample_bilinear(&out.masks, s, s)?;
                let sup = cit_supervised(&up, &out.classes, &b.labels, self.old, self.loss)?;
                match &b.teacher {
                    Some((tm, Some(tc))) => {
                        let d = cit_distillation(&up, &out.classes, tm, tc, &b.labels, self.loss)?;
                        sup.total + d
                    }
                    _ => Ok(sup.total),
                }
            }
            Head::Softmax(h) => {
                let up = upsample_bilinear(&h.forward(&feats)?, s, s)?;
                let t = match &b.teacher {
                    Some((tl, None)) => Some(upsample_bilinear(tl, s, s)?),
                    _ => None,
                };
                softmax_kd(&up, t.as_ref(), &b.labels, self.loss)
            }
        }
    }
}

/// One stage to train.
struct StageSpec<'a> {
    dir: &'a Path,
    stem: String,
    classes: Range<usize>,
    steps: usize,
    lr: f64,
    /// Train the encoder (batch statistics) or run it frozen on cached features.
    train_encoder: bool,
    softmax: bool,
    /// Previous stage's tensors (None: fresh model).
    prev: Option<HashMap<String, Tensor>>,
    task: usize,
    label: String,
    /// Which teachers distil the old classes.
    distill: Distill,
}

/// The distillation of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Distill {
    None,
    /// The previous stage's CIT head for every old class.
    Previous,
    /// The frozen head of the task that learned each old class.
    Accumulative,
    /// The previous stage's softmax head.
    PreviousSoftmax,
}

/// Frozen-encoder features of the training and test scenes, computed once per process.
struct FeatureCache {
    train: Tensor,
}

struct Runner<'a> {
    cfg: &'a RunConfig,
    data: &'a Data,
    root: PathBuf,
    cache: Option<FeatureCache>,
}

fn stage_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.safetensors"))
}

fn split_prefix(map: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    map.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Runner<'_> {
    fn base_dir(&self, softmax: bool) -> PathBuf {
        self.root.join("base").join(format!(
            "{}-s{}",
            if softmax { "softmax" } else { "cit" },
            self.cfg.seed
        ))
    }

    fn run_dir(&self) -> PathBuf {
        self.root.join(self.cfg.protocol.name()).join(format!(
            "{}-s{}",
            self.cfg.method.name(),
            self.cfg.seed
        ))
    }

    /// Train (or resume, or skip when finished) one stage; returns its result.
    fn stage(&mut self, spec: StageSpec) -> Result<StageResult> {
        let cfg = self.cfg;
        let path = stage_path(spec.dir, &spec.stem);
        let json = spec.dir.join(format!("{}.json", spec.stem));
        if path.is_file() && json.is_file() {
            return serde_json::from_slice(&std::fs::read(&json)?)
                .with_context(|| format!("reading {}", json.display()));
        }
        std::fs::create_dir_all(spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let k = spec.classes.end;
        let old = spec.classes.start;
        let task_seed = cfg.seed ^ (spec.task as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        // Live head (grown from the previous stage) and encoder.
        let head_vm = SeededVarMap::new(task_seed);
        let head = build_head(
            cfg,
            spec.softmax,
            k,
            head_vm.var_builder(DType::F32, &dev()).pp("head"),
        )?;
        let enc_vm = SeededVarMap::new(cfg.seed);
        let (encoder, trainable_enc) = if spec.train_encoder {
            let e = Encoder::new(
                &cfg.encoder,
                enc_vm.var_builder(DType::F32, &dev()).pp("enc"),
            )?;
            (e, true)
        } else {
            let prev = spec
                .prev
                .as_ref()
                .context("a frozen encoder needs a previous stage")?;
            let vb = VarBuilder::from_tensors(split_prefix(prev, "enc."), DType::F32, &dev());
            (Encoder::new(&cfg.encoder, vb.pp("enc"))?, false)
        };
        if let Some(prev) = &spec.prev {
            grow_from(head_vm.varmap(), &split_prefix(prev, "head."))?;
            if trainable_enc {
                grow_from(enc_vm.varmap(), &split_prefix(prev, "enc."))?;
            }
        }
        // Training pool and its teacher targets.
        let pool = self
            .data
            .train
            .containing(spec.classes.clone(), cfg.min_pixels);
        if pool.len() < cfg.batch {
            anyhow::bail!(
                "task {} ({:?}) has {} training scenes, fewer than the batch {}",
                spec.task,
                spec.classes,
                pool.len(),
                cfg.batch
            );
        }
        if !trainable_enc && self.cache.is_none() {
            let all: Vec<usize> = (0..self.data.train.len()).collect();
            self.cache = Some(FeatureCache {
                train: features(&encoder, &self.data.train, &all)?,
            });
        }
        let t0 = Instant::now();
        let (teacher, teacher_heads) = self.teacher(&spec, &pool)?;
        let teacher_seconds = t0.elapsed().as_secs_f64();
        let pool_t = Tensor::from_vec(
            pool.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            pool.len(),
            &dev(),
        )?;
        let batches = ShuffledBatches::new(pool.len(), cfg.batch, task_seed)?;
        let data = self.data;
        let cache = self.cache.as_ref().map(|c| c.train.clone());
        let size = cfg.scene.size;
        let classes = spec.classes.clone();
        let next = |step: usize| -> Result<Batch> {
            let local = batches.indices(step);
            let local_t = Tensor::from_vec(local.clone(), local.len(), &dev())?;
            let global: Vec<usize> = local.iter().map(|&j| pool[j as usize]).collect();
            let input = match &cache {
                Some(f) if !trainable_enc => {
                    f.index_select(&pool_t.index_select(&local_t, 0)?, 0)?
                }
                _ => images_tensor(&data.train, &global)?,
            };
            let mut labels = Vec::with_capacity(global.len() * size * size);
            for &g in &global {
                labels.extend(task_labels(data.train.label(g), &classes));
            }
            let teacher = match &teacher {
                Teacher::None => None,
                Teacher::Cit { masks, classes } => Some((
                    masks.index_select(&local_t, 0)?,
                    Some(classes.index_select(&local_t, 0)?),
                )),
                Teacher::Softmax(l) => Some((l.index_select(&local_t, 0)?, None)),
            };
            Ok(Batch {
                input,
                labels,
                teacher,
            })
        };
        let mut trainable = VarMap::new();
        {
            let mut d = trainable.data().lock().expect("var map poisoned");
            for (n, v) in head_vm.varmap().data().lock().expect("poisoned").iter() {
                d.insert(n.clone(), v.clone());
            }
            if trainable_enc {
                for (n, v) in enc_vm.varmap().data().lock().expect("poisoned").iter() {
                    d.insert(n.clone(), v.clone());
                }
            }
        }
        let model = StageModel {
            encoder: trainable_enc.then_some(&encoder),
            head: &head,
            old,
            size,
            loss: &cfg.loss,
        };
        let tcfg = TrainConfig {
            steps: spec.steps,
            lr: spec.lr,
            weight_decay: cfg.weight_decay,
            schedule: LrSchedule::WarmupCosine {
                warmup: (spec.steps / 10).clamp(1, 100),
                min_frac: 0.0,
            },
            seed: cfg.seed,
            checkpoint: Some(spec.dir.join(format!("{}.partial.safetensors", spec.stem))),
            checkpoint_every: cfg.checkpoint_every,
            resume: true,
            progress: cfg.progress,
            model: serde_json::json!({"stage": spec.label, "config": cfg}),
        };
        eprintln!(
            "{}: classes {}..{}, {} training scenes, {} steps",
            spec.label,
            spec.classes.start,
            spec.classes.end,
            pool.len(),
            spec.steps
        );
        let t1 = Instant::now();
        let report = train::train(&model, &mut trainable, next, &tcfg)?;
        let train_seconds = t1.elapsed().as_secs_f64();
        let enc_tensors = if trainable_enc {
            varmap_tensors(enc_vm.varmap())
        } else {
            split_prefix(spec.prev.as_ref().expect("checked above"), "enc.")
        };
        let (iou, m) = evaluate(&encoder, &head, &self.data.test, k, cfg.protocol.base)?;
        let result = StageResult {
            method: cfg.method.name().into(),
            protocol: cfg.protocol.name(),
            seed: cfg.seed,
            task: spec.task,
            classes_seen: k,
            iou,
            miou_base: m[0],
            miou_new: m[1],
            miou_all: m[2],
            steps: spec.steps,
            pool: pool.len(),
            final_loss: report.losses.iter().rev().take(20).sum::<f32>()
                / report.losses.len().clamp(1, 20) as f32,
            train_seconds,
            teacher_seconds,
            teacher_heads,
            peak_rss_mib: peak_rss_mib(),
        };
        save_model(&path, &[&enc_tensors, &varmap_tensors(head_vm.varmap())])?;
        write_json(&json, &result)?;
        let _ = std::fs::remove_file(spec.dir.join(format!("{}.partial.safetensors", spec.stem)));
        let _ = std::fs::remove_file(spec.dir.join(format!("{}.partial.state.json", spec.stem)));
        eprintln!(
            "{}: mIoU base {} new {} all {} ({:.0} s train, {:.1} s teachers)",
            spec.label,
            pct(result.miou_base),
            pct(result.miou_new),
            pct(result.miou_all),
            train_seconds,
            teacher_seconds
        );
        Ok(result)
    }
}

impl Runner<'_> {
    /// Teacher targets of the pool (and the number of frozen heads run), timed by the caller.
    fn teacher(&self, spec: &StageSpec, pool: &[usize]) -> Result<(Teacher, usize)> {
        let cache = match (&self.cache, spec.distill) {
            (_, Distill::None) => return Ok((Teacher::None, 0)),
            (Some(c), _) => c,
            (None, _) => anyhow::bail!("distillation needs the frozen encoder's features"),
        };
        let feats = pool_features(cache, pool)?;
        let (cfg, c_in, old) = (
            self.cfg,
            self.cfg.encoder.out_channels(),
            spec.classes.start,
        );
        let prev = || {
            VarBuilder::from_tensors(
                spec.prev
                    .clone()
                    .expect("an incremental stage has a previous stage"),
                DType::F32,
                &dev(),
            )
        };
        Ok(match spec.distill {
            Distill::None => (Teacher::None, 0),
            Distill::Previous => {
                let h = CitHead::new(&cfg.head, c_in, old, prev().pp("head"))?;
                let o = cit_outputs(&h, &feats)?;
                (
                    Teacher::Cit {
                        masks: o.masks,
                        classes: o.classes,
                    },
                    1,
                )
            }
            Distill::Accumulative => {
                let tasks = cfg.protocol.tasks();
                let (mut ms, mut cs) = (vec![], vec![]);
                for (j, range) in tasks.iter().enumerate().take(spec.task) {
                    let path = stage_file(cfg, &self.root, j);
                    let map = candle_core::safetensors::load(&path, &dev())
                        .with_context(|| format!("reading teacher {}", path.display()))?;
                    let vb = VarBuilder::from_tensors(map, DType::F32, &dev());
                    let h = CitHead::new(&cfg.head, c_in, range.end, vb.pp("head"))?;
                    let o = cit_outputs(&h, &feats)?.narrow(range.start, range.end)?;
                    ms.push(o.masks);
                    cs.push(o.classes);
                }
                (
                    Teacher::Cit {
                        masks: Tensor::cat(&ms, 1)?,
                        classes: Tensor::cat(&cs, 1)?,
                    },
                    spec.task,
                )
            }
            Distill::PreviousSoftmax => {
                let h = SoftmaxHead::new(cfg.head.dim, c_in, old, prev().pp("head"))?;
                let n = feats.dim(0)?;
                let mut parts = vec![];
                let mut s = 0;
                while s < n {
                    let len = 64.min(n - s);
                    parts.push(h.forward(&feats.narrow(0, s, len)?)?);
                    s += len;
                }
                (Teacher::Softmax(Tensor::cat(&parts, 0)?), 1)
            }
        })
    }
}

/// `Some(x)` as a percentage with one decimal, `-` for `None`.
pub fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}", 100.0 * x))
        .unwrap_or_else(|| "-".into())
}

/// Outputs of a frozen CIT head on cached features, in chunks.
fn cit_outputs(head: &CitHead, feats: &Tensor) -> Result<CitOutput> {
    let n = feats.dim(0)?;
    let (mut m, mut c) = (vec![], vec![]);
    let mut s = 0;
    while s < n {
        let len = 64.min(n - s);
        let o = head.forward(&feats.narrow(0, s, len)?)?;
        m.push(o.masks);
        c.push(o.classes);
        s += len;
    }
    Ok(CitOutput {
        masks: Tensor::cat(&m, 0)?,
        classes: Tensor::cat(&c, 0)?,
    })
}

fn pool_features(cache: &FeatureCache, pool: &[usize]) -> Result<Tensor> {
    let idx = Tensor::from_vec(
        pool.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        pool.len(),
        &dev(),
    )?;
    Ok(cache.train.index_select(&idx, 0)?)
}

/// Where a run's stages live.
pub fn stage_file(cfg: &RunConfig, root: &Path, task: usize) -> PathBuf {
    if cfg.method == Method::Oracle {
        return root
            .join(format!("oracle-s{}", cfg.seed))
            .join("stage.safetensors");
    }
    if task == 0 {
        return root
            .join("base")
            .join(format!(
                "{}-s{}",
                if cfg.method.softmax() {
                    "softmax"
                } else {
                    "cit"
                },
                cfg.seed
            ))
            .join("stage.safetensors");
    }
    root.join(cfg.protocol.name())
        .join(format!("{}-s{}", cfg.method.name(), cfg.seed))
        .join(format!("task{task}.safetensors"))
}

/// Train (or resume) a whole run; returns the result of every stage, base first.
pub fn run(cfg: &RunConfig, root: &Path, photos: &Photos) -> Result<Vec<StageResult>> {
    let data = Data::generate(cfg, photos);
    let mut r = Runner {
        cfg,
        data: &data,
        root: root.to_path_buf(),
        cache: None,
    };
    if cfg.method == Method::Oracle {
        let dir = root.join(format!("oracle-s{}", cfg.seed));
        let res = r.stage(StageSpec {
            dir: &dir,
            stem: "stage".into(),
            classes: 0..cfg.protocol.total,
            steps: cfg.oracle_steps,
            lr: cfg.base_lr,
            train_encoder: true,
            softmax: false,
            prev: None,
            task: 0,
            label: format!("oracle s{}", cfg.seed),
            distill: Distill::None,
        })?;
        return Ok(vec![res]);
    }
    let softmax = cfg.method.softmax();
    let tasks = cfg.protocol.tasks();
    let base_dir = r.base_dir(softmax);
    let mut results = vec![r.stage(StageSpec {
        dir: &base_dir,
        stem: "stage".into(),
        classes: tasks[0].clone(),
        steps: cfg.base_steps,
        lr: cfg.base_lr,
        train_encoder: true,
        softmax,
        prev: None,
        task: 0,
        label: format!(
            "base {} s{}",
            if softmax { "softmax" } else { "cit" },
            cfg.seed
        ),
        distill: Distill::None,
    })?];
    let run_dir = r.run_dir();
    for (t, classes) in tasks.iter().enumerate().skip(1) {
        let prev_path = stage_file(cfg, root, t - 1);
        let prev = candle_core::safetensors::load(&prev_path, &dev())
            .with_context(|| format!("reading {}", prev_path.display()))?;
        let res = r.stage(StageSpec {
            dir: &run_dir,
            stem: format!("task{t}"),
            classes: classes.clone(),
            steps: cfg.inc_steps,
            lr: cfg.inc_lr,
            train_encoder: cfg.method.trains_encoder(),
            softmax,
            prev: Some(prev),
            task: t,
            label: format!(
                "{} {} s{} task {t}/{}",
                cfg.protocol.name(),
                cfg.method.name(),
                cfg.seed,
                tasks.len() - 1
            ),
            distill: match cfg.method {
                Method::Iterative => Distill::Previous,
                Method::Cit => Distill::Accumulative,
                Method::SoftmaxKd => Distill::PreviousSoftmax,
                _ => Distill::None,
            },
        })?;
        results.push(res);
    }
    Ok(results)
}
