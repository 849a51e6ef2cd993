//! The ZPressor module: anchor views' tokens cross-attend to their supporters' tokens through a
//! stack of blocks, so a model downstream sees N anchor views instead of K input views.
//! The method in our words, and where we differ from the reference, is in
//! `docs/methods/zpressor.md`.
//!
//! Parameter names follow the reference module's `state_dict()` (`cross_attn_layers.{level}.{block}.projq.weight`, …),
//! so its weights load unchanged from safetensors.

use crate::anchors::{self, Assignment, RigidTolerance};
use crate::error::ZpressorError;
use crate::ops::{attend, Norm};
use candle_core::{DType, Device, IndexOp, Module, Result as CResult, Tensor, D};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

/// Shape of a ZPressor module. Defaults are the reference's for DepthSplat (width 128, 6 blocks,
/// 1 head, self-attention on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZpressorConfig {
    /// Feature width of each level (the reference allows several feature levels, each with its own
    /// blocks; one level is the usual case).
    pub embed_dims: Vec<usize>,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Without self-attention the MLP moves into the cross-attention blocks.
    pub no_self_attn: bool,
}

impl Default for ZpressorConfig {
    fn default() -> Self {
        Self {
            embed_dims: vec![128],
            num_heads: 1,
            num_layers: 6,
            no_self_attn: false,
        }
    }
}

impl ZpressorConfig {
    fn validate(&self) -> Result<(), ZpressorError> {
        if self.embed_dims.is_empty() || self.num_layers == 0 || self.num_heads == 0 {
            return Err(ZpressorError::Config(format!(
                "need at least one level, one block and one head: {self:?}"
            )));
        }
        for &d in &self.embed_dims {
            if d % self.num_heads != 0 {
                return Err(ZpressorError::Config(format!(
                    "width {d} is not divisible by {} heads",
                    self.num_heads
                )));
            }
        }
        Ok(())
    }
}

/// Pre-norm GELU MLP with residual: x + fc2(gelu(fc1(norm(x)))), hidden width 4×.
#[derive(Debug, Clone)]
struct Mlp {
    norm: Norm,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(dim: usize, trainable: bool, vb: VarBuilder) -> CResult<Self> {
        Ok(Self {
            norm: Norm::new(dim, trainable, vb.pp("norm"))?,
            fc1: linear(dim, 4 * dim, vb.pp("fc1"))?,
            fc2: linear(4 * dim, dim, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let h = self.fc1.forward(&self.norm.forward(x)?)?.gelu_erf()?;
        self.fc2.forward(&h)? + x
    }
}

/// [n, heads·d] → [heads, n, d]
fn split_heads(x: &Tensor, heads: usize) -> CResult<Tensor> {
    let (n, c) = x.dims2()?;
    x.reshape((n, heads, c / heads))?
        .transpose(0, 1)?
        .contiguous()
}

/// [heads, n, d] → [n, heads·d]
fn merge_heads(x: &Tensor) -> CResult<Tensor> {
    let (h, n, d) = x.dims3()?;
    x.transpose(0, 1)?.reshape((n, h * d))
}

/// Anchor tokens (queries) attend to supporter tokens (keys and values).
#[derive(Debug, Clone)]
struct CrossAttentionBlock {
    norm_query: Norm,
    norm_context: Norm,
    proj_q: Linear,
    proj_kv: Linear,
    proj_out: Linear,
    mlp: Option<Mlp>,
    heads: usize,
    trainable: bool,
}

impl CrossAttentionBlock {
    fn new(
        dim: usize,
        heads: usize,
        with_mlp: bool,
        trainable: bool,
        vb: VarBuilder,
    ) -> CResult<Self> {
        Ok(Self {
            norm_query: Norm::new(dim, trainable, vb.pp("norm1"))?,
            norm_context: Norm::new(dim, trainable, vb.pp("norm2"))?,
            proj_q: linear_no_bias(dim, dim, vb.pp("projq"))?,
            proj_kv: linear_no_bias(dim, 2 * dim, vb.pp("proj_kv"))?,
            proj_out: linear(dim, dim, vb.pp("proj"))?,
            mlp: if with_mlp {
                Some(Mlp::new(dim, trainable, vb.pp("mlp"))?)
            } else {
                None
            },
            heads,
            trainable,
        })
    }

    /// query [nq, c], context [nk, c] → [nq, c]
    fn forward(&self, query: &Tensor, context: &Tensor) -> CResult<Tensor> {
        let c = query.dim(1)?;
        let q = self.proj_q.forward(&self.norm_query.forward(query)?)?;
        let kv = self.proj_kv.forward(&self.norm_context.forward(context)?)?;
        let k = kv.narrow(1, 0, c)?;
        let v = kv.narrow(1, c, c)?;
        let scale = ((c / self.heads) as f64).powf(-0.5);
        let o = attend(
            &split_heads(&q, self.heads)?,
            &split_heads(&k, self.heads)?,
            &split_heads(&v, self.heads)?,
            scale,
            self.trainable,
        )?;
        let x = (self.proj_out.forward(&merge_heads(&o)?)? + query)?;
        match &self.mlp {
            Some(m) => m.forward(&x),
            None => Ok(x),
        }
    }
}

/// Self-attention within one anchor view's tokens, then the MLP. With one head spanning the
/// width there is no output projection (the reference's rule).
#[derive(Debug, Clone)]
struct SelfAttentionBlock {
    norm: Norm,
    to_qkv: Linear,
    to_out: Option<Linear>,
    mlp: Mlp,
    heads: usize,
    trainable: bool,
}

impl SelfAttentionBlock {
    fn new(dim: usize, heads: usize, trainable: bool, vb: VarBuilder) -> CResult<Self> {
        Ok(Self {
            norm: Norm::new(dim, trainable, vb.pp("norm"))?,
            to_qkv: linear_no_bias(dim, 3 * dim, vb.pp("to_qkv"))?,
            to_out: if heads == 1 {
                None
            } else {
                Some(linear(dim, dim, vb.pp("to_out").pp("0"))?)
            },
            mlp: Mlp::new(dim, trainable, vb.pp("mlp"))?,
            heads,
            trainable,
        })
    }

    /// x [n, c] (one anchor view) → [n, c]
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let c = x.dim(1)?;
        let qkv = self.to_qkv.forward(&self.norm.forward(x)?)?;
        let q = split_heads(&qkv.narrow(1, 0, c)?, self.heads)?;
        let k = split_heads(&qkv.narrow(1, c, c)?, self.heads)?;
        let v = split_heads(&qkv.narrow(1, 2 * c, c)?, self.heads)?;
        let scale = ((c / self.heads) as f64).powf(-0.5);
        let mut o = merge_heads(&attend(&q, &k, &v, scale, self.trainable)?)?;
        if let Some(p) = &self.to_out {
            o = p.forward(&o)?;
        }
        self.mlp.forward(&(o + x)?)
    }
}

/// The compression blocks of one feature level.
#[derive(Debug, Clone)]
struct Level {
    cross: Vec<CrossAttentionBlock>,
    selfs: Vec<SelfAttentionBlock>,
    dim: usize,
}

/// The module. Build it from reference weights with [`Zpressor::from_safetensors`] or from any
/// `VarBuilder` (a `VarMap` for training) with [`Zpressor::new`].
#[derive(Debug, Clone)]
pub struct Zpressor {
    cfg: ZpressorConfig,
    levels: Vec<Level>,
    /// How strict the camera-to-world check is; ours.
    pub rigid_tolerance: RigidTolerance,
}

impl Zpressor {
    /// Builds the module for inference (fused layer-norm and softmax kernels, which record no
    /// gradient), reading parameters under the reference's names relative to `vb`.
    pub fn new(cfg: ZpressorConfig, vb: VarBuilder) -> anyhow::Result<Self> {
        Self::build(cfg, false, vb)
    }

    /// Builds the module for training (every op differentiable), creating or reading parameters
    /// through `vb` (a `VarMap` for fresh ones).
    pub fn new_trainable(cfg: ZpressorConfig, vb: VarBuilder) -> anyhow::Result<Self> {
        Self::build(cfg, true, vb)
    }

    fn build(cfg: ZpressorConfig, trainable: bool, vb: VarBuilder) -> anyhow::Result<Self> {
        cfg.validate()?;
        let mut levels = Vec::new();
        for (li, &dim) in cfg.embed_dims.iter().enumerate() {
            let vc = vb.pp("cross_attn_layers").pp(li.to_string());
            let vs = vb.pp("self_attn_layers").pp(li.to_string());
            let mut cross = Vec::new();
            let mut selfs = Vec::new();
            for b in 0..cfg.num_layers {
                cross.push(CrossAttentionBlock::new(
                    dim,
                    cfg.num_heads,
                    cfg.no_self_attn,
                    trainable,
                    vc.pp(b.to_string()),
                )?);
                if !cfg.no_self_attn {
                    selfs.push(SelfAttentionBlock::new(
                        dim,
                        cfg.num_heads,
                        trainable,
                        vs.pp(b.to_string()),
                    )?);
                }
            }
            levels.push(Level { cross, selfs, dim });
        }
        Ok(Self {
            cfg,
            levels,
            rigid_tolerance: RigidTolerance::default(),
        })
    }

    /// Loads reference weights stored as `{prefix}{state_dict name}` in a safetensors file, after
    /// checking that every tensor the configuration needs is there with the right shape (so a file
    /// for another width, depth or head count is a clear error, not a crash).
    pub fn from_safetensors(
        path: &std::path::Path,
        prefix: &str,
        cfg: ZpressorConfig,
        device: &Device,
    ) -> anyhow::Result<Self> {
        cfg.validate()?;
        let tensors = candle_core::safetensors::load(path, device)
            .map_err(|e| anyhow::anyhow!("reading weights {}: {e}", path.display()))?;
        for (name, shape) in expected_parameters(&cfg) {
            let full = format!("{prefix}{name}");
            match tensors.get(&full) {
                None => return Err(ZpressorError::MissingWeight { name: full }.into()),
                Some(t) if t.dims() != shape.as_slice() => {
                    return Err(ZpressorError::ShapeMismatch {
                        what: format!("weight `{full}`"),
                        expected: format!("{shape:?}"),
                        got: format!("{:?}", t.dims()),
                    }
                    .into())
                }
                _ => {}
            }
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let vb = if prefix.is_empty() {
            vb
        } else {
            vb.pp(prefix.trim_end_matches('.'))
        };
        Self::new(cfg, vb)
    }

    pub fn config(&self) -> &ZpressorConfig {
        &self.cfg
    }

    /// Reads camera centres from extrinsics [B, V, 4, 4] (camera-to-world), checking each matrix
    /// is rigid.
    pub fn camera_centres(&self, extrinsics: &Tensor) -> anyhow::Result<Vec<Vec<[f32; 3]>>> {
        let dims = extrinsics.dims();
        if dims.len() != 4 || dims[2] != 4 || dims[3] != 4 {
            return Err(ZpressorError::ShapeMismatch {
                what: "extrinsics".into(),
                expected: "[batch, views, 4, 4]".into(),
                got: format!("{dims:?}"),
            }
            .into());
        }
        let m = extrinsics
            .to_dtype(DType::F32)?
            .flatten_from(2)?
            .to_vec3::<f32>()?;
        let mut out = Vec::new();
        for (b, views) in m.iter().enumerate() {
            let mut cs = Vec::new();
            for (v, row) in views.iter().enumerate() {
                let arr: [f32; 16] = row.as_slice().try_into().expect("16 values");
                anchors::check_rigid(&arr, self.rigid_tolerance, b, v)?;
                cs.push([arr[3], arr[7], arr[11]]);
            }
            out.push(cs);
        }
        Ok(out)
    }

    /// Posed anchor selection for each batch element: farthest-point sampling over camera centres
    /// and nearest-anchor assignment.
    pub fn select_anchors(
        &self,
        extrinsics: &Tensor,
        num_anchors: usize,
    ) -> anyhow::Result<Vec<Assignment>> {
        self.camera_centres(extrinsics)?
            .iter()
            .map(|c| Ok(anchors::posed_assignment(c, num_anchors)?))
            .collect()
    }

    /// Full posed forward: x [B, V, F, H, W] and extrinsics [B, V, 4, 4] → anchor features
    /// [B, N, F, H, W] and the assignments.
    pub fn forward(
        &self,
        x: &Tensor,
        extrinsics: &Tensor,
        num_anchors: usize,
    ) -> anyhow::Result<(Tensor, Vec<Assignment>)> {
        self.check_features(x, 0)?;
        let (b, v) = (x.dim(0)?, x.dim(1)?);
        let e = extrinsics.dims();
        if e.len() != 4 || e[0] != b || e[1] != v {
            return Err(ZpressorError::ShapeMismatch {
                what: "extrinsics against features".into(),
                expected: format!("[{b}, {v}, 4, 4]"),
                got: format!("{e:?}"),
            }
            .into());
        }
        if num_anchors == 0 || num_anchors > v {
            return Err(ZpressorError::TooFewViews {
                views: v,
                anchors: num_anchors,
            }
            .into());
        }
        let asg = self.select_anchors(extrinsics, num_anchors)?;
        let out = self.compress(x, &asg, 0)?;
        Ok((out, asg))
    }

    fn check_features(&self, x: &Tensor, level: usize) -> Result<(), ZpressorError> {
        let dims = x.dims();
        let want = self.levels.get(level).map(|l| l.dim).ok_or_else(|| {
            ZpressorError::Config(format!(
                "level {level} requested, module has {}",
                self.levels.len()
            ))
        })?;
        if dims.len() != 5 || dims[2] != want {
            return Err(ZpressorError::ShapeMismatch {
                what: format!("features of level {level} (the module's width is {want})"),
                expected: format!("[batch, views, {want}, height, width]"),
                got: format!("{dims:?}"),
            });
        }
        Ok(())
    }

    /// Runs the blocks of one level given the assignments: x [B, V, F, H, W] → [B, N, F, H, W].
    pub fn compress(
        &self,
        x: &Tensor,
        assignments: &[Assignment],
        level: usize,
    ) -> anyhow::Result<Tensor> {
        self.check_features(x, level)?;
        let (b, v, f, h, w) = x.dims5()?;
        if assignments.len() != b {
            return Err(ZpressorError::ShapeMismatch {
                what: "assignments".into(),
                expected: format!("one per batch element ({b})"),
                got: format!("{}", assignments.len()),
            }
            .into());
        }
        let n = assignments[0].anchors.len();
        for a in assignments {
            if a.anchors.len() != n
                || a.clusters.len() != v
                || a.anchors.iter().any(|&i| i >= v)
                || a.clusters.iter().any(|&c| c >= n)
            {
                return Err(ZpressorError::ShapeMismatch {
                    what: "assignment".into(),
                    expected: format!("{n} anchors < {v} views and {v} slots < {n}"),
                    got: format!("{a:?}"),
                }
                .into());
            }
        }
        let lvl = &self.levels[level];
        // [B, V, F, H, W] → [B, V, HW, F]
        let tokens = x.reshape((b, v, f, h * w))?.transpose(2, 3)?.contiguous()?;
        let mut outs = Vec::with_capacity(b);
        for (bi, asg) in assignments.iter().enumerate() {
            let xb = tokens.i(bi)?; // [V, HW, F]
            let contexts: Vec<Option<Tensor>> = (0..n)
                .map(|j| {
                    let s = asg.supporters(j);
                    if s.is_empty() {
                        return Ok(None);
                    }
                    let idx =
                        Tensor::new(s.iter().map(|&i| i as u32).collect::<Vec<_>>(), x.device())?;
                    Ok(Some(
                        xb.index_select(&idx, 0)?.reshape((s.len() * h * w, f))?,
                    ))
                })
                .collect::<CResult<_>>()?;
            let mut cur: Vec<Tensor> = asg
                .anchors
                .iter()
                .map(|&a| xb.i(a))
                .collect::<CResult<_>>()?;
            for blk in 0..self.cfg.num_layers {
                for j in 0..n {
                    if let Some(ctx) = &contexts[j] {
                        cur[j] = lvl.cross[blk].forward(&cur[j], ctx)?;
                    }
                }
                if !self.cfg.no_self_attn {
                    for c in cur.iter_mut() {
                        *c = lvl.selfs[blk].forward(c)?;
                    }
                }
            }
            outs.push(Tensor::stack(&cur, 0)?); // [N, HW, F]
        }
        let out = Tensor::stack(&outs, 0)?; // [B, N, HW, F]
        Ok(out.transpose(2, 3)?.reshape((b, n, f, h, w))?)
    }
}

/// Every parameter name (relative to the module) and shape a configuration needs.
pub fn expected_parameters(cfg: &ZpressorConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mlp = |out: &mut Vec<(String, Vec<usize>)>, p: &str, d: usize| {
        out.push((format!("{p}.mlp.norm.weight"), vec![d]));
        out.push((format!("{p}.mlp.norm.bias"), vec![d]));
        out.push((format!("{p}.mlp.fc1.weight"), vec![4 * d, d]));
        out.push((format!("{p}.mlp.fc1.bias"), vec![4 * d]));
        out.push((format!("{p}.mlp.fc2.weight"), vec![d, 4 * d]));
        out.push((format!("{p}.mlp.fc2.bias"), vec![d]));
    };
    for (li, &d) in cfg.embed_dims.iter().enumerate() {
        for b in 0..cfg.num_layers {
            let p = format!("cross_attn_layers.{li}.{b}");
            for n in ["norm1", "norm2"] {
                out.push((format!("{p}.{n}.weight"), vec![d]));
                out.push((format!("{p}.{n}.bias"), vec![d]));
            }
            out.push((format!("{p}.projq.weight"), vec![d, d]));
            out.push((format!("{p}.proj_kv.weight"), vec![2 * d, d]));
            out.push((format!("{p}.proj.weight"), vec![d, d]));
            out.push((format!("{p}.proj.bias"), vec![d]));
            if cfg.no_self_attn {
                mlp(&mut out, &p, d);
            } else {
                let p = format!("self_attn_layers.{li}.{b}");
                out.push((format!("{p}.norm.weight"), vec![d]));
                out.push((format!("{p}.norm.bias"), vec![d]));
                out.push((format!("{p}.to_qkv.weight"), vec![3 * d, d]));
                if cfg.num_heads > 1 {
                    out.push((format!("{p}.to_out.0.weight"), vec![d, d]));
                    out.push((format!("{p}.to_out.0.bias"), vec![d]));
                }
                mlp(&mut out, &p, d);
            }
        }
    }
    out
}

/// The information-bottleneck regulariser on anchor latents [B, N, C, H, W]: per view and
/// channel, the KL divergence (in bits) of a Gaussian with the spatial mean μ and standard
/// deviation σ from the standard normal, summed over channels, averaged over views, times
/// `weight` (the reference uses 1e-5). σ is the population standard deviation with 1e-8 added to
/// the variance.
pub fn information_bottleneck_loss(latent: &Tensor, weight: f64) -> CResult<Tensor> {
    let (b, n, c, h, w) = latent.dims5()?;
    let flat = latent.reshape((b * n, c, h * w))?;
    let mu = flat.mean_keepdim(D::Minus1)?;
    let var = flat.broadcast_sub(&mu)?.sqr()?.mean_keepdim(D::Minus1)?;
    let std = (var + 1e-8)?.sqrt()?;
    let mu = mu.squeeze(D::Minus1)?;
    let std = std.squeeze(D::Minus1)?;
    // −½(1 + 2 ln σ − μ² − σ²)
    let kl = ((std.log()? * 2.0)? + 1.0)?
        .sub(&mu.sqr()?)?
        .sub(&std.sqr()?)?
        .affine(-0.5, 0.0)?;
    kl.sum(1)?.mean(0)? * (weight / std::f64::consts::LN_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ib_loss_is_zero_for_standard_normal_statistics_and_matches_a_hand_value() {
        let dev = Device::Cpu;
        // one view, one channel, values ±1: mean 0, population std 1 → KL 0 (up to the 1e-8)
        let x = Tensor::new(&[1f32, -1., 1., -1.], &dev)
            .unwrap()
            .reshape((1, 1, 1, 2, 2))
            .unwrap();
        let l = information_bottleneck_loss(&x, 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(l.abs() < 1e-6, "{l}");
        // values 2, 4: μ = 3, σ = 1 → −½(1 + 0 − 9 − 1) = 4.5 nats → 4.5/ln2 bits, times weight 2
        let x = Tensor::new(&[2f32, 4.], &dev)
            .unwrap()
            .reshape((1, 1, 1, 1, 2))
            .unwrap();
        let l = information_bottleneck_loss(&x, 2.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = 2.0 * 4.5 / std::f32::consts::LN_2;
        assert!((l - want).abs() < 1e-4, "{l} vs {want}");
    }

    #[test]
    fn trainable_module_gets_gradients_for_every_parameter() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cfg = ZpressorConfig {
            embed_dims: vec![8],
            num_heads: 2,
            num_layers: 1,
            no_self_attn: false,
        };
        let m = Zpressor::new_trainable(cfg, vb).unwrap();
        let x = Tensor::randn(0f32, 1., (1, 4, 8, 2, 2), &dev).unwrap();
        let asg = vec![Assignment {
            anchors: vec![0, 3],
            clusters: vec![0, 0, 1, 1],
        }];
        let y = m.compress(&x, &asg, 0).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            let g = grads.get(var.as_tensor());
            assert!(g.is_some(), "no gradient for {name}");
        }
    }
}
