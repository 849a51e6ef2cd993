//! The KV store: keys and values laid out per (layer, KV head), each head with its own token
//! list, so a head may drop tokens that another head keeps (holes). Every byte it holds is
//! counted from the buffers themselves.
//!
//! A [`CachePolicy`] owns how a layer's new K/V are kept (in full, merged, quantised, evicted)
//! and hands the attention step one [`KvSlices`] view per KV head. [`FullCache`] keeps
//! everything and is the reference every compressing policy is measured against.

pub mod device_store;

use crate::attention::Findings;
use frugal_numerics::attention::{KvSlices, RowPatch};
use frugal_numerics::half_attention::HalfKv;
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::borrow::Cow;

/// What attention reads for one (layer, KV head): borrowed from the store where the data is
/// held as attention needs it, owned where the policy must first decode it (e.g. dequantise).
/// Optional per-row scales carry magnitudes stored apart from unit directions.
#[derive(Clone, Debug)]
pub struct HeadView<'a> {
    pub keys: Cow<'a, [f32]>,
    pub values: Cow<'a, [f32]>,
    pub positions: Cow<'a, [u32]>,
    pub key_scale: Option<Cow<'a, [f32]>>,
    pub value_scale: Option<Cow<'a, [f32]>>,
    /// Rows given in full apart from the shared rows (see [`RowPatch`]).
    pub key_patch: Option<PatchView<'a>>,
    pub value_patch: Option<PatchView<'a>>,
}

/// A view's row patch: `(row indices, data)`, borrowed or decoded.
pub type PatchView<'a> = (Cow<'a, [u32]>, Cow<'a, [f32]>);

impl<'a> From<KvSlices<'a>> for HeadView<'a> {
    fn from(s: KvSlices<'a>) -> Self {
        HeadView {
            keys: Cow::Borrowed(s.keys),
            values: Cow::Borrowed(s.values),
            positions: Cow::Borrowed(s.positions),
            key_scale: s.key_scale.map(Cow::Borrowed),
            value_scale: s.value_scale.map(Cow::Borrowed),
            key_patch: s
                .key_patch
                .map(|p| (Cow::Borrowed(p.rows), Cow::Borrowed(p.data))),
            value_patch: s
                .value_patch
                .map(|p| (Cow::Borrowed(p.rows), Cow::Borrowed(p.data))),
        }
    }
}

impl<'a> HeadView<'a> {
    /// A view of borrowed slices, or an already-built view (what [`HeadStore::view`] gives)
    /// passed through.
    pub fn borrowed(s: impl Into<HeadView<'a>>) -> Self {
        s.into()
    }

    pub fn slices(&self) -> KvSlices<'_> {
        KvSlices {
            keys: &self.keys,
            values: &self.values,
            positions: &self.positions,
            key_scale: self.key_scale.as_deref(),
            value_scale: self.value_scale.as_deref(),
            key_patch: self
                .key_patch
                .as_ref()
                .map(|(r, d)| RowPatch { rows: r, data: d }),
            value_patch: self
                .value_patch
                .as_ref()
                .map(|(r, d)| RowPatch { rows: r, data: d }),
        }
    }
}

/// Ascending token positions held as runs of consecutive positions `(first, count)`: a head
/// holding one contiguous span costs 8 bytes instead of 4 per token. For stores whose views are
/// decoded into owned rows anyway (quantised, merged), where expanding the list per view is
/// cheap next to dequantising the rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PositionRuns {
    runs: Vec<(u32, u32)>,
    len: usize,
}

impl PositionRuns {
    /// Appends positions (ascending, after every position already held).
    pub fn extend(&mut self, positions: &[u32]) {
        for &p in positions {
            match self.runs.last_mut() {
                Some((first, count)) if *first + *count == p => *count += 1,
                _ => self.runs.push((p, 1)),
            }
        }
        self.len += positions.len();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every position, ascending.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len);
        for &(first, count) in &self.runs {
            out.extend(first..first + count);
        }
        out
    }

    /// Drops the first `n` positions (all of them if fewer are held).
    pub fn drop_front(&mut self, n: usize) {
        let mut left = n.min(self.len);
        self.len -= left;
        let mut whole = 0;
        for (first, count) in self.runs.iter_mut() {
            if left == 0 {
                break;
            }
            let take = left.min(*count as usize);
            left -= take;
            if take == *count as usize {
                whole += 1;
            } else {
                *first += take as u32;
                *count -= take as u32;
            }
        }
        self.runs.drain(..whole);
    }

    /// How many held positions lie before `position`.
    pub fn count_before(&self, position: u32) -> usize {
        self.runs
            .iter()
            .map(|&(first, count)| position.saturating_sub(first).min(count) as usize)
            .sum()
    }

    pub fn resident_bytes(&self) -> usize {
        8 * self.runs.len()
    }
}

/// Dimensions of a model's KV cache, and the dtype its stores hold keys and values in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// What every store built from this layout holds (a policy with its own row format, e.g.
    /// KIVI, sets the width of its unquantised rows with its own knob).
    pub dtype: KvDtype,
}

/// How the KV store holds keys and values.
///
/// `F16`, the default, holds half the memory of f32 and is what llama.cpp keeps by default.
/// Each stored value is rounded to 11 significant bits (relative error ≤ 2⁻¹¹); attention
/// reads them back as f32, so scores and sums stay in f32. `F32` keeps them exact (`--kv-dtype
/// f32`), for golden comparisons and for measuring what the rounding costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F16,
    F32,
}

impl KvDtype {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" => Ok(KvDtype::F16),
            "f32" => Ok(KvDtype::F32),
            other => Err(format!("unknown KV dtype `{other}` (expected f16 or f32)")),
        }
    }
}

/// Rows of keys or values in the store's dtype.
#[derive(Clone, Debug)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Rows {
    fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => Rows::F32(Vec::new()),
            KvDtype::F16 => Rows::F16(Vec::new()),
        }
    }
    fn dtype(&self) -> KvDtype {
        match self {
            Rows::F32(_) => KvDtype::F32,
            Rows::F16(_) => KvDtype::F16,
        }
    }
    fn len(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
        }
    }
    fn capacity(&self) -> usize {
        match self {
            Rows::F32(v) => v.capacity(),
            Rows::F16(v) => v.capacity(),
        }
    }
    fn extend(&mut self, x: &[f32]) {
        match self {
            Rows::F32(v) => v.extend_from_slice(x),
            Rows::F16(v) => {
                let start = v.len();
                v.resize(start + x.len(), f16::ZERO);
                v[start..].convert_from_f32_slice(x);
            }
        }
    }
    fn copy_within(&mut self, src: std::ops::Range<usize>, dst: usize) {
        match self {
            Rows::F32(v) => v.copy_within(src, dst),
            Rows::F16(v) => v.copy_within(src, dst),
        }
    }
    fn truncate_and_shrink(&mut self, n: usize) {
        match self {
            Rows::F32(v) => {
                v.truncate(n);
                v.shrink_to_fit();
            }
            Rows::F16(v) => {
                v.truncate(n);
                v.shrink_to_fit();
            }
        }
    }
    fn reserve_exact(&mut self, n: usize) {
        match self {
            Rows::F32(v) => v.reserve_exact(n),
            Rows::F16(v) => v.reserve_exact(n),
        }
    }
    /// As f32: borrowed when stored as f32, decoded otherwise.
    fn as_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Rows::F32(v) => Cow::Borrowed(v),
            Rows::F16(v) => Cow::Owned(frugal_numerics::half_rows::f16_to_f32_vec(v)),
        }
    }
}

/// Keys, values and token positions of one (layer, KV head), positions ascending.
#[derive(Clone, Debug)]
pub struct HeadStore {
    keys: Rows,
    values: Rows,
    positions: Vec<u32>,
}

impl Default for HeadStore {
    /// An empty store of the default dtype ([`KvDtype::F16`]).
    fn default() -> Self {
        HeadStore::new(KvDtype::default())
    }
}

impl HeadStore {
    pub fn new(dtype: KvDtype) -> Self {
        HeadStore {
            keys: Rows::new(dtype),
            values: Rows::new(dtype),
            positions: Vec::new(),
        }
    }

    pub fn dtype(&self) -> KvDtype {
        self.keys.dtype()
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The rows as held, when they are f16: what the dense kernel reads without decoding.
    pub fn half_rows(&self) -> Option<HalfKv<'_>> {
        match (&self.keys, &self.values) {
            (Rows::F16(k), Rows::F16(v)) => Some(HalfKv {
                keys: k,
                values: v,
                positions: &self.positions,
            }),
            _ => None,
        }
    }

    /// What attention reads: the rows as f32, borrowed from an f32 store, decoded from f16.
    pub fn view(&self) -> HeadView<'_> {
        HeadView {
            keys: self.keys.as_f32(),
            values: self.values.as_f32(),
            positions: Cow::Borrowed(&self.positions),
            key_scale: None,
            value_scale: None,
            key_patch: None,
            value_patch: None,
        }
    }

    /// Appends rows; `positions` must come after every position already held.
    pub fn push(&mut self, positions: &[u32], keys: &[f32], values: &[f32]) {
        debug_assert!(
            self.positions
                .last()
                .zip(positions.first())
                .is_none_or(|(a, b)| a < b),
            "positions must stay ascending"
        );
        self.keys.extend(keys);
        self.values.extend(values);
        self.positions.extend_from_slice(positions);
    }

    /// Bytes of the rows held (keys and values at their dtype's width, and positions).
    pub fn resident_bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * self.dtype().bytes()
            + std::mem::size_of_val(self.positions.as_slice())
    }

    /// Bytes allocated, including growth headroom not yet filled.
    pub fn allocated_bytes(&self) -> usize {
        (self.keys.capacity() + self.values.capacity()) * self.dtype().bytes()
            + self.positions.capacity() * 4
    }

    /// Drops every row (and its memory), keeping the dtype.
    pub fn clear(&mut self) {
        *self = HeadStore::new(self.dtype());
    }

    /// Keeps only the rows whose position satisfies `keep`, and returns the freed memory to
    /// the allocator, so resident and allocated bytes both drop.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let d = if self.positions.is_empty() {
            0
        } else {
            self.keys.len() / self.positions.len()
        };
        let mut w = 0;
        for r in 0..self.positions.len() {
            if keep(self.positions[r]) {
                if w != r {
                    self.positions[w] = self.positions[r];
                    self.keys.copy_within(r * d..(r + 1) * d, w * d);
                    self.values.copy_within(r * d..(r + 1) * d, w * d);
                }
                w += 1;
            }
        }
        if w < self.positions.len() {
            self.positions.truncate(w);
            self.positions.shrink_to_fit();
            self.keys.truncate_and_shrink(w * d);
            self.values.truncate_and_shrink(w * d);
        }
    }

    /// Reserves room for `extra` more rows of `head_dim` floats, exactly (prefill knows its size).
    pub fn reserve_exact(&mut self, extra: usize, head_dim: usize) {
        self.keys.reserve_exact(extra * head_dim);
        self.values.reserve_exact(extra * head_dim);
        self.positions.reserve_exact(extra);
    }
}

/// One [`HeadStore`] per (layer, KV head).
#[derive(Clone, Debug)]
pub struct KvStore {
    layout: KvLayout,
    heads: Vec<HeadStore>,
}

impl KvStore {
    /// An empty store holding the layout's dtype.
    pub fn new(layout: KvLayout) -> Self {
        KvStore {
            layout,
            heads: vec![HeadStore::new(layout.dtype); layout.n_layers * layout.n_kv_heads],
        }
    }

    /// An empty store holding `dtype` whatever the layout says.
    pub fn with_dtype(layout: KvLayout, dtype: KvDtype) -> Self {
        KvStore::new(KvLayout { dtype, ..layout })
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Drops `layer`'s rows before `position` once [`FORGET_SLACK`] of them have piled up
    /// (what [`CachePolicy::forget_before`] asks of a store on a sliding-window layer).
    pub fn forget_before(&mut self, layer: usize, position: u32) {
        for g in 0..self.layout.n_kv_heads {
            let head = self.head_mut(layer, g);
            if head.positions.partition_point(|&p| p < position) >= FORGET_SLACK {
                head.retain(|p| p >= position);
            }
        }
    }

    pub fn head(&self, layer: usize, kv_head: usize) -> &HeadStore {
        &self.heads[layer * self.layout.n_kv_heads + kv_head]
    }

    pub fn head_mut(&mut self, layer: usize, kv_head: usize) -> &mut HeadStore {
        &mut self.heads[layer * self.layout.n_kv_heads + kv_head]
    }

    /// Stores a layer's new K/V, given token-major `[T, n_kv_heads, head_dim]`.
    pub fn append_layer(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        let KvLayout {
            n_kv_heads,
            head_dim: d,
            ..
        } = self.layout;
        let t = positions.len();
        assert_eq!(k.len(), t * n_kv_heads * d);
        assert_eq!(v.len(), t * n_kv_heads * d);
        let mut kh = Vec::with_capacity(t * d);
        let mut vh = Vec::with_capacity(t * d);
        for g in 0..n_kv_heads {
            kh.clear();
            vh.clear();
            for tok in 0..t {
                let off = (tok * n_kv_heads + g) * d;
                kh.extend_from_slice(&k[off..off + d]);
                vh.extend_from_slice(&v[off..off + d]);
            }
            let head = self.head_mut(layer, g);
            if t > 1 {
                head.reserve_exact(t, d);
            }
            head.push(positions, &kh, &vh);
        }
    }

    pub fn resident_bytes(&self) -> usize {
        self.heads.iter().map(HeadStore::resident_bytes).sum()
    }

    pub fn allocated_bytes(&self) -> usize {
        self.heads.iter().map(HeadStore::allocated_bytes).sum()
    }

    pub fn clear(&mut self) {
        self.heads.iter_mut().for_each(HeadStore::clear);
    }
}

/// How a layer's K/V are kept, and what attention reads back. `Sync` so that a step's views
/// (one per KV head; an f16 or quantised store decodes its rows into them) are built in
/// parallel.
pub trait CachePolicy: Send + Sync {
    /// The policy spec, e.g. `full`.
    fn name(&self) -> String;
    /// Receives a layer's new K/V (token-major `[T, n_kv_heads, head_dim]`, RoPE applied).
    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]);
    /// What attention reads for (layer, KV head).
    fn view(&self, layer: usize, kv_head: usize) -> HeadView<'_>;
    /// The (layer, KV head) rows exactly as an f16 store holds them, for the dense kernel to
    /// read in place; `None` (the default) where the policy's view is anything else (decoded,
    /// merged, scaled), and attention then reads [`CachePolicy::view`].
    fn half_rows(&self, _layer: usize, _kv_head: usize) -> Option<HalfKv<'_>> {
        None
    }
    /// Bytes held for K/V right now, counted from the buffers.
    fn resident_bytes(&self) -> usize;
    /// Drops everything (a new sequence starts).
    fn reset(&mut self);
    /// Receives what this policy's attention half found in `layer`'s step (see
    /// [`Findings`]); the default ignores it.
    fn observe(&mut self, _layer: usize, _findings: Findings) {}
    /// Statistics the policy gathered so far, as one JSON object; `None` for none.
    fn report(&self) -> Option<String> {
        None
    }
    /// No later query of `layer` will read keys at positions before `position` (a
    /// sliding-window layer: the model says so after each call). A policy may free them; the
    /// default keeps them, which stays correct because the attention step enforces the window,
    /// but then [`CachePolicy::resident_bytes`] counts keys no query can use.
    fn forget_before(&mut self, _layer: usize, _position: u32) {}
    /// A deep copy of everything the policy holds, as it holds it (compressed where it
    /// compresses), from which another sequence can continue: what a prefix cache keeps to
    /// resume later requests that share the prompt's beginning. `None` (the default) when the
    /// policy cannot be copied; such requests then prefill their whole prompt.
    fn fork(&self) -> Option<Box<dyn CachePolicy>> {
        None
    }
}

/// Rows a sliding-window layer lets pile up beyond its window before [`FullCache`] compacts
/// them away (ours): dropping one row per decode step would move the whole window each step.
pub const FORGET_SLACK: usize = 32;

/// Keeps every token of every head at full precision: the dense reference.
#[derive(Clone, Debug)]
pub struct FullCache {
    store: KvStore,
}

impl FullCache {
    /// The full store at the layout's dtype.
    pub fn new(layout: KvLayout) -> Self {
        FullCache {
            store: KvStore::new(layout),
        }
    }

    /// The full store at `dtype` (`F32` keeps keys and values exact).
    pub fn with_dtype(layout: KvLayout, dtype: KvDtype) -> Self {
        FullCache {
            store: KvStore::with_dtype(layout, dtype),
        }
    }

    pub fn store_ref(&self) -> &KvStore {
        &self.store
    }
}

impl CachePolicy for FullCache {
    fn name(&self) -> String {
        "full".into()
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        self.store.append_layer(layer, positions, k, v);
    }

    fn view(&self, layer: usize, kv_head: usize) -> HeadView<'_> {
        self.store.head(layer, kv_head).view()
    }

    fn half_rows(&self, layer: usize, kv_head: usize) -> Option<HalfKv<'_>> {
        self.store.head(layer, kv_head).half_rows()
    }

    fn resident_bytes(&self) -> usize {
        self.store.resident_bytes()
    }

    fn reset(&mut self) {
        self.store.clear();
    }

    fn fork(&self) -> Option<Box<dyn CachePolicy>> {
        Some(Box::new(self.clone()))
    }

    fn forget_before(&mut self, layer: usize, position: u32) {
        self.store.forget_before(layer, position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_runs_round_trip_and_cost_one_pair_per_run() {
        let mut r = PositionRuns::default();
        r.extend(&[0, 1, 2]);
        r.extend(&[3, 4]);
        assert_eq!(r.resident_bytes(), 8, "one contiguous span is one run");
        r.extend(&[9, 10, 12]);
        assert_eq!(r.to_vec(), vec![0, 1, 2, 3, 4, 9, 10, 12]);
        assert_eq!((r.len(), r.resident_bytes()), (8, 24));
    }

    #[test]
    fn position_runs_drop_from_the_front_across_runs() {
        let mut r = PositionRuns::default();
        r.extend(&[0, 1, 2, 5, 6, 9]);
        assert_eq!(r.count_before(6), 4);
        assert_eq!(r.count_before(100), 6);
        r.drop_front(4);
        assert_eq!(r.to_vec(), vec![6, 9]);
        assert_eq!((r.len(), r.resident_bytes()), (2, 16));
        r.drop_front(10);
        assert!(r.is_empty());
        assert_eq!(r.resident_bytes(), 0);
    }

    #[test]
    fn append_splits_heads_and_counts_bytes() {
        let layout = KvLayout {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 3,
            dtype: KvDtype::default(),
        };
        let mut store = KvStore::with_dtype(layout, KvDtype::F32);
        // Two tokens; value = 100*token + 10*head + dim.
        let k: Vec<f32> = (0..2)
            .flat_map(|t| {
                (0..2).flat_map(move |g| (0..3).map(move |i| (100 * t + 10 * g + i) as f32))
            })
            .collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        store.append_layer(1, &[0, 1], &k, &v);
        let head1 = store.head(1, 1).view();
        assert_eq!(&*head1.keys, &[10.0, 11.0, 12.0, 110.0, 111.0, 112.0]);
        assert_eq!(head1.values[3], -110.0);
        assert_eq!(&*head1.positions, &[0, 1]);
        assert!(store.head(0, 0).is_empty());
        // 2 heads × 2 tokens × (3 keys + 3 values) × 4 bytes + 2 heads × 2 positions × 4 bytes.
        assert_eq!(store.resident_bytes(), 2 * 2 * 6 * 4 + 2 * 2 * 4);
        store.head_mut(1, 1).retain(|p| p == 1);
        assert_eq!(&*store.head(1, 1).view().keys, &[110.0, 111.0, 112.0]);
        assert_eq!(&*store.head(1, 1).view().positions, &[1]);
        assert_eq!(store.head(1, 0).len(), 2, "other heads keep their tokens");
        assert_eq!(store.resident_bytes(), (2 + 1) * (6 * 4 + 4));
        store.clear();
        assert_eq!(store.resident_bytes(), 0);
        assert_eq!(store.allocated_bytes(), 0);
    }

    #[test]
    fn f16_store_holds_two_bytes_a_value_and_rounds_to_half_precision() {
        let layout = KvLayout {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 4,
            dtype: KvDtype::default(),
        };
        let mut full = FullCache::with_dtype(layout, KvDtype::F16);
        let k = [1.0f32, -2.5, 0.1, 1000.3];
        let v = [3.0f32, 1e-3, -7.75, 65504.0];
        full.store(0, &[0], &k, &v);
        assert_eq!(full.store_ref().head(0, 0).dtype(), KvDtype::F16);
        assert_eq!(full.resident_bytes(), 2 * 4 * 2 + 4);
        let view = full.view(0, 0);
        for (got, want) in view
            .keys
            .iter()
            .chain(view.values.iter())
            .zip(k.iter().chain(&v))
        {
            assert!(
                (got - want).abs() <= want.abs() * 2f32.powi(-11),
                "{got} vs {want}"
            );
        }
        assert_ne!(view.keys[2], 0.1, "0.1 is not exact in f16");
        let mut exact = FullCache::with_dtype(layout, KvDtype::F32);
        exact.store(0, &[0], &k, &v);
        assert_eq!(&*exact.view(0, 0).keys, &k);
        assert_eq!(exact.resident_bytes(), 4 * 4 * 2 + 4);
        exact.reset();
        exact.store(0, &[5], &k, &v);
        assert_eq!(
            exact.store_ref().head(0, 0).dtype(),
            KvDtype::F32,
            "reset keeps the dtype"
        );
    }
}
