//! CIT (class-independent transformation) for class-incremental semantic segmentation, on
//! scenes made of real photographs. See `docs/methods/cit.md`.
//!
//! - [`scenes`]: the scene generator (20 shape × material classes, ADE-style labels);
//! - [`encoder`], [`cit_head`], [`softmax_head`]: the small encoder and the two heads;
//! - [`losses`]: the supervised and distillation losses with the official code's weights;
//! - [`protocol`], [`incremental`]: the 10-10 / 10-2 / 10-1 protocols and the six runs;
//! - [`report`]: the results table, JSON, forgetting plot and prediction strips;
//! - [`cli`]: `seg dataset`, `seg train`, `seg eval`, `seg adapt`, `seg adapt-report`.
//!
//! ESA (entity-superpixel active learning for domain-adaptive segmentation, see
//! `docs/methods/esa.md`) builds on the same encoder and softmax head:
//! - [`domains`]: source and shifted target scenes from one layout generator;
//! - [`superpixels`] (SLIC) and [`entities`] (Felzenszwalb, oracle instance masks);
//! - [`acquisition`]: ESA, RIPU-PA, RIPU-RA and the superpixel baselines;
//! - [`adapt`]: the active rounds and the simulated annotator; [`adapt_report`]: outputs.

pub mod acquisition;
pub mod adapt;
pub mod adapt_report;
pub mod cit_head;
pub mod cli;
pub mod domains;
pub mod encoder;
pub mod entities;
pub mod incremental;
pub mod losses;
pub mod protocol;
pub mod report;
pub mod scenes;
pub mod softmax_head;
pub mod superpixels;
