//! Engine tests on the tiny random-weight llama (no download): cache consistency, the GGUF
//! loading path, generation, and the errors bad input must produce.

use candle_core::quantized::GgmlDType;
use frugal_engine::cache::KvDtype;
use frugal_engine::generate::{generate, FinishReason, GenerateRequest, SamplingParams};
use frugal_engine::model::llama::{LogitRows, WeightFormat};
use frugal_engine::model::{self, LoadedModel};
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::{
    tiny_model, write_tiny_gguf, write_tiny_safetensors_dir, TinyGgufOptions,
};
use frugal_engine::EngineError;

fn logits_rows(
    lm: &LoadedModel,
    seq: &mut Sequence,
    ids: &[u32],
    rows: LogitRows,
) -> Vec<Vec<f32>> {
    lm.model
        .forward(ids, seq, rows)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn prompt(lm: &LoadedModel) -> Vec<u32> {
    lm.tokenizer
        .encode("Hello world, the tiny model says hello to the world again and again.")
        .unwrap()
}

#[test]
fn decoding_token_by_token_equals_one_prefill() {
    for dtype in [GgmlDType::F32, GgmlDType::Q8_0, GgmlDType::Q4_1] {
        let mut lm = tiny_model(dtype, 1).unwrap();
        // One kernel for every call, so prefill and decode compute the same products (the
        // default switches long calls to a dequantised GEMM; see the test below).
        lm.model.set_dequant_rows(usize::MAX);
        let ids = prompt(&lm);
        let layout = lm.model.config().kv_layout();
        let all = logits_rows(&lm, &mut Sequence::dense(layout), &ids, LogitRows::All);
        let mut seq = Sequence::dense(layout);
        let stepwise: Vec<Vec<f32>> = ids
            .iter()
            .map(|&id| logits_rows(&lm, &mut seq, &[id], LogitRows::Last).remove(0))
            .collect();
        let mut chunked = logits_rows(&lm, &mut Sequence::dense(layout), &ids[..7], LogitRows::All);
        let mut seq = Sequence::dense(layout);
        logits_rows(&lm, &mut seq, &ids[..7], LogitRows::Last);
        chunked = chunked
            .into_iter()
            .chain(logits_rows(&lm, &mut seq, &ids[7..], LogitRows::All))
            .collect();
        // Same math in a different order (GEMM over 1 vs n rows; Q8 activation blocks are per
        // row, so quantised paths agree as closely): f32 rounding only.
        assert!(
            max_diff(&all, &stepwise) < 1e-4,
            "{dtype:?}: {}",
            max_diff(&all, &stepwise)
        );
        assert!(
            max_diff(&all, &chunked) < 1e-4,
            "{dtype:?}: {}",
            max_diff(&all, &chunked)
        );
        assert!(all.iter().flatten().all(|x| x.is_finite()));
    }
}

#[test]
fn the_model_depends_on_context_and_weights() {
    // Guards against a forward pass that ignores attention or the cache: changing an early
    // token must change the last logits, and different weights give different logits.
    let lm = tiny_model(GgmlDType::F32, 1).unwrap();
    let layout = lm.model.config().kv_layout();
    let ids = prompt(&lm);
    let mut other = ids.clone();
    other[1] = (other[1] + 5) % 200 + 3;
    let a = logits_rows(&lm, &mut Sequence::dense(layout), &ids, LogitRows::Last);
    let b = logits_rows(&lm, &mut Sequence::dense(layout), &other, LogitRows::Last);
    assert!(max_diff(&a, &b) > 1e-3);
    let lm2 = tiny_model(GgmlDType::F32, 2).unwrap();
    let c = logits_rows(&lm2, &mut Sequence::dense(layout), &ids, LogitRows::Last);
    assert!(max_diff(&a, &c) > 1e-2);
}

#[test]
fn gguf_file_round_trip_loads_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, GgmlDType::Q8_0, 3, TinyGgufOptions::default()).unwrap();
    let mut from_file = model::load(&path, WeightFormat::Native).unwrap();
    let in_memory = tiny_model(GgmlDType::Q8_0, 3).unwrap();
    // A loaded model holds the default f16 store; the tiny test models the exact one.
    assert_eq!(from_file.model.config().kv_dtype, KvDtype::F16);
    from_file.model.set_kv_dtype(KvDtype::F32);
    assert_eq!(from_file.model.config(), in_memory.model.config());
    let ids = prompt(&in_memory);
    assert_eq!(
        from_file.tokenizer.encode("Hello world").unwrap(),
        in_memory.tokenizer.encode("Hello world").unwrap()
    );
    let layout = in_memory.model.config().kv_layout();
    let a = logits_rows(
        &from_file,
        &mut Sequence::dense(layout),
        &ids,
        LogitRows::All,
    );
    let b = logits_rows(
        &in_memory,
        &mut Sequence::dense(layout),
        &ids,
        LogitRows::All,
    );
    assert_eq!(a, b);
    // --dtype f32 dequantises the same weights: close to, not bit-equal with, the Q8 path.
    let f32_model = model::load(&path, WeightFormat::F32).unwrap();
    let c = logits_rows(
        &f32_model,
        &mut Sequence::dense(layout),
        &ids,
        LogitRows::All,
    );
    let d = max_diff(&a, &c);
    let scale = a.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        d > 0.0 && d < 0.05 * scale,
        "Q8 vs f32: {d} (logit scale {scale})"
    );
}

#[test]
fn generation_streams_exactly_its_text_and_honours_stop_conditions() {
    let lm = tiny_model(GgmlDType::F32, 1).unwrap();
    let ids = prompt(&lm);
    let layout = lm.model.config().kv_layout();
    let req = GenerateRequest {
        max_tokens: 20,
        ..Default::default()
    };
    let mut streamed = String::new();
    let out = generate(&lm, &mut Sequence::dense(layout), &ids, &req, &mut |p| {
        streamed.push_str(p);
        true
    })
    .unwrap();
    assert_eq!(streamed, out.text);
    assert!(
        out.finish == FinishReason::Length && out.tokens.len() == 20
            || out.finish == FinishReason::Eos
    );
    // Greedy is deterministic.
    let again = generate(&lm, &mut Sequence::dense(layout), &ids, &req, &mut |_| true).unwrap();
    assert_eq!(again.tokens, out.tokens);
    // A stop string taken from the middle of that output ends generation before it.
    if out.text.chars().count() > 6 {
        let stop: String = out.text.chars().skip(3).take(2).collect();
        let cut = out.text.find(&stop).unwrap();
        let req = GenerateRequest {
            stop: vec![stop],
            ..req.clone()
        };
        let mut streamed = String::new();
        let s = generate(&lm, &mut Sequence::dense(layout), &ids, &req, &mut |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
        assert_eq!(s.finish, FinishReason::Stop);
        assert_eq!(s.text, out.text[..cut]);
        assert_eq!(
            streamed, s.text,
            "text beyond the stop string must never be streamed"
        );
    }
    // Sampling with a seed is reproducible.
    let sampled = GenerateRequest {
        sampling: SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            seed: 11,
        },
        ..req.clone()
    };
    let s1 = generate(
        &lm,
        &mut Sequence::dense(layout),
        &ids,
        &sampled,
        &mut |_| true,
    )
    .unwrap();
    let s2 = generate(
        &lm,
        &mut Sequence::dense(layout),
        &ids,
        &sampled,
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(s1.tokens, s2.tokens);
}

#[test]
fn prompt_longer_than_the_context_is_an_error() {
    let lm = tiny_model(GgmlDType::F32, 1).unwrap();
    let limit = lm.model.config().context_length;
    let ids = vec![5u32; limit + 1];
    let err = lm
        .model
        .forward(
            &ids,
            &mut Sequence::dense(lm.model.config().kv_layout()),
            LogitRows::Last,
        )
        .unwrap_err();
    assert!(
        matches!(err, EngineError::ContextOverflow { tokens, limit: l } if tokens == limit + 1 && l == limit)
    );
    let err = generate(
        &lm,
        &mut Sequence::dense(lm.model.config().kv_layout()),
        &ids,
        &GenerateRequest::default(),
        &mut |_| true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("context window"), "{err}");
}

#[test]
fn kv_bytes_are_counted_from_the_store() {
    let lm = tiny_model(GgmlDType::F32, 1).unwrap();
    let cfg = lm.model.config().clone();
    let mut seq = Sequence::dense(cfg.kv_layout());
    let ids = prompt(&lm);
    lm.model.forward(&ids, &mut seq, LogitRows::Last).unwrap();
    // Per token, layer and KV head: head_dim keys + head_dim values (f32) + one u32 position.
    let per_token = cfg.n_layers * cfg.n_kv_heads * (2 * cfg.head_dim * 4 + 4);
    assert_eq!(seq.cache.resident_bytes(), ids.len() * per_token);
    assert_eq!(seq.peak_kv_bytes(), ids.len() * per_token);
    seq.reset();
    assert_eq!(seq.cache.resident_bytes(), 0);
}

#[test]
fn safetensors_directory_loads_the_same_model_as_gguf() {
    // Hugging Face layout: other tensor names, Q/K rows in half-split RoPE order. Same logits
    // means the name mapping and the RoPE pairing are both right.
    let dir = tempfile::tempdir().unwrap();
    write_tiny_safetensors_dir(dir.path(), 4).unwrap();
    let hf = model::load(dir.path(), WeightFormat::Native).unwrap();
    let reference = tiny_model(GgmlDType::F32, 4).unwrap();
    let ids = prompt(&reference);
    assert_eq!(
        hf.tokenizer.encode("Hello world").unwrap(),
        reference.tokenizer.encode("Hello world").unwrap()
    );
    assert_eq!(hf.tokenizer.eos_token_id(), Some(2));
    let layout = reference.model.config().kv_layout();
    let a = logits_rows(&hf, &mut Sequence::dense(layout), &ids, LogitRows::All);
    let b = logits_rows(
        &reference,
        &mut Sequence::dense(layout),
        &ids,
        LogitRows::All,
    );
    assert!(max_diff(&a, &b) < 1e-4, "{}", max_diff(&a, &b));
    let chat = hf
        .chat_template
        .render(
            &[frugal_engine::model::chat_template::ChatMessage::user("hi")],
            true,
        )
        .unwrap();
    assert_eq!(
        chat,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn long_calls_on_quantised_weights_use_the_dequantised_gemm() {
    // With the default switch, a prefill on Q4_1 weights computes the projections with the
    // weights dequantised to f32, i.e. exactly what `--dtype f32` does, except for the LM head
    // (one row, quantised kernel): logits agree far better than with Q8 activations.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.gguf");
    write_tiny_gguf(&path, GgmlDType::Q4_1, 6, TinyGgufOptions::default()).unwrap();
    let mut hybrid = model::load(&path, WeightFormat::Native).unwrap();
    hybrid
        .model
        .set_dequant_rows(frugal_engine::model::llama::DEQUANT_ROWS_ROW_KERNEL);
    let mut quantised = model::load(&path, WeightFormat::Native).unwrap();
    quantised.model.set_dequant_rows(usize::MAX);
    let exact = model::load(&path, WeightFormat::F32).unwrap();
    let ids = prompt(&exact);
    assert!(ids.len() >= frugal_engine::model::llama::DEQUANT_ROWS_ROW_KERNEL);
    let layout = exact.model.config().kv_layout();
    let hidden = |lm: &LoadedModel| {
        lm.model
            .forward_hidden(&ids, &mut Sequence::dense(layout), LogitRows::All)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let (h, q, e) = (hidden(&hybrid), hidden(&quantised), hidden(&exact));
    assert!(
        max_diff(&h, &e) < 1e-4,
        "hybrid vs f32: {}",
        max_diff(&h, &e)
    );
    assert!(
        max_diff(&q, &e) > 10.0 * max_diff(&h, &e),
        "the quantised kernel is the noisier one"
    );
}
