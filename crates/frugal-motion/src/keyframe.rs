//! KMM's key-frame score: density-peak clustering's Γ over a sequence of token embeddings.
//!
//! `D_ij = ‖x_i − x_j‖`, local density `ρ_i = Σ_j exp(−D_ij² / h)`, distance to a denser token
//! `δ_i = min_{j: ρ_j > ρ_i} D_ij`, and `Γ = ρ · δ`. Tokens with high Γ are dense *and* far from
//! any denser token: cluster centres of the motion, its key frames. KMM masks those during
//! training instead of random positions. See docs/methods/kmm.md.

/// Open choices of the score; the paper does not state them, so all are ours.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyframeConfig {
    /// Kernel bandwidth `h = bandwidth_scale · median_{i≠j}(D_ij²)` (ours: 1.0). The plain
    /// `exp(−D²)` of the paper's formula underflows for raw embedding distances.
    pub bandwidth_scale: f32,
}

impl Default for KeyframeConfig {
    fn default() -> Self {
        Self {
            bandwidth_scale: 1.0,
        }
    }
}

/// Γ per token. The densest token (no denser neighbour) gets `δ = max_j D_ij` (ours, the usual
/// density-peak convention); ties in density are broken by index so exactly one token is
/// "densest".
pub fn density_peak_scores(x: &[Vec<f32>], cfg: &KeyframeConfig) -> Vec<f32> {
    let n = x.len();
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![1.0];
    }
    let mut d2 = vec![0f32; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let v: f32 = x[i].iter().zip(&x[j]).map(|(a, b)| (a - b) * (a - b)).sum();
            d2[i * n + j] = v;
            d2[j * n + i] = v;
        }
    }
    let mut off: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| d2[i * n + j])
        .collect();
    off.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let h = (off[off.len() / 2] * cfg.bandwidth_scale).max(1e-12);
    let rho: Vec<f32> = (0..n)
        .map(|i| (0..n).map(|j| (-d2[i * n + j] / h).exp()).sum())
        .collect();
    let denser = |j: usize, i: usize| rho[j] > rho[i] || (rho[j] == rho[i] && j < i);
    (0..n)
        .map(|i| {
            let delta = (0..n)
                .filter(|&j| j != i && denser(j, i))
                .map(|j| d2[i * n + j].sqrt())
                .fold(f32::INFINITY, f32::min);
            let delta = if delta.is_finite() {
                delta
            } else {
                (0..n).map(|j| d2[i * n + j].sqrt()).fold(0.0, f32::max)
            };
            rho[i] * delta
        })
        .collect()
}

/// Positions sorted by descending Γ (the order in which key-frame masking picks them).
pub fn keyframe_order(x: &[Vec<f32>], cfg: &KeyframeConfig) -> Vec<usize> {
    let g = density_peak_scores(x, cfg);
    let mut idx: Vec<usize> = (0..g.len()).collect();
    idx.sort_by(|&a, &b| g[b].partial_cmp(&g[a]).unwrap().then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_centres_score_highest() {
        // two clusters: around 0 (5 points) and around 10 (4 points); the centres are the
        // points at exactly 0 and 10
        let pts = [0.0f32, 0.3, -0.3, 0.5, -0.5, 10.0, 10.3, 9.7, 10.5];
        let x: Vec<Vec<f32>> = pts.iter().map(|&p| vec![p, 0.0]).collect();
        // with a bandwidth at the within-cluster scale the centres win
        let narrow = KeyframeConfig {
            bandwidth_scale: 0.01,
        };
        let order = keyframe_order(&x, &narrow);
        let top2: std::collections::BTreeSet<usize> = order[..2].iter().copied().collect();
        assert_eq!(top2, [0usize, 5].into_iter().collect());
        // with the default (median) bandwidth, density is global: the top two are still one
        // per cluster, but each is the member nearest the other cluster
        let order = keyframe_order(&x, &KeyframeConfig::default());
        let (a, b) = (order[0].min(order[1]), order[0].max(order[1]));
        assert!(a < 5 && b >= 5, "{order:?}");
    }
}
