//! The sweep runner: every condition on the same samples, LV conditions through the shared
//! dense prefix, timed conditions interleaved with dense.

use super::*;

/// One sample under one condition.
#[derive(Clone, Debug, Default)]
struct Obs {
    correct: bool,
    top: usize,
    gold_logprob: f64,
    prefill_secs: f64,
    kv_bytes: usize,
}

pub(super) fn score(logits: &[f32], candidates: &[u32], gold: usize) -> (bool, usize, f64) {
    let c: Vec<f64> = candidates
        .iter()
        .map(|&i| logits[i as usize] as f64)
        .collect();
    let max = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + c.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    let top = c
        .iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > c[b] { i } else { b });
    (top == gold, top, c[gold] - lse)
}

/// A full copy of what a cache holds, as a [`FullCache`] (for the LV shortcut).
fn snapshot(cache: &dyn CachePolicy, layout: KvLayout) -> FullCache {
    let mut out = FullCache::new(layout);
    let d = layout.head_dim;
    for layer in 0..layout.n_layers {
        let views: Vec<_> = (0..layout.n_kv_heads)
            .map(|g| cache.view(layer, g))
            .collect();
        let positions = views[0].positions.to_vec();
        let t = positions.len();
        let (mut k, mut v) = (
            vec![0f32; t * layout.n_kv_heads * d],
            vec![0f32; t * layout.n_kv_heads * d],
        );
        for (g, view) in views.iter().enumerate() {
            assert_eq!(
                view.positions.as_ref(),
                positions.as_slice(),
                "dense store: every head holds every token"
            );
            for tok in 0..t {
                let dst = (tok * layout.n_kv_heads + g) * d;
                k[dst..dst + d].copy_from_slice(&view.keys[tok * d..(tok + 1) * d]);
                v[dst..dst + d].copy_from_slice(&view.values[tok * d..(tok + 1) * d]);
            }
        }
        out.store(layer, &positions, &k, &v);
    }
    out
}

fn sequence(spec: &str, layout: KvLayout, structure: &Arc<TokenStructure>) -> Result<Sequence> {
    let mut seq = build(&spec.parse()?, layout)?;
    seq.structure = Some(structure.clone());
    Ok(seq)
}

/// Runs every condition on every sample. `progress(done, total, label)` after each
/// (sample, condition); `interrupted()` stops early (finished samples are kept).
pub fn run_sweeps(
    lm: &LoadedModel,
    samples: &[Sample],
    settings: &[Setting],
    progress: &mut dyn FnMut(u64, u64, &str),
    interrupted: &dyn Fn() -> bool,
) -> Result<Vec<ConditionResult>> {
    let layout = lm.model.config().kv_layout();
    let total = (samples.len() * settings.len()) as u64;
    let mut obs: Vec<Vec<Obs>> = vec![Vec::new(); settings.len()];
    let mut done = 0u64;
    for (si, s) in samples.iter().enumerate() {
        if interrupted() {
            break;
        }
        let Answer::Choice { candidates, gold } = &s.answer else {
            bail!("knockout scores candidate answers; this task's samples have none (use chunk-qa or kv-like choice tasks)");
        };
        let structure = Arc::new(s.structure.clone());
        let q_start = structure
            .per_token()
            .iter()
            .position(|k| k.0 == TokenKind::Question)
            .unwrap_or(s.tokens.len());
        // Dense prefix for the LV shortcut (only when there is something before the question).
        let mut base: Option<FullCache> = None;
        if q_start > 0 && settings.iter().any(Setting::lv_shortcut) {
            let mut seq = Sequence::new(Box::new(FullCache::new(layout)), Box::new(Dense));
            seq.structure = Some(structure.clone());
            lm.model
                .forward(&s.tokens[..q_start], &mut seq, LogitRows::Last)?;
            base = Some(snapshot(&*seq.cache, layout));
        }
        for (ci, setting) in settings.iter().enumerate() {
            let spec = setting.spec();
            let mut o = Obs::default();
            let logits = match (&base, setting.lv_shortcut()) {
                (Some(b), true) => {
                    let attention: Box<dyn AttentionPolicy> =
                        build(&spec.parse()?, layout)?.attention;
                    let mut seq = Sequence::resume(Box::new(b.clone()), attention, q_start);
                    seq.structure = Some(structure.clone());
                    lm.model.last_logits(&s.tokens[q_start..], &mut seq)?
                }
                _ => {
                    let mut seq = sequence(&spec, layout, &structure)?;
                    let t0 = Instant::now();
                    let l = lm.model.last_logits(&s.tokens, &mut seq)?;
                    o.prefill_secs = t0.elapsed().as_secs_f64();
                    o.kv_bytes = seq.cache.resident_bytes();
                    l
                }
            };
            let (correct, top, lp) = score(&logits, candidates, *gold);
            o.correct = correct;
            o.top = top;
            o.gold_logprob = lp;
            obs[ci].push(o);
            done += 1;
            progress(
                done,
                total,
                &format!("sample {}/{} {spec}", si + 1, samples.len()),
            );
        }
    }
    let n = obs[0].len();
    if n == 0 {
        bail!("interrupted before the first sample finished");
    }
    let dense = &obs[0];
    let mean = |v: &[Obs], f: fn(&Obs) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let dense_acc = mean(dense, |o| o.correct as u8 as f64);
    let dense_secs = mean(dense, |o| o.prefill_secs);
    let dense_kv = mean(dense, |o| o.kv_bytes as f64);
    Ok(settings
        .iter()
        .zip(&obs)
        .map(|(setting, v)| {
            let v = &v[..n];
            let k = v.iter().filter(|o| o.correct).count();
            let (lo, hi) = wilson_interval(k, n);
            let acc = k as f64 / n as f64;
            let timed = setting.timed();
            let secs = mean(v, |o| o.prefill_secs);
            let kv = mean(v, |o| o.kv_bytes as f64);
            ConditionResult {
                policy: setting.spec(),
                setting: setting.clone(),
                samples: n,
                accuracy: acc,
                ci_low: lo,
                ci_high: hi,
                relative_accuracy: if dense_acc > 0.0 {
                    acc / dense_acc
                } else {
                    f64::NAN
                },
                gold_logprob: mean(v, |o| o.gold_logprob),
                agreement_with_dense: v.iter().zip(dense).filter(|(a, b)| a.top == b.top).count()
                    as f64
                    / n as f64,
                prefill_secs: timed.then_some(secs),
                prefill_speedup_vs_dense: timed.then_some(dense_secs / secs),
                kv_bytes: timed.then_some(kv),
                kv_fraction_of_dense: timed.then_some(kv / dense_kv),
            }
        })
        .collect())
}
