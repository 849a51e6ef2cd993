//! Deterministic mini-batches: the batch for a step depends only on `(seed, step)`, so a run
//! resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Shuffled epochs over `n` examples, cut into batches of `batch` (the last, short batch of an
/// epoch is dropped so every step has the same size).
#[derive(Debug, Clone)]
pub struct ShuffledBatches {
    pub n: usize,
    pub batch: usize,
    pub seed: u64,
}

impl ShuffledBatches {
    pub fn new(n: usize, batch: usize, seed: u64) -> anyhow::Result<Self> {
        if batch == 0 || batch > n {
            anyhow::bail!("batch size {batch} must be in 1..={n} (the number of examples)");
        }
        Ok(Self { n, batch, seed })
    }

    pub fn steps_per_epoch(&self) -> usize {
        self.n / self.batch
    }

    /// Example indices of step `step`.
    pub fn indices(&self, step: usize) -> Vec<u32> {
        let per = self.steps_per_epoch();
        let epoch = step / per;
        let mut perm: Vec<u32> = (0..self.n as u32).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch as u64,
        );
        perm.shuffle(&mut rng);
        let k = step % per;
        perm[k * self.batch..(k + 1) * self.batch].to_vec()
    }
}

/// A deterministic split of `0..n` into (train, test) index lists with `test_frac` held out.
pub fn split_indices(n: usize, test_frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n_test = ((n as f64) * test_frac).round() as usize;
    let test = perm[..n_test].to_vec();
    let train = perm[n_test..].to_vec();
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_example_once_and_are_reproducible() {
        let b = ShuffledBatches::new(10, 3, 7).unwrap();
        let mut seen: Vec<u32> = (0..3).flat_map(|s| b.indices(s)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9);
        assert_eq!(b.indices(4), b.indices(4));
        assert_ne!(b.indices(0), b.indices(3)); // a new epoch is a new permutation
        assert!(ShuffledBatches::new(3, 4, 0).is_err());
    }
}
