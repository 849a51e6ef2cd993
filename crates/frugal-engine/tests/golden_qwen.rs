//! Golden tests: Qwen 2 and Qwen 3 against Hugging Face transformers, on tiny random-weight
//! models (no real Qwen weights ship in a package we can fetch).
//!
//! `scripts/golden/make_qwen_tiny_fixtures.py` builds each model with transformers from the
//! official configuration shrunk to 2 layers of width 64 (Qwen 3 keeps a head dimension set
//! apart from width/heads), saves it as a safetensors directory, converts the same weights to
//! GGUF with the `gguf` package, and records transformers' token ids, logits at several
//! positions of a 13-token and a ~2000-token prompt, and a greedy continuation. Both files must
//! reproduce them, which checks the tensor names, the biases / QK-norm, the RoPE pairing and
//! the head dimension on both loading paths.

use candle_core::{Device, Tensor};
use frugal_engine::cache::{KvDtype, KvLayout};
use frugal_engine::generate::argmax;
use frugal_engine::model::llama::{LogitRows, WeightFormat};
use frugal_engine::model::{self, LoadedModel};
use frugal_engine::sequence::Sequence;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ids_of(t: &HashMap<String, Tensor>, key: &str) -> Vec<u32> {
    t[key]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// The KV layout with keys and values held at `dtype`.
fn layout(lm: &LoadedModel, dtype: KvDtype) -> KvLayout {
    KvLayout {
        dtype,
        ..lm.model.config().kv_layout()
    }
}

fn greedy(lm: &LoadedModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = Sequence::dense(layout(lm, KvDtype::F32));
    let mut logits = lm.model.forward(prompt, &mut seq, LogitRows::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
        out.push(next);
        logits = lm
            .model
            .forward(&[next], &mut seq, LogitRows::Last)
            .unwrap();
    }
    out
}

/// Bound: both sides compute the same f32 graph (2 layers, logits of magnitude ≤ ~20), so they
/// differ by summation order only, ~1e-5; 1e-3 is far below what a missing bias, norm or a
/// wrong RoPE pairing gives (≥ 0.1 on these weights, which are drawn large on purpose).
const BOUND: f32 = 1e-3;

/// The same comparison with the default f16 KV store: keys and values rounded to 11
/// significant bits (relative error ≤ 2⁻¹¹ ≈ 4.9e-4 each) move these large-weight logits by a
/// few 1e-3 (4.2e-3 measured on qwen2), far below the ≥ 0.1 of a real fault. Logits only; the
/// greedy check runs on the exact store.
const F16_KV_BOUND: f32 = 2e-2;

fn check(family: &str) {
    check_with(family, KvDtype::F32, BOUND);
    check_with(family, KvDtype::F16, F16_KV_BOUND);
}

fn check_with(family: &str, dtype: KvDtype, bound: f32) {
    let fx = candle_core::safetensors::load(
        fixtures().join(format!("{family}_golden.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("{family}_golden.json"))).unwrap(),
    )
    .unwrap();
    for path in [
        fixtures().join(format!("{family}_tiny")),
        fixtures().join(format!("{family}_tiny.gguf")),
    ] {
        let lm = model::load(&path, WeightFormat::Native).unwrap();
        assert_eq!(lm.model.architecture(), family, "{}", path.display());
        for case in ["short", "long"] {
            let ids = ids_of(&fx, &format!("{case}.ids"));
            let text = json["prompts"][case].as_str().unwrap();
            assert_eq!(
                lm.tokenizer.encode(text).unwrap(),
                ids,
                "{family} {case} ids ({})",
                path.display()
            );
            let positions = ids_of(&fx, &format!("{case}.positions"));
            let reference = fx[&format!("{case}.logits")].to_vec2::<f32>().unwrap();
            let mut seq = Sequence::dense(layout(&lm, dtype));
            let hidden = lm
                .model
                .forward_hidden(&ids, &mut seq, LogitRows::All)
                .unwrap();
            let rows = Tensor::new(positions.as_slice(), &Device::Cpu).unwrap();
            let ours = lm
                .model
                .logits(&hidden.index_select(&rows, 0).unwrap())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for ((r, o), p) in reference.iter().zip(&ours).zip(&positions) {
                let d = r
                    .iter()
                    .zip(o)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    d < bound,
                    "{family} {case} {dtype:?} KV, position {p} ({}): max |Δlogit| = {d}",
                    path.display()
                );
            }
            if dtype != KvDtype::F32 {
                continue;
            }
            let want = ids_of(&fx, &format!("{case}.greedy"));
            let margins: Vec<f32> =
                serde_json::from_value(json["cases"][case]["greedy_top1_top2_margins"].clone())
                    .unwrap();
            let clear = margins
                .iter()
                .position(|&m| m < 10.0 * BOUND)
                .unwrap_or(want.len());
            assert!(
                clear >= 8,
                "{family} {case}: only {clear} clear greedy steps"
            );
            let got = greedy(&lm, &ids, want.len());
            assert_eq!(got[..clear], want[..clear], "{family} {case} greedy");
        }
    }
}

#[test]
fn qwen2_matches_transformers_from_safetensors_and_gguf() {
    check("qwen2");
}

#[test]
fn qwen3_matches_transformers_from_safetensors_and_gguf() {
    check("qwen3");
}
