//! One forward pass over several sequences at once (continuous batching).
//!
//! Every architecture runs its forward pass over a batch: the calls' tokens are stacked into
//! one hidden-state matrix, so the projections and the MLP are one matrix product over all
//! rows, while attention runs per sequence (and, inside the step, per KV head) through that
//! sequence's own cache policy and attention policy. A batch can therefore mix policies (a
//! full cache beside a quantised one beside a sparse planner), and a batch of one is the
//! single-sequence forward pass: there is one forward path, not two.
//!
//! [`BatchRows`] keeps the books of which rows of the matrix belong to which sequence as
//! tokens exit early (see [`crate::attention::AttentionPolicy::computed_rows`]), so the
//! early-exit contract holds per sequence inside a batch exactly as it does alone.

use super::llama::{LlamaConfig, LogitRows};
use crate::attention::{attention_step, StepContext};
use crate::error::{EngineError, Result};
use crate::sequence::Sequence;
use candle_core::{Device, Tensor};
use frugal_numerics::attention::AttentionShape;
use rayon::prelude::*;

/// One sequence's part of a batched forward call: `tokens` run after the `seq.len()` tokens
/// `seq` already holds, and `rows` says which of them produce output rows.
pub struct BatchItem<'a> {
    pub tokens: &'a [u32],
    pub seq: &'a mut Sequence,
    pub rows: LogitRows,
}

impl<'a> BatchItem<'a> {
    pub fn new(tokens: &'a [u32], seq: &'a mut Sequence, rows: LogitRows) -> Self {
        BatchItem { tokens, seq, rows }
    }

    /// Number of output rows this item asks for.
    pub fn output_rows(&self) -> usize {
        let t = self.tokens.len();
        match self.rows {
            LogitRows::Last => 1,
            LogitRows::All => t,
            LogitRows::From(i) => t - i.min(t - 1),
        }
    }
}

/// Checks every item before anything is run, so a bad item fails the call without any
/// sequence having stored a single key.
pub(crate) fn check_items(items: &[BatchItem<'_>], cfg: &LlamaConfig) -> Result<()> {
    if items.is_empty() {
        return Err(EngineError::Internal("empty batch: nothing to run".into()));
    }
    for item in items {
        let t = item.tokens.len();
        let start = item.seq.len();
        if t == 0 {
            return Err(EngineError::Tokenizer("empty input: nothing to run".into()));
        }
        if start + t > cfg.context_length {
            return Err(EngineError::ContextOverflow {
                tokens: start + t,
                limit: cfg.context_length,
            });
        }
        if let Some(&bad) = item
            .tokens
            .iter()
            .find(|&&id| id as usize >= cfg.vocab_size)
        {
            return Err(EngineError::Tokenizer(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                cfg.vocab_size
            )));
        }
    }
    Ok(())
}

/// The token ids of every item, stacked in item order (the rows of the embedding lookup).
pub(crate) fn stacked_ids(items: &[BatchItem<'_>]) -> Vec<u32> {
    items
        .iter()
        .flat_map(|i| i.tokens.iter().copied())
        .collect()
}

/// One item's rows of the batch's hidden-state matrix.
struct ItemRows {
    /// Tokens in the item's call.
    t: usize,
    /// Positions of the tokens still computed.
    positions: Vec<u32>,
    /// Each still-computed token's index in the item's call.
    index: Vec<usize>,
    /// Tokens that exited early: (index in the call, hidden state as it exited).
    exited: Vec<(usize, Tensor)>,
}

/// Which rows of the batch's hidden-state matrix are still computed, item by item (rows of
/// item 0 first, then item 1's, …).
pub(crate) struct BatchRows {
    items: Vec<ItemRows>,
}

impl BatchRows {
    pub(crate) fn new(items: &[BatchItem<'_>]) -> Self {
        BatchRows {
            items: items
                .iter()
                .map(|i| {
                    let (t, start) = (i.tokens.len(), i.seq.len() as u32);
                    ItemRows {
                        t,
                        positions: (start..start + t as u32).collect(),
                        index: (0..t).collect(),
                        exited: Vec::new(),
                    }
                })
                .collect(),
        }
    }

    /// Positions of every still-computed row, stacked (what RoPE reads).
    pub(crate) fn positions(&self) -> Vec<u32> {
        self.items
            .iter()
            .flat_map(|r| r.positions.iter().copied())
            .collect()
    }

    /// Items with rows still computed: the sequences whose steps run side by side.
    fn running(&self) -> usize {
        self.items
            .iter()
            .filter(|r| !r.positions.is_empty())
            .count()
    }

    /// Rows still computed, over all items.
    pub(crate) fn len(&self) -> usize {
        self.items.iter().map(|r| r.positions.len()).sum()
    }

    /// Asks each item's attention policy which of its rows `layer` computes, and drops the
    /// others from `x` (keeping their hidden state as their output). `None` when no row of any
    /// item is left to compute.
    pub(crate) fn select(
        &mut self,
        x: Tensor,
        items: &[BatchItem<'_>],
        layer: usize,
        n_layers: usize,
        window: Option<usize>,
    ) -> Result<Option<Tensor>> {
        let mut keep_rows: Vec<u32> = Vec::with_capacity(self.len());
        let mut dropped = false;
        let n_items = self.running();
        let mut offset = 0;
        for (r, item) in self.items.iter_mut().zip(items) {
            let n = r.positions.len();
            if n == 0 {
                continue;
            }
            let ctx = StepContext {
                layer,
                n_layers,
                structure: item.seq.structure.as_deref(),
                window,
                sequences_in_step: n_items,
            };
            match item
                .seq
                .attention
                .computed_rows(&ctx, &r.positions)
                .filter(|k| k.iter().any(|&c| !c))
            {
                None => keep_rows.extend((offset..offset + n).map(|i| i as u32)),
                Some(keep) => {
                    assert_eq!(keep.len(), n, "computed_rows must answer for every row");
                    dropped = true;
                    let (mut positions, mut index) = (Vec::new(), Vec::new());
                    for (i, &k) in keep.iter().enumerate() {
                        if k {
                            keep_rows.push((offset + i) as u32);
                            positions.push(r.positions[i]);
                            index.push(r.index[i]);
                        } else {
                            r.exited.push((r.index[i], x.get(offset + i)?));
                        }
                    }
                    r.positions = positions;
                    r.index = index;
                }
            }
            offset += n;
        }
        if !dropped {
            return Ok(Some(x));
        }
        if keep_rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(x.index_select(
            &Tensor::new(keep_rows.as_slice(), &Device::Cpu)?,
            0,
        )?))
    }

    /// Stores each item's new K/V (`k`, `v`: stacked `[rows, n_kv_heads, head_dim]`, RoPE
    /// applied) through its cache policy and runs its attention step; returns the attention
    /// outputs stacked `[rows, n_heads * head_dim]`. Items run in parallel: each owns its
    /// sequence. On a sliding-window layer the cache policy then hears which keys no later
    /// query can see.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend(
        &self,
        items: &mut [BatchItem<'_>],
        layer: usize,
        n_layers: usize,
        window: Option<usize>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: AttentionShape,
    ) -> Vec<f32> {
        let q_row = shape.n_heads * shape.head_dim;
        let kv_row = shape.n_kv_heads * shape.head_dim;
        let mut work = Vec::with_capacity(items.len());
        let n_items = self.running();
        let mut offset = 0;
        for (r, item) in self.items.iter().zip(items.iter_mut()) {
            let n = r.positions.len();
            work.push((r, item, offset, n));
            offset += n;
        }
        let run = |(r, item, off, n): (&ItemRows, &mut BatchItem<'_>, usize, usize)| -> Vec<f32> {
            if n == 0 {
                return Vec::new();
            }
            let seq = &mut *item.seq;
            let k = &k[off * kv_row..(off + n) * kv_row];
            let v = &v[off * kv_row..(off + n) * kv_row];
            let q = &q[off * q_row..(off + n) * q_row];
            seq.cache.store(layer, &r.positions, k, v);
            let ctx = StepContext {
                layer,
                n_layers,
                structure: seq.structure.as_deref(),
                window,
                sequences_in_step: n_items,
            };
            let out = attention_step(
                &ctx,
                q,
                &r.positions,
                shape,
                &mut *seq.cache,
                &mut *seq.attention,
            );
            if let (Some(w), Some(&last)) = (window, r.positions.last()) {
                // No later query (position > last) sees a key at or before `last + 1 - w`.
                seq.cache
                    .forget_before(layer, (last + 2).saturating_sub(w as u32));
            }
            out
        };
        // One sequence (every single-sequence call) runs on the calling thread: a parallel
        // iterator over one item would only move the step onto a pool thread.
        if work.len() == 1 {
            return run(work.pop().expect("one item"));
        }
        let outs: Vec<Vec<f32>> = work.into_par_iter().map(run).collect();
        outs.concat()
    }

    /// Ends the call: every item's sequence advances by its tokens, and each item gets its
    /// output rows (exited rows put back in place), selected by its [`LogitRows`] and stacked
    /// in item order, as one `[sum of output rows, d]` matrix.
    pub(crate) fn finish(
        self,
        x: Option<Tensor>,
        items: &mut [BatchItem<'_>],
        d: usize,
    ) -> Result<Tensor> {
        let mut parts: Vec<Tensor> = Vec::with_capacity(items.len());
        let mut offset = 0;
        for (r, item) in self.items.into_iter().zip(items.iter_mut()) {
            item.seq.advance(r.t);
            let n = r.positions.len();
            let rows = match (&x, r.exited.is_empty()) {
                (Some(x), true) => x.narrow(0, offset, n)?,
                _ => {
                    let mut full = vec![0f32; r.t * d];
                    if n > 0 {
                        let computed = x
                            .as_ref()
                            .expect("rows remain only while x does")
                            .narrow(0, offset, n)?
                            .to_vec2::<f32>()?;
                        for (row, &i) in computed.iter().zip(&r.index) {
                            full[i * d..(i + 1) * d].copy_from_slice(row);
                        }
                    }
                    for (i, state) in &r.exited {
                        full[i * d..(i + 1) * d].copy_from_slice(&state.to_vec1::<f32>()?);
                    }
                    Tensor::from_vec(full, (r.t, d), &Device::Cpu)?
                }
            };
            offset += n;
            let t = r.t;
            parts.push(match item.rows {
                LogitRows::Last => rows.narrow(0, t - 1, 1)?,
                LogitRows::All => rows,
                LogitRows::From(i) => rows.narrow(0, i.min(t - 1), t - i.min(t - 1))?,
            });
        }
        Ok(match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => Tensor::cat(&parts, 0)?,
        })
    }
}

/// Splits stacked rows `[sum of output rows, …]` back into one tensor per item.
pub fn split_rows(stacked: &Tensor, items: &[BatchItem<'_>]) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(items.len());
    let mut offset = 0;
    for item in items {
        let n = item.output_rows();
        out.push(stacked.narrow(0, offset, n)?);
        offset += n;
    }
    Ok(out)
}
