//! The KMM experiment on synthetic data: shared stages (data, tokenizer, frozen evaluator,
//! left/right classifier, contrastive text encoder), then one generator per variant and seed,
//! evaluated on the full and directional ("D") test splits. Every stage checkpoints to the
//! output directory and is skipped (or resumed) when its checkpoint is there.

use crate::data::{build_dataset, DataConfig, Dataset, Primitive, Sequence, Side};
use crate::generator::{Backbone, DecodeOptions, GeneratorConfig, Item, MaskedGenerator, Masking};
use crate::keyframe::{keyframe_order, KeyframeConfig};
use crate::metrics;
use crate::text::{
    batch_tensor, info_nce, resample, ContrastivePair, FrozenTextEncoder, MotionEncoder, Vocab,
};
use crate::tokenizer::{
    train_tokenizer, MotionTokenizer, TokenizerConfig, TokenizerTraining, DOWN,
};
use crate::train::{train_loop, TrainConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Sizes and budgets of the experiment (what the results page states).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ExperimentConfig {
    pub data_seed: u64,
    pub n_train: usize,
    pub n_test: usize,
    pub tokenizer_steps: usize,
    /// Peak learning rate of the tokenizer (ours; MoMask uses 2e-4 over far more steps).
    pub tokenizer_lr: f64,
    pub evaluator_steps: usize,
    pub classifier_steps: usize,
    pub align_steps: usize,
    pub generator_steps: usize,
    pub batch: usize,
    pub embed_dim: usize,
    /// Frames every evaluator/classifier window is resampled to.
    pub window: usize,
    pub d_model: usize,
    pub layers: usize,
    pub keyframe: KeyframeConfig,
    pub decode: DecodeOptions,
    /// InfoNCE temperature (ours).
    pub tau: f64,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            data_seed: 0,
            n_train: 300,
            n_test: 48,
            tokenizer_steps: 600,
            tokenizer_lr: 1e-3,
            evaluator_steps: 600,
            classifier_steps: 200,
            align_steps: 500,
            generator_steps: 600,
            batch: 32,
            embed_dim: 32,
            window: 64,
            d_model: 64,
            layers: 4,
            keyframe: KeyframeConfig::default(),
            decode: DecodeOptions::default(),
            tau: 0.1,
        }
    }
}

/// The four generators compared.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Variant {
    /// Bidirectional Mamba, random masking, frozen text encoder.
    Random,
    /// Bidirectional Mamba, key-frame masking, frozen text encoder.
    Keyframe,
    /// Bidirectional Mamba, key-frame masking, contrastively aligned text encoder (KMM).
    KeyframeAlign,
    /// Transformer of the same width and depth, key-frame masking, aligned text encoder.
    Transformer,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Random,
        Variant::Keyframe,
        Variant::KeyframeAlign,
        Variant::Transformer,
    ];
    pub fn key(self) -> &'static str {
        match self {
            Variant::Random => "random",
            Variant::Keyframe => "keyframe",
            Variant::KeyframeAlign => "keyframe_align",
            Variant::Transformer => "transformer",
        }
    }
    fn backbone(self) -> Backbone {
        if self == Variant::Transformer {
            Backbone::Transformer
        } else {
            Backbone::Mamba
        }
    }
    fn masking(self) -> Masking {
        if self == Variant::Random {
            Masking::Random
        } else {
            Masking::Keyframe
        }
    }
    fn aligned(self) -> bool {
        matches!(self, Variant::KeyframeAlign | Variant::Transformer)
    }
}

/// Everything the generators share, trained once.
pub struct Prepared {
    pub cfg: ExperimentConfig,
    pub ds: Dataset,
    pub tok: MotionTokenizer,
    pub vocab: Vocab,
    pub evaluator: ContrastivePair,
    pub lr_classifier: MotionEncoder,
    pub align: ContrastivePair,
    pub frozen_text: FrozenTextEncoder,
    /// Tokens of every sequence: train, test, test_d.
    pub tokens: [Vec<Vec<u32>>; 3],
    _varmaps: Vec<VarMap>,
}

pub(crate) fn frames(seq: &Sequence) -> Vec<Vec<f32>> {
    seq.features.iter().map(|f| f.to_vec()).collect()
}

/// Normalised, resampled window of frames `[start, end)`.
pub(crate) fn window_of(
    tok: &MotionTokenizer,
    fr: &[Vec<f32>],
    start: usize,
    end: usize,
    len: usize,
) -> Result<Vec<Vec<f32>>> {
    let w = resample(&fr[start..end], len);
    let t = batch_tensor(&[w], &Device::Cpu)?;
    Ok(tok.normalize(&t)?.squeeze(0)?.to_vec2::<f32>()?)
}

struct SegRow {
    window: Vec<Vec<f32>>,
    text: String,
    primitive: Primitive,
}

fn segment_rows(tok: &MotionTokenizer, seqs: &[Sequence], len: usize) -> Result<Vec<SegRow>> {
    let mut out = Vec::new();
    for s in seqs {
        let fr = frames(s);
        for g in &s.segments {
            out.push(SegRow {
                window: window_of(tok, &fr, g.start, g.end, len)?,
                text: g.text.clone(),
                primitive: g.primitive,
            });
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn train_contrastive(
    pair: &ContrastivePair,
    varmap: &VarMap,
    rows: &[(Vec<Vec<f32>>, Vec<u32>)],
    steps: usize,
    batch: usize,
    tau: f64,
    seed: u64,
    ckpt: &Path,
    label: &str,
) -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(seed);
    let tc = TrainConfig {
        steps,
        lr: 1e-3,
        warmup: 50,
        weight_decay: 1e-4,
        checkpoint_every: 300,
    };
    train_loop(varmap, &tc, Some(ckpt), label, |_| {
        let pick: Vec<usize> = (0..batch).map(|_| rng.gen_range(0..rows.len())).collect();
        let w: Vec<Vec<Vec<f32>>> = pick.iter().map(|&i| rows[i].0.clone()).collect();
        let ids: Vec<Vec<u32>> = pick.iter().map(|&i| rows[i].1.clone()).collect();
        let m = pair.motion.forward(&batch_tensor(&w, &dev)?)?;
        let t = pair.text.forward(&ids, &dev)?;
        info_nce(&m, &t, tau)
    })?;
    Ok(())
}

impl Prepared {
    /// Builds (or loads) the shared stages under `out/prepare`.
    pub fn prepare(out: &Path, cfg: ExperimentConfig) -> Result<Self> {
        Self::prepare_with_tokenizer(
            out,
            cfg,
            TokenizerConfig::for_dim(crate::skeleton::FEATURE_DIM),
        )
    }

    /// [`Self::prepare`] with a given tokenizer configuration (InfiniMotion uses residual
    /// quantiser layers; KMM the default single layer).
    pub fn prepare_with_tokenizer(
        out: &Path,
        cfg: ExperimentConfig,
        tok_cfg: TokenizerConfig,
    ) -> Result<Self> {
        let dev = Device::Cpu;
        let dir = out.join("prepare");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg_path = dir.join("config.json");
        if cfg_path.is_file() {
            let old: ExperimentConfig = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)?;
            if serde_json::to_string(&old)? != serde_json::to_string(&cfg)? {
                bail!(
                    "{} was prepared with another configuration; use a fresh --out",
                    out.display()
                );
            }
        } else {
            std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;
        }
        let ds = build_dataset(
            cfg.data_seed,
            cfg.n_train,
            cfg.n_test,
            &DataConfig::default(),
        );
        let train_frames: Vec<Vec<Vec<f32>>> = ds.train.iter().map(frames).collect();

        // tokenizer
        let tok_cfg_path = dir.join("tokenizer_config.json");
        let tok_cfg_json = serde_json::to_string_pretty(&tok_cfg)?;
        if tok_cfg_path.is_file() {
            if std::fs::read_to_string(&tok_cfg_path)? != tok_cfg_json {
                bail!(
                    "{} holds a tokenizer of another configuration; use a fresh --out",
                    out.display()
                );
            }
        } else {
            std::fs::write(&tok_cfg_path, &tok_cfg_json)?;
        }
        let tok_vm = VarMap::new();
        let tok = MotionTokenizer::new(tok_cfg, &tok_vm, &dev)?;
        let mut rng = StdRng::seed_from_u64(cfg.data_seed + 11);
        let budget = TokenizerTraining {
            steps: cfg.tokenizer_steps,
            batch: cfg.batch,
            window: 64,
            lr: cfg.tokenizer_lr,
            warmup: 50,
        };
        train_tokenizer(
            &tok,
            &tok_vm,
            &train_frames,
            &budget,
            Some(&dir.join("tokenizer.safetensors")),
            &mut rng,
            |_, _| Ok(()),
        )?;

        let vocab = Vocab::default();
        // frozen evaluator (its own seed and data order)
        let rows = segment_rows(&tok, &ds.train, cfg.window)?;
        let pairs: Vec<(Vec<Vec<f32>>, Vec<u32>)> = rows
            .iter()
            .map(|r| (r.window.clone(), vocab.ids(&r.text)))
            .collect();
        let ev_vm = VarMap::new();
        let evaluator = ContrastivePair::new(
            vocab.len(),
            crate::skeleton::FEATURE_DIM,
            cfg.embed_dim,
            VarBuilder::from_varmap(&ev_vm, DType::F32, &dev).pp("evaluator"),
        )?;
        train_contrastive(
            &evaluator,
            &ev_vm,
            &pairs,
            cfg.evaluator_steps,
            64,
            cfg.tau,
            1001,
            &dir.join("evaluator.safetensors"),
            "evaluator",
        )?;

        // left/right classifier on directional training segments
        let drows = segment_rows(&tok, &ds.train_d, cfg.window)?;
        let lr_vm = VarMap::new();
        let lr_classifier = MotionEncoder::new(
            crate::skeleton::FEATURE_DIM,
            32,
            2,
            false,
            VarBuilder::from_varmap(&lr_vm, DType::F32, &dev).pp("lr"),
        )?;
        let mut rng = StdRng::seed_from_u64(2002);
        let tc = TrainConfig {
            steps: cfg.classifier_steps,
            lr: 1e-3,
            warmup: 20,
            weight_decay: 1e-4,
            checkpoint_every: 200,
        };
        train_loop(
            &lr_vm,
            &tc,
            Some(&dir.join("lr_classifier.safetensors")),
            "left/right",
            |_| {
                let pick: Vec<usize> = (0..64).map(|_| rng.gen_range(0..drows.len())).collect();
                let w: Vec<Vec<Vec<f32>>> = pick.iter().map(|&i| drows[i].window.clone()).collect();
                let y: Vec<u32> = pick
                    .iter()
                    .map(|&i| (drows[i].primitive.side() == Some(Side::Right)) as u32)
                    .collect();
                let logits = lr_classifier.forward(&batch_tensor(&w, &dev)?)?;
                Ok(candle_nn::loss::cross_entropy(
                    &logits,
                    &Tensor::new(y.as_slice(), &dev)?,
                )?)
            },
        )?;

        // tokens of every split
        let enc = |seqs: &[Sequence]| -> Result<Vec<Vec<u32>>> {
            seqs.iter()
                .map(|s| Ok(tok.encode(&frames(s))?.into_iter().map(|c| c[0]).collect()))
                .collect()
        };
        let tokens = [enc(&ds.train)?, enc(&ds.test)?, enc(&ds.test_d)?];

        // KMM's contrastive text encoder: aligned with the motion *tokens* the generator emits
        // (their code vectors, resampled to a fixed length); separate from the evaluator
        let al_vm = VarMap::new();
        let align = ContrastivePair::new(
            vocab.len(),
            tok.cfg.code_dim,
            cfg.embed_dim,
            VarBuilder::from_varmap(&al_vm, DType::F32, &dev).pp("align"),
        )?;
        let mut al_rows = Vec::new();
        for (s, tk) in ds.train.iter().zip(&tokens[0]) {
            for g in &s.segments {
                let codes: Vec<Vec<u32>> = tk[g.start / DOWN..g.end / DOWN]
                    .iter()
                    .map(|&c| vec![c])
                    .collect();
                let vecs = tok.code_vectors(&codes)?;
                al_rows.push((resample(&vecs, 16), vocab.ids(&g.text)));
            }
        }
        train_contrastive(
            &align,
            &al_vm,
            &al_rows,
            cfg.align_steps,
            64,
            cfg.tau,
            3003,
            &dir.join("align.safetensors"),
            "alignment",
        )?;

        Ok(Self {
            cfg,
            ds,
            tok,
            vocab,
            evaluator,
            lr_classifier,
            align,
            frozen_text: FrozenTextEncoder::new(cfg.embed_dim, 4004),
            tokens,
            _varmaps: vec![tok_vm, ev_vm, lr_vm, al_vm],
        })
    }

    /// The generator's text vector for `text` under a variant.
    pub fn text_vector(&self, text: &str, aligned: bool) -> Result<Vec<f32>> {
        if aligned {
            let t = self
                .align
                .text
                .forward(&[self.vocab.ids(text)], &Device::Cpu)?;
            Ok(t.squeeze(0)?.to_vec1::<f32>()?)
        } else {
            Ok(self.frozen_text.encode(text))
        }
    }

    fn generator_config(&self, v: Variant) -> GeneratorConfig {
        let mut g =
            GeneratorConfig::new(v.backbone(), self.tok.cfg.codebook_size, self.cfg.embed_dim);
        g.d_model = self.cfg.d_model;
        g.layers = self.cfg.layers;
        g
    }

    fn training_items(&self, v: Variant) -> Result<Vec<Item>> {
        let mut cache: HashMap<String, Vec<f32>> = HashMap::new();
        let mut items = Vec::new();
        for (s, tk) in self.ds.train.iter().zip(&self.tokens[0]) {
            for (k, g) in s.segments.iter().enumerate() {
                let target = tk[g.start / DOWN..g.end / DOWN].to_vec();
                let ctx = if k == 0 {
                    vec![]
                } else {
                    tk[..g.start / DOWN].to_vec()
                };
                if !cache.contains_key(&g.text) {
                    cache.insert(g.text.clone(), self.text_vector(&g.text, v.aligned())?);
                }
                let codes: Vec<Vec<u32>> = target.iter().map(|&c| vec![c]).collect();
                let order = keyframe_order(&self.tok.code_vectors(&codes)?, &self.cfg.keyframe);
                items.push(Item {
                    ctx,
                    target,
                    text: cache[&g.text].clone(),
                    keyframe_order: order,
                });
            }
        }
        Ok(items)
    }

    /// Trains (or loads) the generator of a variant and seed under `out/runs/<variant>-s<seed>`.
    pub fn generator(
        &self,
        out: &Path,
        v: Variant,
        seed: u64,
    ) -> Result<(MaskedGenerator, VarMap)> {
        let dev = Device::Cpu;
        let dir = run_dir(out, v, seed);
        std::fs::create_dir_all(&dir)?;
        let vm = VarMap::new();
        // candle's CPU device cannot be seeded, so the initial weights are not reproducible;
        // the seed fixes data order, masking and sampling
        let gen = MaskedGenerator::new(
            self.generator_config(v),
            VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("gen"),
        )?;
        let items = self.training_items(v)?;
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7919) + 1);
        let tc = TrainConfig {
            steps: self.cfg.generator_steps,
            lr: 2e-3,
            warmup: 100,
            weight_decay: 1e-5,
            checkpoint_every: 250,
        };
        train_loop(
            &vm,
            &tc,
            Some(&dir.join("generator.safetensors")),
            &format!("{}-s{seed}", v.key()),
            |_| {
                let batch: Vec<Item> = (0..self.cfg.batch)
                    .map(|_| items[rng.gen_range(0..items.len())].clone())
                    .collect();
                gen.loss(&batch, v.masking(), &mut rng, &dev)
            },
        )?;
        Ok((gen, vm))
    }

    /// Generates every sequence of a plan segment by segment; returns the frames per sequence.
    pub fn generate_sequences(
        &self,
        gen: &MaskedGenerator,
        plans: &[Vec<(String, usize)>],
        aligned: bool,
        rng: &mut StdRng,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let dev = Device::Cpu;
        let max_k = plans.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut toks: Vec<Vec<u32>> = vec![Vec::new(); plans.len()];
        for k in 0..max_k {
            let idx: Vec<usize> = (0..plans.len()).filter(|&i| plans[i].len() > k).collect();
            let items: Vec<Item> = idx
                .iter()
                .map(|&i| {
                    let (text, n_tok) = &plans[i][k];
                    Ok(Item {
                        ctx: toks[i].clone(),
                        target: vec![0; *n_tok],
                        text: self.text_vector(text, aligned)?,
                        keyframe_order: vec![],
                    })
                })
                .collect::<Result<_>>()?;
            let out = gen.generate(&items, &self.cfg.decode, rng, &dev)?;
            for (&i, o) in idx.iter().zip(out) {
                toks[i].extend(o);
            }
        }
        toks.iter()
            .map(|t| {
                let codes: Vec<Vec<u32>> = t.iter().map(|&c| vec![c]).collect();
                self.tok.decode(&codes)
            })
            .collect()
    }

    /// Evaluator embeddings of windows.
    pub(crate) fn embed_motion(&self, windows: &[Vec<Vec<f32>>]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        for chunk in windows.chunks(128) {
            let e = self
                .evaluator
                .motion
                .forward(&batch_tensor(chunk, &Device::Cpu)?)?;
            out.extend(e.to_vec2::<f32>()?);
        }
        Ok(out)
    }
    pub(crate) fn embed_text(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.vocab.ids(t)).collect();
        Ok(self
            .evaluator
            .text
            .forward(&ids, &Device::Cpu)?
            .to_vec2::<f32>()?)
    }
    fn lr_predict(&self, windows: &[Vec<Vec<f32>>]) -> Result<Vec<Side>> {
        let mut out = Vec::new();
        for chunk in windows.chunks(128) {
            let l = self
                .lr_classifier
                .forward(&batch_tensor(chunk, &Device::Cpu)?)?
                .argmax(1)?
                .to_vec1::<u32>()?;
            out.extend(
                l.into_iter()
                    .map(|c| if c == 1 { Side::Right } else { Side::Left }),
            );
        }
        Ok(out)
    }

    /// Metrics of motions (`frames` per test sequence, aligned with `seqs`' segments).
    pub fn score(
        &self,
        seqs: &[Sequence],
        generated: &[Vec<Vec<f32>>],
        seed: u64,
    ) -> Result<SplitMetrics> {
        let mut gen_w = Vec::new();
        let mut texts = Vec::new();
        let mut sides = Vec::new();
        for (s, fr) in seqs.iter().zip(generated) {
            if fr.len() < s.features.len() {
                bail!(
                    "generated {} frames for a {}-frame sequence",
                    fr.len(),
                    s.features.len()
                );
            }
            for g in &s.segments {
                gen_w.push(window_of(&self.tok, fr, g.start, g.end, self.cfg.window)?);
                texts.push(g.text.clone());
                sides.push(g.primitive.side());
            }
        }
        let real: Vec<Vec<Vec<f32>>> = segment_rows(&self.tok, seqs, self.cfg.window)?
            .into_iter()
            .map(|r| r.window)
            .collect();
        let real_e = self.embed_motion(&real)?;
        let gen_e = self.embed_motion(&gen_w)?;
        let text_e = self.embed_text(&texts)?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let rp = metrics::r_precision(&gen_e, &text_e, 32, &mut rng);
        let pred = self.lr_predict(&gen_w)?;
        let (mut right, mut total) = (0, 0);
        for (p, s) in pred.iter().zip(&sides) {
            if let Some(s) = s {
                total += 1;
                right += (p == s) as usize;
            }
        }
        Ok(SplitMetrics {
            fid: metrics::fid(&real_e, &gen_e),
            rprec: rp,
            mmdist: metrics::mm_dist(&gen_e, &text_e),
            diversity: metrics::diversity(&gen_e, 300, &mut rng),
            lr_acc: if total > 0 {
                right as f64 / total as f64
            } else {
                f64::NAN
            },
            n_segments: gen_w.len(),
        })
    }

    /// Test plans: the ground-truth texts and token lengths of a split.
    pub fn plans(seqs: &[Sequence]) -> Vec<Vec<(String, usize)>> {
        seqs.iter()
            .map(|s| {
                s.segments
                    .iter()
                    .map(|g| (g.text.clone(), (g.end - g.start) / DOWN))
                    .collect()
            })
            .collect()
    }
}

pub fn run_dir(out: &Path, v: Variant, seed: u64) -> PathBuf {
    out.join("runs").join(format!("{}-s{seed}", v.key()))
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SplitMetrics {
    pub fid: f64,
    pub rprec: [f64; 3],
    pub mmdist: f64,
    pub diversity: f64,
    pub lr_acc: f64,
    pub n_segments: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunMetrics {
    pub variant: String,
    pub seed: u64,
    pub full: SplitMetrics,
    pub d: SplitMetrics,
    pub backbone_params: usize,
    pub backbone_flops_per_sequence: usize,
    pub total_params: usize,
}

/// Trains (if needed) and evaluates one generator; writes `metrics.json` in its run folder.
pub fn run_variant(prep: &Prepared, out: &Path, v: Variant, seed: u64) -> Result<RunMetrics> {
    let (gen, vm) = prep.generator(out, v, seed)?;
    let mut rng = StdRng::seed_from_u64(seed + 99);
    let full_gen =
        prep.generate_sequences(&gen, &Prepared::plans(&prep.ds.test), v.aligned(), &mut rng)?;
    let d_gen = prep.generate_sequences(
        &gen,
        &Prepared::plans(&prep.ds.test_d),
        v.aligned(),
        &mut rng,
    )?;
    let m = RunMetrics {
        variant: v.key().into(),
        seed,
        full: prep.score(&prep.ds.test, &full_gen, seed)?,
        d: prep.score(&prep.ds.test_d, &d_gen, seed)?,
        backbone_params: gen.backbone_params(),
        backbone_flops_per_sequence: gen.backbone_flops(),
        total_params: vm.all_vars().iter().map(|v| v.elem_count()).sum(),
    };
    std::fs::write(
        run_dir(out, v, seed).join("metrics.json"),
        serde_json::to_string_pretty(&m)?,
    )?;
    Ok(m)
}

/// Reference rows: real test motion scored against itself (FID 0 by construction), and the
/// tokenizer's reconstructions of it.
pub fn reference_metrics(
    prep: &Prepared,
) -> Result<(SplitMetrics, SplitMetrics, SplitMetrics, SplitMetrics)> {
    let real = |seqs: &[Sequence]| -> Vec<Vec<Vec<f32>>> { seqs.iter().map(frames).collect() };
    let recon = |seqs: &[Sequence]| -> Result<Vec<Vec<Vec<f32>>>> {
        seqs.iter()
            .map(|s| prep.tok.reconstruct(&frames(s)))
            .collect()
    };
    Ok((
        prep.score(&prep.ds.test, &real(&prep.ds.test), 0)?,
        prep.score(&prep.ds.test_d, &real(&prep.ds.test_d), 0)?,
        prep.score(&prep.ds.test, &recon(&prep.ds.test)?, 0)?,
        prep.score(&prep.ds.test_d, &recon(&prep.ds.test_d)?, 0)?,
    ))
}
