//! The device path (weights, KV store and attention as candle tensor ops) against the host path
//! (the reference), run on the CPU device so CI checks it without a GPU. The same comparison
//! runs on a GPU in `cuda_consistency.rs`.

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use frugal_engine::attention::{AttentionPolicy, StepContext};
use frugal_engine::cache::FullCache;
use frugal_engine::model::device_model::DEFAULT_SCORE_BUDGET;
use frugal_engine::model::llama::{decode_kernel, DecodeKernel, LogitRows};
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::{compare_device_path, tiny_model, TINY_ARCHITECTURES, TINY_WINDOW};
use frugal_engine::EngineError;
use frugal_numerics::attention::KeyMask;

#[test]
fn device_path_matches_host_path_on_every_architecture() {
    // Three windows long, so Gemma 3's local layers mask; a budget of 700 score entries splits
    // the prefill into query chunks of a few rows (masks inside and across chunks), the default
    // budget runs it as one chunk.
    for arch in TINY_ARCHITECTURES {
        for budget in [700, DEFAULT_SCORE_BUDGET] {
            let r = compare_device_path(
                arch,
                GgmlDType::F32,
                &Device::Cpu,
                3 * TINY_WINDOW + 5,
                8,
                budget,
            )
            .unwrap();
            assert!(
                r.max_abs < 1e-3,
                "{arch}, budget {budget}: max |Δlogit| {} (range {})",
                r.max_abs,
                r.logit_range
            );
            assert_eq!(r.argmax_agree, 1.0, "{arch}, budget {budget}");
            assert!(r.logit_range > 1.0, "{arch}: logits must not be flat");
            if *arch == "llama" {
                assert_eq!(r.device_kv_bytes, r.host_kv_bytes, "same rows, same count");
            } else {
                // Gemma 3's host store frees rows its windows no longer see; the device store
                // keeps them (the mask hides them).
                assert!(r.device_kv_bytes >= r.host_kv_bytes, "{arch}");
            }
        }
    }
}

#[test]
fn quantised_weights_stay_quantised_and_agree() {
    // Both paths run candle's quantised kernel on the same blocks: the host path is switched
    // from our decode kernel to candle's (the switch is read once per process; no other test
    // in this file runs quantised weights, so it is read here first).
    std::env::set_var("FRUGAL_DECODE_KERNEL", "candle");
    assert_eq!(decode_kernel(), DecodeKernel::Candle);
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
        let r = compare_device_path("llama", dtype, &Device::Cpu, 40, 6, 500).unwrap();
        assert!(r.max_abs < 1e-3, "{dtype:?}: max |Δlogit| {}", r.max_abs);
    }
}

/// An attention policy the device path does not know.
struct Knockout;

impl AttentionPolicy for Knockout {
    fn name(&self) -> String {
        "knockout:test".into()
    }
    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        None
    }
}

#[test]
fn host_only_policies_are_refused_by_name() {
    let lm = tiny_model(GgmlDType::F32, 1).unwrap();
    let layout = lm.model.config().kv_layout();
    let model = lm.model.onto_device(&Device::Cpu).unwrap();
    assert_eq!(model.device_name(), "cpu");
    let mut seq = Sequence::new(Box::new(FullCache::new(layout)), Box::new(Knockout));
    let err = model
        .forward(&[1, 2, 3], &mut seq, LogitRows::Last)
        .unwrap_err();
    assert!(
        matches!(err, EngineError::DeviceUnsupported { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("knockout:test"), "{err}");
    assert_eq!(seq.len(), 0, "nothing ran");
}

#[test]
fn reset_frees_the_device_store_and_reruns_identically() {
    let lm = tiny_model(GgmlDType::F32, 2).unwrap();
    let layout = lm.model.config().kv_layout();
    let model = lm.model.onto_device(&Device::Cpu).unwrap();
    let mut seq = Sequence::dense(layout);
    let ids = [5u32, 9, 17, 33, 2];
    let first = model.last_logits(&ids, &mut seq).unwrap();
    // 3 layers × 2 KV heads × 5 rows × (2 × 16 f32 + 1 u32 position).
    assert_eq!(seq.kv_resident_bytes(), 3 * 2 * 5 * (2 * 16 * 4 + 4));
    assert_eq!(seq.peak_kv_bytes(), seq.kv_resident_bytes());
    seq.reset();
    assert_eq!(seq.kv_resident_bytes(), 0);
    let again = model.last_logits(&ids, &mut seq).unwrap();
    assert_eq!(first, again);
}
