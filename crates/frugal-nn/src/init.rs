//! Seeded parameter initialisation.
//!
//! candle draws `Init::Randn`/`Kaiming` values from a CPU generator that cannot be seeded, so two
//! runs of the same training would start from different weights. [`SeededVarMap`] is a
//! [`VarMap`]-backed variable store whose every new variable is drawn from a generator seeded by
//! `(seed, variable name)`: the weights depend on the seed and the name only, not on the order in
//! which layers are built, so adding a layer does not reshuffle every other layer's init.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};

/// A variable store that creates new variables with seeded values.
#[derive(Clone)]
pub struct SeededVarMap {
    map: VarMap,
    seed: u64,
}

impl SeededVarMap {
    pub fn new(seed: u64) -> Self {
        Self {
            map: VarMap::new(),
            seed,
        }
    }

    /// A builder whose `get_with_hints` creates (or returns) variables in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The underlying candle `VarMap` (for the optimiser and for checkpoints).
    pub fn varmap(&self) -> &VarMap {
        &self.map
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// FNV-1a: a fixed, dependency-free hash so that a variable's seed never changes between builds.
fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Standard normal by Box–Muller (rand 0.8 has no normal distribution without `rand_distr`).
pub fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Draw `n` values following candle's `Init` semantics from a seeded generator.
pub fn seeded_values(init: &Init, shape: &Shape, seed: u64) -> Vec<f32> {
    let n = shape.elem_count();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    match init {
        Init::Const(c) => vec![*c as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * normal(&mut rng)) as f32)
            .collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| rng.gen_range(*lo..*up) as f32).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = match fan {
                FanInOut::FanIn => FanInOut::FanIn.for_shape(shape),
                FanInOut::FanOut => FanInOut::FanOut.for_shape(shape),
            };
            let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => {
                    (0..n).map(|_| (std * normal(&mut rng)) as f32).collect()
                }
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| rng.gen_range(-bound..bound) as f32)
                        .collect()
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.map.data().lock().expect("var map poisoned");
        if let Some(var) = data.get(name) {
            let t = var.as_tensor();
            if t.shape() != &s {
                candle_core::bail!("variable {name}: shape {:?}, requested {s:?}", t.shape());
            }
            return Ok(t.clone());
        }
        let values = seeded_values(&h, &s, self.seed ^ name_hash(name));
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        data.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.map.data().lock().expect("var map poisoned");
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("variable {name} does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .expect("var map poisoned")
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let dev = Device::Cpu;
        let build = |seed| {
            let m = SeededVarMap::new(seed);
            let vb = m.var_builder(DType::F32, &dev);
            let l = candle_nn::linear(4, 3, vb.pp("fc")).unwrap();
            l.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(build(1), build(1));
        assert_ne!(build(1), build(2));
    }
}
