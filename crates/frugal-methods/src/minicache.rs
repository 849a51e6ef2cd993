//! MiniCache (Liu et al., NeurIPS 2024, arXiv 2405.14366): KV cache compression across depth.
//! Adjacent layers `(a, b = a+1)` from a start layer down to the last share one unit direction
//! per (token, KV head, K|V), obtained by SLERP of their two directions; each layer keeps its own
//! magnitude, restored inside the attention score (`m · q·e`, via the kernel's per-row scales, no
//! dense copy); the most divergent tokens (largest angular distance) are retained unmerged and
//! served as row patches. Method notes: docs/methods/minicache.md; the paper's code is not public.
//!
//! Also here: `mean-merge`, the paper's "Average" baseline (both layers read `(x_a + x_b)/2`, no
//! magnitudes, no retention).
//!
//! Knobs and their sources: `t = 0.6` (the paper's value as we recall it, unverified), `gamma = 0.05` (the
//! paper's chosen trade-off), `start = −1` = half depth ⌊L/2⌋ ([P] "begins merging from the
//! half-layer depth").
//!
//! Our choices where the paper is silent (labelled):
//! - pairs are `(start, start+1), (start+2, start+3), …`; a last unpaired layer stays alone (for
//!   SmolLM2's 30 layers the default start 15 is the half-depth option, 14 layers merged; start 14
//!   is option B, 16 layers);
//! - merging granularity is one KV head's `head_dim` vector; K and V have independent retention
//!   sets;
//! - retention: `d = Ω/π`, normalised by its min and max per (pair, KV head, K|V) over the first
//!   multi-token call (the prefill), then frozen for later tokens; token `i` is retained when
//!   `d_i ≥ d_max − γ·(d_max − d_min)`; if the range is degenerate nothing is retained; `γ ≥ 1`
//!   retains every token (the exactness setting); zero norms and antipodal pairs are always
//!   retained (no merged direction exists);
//! - decode flow ([P] figure): a new token's layer-`a` K/V are held unmerged (as a direction row
//!   holding the raw vector with scale 1) until layer `b` has produced its K/V, then merged; so
//!   layer `a`'s attention in the current step reads its own exact K/V;
//! - storage: directions in the row format underneath (the store's dtype, f16 by default, or
//!   KIVI when composed as `minicache+kivi:…`); magnitudes f32 (f16 when quantised); retained
//!   originals in the format's full precision (the store's dtype, or f16 under `kivi:fp=16`);
//!   positions once per (pair, head),
//!   as runs of consecutive positions;
//! - sliding-window layers (Gemma 3; [P] predates them): a layer alone frees what its window
//!   has passed, as the full store does. A pair's two layers may differ (one global, one
//!   sliding): each side keeps an offset, the first shared row it still reads, frees its own
//!   magnitudes and retained originals before it and is shown only the rows after it; the
//!   shared directions go once both sides have passed them (never, beside a global layer).

use crate::kivi::{head_rows, Axis, Floats, QuantHead, QuantRows, RowFormat};
use crate::policy::{configure, Component, KnobKind, PolicyConfig, PolicyEntry};
use frugal_engine::cache::{
    CachePolicy, HeadView, KvLayout, PatchView, PositionRuns, FORGET_SLACK,
};
use frugal_numerics::slerp::{merge_pair, normalised_distance};
use std::borrow::Cow;

crate::policy_config! {
    /// MiniCache's merge; the defaults are the paper's.
    pub struct MiniCacheConfig {
        /// first merged layer; pairs (s,s+1),(s+2,s+3),…; -1 = half depth (paper)
        pub start: i64 = -1, KnobKind::Int { min: -1, max: 1 << 20 };
        /// SLERP interpolation towards the deeper layer (the paper's setting as we read it: 0.6)
        pub t: f64 = 0.6, KnobKind::Float { min: 0.0, max: 1.0 };
        /// retention threshold on normalised angular distance (paper: 0.05); 1 retains all
        pub gamma: f64 = 0.05, KnobKind::Float { min: 0.0, max: 1.0 };
    }
}

crate::policy_config! {
    /// The mean-merge baseline.
    pub struct MeanMergeConfig {
        /// first merged layer, as minicache; -1 = half depth
        pub start: i64 = -1, KnobKind::Int { min: -1, max: 1 << 20 };
    }
}

pub const MINICACHE: PolicyEntry = PolicyEntry {
    takes_format: true,
    ..PolicyEntry::new(
        "minicache",
        "cross-layer SLERP merge of adjacent layers from half depth, magnitudes per layer, outlier tokens retained",
        MiniCacheConfig::knobs,
        "minicache:start=1048576",
        |part, b| {
            let c: MiniCacheConfig = configure(part)?;
            let mode = Mode::Slerp {
                t: c.t,
                gamma: c.gamma,
            };
            Ok(component(c.start, mode, b.layout, b.row_format))
        },
    )
};

pub const MEAN_MERGE: PolicyEntry = PolicyEntry {
    takes_format: true,
    ..PolicyEntry::new(
        "mean-merge",
        "baseline: adjacent layers from half depth both read the average of their K/V (no magnitudes, no retention)",
        MeanMergeConfig::knobs,
        "mean-merge:start=1048576",
        |part, b| {
            let c: MeanMergeConfig = configure(part)?;
            Ok(component(c.start, Mode::Mean, b.layout, b.row_format))
        },
    )
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Slerp { t: f64, gamma: f64 },
    Mean,
}

/// Retained originals of one layer: row indices (ascending) and their vectors.
#[derive(Clone, Debug)]
struct Retained {
    rows: Vec<u32>,
    data: Floats,
}

impl Retained {
    fn new(half: bool) -> Self {
        Retained {
            rows: Vec::new(),
            data: Floats::new(half),
        }
    }
    /// The patch as a view that starts at shared row `skip` (rows renumbered from there).
    fn patch(&self, skip: usize) -> Option<PatchView<'_>> {
        if self.rows.is_empty() {
            return None;
        }
        let rows = if skip == 0 {
            Cow::Borrowed(&self.rows[..])
        } else {
            Cow::Owned(self.rows.iter().map(|r| r - skip as u32).collect())
        };
        Some((rows, self.data.all()))
    }
    fn bytes(&self) -> usize {
        4 * self.rows.len() + self.data.bytes()
    }
    /// Frees the originals of rows before `row`.
    fn forget_below(&mut self, row: usize, d: usize) {
        let gone = self.rows.partition_point(|&r| (r as usize) < row);
        self.rows.drain(..gone);
        self.data.drop_front(gone * d);
    }
    /// Renumbers after the first `n` shared rows are dropped (none of them is held here).
    fn shift(&mut self, n: usize) {
        self.rows.iter_mut().for_each(|r| *r -= n as u32);
    }
}

/// Which layer of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// K or V of one (pair, KV head).
#[derive(Clone, Debug)]
struct Merged {
    /// Merged unit directions (or means); rows `merged..` hold layer a's raw pending vectors.
    dir: QuantRows,
    /// Layer a's magnitudes of rows `skip_a..` (the pair's offsets, see [`PairHead`]).
    mag_a: Floats,
    /// Layer b's magnitudes of rows `skip_b..`.
    mag_b: Floats,
    ret_a: Retained,
    ret_b: Retained,
    merged: usize,
    /// Angular-distance range (d = Ω/π) and whether it is frozen.
    d_min: f64,
    d_max: f64,
    frozen: bool,
    retained_tokens: usize,
    dir_width: usize,
}

impl Merged {
    fn new(d: usize, fmt: RowFormat, axis: Axis) -> Self {
        // Magnitudes are f16 whenever rows are quantised; retained originals are full-precision
        // rows, so they follow the format's full-precision width.
        let mags = || Floats::new(fmt.quantises());
        Merged {
            dir: QuantRows::new(d, fmt, axis),
            mag_a: mags(),
            mag_b: mags(),
            ret_a: Retained::new(fmt.half_rows),
            ret_b: Retained::new(fmt.half_rows),
            merged: 0,
            d_min: f64::INFINITY,
            d_max: f64::NEG_INFINITY,
            frozen: false,
            retained_tokens: 0,
            dir_width: d,
        }
    }

    /// Layer a's new rows: held raw (scale 1) until layer b's arrive.
    fn push_a(&mut self, rows: &[f32], mode: Mode) {
        let d = self.dir_d();
        self.dir.push(rows);
        if matches!(mode, Mode::Slerp { .. }) {
            self.mag_a.extend(&vec![1.0; rows.len() / d]);
        }
    }

    fn dir_d(&self) -> usize {
        self.dir_width
    }

    /// Merges the pending rows with layer b's `rows`; layer a reads rows from `skip_a` on, so
    /// earlier rows keep no magnitude or original of its side (a prefill longer than a's window).
    fn merge_b(&mut self, rows_b: &[f32], mode: Mode, skip_a: usize) {
        let d = self.dir_width;
        let n_new = rows_b.len() / d;
        let q = self.dir.quantised_rows();
        let first = self.merged;
        assert_eq!(
            self.dir.len(),
            first + n_new,
            "layer b's tokens must match layer a's pending tokens"
        );
        match mode {
            Mode::Mean => {
                let mean: Vec<f32> = self
                    .dir
                    .tail_rows(first - q, first - q + n_new)
                    .iter()
                    .zip(rows_b)
                    .map(|(x, y)| 0.5 * (x + y))
                    .collect();
                self.dir.set_tail_rows(first - q, &mean);
            }
            Mode::Slerp { t, gamma } => {
                let mut dirs = vec![0f32; n_new * d];
                let rows_a = self
                    .dir
                    .tail_rows(first - q, first - q + n_new)
                    .into_owned();
                let merges: Vec<_> = (0..n_new)
                    .map(|i| {
                        let a = &rows_a[i * d..(i + 1) * d];
                        let b = &rows_b[i * d..(i + 1) * d];
                        merge_pair(a, b, t, &mut dirs[i * d..(i + 1) * d])
                    })
                    .collect();
                if !self.frozen {
                    for m in merges.iter().filter(|m| m.mergeable) {
                        let dist = m.omega / std::f64::consts::PI;
                        self.d_min = self.d_min.min(dist);
                        self.d_max = self.d_max.max(dist);
                    }
                    self.frozen = n_new >= 2;
                }
                for (i, m) in merges.iter().enumerate() {
                    let row = first + i;
                    let retain = !m.mergeable
                        || gamma >= 1.0
                        || normalised_distance(m.omega, self.d_min, self.d_max)
                            .is_some_and(|x| x >= 1.0 - gamma);
                    if retain {
                        if row >= skip_a {
                            self.ret_a.rows.push(row as u32);
                            self.ret_a.data.extend(&rows_a[i * d..(i + 1) * d]);
                        }
                        self.ret_b.rows.push(row as u32);
                        self.ret_b.data.extend(&rows_b[i * d..(i + 1) * d]);
                        self.retained_tokens += 1;
                    }
                    if row >= skip_a {
                        self.mag_a.set(row - skip_a, &[m.mag_a]);
                    }
                    self.mag_b.extend(&[m.mag_b]);
                }
                self.dir.set_tail_rows(first - q, &dirs);
            }
        }
        self.merged = first + n_new;
        self.dir.compact();
    }

    /// Side `side` no longer reads rows before `row`; it read rows from `skip` on until now.
    fn forget_side(&mut self, side: Side, skip: usize, row: usize) {
        let (mags, ret) = match side {
            Side::A => (&mut self.mag_a, &mut self.ret_a),
            Side::B => (&mut self.mag_b, &mut self.ret_b),
        };
        let gone = (row - skip).min(mags.len());
        mags.drop_front(gone);
        ret.forget_below(row, self.dir_width);
    }

    /// Drops the first `n` shared rows, which neither side reads any more (whole quantised
    /// blocks only, see [`QuantRows::drop_front`]); how many went.
    fn drop_shared(&mut self, n: usize) -> usize {
        let dropped = self.dir.drop_front(n);
        self.ret_a.shift(dropped);
        self.ret_b.shift(dropped);
        self.merged -= dropped;
        dropped
    }

    fn bytes(&self) -> usize {
        self.dir.resident_bytes()
            + self.mag_a.bytes()
            + self.mag_b.bytes()
            + self.ret_a.bytes()
            + self.ret_b.bytes()
    }
}

#[derive(Clone, Debug)]
struct PairHead {
    k: Merged,
    v: Merged,
    positions: PositionRuns,
    /// Per side, the first shared row that layer still reads (0 for a global layer).
    skip_a: usize,
    skip_b: usize,
}

impl PairHead {
    fn skip(&self, side: Side) -> usize {
        match side {
            Side::A => self.skip_a,
            Side::B => self.skip_b,
        }
    }

    /// Layer `side` reads no row before `position` again: once `FORGET_SLACK` of its rows have
    /// piled up, its side data goes, and the shared rows both sides have passed.
    fn forget_before(&mut self, side: Side, position: u32) {
        let row = self.positions.count_before(position);
        let skip = self.skip(side);
        if row < skip + FORGET_SLACK {
            return;
        }
        self.k.forget_side(side, skip, row);
        self.v.forget_side(side, skip, row);
        match side {
            Side::A => self.skip_a = row,
            Side::B => self.skip_b = row,
        }
        let shared = self.skip_a.min(self.skip_b);
        if shared >= FORGET_SLACK {
            let dropped = self.k.drop_shared(shared);
            assert_eq!(self.v.drop_shared(shared), dropped, "keys and values share blocks");
            self.positions.drop_front(dropped);
            self.skip_a -= dropped;
            self.skip_b -= dropped;
        }
    }
}

/// What a layer is in this cache.
#[derive(Clone, Copy, Debug)]
enum Role {
    Alone(usize),
    /// Earlier layer of pair `p`.
    A(usize),
    /// Later layer of pair `p`.
    B(usize),
}

pub struct MiniCache {
    layout: KvLayout,
    start: usize,
    mode: Mode,
    fmt: RowFormat,
    roles: Vec<Role>,
    alone: Vec<QuantHead>,
    pairs: Vec<PairHead>,
}

impl MiniCache {
    fn new(layout: KvLayout, start_knob: i64, mode: Mode, fmt: RowFormat) -> Self {
        let start = if start_knob < 0 {
            layout.n_layers / 2
        } else {
            start_knob as usize
        };
        let (mut roles, mut n_alone, mut n_pairs) = (Vec::new(), 0, 0);
        let mut l = 0;
        while l < layout.n_layers {
            if l >= start && l + 1 < layout.n_layers {
                roles.push(Role::A(n_pairs));
                roles.push(Role::B(n_pairs));
                n_pairs += 1;
                l += 2;
            } else {
                roles.push(Role::Alone(n_alone));
                n_alone += 1;
                l += 1;
            }
        }
        let d = layout.head_dim;
        let h = layout.n_kv_heads;
        let pair = PairHead {
            k: Merged::new(d, fmt, Axis::PerChannel),
            v: Merged::new(d, fmt, Axis::PerToken),
            positions: PositionRuns::default(),
            skip_a: 0,
            skip_b: 0,
        };
        MiniCache {
            layout,
            start: 0,
            mode,
            fmt,
            roles,
            alone: vec![QuantHead::new(d, fmt); n_alone * h],
            pairs: vec![pair; n_pairs * h],
        }
        .with_start(start_knob)
    }

    fn with_start(mut self, start_knob: i64) -> Self {
        self.start = if start_knob < 0 {
            usize::MAX
        } else {
            start_knob as usize
        };
        self
    }

    /// Layers whose K/V are merged with a partner.
    pub fn merged_layers(&self) -> usize {
        self.roles
            .iter()
            .filter(|r| !matches!(r, Role::Alone(_)))
            .count()
    }

    /// Tokens retained unmerged so far, summed over (pair, head, K|V).
    pub fn retained_tokens(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| p.k.retained_tokens + p.v.retained_tokens)
            .sum()
    }
}

impl CachePolicy for MiniCache {
    fn name(&self) -> String {
        let start = if self.start == usize::MAX {
            "-1".to_string()
        } else {
            self.start.to_string()
        };
        let base = match self.mode {
            Mode::Slerp { t, gamma } => format!("minicache:start={start},t={t},gamma={gamma}"),
            Mode::Mean => format!("mean-merge:start={start}"),
        };
        if self.fmt.quantises() {
            format!("{base}+{}", self.fmt.label())
        } else {
            base
        }
    }

    fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
        let KvLayout {
            n_kv_heads: h,
            head_dim: d,
            ..
        } = self.layout;
        let t = positions.len();
        for g in 0..h {
            let (kr, vr) = (head_rows(k, t, h, d, g), head_rows(v, t, h, d, g));
            match self.roles[layer] {
                Role::Alone(i) => {
                    let s = &mut self.alone[i * h + g];
                    s.k.push(&kr);
                    s.v.push(&vr);
                    s.positions.extend(positions);
                    s.k.compact();
                    s.v.compact();
                }
                Role::A(p) => {
                    let s = &mut self.pairs[p * h + g];
                    s.k.push_a(&kr, self.mode);
                    s.v.push_a(&vr, self.mode);
                    s.positions.extend(positions);
                }
                Role::B(p) => {
                    let s = &mut self.pairs[p * h + g];
                    s.k.merge_b(&kr, self.mode, s.skip_a);
                    s.v.merge_b(&vr, self.mode, s.skip_a);
                }
            }
        }
    }

    fn view<'a>(&'a self, layer: usize, kv_head: usize) -> HeadView<'a> {
        let h = self.layout.n_kv_heads;
        let (p, side) = match self.roles[layer] {
            Role::Alone(i) => return self.alone[i * h + kv_head].view(),
            Role::A(p) => (p, Side::A),
            Role::B(p) => (p, Side::B),
        };
        let s = &self.pairs[p * h + kv_head];
        let skip = s.skip(side);
        let d = self.layout.head_dim;
        let slerp = matches!(self.mode, Mode::Slerp { .. });
        let extras = |m: &'a Merged| -> (Option<Cow<'a, [f32]>>, Option<PatchView<'a>>) {
            if !slerp {
                return (None, None);
            }
            match side {
                Side::A => (Some(m.mag_a.all()), m.ret_a.patch(skip)),
                Side::B => (Some(m.mag_b.all()), m.ret_b.patch(skip)),
            }
        };
        let (key_scale, key_patch) = extras(&s.k);
        let (value_scale, value_patch) = extras(&s.v);
        let mut positions = s.positions.to_vec();
        positions.drain(..skip);
        HeadView {
            keys: rows_from(s.k.dir.rows(), skip * d),
            values: rows_from(s.v.dir.rows(), skip * d),
            positions: Cow::Owned(positions),
            key_scale,
            value_scale,
            key_patch,
            value_patch,
        }
    }

    fn resident_bytes(&self) -> usize {
        self.alone
            .iter()
            .map(QuantHead::resident_bytes)
            .sum::<usize>()
            + self
                .pairs
                .iter()
                .map(|p| p.k.bytes() + p.v.bytes() + p.positions.resident_bytes())
                .sum::<usize>()
    }

    /// A layer alone frees what its window has passed, as the full store does; a pair's side
    /// frees its own data, and the shared rows go once both sides have passed them.
    fn forget_before(&mut self, layer: usize, position: u32) {
        let h = self.layout.n_kv_heads;
        let (p, side) = match self.roles[layer] {
            Role::Alone(i) => {
                for s in &mut self.alone[i * h..(i + 1) * h] {
                    s.forget_before(position);
                }
                return;
            }
            Role::A(p) => (p, Side::A),
            Role::B(p) => (p, Side::B),
        };
        for s in &mut self.pairs[p * h..(p + 1) * h] {
            s.forget_before(side, position);
        }
    }

    fn reset(&mut self) {
        let start = if self.start == usize::MAX {
            -1
        } else {
            self.start as i64
        };
        *self = MiniCache::new(self.layout, start, self.mode, self.fmt);
    }
}

/// Builds `minicache` or `mean-merge`, its rows stored in `fmt` (the store's dtype unless
/// composed with kivi).
fn component(start: i64, mode: Mode, layout: KvLayout, fmt: Option<RowFormat>) -> Component {
    Component {
        cache: Some(Box::new(MiniCache::new(
            layout,
            start,
            mode,
            fmt.unwrap_or(RowFormat::plain(layout.dtype)),
        ))),
        attention: None,
    }
}

/// `rows` from float `at` on, borrowed where `rows` is.
fn rows_from(rows: Cow<'_, [f32]>, at: usize) -> Cow<'_, [f32]> {
    match rows {
        Cow::Borrowed(r) => Cow::Borrowed(&r[at..]),
        Cow::Owned(mut r) => {
            r.drain(..at);
            Cow::Owned(r)
        }
    }
}
