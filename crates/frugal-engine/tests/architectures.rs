//! The Gemma 3 and Qwen 2/3 forward passes on tiny random models: one prefill call and token-
//! by-token decode agree (so the cache, the sliding window and its eviction behave the same on
//! both paths), the window is enforced and shown to policies, and the full store frees what
//! the window drops.

use candle_core::quantized::GgmlDType;
use frugal_engine::attention::{AttentionPolicy, StepContext};
use frugal_engine::cache::{CachePolicy, FullCache, KvDtype, KvLayout, FORGET_SLACK};
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::{tiny_model_of, TINY_ARCHITECTURES, TINY_WINDOW};
use frugal_numerics::attention::KeyMask;
use std::sync::Mutex;

fn ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn last_logits(lm: &LoadedModel, ids: &[u32], seq: &mut Sequence) -> Vec<f32> {
    lm.model
        .forward(ids, seq, LogitRows::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Prefill and decode through both stores. With f32 rows both calls run the blocked kernel,
/// so they agree to 1e-3. With f16 rows (the default) the long call runs the blocked kernel
/// on the rows widened to f32, and the single-token calls run the kernel that reads f16 in
/// place. The two sum in different orders: about 1e-6 relative per score, as the kernel test
/// `half_attention::matches_the_blocked_kernel_on_the_widened_rows` checks. The random tiny
/// models then amplify that through their layers, up to about 1e-3 in the logits, hence the
/// 1e-2 bound there.
#[test]
fn prefill_and_decode_agree_on_every_architecture() {
    for (dtype, bound) in [(KvDtype::F32, 1e-3), (KvDtype::F16, 1e-2)] {
        prefill_and_decode_agree(dtype, bound);
    }
}

fn prefill_and_decode_agree(dtype: KvDtype, bound: f32) {
    for arch in TINY_ARCHITECTURES {
        let lm = tiny_model_of(arch, GgmlDType::F32, 3).unwrap();
        let n = 5 * TINY_WINDOW;
        let toks = ids(n, lm.model.config().vocab_size);
        let layout = KvLayout {
            dtype,
            ..lm.model.config().kv_layout()
        };
        let mut one = Sequence::dense(layout);
        let whole = last_logits(&lm, &toks, &mut one);
        let mut step = Sequence::dense(layout);
        last_logits(&lm, &toks[..TINY_WINDOW / 2], &mut step);
        let mut last = Vec::new();
        for &t in &toks[TINY_WINDOW / 2..] {
            last = last_logits(&lm, &[t], &mut step);
        }
        let d = max_diff(&whole, &last);
        assert!(
            d < bound,
            "{arch} {dtype:?}: prefill vs decode max |Δlogit| = {d}"
        );
        assert!(whole.iter().all(|x| x.is_finite()), "{arch}");
    }
}

#[test]
fn architectures_differ_from_each_other() {
    // Same random base weights: each family's extra tensors and switches must change the output.
    let outs: Vec<Vec<f32>> = TINY_ARCHITECTURES
        .iter()
        .map(|arch| {
            let lm = tiny_model_of(arch, GgmlDType::F32, 3).unwrap();
            let toks = ids(40, lm.model.config().vocab_size);
            last_logits(
                &lm,
                &toks,
                &mut Sequence::dense(lm.model.config().kv_layout()),
            )
        })
        .collect();
    for i in 0..outs.len() {
        for j in i + 1..outs.len() {
            assert!(
                max_diff(&outs[i], &outs[j]) > 1e-2,
                "{} and {} give the same logits",
                TINY_ARCHITECTURES[i],
                TINY_ARCHITECTURES[j]
            );
        }
    }
}

/// Records the window each layer's step announces, and masks nothing.
#[derive(Default)]
struct Recorder(Mutex<Vec<(usize, Option<usize>)>>);

impl AttentionPolicy for Recorder {
    fn name(&self) -> String {
        "recorder".into()
    }
    fn mask<'a>(&'a self, ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        self.0.lock().unwrap().push((ctx.layer, ctx.window));
        None
    }
}

#[test]
fn gemma3_windows_are_shown_to_policies_and_free_the_full_store() {
    let lm = tiny_model_of("gemma3", GgmlDType::F32, 4).unwrap();
    let cfg = lm.model.config().clone();
    let windows = lm.model.layer_windows();
    assert_eq!(
        windows,
        vec![Some(TINY_WINDOW), Some(TINY_WINDOW), None],
        "every third layer global"
    );
    let rec = std::sync::Arc::new(Recorder::default());
    struct Shared(std::sync::Arc<Recorder>);
    impl AttentionPolicy for Shared {
        fn name(&self) -> String {
            self.0.name()
        }
        fn mask<'a>(&'a self, ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
            self.0.mask(ctx)
        }
    }
    let mut seq = Sequence::new(
        Box::new(FullCache::new(cfg.kv_layout())),
        Box::new(Shared(rec.clone())),
    );
    let n = 10 * TINY_WINDOW;
    let toks = ids(n, cfg.vocab_size);
    lm.model.forward(&toks, &mut seq, LogitRows::Last).unwrap();
    for &t in &toks[..3] {
        lm.model.forward(&[t], &mut seq, LogitRows::Last).unwrap();
    }
    let seen = rec.0.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for (layer, w) in seen {
        assert_eq!(w, windows[layer], "layer {layer}");
    }
    // Sliding layers hold at most window + slack rows; the global layer holds every token.
    let row = 2 * cfg.head_dim * cfg.kv_dtype.bytes() + 4;
    let total = n + 3;
    let global = total * row * cfg.n_kv_heads;
    let sliding_max = 2 * (TINY_WINDOW + FORGET_SLACK) * row * cfg.n_kv_heads;
    let held = seq.cache.resident_bytes();
    assert!(
        held >= global && held <= global + sliding_max,
        "held {held} bytes; global layer alone {global}, sliding layers at most {sliding_max}"
    );
}

#[test]
fn the_step_enforces_the_window_whether_or_not_the_cache_forgets() {
    // A cache that ignores `forget_before` (the trait's default) keeps keys outside the window;
    // the attention step must still not attend them, so the logits equal the forgetting
    // store's while it holds more bytes. Checked on both kernels: with f32 rows the decode
    // step runs the blocked kernel on trimmed views; with f16 rows (the default) it reads the
    // rows in place and trims them itself.
    for dtype in [KvDtype::F32, KvDtype::F16] {
        window_enforced(dtype);
    }
}

fn window_enforced(dtype: KvDtype) {
    struct KeepAll(FullCache);
    impl CachePolicy for KeepAll {
        fn name(&self) -> String {
            "keep-all".into()
        }
        fn store(&mut self, layer: usize, positions: &[u32], k: &[f32], v: &[f32]) {
            self.0.store(layer, positions, k, v)
        }
        fn view(&self, layer: usize, kv_head: usize) -> frugal_engine::cache::HeadView<'_> {
            self.0.view(layer, kv_head)
        }
        fn half_rows(
            &self,
            layer: usize,
            kv_head: usize,
        ) -> Option<frugal_numerics::half_attention::HalfKv<'_>> {
            self.0.half_rows(layer, kv_head)
        }
        fn resident_bytes(&self) -> usize {
            self.0.resident_bytes()
        }
        fn reset(&mut self) {
            self.0.reset()
        }
    }
    let lm = tiny_model_of("gemma3", GgmlDType::F32, 5).unwrap();
    let layout = KvLayout {
        dtype,
        ..lm.model.config().kv_layout()
    };
    let toks = ids(4 * TINY_WINDOW, lm.model.config().vocab_size);
    let mut forgetting = Sequence::dense(layout);
    let mut keeping = Sequence::new(
        Box::new(KeepAll(FullCache::new(layout))),
        Box::new(frugal_engine::attention::Dense),
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &t in &toks {
        a = last_logits(&lm, &[t], &mut forgetting);
        b = last_logits(&lm, &[t], &mut keeping);
    }
    assert!(max_diff(&a, &b) < 1e-5, "{dtype:?}: {}", max_diff(&a, &b));
    assert!(keeping.cache.resident_bytes() > forgetting.cache.resident_bytes());
}
