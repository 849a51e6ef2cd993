//! Layer 1 of frugal (see DESIGN.md): numerical kernels with no model knowledge.

pub mod attention;
pub mod block_sparse;
pub mod fp8;
pub mod fps_attention;
pub mod kivi;
pub mod rope;
pub mod slerp;
pub mod sparse_attention;

/// Deterministic test inputs shared by the kernels' tests.
#[cfg(test)]
pub(crate) mod test_util {
    /// Pseudo-random values in [-1, 1) from a seed (no `rand` dependency in this crate).
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
