//! The attention step and the attention-policy interface.
//!
//! An [`AttentionPolicy`] decides, per layer, which (query, key) paths exist beyond causality.
//! The step itself gathers one [`KvSlices`] view per KV head from the cache policy and runs the
//! numerics kernel, so every policy shares one kernel and the dense path stays the reference.

use crate::cache::{CachePolicy, HeadView};
use crate::structure::TokenStructure;
use frugal_numerics::attention::{causal_attention, AttentionShape, KeyMask, KvSlices};

/// What a policy may look at when deciding a layer's attention paths.
#[derive(Clone, Copy, Debug)]
pub struct StepContext<'a> {
    pub layer: usize,
    pub n_layers: usize,
    /// Kind and chunk of every token of the input, when the caller provided them.
    pub structure: Option<&'a TokenStructure>,
}

/// Decides which attention paths each layer computes.
pub trait AttentionPolicy: Send + Sync {
    /// The policy spec, e.g. `dense`.
    fn name(&self) -> String;
    /// Extra restriction on top of causality for this step; `None` means every causal path.
    fn mask<'a>(&'a self, ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>>;
}

/// Every causal path in every layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dense;

impl AttentionPolicy for Dense {
    fn name(&self) -> String {
        "dense".into()
    }
    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        None
    }
}

/// Runs attention for `ctx.layer`: `q` is `[T, n_heads, head_dim]` (RoPE applied) at `positions`.
pub fn attention_step(
    ctx: &StepContext<'_>,
    q: &[f32],
    positions: &[u32],
    shape: AttentionShape,
    cache: &dyn CachePolicy,
    policy: &dyn AttentionPolicy,
) -> Vec<f32> {
    let views: Vec<HeadView<'_>> = (0..shape.n_kv_heads).map(|g| cache.view(ctx.layer, g)).collect();
    let slices: Vec<KvSlices<'_>> = views.iter().map(HeadView::slices).collect();
    let mask = policy.mask(ctx);
    causal_attention(q, positions, &slices, shape, mask.as_deref())
}
