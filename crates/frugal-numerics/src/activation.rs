//! Gated MLP activations on f32 rows. Candle's `silu` calls the C library's `expf` one value
//! at a time and then a separate multiply makes a second pass with a second buffer; in a
//! batched decode step that pair was about 4 % of the CPU time, much of it with the other
//! thread idle. Here the gate is replaced in place by `silu(gate) · up` in one vectorisable
//! pass, with the exponential of [`crate::attention::exp_nonpositive`].

use crate::attention::exp_nonpositive;
use rayon::prelude::*;

/// Elements below which [`silu_mul_in_place`] runs on the calling thread (ours: a batched
/// decode step's `[rows, ffn_dim]` is tens of thousands of values, microseconds of work).
pub const SILU_MUL_SERIAL_LEN: usize = 1 << 16;

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
    if gate.len() < SILU_MUL_SERIAL_LEN {
        pass((gate, up));
    } else {
        gate.par_chunks_mut(SILU_MUL_SERIAL_LEN / 4)
            .zip(up.par_chunks(SILU_MUL_SERIAL_LEN / 4))
            .for_each(pass);
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
        for n in [1000, 3 * SILU_MUL_SERIAL_LEN + 5] {
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
}
