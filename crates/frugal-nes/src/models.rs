//! The digit classifiers NEs is measured on, and access to their first linear layer.
//!
//! - `patch`: a non-overlapping patch embedding (kernel = stride = `patch`), a learned position
//!   embedding, one pre-norm transformer block, mean pooling, a linear head: a ViT in miniature.
//!   With patch 4 and 8 channels the embedding maps 16 patch values to 8 features, so it has an
//!   exact 8-dimensional null space (the authorized model). With 24 channels (more channels than
//!   patch values) it has none (the overcomplete variant). With patch 2 it sees another tiling.
//! - `cnn3x3`: two 3×3 convolutions (padding 1) with ReLU and 2×2 max pooling, a linear head.
//! - `mlp`: one hidden layer on the 64 pixels.
//!
//! Sizes are ours (the method is training-free; these are the test classifiers).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, LayerNorm, Linear};
use frugal_nn::init::SeededVarMap;
use frugal_nn::layers::{self, Mlp, PatchEmbed, TransformerBlock};
use frugal_nn::train::TrainModel;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architecture of a digit classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum DigitArch {
    Patch {
        patch: usize,
        embed: usize,
        heads: usize,
    },
    Cnn3x3 {
        c1: usize,
        c2: usize,
    },
    Mlp {
        hidden: usize,
    },
}

/// A named, seeded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub arch: DigitArch,
    pub seed: u64,
}

impl ModelSpec {
    /// File stem of the checkpoint: `<name>-s<seed>`.
    pub fn stem(&self) -> String {
        format!("{}-s{}", self.name, self.seed)
    }
}

/// The zoo of the results page: the authorized architecture and the unauthorized ones.
pub fn zoo(seeds: &[u64]) -> Vec<ModelSpec> {
    let archs = [
        (
            "patch4",
            DigitArch::Patch {
                patch: 4,
                embed: 8,
                heads: 2,
            },
        ),
        (
            "patch4_wide",
            DigitArch::Patch {
                patch: 4,
                embed: 24,
                heads: 4,
            },
        ),
        (
            "patch2",
            DigitArch::Patch {
                patch: 2,
                embed: 8,
                heads: 2,
            },
        ),
        ("cnn3x3", DigitArch::Cnn3x3 { c1: 16, c2: 32 }),
        ("mlp", DigitArch::Mlp { hidden: 64 }),
    ];
    let mut v = Vec::new();
    for (name, arch) in archs {
        for &seed in seeds {
            v.push(ModelSpec {
                name: name.to_string(),
                arch: arch.clone(),
                seed,
            });
        }
    }
    v
}

/// The first linear map a model applies to the image.
#[derive(Debug, Clone)]
pub enum FirstLayer {
    /// A convolution: kernel `(C_out, C_in, k, k)`, stride, zero padding.
    Conv {
        weight: Tensor,
        stride: usize,
        padding: usize,
    },
    /// A dense layer on the flattened image: weight `(out, C·H·W)`.
    Linear { weight: Tensor },
}

impl FirstLayer {
    /// The layer without its bias (the part that is linear in the image).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            FirstLayer::Conv {
                weight,
                stride,
                padding,
            } => x.conv2d(weight, *padding, *stride, 1, 1)?,
            FirstLayer::Linear { weight } => x.flatten_from(1)?.matmul(&weight.t()?)?,
        })
    }

    /// The layer as a dense matrix on images of shape `(c, h, w)`: rows = outputs, columns =
    /// pixels. Built by applying the layer to every one-hot image (cheap for small images).
    pub fn image_operator(&self, c: usize, h: usize, w: usize) -> Result<nalgebra::DMatrix<f64>> {
        let d = c * h * w;
        let eye = Tensor::eye(d, DType::F32, &Device::Cpu)?.reshape((d, c, h, w))?;
        let out = self.apply(&eye)?.flatten_from(1)?; // (d, m)
        let m = out.dim(1)?;
        let v = out.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(nalgebra::DMatrix::from_fn(m, d, |r, col| v[col * m + r]))
    }
}

/// A built digit classifier.
pub struct DigitNet {
    pub spec: ModelSpec,
    body: Body,
}

enum Body {
    Patch {
        pe: PatchEmbed,
        pos: Tensor,
        block: TransformerBlock,
        ln: LayerNorm,
        head: Linear,
    },
    Cnn {
        c1: Conv2d,
        c2: Conv2d,
        head: Linear,
    },
    Mlp(Mlp),
}

impl DigitNet {
    /// Build with seeded initial weights; returns the network and its variables.
    pub fn build(spec: &ModelSpec) -> Result<(Self, SeededVarMap)> {
        let vm = SeededVarMap::new(spec.seed);
        let vb = vm.var_builder(DType::F32, &Device::Cpu);
        let side = crate::digits::SIDE;
        let body = match &spec.arch {
            DigitArch::Patch {
                patch,
                embed,
                heads,
            } => {
                if *patch == 0 || side % patch != 0 {
                    anyhow::bail!("patch size {patch} does not divide the 8x8 digit");
                }
                let t = (side / patch) * (side / patch);
                Body::Patch {
                    pe: PatchEmbed::new(1, *embed, *patch, vb.pp("embed"))?,
                    pos: vb.get_with_hints(
                        (1, t, *embed),
                        "pos",
                        candle_nn::Init::Randn {
                            mean: 0.0,
                            stdev: 0.02,
                        },
                    )?,
                    block: TransformerBlock::new(*embed, *heads, 2, vb.pp("block"))?,
                    ln: layers::layer_norm(*embed, 1e-5, vb.pp("ln"))?,
                    head: layers::linear(t * embed, 10, vb.pp("head"))?,
                }
            }
            DigitArch::Cnn3x3 { c1, c2 } => Body::Cnn {
                c1: layers::conv2d(1, *c1, 3, 1, 1, vb.pp("conv1"))?,
                c2: layers::conv2d(*c1, *c2, 3, 1, 1, vb.pp("conv2"))?,
                head: layers::linear(c2 * 4, 10, vb.pp("head"))?,
            },
            DigitArch::Mlp { hidden } => Body::Mlp(Mlp::new(64, *hidden, 10, vb.pp("mlp"))?),
        };
        Ok((
            Self {
                spec: spec.clone(),
                body,
            },
            vm,
        ))
    }

    /// Logits `(N, 10)` for images `(N, 1, 8, 8)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.body {
            Body::Patch {
                pe,
                pos,
                block,
                ln,
                head,
            } => {
                let tok = layers::to_tokens(&pe.forward(x)?)?.broadcast_add(pos)?;
                let tok = ln.forward(&block.forward(&tok)?)?;
                head.forward(&tok.flatten_from(1)?)
            }
            Body::Cnn { c1, c2, head } => {
                let h = layers::max_pool2(&c1.forward(x)?.relu()?)?;
                let h = layers::max_pool2(&c2.forward(&h)?.relu()?)?;
                head.forward(&h.flatten_from(1)?)
            }
            Body::Mlp(mlp) => mlp.forward(&x.flatten_from(1)?),
        }
    }

    /// The first linear layer (what NEs reads for the authorized model).
    pub fn first_layer(&self) -> FirstLayer {
        match &self.body {
            Body::Patch { pe, .. } => FirstLayer::Conv {
                weight: pe.weight().clone(),
                stride: pe.patch,
                padding: 0,
            },
            Body::Cnn { c1, .. } => FirstLayer::Conv {
                weight: c1.weight().clone(),
                stride: 1,
                padding: 1,
            },
            Body::Mlp(m) => FirstLayer::Linear {
                weight: m.fc1.weight().clone(),
            },
        }
    }

    /// Predicted classes for a batch of images.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        Ok(frugal_nn::metrics::predictions(&self.forward(x)?)?)
    }

    /// Load a checkpoint written by training (architecture from its state sidecar).
    pub fn load(path: &Path) -> Result<Self> {
        let sp = frugal_nn::checkpoint::state_path(path);
        let state: frugal_nn::checkpoint::TrainState =
            serde_json::from_slice(&std::fs::read(&sp).with_context(|| {
                format!("model {}: cannot read {}", path.display(), sp.display())
            })?)
            .with_context(|| format!("parsing {}", sp.display()))?;
        let spec: ModelSpec = serde_json::from_value(state.model.clone())
            .with_context(|| format!("{}: not a digit-model description", sp.display()))?;
        let (net, vm) = Self::build(&spec)?;
        frugal_nn::checkpoint::load(&mut vm.varmap().clone(), path)?;
        Ok(net)
    }
}

impl TrainModel for DigitNet {
    type Batch = (Tensor, Tensor);
    fn loss(&self, (x, y): &Self::Batch) -> candle_core::Result<Tensor> {
        candle_nn::loss::cross_entropy(&self.forward(x)?, y)
    }
}
