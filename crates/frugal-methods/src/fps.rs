//! FPSAttention (arXiv 2506.04648; papers/attention-kv-methods.md §3) as an attention policy:
//! a causal block window (the 1D, LLM-shaped form of the paper's tile-wise sparsity, §3.6 of
//! the brief) and FP8 E4M3 fake quantisation of Q, K, V and P, emulated on the CPU with the
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

use crate::registry::{Component, KnobInfo, KnobKind, Knobs, PolicyInfo};
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, StepContext};
use frugal_numerics::attention::{AttentionShape, KeyMask, KvSlices};
use frugal_numerics::block_sparse::Fp8Opts;
use frugal_numerics::fps_attention::CausalBlockWindow;

const SWITCH: KnobKind = KnobKind::Int { min: 0, max: 1 };

pub const INFO: PolicyInfo = PolicyInfo {
    name: "fps",
    doc: "FPSAttention emulated on the CPU: causal block window (sink + last `window` key blocks) and FP8 E4M3 fake quantisation of Q, K, V, P (training-free)",
    knobs: &[
        KnobInfo { name: "window", kind: KnobKind::Int { min: 0, max: 1 << 20 }, default: "16", doc: "key blocks up to the diagonal each query block visits; 0 = all (FP8 only) [ours]" },
        KnobInfo { name: "sink", kind: KnobKind::Int { min: 0, max: 1 << 20 }, default: "1", doc: "key blocks at the start always visited [ours]" },
        KnobInfo { name: "bm", kind: KnobKind::Int { min: 1, max: 1 << 16 }, default: "128", doc: "query block (tokens), the GPU kernel's" },
        KnobInfo { name: "bn", kind: KnobKind::Int { min: 1, max: 1 << 16 }, default: "64", doc: "key block (tokens), the GPU kernel's" },
        KnobInfo { name: "tile", kind: KnobKind::Int { min: 1, max: 1 << 16 }, default: "64", doc: "tokens per FP8 scale of Q and of K, the GPU kernel's" },
        KnobInfo { name: "qk", kind: SWITCH, default: "1", doc: "quantise Q and K to E4M3 per tile" },
        KnobInfo { name: "v", kind: SWITCH, default: "1", doc: "quantise V to E4M3 per channel" },
        KnobInfo { name: "p", kind: SWITCH, default: "1", doc: "quantise P to E4M3 with the fixed scale 448" },
    ],
    keep_everything: "fps:window=0,qk=0,v=0,p=0",
};

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
        &'a self,
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

pub(crate) fn component(knobs: &Knobs<'_>, spec: String) -> Component {
    let tile = knobs.usize("tile");
    let (qk, v, p) = (
        knobs.usize("qk") == 1,
        knobs.usize("v") == 1,
        knobs.usize("p") == 1,
    );
    let fp8 = (qk || v || p).then_some(Fp8Opts {
        quant_qk: qk,
        quant_v: v,
        quant_p: p,
        q_tile: tile,
        k_tile: tile,
    });
    Component {
        cache: None,
        attention: Some(Box::new(Fps {
            spec,
            window: CausalBlockWindow {
                bm: knobs.usize("bm"),
                bn: knobs.usize("bn"),
                window: knobs.usize("window"),
                sink: knobs.usize("sink"),
            },
            fp8,
        })),
    }
}
