//! Rotary position embedding (RoPE), applied in place to token-major `[T, heads, head_dim]`
//! buffers.
//!
//! Two pairings exist in the wild for the same model: GGUF files written by llama.cpp's
//! converter permute the Q/K projection rows so that rotation pairs are adjacent
//! (`(x[2i], x[2i+1])`, "interleaved"), while Hugging Face checkpoints pair the two halves
//! (`(x[i], x[i + d/2])`, "half"). The loader picks the pairing that matches the weights.

/// Which elements of a head vector rotate together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopePairing {
    Interleaved,
    Half,
}

/// Precomputed cos/sin for every position below `max_positions`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    half_dim: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    pairing: RopePairing,
}

impl RopeTable {
    /// Frequencies `θ^(-2i/d)` for `i < d/2`, computed in f64 then rounded, as the reference
    /// implementations do.
    pub fn new(head_dim: usize, theta: f64, max_positions: usize, pairing: RopePairing) -> Self {
        assert!(
            head_dim.is_multiple_of(2),
            "RoPE needs an even head dimension"
        );
        let half_dim = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half_dim)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half_dim);
        let mut sin = Vec::with_capacity(max_positions * half_dim);
        for pos in 0..max_positions {
            for f in &inv_freq {
                let angle = (pos as f64 * f) as f32;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTable {
            half_dim,
            cos,
            sin,
            pairing,
        }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half_dim
    }

    /// Rotates every head of every token in `x` (`[positions.len(), n_heads, head_dim]`).
    pub fn apply(&self, x: &mut [f32], positions: &[u32], n_heads: usize) {
        let d = self.half_dim * 2;
        assert_eq!(x.len(), positions.len() * n_heads * d);
        for (tok, &pos) in positions.iter().enumerate() {
            let pos = pos as usize;
            assert!(
                pos < self.max_positions(),
                "position {pos} beyond the RoPE table"
            );
            let cos = &self.cos[pos * self.half_dim..][..self.half_dim];
            let sin = &self.sin[pos * self.half_dim..][..self.half_dim];
            for head in x[tok * n_heads * d..][..n_heads * d].chunks_exact_mut(d) {
                for i in 0..self.half_dim {
                    let (a, b) = match self.pairing {
                        RopePairing::Interleaved => (2 * i, 2 * i + 1),
                        RopePairing::Half => (i, i + self.half_dim),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norm_and_position_zero_is_identity() {
        let table = RopeTable::new(8, 10000.0, 16, RopePairing::Interleaved);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        let mut x = orig.clone();
        table.apply(&mut x, &[0, 7], 1);
        assert_eq!(x[..8], orig[..8]);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x[8..]) - norm(&orig[8..])).abs() < 1e-4);
        assert!(x[8..] != orig[8..]);
    }

    #[test]
    fn dot_product_depends_only_on_relative_position() {
        // The property RoPE exists for: <R(p)q, R(p+k)k'> is the same for every p.
        for pairing in [RopePairing::Interleaved, RopePairing::Half] {
            let table = RopeTable::new(8, 100.0, 64, pairing);
            let q: Vec<f32> = (0..8).map(|i| (i as f32).sin()).collect();
            let k: Vec<f32> = (0..8).map(|i| (i as f32 * 0.7).cos()).collect();
            let dot_at = |p: u32| {
                let (mut a, mut b) = (q.clone(), k.clone());
                table.apply(&mut a, &[p], 1);
                table.apply(&mut b, &[p + 5], 1);
                a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
            };
            assert!((dot_at(0) - dot_at(30)).abs() < 1e-4, "{pairing:?}");
        }
    }
}
