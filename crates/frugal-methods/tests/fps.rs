//! FPSAttention's CPU emulation as an engine policy (docs/methods/fps.md): the block window is cut
//! in token positions, so decoding token by token sees what one prefill sees; FP8 fake
//! quantisation switches each reach the kernel.

mod common;
use common::{ids, max_diff, run};

/// Logit rows of `ids`: the first `prefill` tokens in one call, the rest one by one.
fn logits(spec: &str, ids: &[u32], prefill: usize) -> Vec<Vec<f32>> {
    run(spec, ids, prefill).0
}

/// ‖a − b‖ / ‖b‖ over all logits.
fn rel_l2(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn the_window_decodes_as_it_prefills_and_removes_paths() {
    let ids = ids(300);
    let spec = "fps:window=2,sink=1,bm=32,bn=16,qk=0,v=0,p=0";
    let whole = logits(spec, &ids, 300);
    let stepped = logits(spec, &ids, 100);
    assert!(
        max_diff(&whole, &stepped) < 1e-4,
        "{}",
        max_diff(&whole, &stepped)
    );
    let dense = logits("full", &ids, 300);
    assert!(
        max_diff(&whole[..32], &dense[..32]) < 1e-4,
        "query block 0 sees every key"
    );
    assert!(max_diff(&whole, &dense) > 1e-2, "the window must cut paths");
}

/// Each quantisation switch reaches the kernel (alone it changes the logits), and all of them
/// together stay within 0.3 relative L2 of dense on the tiny random model (measured: Q/K 0.148,
/// V 0.052, P 0.019, all 0.154; a lost scale or a wrong tile sends whole rows to zero or to
/// saturation, far beyond that).
#[test]
fn each_fp8_switch_reaches_the_kernel() {
    let ids = ids(300);
    let dense = logits("full", &ids, 300);
    let all = rel_l2(&logits("fps:window=0", &ids, 300), &dense);
    for spec in [
        "fps:window=0,v=0,p=0",
        "fps:window=0,qk=0,p=0",
        "fps:window=0,qk=0,v=0",
    ] {
        let e = rel_l2(&logits(spec, &ids, 300), &dense);
        assert!(e > 1e-3 && e < all, "{spec}: {e} (all switches: {all})");
    }
    assert!(all < 0.3, "FP8 changes logits by {all}");
}
