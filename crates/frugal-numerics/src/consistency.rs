//! The kernel-consistency harness: every attention path is run on one grid of inputs and
//! compared with one naive reference, in the manner of ggml's `test-backend-ops`.
//!
//! - **Cases** ([`CaseSpec`], [`Case`]): shapes (head dims), GQA ratios, hole patterns (a KV
//!   head that dropped tokens another head keeps) and phases (prefill, chunked prefill after
//!   cached tokens, decode of one token). Inputs are deterministic pseudo-random values.
//! - **Paths** ([`KernelPath`]): one attention kernel with its settings. A path says how it runs
//!   ([`KernelPath::kernel`]) and what it must equal ([`KernelPath::reference`]): the reference's
//!   inputs (the K/V rows the path is meant to read, materialised) and visibility (which
//!   (query, key) pairs the path is meant to visit). Paths over caches that live in higher
//!   crates (KIVI's dequantised reads, MiniCache's restored rows, CUDA) implement the same trait
//!   in those crates' tests.
//! - **Reference** ([`naive_attention`]): straightforward loops in f64, one dot product per
//!   (query, key) pair, one softmax per row. No blocking, no online softmax, no tricks.
//! - **Comparison** ([`compare`]): max absolute error and relative L2 error against a tolerance
//!   that each path states ([`Tolerance`], [`f32_bound`]).
//! - **Perf mode** ([`time_case`]): the median time of a path's kernel on a case relative to the
//!   dense kernel on the same inputs.
//!
//! The numerics-level paths are in [`paths`]; `tests/kernel_consistency.rs` runs them in CI and
//! the `kernel-check` binary prints the table (`--perf` adds timings).

use crate::attention::{causal_attention, AttentionShape, KvSlices, RowPatch};
use serde::Serialize;
use std::time::Instant;

pub mod paths;

/// f32 unit roundoff, 2⁻²⁴.
pub const F32_UNIT: f64 = 1.0 / 16_777_216.0;

/// Where the queries of a case sit relative to the cached tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// A whole prompt in one call: `t` queries, no cached tokens.
    Prefill,
    /// `t` queries after `past` cached tokens (a second prefill chunk).
    Chunked,
    /// One query after `past` cached tokens.
    Decode,
}

/// Which cached tokens each KV head has dropped. Only tokens before this call's queries are
/// dropped (a cache evicts stored tokens, never the ones it is attending from), so a prefill
/// has no holes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Holes {
    None,
    /// KV head `g` drops every position `p` with `p mod (g+2) = 1`.
    Stride,
    /// KV head `g` drops a contiguous span of a quarter of the past, starting at a place that
    /// depends on `g` (so one head's span is kept by the others).
    Span,
    /// StreamingLLM-like: KV head `g` keeps 4 sink tokens and its last `16·(g+1)` past tokens.
    SinkWindow,
}

impl Holes {
    /// Whether KV head `g` (of `n_kv`) keeps past position `p` (of `past`).
    pub fn keeps(self, g: usize, n_kv: usize, p: u32, past: usize) -> bool {
        let (p, past) = (p as usize, past.max(1));
        match self {
            Holes::None => true,
            Holes::Stride => p % (g + 2) != 1,
            Holes::Span => {
                let len = past / 4;
                let start = (past * g / (n_kv + 1) + 7 * g) % past;
                !(start..start + len).contains(&p)
            }
            Holes::SinkWindow => p < 4 || p + 16 * (g + 1) >= past,
        }
    }
}

/// One case of the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CaseSpec {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub phase: Phase,
    /// Cached tokens before this call.
    pub past: usize,
    /// Queries of this call.
    pub t: usize,
    pub holes: Holes,
    pub seed: u64,
}

impl CaseSpec {
    pub fn label(&self) -> String {
        format!(
            "h{}/kv{} d{} {:?} past={} t={} holes={:?}",
            self.n_heads, self.n_kv_heads, self.head_dim, self.phase, self.past, self.t, self.holes
        )
    }
}

/// The CI grid: GQA ratios 1, 3 and 8; head dims 16 and 64; prefill of 150 tokens, a chunk of
/// 70 after 90 cached, a decode step after 300 cached; every hole pattern where there is a past.
/// 150 and 70 are not multiples of any block size used by the paths, so partial blocks are
/// always exercised.
pub fn ci_grid() -> Vec<CaseSpec> {
    grid(
        &[16, 64],
        &[
            (0, 150, Phase::Prefill),
            (90, 70, Phase::Chunked),
            (300, 1, Phase::Decode),
        ],
    )
}

/// The perf grid: longer inputs where time is worth measuring (head dim 64).
pub fn perf_grid() -> Vec<CaseSpec> {
    grid(
        &[64],
        &[
            (0, 1024, Phase::Prefill),
            (1024, 256, Phase::Chunked),
            (4096, 1, Phase::Decode),
        ],
    )
}

fn grid(dims: &[usize], phases: &[(usize, usize, Phase)]) -> Vec<CaseSpec> {
    let mut out = Vec::new();
    let mut seed = 1;
    for &(n_heads, n_kv_heads) in &[(4, 4), (6, 2), (8, 1)] {
        for &head_dim in dims {
            for &(past, t, phase) in phases {
                let holes: &[Holes] = if past == 0 {
                    &[Holes::None]
                } else {
                    &[Holes::None, Holes::Stride, Holes::Span, Holes::SinkWindow]
                };
                for &holes in holes {
                    out.push(CaseSpec {
                        n_heads,
                        n_kv_heads,
                        head_dim,
                        phase,
                        past,
                        t,
                        holes,
                        seed,
                    });
                    seed += 1;
                }
            }
        }
    }
    out
}

/// Keys, values and positions (ascending) of one KV head, row-major `head_dim` floats a row.
#[derive(Clone, Debug)]
pub struct HeadRows {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
    pub positions: Vec<u32>,
}

/// The inputs of one case, in the engine's layout: `q` is `[t, n_heads, head_dim]` at
/// `q_positions`; `heads[g]` is KV head `g` (it holds this call's tokens too).
#[derive(Clone, Debug)]
pub struct Case {
    pub spec: CaseSpec,
    pub shape: AttentionShape,
    pub q: Vec<f32>,
    pub q_positions: Vec<u32>,
    pub heads: Vec<HeadRows>,
}

/// Pseudo-random values in [-1, 1) from a seed (a 64-bit LCG; no `rand` in this crate).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

impl Case {
    /// Builds the inputs. Queries are scaled by 2 and keys share a component with the queries of
    /// their group, so softmax rows are peaked as in a trained model (a flat softmax hides
    /// errors on individual keys).
    pub fn new(spec: CaseSpec) -> Self {
        let shape = AttentionShape {
            n_heads: spec.n_heads,
            n_kv_heads: spec.n_kv_heads,
            head_dim: spec.head_dim,
        };
        let d = spec.head_dim;
        let n = spec.past + spec.t;
        let q: Vec<f32> = values(spec.t * spec.n_heads * d, spec.seed * 100)
            .into_iter()
            .map(|x| 2.0 * x)
            .collect();
        // A direction per KV group that every key of the group leans towards.
        let heads = (0..spec.n_kv_heads)
            .map(|g| {
                let seed = spec.seed * 100 + 1 + 2 * g as u64;
                let lean = values(d, seed + 1000);
                let positions: Vec<u32> = (0..n as u32)
                    .filter(|&p| {
                        p as usize >= spec.past
                            || spec.holes.keeps(g, spec.n_kv_heads, p, spec.past)
                    })
                    .collect();
                let raw = values(positions.len() * d, seed);
                let keys = raw
                    .chunks_exact(d)
                    .zip(&positions)
                    .flat_map(|(row, &p)| {
                        let w = if p % 3 == 0 { 0.8 } else { 0.0 };
                        row.iter()
                            .zip(&lean)
                            .map(move |(x, l)| x + w * l)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                HeadRows {
                    keys,
                    values: values(positions.len() * d, seed + 1),
                    positions,
                }
            })
            .collect();
        Case {
            spec,
            shape,
            q,
            q_positions: (spec.past as u32..n as u32).collect(),
            heads,
        }
    }

    /// One plain (unscaled, unpatched) view per KV head.
    pub fn slices(&self) -> Vec<KvSlices<'_>> {
        self.heads
            .iter()
            .map(|h| KvSlices::new(&h.keys, &h.values, &h.positions))
            .collect()
    }

    /// The rows as the reference reads them, widened to f64.
    pub fn ref_heads(&self) -> Vec<RefHead> {
        self.heads
            .iter()
            .map(|h| RefHead::plain(&h.keys, &h.values, &h.positions))
            .collect()
    }
}

/// One KV head as the reference reads it: rows in f64 (already carrying any scale or patch the
/// path's storage applies), positions ascending.
#[derive(Clone, Debug)]
pub struct RefHead {
    pub keys: Vec<f64>,
    pub values: Vec<f64>,
    pub positions: Vec<u32>,
}

impl RefHead {
    pub fn plain(keys: &[f32], values: &[f32], positions: &[u32]) -> Self {
        RefHead {
            keys: keys.iter().map(|&x| x as f64).collect(),
            values: values.iter().map(|&x| x as f64).collect(),
            positions: positions.to_vec(),
        }
    }

    /// What a [`KvSlices`] view means, written out row by row: key row `j` is
    /// `key_scale[j] · keys[j]`, or the patch row when `j` is patched (likewise values). The
    /// kernels never build these rows (they scale score columns and correct patched columns);
    /// this is the definition they are checked against.
    pub fn from_slices(s: &KvSlices<'_>, d: usize) -> Self {
        RefHead {
            keys: materialise(s.keys, s.key_scale, s.key_patch, d),
            values: materialise(s.values, s.value_scale, s.value_patch, d),
            positions: s.positions.to_vec(),
        }
    }
}

/// `scale[j] · rows[j]` for every row, then the patch rows written over theirs, in f64.
fn materialise(
    rows: &[f32],
    scale: Option<&[f32]>,
    patch: Option<RowPatch<'_>>,
    d: usize,
) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::with_capacity(rows.len());
    for (j, row) in rows.chunks_exact(d).enumerate() {
        let m = scale.map_or(1.0, |s| s[j] as f64);
        out.extend(row.iter().map(|&x| m * x as f64));
    }
    if let Some(p) = patch {
        for (i, &j) in p.rows.iter().enumerate() {
            let j = j as usize;
            for c in 0..d {
                out[j * d + c] = p.data[i * d + c] as f64;
            }
        }
    }
    out
}

/// Which (query head, query token, KV row) pairs a path visits beyond causality:
/// `visible(q_head, token_index, row_index)`.
pub type Visibility<'a> = Box<dyn Fn(usize, usize, usize) -> bool + 'a>;

/// Everything the naive reference needs for one path on one case.
pub struct Reference<'a> {
    pub q: Vec<f64>,
    pub q_positions: &'a [u32],
    pub heads: Vec<RefHead>,
    pub shape: AttentionShape,
    /// `None`: every causal pair.
    pub visible: Option<Visibility<'a>>,
    /// Output token `i` is the reference's token `row_from[i]`, or zero when `None` (paths that
    /// skip queries and copy or zero their rows). `None` here: every token is its own.
    pub row_from: Option<Vec<Option<usize>>>,
}

impl<'a> Reference<'a> {
    /// The case's own inputs, every causal pair.
    pub fn of_case(case: &'a Case) -> Self {
        Reference {
            q: case.q.iter().map(|&x| x as f64).collect(),
            q_positions: &case.q_positions,
            heads: case.ref_heads(),
            shape: case.shape,
            visible: None,
            row_from: None,
        }
    }
}

/// What the reference saw, for the error bounds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RefStats {
    /// Most keys any output row attends to.
    pub max_keys: usize,
    /// Largest `Σ_c |q_c·k_c| / √d` over visited pairs: the scale of a score's rounding error.
    pub max_abs_score: f64,
    /// Largest |value| over visited rows.
    pub max_abs_value: f64,
}

/// The reference: for every query token, query head and visible key, `s = q·k / √d`; per row,
/// `p = exp(s − max) / Σ exp(s − max)`; `o = Σ p·v`. Everything in f64, in the plainest loops.
/// A row with no visible key is zero. Returns `[t, n_heads, head_dim]` and the stats.
pub fn naive_attention(r: &Reference<'_>) -> (Vec<f64>, RefStats) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
    } = r.shape;
    let group = n_heads / n_kv_heads;
    let t = r.q_positions.len();
    let scale = 1.0 / (d as f64).sqrt();
    let mut own = vec![0f64; t * n_heads * d];
    let mut stats = RefStats::default();
    for (i, &q_pos) in r.q_positions.iter().enumerate() {
        for h in 0..n_heads {
            let kv = &r.heads[h / group];
            let q = &r.q[(i * n_heads + h) * d..(i * n_heads + h + 1) * d];
            let mut scores: Vec<(usize, f64)> = Vec::new();
            for (j, &k_pos) in kv.positions.iter().enumerate() {
                if k_pos > q_pos || !r.visible.as_ref().is_none_or(|v| v(h, i, j)) {
                    continue;
                }
                let k = &kv.keys[j * d..(j + 1) * d];
                let mut dot = 0f64;
                let mut abs = 0f64;
                for c in 0..d {
                    dot += q[c] * k[c];
                    abs += (q[c] * k[c]).abs();
                }
                stats.max_abs_score = stats.max_abs_score.max(abs * scale);
                scores.push((j, dot * scale));
            }
            stats.max_keys = stats.max_keys.max(scores.len());
            if scores.is_empty() {
                continue;
            }
            let max = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s.1 - max).exp()).sum();
            let out = &mut own[(i * n_heads + h) * d..(i * n_heads + h + 1) * d];
            for &(j, s) in &scores {
                let p = (s - max).exp() / total;
                let v = &kv.values[j * d..(j + 1) * d];
                for c in 0..d {
                    out[c] += p * v[c];
                    stats.max_abs_value = stats.max_abs_value.max(v[c].abs());
                }
            }
        }
    }
    let Some(from) = &r.row_from else {
        return (own, stats);
    };
    let row = n_heads * d;
    let mut out = vec![0f64; t * row];
    for (i, src) in from.iter().enumerate() {
        if let Some(s) = *src {
            out[i * row..(i + 1) * row].copy_from_slice(&own[s * row..(s + 1) * row]);
        }
    }
    (out, stats)
}

/// A path's allowed error on one case. `max_abs` bounds every element; `rel_l2` bounds
/// `‖out − ref‖₂ / ‖ref‖₂`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    pub max_abs: f64,
    pub rel_l2: f64,
}

/// Worst-case forward-error bound of a kernel that computes attention in f32, for the inputs the
/// reference saw. With `u = 2⁻²⁴`, `d` the head dim, `n` the visited keys, `S` the largest
/// `Σ|q_c k_c|/√d` and `V` the largest |value|:
/// - a score in f32 (query pre-scaling, a length-`d` dot product in any summation order, a row
///   scale) is off by at most `(d + 2)·u·S`;
/// - softmax subtracts the row max (shifting every score by the same rounded max), so each
///   probability is off relatively by at most twice the score error, plus the exponential's
///   error (the polynomial `exp` is within 4e-7 ≈ 7u of `exp`, tested in `attention`), plus the
///   `n`-term sum and the division, `(n + 2)·u`;
/// - `o = Σ p·v` adds `n·u·V` of accumulation.
///
/// Together `|Δo| ≤ V·u·(2(d+2)·S + 2n + 16)`. It is a worst case; measured errors are one to
/// two orders below (the report shows both), while a missed or extra key moves the output by
/// `p·|v|`, far above it for any key that matters.
pub fn f32_bound(shape: AttentionShape, stats: &RefStats) -> f64 {
    let d = shape.head_dim as f64;
    let v = stats.max_abs_value.max(1e-30);
    v * F32_UNIT
        * (2.0 * (d + 2.0) * stats.max_abs_score.max(1.0) + 2.0 * stats.max_keys as f64 + 16.0)
}

/// Relative L2 tolerance of the f32 paths: `1e-5`. The element bound above, divided by the
/// output's RMS, comes to ~1e-4–1e-3 on the grid, so this is tighter than the worst case; it
/// holds because f32 rounding errors have random signs and average out (measured ≤ 6e-7 on
/// the grid), and it is what catches a small systematic error (a scale applied twice to one
/// column) that hides under the element bound.
pub const F32_REL_L2: f64 = 1e-5;

/// The result of comparing one path with the reference on one case.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub path: String,
    pub case: String,
    pub spec: CaseSpec,
    pub max_abs: f64,
    pub rel_l2: f64,
    pub tolerance: Tolerance,
    pub stats: RefStats,
    /// Both errors within tolerance and every output finite.
    pub pass: bool,
}

/// Max |a − b| and ‖a − b‖/‖b‖ (0 when both are zero; infinite when `a` has a non-finite value).
pub fn errors(out: &[f32], reference: &[f64]) -> (f64, f64) {
    assert_eq!(
        out.len(),
        reference.len(),
        "output length differs from the reference"
    );
    let (mut max, mut num, mut den) = (0f64, 0f64, 0f64);
    for (&a, &b) in out.iter().zip(reference) {
        if !a.is_finite() {
            return (f64::INFINITY, f64::INFINITY);
        }
        let e = a as f64 - b;
        max = max.max(e.abs());
        num += e * e;
        den += b * b;
    }
    let rel = if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    };
    (max, rel)
}

/// One attention path under test.
pub trait KernelPath {
    /// Short name, e.g. `dense` or `block-window+fp8`.
    fn name(&self) -> String;
    /// Whether the path runs on this case (e.g. a whole-sequence path needs a prefill).
    fn applies(&self, _case: &Case) -> bool {
        true
    }
    /// The kernel call, set up (plans built, views made) but not yet run: the perf mode times
    /// only the returned closure.
    fn kernel<'c>(&'c self, case: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c>;
    /// What the path must equal.
    fn reference<'c>(&'c self, case: &'c Case) -> Reference<'c>;
    /// The allowed error, given what the reference saw. Default: the f32 bound.
    fn tolerance(&self, case: &Case, stats: &RefStats) -> Tolerance {
        Tolerance {
            max_abs: f32_bound(case.shape, stats),
            rel_l2: F32_REL_L2,
        }
    }
}

/// Runs `path` on `case` and compares it with the reference.
pub fn compare(path: &dyn KernelPath, case: &Case) -> Comparison {
    let out = path.kernel(case)();
    let (reference, stats) = naive_attention(&path.reference(case));
    let (max_abs, rel_l2) = errors(&out, &reference);
    let tolerance = path.tolerance(case, &stats);
    Comparison {
        path: path.name(),
        case: case.spec.label(),
        spec: case.spec,
        max_abs,
        rel_l2,
        tolerance,
        stats,
        pass: max_abs <= tolerance.max_abs && rel_l2 <= tolerance.rel_l2,
    }
}

/// Every applicable (path, case) pair of the grid, compared.
pub fn check_all(paths: &[Box<dyn KernelPath + '_>], specs: &[CaseSpec]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for &spec in specs {
        let case = Case::new(spec);
        for p in paths {
            if p.applies(&case) {
                out.push(compare(p.as_ref(), &case));
            }
        }
    }
    out
}

/// One line per comparison and a summary per path: worst error over tolerance.
pub fn format_report(rows: &[Comparison]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<28} {:<48} {:>10} {:>10} {:>10} {:>10}  ok\n",
        "path", "case", "max_abs", "tol", "rel_l2", "tol"
    ));
    for r in rows {
        s.push_str(&format!(
            "{:<28} {:<48} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e}  {}\n",
            r.path,
            r.case,
            r.max_abs,
            r.tolerance.max_abs,
            r.rel_l2,
            r.tolerance.rel_l2,
            if r.pass { "ok" } else { "FAIL" }
        ));
    }
    s.push_str("\nper path: cases, failures, worst max_abs/tol, worst rel_l2/tol\n");
    let mut names: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    names.dedup();
    names.sort();
    names.dedup();
    for name in names {
        let of: Vec<&Comparison> = rows.iter().filter(|r| r.path == name).collect();
        let worst = |f: &dyn Fn(&Comparison) -> f64| of.iter().map(|r| f(r)).fold(0f64, f64::max);
        s.push_str(&format!(
            "{:<28} {:>4} {:>3} {:>10.3} {:>10.3}\n",
            name,
            of.len(),
            of.iter().filter(|r| !r.pass).count(),
            worst(&|r| r.max_abs / r.tolerance.max_abs),
            worst(&|r| r.rel_l2 / r.tolerance.rel_l2),
        ));
    }
    s
}

/// Perf mode: one path's kernel time on one case, against the dense kernel on the same inputs.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub path: String,
    pub case: String,
    /// Median seconds of one kernel call.
    pub seconds: f64,
    pub dense_seconds: f64,
    /// `seconds / dense_seconds`.
    pub relative: f64,
    pub reps: usize,
}

/// Median seconds of `reps` calls of `a` and of `b`, the calls interleaved (a, b, a, b, …)
/// after one warm-up call each, so a change in the machine's load hits both alike.
pub fn median_seconds_interleaved(
    reps: usize,
    a: &dyn Fn() -> Vec<f32>,
    b: &dyn Fn() -> Vec<f32>,
) -> (f64, f64) {
    std::hint::black_box(a());
    std::hint::black_box(b());
    let time = |f: &dyn Fn() -> Vec<f32>| {
        let t0 = Instant::now();
        std::hint::black_box(f());
        t0.elapsed().as_secs_f64()
    };
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        ta.push(time(a));
        tb.push(time(b));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(ta), median(tb))
}

/// Times `path` and the dense kernel on `case`, `reps` interleaved calls each. The `dense`
/// path's own row measures the noise of the comparison (ideally 1.00).
pub fn time_case(path: &dyn KernelPath, case: &Case, reps: usize) -> Timing {
    let slices = case.slices();
    let dense = || causal_attention(&case.q, &case.q_positions, &slices, case.shape, None);
    let kernel = path.kernel(case);
    let (seconds, dense_seconds) = median_seconds_interleaved(reps, &*kernel, &dense);
    Timing {
        path: path.name(),
        case: case.spec.label(),
        seconds,
        dense_seconds,
        relative: seconds / dense_seconds,
        reps,
    }
}
