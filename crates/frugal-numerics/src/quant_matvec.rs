//! Quantised weights × a few activation rows, with the activations quantised to int8: the
//! product every decode step spends its time in.
//!
//! A decode step multiplies one activation row by every projection of the model, so it is
//! bound by how fast the weight bytes stream through the cores. Dequantising the weights to
//! f32 first would read 4–8× more bytes; instead each activation row is quantised once per
//! call to int8 in blocks of 32 values (one f32 scale per block, `scale = max|x| / 127`), and
//! every weight block is multiplied in integers against the activation block it meets:
//! unsigned-by-signed byte products summed pairwise to i16, then to i32 (AVX2's
//! `vpmaddubsw` + `vpmaddwd`), scaled once per block. The same scheme as llama.cpp's CPU
//! kernels; the code here is ours.
//!
//! Formats (the GGUF block layouts): `Q4_0`, `Q4_1`, `Q8_0` (blocks of 32) and the K-quants
//! `Q4_K`, `Q6_K` (super-blocks of 256 with 6-bit / 8-bit sub-block scales). The activation
//! blocks are always 32 wide, so a K-quant super-block meets eight of them and each of its
//! sub-blocks is scaled with its own activation scale (finer than llama.cpp's one scale per 256,
//! our choice: more accurate for the same speed).
//!
//! The error against the f32 product of the dequantised weights comes only from rounding the
//! activations: each value moves by at most half its block's scale, so `|ours − exact| ≤
//! Σᵢ |wᵢ| · scale(xᵢ) / 2` (plus f32 summation error); the tests check that bound.
//!
//! The AVX2 path is chosen at run time (`is_x86_feature_detected!`); elsewhere a portable
//! integer path computes the same sums.

use half::f16;
use rayon::prelude::*;
use std::fmt;

/// Values per activation block (and per block of the 32-value formats).
pub const ACT_BLOCK: usize = 32;

/// A GGUF weight block format this module multiplies directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 32 values: f16 scale, 16 bytes of 4-bit codes; value = scale · (code − 8).
    Q4_0,
    /// 32 values: f16 scale, f16 minimum, 16 bytes of 4-bit codes; value = scale · code + min.
    Q4_1,
    /// 32 values: f16 scale, 32 signed bytes; value = scale · code.
    Q8_0,
    /// 256 values: f16 scale and min-scale, 12 bytes of packed 6-bit sub-block scales and
    /// mins (8 sub-blocks of 32), 128 bytes of 4-bit codes; value = d·sc·code − dmin·m.
    Q4K,
    /// 256 values: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 signed 8-bit
    /// sub-block scales (16 values each), f16 scale; value = d · sc · (code − 32).
    Q6K,
}

impl QuantFormat {
    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => 32,
            QuantFormat::Q4K | QuantFormat::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4K => 144,
            QuantFormat::Q6K => 210,
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            QuantFormat::Q4_0 => "Q4_0",
            QuantFormat::Q4_1 => "Q4_1",
            QuantFormat::Q8_0 => "Q8_0",
            QuantFormat::Q4K => "Q4_K",
            QuantFormat::Q6K => "Q6_K",
        };
        f.write_str(name)
    }
}

/// Why a quantised product cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantMatvecError {
    #[error("{format} rows of {cols} values: not a whole number of {block}-value blocks")]
    Cols {
        format: QuantFormat,
        cols: usize,
        block: usize,
    },
    #[error("{format} matrix of {rows}×{cols} needs {expected} bytes, got {got}")]
    Bytes {
        format: QuantFormat,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("activations of {got} values are not whole rows of {cols}")]
    Activations { got: usize, cols: usize },
}

/// A row-major quantised matrix `[rows, cols]`, borrowed as its GGUF bytes.
#[derive(Clone, Copy, Debug)]
pub struct QuantMatrix<'a> {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    data: &'a [u8],
}

impl<'a> QuantMatrix<'a> {
    /// Checks that `data` holds exactly `rows` rows of `cols` values in `format`.
    pub fn new(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, QuantMatvecError> {
        let block = format.block_values();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(QuantMatvecError::Cols {
                format,
                cols,
                block,
            });
        }
        let expected = rows * (cols / block) * format.block_bytes();
        if data.len() != expected {
            return Err(QuantMatvecError::Bytes {
                format,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        Ok(QuantMatrix {
            format,
            rows,
            cols,
            data,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.format.block_values() * self.format.block_bytes()
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }
}

/// Activation rows quantised to int8 in blocks of [`ACT_BLOCK`].
#[derive(Clone, Debug)]
pub struct Q8Activations {
    cols: usize,
    rows: usize,
    /// Codes, row after row.
    q: Vec<i8>,
    /// One scale per block: value ≈ scale · code.
    scale: Vec<f32>,
    /// Per block: scale · Σ codes (what a weight block's offset multiplies).
    scaled_sum: Vec<f32>,
}

/// One block of 32 values to int8 codes: returns the scale `max|x| / 127` and the sum of the
/// codes. Rounds ties to even (as the AVX2 form's rounding instruction does).
fn quantize_block(xs: &[f32], qs: &mut [i8]) -> (f32, i32) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in qs.iter_mut().zip(xs) {
        let c = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        *o = c;
        sum += c as i32;
    }
    (d, sum)
}

impl Q8Activations {
    /// Quantises `x` (`rows` rows of `cols` values, `cols` a multiple of 32).
    pub fn quantize(x: &[f32], cols: usize) -> Result<Self, QuantMatvecError> {
        if cols == 0 || !cols.is_multiple_of(ACT_BLOCK) || !x.len().is_multiple_of(cols) {
            return Err(QuantMatvecError::Activations { got: x.len(), cols });
        }
        let blocks = x.len() / ACT_BLOCK;
        #[cfg(target_arch = "x86_64")]
        let kernel = Kernel::detect();
        let mut q = vec![0i8; x.len()];
        let mut scale = vec![0f32; blocks];
        let mut scaled_sum = vec![0f32; blocks];
        for (b, (xs, qs)) in x
            .chunks_exact(ACT_BLOCK)
            .zip(q.chunks_exact_mut(ACT_BLOCK))
            .enumerate()
        {
            #[cfg(target_arch = "x86_64")]
            if kernel == Kernel::Avx2 {
                // SAFETY: `detect` chose Avx2 only where the CPU has AVX2 and FMA; both blocks
                // are 32 values.
                let (d, sum) = unsafe { avx2::quantize_block(xs, qs) };
                scale[b] = d;
                scaled_sum[b] = d * sum as f32;
                continue;
            }
            let (d, sum) = quantize_block(xs, qs);
            scale[b] = d;
            scaled_sum[b] = d * sum as f32;
        }
        Ok(Q8Activations {
            cols,
            rows: x.len() / cols,
            q,
            scale,
            scaled_sum,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `i`: its codes, scales and scaled sums.
    fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.cols / ACT_BLOCK;
        ActRow {
            q: &self.q[i * self.cols..(i + 1) * self.cols],
            scale: &self.scale[i * nb..(i + 1) * nb],
            scaled_sum: &self.scaled_sum[i * nb..(i + 1) * nb],
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) scale: &'a [f32],
    pub(crate) scaled_sum: &'a [f32],
}

/// Weight rows per parallel task: a contiguous run, so each thread streams long stretches of
/// the weight (the hardware prefetcher follows a stream; short scattered runs keep restarting
/// it), about four tasks per thread so that stealing still balances uneven threads, and a
/// multiple of [`ROW_GROUP`]. The figures are ours, chosen by timing SmolLM2 decode.
fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4)
        .next_multiple_of(ROW_GROUP)
        .max(4 * ROW_GROUP)
}

/// Weight rows one kernel call computes together against the same activation block: their
/// accumulators are independent chains (the FMA latency overlaps) and each activation block
/// is loaded once for all of them.
const ROW_GROUP: usize = 4;

/// `out[i, r] = Σ_c x[i, c] · w[r, c]` for every activation row `i` of `x` (row-major
/// `[x.rows(), w.rows()]`), in parallel over weight rows on the current rayon pool.
pub fn matmul(w: &QuantMatrix<'_>, x: &Q8Activations, out: &mut [f32]) {
    assert_eq!(x.cols, w.cols, "activation width must match the weight's");
    let m = x.rows;
    assert_eq!(
        out.len(),
        m * w.rows,
        "output must be [rows of x, rows of w]"
    );
    matmul_many(&[*w], x, vec![out]);
}

/// Whether [`matmul`] runs `format` on the AVX-512 panel kernel (see [`crate::quant_panel`]):
/// where the CPU has it, unless `FRUGAL_QUANT_TILE=off` (for A/B timing against the grouped
/// kernel per activation row).
#[cfg(target_arch = "x86_64")]
fn panel_available(format: QuantFormat) -> bool {
    use std::sync::OnceLock;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    matches!(
        format,
        QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0
    ) && *AVAILABLE.get_or_init(|| {
        std::env::var("FRUGAL_QUANT_TILE").map_or(true, |v| v != "off")
            && crate::quant_panel::available()
    })
}

/// Whether [`matmul`] runs the 32-value formats on the AVX-512 panel kernel on this CPU (else
/// the grouped kernel, one activation row at a time).
pub fn panel_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        panel_available(QuantFormat::Q4_1)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `outs[i] = ws[i] · x` for several weights of one input (a layer's Q, K and V; its gate
/// and up), each `outs[i]` row-major `[x.rows(), ws[i].rows()]`. On the AVX-512 panel kernel
/// ([`crate::quant_panel`]) every weight's rows are shared out in one parallel loop (one
/// fork-join instead of one per weight), whatever the number of activation rows: a row's
/// result is then the same whether it is multiplied alone or in a batch, and one row runs
/// faster than on the grouped kernel. Elsewhere one row runs [`matvec_many`], several rows
/// the grouped kernel per activation row, also in one parallel loop over every weight's rows.
pub fn matmul_many(ws: &[QuantMatrix<'_>], x: &Q8Activations, outs: Vec<&mut [f32]>) {
    assert_eq!(ws.len(), outs.len(), "one output per weight");
    #[cfg(target_arch = "x86_64")]
    if ws.iter().all(|w| panel_available(w.format)) {
        matmul_panel(ws, x, outs);
        return;
    }
    if x.rows == 1 {
        matvec_many(ws, x, outs);
        return;
    }
    // Several rows (a batched decode step, a short chunk) on the grouped kernel: each run of
    // weight rows meets every activation row, one after another, so the run's bytes stay in
    // cache across them. (A form of the grouped kernel that unpacked each weight block once
    // for two activation rows measured no faster in a batched serving step: on AVX2 the byte
    // products, not the unpacking, bound it.)
    let kernel = Kernel::detect();
    matmul_in_runs(ws, x, outs, ROW_GROUP, |w, first, n, mut out| {
        for i in 0..x.rows {
            kernel.dot_rows(w, first, x.row(i), &mut out.row(i)[..n]);
        }
    });
}

/// The parallel loop of a several-row product: every weight's rows are cut into runs (a
/// multiple of `group` rows), one task each; `run(w, first, n, out, stride)` writes the run's
/// `n` rows starting at `first` for every activation row `i` at `out[i·stride + j]` (`j < n`),
/// straight into the weight's output `[x.rows(), w.rows]`.
fn matmul_in_runs(
    ws: &[QuantMatrix<'_>],
    x: &Q8Activations,
    outs: Vec<&mut [f32]>,
    group: usize,
    run: impl Fn(&QuantMatrix<'_>, usize, usize, RunOut) + Sync,
) {
    let m = x.rows;
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(x.cols, w.cols, "activation width must match the weight's");
        assert_eq!(
            out.len(),
            m * w.rows,
            "output must be [rows of x, rows of w]"
        );
    }
    let per_task = rows_per_task(ws.iter().map(|w| w.rows).sum()).next_multiple_of(group);
    let bases: Vec<SendPtr> = outs.into_iter().map(|o| SendPtr(o.as_mut_ptr())).collect();
    let tasks: Vec<(usize, usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(k, w)| {
            (0..w.rows)
                .step_by(per_task)
                .map(move |first| (k, first, per_task.min(w.rows - first)))
        })
        .collect();
    tasks.par_iter().for_each(|&(k, first, n)| {
        // Each task writes the columns `first..first + n` of its weight's output, every
        // activation row: disjoint from every other task's.
        let out = RunOut {
            // SAFETY: `first < w.rows`, inside the output checked above.
            ptr: unsafe { bases[k].0.add(first) },
            stride: ws[k].rows,
            rows: m,
            cols: n,
        };
        run(&ws[k], first, n, out);
    });
}

/// An output pointer shared by the tasks of [`matmul_in_runs`], each writing its own columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (their own column ranges) and the outputs outlive
// the parallel loop, which joins before `matmul_in_runs` returns.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Where one task of [`matmul_in_runs`] writes: `rows` activation rows, `stride` apart, of
/// `cols` results each.
#[derive(Clone, Copy)]
struct RunOut {
    ptr: *mut f32,
    stride: usize,
    rows: usize,
    cols: usize,
}

impl RunOut {
    /// Where activation row `i`'s result `j` goes; the rows after `i` follow `stride` apart.
    fn at(&self, i: usize, j: usize) -> *mut f32 {
        assert!(i < self.rows && j < self.cols);
        // SAFETY: inside the output, as in `row`.
        unsafe { self.ptr.add(i * self.stride + j) }
    }

    /// Activation row `i`'s `cols` results.
    fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows);
        // SAFETY: `matmul_in_runs` hands each task a column range no other task touches, of
        // an output of `rows · stride` elements.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.cols) }
    }
}

/// Several weights × several activation rows on the panel kernel: the weights' rows are cut
/// into runs of whole panels (sixteen rows), one parallel task each; a task walks its run a
/// panel at a time, and each panel meets the activation rows eight at a time. Rows past the
/// last whole panel of a run (a weight whose rows are not a multiple of sixteen) take the row
/// kernel.
#[cfg(target_arch = "x86_64")]
fn matmul_panel(ws: &[QuantMatrix<'_>], x: &Q8Activations, outs: Vec<&mut [f32]>) {
    use crate::quant_panel::{panel, PanelActs, PANEL_ACTS, PANEL_ROWS};
    let m = x.rows;
    let act_rows: Vec<ActRow<'_>> = (0..m).map(|i| x.row(i)).collect();
    let kernel = Kernel::detect();
    // The layout depends on the format only through Q8_0's code sums: one per format.
    let mut layouts: Vec<(QuantFormat, PanelActs<'_>)> = Vec::new();
    for w in ws {
        if !layouts.iter().any(|(f, _)| *f == w.format) {
            layouts.push((w.format, PanelActs::new(w.format, &act_rows, x.cols)));
        }
    }
    matmul_in_runs(ws, x, outs, PANEL_ROWS, |w, first, n, mut out| {
        let acts = &layouts
            .iter()
            .find(|(f, _)| *f == w.format)
            .expect("a layout per format")
            .1;
        let whole = n / PANEL_ROWS * PANEL_ROWS;
        let blocks = w.cols / ACT_BLOCK;
        let row_bytes = w.row_bytes();
        for g in (0..whole).step_by(PANEL_ROWS) {
            let rows = w.row(first + g).as_ptr();
            let mut i = 0;
            while i < m {
                let k = (m - i).min(PANEL_ACTS);
                let dst = out.at(i, g);
                // SAFETY: `panel_available` checked the CPU and the format; the panel's
                // sixteen rows lie inside the weight (g + 16 <= whole <= n rows of the run);
                // `acts` was built from `x`, whose width `matmul_in_runs` checked against the
                // weight's; `i + k <= m`; and `dst` starts sixteen results (g + 16 <= n) of
                // activation row `i`, the rows after it `out.stride` apart, all inside this
                // task's columns of the output.
                unsafe {
                    macro_rules! call {
                        ($($k:literal),*) => {
                            match k {
                                $($k => panel::<$k>(
                                    w.format, (rows, row_bytes, blocks), acts, i, dst,
                                    out.stride,
                                ),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    call!(1, 2, 3, 4, 5, 6, 7, 8);
                }
                i += PANEL_ACTS;
            }
        }
        for j in whole..n {
            for i in 0..m {
                out.row(i)[j] = kernel.dot(w.format, w.row(first + j), x.row(i));
            }
        }
    });
}

/// `outs[i] = ws[i] · x` for one activation row and several weights of its width (a layer's
/// Q, K and V projections; its gate and up projections): the activation is quantised once by
/// the caller and all the weights' rows are shared out in one parallel loop, one fork-join
/// instead of one per weight.
pub fn matvec_many(ws: &[QuantMatrix<'_>], x: &Q8Activations, outs: Vec<&mut [f32]>) {
    assert_eq!(x.rows, 1, "one activation row");
    assert_eq!(ws.len(), outs.len(), "one output per weight");
    let kernel = Kernel::detect();
    let a = x.row(0);
    let per_task = rows_per_task(ws.iter().map(|w| w.rows).sum());
    let mut tasks = Vec::new();
    for (i, (w, out)) in ws.iter().zip(outs).enumerate() {
        assert_eq!(x.cols, w.cols, "activation width must match the weight's");
        assert_eq!(
            out.len(),
            w.rows,
            "output must hold one value per weight row"
        );
        for (t, chunk) in out.chunks_mut(per_task).enumerate() {
            tasks.push((i, t * per_task, chunk));
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(i, first, chunk)| kernel.dot_rows(&ws[i], first, a, chunk));
}

/// Which implementation runs the block dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust integer loops (any CPU).
    Portable,
    /// AVX2 + FMA (+ F16C for the block scales) intrinsics.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest implementation this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Rows `first..first + out.len()` of `w` · one activation row, into `out`: groups of
    /// [`ROW_GROUP`] rows at once where the kernel has a grouped path, the rest row by row.
    fn dot_rows(self, w: &QuantMatrix<'_>, first: usize, a: ActRow<'_>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx2
            && matches!(
                w.format,
                QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0
            )
        {
            let vnni = avx2::vnni_available();
            let done = out.len() / ROW_GROUP * ROW_GROUP;
            let mut groups = out.chunks_exact_mut(ROW_GROUP);
            for (g, o) in groups.by_ref().enumerate() {
                let r = first + g * ROW_GROUP;
                let rows = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
                // SAFETY: `detect` chose Avx2 only where the CPU has AVX2, FMA and F16C, and the
                // VNNI form runs only where the CPU has it too.
                let got = unsafe {
                    if vnni {
                        avx2::dot32_group_vnni(w.format, rows, a)
                    } else {
                        avx2::dot32_group(w.format, rows, a)
                    }
                };
                o.copy_from_slice(&got);
            }
            for (j, o) in groups.into_remainder().iter_mut().enumerate() {
                *o = self.dot(w.format, w.row(first + done + j), a);
            }
            return;
        }
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.dot(w.format, w.row(first + j), a);
        }
    }

    /// One weight row (its blocks' bytes) · one activation row.
    fn dot(self, format: QuantFormat, w: &[u8], a: ActRow<'_>) -> f32 {
        match (self, format) {
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0) => {
                // SAFETY: `detect` chose Avx2 only where the CPU has AVX2 and FMA.
                unsafe { avx2::dot32(format, w, a) }
            }
            (_, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0) => {
                portable_dot32(format, w, a)
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (Kernel::Avx2, QuantFormat::Q4K) => unsafe { avx2::dot_q4k(w, a) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (Kernel::Avx2, QuantFormat::Q6K) => unsafe { avx2::dot_q6k(w, a) },
            (_, QuantFormat::Q4K) => portable_dot_q4k(w, a),
            (_, QuantFormat::Q6K) => portable_dot_q6k(w, a),
        }
    }
}

/// `matmul` with the implementation named (for the consistency tests and benchmarks).
pub fn matmul_with(kernel: Kernel, w: &QuantMatrix<'_>, x: &Q8Activations, out: &mut [f32]) {
    assert_eq!(x.cols, w.cols, "activation width must match the weight's");
    assert_eq!(
        out.len(),
        x.rows * w.rows,
        "output must be [rows of x, rows of w]"
    );
    for (i, o) in out.chunks_exact_mut(w.rows).enumerate() {
        kernel.dot_rows(w, 0, x.row(i), o);
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Integer dot of 32 unsigned 4-bit codes (GGUF order: low nibbles are values 0–15, high
/// nibbles 16–31) with 32 activation codes.
fn nibble_dot(qs: &[u8], xq: &[i8]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        s += (qs[j] & 0x0F) as i32 * xq[j] as i32;
        s += (qs[j] >> 4) as i32 * xq[j + 16] as i32;
    }
    s
}

fn portable_dot32(format: QuantFormat, w: &[u8], a: ActRow<'_>) -> f32 {
    let bb = format.block_bytes();
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let xq = &a.q[b * 32..(b + 1) * 32];
        let d = f16_at(blk, 0);
        acc += match format {
            QuantFormat::Q4_0 => {
                d * (a.scale[b] * nibble_dot(&blk[2..18], xq) as f32 - 8.0 * a.scaled_sum[b])
            }
            QuantFormat::Q4_1 => {
                d * a.scale[b] * nibble_dot(&blk[4..20], xq) as f32
                    + f16_at(blk, 2) * a.scaled_sum[b]
            }
            QuantFormat::Q8_0 => {
                let s: i32 = blk[2..34]
                    .iter()
                    .zip(xq)
                    .map(|(&c, &x)| c as i8 as i32 * x as i32)
                    .sum();
                d * a.scale[b] * s as f32
            }
            _ => unreachable!("32-value formats only"),
        };
    }
    acc
}

/// Sub-block `j`'s (scale, min) of a Q4_K super-block: eight 6-bit pairs packed in 12 bytes
/// (the first four in the low 6 bits of bytes 0–7, the last four split over bytes 8–11 and the
/// top 2 bits of bytes 0–7).
fn q4k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

fn portable_dot_q4k(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (sb, blk) in w.chunks_exact(144).enumerate() {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let scales = &blk[4..16];
        let qs = &blk[16..144];
        // 4 chunks of 64 values: 32 code bytes, low nibbles = sub-block 2c, high = 2c + 1.
        for c in 0..4 {
            let bytes = &qs[c * 32..(c + 1) * 32];
            for half in 0..2 {
                let j = 2 * c + half;
                let ab = sb * 8 + j;
                let xq = &a.q[ab * 32..(ab + 1) * 32];
                let shift = 4 * half as u32;
                let s: i32 = bytes
                    .iter()
                    .zip(xq)
                    .map(|(&q, &x)| ((q >> shift) & 0x0F) as i32 * x as i32)
                    .sum();
                let (sc, m) = q4k_scale_min(scales, j);
                acc += d * sc as f32 * a.scale[ab] * s as f32 - dmin * m as f32 * a.scaled_sum[ab];
            }
        }
    }
    acc
}

fn portable_dot_q6k(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (sb, blk) in w.chunks_exact(210).enumerate() {
        let ql = &blk[0..128];
        let qh = &blk[128..192];
        let sc = &blk[192..208];
        let d = f16_at(blk, 208);
        // Two halves of 128 values; within a half, value 32k + l (k < 4, l < 32) takes its low
        // bits from ql (nibble k / 2 of byte l + 32·(k mod 2)) and its high bits from bits
        // 2k, 2k + 1 of qh[l].
        for h in 0..2 {
            let ql = &ql[64 * h..64 * h + 64];
            let qh = &qh[32 * h..32 * h + 32];
            for k in 0..4 {
                let ab = sb * 8 + h * 4 + k;
                let xq = &a.q[ab * 32..(ab + 1) * 32];
                let lo_bytes = &ql[32 * (k % 2)..32 * (k % 2) + 32];
                let lo_shift = 4 * (k / 2) as u32;
                let hi_shift = 2 * k as u32;
                let mut s16 = [0i32; 2];
                for l in 0..32 {
                    let code =
                        ((lo_bytes[l] >> lo_shift) & 0x0F) | (((qh[l] >> hi_shift) & 3) << 4);
                    s16[l / 16] += (code as i32 - 32) * xq[l] as i32;
                }
                let g = (h * 128 + k * 32) / 16;
                let sum =
                    sc[g] as i8 as f32 * s16[0] as f32 + sc[g + 1] as i8 as f32 * s16[1] as f32;
                acc += d * a.scale[ab] * sum;
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{f16_at, q4k_scale_min, ActRow, QuantFormat};
    use std::arch::x86_64::*;

    /// [`super::quantize_block`] in four 8-lane registers: the same scale, codes and sum.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_block(xs: &[f32], qs: &mut [i8]) -> (f32, i32) {
        debug_assert!(xs.len() == 32 && qs.len() == 32);
        let sign = _mm256_set1_ps(-0.0);
        let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(xs.as_ptr().add(8 * k)));
        let a = v.map(|x| _mm256_andnot_ps(sign, x));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        let amax = _mm_cvtss_f32(m);
        let d = amax / 127.0;
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let c: [__m256i; 4] = std::array::from_fn(|k| {
            let r = _mm256_round_ps(
                _mm256_mul_ps(v[k], inv),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            );
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
        });
        let s = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        // i32 -> i16 -> i8 packs interleave the 128-bit lanes; one permute restores the order.
        let w01 = _mm256_packs_epi32(c[0], c[1]);
        let w23 = _mm256_packs_epi32(c[2], c[3]);
        let b = _mm256_packs_epi16(w01, w23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, b);
        (d, _mm_cvtsi128_si32(s))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Q4_0 / Q4_1 / Q8_0 row · activation row: per block, 32 byte products summed to eight
    /// i32 lanes, converted to f32 and accumulated with the block's combined scale; the
    /// format's offset term (Q4_0's −8, Q4_1's minimum) is added per block in scalar.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot32(format: QuantFormat, w: &[u8], a: ActRow<'_>) -> f32 {
        let bb = format.block_bytes();
        let nb = w.len() / bb;
        debug_assert!(a.q.len() >= nb * 32 && a.scale.len() >= nb);
        let low4 = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let wp = w.as_ptr();
        let xp = a.q.as_ptr();
        for b in 0..nb {
            let blk = wp.add(b * bb);
            let x = _mm256_loadu_si256(xp.add(b * 32) as *const __m256i);
            let d = f16_at(w, b * bb);
            let prod = match format {
                QuantFormat::Q8_0 => {
                    let c = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                    // |c| · (x · sign c): unsigned × signed, as vpmaddubsw needs.
                    _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(x, c))
                }
                _ => {
                    let at = if format == QuantFormat::Q4_1 { 4 } else { 2 };
                    let raw = _mm_loadu_si128(blk.add(at) as *const __m128i);
                    let lo = _mm_and_si128(raw, low4);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
                    _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), x)
                }
            };
            let sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * *a.scale.get_unchecked(b)), sum, acc);
            match format {
                QuantFormat::Q4_0 => offset -= 8.0 * d * *a.scaled_sum.get_unchecked(b),
                QuantFormat::Q4_1 => {
                    offset += f16_at(w, b * bb + 2) * *a.scaled_sum.get_unchecked(b)
                }
                _ => {}
            }
        }
        hsum(acc) + offset
    }

    /// Q4_0 / Q4_1 / Q8_0: [`ROW_GROUP`] rows · one activation row, as [`dot32`] per row but
    /// with each activation block loaded once for the group and one accumulator per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot32_group(
        format: QuantFormat,
        w: [&[u8]; 4],
        a: ActRow<'_>,
    ) -> [f32; 4] {
        match format {
            QuantFormat::Q4_0 => group32::<0, false>(w, a),
            QuantFormat::Q4_1 => group32::<1, false>(w, a),
            _ => group32::<2, false>(w, a),
        }
    }

    /// Whether this CPU has AVX-512 VNNI (with 256-bit forms): the grouped kernel then sums
    /// each block's 32 byte products with one `vpdpbusd` instead of `vpmaddubsw` + `vpmaddwd`.
    pub(super) fn vnni_available() -> bool {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
    }

    /// [`dot32_group`] with AVX-512 VNNI's byte dot product.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot32_group_vnni(
        format: QuantFormat,
        w: [&[u8]; 4],
        a: ActRow<'_>,
    ) -> [f32; 4] {
        match format {
            QuantFormat::Q4_0 => group32::<0, true>(w, a),
            QuantFormat::Q4_1 => group32::<1, true>(w, a),
            _ => group32::<2, true>(w, a),
        }
    }

    /// The f16 at byte `at` of each of the four rows' block, as four f32 lanes (one F16C
    /// conversion for the group).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn halves4(blk: [*const u8; 4], at: usize) -> __m128 {
        let h = |r: usize| (blk[r].add(at) as *const i16).read_unaligned();
        _mm_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), 0, 0, 0, 0))
    }

    /// `F`: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0 (a const so each format's loop is its own code). The
    /// four rows' block scales (and Q4_1 minima) are converted together and their offset terms
    /// summed as one vector; the 32-product sums stay one accumulator per row. `VNNI`: sum the
    /// byte products with `vpdpbusd` (only inlined into [`dot32_group_vnni`], whose target
    /// features allow it).
    #[inline(always)]
    unsafe fn group32<const F: u8, const VNNI: bool>(w: [&[u8]; 4], a: ActRow<'_>) -> [f32; 4] {
        let bb = match F {
            0 => 18,
            1 => 20,
            _ => 34,
        };
        let nb = w[0].len() / bb;
        debug_assert!(a.q.len() >= nb * 32 && a.scale.len() >= nb);
        debug_assert!(w.iter().all(|r| r.len() == nb * bb));
        let low4x2 = _mm256_set1_epi8(0x0F);
        let nibble_shift = _mm256_setr_epi64x(0, 0, 4, 4);
        let ones = _mm256_set1_epi16(1);
        let lane = [
            _mm256_set1_epi32(0),
            _mm256_set1_epi32(1),
            _mm256_set1_epi32(2),
            _mm256_set1_epi32(3),
        ];
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offset = _mm_setzero_ps();
        let wp = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
        let xp = a.q.as_ptr();
        for b in 0..nb {
            let x = _mm256_loadu_si256(xp.add(b * 32) as *const __m256i);
            let xs = _mm_set1_ps(*a.scale.get_unchecked(b));
            let xsum = _mm_set1_ps(*a.scaled_sum.get_unchecked(b));
            let blk = [
                wp[0].add(b * bb),
                wp[1].add(b * bb),
                wp[2].add(b * bb),
                wp[3].add(b * bb),
            ];
            let d = halves4(blk, 0);
            let scale = _mm256_castps128_ps256(_mm_mul_ps(d, xs));
            if F == 0 {
                offset = _mm_fnmadd_ps(_mm_mul_ps(d, _mm_set1_ps(8.0)), xsum, offset);
            } else if F == 1 {
                offset = _mm_fmadd_ps(halves4(blk, 2), xsum, offset);
            }
            for r in 0..4 {
                // Unsigned codes and the signed activations they multiply.
                let (u, v) = if F == 2 {
                    let c = _mm256_loadu_si256(blk[r].add(2) as *const __m256i);
                    (_mm256_sign_epi8(c, c), _mm256_sign_epi8(x, c))
                } else {
                    // The 16 code bytes in both halves, the upper half shifted by four: low
                    // nibbles (values 0–15) below, high nibbles (16–31) above.
                    let at = if F == 1 { 4 } else { 2 };
                    let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        blk[r].add(at) as *const __m128i
                    ));
                    let codes = _mm256_and_si256(_mm256_srlv_epi64(raw, nibble_shift), low4x2);
                    (codes, x)
                };
                let sum = if VNNI {
                    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, v))
                } else {
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, v), ones))
                };
                let s = _mm256_permutevar8x32_ps(scale, lane[r]);
                acc[r] = _mm256_fmadd_ps(s, sum, acc[r]);
            }
        }
        let mut off = [0f32; 4];
        _mm_storeu_ps(off.as_mut_ptr(), offset);
        [
            hsum(acc[0]) + off[0],
            hsum(acc[1]) + off[1],
            hsum(acc[2]) + off[2],
            hsum(acc[3]) + off[3],
        ]
    }

    /// Q4_K row · activation row: each 32-byte chunk of codes holds two sub-blocks (low and
    /// high nibbles), each meeting one activation block; the sub-block's 6-bit scale joins the
    /// float scale, its minimum the scalar offset.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q4k(w: &[u8], a: ActRow<'_>) -> f32 {
        let nsb = w.len() / 144;
        debug_assert!(a.q.len() >= nsb * 256);
        let low4 = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        for sb in 0..nsb {
            let blk = &w[sb * 144..(sb + 1) * 144];
            let d = f16_at(blk, 0);
            let dmin = f16_at(blk, 2);
            let scales = &blk[4..16];
            let qs = blk.as_ptr().add(16);
            for c in 0..4 {
                let raw = _mm256_loadu_si256(qs.add(c * 32) as *const __m256i);
                let halves = [
                    _mm256_and_si256(raw, low4),
                    _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4),
                ];
                for (half, codes) in halves.into_iter().enumerate() {
                    let j = 2 * c + half;
                    let ab = sb * 8 + j;
                    let x = _mm256_loadu_si256(a.q.as_ptr().add(ab * 32) as *const __m256i);
                    let sum =
                        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(codes, x), ones));
                    let (sc, m) = q4k_scale_min(scales, j);
                    let xs = *a.scale.get_unchecked(ab);
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc as f32 * xs), sum, acc);
                    offset -= dmin * m as f32 * *a.scaled_sum.get_unchecked(ab);
                }
            }
        }
        hsum(acc) + offset
    }

    /// Q6_K row · activation row: the 6-bit codes (0–63) are rebuilt 32 at a time from the low
    /// and high bit planes; `code · x − 32 · x` is formed in i16, and the two 16-value
    /// sub-block scales multiply in the pairwise i16 → i32 step.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q6k(w: &[u8], a: ActRow<'_>) -> f32 {
        let nsb = w.len() / 210;
        debug_assert!(a.q.len() >= nsb * 256);
        let low4 = _mm256_set1_epi8(0x0F);
        let three = _mm256_set1_epi8(3);
        let thirty_two = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for sb in 0..nsb {
            let blk = &w[sb * 210..(sb + 1) * 210];
            let d = f16_at(blk, 208);
            let sc = &blk[192..208];
            for h in 0..2 {
                let ql = blk.as_ptr().add(64 * h);
                let qh = _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * h) as *const __m256i);
                for k in 0..4 {
                    let lo_raw = _mm256_loadu_si256(ql.add(32 * (k % 2)) as *const __m256i);
                    let lo = if k / 2 == 0 {
                        _mm256_and_si256(lo_raw, low4)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(lo_raw, 4), low4)
                    };
                    let hi = _mm256_and_si256(
                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)),
                        three,
                    );
                    let codes = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
                    let ab = sb * 8 + h * 4 + k;
                    let x = _mm256_loadu_si256(a.q.as_ptr().add(ab * 32) as *const __m256i);
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(codes, x),
                        _mm256_maddubs_epi16(thirty_two, x),
                    );
                    let g = (h * 128 + k * 32) / 16;
                    let (s0, s1) = (sc[g] as i8 as i16, sc[g + 1] as i8 as i16);
                    let scales = _mm256_setr_epi16(
                        s0, s0, s0, s0, s0, s0, s0, s0, s1, s1, s1, s1, s1, s1, s1, s1,
                    );
                    let sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, scales));
                    let xs = *a.scale.get_unchecked(ab);
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xs), sum, acc);
                }
            }
        }
        hsum(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn ggml(format: QuantFormat) -> GgmlDType {
        match format {
            QuantFormat::Q4_0 => GgmlDType::Q4_0,
            QuantFormat::Q4_1 => GgmlDType::Q4_1,
            QuantFormat::Q8_0 => GgmlDType::Q8_0,
            QuantFormat::Q4K => GgmlDType::Q4K,
            QuantFormat::Q6K => GgmlDType::Q6K,
        }
    }

    const ALL: [QuantFormat; 5] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4K,
        QuantFormat::Q6K,
    ];

    /// A `rows × cols` matrix quantised by candle, its bytes and its dequantised f32 values
    /// (candle's own dequantiser: the independent reading of the block layouts).
    fn quantised(format: QuantFormat, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let w = Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, ggml(format)).unwrap();
        let bytes = q.data().unwrap().into_owned();
        let deq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (bytes, deq)
    }

    /// Checks one product against the f32 product of the dequantised weights, within the bound
    /// the activation rounding allows (module doc) plus f32 summation slack.
    fn check(format: QuantFormat, kernel: Kernel, rows: usize, cols: usize, m: usize) {
        let (bytes, deq) = quantised(format, rows, cols, 7 + rows as u64);
        let w = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
        // Activations with a few large values, as real hidden states have.
        let mut x = values(m * cols, 99 + cols as u64);
        for (i, v) in x.iter_mut().enumerate() {
            if i % 37 == 5 {
                *v *= 20.0;
            }
        }
        let xq = Q8Activations::quantize(&x, cols).unwrap();
        let mut ours = vec![0f32; m * rows];
        matmul_with(kernel, &w, &xq, &mut ours);
        let mut par = vec![0f32; m * rows];
        matmul(&w, &xq, &mut par);
        for i in 0..m {
            for r in 0..rows {
                let wr = &deq[r * cols..(r + 1) * cols];
                let xr = &x[i * cols..(i + 1) * cols];
                let exact: f64 = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                let bound: f64 = wr
                    .iter()
                    .enumerate()
                    .map(|(c, &a)| a.abs() as f64 * xq.scale[i * cols / 32 + c / 32] as f64 / 2.0)
                    .sum();
                let magnitude: f64 = wr.iter().zip(xr).map(|(&a, &b)| (a * b).abs() as f64).sum();
                let slack = 1e-5 * magnitude + 1e-6;
                let got = ours[i * rows + r] as f64;
                assert!(
                    (got - exact).abs() <= bound + slack,
                    "{format} {kernel:?} row {r} act {i}: {got} vs {exact} (bound {bound})"
                );
                let p = par[i * rows + r] as f64;
                assert!(
                    (p - exact).abs() <= bound + slack,
                    "{format} parallel row {r} act {i}: {p} vs {exact} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn every_format_matches_the_dequantised_product_portable() {
        for f in ALL {
            check(f, Kernel::Portable, 19, 512, 1);
            check(f, Kernel::Portable, 35, 256, 3);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_format_matches_the_dequantised_product_avx2() {
        if Kernel::detect() != Kernel::Avx2 {
            eprintln!("no AVX2 on this CPU: the AVX2 path is not exercised");
            return;
        }
        for f in ALL {
            check(f, Kernel::Avx2, 19, 512, 1);
            check(f, Kernel::Avx2, 203, 256, 1);
            check(f, Kernel::Avx2, 35, 256, 5);
        }
    }

    /// The AVX-512 VNNI form of the grouped kernel against the AVX2 form on the same rows:
    /// both sum the same integer products, so only the float accumulation may differ.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_and_avx2_grouped_kernels_agree() {
        if Kernel::detect() != Kernel::Avx2 || !avx2::vnni_available() {
            eprintln!("no AVX-512 VNNI on this CPU: the VNNI form is not exercised");
            return;
        }
        let cols = 512;
        for f in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
            let (bytes, _) = quantised(f, 4, cols, 3);
            let w = QuantMatrix::new(f, 4, cols, &bytes).unwrap();
            let mut x = values(cols, 8);
            x[5] = 40.0;
            let xq = Q8Activations::quantize(&x, cols).unwrap();
            let rows = [w.row(0), w.row(1), w.row(2), w.row(3)];
            // SAFETY: both forms' features were checked above.
            let (a, b) = unsafe {
                (
                    avx2::dot32_group(f, rows, xq.row(0)),
                    avx2::dot32_group_vnni(f, rows, xq.row(0)),
                )
            };
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "{f}: {p} vs {q}");
            }
            eprintln!("{f}: VNNI {b:?} = AVX2 {a:?}");
        }
    }

    /// The AVX-512 panel kernel (what `matmul` runs where the CPU has it) against the portable
    /// row-by-row kernel: one to nine activation rows (a whole call of eight and one left
    /// over), 39 weight rows (two sixteen-row panels and seven on the row kernel), and widths
    /// of 3, 16 and 17 blocks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_panel_kernel_matches_the_row_kernel() {
        if !panel_available(QuantFormat::Q4_1) {
            eprintln!("no AVX-512 VNNI on this CPU: the panel kernel is not exercised");
            return;
        }
        for f in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
            for cols in [96, 512, 544] {
                let rows = 39;
                let (bytes, _) = quantised(f, rows, cols, 11 + cols as u64);
                let w = QuantMatrix::new(f, rows, cols, &bytes).unwrap();
                for m in [1, 2, 3, 4, 5, 8, 9] {
                    let mut x = values(m * cols, 21 + m as u64);
                    x[7] = 30.0;
                    let xq = Q8Activations::quantize(&x, cols).unwrap();
                    let mut tiled = vec![f32::NAN; m * rows];
                    matmul(&w, &xq, &mut tiled);
                    let mut rowwise = vec![f32::NAN; m * rows];
                    matmul_with(Kernel::Portable, &w, &xq, &mut rowwise);
                    for (k, (p, q)) in tiled.iter().zip(&rowwise).enumerate() {
                        assert!(
                            (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                            "{f} cols {cols} m {m} at {k}: panel {p} vs rows {q}"
                        );
                    }
                }
                check(f, Kernel::Portable, rows, cols, 6);
            }
        }
    }

    /// The AVX2 activation quantiser against the portable one: same scale, codes and code sum,
    /// on random blocks, blocks with exact halves after scaling (ties go to even in both), a
    /// zero block and one with a single large value.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_portable_activation_quantisers_agree() {
        if Kernel::detect() != Kernel::Avx2 {
            eprintln!("no AVX2 on this CPU: the AVX2 quantiser is not exercised");
            return;
        }
        let mut blocks: Vec<Vec<f32>> = (0..50).map(|s| values(32, 300 + s)).collect();
        blocks.push((0..32).map(|i| i as f32 - 15.5).collect());
        blocks.push(
            (0..32)
                .map(|i| (i as f32 - 16.0) * 127.0 / 16.0 + 0.5)
                .collect(),
        );
        blocks.push(vec![0.0; 32]);
        let mut spike = vec![1e-3f32; 32];
        spike[9] = -250.0;
        blocks.push(spike);
        for (k, xs) in blocks.iter().enumerate() {
            let (mut a, mut b) = ([0i8; 32], [0i8; 32]);
            let p = quantize_block(xs, &mut a);
            // SAFETY: checked above.
            let v = unsafe { avx2::quantize_block(xs, &mut b) };
            assert_eq!(p, v, "block {k}: scale and sum");
            assert_eq!(a, b, "block {k}: codes");
        }
    }

    #[test]
    fn several_weights_in_one_loop_match_each_alone() {
        // One activation row (`matvec_many`) and several (`matmul_many`: on the panel kernel
        // where the CPU has it, with row runs that end inside a weight).
        let cols = 256;
        for (f, m) in ALL.iter().flat_map(|&f| [(f, 1), (f, 3), (f, 6)]) {
            let mats: Vec<(Vec<u8>, usize)> = [37usize, 8, 101]
                .iter()
                .map(|&r| (quantised(f, r, cols, r as u64).0, r))
                .collect();
            let ws: Vec<QuantMatrix<'_>> = mats
                .iter()
                .map(|(b, r)| QuantMatrix::new(f, *r, cols, b).unwrap())
                .collect();
            let xq = Q8Activations::quantize(&values(m * cols, 5), cols).unwrap();
            let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; m * w.rows]).collect();
            matmul_many(
                &ws,
                &xq,
                outs.iter_mut().map(|o| o.as_mut_slice()).collect(),
            );
            for (w, got) in ws.iter().zip(&outs) {
                let mut alone = vec![0f32; m * w.rows];
                matmul_with(Kernel::Portable, w, &xq, &mut alone);
                for (r, (a, b)) in got.iter().zip(&alone).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{f} row {r} of a {}-row weight: {a} vs {b}",
                        w.rows
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_portable_agree_to_rounding() {
        if Kernel::detect() != Kernel::Avx2 {
            return;
        }
        for f in ALL {
            let (bytes, _) = quantised(f, 8, 1024, 3);
            let w = QuantMatrix::new(f, 8, 1024, &bytes).unwrap();
            let xq = Q8Activations::quantize(&values(1024, 5), 1024).unwrap();
            let (mut a, mut b) = (vec![0f32; 8], vec![0f32; 8]);
            matmul_with(Kernel::Avx2, &w, &xq, &mut a);
            matmul_with(Kernel::Portable, &w, &xq, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{f}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_named() {
        assert!(matches!(
            QuantMatrix::new(QuantFormat::Q4K, 2, 128, &[0u8; 0]),
            Err(QuantMatvecError::Cols { .. })
        ));
        assert!(matches!(
            QuantMatrix::new(QuantFormat::Q4_1, 2, 64, &[0u8; 79]),
            Err(QuantMatvecError::Bytes { expected: 80, .. })
        ));
        assert!(matches!(
            Q8Activations::quantize(&[0.0; 40], 32),
            Err(QuantMatvecError::Activations { .. })
        ));
    }

    #[test]
    fn zero_activations_give_zero() {
        let (bytes, _) = quantised(QuantFormat::Q4_1, 4, 64, 1);
        let w = QuantMatrix::new(QuantFormat::Q4_1, 4, 64, &bytes).unwrap();
        let xq = Q8Activations::quantize(&[0.0; 64], 64).unwrap();
        let mut out = vec![1f32; 4];
        matmul(&w, &xq, &mut out);
        assert_eq!(out, vec![0.0; 4]);
    }
}
