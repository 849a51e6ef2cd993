//! Row-wise steps of a transformer layer on f32 rows: the gated MLP activation and RMS
//! normalisation. Candle's `silu` calls the C library's `expf` one value at a time and then a
//! separate multiply makes a second pass with a second buffer; in a batched decode step that
//! pair was about 4 % of the CPU time, much of it with the other thread idle. Here the gate is
//! replaced in place by `silu(gate) · up` in one vectorisable pass, with the exponential of
//! [`crate::attention::exp_nonpositive`]; the RMS norm likewise runs as one row kernel.

use crate::attention::exp_nonpositive;
use rayon::prelude::*;

/// Elements below which this module's row operations run on the calling thread (ours: a
/// batched decode step's `[rows, ffn_dim]` is tens of thousands of values, microseconds of
/// work); longer inputs (prefill) run in parallel blocks of a quarter of this.
pub const ROW_OPS_SERIAL_LEN: usize = 1 << 16;

/// `x · σ(x)`, with `σ(x) = 1 / (1 + e^{-x})` computed from `e^{-|x|} ≤ 1` on both sides (no
/// overflow for any finite `x`; `σ(x) = e^{x} / (1 + e^{x})` for negative `x`).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
    x * sigmoid
}

/// `gate[i] = silu(gate[i]) · up[i]` for every element (a SwiGLU MLP's input to its down
/// projection), in parallel chunks for long inputs.
pub fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up must be the same length");
    let pass = |(g, u): (&mut [f32], &[f32])| {
        g.iter_mut().zip(u).for_each(|(g, &u)| *g = silu(*g) * u);
    };
    if gate.len() < ROW_OPS_SERIAL_LEN {
        pass((gate, up));
    } else {
        gate.par_chunks_mut(ROW_OPS_SERIAL_LEN / 4)
            .zip(up.par_chunks(ROW_OPS_SERIAL_LEN / 4))
            .for_each(pass);
    }
}

/// `row = row / sqrt(mean(row²) + eps) · w` for every row of `w.len()` values of `x`, in
/// place: one pass for the sum of squares (sixteen independent lanes) and one for the scaling,
/// where candle's composition of seven tensor operations allocates a buffer for each. Long
/// inputs (prefill) run in parallel blocks of rows.
pub fn rms_norm_rows_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "rows of the weight's length expected"
    );
    let norm = |row: &mut [f32]| {
        let mut acc = [0f32; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            acc.iter_mut().zip(c).for_each(|(a, &v)| *a += v * v);
        }
        acc.iter_mut()
            .zip(chunks.remainder())
            .for_each(|(a, &v)| *a += v * v);
        let inv = 1.0 / (acc.iter().sum::<f32>() / d as f32 + eps).sqrt();
        row.iter_mut().zip(w).for_each(|(v, &w)| *v = *v * inv * w);
    };
    if x.len() < ROW_OPS_SERIAL_LEN {
        x.chunks_exact_mut(d).for_each(norm);
    } else {
        let rows_per_task = (ROW_OPS_SERIAL_LEN / 4).div_ceil(d);
        x.par_chunks_mut(rows_per_task * d)
            .for_each(|block| block.chunks_exact_mut(d).for_each(norm));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;

    /// Against `x / (1 + exp(-x))` in f64 over the range a hidden state takes and past it
    /// (where one side of the sigmoid saturates), serial and parallel lengths.
    #[test]
    fn matches_silu_times_up_in_f64() {
        for n in [1000, 3 * ROW_OPS_SERIAL_LEN + 5] {
            let gate: Vec<f32> = values(n, 3).iter().map(|x| x * 30.0).collect();
            let up = values(n, 4);
            let mut got = gate.clone();
            silu_mul_in_place(&mut got, &up);
            for i in 0..n {
                let x = gate[i] as f64;
                let want = x / (1.0 + (-x).exp()) * up[i] as f64;
                let err = (got[i] as f64 - want).abs();
                assert!(
                    err <= 1e-6 * want.abs().max(1e-3),
                    "n {n} i {i}: silu({x})·{} = {} vs {want}",
                    up[i],
                    got[i]
                );
            }
        }
        assert_eq!(silu(0.0), 0.0);
        assert_eq!(silu(-200.0), 0.0, "saturates to zero, no NaN");
        assert_eq!(silu(200.0), 200.0);
    }

    /// Against the definition in f64, for a width that is not a multiple of the sixteen lanes
    /// and for serial and parallel lengths.
    #[test]
    fn rms_norm_matches_the_definition_in_f64() {
        for (d, rows) in [(576, 3), (37, 5), (576, 300)] {
            let x: Vec<f32> = values(d * rows, 5).iter().map(|v| v * 4.0).collect();
            let w = values(d, 6);
            let mut got = x.clone();
            rms_norm_rows_in_place(&mut got, &w, 1e-5);
            for (r, row) in x.chunks_exact(d).enumerate() {
                let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + 1e-5).sqrt();
                for i in 0..d {
                    let want = row[i] as f64 * inv * w[i] as f64;
                    let g = got[r * d + i] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * want.abs().max(1e-2),
                        "d {d} row {r} i {i}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
