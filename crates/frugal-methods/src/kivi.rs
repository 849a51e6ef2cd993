//! KIVI-style KV quantisation (Liu et al., ICML 2024, "KIVI: a tuning-free asymmetric 2bit
//! quantization for KV cache"): keys are quantised per channel (each channel of a block of
//! `group` tokens shares one scale and minimum), values per token (each run of `group` channels of
//! one token shares them), and the most recent tokens stay in full precision.
//!
//! Two things live here: [`QuantRows`], a row stream in a [`RowFormat`] (used by the `kivi` policy
//! and, as a storage format, underneath MiniCache: `minicache+kivi:bits=4`), and the `kivi` cache
//! policy itself.
//!
//! Paper defaults: `bits=2` (KIVI-2), `group=32`, `residual=128` (KIVI's R). Our choices
//! (labelled): a block of `group` tokens is quantised once at least `residual + group` tokens sit
//! in full precision, so the newest `residual`..`residual+group−1` tokens are always exact (KIVI
//! flushes its key residual when it reaches R); scales and minima are f16; full-precision rows
//! are f16 by default (`fp=16`: KIVI's models run in fp16, so its "full precision" is fp16, and
//! the compression ratio is measured against an f16 cache), or f32 with `fp=32` (exact in
//! frugal's f32 engine); token positions are kept as runs of consecutive positions
//! ([`PositionRuns`]); attention reads an owned dequantised copy (no fused integer kernel on the
//! CPU path).

use crate::policy::{configure, Component, KnobKind, PolicyConfig, PolicyEntry};
pub use crate::policy::RowFormat;
use crate::spec::{PartSpec, SpecError};
use frugal_engine::cache::{CachePolicy, HeadView, KvLayout, PositionRuns, FORGET_SLACK};
use frugal_numerics::kivi::{
    code_at, group_params, packed_len, quantize_strided, range_strided, supported_bits, GroupParams,
};
use half::f16;
use std::borrow::Cow;

crate::policy_config! {
    /// KIVI's quantisation; the defaults are the paper's KIVI-2.
    pub struct KiviConfig {
        /// code width: 1, 2, 4 or 8 (paper: 2 and 4); of keys and values unless `vbits` is set
        pub bits: u32 = 2, KnobKind::Int { min: 1, max: 8 };
        /// code width of values, 0 for the same as `bits` (ours: the paper quantises keys and
        /// values alike, but notes that keys, with their outlier channels, are the harder half;
        /// `bits=4,vbits=2` spends the bits where the error is)
        pub vbits: u32 = 0, KnobKind::Int { min: 0, max: 8 };
        /// group size: tokens per key group, channels per value group (paper: 32)
        pub group: usize = 32, KnobKind::Int { min: 1, max: 4096 };
        /// channels per value group, 0 for the same as `group` (ours: a whole head's channels
        /// under one scale halves the value groups' overhead at the head size 64)
        pub vgroup: usize = 0, KnobKind::Int { min: 0, max: 4096 };
        /// recent tokens kept in full precision (paper: 128)
        pub residual: usize = 128, KnobKind::Int { min: 0, max: 1 << 20 };
        /// bits of a full-precision row: 16 (f16, the paper's fp16) or 32 (f32) [ours]
        pub fp: u32 = 16, KnobKind::Choice { options: &["16", "32"] };
    }
}

pub const KIVI: PolicyEntry = PolicyEntry {
    row_format: Some(format),
    ..PolicyEntry::new(
        "kivi",
        "KIVI quantisation: keys per channel, values per token, in groups; recent tokens full precision",
        KiviConfig::knobs,
        "kivi:residual=1048576,fp=32",
        |part, b| {
            Ok(Component {
                cache: Some(Box::new(KiviCache::new(b.layout, format(part)?))),
                attention: None,
            })
        },
    )
};

/// Reads a `kivi` part as a row format.
pub fn format(part: &PartSpec) -> Result<RowFormat, SpecError> {
    let cfg: KiviConfig = configure(part)?;
    let value_bits = if cfg.vbits == 0 { cfg.bits } else { cfg.vbits };
    for (knob, bits) in [("bits", cfg.bits), ("vbits", value_bits)] {
        if !supported_bits(bits) {
            return Err(SpecError::BadValue {
                policy: "kivi".into(),
                knob: knob.into(),
                value: bits.to_string(),
                expected: "1, 2, 4 or 8".into(),
            });
        }
    }
    Ok(RowFormat {
        bits: cfg.bits,
        group: cfg.group,
        value_bits,
        value_group: if cfg.vgroup == 0 {
            cfg.group
        } else {
            cfg.vgroup
        },
        residual: cfg.residual,
        half_rows: cfg.fp == 16,
    })
}

/// Which KIVI grouping a stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Keys: one (scale, min) per channel per block of `group` tokens.
    PerChannel,
    /// Values: one (scale, min) per `value_group` channels of each token (blocks of `group`
    /// tokens are quantised at a time, so keys and values leave full precision together).
    PerToken,
}

/// A vector of floats held as f32 or as f16 (shared by KIVI's full-precision rows and MiniCache's
/// magnitudes and retained originals); reads come back as f32.
#[derive(Clone, Debug)]
pub(crate) enum Floats {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Floats {
    pub(crate) fn new(half: bool) -> Self {
        if half {
            Floats::F16(Vec::new())
        } else {
            Floats::F32(Vec::new())
        }
    }
    pub(crate) fn len(&self) -> usize {
        match self {
            Floats::F32(v) => v.len(),
            Floats::F16(v) => v.len(),
        }
    }
    /// Elements `a..b` as f32 (borrowed when stored as f32).
    pub(crate) fn get(&self, a: usize, b: usize) -> Cow<'_, [f32]> {
        match self {
            Floats::F32(v) => Cow::Borrowed(&v[a..b]),
            Floats::F16(v) => Cow::Owned(v[a..b].iter().map(|x| x.to_f32()).collect()),
        }
    }
    /// Every element as f32.
    pub(crate) fn all(&self) -> Cow<'_, [f32]> {
        self.get(0, self.len())
    }
    pub(crate) fn set(&mut self, a: usize, x: &[f32]) {
        match self {
            Floats::F32(v) => v[a..a + x.len()].copy_from_slice(x),
            Floats::F16(v) => v[a..a + x.len()]
                .iter_mut()
                .zip(x)
                .for_each(|(d, s)| *d = f16::from_f32(*s)),
        }
    }
    pub(crate) fn extend(&mut self, x: &[f32]) {
        match self {
            Floats::F32(v) => v.extend_from_slice(x),
            Floats::F16(v) => v.extend(x.iter().map(|s| f16::from_f32(*s))),
        }
    }
    /// Drops the first `n` elements and gives back the spare capacity.
    pub(crate) fn drop_front(&mut self, n: usize) {
        match self {
            Floats::F32(v) => {
                v.drain(..n);
                v.shrink_to_fit();
            }
            Floats::F16(v) => {
                v.drain(..n);
                v.shrink_to_fit();
            }
        }
    }
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Floats::F32(v) => 4 * v.len(),
            Floats::F16(v) => 2 * v.len(),
        }
    }
}

#[derive(Clone, Debug)]
struct QBlock {
    codes: Vec<u8>,
    params: Vec<GroupParams>,
}

/// A stream of `d`-float rows: old rows quantised in blocks of `group` rows, recent rows in full
/// precision (f32, or f16 when the format says so).
#[derive(Clone, Debug)]
pub struct QuantRows {
    d: usize,
    fmt: RowFormat,
    axis: Axis,
    blocks: Vec<QBlock>,
    tail: Floats,
}

impl QuantRows {
    pub fn new(d: usize, fmt: RowFormat, axis: Axis) -> Self {
        QuantRows {
            d,
            fmt,
            axis,
            blocks: Vec::new(),
            tail: Floats::new(fmt.half_rows),
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len() * self.fmt.group + self.tail.len() / self.d
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows quantised so far (the first rows of the stream).
    pub fn quantised_rows(&self) -> usize {
        if self.fmt.quantises() {
            self.blocks.len() * self.fmt.group
        } else {
            0
        }
    }

    pub fn push(&mut self, rows: &[f32]) {
        self.tail.extend(rows);
    }

    /// Full-precision rows `a..b`, counted from the first full-precision row (row
    /// `quantised_rows()` of the stream).
    pub fn tail_rows(&self, a: usize, b: usize) -> Cow<'_, [f32]> {
        self.tail.get(a * self.d, b * self.d)
    }

    /// Overwrites full-precision rows from row `a` (counted as in [`QuantRows::tail_rows`]).
    pub fn set_tail_rows(&mut self, a: usize, rows: &[f32]) {
        self.tail.set(a * self.d, rows);
    }

    /// Quantises the oldest full-precision rows in blocks of `group` while at least
    /// `residual + group` rows are in full precision.
    /// Code width of this stream.
    fn bits(&self) -> u32 {
        match self.axis {
            Axis::PerChannel => self.fmt.bits,
            Axis::PerToken => self.fmt.value_bits,
        }
    }

    pub fn compact(&mut self) {
        if !self.fmt.quantises() {
            return;
        }
        let (d, g, bits, vg) = (self.d, self.fmt.group, self.bits(), self.fmt.value_group);
        let mut done = 0;
        while self.tail.len() / d - done >= self.fmt.residual + g {
            let x = self.tail.get(done * d, (done + g) * d);
            let mut codes = vec![0u8; packed_len(g * d, bits)];
            let mut params = Vec::new();
            match self.axis {
                Axis::PerChannel => {
                    for c in 0..d {
                        let (lo, hi) = range_strided(&x[c..], d, g);
                        let p = group_params(lo, hi, bits);
                        quantize_strided(&x[c..], d, g, p, bits, &mut codes, c, d);
                        params.push(p);
                    }
                }
                Axis::PerToken => {
                    for r in 0..g {
                        for c0 in (0..d).step_by(vg) {
                            let n = vg.min(d - c0);
                            let src = &x[r * d + c0..];
                            let (lo, hi) = range_strided(src, 1, n);
                            let p = group_params(lo, hi, bits);
                            quantize_strided(src, 1, n, p, bits, &mut codes, r * d + c0, 1);
                            params.push(p);
                        }
                    }
                }
            }
            self.blocks.push(QBlock { codes, params });
            done += g;
        }
        if done > 0 {
            self.tail.drop_front(done * d);
        }
    }

    fn dequantise_block(&self, b: &QBlock, out: &mut Vec<f32>) {
        let (d, g, bits, vg) = (self.d, self.fmt.group, self.bits(), self.fmt.value_group);
        let groups_per_row = d.div_ceil(vg);
        for r in 0..g {
            for c in 0..d {
                let p = match self.axis {
                    Axis::PerChannel => b.params[c],
                    Axis::PerToken => b.params[r * groups_per_row + c / vg],
                };
                out.push(
                    p.min.to_f32() + p.scale.to_f32() * code_at(&b.codes, r * d + c, bits) as f32,
                );
            }
        }
    }

    /// Every row as f32: borrowed while nothing is quantised, else dequantised into a new buffer.
    pub fn rows(&self) -> Cow<'_, [f32]> {
        let tail = self.tail.all();
        if self.blocks.is_empty() {
            return tail;
        }
        let mut out = Vec::with_capacity(self.len() * self.d);
        for b in &self.blocks {
            self.dequantise_block(b, &mut out);
        }
        out.extend_from_slice(&tail);
        Cow::Owned(out)
    }

    /// Drops up to `n` rows from the front without re-quantising anything, and says how many
    /// went: quantised rows leave a whole block of `group` at a time (a block that straddles
    /// row `n` stays), full-precision rows one by one once every block has gone. Keys and
    /// values of one head share the block structure, so both drop the same count.
    pub fn drop_front(&mut self, n: usize) -> usize {
        let q = self.quantised_rows();
        if q > 0 && n < q {
            let blocks = n / self.fmt.group;
            self.blocks.drain(..blocks);
            return blocks * self.fmt.group;
        }
        self.blocks.clear();
        let rows = (n - q).min(self.tail.len() / self.d);
        self.tail.drop_front(rows * self.d);
        q + rows
    }

    /// Bytes held: packed codes, 2 + 2 bytes per (scale, min), 2 or 4 per full-precision float.
    pub fn resident_bytes(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| b.codes.len() + 4 * b.params.len())
            .sum::<usize>()
            + self.tail.bytes()
    }
}

/// K and V of one (layer, KV head) in a row format, with their positions.
#[derive(Clone, Debug)]
pub struct QuantHead {
    pub k: QuantRows,
    pub v: QuantRows,
    pub positions: PositionRuns,
}

impl QuantHead {
    pub fn new(d: usize, fmt: RowFormat) -> Self {
        QuantHead {
            k: QuantRows::new(d, fmt, Axis::PerChannel),
            v: QuantRows::new(d, fmt, Axis::PerToken),
            positions: PositionRuns::default(),
        }
    }

    pub fn view(&self) -> HeadView<'_> {
        HeadView {
            keys: self.k.rows(),
            values: self.v.rows(),
            positions: Cow::Owned(self.positions.to_vec()),
            key_scale: None,
            value_scale: None,
            key_patch: None,
            value_patch: None,
        }
    }

    pub fn resident_bytes(&self) -> usize {
        self.k.resident_bytes() + self.v.resident_bytes() + self.positions.resident_bytes()
    }

    /// Frees the rows before `position` once [`FORGET_SLACK`] of them have piled up, as the full
    /// store does for a sliding-window layer; whole quantised blocks only (see
    /// [`QuantRows::drop_front`]), so nothing is re-quantised.
    pub fn forget_before(&mut self, position: u32) {
        let n = self.positions.count_before(position);
        if n < FORGET_SLACK {
            return;
        }
        let dropped = self.k.drop_front(n);
        assert_eq!(self.v.drop_front(n), dropped, "keys and values share blocks");
        self.positions.drop_front(dropped);
    }
}

/// Splits token-major `[T, n_kv_heads, d]` into head `g`'s rows.
pub(crate) fn head_rows(x: &[f32], t: usize, n_kv_heads: usize, d: usize, g: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(t * d);
    for tok in 0..t {
        let off = (tok * n_kv_heads + g) * d;
        out.extend_from_slice(&x[off..off + d]);
    }
    out
}

/// The `kivi` cache policy: every (layer, KV head) a [`QuantHead`].
pub struct KiviCache {
    layout: KvLayout,
    fmt: RowFormat,
    heads: Vec<QuantHead>,
}

impl KiviCache {
    pub fn new(layout: KvLayout, fmt: RowFormat) -> Self {
        KiviCache {
            layout,
            fmt,
            heads: vec![QuantHead::new(layout.head_dim, fmt); layout.n_layers * layout.n_kv_heads],
        }
    }
}

impl CachePolicy for KiviCache {
    fn name(&self) -> String {
        self.fmt.label()
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        let KvLayout {
            n_kv_heads,
            head_dim: d,
            ..
        } = self.layout;
        for g in 0..n_kv_heads {
            let h = &mut self.heads[layer * n_kv_heads + g];
            h.k.push(&head_rows(k, positions.len(), n_kv_heads, d, g));
            h.v.push(&head_rows(v, positions.len(), n_kv_heads, d, g));
            h.positions.extend(positions);
            h.k.compact();
            h.v.compact();
        }
    }

    fn view(&self, layer: usize, kv_head: usize) -> HeadView<'_> {
        self.heads[layer * self.layout.n_kv_heads + kv_head].view()
    }

    fn resident_bytes(&self) -> usize {
        self.heads.iter().map(QuantHead::resident_bytes).sum()
    }

    fn reset(&mut self) {
        *self = KiviCache::new(self.layout, self.fmt);
    }

    /// Whole quantised blocks (and full-precision rows) a sliding window has passed are freed.
    fn forget_before(&mut self, layer: usize, position: u32) {
        let n_kv = self.layout.n_kv_heads;
        for h in &mut self.heads[layer * n_kv..(layer + 1) * n_kv] {
            h.forget_before(position);
        }
    }

    /// The quantised blocks and the full-precision tail, copied as they are: a sequence that
    /// resumes from the copy reads exactly what this one would.
    fn fork(&self) -> Option<Box<dyn CachePolicy>> {
        Some(Box::new(KiviCache {
            layout: self.layout,
            fmt: self.fmt,
            heads: self.heads.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_engine::cache::KvDtype;

    #[test]
    fn a_fork_holds_the_same_bytes_and_continues_like_the_original() {
        let layout = KvLayout {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 8,
            dtype: KvDtype::default(),
        };
        let fmt = RowFormat {
            bits: 4,
            group: 4,
            value_bits: 2,
            value_group: 4,
            residual: 3,
            half_rows: true,
        };
        let mut a = KiviCache::new(layout, fmt);
        let x = rows(30, 16);
        let (first, rest) = x.split_at(17 * 16);
        let pos: Vec<u32> = (0..30).collect();
        for layer in 0..2 {
            a.store(layer, &pos[..17], first, first);
        }
        let mut b = a.fork().expect("kivi forks");
        assert_eq!(b.resident_bytes(), a.resident_bytes());
        for layer in 0..2 {
            a.store(layer, &pos[17..], rest, rest);
            b.store(layer, &pos[17..], rest, rest);
        }
        for layer in 0..2 {
            for g in 0..2 {
                let (va, vb) = (a.view(layer, g), b.view(layer, g));
                assert_eq!(va.positions, vb.positions);
                assert_eq!(va.keys, vb.keys);
                assert_eq!(va.values, vb.values);
                assert_eq!(va.key_scale, vb.key_scale);
                assert_eq!(va.value_scale, vb.value_scale);
            }
        }
        assert_eq!(b.resident_bytes(), a.resident_bytes());
        // The copy is deep: resetting the original leaves the fork whole.
        a.reset();
        assert_eq!(b.view(1, 1).positions.len(), 30);
    }

    fn rows(n: usize, d: usize) -> Vec<f32> {
        (0..n * d)
            .map(|i| ((i * 7919 % 101) as f32 / 50.0 - 1.0) * (1.0 + (i % d) as f32))
            .collect()
    }

    #[test]
    fn stream_keeps_recent_rows_exact_and_bounds_error() {
        let d = 8;
        for (axis, half_rows) in [
            (Axis::PerChannel, false),
            (Axis::PerToken, false),
            (Axis::PerChannel, true),
            (Axis::PerToken, true),
        ] {
            let fmt = RowFormat {
                bits: 4,
                group: 4,
                value_bits: 4,
                value_group: 4,
                residual: 6,
                half_rows,
            };
            let mut s = QuantRows::new(d, fmt, axis);
            let x = rows(23, d);
            s.push(&x[..10 * d]);
            s.compact();
            s.push(&x[10 * d..]);
            s.compact();
            assert_eq!(s.len(), 23);
            // 23 rows: blocks of 4 are quantised while >= 10 rows are full precision.
            assert_eq!(s.quantised_rows(), 16);
            let back = s.rows();
            // Recent rows are exact in f32, rounded to the nearest f16 in f16.
            let recent: Vec<f32> = x[16 * d..]
                .iter()
                .map(|&v| {
                    if half_rows {
                        f16::from_f32(v).to_f32()
                    } else {
                        v
                    }
                })
                .collect();
            assert_eq!(&back[16 * d..], &recent[..], "recent rows");
            let err = back
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err > 0.0 && err < 0.6, "{axis:?}: max error {err}");
            // 4 blocks × (packed 4-bit codes of 32 values + params) + 7 full-precision rows.
            let params = match axis {
                Axis::PerChannel => d,
                Axis::PerToken => 4 * 2,
            };
            let float = if half_rows { 2 } else { 4 };
            assert_eq!(s.resident_bytes(), 4 * (16 + 4 * params) + 7 * d * float);
        }
    }

    #[test]
    fn values_take_their_own_width_and_group() {
        // Keys 4-bit per channel over blocks of 4 tokens; values 2-bit, one group per token.
        let d = 8;
        let fmt = RowFormat {
            bits: 4,
            group: 4,
            value_bits: 2,
            value_group: 8,
            residual: 0,
            half_rows: true,
        };
        let x = rows(8, d);
        let mut k = QuantRows::new(d, fmt, Axis::PerChannel);
        let mut v = QuantRows::new(d, fmt, Axis::PerToken);
        for s in [&mut k, &mut v] {
            s.push(&x);
            s.compact();
            assert_eq!(s.quantised_rows(), 8);
        }
        // Keys: 2 blocks × (32 codes at 4 bits + 8 channel params); values: 2 blocks ×
        // (32 codes at 2 bits + 4 token params).
        assert_eq!(k.resident_bytes(), 2 * (16 + 8 * 4));
        assert_eq!(v.resident_bytes(), 2 * (8 + 4 * 4));
        let err = |s: &QuantRows| {
            s.rows()
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        // A 2-bit step over a token's whole range is coarser than a 4-bit step over a channel.
        assert!(err(&k) < err(&v), "key {} value {}", err(&k), err(&v));
        assert!(err(&v) < 9.0 / 3.0, "half a 2-bit step of the widest token range at most");
    }

    #[test]
    fn f32_format_never_quantises() {
        let mut s = QuantRows::new(4, RowFormat::F32, Axis::PerChannel);
        s.push(&rows(300, 4));
        s.compact();
        assert_eq!(s.quantised_rows(), 0);
        assert!(matches!(s.rows(), Cow::Borrowed(_)));
    }
}
