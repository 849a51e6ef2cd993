//! The prefix cache: caches of prompt beginnings, kept so a later request that starts with the
//! same tokens under the same policy resumes from them instead of prefilling them again (what
//! llama.cpp's `cache_prompt` and vLLM's prefix caching do for a full cache).
//!
//! What is kept is the cache **as its policy holds it**, compressed where the policy
//! compresses ([`CachePolicy::fork`]), so a long document compressed once serves many
//! questions at the compressed size. One consequence is the point of the feature and worth
//! stating: a request resumed from a cached prefix got that prefix compressed without its
//! question in view (the policy saw only the document), so for a compressing policy its answer
//! may differ from a cold run, which compressed with the whole prompt. For `full` both paths
//! give the same answer. Policies whose cache cannot be copied (`fork` answers `None`) are
//! simply not cached.
//!
//! Prefixes are cut at multiples of a block (see [`crate::scheduler::snapshot_points`]), held
//! under a byte budget (each entry's bytes are its cache's resident bytes plus its token ids)
//! and evicted least-recently-used.

use frugal_engine::cache::CachePolicy;

struct Entry {
    policy: String,
    tokens: Vec<u32>,
    cache: Box<dyn CachePolicy>,
    bytes: usize,
    used: u64,
}

/// Cached prompt prefixes under a byte budget, least-recently-used evicted first.
pub struct PrefixCache {
    budget: usize,
    entries: Vec<Entry>,
    bytes: usize,
    clock: u64,
}

impl PrefixCache {
    /// A cache of at most `budget` bytes; 0 keeps nothing.
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            budget,
            entries: Vec::new(),
            bytes: 0,
            clock: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held now (never above the budget).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The longest cached prefix of `prompt` under `policy` that leaves at least one prompt
    /// token to run: its length and a copy of its cache for the request to continue.
    pub fn lookup(
        &mut self,
        policy: &str,
        prompt: &[u32],
    ) -> Option<(usize, Box<dyn CachePolicy>)> {
        let now = self.tick();
        let best = self
            .entries
            .iter_mut()
            .filter(|e| {
                e.policy == policy && e.tokens.len() < prompt.len() && prompt.starts_with(&e.tokens)
            })
            .max_by_key(|e| e.tokens.len())?;
        let copy = best.cache.fork()?;
        best.used = now;
        Some((best.tokens.len(), copy))
    }

    /// Keeps `cache`, the cache after `tokens` under `policy`, evicting the least recently used
    /// entries to make room. An entry larger than the whole budget is not kept; one already
    /// held is only marked as used.
    pub fn insert(&mut self, policy: &str, tokens: &[u32], cache: Box<dyn CachePolicy>) {
        let now = self.tick();
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.policy == policy && e.tokens == tokens)
        {
            e.used = now;
            return;
        }
        let bytes = cache.resident_bytes() + std::mem::size_of_val(tokens);
        if bytes > self.budget {
            return;
        }
        while self.bytes + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i)
            else {
                break;
            };
            let gone = self.entries.swap_remove(oldest);
            self.bytes -= gone.bytes;
        }
        self.bytes += bytes;
        self.entries.push(Entry {
            policy: policy.to_string(),
            tokens: tokens.to_vec(),
            cache,
            bytes,
            used: now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_engine::cache::{FullCache, KvDtype, KvLayout};

    fn cache_of(tokens: usize) -> Box<dyn CachePolicy> {
        let layout = KvLayout {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 2,
            dtype: KvDtype::default(),
        };
        let mut c = FullCache::with_dtype(layout, KvDtype::F32);
        for p in 0..tokens as u32 {
            c.store(0, &[p], &[p as f32, 0.0], &[0.0, p as f32]);
        }
        Box::new(c)
    }

    /// Bytes of an entry of `n` tokens: 4 floats and a position per token, and the token ids.
    fn entry_bytes(n: usize) -> usize {
        n * (4 * 4 + 4) + n * 4
    }

    #[test]
    fn the_longest_matching_prefix_of_the_same_policy_is_found() {
        let mut pc = PrefixCache::new(1 << 20);
        pc.insert("full", &[1, 2], cache_of(2));
        pc.insert("full", &[1, 2, 3, 4], cache_of(4));
        pc.insert("kivi", &[1, 2, 3, 4, 5], cache_of(5));
        let (n, c) = pc.lookup("full", &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!((n, c.resident_bytes()), (4, 4 * 20));
        assert_eq!(pc.lookup("full", &[1, 2, 3, 9]).unwrap().0, 2);
        assert!(
            pc.lookup("full", &[1, 2]).is_none(),
            "one prompt token must remain to be run"
        );
        assert!(pc.lookup("full", &[7, 1, 2, 3]).is_none());
        assert_eq!(pc.lookup("kivi", &[1, 2, 3, 4, 5, 0]).unwrap().0, 5);
    }

    #[test]
    fn entries_are_evicted_least_recently_used_within_the_budget() {
        let mut pc = PrefixCache::new(2 * entry_bytes(4));
        pc.insert("full", &[1, 1, 1, 1], cache_of(4));
        pc.insert("full", &[2, 2, 2, 2], cache_of(4));
        assert_eq!((pc.len(), pc.bytes()), (2, 2 * entry_bytes(4)));
        // Using the first makes the second the least recently used.
        assert!(pc.lookup("full", &[1, 1, 1, 1, 0]).is_some());
        pc.insert("full", &[3, 3, 3, 3], cache_of(4));
        assert_eq!(pc.len(), 2);
        assert!(pc.lookup("full", &[2, 2, 2, 2, 0]).is_none(), "evicted");
        assert!(pc.lookup("full", &[1, 1, 1, 1, 0]).is_some());
        assert!(pc.bytes() <= 2 * entry_bytes(4));
        pc.insert("full", &[9; 20], cache_of(20));
        assert!(pc.lookup("full", &[9; 21]).is_none(), "over the budget");
        let mut off = PrefixCache::new(0);
        off.insert("full", &[1, 1], cache_of(2));
        assert!(!off.enabled() && off.is_empty());
    }
}
