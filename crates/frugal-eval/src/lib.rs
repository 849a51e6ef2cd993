//! Layer 4 of frugal (see DESIGN.md): tasks and benchmarks that measure the engine and its
//! policies on the same inputs.

pub mod perplexity;
pub mod speed;
