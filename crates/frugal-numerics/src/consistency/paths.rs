//! The numerics-level attention paths of the consistency harness: every kernel of this crate
//! with the settings its callers use, each with the reference it must equal.
//!
//! | path | kernel | reference reads | visits |
//! |---|---|---|---|
//! | `dense` | `causal_attention` | the rows | every causal pair |
//! | `dense+mask` | `causal_attention` with a per-head [`KeyMask`] | the rows | pairs the mask allows |
//! | `dense+scale+patch` | `causal_attention` on a MiniCache-shaped view | `scale·row` or the patch | every causal pair |
//! | `sparse:all` | `sparse_attention`, [`KeySet::All`] | the rows | every causal pair |
//! | `sparse:full-lists` | `sparse_attention`, every row listed | the rows | every causal pair |
//! | `sparse:lists` | `sparse_attention`, per-(block, head) subsets | the rows | listed pairs |
//! | `sparse:lists+scale` | the same over a view with row scales | `scale·row` | listed pairs |
//! | `sparse:lazy-copy`, `sparse:lazy-zero` | skipped queries | the rows | listed pairs; skipped rows copied / zero |
//! | `block-window`, `block-window:all` | `fps_attention`, no FP8 | the rows | the block window |
//! | `block-window+fp8-qkv` | `fps_attention`, Q/K/V quantised | the quantised rows | the block window |
//! | `block-window+fp8` | `fps_attention`, Q/K/V/P quantised | the quantised rows | the block window |
//! | `block-map`, `block-map+fp8` | `block_sparse_attention_head` (the GPU's CPU reference) | as above | the block map |

use super::{f32_bound, Case, KernelPath, RefHead, RefStats, Reference, Tolerance, F32_REL_L2};
use crate::attention::{causal_attention, AttentionShape, KeyMask, KvSlices, RowPatch};
use crate::block_sparse::{block_sparse_attention_head, BlockMap, Fp8Opts};
use crate::fp8::{amax, fake_quant, scale_for_amax};
use crate::fps_attention::{fps_attention, CausalBlockWindow};
use crate::sparse_attention::{sparse_attention, BlockPlan, KeySet, LazyFill, SparsePlan};

/// Every numerics-level path.
pub fn all() -> Vec<Box<dyn KernelPath>> {
    vec![
        Box::new(Dense),
        Box::new(DenseMasked),
        Box::new(DenseScaledPatched),
        Box::new(Sparse::new(Lists::All)),
        Box::new(Sparse::new(Lists::Full)),
        Box::new(Sparse::new(Lists::Subset)),
        Box::new(Sparse {
            scaled: true,
            ..Sparse::new(Lists::Subset)
        }),
        Box::new(Sparse {
            lazy: Some(LazyFill::Copy),
            ..Sparse::new(Lists::Subset)
        }),
        Box::new(Sparse {
            lazy: Some(LazyFill::Residual),
            block: 16,
            ..Sparse::new(Lists::Subset)
        }),
        Box::new(BlockWindow::new(3, None)),
        Box::new(BlockWindow::new(0, None)),
        Box::new(BlockWindow::new(3, Some(FP8_QKV))),
        Box::new(BlockWindow::new(3, Some(Fp8Opts::full(16)))),
        Box::new(BlockMapPath { fp8: None }),
        Box::new(BlockMapPath {
            fp8: Some(Fp8Opts::full(16)),
        }),
    ]
}

/// FP8 on Q, K and V but not on P: the quantised-input handling alone, which must then match
/// the reference on the same quantised inputs to f32 rounding.
const FP8_QKV: Fp8Opts = Fp8Opts {
    quant_qk: true,
    quant_v: true,
    quant_p: false,
    q_tile: 16,
    k_tile: 16,
};

/// The dense kernel, every causal pair.
pub struct Dense;

impl KernelPath for Dense {
    fn name(&self) -> String {
        "dense".into()
    }
    fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
        let s = c.slices();
        Box::new(move || causal_attention(&c.q, &c.q_positions, &s, c.shape, None))
    }
    fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
        Reference::of_case(c)
    }
}

/// A mask that differs per query head (as the knockout policies' do): head `h` drops keys at
/// positions `p ≡ h (mod 4)`, except the query's own token.
struct HeadStripes;

impl KeyMask for HeadStripes {
    fn allows(&self, q_head: usize, q_pos: u32, k_pos: u32) -> bool {
        k_pos == q_pos || !(k_pos as usize + 4 - q_head % 4).is_multiple_of(4)
    }
}

/// The dense kernel with a predicate mask evaluated inside it.
pub struct DenseMasked;

impl KernelPath for DenseMasked {
    fn name(&self) -> String {
        "dense+mask".into()
    }
    fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
        let s = c.slices();
        Box::new(move || causal_attention(&c.q, &c.q_positions, &s, c.shape, Some(&HeadStripes)))
    }
    fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
        let group = c.shape.group();
        Reference {
            visible: Some(Box::new(move |h, i, j| {
                HeadStripes.allows(h, c.q_positions[i], c.heads[h / group].positions[j])
            })),
            ..Reference::of_case(c)
        }
    }
}

/// Per-row magnitudes and retained rows, shaped like a MiniCache view: every row is a scaled
/// direction, some rows are given in full (patches).
struct ScaledView {
    key_scale: Vec<Vec<f32>>,
    value_scale: Vec<Vec<f32>>,
    key_rows: Vec<Vec<u32>>,
    key_data: Vec<Vec<f32>>,
    value_rows: Vec<Vec<u32>>,
    value_data: Vec<Vec<f32>>,
}

impl ScaledView {
    fn new(c: &Case, patches: bool) -> Self {
        let d = c.shape.head_dim;
        let scale = |salt: u32| -> Vec<Vec<f32>> {
            c.heads
                .iter()
                .map(|h| {
                    h.positions
                        .iter()
                        .map(|&p| 0.4 + ((p * 7 + salt) % 11) as f32 * 0.15)
                        .collect()
                })
                .collect()
        };
        let rows = |m: u32, r: u32| -> Vec<Vec<u32>> {
            c.heads
                .iter()
                .map(|h| {
                    (0..h.positions.len() as u32)
                        .filter(|j| patches && j % m == r)
                        .collect()
                })
                .collect()
        };
        let (key_rows, value_rows) = (rows(9, 2), rows(7, 0));
        let data = |rows: &[Vec<u32>], seed: u64| -> Vec<Vec<f32>> {
            rows.iter()
                .enumerate()
                .map(|(g, r)| super::values(r.len() * d, c.spec.seed * 100 + seed + g as u64))
                .collect()
        };
        ScaledView {
            key_scale: scale(1),
            value_scale: scale(5),
            key_data: data(&key_rows, 60),
            value_data: data(&value_rows, 80),
            key_rows,
            value_rows,
        }
    }

    fn slices<'a>(&'a self, c: &'a Case) -> Vec<KvSlices<'a>> {
        c.heads
            .iter()
            .enumerate()
            .map(|(g, h)| {
                let patch = |rows: &'a [u32], data: &'a [f32]| {
                    (!rows.is_empty()).then_some(RowPatch { rows, data })
                };
                KvSlices {
                    key_scale: Some(&self.key_scale[g]),
                    value_scale: Some(&self.value_scale[g]),
                    key_patch: patch(&self.key_rows[g], &self.key_data[g]),
                    value_patch: patch(&self.value_rows[g], &self.value_data[g]),
                    ..KvSlices::new(&h.keys, &h.values, &h.positions)
                }
            })
            .collect()
    }

    fn ref_heads(&self, c: &Case) -> Vec<RefHead> {
        self.slices(c)
            .iter()
            .map(|s| RefHead::from_slices(s, c.shape.head_dim))
            .collect()
    }
}

/// The dense kernel reading magnitudes as score-column scales and retained rows as patches
/// (MiniCache's restore inside the score, no dense copy).
pub struct DenseScaledPatched;

impl KernelPath for DenseScaledPatched {
    fn name(&self) -> String {
        "dense+scale+patch".into()
    }
    fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
        let view = ScaledView::new(c, true);
        Box::new(move || causal_attention(&c.q, &c.q_positions, &view.slices(c), c.shape, None))
    }
    fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
        Reference {
            heads: ScaledView::new(c, true).ref_heads(c),
            ..Reference::of_case(c)
        }
    }
}

/// Which keys the sparse plan lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lists {
    /// [`KeySet::All`] (the kernel borrows the head's rows).
    All,
    /// Every row listed explicitly (the kernel gathers them): must equal dense.
    Full,
    /// A different pseudo-random ~2/3 of the rows per (query block, KV head), plus the rows at
    /// or after the block's first query (so no query is left without keys).
    Subset,
}

/// The sparse (gather-then-dense) kernel over per-(query block, KV head) index lists.
pub struct Sparse {
    pub lists: Lists,
    pub block: usize,
    /// Row scales on keys and values (no patches: the sparse kernel refuses them).
    pub scaled: bool,
    /// Skip every third query of a block (never the block's first) and fill its row so.
    pub lazy: Option<LazyFill>,
}

impl Sparse {
    pub fn new(lists: Lists) -> Self {
        Sparse {
            lists,
            block: 32,
            scaled: false,
            lazy: None,
        }
    }

    fn listed(c: &Case, b: usize, block: usize, g: usize, j: usize) -> bool {
        let first = c.q_positions[b * block];
        let h = (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((b * 31 + g * 7) as u64);
        c.heads[g].positions[j] >= first || h.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 61 >= 3
    }

    fn computed(&self, t: usize) -> Option<Vec<bool>> {
        self.lazy
            .map(|_| (0..t).map(|i| i % self.block == 0 || i % 3 != 1).collect())
    }

    fn plan(&self, c: &Case) -> SparsePlan {
        let t = c.q_positions.len();
        let computed = self.computed(t);
        SparsePlan {
            block: self.block,
            blocks: (0..t.div_ceil(self.block))
                .map(|b| BlockPlan {
                    keys: (0..c.shape.n_kv_heads)
                        .map(|g| {
                            let n = c.heads[g].positions.len();
                            match self.lists {
                                Lists::All => KeySet::All,
                                Lists::Full => KeySet::Rows((0..n as u32).collect()),
                                Lists::Subset => KeySet::Rows(
                                    (0..n)
                                        .filter(|&j| Self::listed(c, b, self.block, g, j))
                                        .map(|j| j as u32)
                                        .collect(),
                                ),
                            }
                        })
                        .collect(),
                    computed: computed
                        .as_ref()
                        .map(|f| f[b * self.block..((b + 1) * self.block).min(t)].to_vec()),
                })
                .collect(),
            fill: self.lazy.unwrap_or(LazyFill::Copy),
        }
    }
}

impl KernelPath for Sparse {
    fn name(&self) -> String {
        let lists = match self.lists {
            Lists::All => "all",
            Lists::Full => "full-lists",
            Lists::Subset => "lists",
        };
        let extra = match (self.scaled, self.lazy) {
            (true, _) => "+scale",
            (_, Some(LazyFill::Copy)) => "+lazy-copy",
            (_, Some(LazyFill::Residual)) => "+lazy-zero",
            _ => "",
        };
        format!("sparse:{lists}{extra} b{}", self.block)
    }
    fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
        let plan = self.plan(c);
        let view = self.scaled.then(|| ScaledView::new(c, false));
        Box::new(move || {
            let s = match &view {
                Some(v) => v.slices(c),
                None => c.slices(),
            };
            sparse_attention(&c.q, &c.q_positions, &s, c.shape, &plan)
        })
    }
    fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
        let mut r = Reference::of_case(c);
        if self.scaled {
            r.heads = ScaledView::new(c, false).ref_heads(c);
        }
        if self.lists == Lists::Subset {
            let (group, block) = (c.shape.group(), self.block);
            r.visible = Some(Box::new(move |h, i, j| {
                Self::listed(c, i / block, block, h / group, j)
            }));
        }
        if let (Some(fill), Some(computed)) = (self.lazy, self.computed(c.q_positions.len())) {
            // A skipped query takes the row of the previous computed query of its block, else
            // the next one (Copy), or zero (Residual).
            let t = computed.len();
            r.row_from = Some(
                (0..t)
                    .map(|i| {
                        if computed[i] {
                            return Some(i);
                        }
                        if fill == LazyFill::Residual {
                            return None;
                        }
                        let b0 = i / self.block * self.block;
                        let b1 = (b0 + self.block).min(t);
                        (b0..i)
                            .rev()
                            .find(|&k| computed[k])
                            .or((i..b1).find(|&k| computed[k]))
                    })
                    .collect(),
            );
        }
        r
    }
}

/// Fake-quantises row-major rows (`d` wide) to E4M3 in place, one scale per run of consecutive
/// rows with the same `group[row]` (scale = amax/448): how Q and K tiles are quantised.
pub fn fake_quant_row_groups(rows: &mut [f32], d: usize, group: &[usize]) {
    let mut r0 = 0;
    while r0 < group.len() {
        let r1 = r0 + group[r0..].iter().take_while(|&&x| x == group[r0]).count();
        let s = scale_for_amax(amax(&rows[r0 * d..r1 * d]));
        rows[r0 * d..r1 * d]
            .iter_mut()
            .for_each(|x| *x = fake_quant(*x, s));
        r0 = r1;
    }
}

/// Fake-quantises row-major rows to E4M3 in place, one scale per channel over all rows: how V
/// is quantised.
pub fn fake_quant_columns(rows: &mut [f32], d: usize) {
    for c in 0..d {
        let a = rows
            .iter()
            .skip(c)
            .step_by(d)
            .fold(0f32, |m, x| m.max(x.abs()));
        let s = scale_for_amax(a);
        rows.iter_mut()
            .skip(c)
            .step_by(d)
            .for_each(|x| *x = fake_quant(*x, s));
    }
}

/// The case's Q, K and V as an FP8 path quantises them: Q per (query head, tile of `q_tile`
/// positions of this call), K per (KV head, tile of `k_tile` positions of its stored rows), V
/// per (KV head, channel) over its stored rows. `None` leaves them unquantised.
pub fn quantised_inputs(c: &Case, fp8: Option<&Fp8Opts>) -> (Vec<f64>, Vec<RefHead>) {
    let Some(o) = fp8 else {
        let r = Reference::of_case(c);
        return (r.q, r.heads);
    };
    let AttentionShape {
        n_heads,
        head_dim: d,
        ..
    } = c.shape;
    let t = c.q_positions.len();
    let mut q = c.q.clone();
    if o.quant_qk {
        let tiles: Vec<usize> = c
            .q_positions
            .iter()
            .map(|&p| p as usize / o.q_tile)
            .collect();
        for h in 0..n_heads {
            let mut rows: Vec<f32> = (0..t)
                .flat_map(|i| c.q[(i * n_heads + h) * d..(i * n_heads + h + 1) * d].to_vec())
                .collect();
            fake_quant_row_groups(&mut rows, d, &tiles);
            for i in 0..t {
                q[(i * n_heads + h) * d..(i * n_heads + h + 1) * d]
                    .copy_from_slice(&rows[i * d..(i + 1) * d]);
            }
        }
    }
    let heads = c
        .heads
        .iter()
        .map(|h| {
            let (mut k, mut v) = (h.keys.clone(), h.values.clone());
            if o.quant_qk {
                let tiles: Vec<usize> =
                    h.positions.iter().map(|&p| p as usize / o.k_tile).collect();
                fake_quant_row_groups(&mut k, d, &tiles);
            }
            if o.quant_v {
                fake_quant_columns(&mut v, d);
            }
            RefHead::plain(&k, &v, &h.positions)
        })
        .collect();
    (q.iter().map(|&x| x as f64).collect(), heads)
}

/// The tolerance of a path that quantises P to E4M3 as `fp8(448·p)` (p ≤ 1 relative to the
/// running max) while its row sum takes the unquantised p: on top of the f32 bound, each
/// probability is off by at most 2⁻⁴ of itself in E4M3's normal range (3 mantissa bits,
/// round to nearest) and by at most half the subnormal step, 2⁻¹⁰/448, below it. The output
/// `Σ p̂·v / Σ p` is then off by at most `V·(2⁻⁴ + n·2⁻¹⁰/448)` (the row sum is ≥ 1: the
/// largest score contributes `p = 1`). The relative L2 tolerance, 2⁻⁴, is the level one-signed
/// rounding errors would reach; E4M3 rounding errors have random signs and measure ≤ 2.5e-2 on
/// the grid.
pub fn fp8_p_tolerance(shape: AttentionShape, stats: &RefStats) -> Tolerance {
    let v = stats.max_abs_value;
    let p = v * (1.0 / 16.0 + stats.max_keys as f64 / 1024.0 / 448.0);
    Tolerance {
        max_abs: f32_bound(shape, stats) + p,
        rel_l2: 1.0 / 16.0,
    }
}

/// FPSAttention's CPU path over the engine's layout: a causal block window (query blocks of 32,
/// key blocks of 16, `window` blocks up to the diagonal (0 = all), 1 sink block), optionally
/// with FP8 fake quantisation.
pub struct BlockWindow {
    pub window: CausalBlockWindow,
    pub fp8: Option<Fp8Opts>,
}

impl BlockWindow {
    pub fn new(window: usize, fp8: Option<Fp8Opts>) -> Self {
        BlockWindow {
            window: CausalBlockWindow {
                bm: 32,
                bn: 16,
                window,
                sink: 1,
            },
            fp8,
        }
    }
}

impl KernelPath for BlockWindow {
    fn name(&self) -> String {
        let w = if self.window.window == 0 {
            "block-window:all".to_string()
        } else {
            "block-window".to_string()
        };
        match self.fp8 {
            None => w,
            Some(o) if o.quant_p => format!("{w}+fp8"),
            Some(_) => format!("{w}+fp8-qkv"),
        }
    }
    fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
        let s = c.slices();
        Box::new(move || {
            fps_attention(
                &c.q,
                &c.q_positions,
                &s,
                c.shape,
                &self.window,
                self.fp8.as_ref(),
            )
        })
    }
    fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
        let (q, heads) = quantised_inputs(c, self.fp8.as_ref());
        let group = c.shape.group();
        let w = self.window;
        Reference {
            q,
            heads,
            visible: Some(Box::new(move |h, i, j| {
                let k_pos = c.heads[h / group].positions[j];
                w.visits(c.q_positions[i], k_pos as usize / w.bn)
            })),
            ..Reference::of_case(c)
        }
    }
    fn tolerance(&self, c: &Case, stats: &RefStats) -> Tolerance {
        match self.fp8 {
            Some(o) if o.quant_p => fp8_p_tolerance(c.shape, stats),
            _ => Tolerance {
                max_abs: f32_bound(c.shape, stats),
                rel_l2: F32_REL_L2,
            },
        }
    }
}

/// The whole-sequence block-map path (`block_sparse_attention_head`, the CPU reference the GPU
/// kernels are checked against), one query head at a time over its KV head: causal window of 3
/// key blocks of 16 plus 1 sink block, query blocks of 32. Prefills without holes only (it has
/// no positions: token `i` is position `i`).
pub struct BlockMapPath {
    pub fp8: Option<Fp8Opts>,
}

impl BlockMapPath {
    fn map(c: &Case) -> BlockMap {
        BlockMap::causal_window(1, c.q_positions.len(), 32, 16, 3, 1)
    }
}

impl KernelPath for BlockMapPath {
    fn name(&self) -> String {
        match self.fp8 {
            None => "block-map".into(),
            Some(_) => "block-map+fp8".into(),
        }
    }
    fn applies(&self, c: &Case) -> bool {
        c.spec.past == 0 && c.q_positions.len() > 1
    }
    fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
        let map = Self::map(c);
        let AttentionShape {
            n_heads,
            head_dim: d,
            ..
        } = c.shape;
        let t = c.q_positions.len();
        let group = c.shape.group();
        Box::new(move || {
            let mut out = vec![0f32; t * n_heads * d];
            for h in 0..n_heads {
                let qh: Vec<f32> = (0..t)
                    .flat_map(|i| c.q[(i * n_heads + h) * d..(i * n_heads + h + 1) * d].to_vec())
                    .collect();
                let kv = &c.heads[h / group];
                let o = block_sparse_attention_head(
                    &qh,
                    &kv.keys,
                    &kv.values,
                    d,
                    &map,
                    0,
                    None,
                    self.fp8.as_ref(),
                );
                for i in 0..t {
                    out[(i * n_heads + h) * d..(i * n_heads + h + 1) * d]
                        .copy_from_slice(&o[i * d..(i + 1) * d]);
                }
            }
            out
        })
    }
    fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
        let (q, heads) = quantised_inputs(c, self.fp8.as_ref());
        let map = Self::map(c);
        Reference {
            q,
            heads,
            visible: Some(Box::new(move |_, i, j| map.allows(0, i, j))),
            ..Reference::of_case(c)
        }
    }
    fn tolerance(&self, c: &Case, stats: &RefStats) -> Tolerance {
        match self.fp8 {
            Some(_) => fp8_p_tolerance(c.shape, stats),
            None => Tolerance {
                max_abs: f32_bound(c.shape, stats),
                rel_l2: F32_REL_L2,
            },
        }
    }
}
