//! StreamingLLM-style cache (Xiao et al., 2023): keep the first `sink` tokens and the most
//! recent `window` tokens, evict the rest. A baseline for the KV-compression methods.
//!
//! Our choices (labelled): keys keep the RoPE rotation of their original position (no
//! re-rotation into cache slots, as kvpress and most eviction baselines do); within one
//! prefill call the window is enforced by a mask (each query sees the sinks and the `window`
//! keys before it), and keys no later query can see are freed from the store when the next
//! call arrives, so resident bytes really drop.

use crate::policy::{configure, Component, KnobKind, PolicyConfig, PolicyEntry};
use frugal_engine::attention::{AttentionPolicy, StepContext};
use frugal_engine::cache::{CachePolicy, HeadView, KvLayout, KvStore};
use frugal_numerics::attention::KeyMask;

crate::policy_config! {
    /// StreamingLLM's cache: the paper's setting is 4 sinks and a recent window.
    pub struct StreamingConfig {
        /// first tokens always kept
        pub sink: u32 = 4, KnobKind::Int { min: 0, max: 1 << 20 };
        /// most recent tokens kept (ours: 1024; the paper sweeps the cache size)
        pub window: u32 = 1024, KnobKind::Int { min: 1, max: 1 << 20 };
    }
}

pub const STREAMING: PolicyEntry = PolicyEntry::new(
    "streaming",
    "attention sinks + recent window (StreamingLLM); everything else is evicted",
    StreamingConfig::knobs,
    "streaming:sink=0,window=1048576",
    |part, b| Ok(component(&configure(part)?, b.layout)),
);

#[derive(Clone, Copy, Debug)]
struct Window {
    sink: u32,
    window: u32,
}

impl Window {
    fn visible(&self, q_pos: u32, k_pos: u32) -> bool {
        k_pos < self.sink || q_pos - k_pos.min(q_pos) < self.window
    }
}

impl KeyMask for Window {
    fn allows(&self, _q_head: usize, q_pos: u32, k_pos: u32) -> bool {
        self.visible(q_pos, k_pos)
    }
}

struct StreamingCache {
    store: KvStore,
    w: Window,
}

impl CachePolicy for StreamingCache {
    fn name(&self) -> String {
        format!("streaming:sink={},window={}", self.w.sink, self.w.window)
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        // Keys invisible to the first new query are invisible to every later one.
        if let Some(&first) = positions.first() {
            let w = self.w;
            for g in 0..self.store.layout().n_kv_heads {
                self.store
                    .head_mut(layer, g)
                    .retain(|p| w.visible(first, p));
            }
        }
        self.store.append_layer(layer, positions, k, v);
    }

    fn view(&self, layer: usize, kv_head: usize) -> HeadView<'_> {
        HeadView::borrowed(self.store.head(layer, kv_head).view())
    }

    fn half_rows(
        &self,
        layer: usize,
        kv_head: usize,
    ) -> Option<frugal_numerics::half_attention::HalfKv<'_>> {
        self.store.head(layer, kv_head).half_rows()
    }

    fn resident_bytes(&self) -> usize {
        self.store.resident_bytes()
    }

    fn reset(&mut self) {
        self.store.clear();
    }

    /// On a sliding-window layer the window drops what the sinks and the streaming window
    /// would keep: the store frees it as the full store does.
    fn forget_before(&mut self, layer: usize, position: u32) {
        self.store.forget_before(layer, position);
    }
}

struct StreamingMask {
    w: Window,
}

impl AttentionPolicy for StreamingMask {
    fn name(&self) -> String {
        "streaming".into()
    }
    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        Some(Box::new(self.w))
    }
}

fn component(cfg: &StreamingConfig, layout: KvLayout) -> Component {
    let w = Window {
        sink: cfg.sink,
        window: cfg.window,
    };
    Component {
        cache: Some(Box::new(StreamingCache {
            store: KvStore::new(layout),
            w,
        })),
        attention: Some(Box::new(StreamingMask { w })),
    }
}
