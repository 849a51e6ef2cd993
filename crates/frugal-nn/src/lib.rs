//! frugal's trainable-network stack: the layers, optimiser, training loop, checkpoints and data
//! plumbing that the vision (NEs, CIT, ESA), motion (KMM, InfiniMotion) and multi-view
//! (ZPressor) crates share. One stack, not a copy per paper; it sits in the "other domains"
//! layer and imports only `candle` and frugal's numerics.
//!
//! - [`init`]: seeded, order-independent parameter initialisation (candle's own CPU RNG cannot
//!   be seeded, so a run's weights would otherwise differ between runs).
//! - [`layers`]: conv / pool / norm / patch embedding / MLP / self-attention blocks.
//! - [`mamba`]: a trainable (bidirectional) Mamba block with a fused inference scan.
//! - [`vq`]: vector quantisation with an EMA codebook, dead-code reset and residual layers.
//! - [`train`]: a model-agnostic training loop (a [`train::TrainModel`] gives the loss of a
//!   batch; the loop owns AdamW, the learning-rate schedule, progress and checkpoints).
//! - [`checkpoint`]: safetensors checkpoints with a JSON sidecar, written atomically.
//! - [`data`]: deterministic shuffled mini-batches.
//! - [`image_io`]: image loading, resizing, 8-bit conversion, PNG / JPEG round trips.
//! - [`metrics`]: top-1 accuracy and its interval.
//! - [`segmentation`]: differentiable bilinear resize, focal / dice / pixel-CE losses, mIoU.

pub mod checkpoint;
pub mod data;
pub mod image_io;
pub mod init;
pub mod layers;
pub mod mamba;
pub mod metrics;
pub mod segmentation;
pub mod train;
pub mod vq;
