//! frugal's trainable-network stack: the layers, optimiser, training loop, checkpoints and data
//! plumbing that the vision (NEs, CIT, ESA), motion (KMM, InfiniMotion) and multi-view
//! (ZPressor) crates share. One stack, not a copy per paper; it sits in the "other domains"
//! layer and imports only `candle` and frugal's numerics.
pub mod mamba;
pub mod vq;
