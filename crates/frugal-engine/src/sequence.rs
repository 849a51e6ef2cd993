//! The state of one sequence being processed: its cache policy, attention policy and length.

use crate::attention::{AttentionPolicy, Dense};
use crate::cache::device_store::DeviceKvStore;
use crate::cache::{CachePolicy, FullCache, KvDtype, KvLayout};
use crate::structure::TokenStructure;
use std::sync::Arc;

/// One sequence's KV cache, attention policy and number of tokens processed so far.
pub struct Sequence {
    pub cache: Box<dyn CachePolicy>,
    pub attention: Box<dyn AttentionPolicy>,
    /// Kind and chunk of each input token, for structure-aware policies (optional).
    pub structure: Option<Arc<TokenStructure>>,
    /// K/V of a model that runs on a compute device ([`crate::model::device_model`]), created
    /// by its first forward call; `None` on the host path.
    pub(crate) device_kv: Option<DeviceKvStore>,
    len: usize,
    peak_kv_bytes: usize,
}

impl Sequence {
    pub fn new(cache: Box<dyn CachePolicy>, attention: Box<dyn AttentionPolicy>) -> Self {
        Sequence {
            cache,
            attention,
            structure: None,
            device_kv: None,
            len: 0,
            peak_kv_bytes: 0,
        }
    }

    /// Continues after `len` tokens whose K/V `cache` already holds (e.g. a shared prefix
    /// computed once and cloned), with its own attention policy.
    pub fn resume(
        cache: Box<dyn CachePolicy>,
        attention: Box<dyn AttentionPolicy>,
        len: usize,
    ) -> Self {
        let peak_kv_bytes = cache.resident_bytes();
        Sequence {
            cache,
            attention,
            structure: None,
            device_kv: None,
            len,
            peak_kv_bytes,
        }
    }

    /// Full KV store (default dtype, f32) and dense attention: the reference configuration.
    pub fn dense(layout: KvLayout) -> Self {
        Sequence::new(Box::new(FullCache::new(layout)), Box::new(Dense))
    }

    /// As [`Sequence::dense`], with the store holding `dtype` (`F32`: exact keys and values).
    pub fn dense_with_dtype(layout: KvLayout, dtype: KvDtype) -> Self {
        Sequence::new(
            Box::new(FullCache::with_dtype(layout, dtype)),
            Box::new(Dense),
        )
    }

    /// Tokens processed so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
        self.peak_kv_bytes = self.peak_kv_bytes.max(self.kv_resident_bytes());
    }

    /// Bytes of K/V held now: the cache policy's, plus the device store's when the model runs
    /// on a compute device.
    pub fn kv_resident_bytes(&self) -> usize {
        self.cache.resident_bytes()
            + self
                .device_kv
                .as_ref()
                .map_or(0, DeviceKvStore::resident_bytes)
    }

    /// Largest KV footprint seen after any forward call, in bytes.
    pub fn peak_kv_bytes(&self) -> usize {
        self.peak_kv_bytes
    }

    /// What the policies gathered (the attention policy's report, with the cache policy's
    /// fields merged in), as one JSON object.
    pub fn report(&self) -> Option<String> {
        match (self.attention.report(), self.cache.report()) {
            (a, None) => a,
            (None, c) => c,
            (Some(a), Some(c)) => {
                let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
                match (parse(&a), parse(&c)) {
                    (
                        Some(serde_json::Value::Object(mut a)),
                        Some(serde_json::Value::Object(c)),
                    ) => {
                        a.extend(c);
                        Some(serde_json::Value::Object(a).to_string())
                    }
                    _ => Some(format!("{{\"attention\":{a},\"cache\":{c}}}")),
                }
            }
        }
    }

    pub fn reset(&mut self) {
        self.cache.reset();
        self.attention.reset();
        if let Some(kv) = &mut self.device_kv {
            kv.clear();
        }
        self.len = 0;
        self.peak_kv_bytes = 0;
    }
}
