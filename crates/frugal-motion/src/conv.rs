//! A 1-D convolution layer whose gradients are right for any batch size.
//!
//! Why this exists: in candle 0.11.1 the CPU backward pass of `conv1d` gives wrong kernel
//! gradients whenever the batch has more than one sample (and wrong input gradients for
//! kernel size 1); with one sample it is right. The kernel gradient is computed by a
//! convolution over the batch-transposed input, a non-contiguous tensor, which is what goes
//! wrong. A convolution trained through it learns only its bias, so a tokenizer built from
//! such layers decodes every code to the mean pose. The test below checks both paths against
//! finite differences.
//!
//! [`ConvPath::Unfolded`] computes the same convolution as an unfold (one strided slice of the
//! padded input per kernel tap) followed by a matrix product, ops whose backward passes are
//! right; the forward values equal candle's. Weights are stored as candle's (`weight`
//! `(out, in, k)`, `bias` `(out)`), so checkpoints are the same for both paths.

use candle_core::{Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, VarBuilder};

/// How a [`Conv1dLayer`] computes its forward (and so its backward) pass.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum ConvPath {
    /// candle's `conv1d` op: right values, wrong gradients for batches of more than one.
    Candle,
    /// Unfold + matrix product: right values and gradients.
    Unfolded,
}

/// How the convolution weights start.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum ConvInit {
    /// candle-nn's default: Kaiming-normal weights (std √2/√fan_in), bias uniform in
    /// ±1/√in. With residual blocks adding up, a fresh tokenizer outputs values of standard
    /// deviation ≈ 7 in normalised units.
    KaimingNormal,
    /// PyTorch's default for convolutions (weights and bias uniform in ±1/√fan_in), which the
    /// reference motion tokenizers train with: outputs start near zero.
    TorchDefault,
}

/// A 1-D convolution (no groups) over `(B, C_in, L)`.
pub struct Conv1dLayer {
    conv: Conv1d,
    weight: Tensor,
    bias: Tensor,
    cfg: Conv1dConfig,
    path: ConvPath,
}

impl Conv1dLayer {
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        cfg: Conv1dConfig,
        init: ConvInit,
        path: ConvPath,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        if cfg.groups != 1 {
            candle_core::bail!("Conv1dLayer: grouped convolutions are not supported");
        }
        let fan_in = (c_in * k) as f64;
        let (w_init, b_bound) = match init {
            ConvInit::KaimingNormal => (
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
                1.0 / (c_in as f64).sqrt(),
            ),
            ConvInit::TorchDefault => {
                let b = 1.0 / fan_in.sqrt();
                (candle_nn::Init::Uniform { lo: -b, up: b }, b)
            }
        };
        let weight = vb.get_with_hints((c_out, c_in, k), "weight", w_init)?;
        let bias = vb.get_with_hints(
            c_out,
            "bias",
            candle_nn::Init::Uniform {
                lo: -b_bound,
                up: b_bound,
            },
        )?;
        Ok(Self {
            conv: Conv1d::new(weight.clone(), Some(bias.clone()), cfg),
            weight,
            bias,
            cfg,
            path,
        })
    }

    fn unfolded(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c_in, l) = x.dims3()?;
        let (c_out, _, k) = self.weight.dims3()?;
        let Conv1dConfig {
            padding: p,
            stride: s,
            dilation: d,
            ..
        } = self.cfg;
        let span = d * (k - 1) + 1;
        if l + 2 * p < span {
            candle_core::bail!("Conv1dLayer: input of {l} frames is shorter than the kernel");
        }
        let l_out = (l + 2 * p - span) / s + 1;
        // right padding so that every tap can take l_out·s frames before subsampling
        let need = (k - 1) * d + l_out * s;
        let right = need.saturating_sub(l + p).max(p);
        let xp = x.pad_with_zeros(2, p, right)?;
        let taps = (0..k)
            .map(|j| {
                let t = xp.narrow(2, j * d, l_out * s)?;
                if s == 1 {
                    Ok(t)
                } else {
                    t.reshape((b, c_in, l_out, s))?.narrow(3, 0, 1)?.squeeze(3)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let cols = Tensor::stack(&taps, 2)?.reshape((b, c_in * k, l_out))?;
        let w = self.weight.reshape((c_out, c_in * k))?;
        w.broadcast_matmul(&cols)?
            .broadcast_add(&self.bias.reshape((1, c_out, 1))?)
    }
}

impl Module for Conv1dLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.path {
            ConvPath::Candle => self.conv.forward(x),
            ConvPath::Unfolded => self.unfolded(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// Largest gap between autograd's and central finite differences' gradients of
    /// `Σ r ⊙ conv(x)` with respect to the input and the kernel.
    fn gradient_errors(path: ConvPath, b: usize, k: usize, cfg: Conv1dConfig) -> (f64, f64) {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
        let conv = Conv1dLayer::new(3, 4, k, cfg, ConvInit::KaimingNormal, path, vb).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, 3, 12), &dev).unwrap()).unwrap();
        let out = conv.forward(x.as_tensor()).unwrap();
        let r = Tensor::randn(0f64, 1.0, out.shape(), &dev).unwrap();
        let g = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let f = |c: &Conv1dLayer, x: &Tensor| -> f64 {
            (c.forward(x).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let eps = 1e-5;
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let gx = gx.to_vec1::<f64>().unwrap();
        let xv = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let mut err_x = 0f64;
        for i in 0..xv.len() {
            let mut a = xv.clone();
            a[i] += eps;
            let mut bm = xv.clone();
            bm[i] -= eps;
            let ta = Tensor::from_vec(a, (b, 3, 12), &dev).unwrap();
            let tb = Tensor::from_vec(bm, (b, 3, 12), &dev).unwrap();
            err_x = err_x.max(((f(&conv, &ta) - f(&conv, &tb)) / (2.0 * eps) - gx[i]).abs());
        }
        let w = Var::from_tensor(&conv.weight).unwrap();
        let gw = g.get(&conv.weight).unwrap().flatten_all().unwrap();
        let gw = gw.to_vec1::<f64>().unwrap();
        let wv = conv.weight.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut err_w = 0f64;
        for i in 0..wv.len() {
            let mut a = wv.clone();
            a[i] += eps;
            w.set(&Tensor::from_vec(a, conv.weight.shape(), &dev).unwrap())
                .unwrap();
            let fa = f(&conv, x.as_tensor());
            let mut bm = wv.clone();
            bm[i] -= eps;
            w.set(&Tensor::from_vec(bm, conv.weight.shape(), &dev).unwrap())
                .unwrap();
            let fb = f(&conv, x.as_tensor());
            err_w = err_w.max(((fa - fb) / (2.0 * eps) - gw[i]).abs());
        }
        w.set(&Tensor::from_vec(wv, conv.weight.shape(), &dev).unwrap())
            .unwrap();
        (err_x, err_w)
    }

    fn configs() -> Vec<(usize, Conv1dConfig)> {
        let c = |padding, stride, dilation| Conv1dConfig {
            padding,
            stride,
            dilation,
            ..Default::default()
        };
        // the tokenizer's and the evaluator's: k3 p1, k4 s2 p1, dilated k3, k1
        vec![
            (3, c(1, 1, 1)),
            (4, c(1, 2, 1)),
            (3, c(3, 1, 3)),
            (1, c(0, 1, 1)),
        ]
    }

    #[test]
    fn unfolded_convolution_has_right_gradients_for_batches_and_matches_candle_values() {
        for (k, cfg) in configs() {
            let (ex, ew) = gradient_errors(ConvPath::Unfolded, 3, k, cfg);
            assert!(ex < 1e-6 && ew < 1e-6, "k{k} {cfg:?}: errors {ex} {ew}");
            // same values as candle's op
            let dev = Device::Cpu;
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
            let a = Conv1dLayer::new(3, 4, k, cfg, ConvInit::TorchDefault, ConvPath::Unfolded, vb)
                .unwrap();
            let x = Tensor::randn(0f64, 1.0, (2, 3, 13), &dev).unwrap();
            let diff = (a.forward(&x).unwrap() - a.conv.forward(&x).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(diff < 1e-10, "k{k} {cfg:?}: values differ by {diff}");
        }
    }

    /// Documents why the unfolded path exists: candle's op is right for one sample and wrong
    /// for a batch. If a candle upgrade fixes it, this test fails and the workaround can go.
    #[test]
    fn candle_conv1d_kernel_gradient_is_wrong_for_batches() {
        let (k, cfg) = configs()[0];
        let (ex1, ew1) = gradient_errors(ConvPath::Candle, 1, k, cfg);
        assert!(ex1 < 1e-6 && ew1 < 1e-6, "one sample: {ex1} {ew1}");
        let (_, ew3) = gradient_errors(ConvPath::Candle, 3, k, cfg);
        assert!(ew3 > 1e-2, "batch of 3: kernel gradient error {ew3}");
    }
}
