//! Layer 3 of frugal (see docs/design.md): one module per method, each a cache and/or attention
//! policy with its paper's defaults, all named by one spec syntax (`spec`), described by the
//! shared types of `policy`, and built by one registry (`registry`).

pub mod eviction;
pub mod policy;
pub mod registry;
pub mod spec;

/// Declares every method module with the registry entries it exports. Adding a policy is its
/// file plus one line here: the registry, the policy matrix, the CLI, the server and the
/// harness all read [`POLICIES`].
macro_rules! methods {
    ($($module:ident => [$($entry:ident),*],)*) => {
        $(pub mod $module;)*
        /// Every registered policy, `full` first.
        pub const POLICIES: &[policy::PolicyEntry] = &[registry::FULL, $($($module::$entry,)*)*];
    };
}

methods! {
    streaming => [STREAMING],
    kivi => [KIVI],
    minicache => [MINICACHE, MEAN_MERGE],
    knockout => [KNOCKOUT, EARLY_EXIT, FRAME_LOCAL],
    omnisparse => [OMNISPARSE, UNIFORM_BUDGET, TOPK],
    fps => [FPS],
    snapkv => [SNAPKV],
    pyramidkv => [PYRAMIDKV],
    h2o => [H2O],
    tova => [TOVA],
    knorm => [KNORM],
    expected_attention => [EXPECTED_ATTENTION],
    adakv => [ADAKV],
}

pub use registry::{build, entry, validate};
pub use spec::{PolicySpec, SpecError};
