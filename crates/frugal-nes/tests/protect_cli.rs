//! `protect` end to end on checkpoints of untrained digit models (NEs needs only the first
//! layer), and its bad-input errors.

use candle_core::{DType, Device, Tensor};
use frugal_nes::cli::{run_protect, PatternArg, ProtectArgs};
use frugal_nes::models::{zoo, DigitNet, FirstLayer};
use frugal_nn::checkpoint::{self, TrainState};
use frugal_nn::image_io::{self, Channels, ImageF32};
use std::path::{Path, PathBuf};

fn save_model(dir: &Path, name: &str) -> PathBuf {
    let spec = zoo(&[0]).into_iter().find(|s| s.name == name).unwrap();
    let (_, vm) = DigitNet::build(&spec).unwrap();
    let path = dir.join(format!("{}.safetensors", spec.stem()));
    let state = TrainState {
        step: 0,
        seed: 0,
        model: serde_json::to_value(&spec).unwrap(),
        losses: vec![],
    };
    checkpoint::save(vm.varmap(), &path, &state).unwrap();
    path
}

fn args(model: &Path, psnr: f64, input: &Path, out: &Path) -> ProtectArgs {
    ProtectArgs {
        model: model.to_path_buf(),
        psnr,
        seed: 1,
        pattern: PatternArg::Tiled,
        tau: 1e-2,
        in_dir: input.to_path_buf(),
        out_dir: out.to_path_buf(),
    }
}

fn first_layer_response(layer: &FirstLayer, img: &ImageF32) -> Vec<f32> {
    let t = Tensor::from_vec(
        img.data.clone(),
        (1, 1, img.height, img.width),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(DType::F32)
    .unwrap();
    layer
        .apply(&t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn protect_writes_pngs_at_the_true_psnr_and_refuses_bad_input() {
    let dir = std::env::temp_dir().join(format!("frugal-nes-protect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    // Two mid-grey 16x16 test images with some structure (no clipping at 30 dB).
    for k in 0..2 {
        let data = (0..256)
            .map(|i| 0.3 + 0.4 * ((i * (k + 3)) % 17) as f32 / 17.0)
            .collect();
        ImageF32::new(1, 16, 16, data)
            .unwrap()
            .save_png(&input.join(format!("im{k}.png")))
            .unwrap();
    }
    let auth = save_model(&dir, "patch4");
    let other = save_model(&dir, "patch2");
    let out = dir.join("out");
    run_protect(&args(&auth, 30.0, &input, &out)).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("protect.json")).unwrap()).unwrap();
    assert_eq!(meta["mode"], "exact image-domain null space");
    let a = DigitNet::load(&auth).unwrap().first_layer();
    let u = DigitNet::load(&other).unwrap().first_layer();
    for k in 0..2 {
        let clean = image_io::load(&input.join(format!("im{k}.png")), Channels::Gray).unwrap();
        let rec = image_io::load(&out.join(format!("im{k}.png")), Channels::Gray).unwrap();
        let p = frugal_nes::ne::psnr(&rec.data, &clean.data);
        assert!((p - 30.0).abs() < 0.5, "true PSNR {p}");
        // The authorized first layer barely moves (8-bit rounding only); another one moves a lot.
        let diff = |l: &FirstLayer| {
            let (x, y) = (
                first_layer_response(l, &clean),
                first_layer_response(l, &rec),
            );
            x.iter()
                .zip(&y)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt()
                / x.iter().map(|a| a * a).sum::<f32>().sqrt()
        };
        let (da, du) = (diff(&a), diff(&u));
        assert!(da * 5.0 < du, "authorized change {da}, unauthorized {du}");
    }
    // Output folder exists and is not empty: refused.
    let e = run_protect(&args(&auth, 30.0, &input, &out)).unwrap_err();
    assert!(format!("{e:#}").contains("not empty"), "{e:#}");
    // PSNR out of range.
    let out2 = dir.join("out2");
    for bad in [0.0, -3.0, 150.0, f64::NAN] {
        let e = run_protect(&args(&auth, bad, &input, &out2)).unwrap_err();
        assert!(format!("{e:#}").contains("--psnr"), "{e:#}");
    }
    // First layers that are not a non-overlapping conv.
    let e = run_protect(&args(&save_model(&dir, "mlp"), 20.0, &input, &out2)).unwrap_err();
    assert!(format!("{e:#}").contains("dense layer"), "{e:#}");
    let e = run_protect(&args(&save_model(&dir, "cnn3x3"), 20.0, &input, &out2)).unwrap_err();
    assert!(format!("{e:#}").contains("non-overlapping"), "{e:#}");
    // A model file that does not exist.
    let e = run_protect(&args(&dir.join("nope.safetensors"), 20.0, &input, &out2)).unwrap_err();
    assert!(format!("{e:#}").contains("nope"), "{e:#}");
    // An unreadable image among good ones: error, and nothing written.
    std::fs::write(input.join("zz-broken.png"), b"not an image").unwrap();
    let e = run_protect(&args(&auth, 20.0, &input, &out2)).unwrap_err();
    assert!(format!("{e:#}").contains("zz-broken.png"), "{e:#}");
    assert!(!out2.exists());
    std::fs::remove_file(input.join("zz-broken.png")).unwrap();
    // An image whose size is not a multiple of the patch.
    ImageF32::new(1, 6, 6, vec![0.5; 36])
        .unwrap()
        .save_png(&input.join("small.png"))
        .unwrap();
    let e = run_protect(&args(&auth, 20.0, &input, &out2)).unwrap_err();
    assert!(format!("{e:#}").contains("multiple of"), "{e:#}");
    assert!(!out2.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
