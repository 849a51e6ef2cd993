//! The CUDA device path against the CPU reference, for the GPU machine. Run there from a
//! binary built with `--features cuda` (scripts/cuda/build_candle_cuda.sh):
//!
//! ```text
//! FRUGAL_REQUIRE_CUDA=1 ./engine-cuda-test --nocapture --test-threads 1
//! FRUGAL_REQUIRE_CUDA=1 FRUGAL_CUDA_TEST_MODEL=SmolLM2-135M-Instruct.Q4_1.gguf ./engine-cuda-test …
//! ```
//!
//! Without a CUDA device (CI, every build without the feature) each test says so on stderr and
//! returns; with `FRUGAL_REQUIRE_CUDA=1` a missing device fails it instead.

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use frugal_engine::model::device_model::{open_device, DEFAULT_SCORE_BUDGET};
use frugal_engine::model::llama::{LogitRows, WeightFormat};
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::{compare_device_path, TINY_ARCHITECTURES, TINY_WINDOW};

fn cuda() -> Option<Device> {
    match open_device("cuda") {
        Ok(d) => Some(d),
        Err(e) if std::env::var("FRUGAL_REQUIRE_CUDA").as_deref() == Ok("1") => {
            panic!("FRUGAL_REQUIRE_CUDA=1 but {e}")
        }
        Err(e) => {
            eprintln!("no CUDA device, nothing compared: {e}");
            None
        }
    }
}

#[test]
fn cuda_f32_matches_cpu_on_every_architecture() {
    let Some(dev) = cuda() else { return };
    for arch in TINY_ARCHITECTURES {
        for budget in [700, DEFAULT_SCORE_BUDGET] {
            let r = compare_device_path(arch, GgmlDType::F32, &dev, 3 * TINY_WINDOW + 5, 8, budget)
                .unwrap();
            eprintln!("cuda f32 {arch} budget {budget}: {r:?}");
            // f32 throughout; only the summation order differs (cuBLAS, reductions).
            assert!(r.max_abs < 1e-3, "{arch}: max |Δlogit| {}", r.max_abs);
            assert_eq!(r.argmax_agree, 1.0, "{arch}");
        }
    }
}

#[test]
fn cuda_quantised_weights_stay_close_to_cpu() {
    let Some(dev) = cuda() else { return };
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
        let r = compare_device_path("llama", dtype, &dev, 200, 16, DEFAULT_SCORE_BUDGET).unwrap();
        eprintln!("cuda {dtype:?}: {r:?}");
        // candle's CUDA kernels quantise the activations to 8 bits before the integer dot
        // products (the CPU kernel too, in other blocks), so the logits move by a small fraction
        // of their range; a wrong layout or kernel moves them by the whole range.
        assert!(
            r.mean_abs < 0.02 * r.logit_range && r.max_abs < 0.2 * r.logit_range,
            "{dtype:?}: {r:?}"
        );
        assert!(r.argmax_agree >= 0.9, "{dtype:?}: {r:?}");
    }
}

/// With `FRUGAL_CUDA_TEST_MODEL` naming a GGUF file: its last-token logits on a short prompt,
/// f32 weights on both sides (tight), and native quantised weights (close, same top token).
#[test]
fn cuda_real_model_matches_cpu() {
    let Ok(path) = std::env::var("FRUGAL_CUDA_TEST_MODEL") else {
        eprintln!("FRUGAL_CUDA_TEST_MODEL not set: real-model comparison skipped");
        return;
    };
    let Some(dev) = cuda() else { return };
    let path = std::path::Path::new(&path);
    for (format, tight) in [(WeightFormat::F32, true), (WeightFormat::Native, false)] {
        let host = frugal_engine::model::load(path, format).unwrap();
        let ids = host
            .tokenizer
            .encode("The capital of France is Paris. The capital of Italy is")
            .unwrap();
        let layout = host.model.config().kv_layout();
        let mut hs = Sequence::dense_with_dtype(layout, frugal_engine::cache::KvDtype::F32);
        let h = host.model.forward(&ids, &mut hs, LogitRows::Last).unwrap();
        let h: Vec<f32> = h.flatten_all().unwrap().to_vec1().unwrap();
        let model = frugal_engine::model::load(path, format)
            .unwrap()
            .model
            .to_device(&dev)
            .unwrap();
        let mut ds = Sequence::dense(layout);
        let d = model.forward(&ids, &mut ds, LogitRows::Last).unwrap();
        let d: Vec<f32> = d.flatten_all().unwrap().to_vec1().unwrap();
        let max = h
            .iter()
            .zip(&d)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let top = |v: &[f32]| frugal_engine::generate::argmax(v);
        eprintln!(
            "{} {format:?}: {} tokens, max |Δlogit| {max}, top host {} cuda {}",
            path.display(),
            ids.len(),
            top(&h),
            top(&d)
        );
        assert_eq!(top(&h), top(&d), "{format:?}: top token differs");
        if tight {
            assert!(max < 1e-2, "f32 weights: max |Δlogit| {max}");
        } else {
            assert!(max < 2.0, "quantised weights: max |Δlogit| {max}");
        }
    }
}
