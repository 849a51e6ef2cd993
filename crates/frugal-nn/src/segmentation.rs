//! Pieces every semantic-segmentation model here needs: a differentiable bilinear resize, the
//! per-mask losses of mask-classification heads (sigmoid focal, dice), pixel cross-entropy with
//! an ignore index, and a confusion matrix that gives per-class IoU and mIoU.
//!
//! Why a resize of our own: candle's `upsample_bilinear2d` has no backward pass, and segmentation
//! losses are taken on logits upsampled to the label size. Bilinear resizing is separable and
//! linear, so it is two matrix products with fixed interpolation matrices, which candle
//! differentiates.

use candle_core::{DType, Device, Result, Tensor, D};

/// The `(out, inp)` matrix of 1-D linear interpolation with half-pixel centres (PyTorch's
/// `align_corners=False`): output sample `i` reads input position `(i + 0.5)·inp/out − 0.5`,
/// clamped at the borders.
pub fn bilinear_matrix(out: usize, inp: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    let scale = inp as f64 / out as f64;
    for i in 0..out {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let f = (src - i0 as f64) as f32;
        m[i * inp + i0] += 1.0 - f;
        m[i * inp + i1] += f;
    }
    m
}

/// Bilinear resize of `(B, C, h, w)` to `(B, C, out_h, out_w)` (half-pixel centres), built from
/// matrix products so gradients flow through it.
pub fn upsample_bilinear(xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(xs.clone());
    }
    let dev = xs.device();
    let uh = Tensor::from_vec(bilinear_matrix(out_h, h), (out_h, h), dev)?.to_dtype(xs.dtype())?;
    let uwt = Tensor::from_vec(bilinear_matrix(out_w, w), (out_w, w), dev)?
        .to_dtype(xs.dtype())?
        .t()?
        .contiguous()?;
    let flat = xs.reshape((b * c, h, w))?;
    let rows = uh.broadcast_left(b * c)?.matmul(&flat)?; // (BC, out_h, w)
    let out = rows.broadcast_matmul(&uwt)?; // (BC, out_h, out_w)
    out.reshape((b, c, out_h, out_w))
}

/// Element-wise binary cross-entropy with logits, `max(x,0) − x·t + log(1 + e^{−|x|})` (stable).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let soft = ((logits.abs()?.neg()?.exp()? + 1.0)?).log()?;
    (logits.relu()? - (logits * targets)?)? + soft
}

/// Element-wise sigmoid focal loss (Lin et al.): `α_t · (1 − p_t)^γ · BCE(x, t)`.
pub fn sigmoid_focal(logits: &Tensor, targets: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    let ce = bce_with_logits(logits, targets)?;
    // 1 − p_t = p + t − 2·p·t for t ∈ {0, 1}
    let one_minus_pt = ((&p + targets)? - ((&p * targets)? * 2.0)?)?;
    let modulator = if gamma == 2.0 {
        one_minus_pt.sqr()?
    } else {
        one_minus_pt.clamp(0f32, 1f32)?.powf(gamma)?
    };
    // α_t = α·t + (1 − α)·(1 − t)
    let alpha_t = ((targets * (2.0 * alpha - 1.0))? + (1.0 - alpha))?;
    (ce * modulator)? * alpha_t
}

/// Dice loss of each row of `(N, P)` logits against `(N, P)` binary targets, with the +1
/// smoothing of mask-classification heads: `1 − (2 Σ σ(x) t + 1) / (Σ σ(x) + Σ t + 1)`; shape `(N,)`.
pub fn dice_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    let num = (((&p * targets)?.sum(D::Minus1)? * 2.0)? + 1.0)?;
    let den = ((p.sum(D::Minus1)? + targets.sum(D::Minus1)?)? + 1.0)?;
    (num / den)?.affine(-1.0, 1.0)
}

/// Mean pixel cross-entropy of `(B, K, H, W)` logits against `(B, H, W)` labels, skipping pixels
/// whose label is `ignore` (or ≥ K). Returns 0 when every pixel is ignored.
pub fn pixel_cross_entropy(logits: &Tensor, labels: &[u8], ignore: u8) -> Result<Tensor> {
    let (b, k, h, w) = logits.dims4()?;
    if labels.len() != b * h * w {
        candle_core::bail!("pixel CE: {} labels for {b}x{h}x{w} pixels", labels.len());
    }
    let dev = logits.device();
    let valid: Vec<f32> = labels
        .iter()
        .map(|&l| (l != ignore && (l as usize) < k) as u8 as f32)
        .collect();
    let n_valid: f32 = valid.iter().sum();
    let idx: Vec<u32> = labels
        .iter()
        .map(|&l| {
            if l != ignore && (l as usize) < k {
                l as u32
            } else {
                0
            }
        })
        .collect();
    let idx = Tensor::from_vec(idx, (b, 1, h, w), dev)?;
    let valid = Tensor::from_vec(valid, (b, 1, h, w), dev)?.to_dtype(logits.dtype())?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = logp.gather(&idx, 1)?;
    (picked * valid)?
        .sum_all()?
        .affine(-1.0 / n_valid.max(1.0) as f64, 0.0)
}

/// A `K × K` confusion matrix over labelled pixels: rows are labels, columns predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    pub classes: usize,
    pub counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Count every pixel whose label is neither `ignore` nor outside `0..K`. A prediction outside
    /// `0..K` is an error (it would silently vanish otherwise).
    pub fn add(&mut self, preds: &[u32], labels: &[u8], ignore: u8) -> anyhow::Result<()> {
        if preds.len() != labels.len() {
            anyhow::bail!("{} predictions for {} labels", preds.len(), labels.len());
        }
        for (&p, &l) in preds.iter().zip(labels) {
            if l == ignore || l as usize >= self.classes {
                continue;
            }
            if p as usize >= self.classes {
                anyhow::bail!("prediction {p} outside the {} classes", self.classes);
            }
            self.counts[l as usize * self.classes + p as usize] += 1;
        }
        Ok(())
    }

    /// IoU of each class, `TP / (TP + FP + FN)`; `None` for a class that is neither labelled nor
    /// predicted anywhere (it has no IoU and must not count as 0 or 1).
    pub fn iou(&self) -> Vec<Option<f64>> {
        let k = self.classes;
        (0..k)
            .map(|c| {
                let tp = self.counts[c * k + c];
                let row: u64 = (0..k).map(|j| self.counts[c * k + j]).sum();
                let col: u64 = (0..k).map(|i| self.counts[i * k + c]).sum();
                let union = row + col - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean IoU over `classes` (those with an IoU).
    pub fn miou(&self, classes: std::ops::Range<usize>) -> Option<f64> {
        mean_iou(&self.iou(), classes)
    }
}

/// Mean of the defined IoUs among `classes`.
pub fn mean_iou(iou: &[Option<f64>], classes: std::ops::Range<usize>) -> Option<f64> {
    let v: Vec<f64> = classes
        .filter_map(|c| iou.get(c).copied().flatten())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// A scalar zero: the loss term of a batch that has none of the pixels the term needs.
pub fn zero_loss(dev: &Device) -> Result<Tensor> {
    Tensor::zeros((), DType::F32, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_matches_candle_forward_and_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &dev)?;
        let ours = upsample_bilinear(&x, 8, 10)?;
        let theirs = x.upsample_bilinear2d(8, 10, false)?;
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        let v = candle_core::Var::from_tensor(&x)?;
        let g = upsample_bilinear(v.as_tensor(), 8, 10)?
            .sum_all()?
            .backward()?;
        // Every input pixel spreads total weight (8·10)/(4·5) = 4 over the output.
        let gx = g.get(v.as_tensor()).expect("gradient").sum_all()?;
        assert!((gx.to_scalar::<f32>()? - 4.0 * 120.0).abs() < 1e-2);
        Ok(())
    }

    #[test]
    fn miou_skips_ignored_pixels_and_absent_classes() -> anyhow::Result<()> {
        // labels: class 0 ×2, class 1 ×1, ignore ×2; class 2 never appears.
        let labels = [0u8, 0, 1, 255, 255];
        let preds = [0u32, 1, 1, 2, 0];
        let mut cm = ConfusionMatrix::new(3);
        cm.add(&preds, &labels, 255)?;
        let iou = cm.iou();
        assert_eq!(iou[0], Some(0.5)); // TP 1, FN 1, FP 0
        assert_eq!(iou[1], Some(0.5)); // TP 1, FP 1
        assert_eq!(iou[2], None); // predicted only on ignored pixels
        assert_eq!(cm.miou(0..3), Some(0.5));
        assert!(cm.add(&[7], &[0], 255).is_err());
        Ok(())
    }

    #[test]
    fn focal_dice_and_ce_on_hand_values() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0f32, 2.0]], &dev)?;
        let t = Tensor::new(&[[1f32, 0.0]], &dev)?;
        let f = sigmoid_focal(&x, &t, 0.25, 2.0)?.to_vec2::<f32>()?;
        // x = 0, t = 1: 0.25 · 0.5² · ln 2
        assert!((f[0][0] - 0.25 * 0.25 * std::f32::consts::LN_2).abs() < 1e-6);
        let p = 1.0 / (1.0 + (-2f32).exp());
        let want = 0.75 * p * p * (1.0 + 2f32.exp()).ln();
        assert!((f[0][1] - want).abs() < 1e-5);
        let d = dice_rows(&x, &t)?.to_vec1::<f32>()?;
        assert!((d[0] - (1.0 - 2.0 / (0.5 + p + 2.0))).abs() < 1e-6);
        let logits = Tensor::new(&[0f32, 0.0, 3.0, 0.0], &dev)?.reshape((1, 2, 1, 2))?;
        let ce = pixel_cross_entropy(&logits, &[255, 1], 255)?.to_scalar::<f32>()?;
        assert!((ce - 2f32.ln()).abs() < 1e-6);
        Ok(())
    }
}
