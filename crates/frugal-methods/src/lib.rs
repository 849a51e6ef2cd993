//! Layer 3 of frugal (see DESIGN.md): one module per method, each a cache and/or attention
//! policy with its paper's defaults, all named by one spec syntax (`spec`) and built by one
//! registry (`registry`).

pub mod fps;
pub mod kivi;
pub mod knockout;
pub mod minicache;
pub mod omnisparse;
pub mod registry;
pub mod spec;
pub mod streaming;

pub use registry::{build, validate, POLICIES};
pub use spec::{PolicySpec, SpecError};
