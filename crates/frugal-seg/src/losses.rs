//! The losses, with the weights of the official CIT code (see `docs/methods/cit.md`).
//!
//! Supervised ("ATM" loss, fixed query-to-class assignment, no matching): for every image and
//! every class labelled in it, a sigmoid focal loss (α 0.25, γ 2, mean over pixels, weight 20)
//! and a dice loss (weight 1) between the upsampled mask logits and the class's binary mask,
//! both averaged over the (image, class) pairs of the batch; and a 2-way cross-entropy on the
//! class logits (target "present" for labelled classes, "no object" otherwise, class weights
//! [1, 0.1], weight 1) taken only over the queries of the current task (`k ≥ old`).
//!
//! Distillation (CIT's accumulative pipeline and the iterative baseline): binary cross-entropy
//! with logits of the student's old-class outputs against the teacher's sigmoid — on the class
//! logits (weight 5, both logits) and on the upsampled mask logits (weight 10), with the teacher
//! mask target set to 0 at every pixel that carries a current label.

use crate::scenes::IGNORE;
use candle_core::{DType, Result, Tensor, D};
use frugal_nn::segmentation::{
    bce_with_logits, dice_rows, pixel_cross_entropy, sigmoid_focal, upsample_bilinear,
};

/// Loss weights and constants; `Default` is the official code's setting.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    pub focal_weight: f64,
    pub dice_weight: f64,
    pub cls_weight: f64,
    pub focal_alpha: f64,
    pub focal_gamma: f64,
    /// Cross-entropy class weights of ("present", "no object").
    pub cls_class_weights: [f64; 2],
    pub distill_cls_weight: f64,
    pub distill_mask_weight: f64,
    /// Temperature T of the teacher sigmoids.
    pub temperature: f64,
    /// Zero the teacher mask target where a current label exists (`zero_gt`).
    pub zero_gt: bool,
    /// Weight of the plain KD term of the softmax baseline (ours: MiB's default for its KD term
    /// is 10; we use the same).
    pub softmax_kd_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            focal_weight: 20.0,
            dice_weight: 1.0,
            cls_weight: 1.0,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            cls_class_weights: [1.0, 0.1],
            distill_cls_weight: 5.0,
            distill_mask_weight: 10.0,
            temperature: 1.0,
            zero_gt: true,
            softmax_kd_weight: 10.0,
        }
    }
}

/// The parts of a loss, for logging and tests.
#[derive(Debug, Clone)]
pub struct LossParts {
    pub total: Tensor,
    pub focal: f32,
    pub dice: f32,
    pub cls: f32,
}

/// Supervised loss of CIT outputs. `masks` `(B, K, H, W)` are mask logits already upsampled to
/// the label size, `classes` `(B, K, 2)`, `labels` `(B·H·W)` with [`IGNORE`]; `old` is the number
/// of old classes whose class logits take no loss.
pub fn cit_supervised(
    masks: &Tensor,
    classes: &Tensor,
    labels: &[u8],
    old: usize,
    cfg: &LossConfig,
) -> Result<LossParts> {
    let (b, k, h, w) = masks.dims4()?;
    let hw = h * w;
    if labels.len() != b * hw {
        candle_core::bail!("CIT loss: {} labels for {b}x{h}x{w}", labels.len());
    }
    let dev = masks.device();
    // (image, class) pairs present in the labels, and the binary targets of each pair.
    let mut rows = vec![];
    let mut targets = vec![];
    let mut present = vec![false; b * k];
    for i in 0..b {
        let lab = &labels[i * hw..(i + 1) * hw];
        let mut seen = vec![false; k];
        for &l in lab {
            if l != IGNORE && (l as usize) < k {
                seen[l as usize] = true;
            }
        }
        for (c, &s) in seen.iter().enumerate() {
            if s {
                present[i * k + c] = true;
                rows.push((i * k + c) as u32);
                targets.extend(lab.iter().map(|&l| (l as usize == c) as u8 as f32));
            }
        }
    }
    let zero = Tensor::zeros((), DType::F32, dev)?;
    let (focal, dice) = if rows.is_empty() {
        (zero.clone(), zero.clone())
    } else {
        let n = rows.len();
        let idx = Tensor::from_vec(rows, n, dev)?;
        let m = masks.reshape((b * k, hw))?.index_select(&idx, 0)?;
        let t = Tensor::from_vec(targets, (n, hw), dev)?;
        let focal = sigmoid_focal(&m, &t, cfg.focal_alpha, cfg.focal_gamma)?
            .mean(D::Minus1)?
            .sum_all()?
            .affine(cfg.focal_weight / n as f64, 0.0)?;
        let dice = dice_rows(&m, &t)?
            .sum_all()?
            .affine(cfg.dice_weight / n as f64, 0.0)?;
        (focal, dice)
    };
    // Class logits of the current queries: weighted 2-way CE (torch's weighted mean).
    let cls = if old < k {
        let logits = classes
            .narrow(1, old, k - old)?
            .reshape((b * (k - old), 2))?;
        let tgt: Vec<u32> = (0..b)
            .flat_map(|i| (old..k).map(move |c| (i, c)))
            .map(|(i, c)| if present[i * k + c] { 0 } else { 1 })
            .collect();
        let wts: Vec<f32> = tgt
            .iter()
            .map(|&t| cfg.cls_class_weights[t as usize] as f32)
            .collect();
        let wsum: f32 = wts.iter().sum();
        let n = tgt.len();
        let tgt = Tensor::from_vec(tgt, (n, 1), dev)?;
        let wts = Tensor::from_vec(wts, n, dev)?;
        let nll = candle_nn::ops::log_softmax(&logits, 1)?
            .gather(&tgt, 1)?
            .squeeze(1)?
            .neg()?;
        (nll * wts)?
            .sum_all()?
            .affine(cfg.cls_weight / wsum as f64, 0.0)?
    } else {
        zero
    };
    let total = ((&focal + &dice)? + &cls)?;
    Ok(LossParts {
        focal: focal.to_scalar::<f32>()?,
        dice: dice.to_scalar::<f32>()?,
        cls: cls.to_scalar::<f32>()?,
        total,
    })
}

/// CIT distillation of the first `old` classes. `student_masks` `(B, K, H, W)` upsampled mask
/// logits, `student_classes` `(B, K, 2)`; `teacher_masks` `(B, old, h, w)` at feature
/// resolution and `teacher_classes` `(B, old, 2)` (logits); `labels` as in [`cit_supervised`].
pub fn cit_distillation(
    student_masks: &Tensor,
    student_classes: &Tensor,
    teacher_masks: &Tensor,
    teacher_classes: &Tensor,
    labels: &[u8],
    cfg: &LossConfig,
) -> Result<Tensor> {
    let (b, _, h, w) = student_masks.dims4()?;
    let old = teacher_classes.dim(1)?;
    let t = cfg.temperature;
    let cls_target = candle_nn::ops::sigmoid(&(teacher_classes * t)?)?;
    let cls = bce_with_logits(&student_classes.narrow(1, 0, old)?, &cls_target)?
        .mean_all()?
        .affine(cfg.distill_cls_weight, 0.0)?;
    let mut z = upsample_bilinear(&candle_nn::ops::sigmoid(&(teacher_masks * t)?)?, h, w)?;
    if cfg.zero_gt {
        let keep: Vec<f32> = labels.iter().map(|&l| (l == IGNORE) as u8 as f32).collect();
        let keep = Tensor::from_vec(keep, (b, 1, h, w), z.device())?;
        z = z.broadcast_mul(&keep)?;
    }
    let mask = bce_with_logits(&student_masks.narrow(1, 0, old)?, &z)?
        .mean_all()?
        .affine(cfg.distill_mask_weight, 0.0)?;
    cls + mask
}

/// Softmax baseline: pixel cross-entropy on the current labels plus plain knowledge
/// distillation of the old classes, `−Σ_{k<old} p_teacher(k) · log q_student(k)` where both
/// distributions are softmaxes over the old classes only (the LwF/MiB form without MiB's
/// background unbiasing, which has no counterpart here: there is no background class). `logits`
/// `(B, K, H, W)` are upsampled; `teacher` `(B, old, H, W)` too.
pub fn softmax_kd(
    logits: &Tensor,
    teacher: Option<&Tensor>,
    labels: &[u8],
    cfg: &LossConfig,
) -> Result<Tensor> {
    let ce = pixel_cross_entropy(logits, labels, IGNORE)?;
    match teacher {
        None => Ok(ce),
        Some(t) => {
            let old = t.dim(1)?;
            let p = candle_nn::ops::softmax(t, 1)?;
            let logq = candle_nn::ops::log_softmax(&logits.narrow(1, 0, old)?, 1)?;
            let kd = (p * logq)?.sum(1)?.mean_all()?.neg()?;
            ce + kd.affine(cfg.softmax_kd_weight, 0.0)?
        }
    }
}
