//! Layer norm and softmax in two forms: candle's fused kernels (fast, but they record no
//! gradient) for inference and benches, and compositions of primitive ops (differentiable) for
//! training. A module built for training uses the second everywhere.

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

/// LayerNorm over the last dimension with weight and bias (eps 1e-5, PyTorch's default), under the
/// parameter names `weight` and `bias`.
#[derive(Debug, Clone)]
pub struct Norm {
    weight: Tensor,
    bias: Tensor,
    trainable: bool,
}

impl Norm {
    pub fn new(dim: usize, trainable: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
            trainable,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        const EPS: f64 = 1e-5;
        if !self.trainable && x.is_contiguous() {
            return candle_nn::ops::layer_norm(x, &self.weight, &self.bias, EPS as f32);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + EPS)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor, trainable: bool) -> Result<Tensor> {
    if trainable {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// softmax(q kᵀ · scale) v over [heads, n, d] tensors.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, trainable: bool) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    softmax(&scores, trainable)?.matmul(v)
}
