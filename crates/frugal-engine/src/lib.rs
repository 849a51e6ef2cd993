//! frugal's decoder runtime (layer 2 of docs/design.md): model loading, tokenizer and chat template,
//! the per-(layer, KV head) KV store, the policy-driven attention step, and generation.

pub mod attention;
pub mod cache;
pub mod error;
pub mod fetch;
pub mod generate;
pub mod model;
pub mod probe;
pub mod sequence;
pub mod structure;
#[doc(hidden)]
pub mod testing;

pub use error::{EngineError, Result};
