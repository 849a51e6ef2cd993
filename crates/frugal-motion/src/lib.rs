//! Text-to-motion for frugal: a synthetic text-labelled motion set on a 17-joint skeleton, BVH
//! in and out, a VQ-VAE motion tokenizer, and KMM's masked bidirectional-Mamba generator with
//! key-frame masking and contrastive text alignment, scored by a separately trained evaluator.
//! The method in our words: docs/methods/kmm.md.
//!
//! InfiniMotion builds on the same stack: a residual-token transformer ([`residual`]), a segment
//! model with memory slots carried across segments by a bidirectional Mamba ([`infinimotion`]),
//! long-motion metrics ([`long_metrics`]), streaming BVH output ([`bvh_stream`]) and the
//! experiment ([`long_experiment`], [`cli_long`]); see docs/methods/infinimotion.md.

pub mod bvh;
pub mod bvh_stream;
pub mod cli;
pub mod cli_long;
pub mod conv;
pub mod data;
pub mod experiment;
pub mod generator;
pub mod infinimotion;
pub mod keyframe;
pub mod long_experiment;
pub mod long_metrics;
pub mod metrics;
pub mod render;
pub mod residual;
pub mod skeleton;
pub mod text;
pub mod tokenizer;
pub mod tokenizer_check;
pub mod train;
