//! The attention step and the attention-policy interface.
//!
//! An [`AttentionPolicy`] decides, per layer, which (query, key) paths exist beyond causality.
//! The step itself gathers one [`KvSlices`] view per KV head from the cache policy and runs the
//! numerics kernel, so every policy shares one kernel and the dense path stays the reference.

use crate::cache::CachePolicy;
use frugal_numerics::attention::{causal_attention, AttentionShape, KeyMask, KvSlices};

/// Decides which attention paths each layer computes.
pub trait AttentionPolicy: Send + Sync {
    /// The policy spec, e.g. `dense`.
    fn name(&self) -> String;
    /// Extra restriction on top of causality for `layer`; `None` means every causal path.
    fn mask(&self, layer: usize) -> Option<&dyn KeyMask>;
}

/// Every causal path in every layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dense;

impl AttentionPolicy for Dense {
    fn name(&self) -> String {
        "dense".into()
    }
    fn mask(&self, _layer: usize) -> Option<&dyn KeyMask> {
        None
    }
}

/// Runs attention for `layer`: `q` is `[T, n_heads, head_dim]` (RoPE applied) at `positions`.
pub fn attention_step(
    layer: usize,
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    cache: &dyn CachePolicy,
    policy: &dyn AttentionPolicy,
) -> Vec<f32> {
    let views: Vec<KvSlices<'_>> = (0..shape.n_kv_heads).map(|g| cache.view(layer, g)).collect();
    causal_attention(q, positions, &views, shape, policy.mask(layer))
}
