//! Layer 1 of frugal (see docs/design.md): numerical kernels with no model knowledge.

pub mod activation;
pub mod attention;
pub mod block_sparse;
pub mod consistency;
pub mod fp8;
pub mod fps_attention;
pub mod half_attention;
pub mod half_rows;
pub mod key_selection;
pub mod kivi;
pub mod quant_matvec;
#[cfg(target_arch = "x86_64")]
mod quant_panel;
pub mod rope;
pub mod slerp;
pub mod sparse_attention;

/// Deterministic test inputs shared by the kernels' tests.
#[cfg(test)]
pub(crate) mod test_util {
    use crate::attention::{AttentionShape, KvSlices};

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

    /// One attention call's inputs for the kernel tests: `t` new queries after `past` cached
    /// tokens, 6 query heads over 2 KV heads of 16 dims; KV head `g` holds position `p` when
    /// `keep(g, p)`, so heads may hold different token sets (holes).
    pub struct AttentionCase {
        pub shape: AttentionShape,
        pub q: Vec<f32>,
        pub q_pos: Vec<u32>,
        pub keys: Vec<Vec<f32>>,
        pub vals: Vec<Vec<f32>>,
        pub pos: Vec<Vec<u32>>,
    }

    impl AttentionCase {
        pub fn new(t: usize, past: usize, keep: impl Fn(usize, u32) -> bool) -> Self {
            let shape = AttentionShape {
                n_heads: 6,
                n_kv_heads: 2,
                head_dim: 16,
            };
            let n = past + t;
            let (mut keys, mut vals, mut pos) = (vec![], vec![], vec![]);
            for g in 0..shape.n_kv_heads {
                let kept: Vec<u32> = (0..n as u32).filter(|&p| keep(g, p)).collect();
                keys.push(values(kept.len() * shape.head_dim, 10 + g as u64));
                vals.push(values(kept.len() * shape.head_dim, 20 + g as u64));
                pos.push(kept);
            }
            AttentionCase {
                shape,
                q: values(t * shape.n_heads * shape.head_dim, 1),
                q_pos: (past as u32..n as u32).collect(),
                keys,
                vals,
                pos,
            }
        }

        pub fn slices(&self) -> Vec<KvSlices<'_>> {
            (0..self.shape.n_kv_heads)
                .map(|g| KvSlices::new(&self.keys[g], &self.vals[g], &self.pos[g]))
                .collect()
        }
    }

    pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
