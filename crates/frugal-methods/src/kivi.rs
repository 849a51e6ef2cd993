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
//! are f32 (frugal's store is f32); attention reads an owned dequantised copy (no fused integer
//! kernel on the CPU path).

use crate::registry::{Component, KnobInfo, KnobKind, Knobs, PolicyInfo};
use crate::spec::SpecError;
use frugal_engine::cache::{CachePolicy, HeadView, KvLayout};
use frugal_numerics::kivi::{
    code_at, group_params, packed_len, quantize_strided, range_strided, supported_bits, GroupParams,
};
use std::borrow::Cow;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "kivi",
    doc: "KIVI quantisation: keys per channel, values per token, in groups; recent tokens full precision",
    knobs: &[
        KnobInfo { name: "bits", kind: KnobKind::Int { min: 1, max: 8 }, default: "2", doc: "code width: 1, 2, 4 or 8 (paper: 2 and 4)" },
        KnobInfo { name: "group", kind: KnobKind::Int { min: 1, max: 4096 }, default: "32", doc: "group size: tokens per key group, channels per value group (paper: 32)" },
        KnobInfo { name: "residual", kind: KnobKind::Int { min: 0, max: 1 << 20 }, default: "128", doc: "recent tokens kept in full precision (paper: 128)" },
    ],
    keep_everything: "kivi:residual=1048576",
};

/// How rows are encoded: `bits == 32` is plain f32 (nothing quantised).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowFormat {
    pub bits: u32,
    pub group: usize,
    pub residual: usize,
}

impl RowFormat {
    pub const F32: RowFormat = RowFormat {
        bits: 32,
        group: 1,
        residual: usize::MAX,
    };

    pub fn quantises(&self) -> bool {
        self.bits < 32 && self.residual < usize::MAX / 2
    }

    pub fn label(&self) -> String {
        format!(
            "kivi:bits={},group={},residual={}",
            self.bits, self.group, self.residual
        )
    }
}

/// Reads a `kivi` part's knobs as a row format.
pub fn format(knobs: &Knobs<'_>) -> Result<RowFormat, SpecError> {
    let bits = knobs.usize("bits") as u32;
    if !supported_bits(bits) {
        return Err(SpecError::BadValue {
            policy: "kivi".into(),
            knob: "bits".into(),
            value: bits.to_string(),
            expected: "1, 2, 4 or 8".into(),
        });
    }
    Ok(RowFormat {
        bits,
        group: knobs.usize("group"),
        residual: knobs.usize("residual"),
    })
}

/// Which KIVI grouping a stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Keys: one (scale, min) per channel per block of `group` tokens.
    PerChannel,
    /// Values: one (scale, min) per `group` channels of each token.
    PerToken,
}

#[derive(Clone, Debug)]
struct QBlock {
    codes: Vec<u8>,
    params: Vec<GroupParams>,
}

/// A stream of `d`-float rows: old rows quantised in blocks of `group` rows, recent rows in f32.
#[derive(Clone, Debug)]
pub struct QuantRows {
    d: usize,
    fmt: RowFormat,
    axis: Axis,
    blocks: Vec<QBlock>,
    tail: Vec<f32>,
}

impl QuantRows {
    pub fn new(d: usize, fmt: RowFormat, axis: Axis) -> Self {
        QuantRows {
            d,
            fmt,
            axis,
            blocks: Vec::new(),
            tail: Vec::new(),
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
        self.tail.extend_from_slice(rows);
    }

    /// The full-precision rows (the last `len() − quantised_rows()` rows).
    pub fn tail(&self) -> &[f32] {
        &self.tail
    }

    pub fn tail_mut(&mut self) -> &mut [f32] {
        &mut self.tail
    }

    /// Quantises the oldest full-precision rows in blocks of `group` while at least
    /// `residual + group` rows are in full precision.
    pub fn compact(&mut self) {
        if !self.fmt.quantises() {
            return;
        }
        let (d, g, bits) = (self.d, self.fmt.group, self.fmt.bits);
        let mut done = 0;
        while self.tail.len() / d - done >= self.fmt.residual + g {
            let x = &self.tail[done * d..(done + g) * d];
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
                        for c0 in (0..d).step_by(g) {
                            let n = g.min(d - c0);
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
            self.tail.drain(..done * d);
            self.tail.shrink_to_fit();
        }
    }

    fn dequantise_block(&self, b: &QBlock, out: &mut Vec<f32>) {
        let (d, g, bits) = (self.d, self.fmt.group, self.fmt.bits);
        let groups_per_row = d.div_ceil(g);
        for r in 0..g {
            for c in 0..d {
                let p = match self.axis {
                    Axis::PerChannel => b.params[c],
                    Axis::PerToken => b.params[r * groups_per_row + c / g],
                };
                out.push(
                    p.min.to_f32() + p.scale.to_f32() * code_at(&b.codes, r * d + c, bits) as f32,
                );
            }
        }
    }

    /// Every row as f32: borrowed while nothing is quantised, else dequantised into a new buffer.
    pub fn rows(&self) -> Cow<'_, [f32]> {
        if self.blocks.is_empty() {
            return Cow::Borrowed(&self.tail);
        }
        let mut out = Vec::with_capacity(self.len() * self.d);
        for b in &self.blocks {
            self.dequantise_block(b, &mut out);
        }
        out.extend_from_slice(&self.tail);
        Cow::Owned(out)
    }

    /// Bytes held: packed codes, 2 + 2 bytes per (scale, min), 4 per full-precision float.
    pub fn resident_bytes(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| b.codes.len() + 4 * b.params.len())
            .sum::<usize>()
            + 4 * self.tail.len()
    }
}

/// K and V of one (layer, KV head) in a row format, with their positions.
#[derive(Clone, Debug)]
pub struct QuantHead {
    pub k: QuantRows,
    pub v: QuantRows,
    pub positions: Vec<u32>,
}

impl QuantHead {
    pub fn new(d: usize, fmt: RowFormat) -> Self {
        QuantHead {
            k: QuantRows::new(d, fmt, Axis::PerChannel),
            v: QuantRows::new(d, fmt, Axis::PerToken),
            positions: Vec::new(),
        }
    }

    pub fn view(&self) -> HeadView<'_> {
        HeadView {
            keys: self.k.rows(),
            values: self.v.rows(),
            positions: Cow::Borrowed(&self.positions),
            key_scale: None,
            value_scale: None,
            key_patch: None,
            value_patch: None,
        }
    }

    pub fn resident_bytes(&self) -> usize {
        self.k.resident_bytes() + self.v.resident_bytes() + 4 * self.positions.len()
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
            h.positions.extend_from_slice(positions);
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
}

pub(crate) fn component(knobs: &Knobs<'_>, layout: KvLayout) -> Result<Component, SpecError> {
    Ok(Component {
        cache: Some(Box::new(KiviCache::new(layout, format(knobs)?))),
        attention: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, d: usize) -> Vec<f32> {
        (0..n * d)
            .map(|i| ((i * 7919 % 101) as f32 / 50.0 - 1.0) * (1.0 + (i % d) as f32))
            .collect()
    }

    #[test]
    fn stream_keeps_recent_rows_exact_and_bounds_error() {
        let d = 8;
        for axis in [Axis::PerChannel, Axis::PerToken] {
            let fmt = RowFormat {
                bits: 4,
                group: 4,
                residual: 6,
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
            assert_eq!(&back[16 * d..], &x[16 * d..], "recent rows are exact");
            let err = back
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err > 0.0 && err < 0.6, "{axis:?}: max error {err}");
            // 4 blocks × (packed 4-bit codes of 32 values + params) + 7 f32 rows.
            let params = match axis {
                Axis::PerChannel => d,
                Axis::PerToken => 4 * 2,
            };
            assert_eq!(s.resident_bytes(), 4 * (16 + 4 * params) + 7 * d * 4);
        }
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
