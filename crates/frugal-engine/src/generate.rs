//! Sampling, stop conditions and streaming generation.

use crate::error::{EngineError, Result};
use crate::model::tokenizer::StreamDecoder;
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
        if self.params.top_k == 0 && self.params.top_p >= 1.0 {
            return self.sample_whole_vocabulary(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        // Only the filters need the candidates in order: top-k selects its k first (linear
        // time) and sorts only those; top-p sorts. Plain temperature sampling draws from the
        // vocabulary in id order, which is the same distribution without a sort of the whole
        // vocabulary per token (8 % of a batched serving step when it sorted).
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        let k = self.params.top_k;
        if k > 0 && k < cand.len() {
            cand.select_nth_unstable_by(k - 1, by_logit);
            cand.truncate(k);
        }
        if k > 0 || self.params.top_p < 1.0 {
            cand.sort_unstable_by(by_logit);
        }
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
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

impl Sampler {
    /// Plain temperature sampling: `p(i) ∝ exp((logit_i − max) / T)` drawn in id order. The
    /// weights come from a branch-free exponential and sums over independent lanes (both
    /// vectorise), and the draw walks blocks of [`DRAW_BLOCK`] ids by their sums before the ids
    /// of one block: per batched serving step this was one scalar `expf` and two serial sums
    /// per vocabulary entry and row (about a tenth of an 8-sequence step).
    fn sample_whole_vocabulary(&mut self, logits: &[f32]) -> u32 {
        use frugal_numerics::attention::{exp_nonpositive, lanes_fold};
        let max = lanes_fold(logits, f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / self.params.temperature;
        let weights: Vec<f32> = logits
            .iter()
            .map(|&l| exp_nonpositive((l - max) * inv_t))
            .collect();
        let block_sums: Vec<f32> = weights
            .chunks(DRAW_BLOCK)
            .map(|b| lanes_fold(b, 0.0, |a, c| a + c))
            .collect();
        let total: f32 = block_sums.iter().sum();
        let mut r = self.rng.gen::<f32>() * total;
        for (k, &sum) in block_sums.iter().enumerate() {
            if r < sum {
                let block = &weights[k * DRAW_BLOCK..((k + 1) * DRAW_BLOCK).min(weights.len())];
                for (j, &p) in block.iter().enumerate() {
                    if r < p {
                        return (k * DRAW_BLOCK + j) as u32;
                    }
                    r -= p;
                }
                // Rounding left `r` past the block's own sum: its last id with any weight.
                let j = block
                    .iter()
                    .rposition(|&p| p > 0.0)
                    .unwrap_or(block.len() - 1);
                return (k * DRAW_BLOCK + j) as u32;
            }
            r -= sum;
        }
        // Rounding left `r` past the total: the last id with any weight.
        weights
            .iter()
            .rposition(|&p| p > 0.0)
            .unwrap_or(weights.len() - 1) as u32
    }
}

/// Ids per block of the temperature draw's first pass (ours: long enough that the per-block
/// sums vectorise, short enough that the walk inside one block is short).
const DRAW_BLOCK: usize = 256;

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

/// One request's generation, advanced one step at a time: a prefill chunk, or one sampled
/// token. [`generate`], the server's scheduler (which interleaves many of these) and the
/// evaluation harness all drive this one loop, so sampling, incremental detokenising and stop
/// strings behave the same everywhere.
pub struct Generation {
    prompt: Vec<u32>,
    prefilled: usize,
    logits: Vec<f32>,
    sampler: Sampler,
    decoder: StreamDecoder,
    filter: StopFilter,
    max_tokens: usize,
    ignore_eos: bool,
    tokens: Vec<u32>,
    finish: Option<FinishReason>,
    /// The forward call a [`Turn::Forward`] asked for and [`Generation::complete`] has not yet
    /// answered.
    pending: Option<Pending>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// A prefill chunk that ends at this prompt index.
    Prefill(usize),
    /// The sampled token, fed back.
    Decode,
}

/// The first half of a step ([`Generation::prepare`]): the forward call it needs, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Run `tokens` through the model (after what the sequence holds) and hand the logits of
    /// the last one to [`Generation::complete`]; `step` is what this step did. The server's
    /// scheduler stacks the `tokens` of many generations into one batched forward call.
    Forward { tokens: Vec<u32>, step: Step },
    /// The generation ended without needing a forward call.
    Done(Step),
}

/// What one [`Generation::step`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A prefill chunk of this many prompt tokens ran.
    Prefilled(usize),
    /// A token was sampled (`None` when it was the end-of-sequence token, which is not
    /// emitted); `text` is the text that became settled; `finish` is set on the last step.
    Token {
        id: Option<u32>,
        text: String,
        finish: Option<FinishReason>,
    },
}

impl Generation {
    /// Checks the request against the model's context window (after what `seq` holds) and the
    /// sampling parameters.
    pub fn new(
        lm: &LoadedModel,
        seq: &Sequence,
        prompt: Vec<u32>,
        req: &GenerateRequest,
    ) -> Result<Self> {
        let limit = lm.model.config().context_length;
        if seq.len() + prompt.len() > limit {
            return Err(EngineError::ContextOverflow {
                tokens: seq.len() + prompt.len(),
                limit,
            });
        }
        Ok(Generation {
            prompt,
            prefilled: 0,
            logits: Vec::new(),
            sampler: Sampler::new(req.sampling.clone())?,
            decoder: lm.tokenizer.stream_decoder(true),
            filter: StopFilter::new(&req.stop),
            max_tokens: req.max_tokens,
            ignore_eos: false,
            tokens: Vec::new(),
            finish: None,
            pending: None,
        })
    }

    /// Marks the first `n` prompt tokens as already in the sequence (a cached prefix the
    /// caller resumed the sequence from); at least one prompt token must remain to be run, so
    /// the logits of the prompt's end come from a forward call.
    pub fn assume_prefilled(&mut self, n: usize) -> Result<()> {
        if self.prefilled != 0 || self.pending.is_some() || n >= self.prompt.len() {
            return Err(EngineError::Internal(format!(
                "cannot assume {n} of {} prompt tokens prefilled",
                self.prompt.len()
            )));
        }
        self.prefilled = n;
        Ok(())
    }

    /// The prompt, as given.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Prompt tokens run (or assumed) so far.
    pub fn prefilled(&self) -> usize {
        self.prefilled
    }

    /// The logits the next token is drawn from (empty until the prompt is prefilled).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Keep going past the end-of-sequence token (until `max_tokens`): for benchmarks.
    pub fn ignore_eos(mut self, yes: bool) -> Self {
        self.ignore_eos = yes;
        self
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt.len()
    }

    /// Whether the whole prompt has been prefilled.
    pub fn prefill_done(&self) -> bool {
        self.prefilled == self.prompt.len() && !self.logits.is_empty()
    }

    /// Tokens generated so far (the end-of-sequence token not included).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Why generation ended, once it has.
    pub fn finish(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Runs the next prefill chunk (at most `prefill_chunk` tokens) or samples the next token
    /// and feeds it back: [`Generation::prepare`], the forward call, [`Generation::complete`].
    /// Calling it again after the last step is an error.
    pub fn step(
        &mut self,
        lm: &LoadedModel,
        seq: &mut Sequence,
        prefill_chunk: usize,
    ) -> Result<Step> {
        match self.prepare(lm, seq, prefill_chunk)? {
            Turn::Done(step) => Ok(step),
            Turn::Forward { tokens, step } => {
                let logits = lm.model.last_logits(&tokens, seq)?;
                self.complete(logits)?;
                Ok(step)
            }
        }
    }

    /// The first half of a step: picks the next prefill chunk (at most `prefill_chunk`
    /// tokens), or samples the next token, settles its text and checks the stop conditions.
    /// Unless the generation ended, the caller runs the returned tokens through the model on
    /// `seq` and passes the logits of the last one to [`Generation::complete`].
    pub fn prepare(
        &mut self,
        lm: &LoadedModel,
        seq: &Sequence,
        prefill_chunk: usize,
    ) -> Result<Turn> {
        if self.finish.is_some() {
            return Err(EngineError::Internal(
                "generation stepped after it finished".into(),
            ));
        }
        if self.pending.is_some() {
            return Err(EngineError::Internal(
                "generation stepped before its forward call completed".into(),
            ));
        }
        if !self.prefill_done() {
            let end = (self.prefilled + prefill_chunk.max(1)).min(self.prompt.len());
            self.pending = Some(Pending::Prefill(end));
            return Ok(Turn::Forward {
                tokens: self.prompt[self.prefilled..end].to_vec(),
                step: Step::Prefilled(end - self.prefilled),
            });
        }
        if self.tokens.len() >= self.max_tokens {
            return Ok(Turn::Done(self.end(
                FinishReason::Length,
                None,
                String::new(),
            )));
        }
        let next = self.sampler.sample(&self.logits);
        if !self.ignore_eos && Some(next) == lm.tokenizer.eos_token_id() {
            return Ok(Turn::Done(self.end(FinishReason::Eos, None, String::new())));
        }
        self.tokens.push(next);
        let piece = self.decoder.push(next)?;
        let (text, stopped) = self.filter.push(&piece);
        if stopped {
            self.finish = Some(FinishReason::Stop);
            return Ok(Turn::Done(Step::Token {
                id: Some(next),
                text,
                finish: self.finish,
            }));
        }
        if self.tokens.len() >= self.max_tokens || seq.len() >= lm.model.config().context_length {
            return Ok(Turn::Done(self.end(FinishReason::Length, Some(next), text)));
        }
        self.pending = Some(Pending::Decode);
        Ok(Turn::Forward {
            tokens: vec![next],
            step: Step::Token {
                id: Some(next),
                text,
                finish: None,
            },
        })
    }

    /// The second half of a step: the logits of the last token the forward call ran.
    pub fn complete(&mut self, logits: Vec<f32>) -> Result<()> {
        match self.pending.take() {
            Some(Pending::Prefill(end)) => {
                self.prefilled = end;
                if end == self.prompt.len() {
                    self.logits = logits;
                }
            }
            Some(Pending::Decode) => self.logits = logits,
            None => {
                return Err(EngineError::Internal(
                    "forward call completed with no step pending".into(),
                ))
            }
        }
        Ok(())
    }

    /// Finishes for a reason other than a stop string: what the detokeniser and the stop
    /// filter still hold is settled now.
    fn end(&mut self, finish: FinishReason, id: Option<u32>, mut text: String) -> Step {
        let tail = self.decoder.finish().unwrap_or_default();
        text.push_str(&self.filter.push(&tail).0);
        text.push_str(&self.filter.finish());
        self.finish = Some(finish);
        Step::Token {
            id,
            text,
            finish: Some(finish),
        }
    }
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
    let mut g = Generation::new(lm, seq, prompt.to_vec(), req)?;
    let t0 = Instant::now();
    while !g.prefill_done() {
        g.step(lm, seq, prompt.len())?;
    }
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut text = String::new();
    let finish = loop {
        let Step::Token {
            text: piece,
            finish,
            ..
        } = g.step(lm, seq, prompt.len())?
        else {
            continue;
        };
        text.push_str(&piece);
        if !piece.is_empty() && !on_text(&piece) {
            break FinishReason::Cancelled;
        }
        if let Some(f) = finish {
            break f;
        }
    };
    Ok(GenerateOutput {
        text,
        tokens: g.tokens,
        finish,
        prompt_tokens: prompt.len(),
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}

/// A token's log-probability under the model, with the most likely tokens at that step.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The `top` most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax of the raw logits (before temperature, top-k or top-p, as OpenAI's and
/// vLLM's `logprobs` report the model's own distribution) at token `id`, and the `top` most
/// likely tokens. The normaliser is summed in f64.
pub fn token_logprob(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let lp = |l: f32| (l as f64 - lse) as f32;
    let mut top_ids: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(logits.len());
    if top > 0 && top < top_ids.len() {
        top_ids.select_nth_unstable_by(top - 1, |&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
    }
    top_ids.truncate(top);
    top_ids.sort_unstable_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    TokenLogprob {
        id,
        logprob: logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: top_ids
            .iter()
            .map(|&t| (t, lp(logits[t as usize])))
            .collect(),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Step-wise stop-string handling, used by [`Generation`].
///
/// Text is fed in pieces as it is detokenised; what comes back is settled: it cannot become the
/// start of a stop string any more. The stop string itself and everything after it are dropped,
/// and the settled pieces concatenate to the final text.
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

    /// Temperature sampling over a vocabulary of several draw blocks: every id's frequency over
    /// many draws is its softmax probability (within five standard errors), ids with no weight
    /// (logit −inf) are never drawn, and the block walk reaches ids in the last, partial block.
    #[test]
    fn temperature_draws_follow_the_softmax_across_blocks() {
        let n = 3 * DRAW_BLOCK + 37;
        let mut logits: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 * 0.1).collect();
        for (i, l) in [
            (5, 4.0),
            (DRAW_BLOCK + 3, 4.5),
            (n - 2, 4.2),
            (2 * DRAW_BLOCK, 3.0),
        ] {
            logits[i] = l;
        }
        logits[7] = f32::NEG_INFINITY;
        let t = 0.8;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| (((l - max) / t) as f64).exp())
            .collect();
        let z: f64 = w.iter().sum();
        let mut s = Sampler::new(SamplingParams {
            temperature: t,
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        let draws = 60_000;
        let mut counts = vec![0usize; n];
        for _ in 0..draws {
            counts[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(counts[7], 0, "an id of weight 0 was drawn");
        for (i, &c) in counts.iter().enumerate() {
            let p = w[i] / z;
            let f = c as f64 / draws as f64;
            let se = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (f - p).abs() <= 5.0 * se + 2e-4,
                "id {i}: drew {f}, softmax {p}"
            );
        }
        assert!(counts[n - 2] > 0 && counts[DRAW_BLOCK + 3] > 0);
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
    fn token_logprobs_are_a_log_softmax_with_the_top_tokens_first() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let lp = token_logprob(&logits, 2, 2);
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((lp.top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
        let total: f64 = (0..4)
            .map(|i| (token_logprob(&logits, i, 0).logprob as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "probabilities sum to one");
        assert_eq!(token_logprob(&logits, 0, 9).top.len(), 4);
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
