//! Layer 1 of frugal (see DESIGN.md): numerical kernels with no model knowledge.

pub mod attention;
pub mod rope;
pub mod block_sparse;
pub mod fp8;
pub mod slerp;
pub mod kivi;
pub mod sparse_attention;
