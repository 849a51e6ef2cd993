//! Batched forward calls (continuous batching) against the same calls run one sequence at a
//! time, on every tiny architecture: decode tokens and prefill chunks of different sequences
//! stacked into one call give each sequence the logits it gets alone, store the same K/V, and
//! keep the early-exit contract per sequence (a policy that lets some tokens exit runs beside
//! dense sequences in the same batch).

use candle_core::quantized::GgmlDType;
use frugal_engine::attention::{AttentionPolicy, StepContext};
use frugal_engine::cache::{FullCache, KvDtype};
use frugal_engine::model::batch::BatchItem;
use frugal_engine::model::llama::LogitRows;
use frugal_engine::model::LoadedModel;
use frugal_engine::sequence::Sequence;
use frugal_engine::testing::{tiny_model_of, TINY_ARCHITECTURES};
use frugal_numerics::attention::KeyMask;

fn ids(n: usize, salt: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + 13 + salt * 31) % vocab) as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Tokens at positions before `upto` exit after layer `at` (an early-exit policy such as the
/// knockout study's context exit), all others run every layer.
struct ExitEarly {
    at: usize,
    upto: u32,
}

impl AttentionPolicy for ExitEarly {
    fn name(&self) -> String {
        "exit-early".into()
    }
    fn mask<'a>(&'a self, _ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        None
    }
    fn computed_rows(&self, ctx: &StepContext<'_>, positions: &[u32]) -> Option<Vec<bool>> {
        (ctx.layer >= self.at).then(|| positions.iter().map(|&p| p >= self.upto).collect())
    }
}

fn fresh(lm: &LoadedModel, exit: bool) -> Sequence {
    let layout = lm.model.config().kv_layout();
    let cache = Box::new(FullCache::with_dtype(layout, KvDtype::F32));
    match exit {
        true => Sequence::new(cache, Box::new(ExitEarly { at: 1, upto: 3 })),
        false => Sequence::new(cache, Box::new(frugal_engine::attention::Dense)),
    }
}

fn rows_of(t: &candle_core::Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

#[test]
fn a_batched_call_gives_every_sequence_its_solo_logits() {
    for arch in TINY_ARCHITECTURES {
        let lm = tiny_model_of(arch, GgmlDType::F32, 5).unwrap();
        let vocab = lm.model.config().vocab_size;
        // Long, short and no histories; dense and early-exit policies. The fifth starts
        // empty, so its first call's early exits land in the compared rows.
        let history = [
            ids(20, 0, vocab),
            ids(7, 1, vocab),
            ids(33, 2, vocab),
            ids(4, 3, vocab),
            vec![],
        ];
        let exits = [false, true, false, true, true];
        let mut solo: Vec<Sequence> = exits.iter().map(|&e| fresh(&lm, e)).collect();
        let mut batched: Vec<Sequence> = exits.iter().map(|&e| fresh(&lm, e)).collect();
        for (i, h) in history.iter().enumerate().filter(|(_, h)| !h.is_empty()) {
            lm.model.forward(h, &mut solo[i], LogitRows::Last).unwrap();
        }
        // The histories themselves prefilled as one batch of four prompts.
        {
            let mut items: Vec<BatchItem> = batched
                .iter_mut()
                .zip(&history)
                .filter(|(_, h)| !h.is_empty())
                .map(|(s, h)| BatchItem::new(h, s, LogitRows::Last))
                .collect();
            lm.model.forward_batch(&mut items).unwrap();
        }
        // Then a mixed step: two decode tokens, a prefill chunk asking for every row, and a
        // chunk asking for its tail.
        let step: Vec<Vec<u32>> = vec![
            vec![5],
            ids(9, 4, vocab),
            vec![17],
            ids(6, 5, vocab),
            ids(6, 6, vocab),
        ];
        let rows = [
            LogitRows::Last,
            LogitRows::All,
            LogitRows::Last,
            LogitRows::From(2),
            LogitRows::All,
        ];
        let want: Vec<Vec<Vec<f32>>> = (0..5)
            .map(|i| rows_of(&lm.model.forward(&step[i], &mut solo[i], rows[i]).unwrap()))
            .collect();
        let got: Vec<Vec<Vec<f32>>> = {
            let mut items: Vec<BatchItem> = batched
                .iter_mut()
                .zip(&step)
                .zip(rows)
                .map(|((s, t), r)| BatchItem::new(t, s, r))
                .collect();
            lm.model
                .forward_batch(&mut items)
                .unwrap()
                .iter()
                .map(rows_of)
                .collect()
        };
        for i in 0..5 {
            assert_eq!(got[i].len(), want[i].len(), "{arch} item {i}: output rows");
            for (g, w) in got[i].iter().zip(&want[i]) {
                assert!(max_diff(g, w) < 1e-4, "{arch} item {i}: {}", max_diff(g, w));
                assert_eq!(argmax(g), argmax(w), "{arch} item {i}: greedy token");
            }
            assert_eq!(batched[i].len(), solo[i].len(), "{arch} item {i}: length");
            assert_eq!(
                batched[i].cache.resident_bytes(),
                solo[i].cache.resident_bytes(),
                "{arch} item {i}: the same K/V stored"
            );
        }
        // An early-exit sequence stores nothing past layer 0 for its exited tokens.
        let layout = lm.model.config().kv_layout();
        assert!(
            batched[1]
                .cache
                .view(layout.n_layers - 1, 0)
                .positions
                .len()
                < batched[1].len(),
            "{arch}: exited tokens are not stored in later layers"
        );
    }
}

#[test]
fn a_bad_item_fails_the_batch_before_anything_is_stored() {
    let lm = tiny_model_of("llama", GgmlDType::F32, 5).unwrap();
    let vocab = lm.model.config().vocab_size;
    let (mut a, mut b) = (fresh(&lm, false), fresh(&lm, false));
    let good = ids(5, 0, vocab);
    let bad = vec![vocab as u32 + 3];
    let err = lm
        .model
        .forward_batch(&mut [
            BatchItem::new(&good, &mut a, LogitRows::Last),
            BatchItem::new(&bad, &mut b, LogitRows::Last),
        ])
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    assert_eq!((a.len(), a.cache.resident_bytes()), (0, 0));
    assert!(lm.model.forward_batch(&mut []).is_err(), "an empty batch");
}
