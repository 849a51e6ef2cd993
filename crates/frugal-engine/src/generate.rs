//! Sampling, stop conditions and streaming generation.

use crate::error::{EngineError, Result};
use crate::model::llama::LogitRows;
use crate::model::LoadedModel;
use crate::sequence::Sequence;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// How the next token is chosen. `temperature == 0` is greedy decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables the filter.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 disables it.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(EngineError::InvalidSampling {
                name: "temperature",
                value: self.temperature.to_string(),
                expected: "a finite number >= 0 (0 = greedy)",
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::InvalidSampling {
                name: "top_p",
                value: self.top_p.to_string(),
                expected: "a number in (0, 1]",
            });
        }
        Ok(())
    }
}

/// Draws tokens from logits according to [`SamplingParams`], reproducibly for a given seed.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k);
        }
        let max = cand[0].1;
        let inv_t = 1.0 / self.params.temperature;
        let mut probs: Vec<f32> = cand.iter().map(|c| ((c.1 - max) * inv_t).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|p| {
                acc += p;
                acc >= self.params.top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.gen::<f32>() * total;
        for (c, p) in cand.iter().zip(&probs) {
            if r < *p {
                return c.0;
            }
            r -= p;
        }
        cand[cand.len() - 1].0
    }
}

/// Index of the largest logit (the first on ties, as argmax conventionally does).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced its end-of-sequence token.
    Eos,
    /// The output reached one of the stop strings (which is not included).
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The caller's callback asked to stop (e.g. a client went away).
    Cancelled,
}

/// What to generate and when to stop.
#[derive(Clone, Debug, Default)]
pub struct GenerateRequest {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct GenerateOutput {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// Generates after `prompt` (appended to whatever `seq` already holds), calling `on_text`
/// with each new piece of text as soon as it is final; `on_text` returns `false` to cancel.
///
/// Text that might still turn into a stop string, or that ends inside a multi-byte character,
/// is held back until it is settled, so the pieces concatenate to exactly `text`.
pub fn generate(
    lm: &LoadedModel,
    seq: &mut Sequence,
    prompt: &[u32],
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<GenerateOutput> {
    let limit = lm.model.config().context_length;
    if seq.len() + prompt.len() > limit {
        return Err(EngineError::ContextOverflow {
            tokens: seq.len() + prompt.len(),
            limit,
        });
    }
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let eos = lm.tokenizer.eos_token_id();
    let hold = req
        .stop
        .iter()
        .map(|s| s.len())
        .max()
        .unwrap_or(1)
        .saturating_sub(1);

    let t0 = Instant::now();
    let mut logits = lm
        .model
        .forward(prompt, seq, LogitRows::Last)?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    let prefill_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut tokens = Vec::new();
    let mut emitted = 0usize;
    let mut text = String::new();
    let mut finish = FinishReason::Length;
    while tokens.len() < req.max_tokens {
        let next = sampler.sample(&logits);
        if Some(next) == eos {
            finish = FinishReason::Eos;
            break;
        }
        tokens.push(next);
        text = lm.tokenizer.decode(&tokens, true)?;
        if let Some(cut) = req.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
            finish = FinishReason::Stop;
            break;
        }
        // Emit what can no longer change: not an unfinished character, not a possible
        // beginning of a stop string.
        let settled = text.trim_end_matches('\u{FFFD}').len().saturating_sub(hold);
        let settled = floor_char_boundary(&text, settled);
        if settled > emitted {
            if !on_text(&text[emitted..settled]) {
                finish = FinishReason::Cancelled;
                emitted = settled;
                text.truncate(settled);
                break;
            }
            emitted = settled;
        }
        if seq.len() >= limit || tokens.len() == req.max_tokens {
            break;
        }
        logits = lm
            .model
            .forward(&[next], seq, LogitRows::Last)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
    }
    if emitted < text.len() && finish != FinishReason::Cancelled {
        on_text(&text[emitted..]);
    }
    Ok(GenerateOutput {
        text,
        tokens,
        finish,
        prompt_tokens: prompt.len(),
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Step-wise stop-string handling for callers that drive decoding themselves (the server's
/// scheduler steps many sequences in turn, so it cannot use the blocking [`generate`]).
///
/// Text is fed in pieces as it is detokenised; what comes back is settled: it cannot become the
/// start of a stop string any more. Same rule as [`generate`]: the stop string itself and
/// everything after it are dropped, and the settled pieces concatenate to the final text.
#[derive(Clone, Debug)]
pub struct StopFilter {
    stops: Vec<String>,
    /// Bytes held back at the end: the longest stop string minus one.
    hold: usize,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let hold = stops
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        StopFilter {
            stops,
            hold,
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Adds detokenised text; returns the newly settled text and whether a stop string was
    /// reached (after which further pushes are ignored).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.text.push_str(piece);
        // A stop string can only start at or after `emitted`: one starting earlier would have
        // been complete (and found) before that text was released.
        let tail = &self.text[self.emitted..];
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| tail.find(s.as_str()))
            .min()
        {
            self.text.truncate(self.emitted + cut);
            self.stopped = true;
            return (self.release(self.text.len()), true);
        }
        let settled = floor_char_boundary(&self.text, self.text.len().saturating_sub(self.hold));
        (self.release(settled), false)
    }

    /// Releases whatever was held back (the sequence ended for another reason).
    pub fn finish(&mut self) -> String {
        self.release(self.text.len())
    }

    /// All text accepted so far (cut at the stop string if one was reached).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn release(&mut self, upto: usize) -> String {
        let upto = upto.max(self.emitted);
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_argmax_and_sampling_is_seeded() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let mut greedy = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(greedy.sample(&logits), 1);
        let params = SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
        let other = draw(&SamplingParams {
            seed: 8,
            ..params.clone()
        });
        assert_ne!(draw(&params), other);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [0.0, 5.0, 4.0, 3.0];
        let mut k1 = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        })
        .unwrap();
        assert!((0..100).all(|_| k1.sample(&logits) == 1));
        let mut p = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        })
        .unwrap();
        assert!(
            (0..100).all(|_| p.sample(&logits) == 1),
            "token 1 alone holds > 50%"
        );
        let mut k2 = Sampler::new(SamplingParams {
            temperature: 100.0,
            top_k: 2,
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        let seen: std::collections::HashSet<u32> = (0..200).map(|_| k2.sample(&logits)).collect();
        assert_eq!(seen, [1, 2].into_iter().collect());
    }

    #[test]
    fn stop_filter_holds_possible_stops_and_cuts_at_the_first() {
        let mut f = StopFilter::new(&["</s>".to_string(), "END".to_string()]);
        let mut out = String::new();
        let mut stopped = false;
        for piece in ["Hel", "lo <", "/", "x E", "N", "D tail"] {
            let (s, st) = f.push(piece);
            out.push_str(&s);
            stopped |= st;
        }
        assert!(stopped);
        assert_eq!(out, "Hello </x ");
        assert_eq!(f.text(), "Hello </x ");
        let mut none = StopFilter::new(&[]);
        assert_eq!(none.push("ab").0, "ab", "no stop strings: nothing is held");
        let mut f = StopFilter::new(&["xyz".to_string()]);
        assert_eq!(f.push("abxy").0, "ab");
        assert_eq!(
            f.finish(),
            "xy",
            "held text comes out when the sequence ends otherwise"
        );
    }

    #[test]
    fn invalid_sampling_values_are_rejected_by_name() {
        for (p, name) in [
            (
                SamplingParams {
                    temperature: -0.5,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
        ] {
            let err = Sampler::new(p).err().expect("must be rejected").to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
