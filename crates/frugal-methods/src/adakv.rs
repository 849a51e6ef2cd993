//! AdaKV (Feng et al., 2024, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation
//! for Efficient LLM Inference", arXiv:2407.11550): instead of every head keeping the same
//! number of rows, the heads of a layer share one budget and the best-scored rows across all of
//! them are kept, so heads with concentrated attention give rows to heads with spread attention;
//! a safeguard first gives each head its best `alpha` share of a uniform head budget. Runs over
//! a scorer (SnapKV by default, the paper's main setting; Expected Attention or Knorm), with
//! kvpress's `AdaKVPress` default `alpha_safeguard` 0.2. Holes differ per head: this is what the
//! per-(layer, KV head) store is for. See docs/methods/kv-baselines.md.

use crate::eviction::{self, Budget, EvictionConfig, Scorer};
use crate::expected_attention::ExpectedScorer;
use crate::knorm::KeyNorm;
use crate::policy::{configure, KnobKind, PolicyConfig, PolicyEntry};
use crate::snapkv::SnapScorer;

crate::knob_choice! {
    /// The scorer AdaKV allocates over.
    pub enum AdaScorer {
        SnapKv = "snapkv",
        ExpectedAttention = "expected-attention",
        Knorm = "knorm",
    }
}

crate::policy_config! {
    /// AdaKV's head-wise allocation; the defaults are kvpress's, the scorer the paper's.
    pub struct AdaKvConfig {
        flatten pub common: EvictionConfig;
        /// the scoring rule (with its own defaults)
        pub scorer: AdaScorer = AdaScorer::SnapKv, AdaScorer::KIND;
        /// safeguard: share of a uniform head budget every head keeps first
        pub alpha: f64 = 0.2, KnobKind::Float { min: 0.0, max: 1.0 };
    }
}

pub const ADAKV: PolicyEntry = PolicyEntry::taking_format(
    "adakv",
    "AdaKV: a layer's heads share one budget, allocated by score across heads (over SnapKV)",
    AdaKvConfig::knobs,
    "adakv:ratio=0",
    |part, b| {
        let cfg: AdaKvConfig = configure(part)?;
        let scorer: Box<dyn Scorer> = match cfg.scorer {
            AdaScorer::SnapKv => Box::new(SnapScorer {
                window: 64,
                kernel: 5,
                label: "adakv",
            }),
            AdaScorer::ExpectedAttention => Box::new(ExpectedScorer {
                future: 512,
                sink: 4,
                covariance: true,
                vnorm: true,
            }),
            AdaScorer::Knorm => Box::new(KeyNorm),
        };
        Ok(eviction::component(
            &cfg.common,
            Budget::HeadWise { alpha: cfg.alpha },
            scorer,
            b.layout,
            b.row_format,
        ))
    },
);
