//! FPSAttention (arXiv 2506.04648; docs/methods/fps.md) as an attention policy:
//! a causal block window (the 1D, LLM-shaped form of the paper's tile-wise sparsity, as
//! docs/methods/fps.md reads it) and FP8 E4M3 fake quantisation of Q, K, V and P, emulated on the CPU with the
//! GPU kernel's granularity and order of operations (`frugal_numerics::fps_attention`).
//!
//! **Training-free, labelled as such.** The paper's quality claim rests on quantisation- and
//! sparsity-aware training; this policy applies both to a frozen model, so it measures what
//! that training would have to recover. It computes everything in f32 after rounding (it is a
//! quality emulation, not a speed path: the speed is the GPU kernel's, `docs/results/fps-kernel.md`).
//!
//! Knobs and defaults (ours where marked): `bm` 128 query tokens × `bn` 64 key tokens per block
//! (the GPU kernel's tile); `window` 16 key blocks ending at the query block's diagonal plus
//! `sink` 1 block [ours: the map our kernel benchmark uses for an 8k LLM shape at ~25 %
//! density; 0 = every block, i.e. FP8 alone]; `tile` 64 tokens per Q and K scale (the kernel's);
//! `qk`, `v`, `p` switch the quantisation of Q and K (per tile), V (per channel) and P (fixed
//! scale 448) — all on by default, all off with `window=0` reproduces dense attention.

use crate::policy::{configure, Component, KnobKind, PolicyConfig, PolicyEntry};
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, StepContext};
use frugal_numerics::attention::{AttentionShape, KeyMask, KvSlices};
use frugal_numerics::block_sparse::Fp8Opts;
use frugal_numerics::fps_attention::CausalBlockWindow;

crate::policy_config! {
    /// The block window and FP8 settings; the block and tile sizes are the GPU kernel's.
    pub struct FpsConfig {
        /// key blocks up to the diagonal each query block visits; 0 = all (FP8 only) [ours]
        pub window: usize = 16, KnobKind::Int { min: 0, max: 1 << 20 };
        /// key blocks at the start always visited [ours]
        pub sink: usize = 1, KnobKind::Int { min: 0, max: 1 << 20 };
        /// query block (tokens), the GPU kernel's
        pub bm: usize = 128, KnobKind::Int { min: 1, max: 1 << 16 };
        /// key block (tokens), the GPU kernel's
        pub bn: usize = 64, KnobKind::Int { min: 1, max: 1 << 16 };
        /// tokens per FP8 scale of Q and of K, the GPU kernel's
        pub tile: usize = 64, KnobKind::Int { min: 1, max: 1 << 16 };
        /// quantise Q and K to E4M3 per tile
        pub qk: bool = true, KnobKind::Switch;
        /// quantise V to E4M3 per channel
        pub v: bool = true, KnobKind::Switch;
        /// quantise P to E4M3 with the fixed scale 448
        pub p: bool = true, KnobKind::Switch;
    }
}

pub const FPS: PolicyEntry = PolicyEntry::new(
    "fps",
    "FPSAttention emulated on the CPU: causal block window (sink + last `window` key blocks) and FP8 E4M3 fake quantisation of Q, K, V, P (training-free)",
    FpsConfig::knobs,
    "fps:window=0,qk=0,v=0,p=0",
    |part, b| Ok(component(&configure(part)?, b.spec.clone())),
);

/// The policy: one block window and one quantisation setting for every layer.
pub struct Fps {
    spec: String,
    window: CausalBlockWindow,
    fp8: Option<Fp8Opts>,
}

impl AttentionPolicy for Fps {
    fn name(&self) -> String {
        self.spec.clone()
    }
    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        Some(Box::new(self.window))
    }
    fn plan<'a>(
        &'a mut self,
        _ctx: &StepContext<'a>,
        _q: &[f32],
        _positions: &[u32],
        _shape: AttentionShape,
        _kv: &[KvSlices<'_>],
    ) -> AttentionPlan<'a> {
        AttentionPlan::BlockWindow {
            window: self.window,
            fp8: self.fp8,
        }
    }
}

fn component(c: &FpsConfig, spec: String) -> Component {
    let fp8 = (c.qk || c.v || c.p).then_some(Fp8Opts {
        quant_qk: c.qk,
        quant_v: c.v,
        quant_p: c.p,
        q_tile: c.tile,
        k_tile: c.tile,
    });
    Component {
        cache: None,
        attention: Some(Box::new(Fps {
            spec,
            window: CausalBlockWindow {
                bm: c.bm,
                bn: c.bn,
                window: c.window,
                sink: c.sink,
            },
            fp8,
        })),
    }
}
