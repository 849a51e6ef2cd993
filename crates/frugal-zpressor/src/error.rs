//! The errors bad input gets: each names the problem and the numbers involved, so a caller (or
//! the CLI) can print it and exit non-zero instead of panicking or computing something wrong.

/// What can be wrong with the input to ZPressor or with the weights it is given.
#[derive(Debug, thiserror::Error)]
pub enum ZpressorError {
    /// Asked for more anchors than there are views (farthest-point sampling would have to pick a
    /// view twice).
    #[error("fewer views than anchors: {views} input views cannot give {anchors} distinct anchor views (need views >= anchors >= 1)")]
    TooFewViews { views: usize, anchors: usize },
    /// An extrinsic matrix is not a rigid camera-to-world transform.
    #[error("non-rigid extrinsics: batch {batch}, view {view}: {reason}")]
    NonRigidExtrinsics {
        batch: usize,
        view: usize,
        reason: String,
    },
    /// A tensor's shape disagrees with what the configuration or the other inputs imply.
    #[error("shape mismatch: {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// The weights file lacks a parameter the configuration needs.
    #[error(
        "missing weight `{name}` (the configuration needs it; is the file for another config?)"
    )]
    MissingWeight { name: String },
    /// A configuration that cannot describe a module.
    #[error("invalid configuration: {0}")]
    Config(String),
}
