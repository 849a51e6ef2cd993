//! The InfiniMotion experiment on synthetic data: a residual tokenizer and residual
//! transformer, the memory model and its baselines trained on 2–4-segment chunks, then every
//! model generates the same long instruction scripts (by default 24 segments, 6× the 4-segment
//! training horizon) and is scored per segment, per position group and at the boundaries. Also
//! the streaming long run. See docs/methods/infinimotion.md; the results page states the sizes.

use crate::bvh_stream::{BvhStreamWriter, PoseIntegrator};
use crate::data::{synthesize, DataConfig, Primitive};
use crate::experiment::{frames, window_of, ExperimentConfig, Prepared, Variant};
use crate::generator::{Item, MaskedGenerator};
use crate::infinimotion::{MemoryConfig, MemoryKind, MemoryModel, SegmentItem};
use crate::long_metrics::{blend_boundaries, boundary_transitions, slope, TransitionConfig};
use crate::metrics;
use crate::residual::{ResidualConfig, ResidualItem, ResidualTransformer};
use crate::tokenizer::{TokenizerConfig, DOWN};
use crate::train::{train_loop, TrainConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Sizes and budgets of the long-motion experiment.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct LongConfig {
    /// Shared stages (data, evaluator, aligned text encoder) and KMM's generator sizes.
    pub base: ExperimentConfig,
    /// Quantiser layers of the tokenizer, base included (ours: 3; MoMask's released models 6).
    pub vq_layers: usize,
    pub d_model: usize,
    /// Transformer layers of the memory / no-memory segment models.
    pub layers: usize,
    pub mem_slots: usize,
    pub bptt_segments: usize,
    pub memory_steps: usize,
    pub residual_steps: usize,
    /// Chunks per training step.
    pub batch: usize,
    pub lr: f64,
    /// Long test scripts and their length in segments.
    pub eval_scripts: usize,
    pub eval_segments: usize,
    /// Segments per position group for per-horizon metrics (ours: one training horizon).
    pub horizon_segments: usize,
    /// Frames on each side of a boundary replaced by a linear blend for independent segments.
    pub blend_half: usize,
    pub transition: TransitionConfig,
    pub script_seed: u64,
}

impl Default for LongConfig {
    fn default() -> Self {
        let base = ExperimentConfig {
            layers: 2,
            ..Default::default()
        };
        Self {
            base,
            vq_layers: 3,
            d_model: 64,
            layers: 2,
            mem_slots: 4,
            bptt_segments: 4,
            memory_steps: 600,
            residual_steps: 400,
            batch: 16,
            lr: 2e-3,
            eval_scripts: 32,
            eval_segments: 24,
            horizon_segments: 4,
            blend_half: 5,
            transition: TransitionConfig::default(),
            script_seed: 77,
        }
    }
}

/// The compared generators.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum LongVariant {
    /// Memory slots updated by a bidirectional Mamba (InfiniMotion, our reconstruction).
    Memory,
    /// Memory slots updated by a transformer layer.
    TransformerMemory,
    /// Autoregressive on the previous segment's last tokens, no memory.
    NoMemory,
    /// Segments generated independently (the no-memory model without context), blended.
    Independent,
    /// KMM's generator (bidirectional Mamba, key-frame masking, aligned text), context only.
    Kmm,
}

impl LongVariant {
    pub const ALL: [LongVariant; 5] = [
        LongVariant::Memory,
        LongVariant::TransformerMemory,
        LongVariant::NoMemory,
        LongVariant::Independent,
        LongVariant::Kmm,
    ];
    pub fn key(self) -> &'static str {
        match self {
            LongVariant::Memory => "memory",
            LongVariant::TransformerMemory => "transformer_memory",
            LongVariant::NoMemory => "no_memory",
            LongVariant::Independent => "independent",
            LongVariant::Kmm => "kmm",
        }
    }
    fn memory_kind(self) -> Option<MemoryKind> {
        match self {
            LongVariant::Memory => Some(MemoryKind::Mamba),
            LongVariant::TransformerMemory => Some(MemoryKind::Transformer),
            LongVariant::NoMemory | LongVariant::Independent => Some(MemoryKind::None),
            LongVariant::Kmm => None,
        }
    }
}

/// Shared stages plus the residual transformer.
pub struct LongPrepared {
    pub cfg: LongConfig,
    pub prep: Prepared,
    pub residual: ResidualTransformer,
    text_cache: std::cell::RefCell<HashMap<String, Vec<f32>>>,
    _vm: VarMap,
}

fn check_config(out: &Path, cfg: &LongConfig) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let p = out.join("long_config.json");
    let now = serde_json::to_string_pretty(cfg)?;
    if p.is_file() {
        if std::fs::read_to_string(&p)? != now {
            bail!(
                "{} was prepared with another configuration; use a fresh --out",
                out.display()
            );
        }
    } else {
        std::fs::write(&p, now)?;
    }
    Ok(())
}

/// A token with every quantiser layer.
type Token = Vec<u32>;

impl LongPrepared {
    /// Builds (or loads) the shared stages and the residual transformer under `out`.
    pub fn prepare(out: &Path, cfg: LongConfig) -> Result<Self> {
        check_config(out, &cfg)?;
        let mut tok_cfg = TokenizerConfig::for_dim(crate::skeleton::FEATURE_DIM);
        tok_cfg.vq_layers = cfg.vq_layers;
        let prep = Prepared::prepare_with_tokenizer(out, cfg.base, tok_cfg)?;
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let mut rcfg = ResidualConfig::new(
            prep.tok.cfg.codebook_size,
            cfg.vq_layers,
            cfg.base.embed_dim,
        );
        rcfg.d_model = cfg.d_model;
        let residual = ResidualTransformer::new(
            rcfg,
            VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("residual"),
        )?;
        let lp = Self {
            cfg,
            prep,
            residual,
            text_cache: Default::default(),
            _vm: vm.clone(),
        };
        // residual items: every training segment with all layers and the previous tokens
        let mut items = Vec::new();
        for s in &lp.prep.ds.train {
            let codes = lp.prep.tok.encode(&frames(s))?;
            for g in &s.segments {
                let (a, b) = (g.start / DOWN, g.end / DOWN);
                items.push(ResidualItem {
                    ctx: codes[a.saturating_sub(rcfg.ctx_tokens)..a].to_vec(),
                    codes: codes[a..b].to_vec(),
                    text: lp.text(&g.text)?,
                });
            }
        }
        let mut rng = StdRng::seed_from_u64(5005);
        let tc = TrainConfig {
            steps: cfg.residual_steps,
            lr: cfg.lr,
            warmup: 50,
            weight_decay: 1e-5,
            checkpoint_every: 200,
        };
        let dir = out.join("residual");
        std::fs::create_dir_all(&dir)?;
        train_loop(
            &vm,
            &tc,
            Some(&dir.join("residual.safetensors")),
            "residual",
            |_| {
                let batch: Vec<ResidualItem> = (0..32)
                    .map(|_| items[rng.gen_range(0..items.len())].clone())
                    .collect();
                lp.residual.loss(&batch, &mut rng, &dev)
            },
        )?;
        Ok(lp)
    }

    /// The aligned (KMM) text vector of an instruction, cached.
    pub fn text(&self, t: &str) -> Result<Vec<f32>> {
        if let Some(v) = self.text_cache.borrow().get(t) {
            return Ok(v.clone());
        }
        let v = self.prep.text_vector(t, true)?;
        self.text_cache
            .borrow_mut()
            .insert(t.to_string(), v.clone());
        Ok(v)
    }

    fn memory_config(&self, kind: MemoryKind) -> MemoryConfig {
        let mut c = MemoryConfig::new(
            kind,
            self.prep.tok.cfg.codebook_size,
            self.cfg.base.embed_dim,
        );
        c.d_model = self.cfg.d_model;
        c.layers = self.cfg.layers;
        c.mem_slots = self.cfg.mem_slots;
        c.bptt_segments = self.cfg.bptt_segments;
        c
    }

    /// Trains (or loads) a memory / no-memory model under `out/runs/<key>-s<seed>`.
    pub fn memory_model(
        &self,
        out: &Path,
        v: LongVariant,
        seed: u64,
    ) -> Result<(MemoryModel, VarMap)> {
        let kind = v
            .memory_kind()
            .ok_or_else(|| anyhow::anyhow!("{} is not a memory model", v.key()))?;
        // independent segments use the no-memory model's weights
        let train_as = if v == LongVariant::Independent {
            LongVariant::NoMemory
        } else {
            v
        };
        let dev = Device::Cpu;
        let dir = long_run_dir(out, train_as, seed);
        std::fs::create_dir_all(&dir)?;
        let vm = VarMap::new();
        let model = MemoryModel::new(
            self.memory_config(kind),
            VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("mem"),
        )?;
        // one list of segment items per training sequence
        let mut seqs: Vec<Vec<SegmentItem>> = Vec::new();
        for (s, tk) in self.prep.ds.train.iter().zip(&self.prep.tokens[0]) {
            let mut items = Vec::new();
            for g in &s.segments {
                items.push(SegmentItem {
                    ctx: tk[..g.start / DOWN].to_vec(),
                    target: tk[g.start / DOWN..g.end / DOWN].to_vec(),
                    text: self.text(&g.text)?,
                });
            }
            seqs.push(items);
        }
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7919) + 3);
        let tc = TrainConfig {
            steps: self.cfg.memory_steps,
            lr: self.cfg.lr,
            warmup: 100,
            weight_decay: 1e-5,
            checkpoint_every: 200,
        };
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if longest < 2 {
            bail!("no training sequence has two segments");
        }
        let maxk = self.cfg.bptt_segments.clamp(2, longest);
        train_loop(
            &vm,
            &tc,
            Some(&dir.join("model.safetensors")),
            &format!("{}-s{seed}", train_as.key()),
            |_| {
                // a chunk length of 2..=4 segments, from the start of sequences that long
                let k = rng.gen_range(2..=maxk);
                let pool: Vec<&Vec<SegmentItem>> = seqs.iter().filter(|s| s.len() >= k).collect();
                let chunks: Vec<Vec<SegmentItem>> = (0..self.cfg.batch)
                    .map(|_| pool[rng.gen_range(0..pool.len())][..k].to_vec())
                    .collect();
                model.chunk_loss(&chunks, &mut rng, &dev)
            },
        )?;
        Ok((model, vm))
    }

    /// Fills in the residual layers of a batch of scripts' base tokens, segment by segment
    /// (each segment sees the previous segment's last tokens with all layers, unless
    /// `independent`).
    fn add_residual(
        &self,
        base: &[Vec<Vec<u32>>],
        scripts: &[Script],
        independent: bool,
    ) -> Result<Vec<Vec<Vec<Token>>>> {
        let dev = Device::Cpu;
        let c = self.residual.cfg.ctx_tokens;
        let n_seg = scripts[0].len();
        let mut out: Vec<Vec<Vec<Token>>> = vec![Vec::new(); scripts.len()];
        for k in 0..n_seg {
            let items: Vec<ResidualItem> = (0..scripts.len())
                .map(|i| {
                    let ctx: Vec<Token> = if k == 0 || independent {
                        vec![]
                    } else {
                        let prev: &Vec<Token> = &out[i][k - 1];
                        prev[prev.len().saturating_sub(c)..].to_vec()
                    };
                    Ok(ResidualItem {
                        ctx,
                        codes: base[i][k].iter().map(|&t| vec![t]).collect(),
                        text: self.text(&scripts[i][k].1)?,
                    })
                })
                .collect::<Result<_>>()?;
            for (i, seg) in self.residual.predict(&items, &dev)?.into_iter().enumerate() {
                out[i].push(seg);
            }
        }
        Ok(out)
    }

    /// Base tokens `[script][segment][pos]` of every script from one variant.
    fn generate_base(
        &self,
        out: &Path,
        v: LongVariant,
        seed: u64,
        scripts: &[Script],
        rng: &mut StdRng,
    ) -> Result<Vec<Vec<Vec<u32>>>> {
        let dev = Device::Cpu;
        let n_seg = scripts[0].len();
        let mut base: Vec<Vec<Vec<u32>>> = vec![Vec::new(); scripts.len()];
        let opts = self.cfg.base.decode;
        if v == LongVariant::Kmm {
            let (gen, _vm) = self.kmm_generator(out, seed)?;
            let mut toks: Vec<Vec<u32>> = vec![Vec::new(); scripts.len()];
            for k in 0..n_seg {
                let items: Vec<Item> = scripts
                    .iter()
                    .zip(&toks)
                    .map(|(s, t)| {
                        Ok(Item {
                            ctx: t[t.len().saturating_sub(gen.cfg.ctx_tokens)..].to_vec(),
                            target: vec![0; s[k].2 / DOWN],
                            text: self.text(&s[k].1)?,
                            keyframe_order: vec![],
                        })
                    })
                    .collect::<Result<_>>()?;
                for (i, o) in gen
                    .generate(&items, &opts, rng, &dev)?
                    .into_iter()
                    .enumerate()
                {
                    toks[i].extend_from_slice(&o);
                    base[i].push(o);
                }
            }
            return Ok(base);
        }
        let (model, _vm) = self.memory_model(out, v, seed)?;
        let mut state = model.init_state(scripts.len())?;
        for k in 0..n_seg {
            let texts: Vec<Vec<f32>> = scripts
                .iter()
                .map(|s| self.text(&s[k].1))
                .collect::<Result<_>>()?;
            let lens: Vec<usize> = scripts.iter().map(|s| s[k].2 / DOWN).collect();
            let use_ctx = v != LongVariant::Independent;
            let segs =
                model.generate_segment(&mut state, &texts, &lens, &opts, use_ctx, rng, &dev)?;
            for (i, o) in segs.into_iter().enumerate() {
                base[i].push(o);
            }
        }
        Ok(base)
    }

    fn kmm_generator(&self, out: &Path, seed: u64) -> Result<(MaskedGenerator, VarMap)> {
        self.prep.generator(out, Variant::KeyframeAlign, seed)
    }

    /// Frames of every script from one variant (independent segments decoded separately and
    /// blended at the boundaries).
    pub fn generate_scripts(
        &self,
        out: &Path,
        v: LongVariant,
        seed: u64,
        scripts: &[Script],
        rng: &mut StdRng,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let base = self.generate_base(out, v, seed, scripts, rng)?;
        let independent = v == LongVariant::Independent;
        let full = self.add_residual(&base, scripts, independent)?;
        full.iter()
            .zip(scripts)
            .map(|(segs, script)| {
                if independent {
                    let mut fr = Vec::new();
                    let mut bounds = Vec::new();
                    for seg in segs {
                        if !fr.is_empty() {
                            bounds.push(fr.len());
                        }
                        fr.extend(self.prep.tok.decode(seg)?);
                    }
                    blend_boundaries(&mut fr, &bounds, self.cfg.blend_half);
                    let _ = script;
                    Ok(fr)
                } else {
                    let all: Vec<Token> = segs.iter().flatten().cloned().collect();
                    self.prep.tok.decode(&all)
                }
            })
            .collect()
    }

    /// Scores generated (or real) scripts: per-segment FID and R-precision against the pooled
    /// real reference, per position group, and transitions at the boundaries.
    pub fn score(
        &self,
        scripts: &[Script],
        generated: &[Vec<Vec<f32>>],
        reference: &[Vec<f32>],
        seed: u64,
    ) -> Result<LongMetrics> {
        let w = self.cfg.base.window;
        let h = self.cfg.horizon_segments.max(1);
        let n_seg = scripts[0].len();
        let groups = n_seg.div_ceil(h);
        let mut windows = Vec::new();
        let mut texts = Vec::new();
        let mut group_of = Vec::new();
        let mut trans: Vec<Vec<(f64, f64)>> = vec![Vec::new(); groups];
        for (script, fr) in scripts.iter().zip(generated) {
            let mut start = 0;
            let mut bounds = Vec::new();
            for (k, (_, text, n)) in script.iter().enumerate() {
                if fr.len() < start + n {
                    bail!(
                        "generated {} frames, the script needs {}",
                        fr.len(),
                        start + n
                    );
                }
                windows.push(window_of(&self.prep.tok, fr, start, start + n, w)?);
                texts.push(text.clone());
                group_of.push(k / h);
                if k > 0 {
                    bounds.push(start);
                }
                start += n;
            }
            let t = boundary_transitions(fr, &bounds, &self.cfg.transition);
            for (bi, tr) in t.into_iter().enumerate() {
                trans[(bi + 1) / h].push(tr);
            }
        }
        let emb = self.prep.embed_motion(&windows)?;
        let temb = self.prep.embed_text(&texts)?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x10c);
        let mut fid_by = Vec::new();
        for g in 0..groups {
            let e: Vec<Vec<f32>> = emb
                .iter()
                .zip(&group_of)
                .filter(|(_, &gg)| gg == g)
                .map(|(e, _)| e.clone())
                .collect();
            fid_by.push(metrics::fid(reference, &e));
        }
        let mean = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| -> f64 {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().map(f).sum::<f64>() / v.len() as f64
            }
        };
        let all_t: Vec<(f64, f64)> = trans.iter().flatten().copied().collect();
        let centres: Vec<f64> = (0..groups)
            .map(|g| (g as f64 + 0.5) * h as f64 / self.cfg.bptt_segments as f64)
            .collect();
        Ok(LongMetrics {
            fid: metrics::fid(reference, &emb),
            rprec: metrics::r_precision(&emb, &temb, 32, &mut rng),
            fid_by_horizon: fid_by.clone(),
            horizon_centre_training_lengths: centres.clone(),
            jerk: mean(&all_t, |t| t.0),
            jerk_by_horizon: trans.iter().map(|t| mean(t, |x| x.0)).collect(),
            skate: mean(&all_t, |t| t.1),
            skate_by_horizon: trans.iter().map(|t| mean(t, |x| x.1)).collect(),
            drift_slope: slope(&centres, &fid_by),
            n_segments: emb.len(),
        })
    }

    /// Evaluator embeddings of the real reference pool (another draw of long scripts).
    pub fn reference_embeddings(&self) -> Result<Vec<Vec<f32>>> {
        let (scripts, real) = self.real_scripts(self.cfg.script_seed + 1)?;
        let w = self.cfg.base.window;
        let mut windows = Vec::new();
        for (script, fr) in scripts.iter().zip(&real) {
            let mut start = 0;
            for (_, _, n) in script {
                windows.push(window_of(&self.prep.tok, fr, start, start + n, w)?);
                start += n;
            }
        }
        self.prep.embed_motion(&windows)
    }

    /// The evaluation scripts of a seed and their real motion.
    pub fn real_scripts(&self, seed: u64) -> Result<(Vec<Script>, Vec<SequenceFrames>)> {
        let scripts = long_scripts(seed, self.cfg.eval_scripts, self.cfg.eval_segments);
        let mut rng = StdRng::seed_from_u64(seed ^ 0xabc);
        let real = scripts
            .iter()
            .map(|s| {
                let plan: Vec<(Primitive, String, usize)> =
                    s.iter().map(|(p, t, n)| (*p, t.clone(), *n)).collect();
                let seq = synthesize(&plan, &DataConfig::default(), &mut rng);
                frames(&seq)
            })
            .collect();
        Ok((scripts, real))
    }
}

/// Reconstruction with and without the residual layers on the test sequences.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ResidualCheck {
    /// Mean squared error of normalised features, decoding the base layer only.
    pub nmse_base_only: f64,
    /// … decoding the true base layer plus the residual transformer's layers.
    pub nmse_predicted_residual: f64,
    /// … decoding every true layer (the tokenizer's own reconstruction).
    pub nmse_all_layers: f64,
    /// Share of residual tokens the residual transformer gets exactly right.
    pub residual_token_accuracy: f64,
    pub frames: usize,
}

impl LongPrepared {
    /// Measures what the residual layers and the residual transformer add (test split).
    pub fn residual_check(&self) -> Result<ResidualCheck> {
        let dev = Device::Cpu;
        let c = self.residual.cfg.ctx_tokens;
        let tok = &self.prep.tok;
        let nmse = |a: &[Vec<f32>], b: &[Vec<f32>]| -> Result<(f64, usize)> {
            let ta = tok.normalize(&crate::text::batch_tensor(&[a.to_vec()], &dev)?)?;
            let tb = tok.normalize(&crate::text::batch_tensor(&[b.to_vec()], &dev)?)?;
            let e = (ta - tb)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
            Ok((e * a.len() as f64, a.len()))
        };
        let (mut e_base, mut e_pred, mut e_all, mut n) = (0.0, 0.0, 0.0, 0usize);
        let (mut right, mut total) = (0usize, 0usize);
        for s in &self.prep.ds.test {
            let fr = frames(s);
            let codes = tok.encode(&fr)?;
            let mut pred: Vec<Token> = Vec::new();
            for g in &s.segments {
                let (a, b) = (g.start / DOWN, g.end / DOWN);
                let item = ResidualItem {
                    ctx: pred[pred.len().saturating_sub(c)..].to_vec(),
                    codes: codes[a..b].iter().map(|t| vec![t[0]]).collect(),
                    text: self.text(&g.text)?,
                };
                let seg = self.residual.predict(&[item], &dev)?.remove(0);
                for (p, t) in seg.iter().zip(&codes[a..b]) {
                    right += p[1..].iter().zip(&t[1..]).filter(|(x, y)| x == y).count();
                    total += t.len() - 1;
                }
                pred.extend(seg);
            }
            let (x, k) = nmse(&fr, &tok.decode_first_layers(&codes, 1)?)?;
            e_base += x;
            n += k;
            e_pred += nmse(&fr, &tok.decode(&pred)?)?.0;
            e_all += nmse(&fr, &tok.decode(&codes)?)?.0;
        }
        let n_f = n.max(1) as f64;
        Ok(ResidualCheck {
            nmse_base_only: e_base / n_f,
            nmse_predicted_residual: e_pred / n_f,
            nmse_all_layers: e_all / n_f,
            residual_token_accuracy: right as f64 / total.max(1) as f64,
            frames: n,
        })
    }
}

/// The frames of one whole sequence, `[frame][feature]`.
pub type SequenceFrames = Vec<Vec<f32>>;

/// One long script: `(primitive, instruction, frames)` per segment.
pub type Script = Vec<(Primitive, String, usize)>;

/// Random long scripts (no primitive twice in a row; 40–80 frames per segment, a multiple of 4;
/// a random phrasing each), from a fixed seed.
pub fn long_scripts(seed: u64, n: usize, segments: usize) -> Vec<Script> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut last = None;
            (0..segments)
                .map(|_| {
                    let mut p = Primitive::ALL[rng.gen_range(0..Primitive::ALL.len())];
                    while Some(p) == last {
                        p = Primitive::ALL[rng.gen_range(0..Primitive::ALL.len())];
                    }
                    last = Some(p);
                    let ph = p.phrasings();
                    let text = ph[rng.gen_range(0..ph.len())].to_string();
                    (p, text, 4 * rng.gen_range(10..=20))
                })
                .collect()
        })
        .collect()
}

pub fn long_run_dir(out: &Path, v: LongVariant, seed: u64) -> PathBuf {
    out.join("runs").join(format!("{}-s{seed}", v.key()))
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LongMetrics {
    /// FID of all generated segments against the pooled real reference.
    pub fid: f64,
    pub rprec: [f64; 3],
    /// FID per position group of `horizon_segments` segments.
    pub fid_by_horizon: Vec<f64>,
    pub horizon_centre_training_lengths: Vec<f64>,
    /// Mean jerk (cm/frame³) in ±10 frames around the boundaries.
    pub jerk: f64,
    pub jerk_by_horizon: Vec<f64>,
    /// Foot-skating proxy (cm/frame of contact) around the boundaries.
    pub skate: f64,
    pub skate_by_horizon: Vec<f64>,
    /// Slope of per-group FID against position (FID per training length).
    pub drift_slope: f64,
    pub n_segments: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LongRun {
    pub variant: String,
    pub seed: u64,
    pub metrics: LongMetrics,
    pub wall_s: f64,
}

/// Trains (if needed), generates the evaluation scripts and scores one variant and seed;
/// writes `metrics.json` in its run folder.
pub fn run_long_variant(
    lp: &LongPrepared,
    out: &Path,
    v: LongVariant,
    seed: u64,
    reference: &[Vec<f32>],
) -> Result<LongRun> {
    let t0 = std::time::Instant::now();
    let (scripts, _) = lp.real_scripts(lp.cfg.script_seed)?;
    // train first (so the timing below is generation and scoring)
    match v {
        LongVariant::Kmm => drop(lp.kmm_generator(out, seed)?),
        _ => drop(lp.memory_model(out, v, seed)?),
    }
    let mut rng = StdRng::seed_from_u64(seed + 4242);
    let gen = lp.generate_scripts(out, v, seed, &scripts, &mut rng)?;
    let m = lp.score(&scripts, &gen, reference, seed)?;
    let run = LongRun {
        variant: v.key().into(),
        seed,
        metrics: m,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    let dir = long_run_dir(out, v, seed);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(&run)?,
    )?;
    Ok(run)
}

/// Peak and current resident set size of this process in MiB (Linux `/proc`; `None`
/// elsewhere).
pub fn rss_mb() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Settings of the streaming long run.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub seed: u64,
    pub frames: usize,
    pub frames_per_segment: usize,
    pub script: Vec<String>,
    pub output: PathBuf,
    pub fps: f64,
    pub sample_seed: u64,
    /// Frames kept at the end for the picture strip.
    pub strip_frames: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StreamStats {
    pub frames: usize,
    pub segments: usize,
    pub wall_s: f64,
    pub frames_per_s: f64,
    pub peak_rss_mb: f64,
    pub rss_after_first_segment_mb: f64,
    pub rss_end_mb: f64,
    pub state_numbers: usize,
}

/// Streams a long motion from a repeating script with the memory model to a BVH written as it
/// goes; keeps only the generation state, the previous segment's last tokens and the last
/// `strip_frames` poses. Returns the stats and the last poses (for the strip).
pub fn stream_long(
    lp: &LongPrepared,
    out: &Path,
    s: &StreamSettings,
) -> Result<(StreamStats, Vec<crate::skeleton::Pose>)> {
    if s.frames == 0 {
        bail!("--frames must be positive");
    }
    let max = lp.memory_config(MemoryKind::Mamba).max_tokens * DOWN;
    if s.frames_per_segment % DOWN != 0 || s.frames_per_segment < 8 || s.frames_per_segment > max {
        bail!(
            "--frames-per-segment must be a multiple of 4 between 8 and {max}, got {}",
            s.frames_per_segment
        );
    }
    if s.script.is_empty() {
        bail!("the script needs at least one instruction");
    }
    for t in &s.script {
        if !lp.prep.vocab.covers(t) {
            bail!("instruction {t:?} uses words outside the training vocabulary");
        }
    }
    let ckpt = long_run_dir(out, LongVariant::Memory, s.seed).join("model.safetensors");
    if !ckpt.is_file() {
        bail!(
            "no trained memory model at {}; run `motion long-eval` first",
            ckpt.display()
        );
    }
    let (model, _vm) = lp.memory_model(out, LongVariant::Memory, s.seed)?;
    let dev = Device::Cpu;
    let t0 = std::time::Instant::now();
    let mut writer = BvhStreamWriter::create(&s.output, s.frames, s.fps)?;
    let mut integ = PoseIntegrator::default();
    let mut state = model.init_state(1)?;
    let mut prev: Vec<Token> = Vec::new();
    let mut tail: std::collections::VecDeque<crate::skeleton::Pose> = Default::default();
    let mut rng = StdRng::seed_from_u64(s.sample_seed);
    let texts: Vec<Vec<f32>> = s.script.iter().map(|t| lp.text(t)).collect::<Result<_>>()?;
    let bar = indicatif::ProgressBar::new(s.frames as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "long motion {bar:30} {pos}/{len} frames {per_sec} [{elapsed}<{eta}]",
        )
        .unwrap(),
    );
    let c = lp.residual.cfg.ctx_tokens;
    let mut k = 0usize;
    let mut rss_first = 0.0;
    while writer.written() < s.frames {
        let left = s.frames - writer.written();
        let seg_frames = left.min(s.frames_per_segment);
        let n_tok = seg_frames.div_ceil(DOWN);
        let text = &texts[k % texts.len()];
        let base = model.generate_segment(
            &mut state,
            std::slice::from_ref(text),
            &[n_tok],
            &lp.cfg.base.decode,
            true,
            &mut rng,
            &dev,
        )?;
        let seg = lp
            .residual
            .predict(
                &[ResidualItem {
                    ctx: prev.clone(),
                    codes: base[0].iter().map(|&t| vec![t]).collect(),
                    text: text.clone(),
                }],
                &dev,
            )?
            .remove(0);
        // decode with the previous tokens in front so the convolution sees across the boundary
        let mut window = prev.clone();
        window.extend(seg.iter().cloned());
        let fr = lp.prep.tok.decode(&window)?;
        let fr = &fr[prev.len() * DOWN..prev.len() * DOWN + seg_frames];
        let poses = integ.push(fr);
        writer.write(&poses)?;
        for p in poses {
            tail.push_back(p);
            if tail.len() > s.strip_frames {
                tail.pop_front();
            }
        }
        prev.extend(seg);
        let cut = prev.len().saturating_sub(c);
        prev.drain(..cut);
        bar.inc(seg_frames as u64);
        if k == 0 {
            rss_first = rss_mb().map(|r| r.1).unwrap_or(f64::NAN);
        }
        k += 1;
    }
    writer.finish()?;
    bar.finish();
    let wall = t0.elapsed().as_secs_f64();
    let (peak, end) = rss_mb().unwrap_or((f64::NAN, f64::NAN));
    Ok((
        StreamStats {
            frames: s.frames,
            segments: k,
            wall_s: wall,
            frames_per_s: s.frames as f64 / wall,
            peak_rss_mb: peak,
            rss_after_first_segment_mb: rss_first,
            rss_end_mb: end,
            state_numbers: state.size(),
        },
        tail.into_iter().collect(),
    ))
}
