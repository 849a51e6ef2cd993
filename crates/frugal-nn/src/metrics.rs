//! Classification metrics.

use candle_core::{Result, Tensor, D};

/// Arg-max class of each row of `(N, C)` logits.
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

/// Fraction of rows whose arg-max equals the label.
pub fn top1(logits: &Tensor, labels: &[u32]) -> Result<f64> {
    let p = predictions(logits)?;
    if p.len() != labels.len() {
        candle_core::bail!("top1: {} predictions for {} labels", p.len(), labels.len());
    }
    Ok(agreement(&p, labels))
}

/// Fraction of positions where two label lists agree (0 for empty lists).
pub fn agreement(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// 95 % Wilson score interval for a proportion `k / n`.
pub fn wilson95(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_964f64;
    let n = n as f64;
    let p = k as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn top1_counts_argmax_hits() -> Result<()> {
        let l = Tensor::new(&[[0.1f32, 0.9], [0.8, 0.2], [0.3, 0.7]], &Device::Cpu)?;
        assert!((top1(&l, &[1, 0, 0])? - 2.0 / 3.0).abs() < 1e-12);
        assert!(top1(&l, &[1]).is_err());
        let (lo, hi) = wilson95(50, 100);
        assert!(lo < 0.5 && hi > 0.5 && lo > 0.39 && hi < 0.61);
        Ok(())
    }
}
