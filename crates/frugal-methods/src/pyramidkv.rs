//! PyramidKV (Cai et al., 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
//! Information Funneling", arXiv:2406.02069): SnapKV's scores, but the budget is a pyramid over
//! layers: lower layers, whose attention is spread wide, keep more rows; higher layers, whose
//! attention is concentrated, keep fewer; the total equals SnapKV's at the same ratio. The
//! per-layer formula and the defaults (window 64, kernel 5, beta 20) are kvpress's
//! `PyramidKVPress`. See docs/methods/kv-baselines.md.

use crate::eviction::{self, Budget, EvictionConfig};
use crate::policy::{configure, KnobKind, PolicyConfig, PolicyEntry};
use crate::snapkv::SnapScorer;

crate::policy_config! {
    /// PyramidKV's window, pooling and pyramid steepness; the defaults are kvpress's.
    pub struct PyramidKvConfig {
        flatten pub common: EvictionConfig;
        /// queries in the observation window (the call's last ones)
        pub window: usize = 64, KnobKind::Int { min: 1, max: 1 << 16 };
        /// width of the average pool over the sequence
        pub kernel: usize = 5, KnobKind::Int { min: 1, max: 255 };
        /// steepness: the top layer keeps 1/beta of the mean layer's budget
        pub beta: f64 = 20.0, KnobKind::Float { min: 1.0, max: 1000.0 };
    }
}

pub const PYRAMIDKV: PolicyEntry = PolicyEntry::taking_format(
    "pyramidkv",
    "PyramidKV: SnapKV's scores with a budget that shrinks from lower to higher layers",
    PyramidKvConfig::knobs,
    "pyramidkv:ratio=0",
    |part, b| {
        let cfg: PyramidKvConfig = configure(part)?;
        Ok(eviction::component(
            &cfg.common,
            Budget::Pyramid {
                window: cfg.window,
                beta: cfg.beta,
            },
            Box::new(SnapScorer {
                window: cfg.window,
                kernel: cfg.kernel,
                label: "pyramidkv",
            }),
            b.layout,
            b.row_format,
        ))
    },
);
