//! The cache half of OmniSparse: the KV store, and the eviction rules applied to what the
//! attention half found (head-level slimming at decode, token-level drops after a prefill).

use super::Config;
use frugal_engine::attention::Findings;
use frugal_engine::cache::{CachePolicy, HeadView, KvLayout, KvStore};
use std::sync::Arc;

/// What the attention half found in one layer's step for the cache half (through the
/// engine's findings hook, never shared state).
pub(super) struct OmniFindings {
    /// The long-context span, when this step (re)defined it.
    pub(super) span: Option<Arc<Vec<bool>>>,
    /// Span mass of the step's last token per KV head of the layer (axis 3).
    pub(super) mass: Vec<f32>,
    /// Span rows each KV head of the layer frees before the next call (axis 4), ascending.
    pub(super) drops: Option<Vec<Vec<u32>>>,
}

/// The cache half: the store, and the eviction rules applied to what attention found.
pub(super) struct OmniCache {
    name: String,
    store: KvStore,
    cfg: Config,
    span: Arc<Vec<bool>>,
    /// Largest span mass since the last check, per (layer, KV head); `None` = not observed.
    mass: Vec<Option<f32>>,
    slimmed: Vec<bool>,
    decode_step: usize,
    /// Span positions each (layer, KV head) frees before the next call stores (ascending).
    pending_drop: Vec<Vec<u32>>,
}

impl OmniCache {
    pub(super) fn new(name: String, cfg: Config, layout: KvLayout) -> Self {
        let heads = layout.n_layers * layout.n_kv_heads;
        OmniCache {
            name,
            store: KvStore::new(layout),
            cfg,
            span: Arc::default(),
            mass: vec![None; heads],
            slimmed: vec![false; heads],
            decode_step: 0,
            pending_drop: vec![Vec::new(); heads],
        }
    }
}

impl CachePolicy for OmniCache {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        let n_kv = self.store.layout().n_kv_heads;
        if self.cfg.slim.is_some() {
            for g in 0..n_kv {
                let drop = std::mem::take(&mut self.pending_drop[layer * n_kv + g]);
                if !drop.is_empty() {
                    self.store
                        .head_mut(layer, g)
                        .retain(|p| drop.binary_search(&p).is_err());
                }
            }
        }
        if self.cfg.eps > 0.0 && positions.len() == 1 && !self.store.head(layer, 0).is_empty() {
            if layer == 0 {
                self.decode_step += 1;
            }
            if (self.decode_step - 1).is_multiple_of(self.cfg.recheck) {
                for g in 0..n_kv {
                    let i = layer * n_kv + g;
                    if !self.slimmed[i] && self.mass[i].is_some_and(|m| m < self.cfg.eps) {
                        let span = &self.span;
                        self.store
                            .head_mut(layer, g)
                            .retain(|p| !span.get(p as usize).copied().unwrap_or(false));
                        self.slimmed[i] = true;
                    }
                    self.mass[i] = None;
                }
            }
        }
        self.store.append_layer(layer, positions, k, v);
    }

    fn observe(&mut self, layer: usize, findings: Findings) {
        let Ok(f) = findings.downcast::<OmniFindings>() else {
            return;
        };
        let n_kv = self.store.layout().n_kv_heads;
        if let Some(span) = f.span {
            self.span = span;
        }
        for (g, &m) in f.mass.iter().enumerate() {
            let i = layer * n_kv + g;
            if !self.slimmed[i] {
                self.mass[i] = Some(self.mass[i].map_or(m, |x| x.max(m)));
            }
        }
        if let Some(drops) = f.drops {
            for (g, d) in drops.into_iter().enumerate() {
                self.pending_drop[layer * n_kv + g] = d;
            }
        }
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
        *self = OmniCache::new(self.name.clone(), self.cfg.clone(), self.store.layout());
    }

    /// Keys a sliding window drops are freed as the full store frees them; what is pending or
    /// observed is kept by position, so it stays valid for the rows that remain.
    fn forget_before(&mut self, layer: usize, position: u32) {
        self.store.forget_before(layer, position);
    }

    fn report(&self) -> Option<String> {
        Some(format!(
            "{{\"slimmed_heads\":{},\"heads\":{}}}",
            self.slimmed.iter().filter(|&&s| s).count(),
            self.slimmed.len()
        ))
    }
}
