//! Parity with the reference module: for each fixture case (random weights under the reference's
//! parameter names, inputs, and what the reference computed from them in f32; see
//! `tests/data/README.md`), our port must pick the same anchors, make the same assignment, and
//! agree within 1e-4 on every output value.

use candle_core::{Device, Tensor};
use frugal_zpressor::{Zpressor, ZpressorConfig};
use std::path::PathBuf;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

struct Case {
    name: &'static str,
    heads: usize,
    layers: usize,
    width: usize,
    no_self_attn: bool,
}

const CASES: [Case; 5] = [
    Case {
        name: "v12_n4",
        heads: 1,
        layers: 6,
        width: 128,
        no_self_attn: false,
    },
    Case {
        name: "v36_n6",
        heads: 1,
        layers: 6,
        width: 128,
        no_self_attn: false,
    },
    Case {
        name: "b2_v8_n3_heads2_noself",
        heads: 2,
        layers: 2,
        width: 64,
        no_self_attn: true,
    },
    Case {
        name: "v9_n3_ties",
        heads: 1,
        layers: 2,
        width: 32,
        no_self_attn: false,
    },
    Case {
        name: "v5_n5_empty_supports",
        heads: 1,
        layers: 2,
        width: 32,
        no_self_attn: false,
    },
];

fn cfg(c: &Case) -> ZpressorConfig {
    ZpressorConfig {
        embed_dims: vec![c.width],
        num_heads: c.heads,
        num_layers: c.layers,
        no_self_attn: c.no_self_attn,
    }
}

fn to_usize(t: &Tensor) -> Vec<Vec<usize>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as usize).collect())
        .collect()
}

/// Runs one case; returns (max |Δ| against the reference's f32 output, max |Δ| against its bf16
/// output).
fn run_case(c: &Case) -> (f32, f32) {
    let dev = Device::Cpu;
    let path = data(&format!("{}.safetensors", c.name));
    let t = candle_core::safetensors::load(&path, &dev).unwrap();
    let model = Zpressor::from_safetensors(&path, "w.", cfg(c), &dev).unwrap();
    let n = t["cluster_num"].to_scalar::<i64>().unwrap() as usize;
    let (out, asg) = model.forward(&t["x"], &t["extrinsics"], n).unwrap();
    let want_anchors = to_usize(&t["centroids"]);
    let want_clusters = to_usize(&t["clusters"]);
    for (b, a) in asg.iter().enumerate() {
        assert_eq!(
            a.anchors, want_anchors[b],
            "{}: anchors of batch {b}",
            c.name
        );
        assert_eq!(
            a.clusters, want_clusters[b],
            "{}: clusters of batch {b}",
            c.name
        );
    }
    assert_eq!(out.dims(), t["out_f32"].dims(), "{}: output shape", c.name);
    let d = |r: &Tensor| -> f32 {
        (&out - r)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    (d(&t["out_f32"]), d(&t["out_bf16sdpa"]))
}

#[test]
fn parity_with_reference_all_cases() {
    let mut worst = 0f32;
    for c in &CASES {
        let (f32_diff, bf16_diff) = run_case(c);
        println!(
            "parity {}: max|Δ| vs reference f32 = {f32_diff:.3e}, vs reference bf16 path = {bf16_diff:.3e}",
            c.name
        );
        assert!(f32_diff <= 1e-4, "{}: max |Δ| {f32_diff} > 1e-4", c.name);
        worst = worst.max(f32_diff);
    }
    println!("parity worst max|Δ| f32 = {worst:.3e}");
}

#[test]
fn a_file_for_another_configuration_is_a_clear_error() {
    let dev = Device::Cpu;
    let path = data("v9_n3_ties.safetensors");
    // width 64 where the file holds width 32
    let mut c = cfg(&CASES[3]);
    c.embed_dims = vec![64];
    let e = Zpressor::from_safetensors(&path, "w.", c, &dev).unwrap_err();
    assert!(e.to_string().contains("shape mismatch"), "{e}");
    // three blocks where the file holds two
    let mut c = cfg(&CASES[3]);
    c.num_layers = 3;
    let e = Zpressor::from_safetensors(&path, "w.", c, &dev).unwrap_err();
    assert!(e.to_string().contains("missing weight"), "{e}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dev = Device::Cpu;
    let path = data("v9_n3_ties.safetensors");
    let t = candle_core::safetensors::load(&path, &dev).unwrap();
    let model = Zpressor::from_safetensors(&path, "w.", cfg(&CASES[3]), &dev).unwrap();
    // more anchors than views
    let e = model.forward(&t["x"], &t["extrinsics"], 10).unwrap_err();
    assert!(e.to_string().contains("fewer views than anchors"), "{e}");
    // features of the wrong width
    let x = Tensor::zeros((1, 9, 16, 4, 4), candle_core::DType::F32, &dev).unwrap();
    let e = model.forward(&x, &t["extrinsics"], 3).unwrap_err();
    assert!(e.to_string().contains("shape mismatch"), "{e}");
    // a scaled camera: non-rigid
    let mut m = t["extrinsics"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    m[16 * 4] *= 2.0;
    m[16 * 4 + 1] *= 2.0;
    m[16 * 4 + 2] *= 2.0;
    let e2 = Tensor::from_vec(m, (1, 9, 4, 4), &dev).unwrap();
    let e = model.forward(&t["x"], &e2, 3).unwrap_err();
    assert!(
        e.to_string()
            .contains("non-rigid extrinsics: batch 0, view 4"),
        "{e}"
    );
    // extrinsics for a different number of views
    let e = model
        .forward(&t["x"], &t["extrinsics"].narrow(1, 0, 8).unwrap(), 3)
        .unwrap_err();
    assert!(e.to_string().contains("shape mismatch"), "{e}");
}
