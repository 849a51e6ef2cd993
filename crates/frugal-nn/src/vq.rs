//! Vector quantiser for VQ-VAE tokenizers: nearest-code lookup with a straight-through
//! gradient, an exponential-moving-average (EMA) codebook, dead-code reset and optional residual
//! layers (each layer quantises what the layers before it left over).
//!
//! Why EMA: the codebook then needs no gradient and no codebook loss, only the commitment term
//! that pulls encoder outputs towards their codes; it is what the motion tokenizers we follow
//! use. Why dead-code reset: with small data, codes that no vector picks never move again;
//! re-seeding them from current encoder outputs keeps the codebook in use.
//!
//! The codebook and its EMA statistics are stored as variables of the model's `VarMap`, so they
//! are saved and restored with the checkpoint; they receive no gradient, so an optimiser built
//! over all variables leaves them alone (candle's optimisers skip variables without gradient).

use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::Rng;

/// Quantiser settings. `Default` follows the common motion-tokenizer setting (EMA decay 0.99,
/// commitment 0.02, one layer), scaled down in size.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqConfig {
    /// Codes per layer.
    pub codebook_size: usize,
    /// Dimension of each code.
    pub dim: usize,
    /// Number of residual layers (1 = plain VQ).
    pub layers: usize,
    /// EMA decay of code counts and sums.
    pub ema_decay: f32,
    /// Weight of the commitment loss ‖z − sg(q)‖².
    pub commitment: f32,
    /// A code whose EMA count falls below this is re-seeded from an encoder output (ours: 0.01
    /// expected vectors per step).
    pub dead_threshold: f32,
}

impl Default for VqConfig {
    fn default() -> Self {
        Self {
            codebook_size: 256,
            dim: 64,
            layers: 1,
            ema_decay: 0.99,
            commitment: 0.02,
            dead_threshold: 0.01,
        }
    }
}

struct Codebook {
    embed: Var,     // (K, dim)
    ema_count: Var, // (K)
    ema_sum: Var,   // (K, dim)
}

/// Result of quantising a batch of vectors.
pub struct Quantized {
    /// Quantised vectors with a straight-through gradient to the input (same shape as input).
    pub z_q: Tensor,
    /// Code index per vector and layer, `(N, layers)`.
    pub codes: Vec<Vec<u32>>,
    /// Commitment loss (already weighted).
    pub commit_loss: Tensor,
    /// Codes re-seeded in this call (training only).
    pub reset: usize,
}

/// An EMA (residual) vector quantiser. See the module doc.
pub struct VectorQuantizer {
    cfg: VqConfig,
    books: Vec<Codebook>,
}

fn get_var(varmap: &VarMap, name: &str) -> Result<Var> {
    let data = varmap.data().lock().unwrap();
    data.get(name)
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg(format!("missing variable {name}")))
}

impl VectorQuantizer {
    /// Creates the codebooks as variables named `{prefix}.layer{i}.*` in `varmap`.
    pub fn new(cfg: VqConfig, varmap: &VarMap, prefix: &str) -> Result<Self> {
        if cfg.layers == 0 || cfg.codebook_size == 0 || cfg.dim == 0 {
            candle_core::bail!("vq: layers, codebook_size and dim must be positive");
        }
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &candle_core::Device::Cpu);
        let mut books = Vec::new();
        for l in 0..cfg.layers {
            let p = format!("{prefix}.layer{l}");
            let vbl = vb.pp(&p);
            vbl.get_with_hints(
                (cfg.codebook_size, cfg.dim),
                "embed",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0 / (cfg.dim as f64).sqrt(),
                },
            )?;
            vbl.get_with_hints(cfg.codebook_size, "ema_count", Init::Const(1.0))?;
            vbl.get_with_hints((cfg.codebook_size, cfg.dim), "ema_sum", Init::Const(0.0))?;
            let embed = get_var(varmap, &format!("{p}.embed"))?;
            let ema_count = get_var(varmap, &format!("{p}.ema_count"))?;
            let ema_sum = get_var(varmap, &format!("{p}.ema_sum"))?;
            // ema_sum starts equal to the codes (count 1)
            if ema_sum.as_tensor().abs()?.sum_all()?.to_scalar::<f32>()? == 0.0 {
                ema_sum.set(&embed.as_tensor().copy()?)?;
            }
            books.push(Codebook {
                embed,
                ema_count,
                ema_sum,
            });
        }
        Ok(Self { cfg, books })
    }

    pub fn config(&self) -> &VqConfig {
        &self.cfg
    }

    /// The codebook of layer `l`, `(K, dim)`.
    pub fn codebook(&self, l: usize) -> Tensor {
        self.books[l].embed.as_tensor().detach()
    }

    fn nearest(embed: &Tensor, z: &Tensor) -> Result<Tensor> {
        // ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²; the ‖z‖² term does not change the argmin
        let e2 = embed.sqr()?.sum(D::Minus1)?.unsqueeze(0)?;
        let ze = z.matmul(&embed.t()?)?;
        let dist = e2.broadcast_sub(&(ze * 2.0)?)?;
        dist.argmin(D::Minus1)
    }

    /// Looks up codes (no gradient): `codes[i][l]` → summed code vectors `(N, dim)`.
    pub fn decode_codes(&self, codes: &[Vec<u32>]) -> Result<Tensor> {
        let n = codes.len();
        let dev = self.books[0].embed.device().clone();
        let mut out = Tensor::zeros((n, self.cfg.dim), DType::F32, &dev)?;
        for (l, b) in self.books.iter().enumerate() {
            let idx: Vec<u32> = codes
                .iter()
                .map(|c| c.get(l).copied().unwrap_or(0))
                .collect();
            let idx = Tensor::from_vec(idx, n, &dev)?;
            out = (out + b.embed.as_tensor().detach().index_select(&idx, 0)?)?;
        }
        Ok(out)
    }

    /// Quantises `z` of shape `(N, dim)`. With `train`, updates the EMA codebooks and re-seeds
    /// dead codes from rows of `z` chosen with `rng`.
    pub fn forward<R: Rng>(&self, z: &Tensor, train: bool, rng: &mut R) -> Result<Quantized> {
        let (n, dim) = z.dims2()?;
        if dim != self.cfg.dim {
            candle_core::bail!("vq: input dim {dim}, codebook dim {}", self.cfg.dim);
        }
        let mut residual = z.detach();
        let mut total = Tensor::zeros_like(&residual)?;
        let mut codes = vec![Vec::with_capacity(self.books.len()); n];
        let mut reset = 0;
        for b in &self.books {
            let embed = b.embed.as_tensor().detach();
            let idx = Self::nearest(&embed, &residual)?;
            let q = embed.index_select(&idx, 0)?;
            let idx_v = idx.to_vec1::<u32>()?;
            for (c, i) in codes.iter_mut().zip(&idx_v) {
                c.push(*i);
            }
            if train {
                reset += self.ema_update(b, &residual, &idx_v, rng)?;
            }
            residual = (residual - &q)?;
            total = (total + q)?;
        }
        let commit_loss = ((z - &total)?.sqr()?.mean_all()? * self.cfg.commitment as f64)?;
        // straight-through: forward value = codes, gradient = identity to z
        let z_q = (z + (total - z)?.detach())?;
        Ok(Quantized {
            z_q,
            codes,
            commit_loss,
            reset,
        })
    }

    fn ema_update<R: Rng>(
        &self,
        b: &Codebook,
        x: &Tensor,
        idx: &[u32],
        rng: &mut R,
    ) -> Result<usize> {
        let k = self.cfg.codebook_size;
        let dim = self.cfg.dim;
        let decay = self.cfg.ema_decay;
        let xv = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut count = vec![0f32; k];
        let mut sum = vec![0f32; k * dim];
        for (row, &i) in idx.iter().enumerate() {
            count[i as usize] += 1.0;
            for d in 0..dim {
                sum[i as usize * dim + d] += xv[row * dim + d];
            }
        }
        let mut ema_count = b.ema_count.as_tensor().to_vec1::<f32>()?;
        let mut ema_sum = b.ema_sum.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for c in 0..k {
            ema_count[c] = decay * ema_count[c] + (1.0 - decay) * count[c];
            for d in 0..dim {
                ema_sum[c * dim + d] =
                    decay * ema_sum[c * dim + d] + (1.0 - decay) * sum[c * dim + d];
            }
        }
        let mut embed = vec![0f32; k * dim];
        let mut reset = 0;
        let rows = idx.len();
        for c in 0..k {
            if ema_count[c] < self.cfg.dead_threshold && rows > 0 {
                let r = rng.gen_range(0..rows);
                for d in 0..dim {
                    embed[c * dim + d] = xv[r * dim + d];
                    ema_sum[c * dim + d] = xv[r * dim + d];
                }
                ema_count[c] = 1.0;
                reset += 1;
            } else {
                for d in 0..dim {
                    embed[c * dim + d] = ema_sum[c * dim + d] / ema_count[c].max(1e-6);
                }
            }
        }
        let dev = x.device();
        b.ema_count.set(&Tensor::from_vec(ema_count, k, dev)?)?;
        b.ema_sum.set(&Tensor::from_vec(ema_sum, (k, dim), dev)?)?;
        b.embed.set(&Tensor::from_vec(embed, (k, dim), dev)?)?;
        Ok(reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    fn clusters(n: usize, dim: usize, centres: &[f32], rng: &mut rand::rngs::StdRng) -> Tensor {
        let k = centres.len() / dim;
        let v: Vec<f32> = (0..n)
            .flat_map(|i| {
                let c = i % k;
                (0..dim)
                    .map(|d| centres[c * dim + d] + rng.gen_range(-0.05..0.05))
                    .collect::<Vec<_>>()
            })
            .collect();
        Tensor::from_vec(v, (n, dim), &Device::Cpu).unwrap()
    }

    #[test]
    fn ema_codebook_learns_clusters_and_reset_revives_dead_codes() -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let varmap = VarMap::new();
        let cfg = VqConfig {
            codebook_size: 8,
            dim: 2,
            ema_decay: 0.8,
            ..Default::default()
        };
        let vq = VectorQuantizer::new(cfg, &varmap, "vq")?;
        // four far-away clusters; initial codes sit near the origin
        let centres = [3.0, 3.0, -3.0, 3.0, 3.0, -3.0, -3.0, -3.0];
        let mut first_err = None;
        let mut total_reset = 0;
        let mut err = 0.0;
        for _ in 0..150 {
            let z = clusters(64, 2, &centres, &mut rng);
            let q = vq.forward(&z, true, &mut rng)?;
            total_reset += q.reset;
            err = (&q.z_q - &z)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
            first_err.get_or_insert(err);
        }
        assert!(total_reset > 0, "no dead code was reset");
        assert!(err < 0.01, "quantisation error {err} (first {first_err:?})");
        Ok(())
    }

    #[test]
    fn residual_layers_reduce_error_and_gradient_is_straight_through() -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let dev = Device::Cpu;
        let errs: Vec<f32> = [1usize, 3]
            .iter()
            .map(|&layers| {
                let varmap = VarMap::new();
                let cfg = VqConfig {
                    codebook_size: 16,
                    dim: 4,
                    layers,
                    ema_decay: 0.9,
                    ..Default::default()
                };
                let vq = VectorQuantizer::new(cfg, &varmap, "rvq").unwrap();
                for _ in 0..40 {
                    let z = Tensor::randn(0f32, 1.0, (128, 4), &dev).unwrap();
                    vq.forward(&z, true, &mut rng).unwrap();
                }
                let z = Tensor::randn(0f32, 1.0, (512, 4), &dev).unwrap();
                let q = vq.forward(&z, false, &mut rng).unwrap();
                (&q.z_q - &z)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .collect();
        assert!(errs[1] < 0.6 * errs[0], "residual layers: {errs:?}");
        // straight-through gradient: d(sum z_q)/dz = 1
        let varmap = VarMap::new();
        let vq = VectorQuantizer::new(
            VqConfig {
                codebook_size: 4,
                dim: 3,
                ..Default::default()
            },
            &varmap,
            "st",
        )?;
        let z = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 3), &dev)?)?;
        let q = vq.forward(z.as_tensor(), false, &mut rng)?;
        let g = q.z_q.sum_all()?.backward()?;
        let gz = g.get(z.as_tensor()).unwrap();
        let ones = gz.flatten_all()?.to_vec1::<f32>()?;
        assert!(ones.iter().all(|v| (v - 1.0).abs() < 1e-6));
        // decode_codes reproduces the forward value
        let dec = vq.decode_codes(&q.codes)?;
        let diff = (dec - q.z_q.detach())?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5);
        Ok(())
    }
}
