//! Layer 4 of frugal (see docs/design.md): tasks, benchmarks and reports that measure the engine
//! and its policies against full attention on the same inputs.

pub mod attention_bench;
pub mod corpus;
pub mod harness;
pub mod knockout;
pub mod kv_similarity;
pub mod perplexity;
pub(crate) mod plot;
pub mod report;
pub mod speed;
pub mod tasks;

use anyhow::Result;
use frugal_engine::model::LoadedModel;
use tasks::TaskText;

/// Haystack tokens are taken from the train split, newest speeches first, up to this many.
pub const HAYSTACK_TOKENS: usize = 300_000;

/// Tokenises the corpus split the tasks draw from (train → haystack, held-out → perplexity).
pub fn load_task_text(lm: &LoadedModel, speeches: &[corpus::Speech]) -> Result<TaskText> {
    let (train, held_out) = corpus::split(speeches);
    let mut haystack = Vec::new();
    for s in train.iter().rev() {
        if haystack.len() >= HAYSTACK_TOKENS {
            break;
        }
        haystack.extend(lm.tokenizer.encode(&format!("{} ", s.text))?);
    }
    let mut held = Vec::new();
    for s in held_out {
        held.extend(lm.tokenizer.encode(&format!("{} ", s.text))?);
    }
    Ok(TaskText {
        haystack,
        held_out: held,
    })
}
