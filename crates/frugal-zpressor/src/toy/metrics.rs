//! Image quality: PSNR and SSIM on channel-major RGB images with values in [0, 1].

/// Peak signal-to-noise ratio (dB) for data range 1.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    -10.0 * mse.max(1e-12).log10()
}

/// SSIM with the usual settings (Gaussian window 11×11, σ 1.5, K1 0.01, K2 0.03, data range 1),
/// averaged over the valid window positions of every channel. Images are [channels, size, size].
pub fn ssim(a: &[f32], b: &[f32], channels: usize, size: usize) -> f64 {
    const WIN: usize = 11;
    let sigma = 1.5f64;
    let g: Vec<f64> = (0..WIN)
        .map(|i| (-((i as f64 - 5.0).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    let g: Vec<f64> = g.iter().map(|v| v / gs).collect();
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    if size < WIN {
        return f64::NAN;
    }
    let out = size - WIN + 1;
    let mut total = 0.0;
    for ch in 0..channels {
        let pa = &a[ch * size * size..(ch + 1) * size * size];
        let pb = &b[ch * size * size..(ch + 1) * size * size];
        for oy in 0..out {
            for ox in 0..out {
                let (mut ma, mut mb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for wy in 0..WIN {
                    for wx in 0..WIN {
                        let w = g[wy] * g[wx];
                        let i = (oy + wy) * size + ox + wx;
                        let (x, y) = (pa[i] as f64, pb[i] as f64);
                        ma += w * x;
                        mb += w * y;
                        saa += w * x * x;
                        sbb += w * y * y;
                        sab += w * x * y;
                    }
                }
                let (va, vb, cov) = (saa - ma * ma, sbb - mb * mb, sab - ma * mb);
                total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            }
        }
    }
    total / (channels * out * out) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_are_perfect_and_noise_lowers_both() {
        let n = 3 * 16 * 16;
        let a: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        assert!((ssim(&a, &a, 3, 16) - 1.0).abs() < 1e-9);
        assert!(psnr(&a, &a) > 100.0);
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 0.1 } else { -0.1 })
            .collect();
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-6, "MSE 0.01 is 20 dB");
        assert!(ssim(&a, &b, 3, 16) < 0.99);
    }
}
