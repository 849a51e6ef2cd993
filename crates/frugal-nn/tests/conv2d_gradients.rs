//! candle's CPU `conv2d` backward pass against finite differences, for the shapes our
//! segmentation, NEs and ZPressor models train with (batches above one, 1×1 and 3×3 kernels,
//! stride 1 and 2, padding). candle 0.11.1's `conv1d` backward gives wrong kernel gradients for
//! batches above one (see `frugal-motion`'s `conv.rs`); this checks whether `conv2d`, which the
//! other crates train through, shares the fault. The loss is linear in the kernel and in the
//! input, so a central difference in f64 is exact up to rounding.

use candle_core::{DType, Device, Tensor, Var};

fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Largest |backward − finite difference| over every kernel entry and over every input entry,
/// relative to the largest gradient.
fn gradient_errors(
    batch: usize,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> (f64, f64) {
    let dev = Device::Cpu;
    // Odd sizes: candle 0.11.1 cannot take a stride-2 backward where the stride does not
    // divide the padded span (a shape error, not a wrong value).
    let (h, w) = (7, 7);
    let x = Var::from_vec(
        pseudo_random(batch * cin * h * w, 1),
        (batch, cin, h, w),
        &dev,
    )
    .unwrap();
    let kernel = Var::from_vec(
        pseudo_random(cout * cin * k * k, 2),
        (cout, cin, k, k),
        &dev,
    )
    .unwrap();
    let loss_of = |x: &Tensor, kernel: &Tensor| -> (Tensor, Tensor) {
        let y = x.conv2d(kernel, pad, stride, 1, 1).unwrap();
        let r = Tensor::from_vec(pseudo_random(y.elem_count(), 3), y.shape(), &dev).unwrap();
        ((y * &r).unwrap().sum_all().unwrap(), r)
    };
    let (loss, _) = loss_of(x.as_tensor(), kernel.as_tensor());
    let grads = loss.backward().unwrap();
    let scalar = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let numeric = |var: &Var, other: &Tensor, var_is_x: bool| -> Vec<f64> {
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let eps = 1e-3;
        (0..base.len())
            .map(|i| {
                let at = |sign: f64| {
                    let mut v = base.clone();
                    v[i] += sign * eps;
                    let t = Tensor::from_vec(v, var.shape(), &dev).unwrap();
                    let l = if var_is_x {
                        loss_of(&t, other).0
                    } else {
                        loss_of(other, &t).0
                    };
                    scalar(l)
                };
                (at(1.0) - at(-1.0)) / (2.0 * eps)
            })
            .collect()
    };
    let rel = |analytic: &Tensor, num: &[f64]| {
        let a = analytic.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let scale = num.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        a.iter()
            .zip(num)
            .map(|(p, q)| (p - q).abs())
            .fold(0f64, f64::max)
            / scale
    };
    let ek = rel(
        grads.get(&kernel).unwrap(),
        &numeric(&kernel, x.as_tensor(), false),
    );
    let ex = rel(
        grads.get(&x).unwrap(),
        &numeric(&x, kernel.as_tensor(), true),
    );
    (ek, ex)
}

#[test]
fn conv2d_backward_matches_finite_differences_for_the_shapes_we_train() {
    let mut worst = Vec::new();
    for batch in [1, 3] {
        for (k, stride, pad) in [(1, 1, 0), (3, 1, 1), (3, 2, 1)] {
            let (ek, ex) = gradient_errors(batch, 2, 3, k, stride, pad);
            eprintln!(
                "batch {batch} kernel {k} stride {stride} pad {pad}: kernel grad error {ek:.2e}, input grad error {ex:.2e}"
            );
            worst.push((batch, k, stride, ek, ex));
        }
    }
    for (batch, k, stride, ek, ex) in worst {
        assert!(
            ek < 1e-6 && ex < 1e-6,
            "batch {batch} kernel {k} stride {stride}: kernel grad error {ek:.2e}, input grad error {ex:.2e}"
        );
    }
}
