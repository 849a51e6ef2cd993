//! ZPressor in frugal: a few anchor views absorb the information of many input views, so a
//! multi-view model downstream runs on N anchors instead of K views. The method in our words is
//! in `docs/methods/zpressor.md`; measured results in `docs/results/zpressor.md`.
//!
//! - [`anchors`]: farthest-point anchors over camera centres, nearest-anchor supporters, and the
//!   flagged pose-free k-means variant.
//! - [`zpressor`]: the module (cross-attention from supporters, per-anchor self-attention, MLP) on
//!   candle, loading the reference's parameter names, and the information-bottleneck loss.
//! - [`error`]: the errors bad input gets.

pub mod anchors;
pub mod bench;
pub mod cli;
pub mod error;
pub mod memory;
pub mod ops;
pub mod standin;
pub mod toy;
pub mod zpressor;

pub use anchors::Assignment;
pub use error::ZpressorError;
pub use zpressor::{information_bottleneck_loss, Zpressor, ZpressorConfig};
