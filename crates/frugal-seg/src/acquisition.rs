//! Acquisition: which target pixels a simulated annotator labels in an active round.
//!
//! - [`Acquire::Esa`]: rank entities by uncertainty (mean pixel entropy), keep the top `E` per
//!   image, and inside them click the superpixels with the highest impurity × entropy; one click
//!   labels a whole superpixel with its majority true class.
//! - [`Acquire::RipuPa`] / [`Acquire::RipuRa`]: RIPU's pixel- and region-based scores and greedy
//!   selection with exclusion windows.
//! - [`Acquire::RandomSp`] / [`Acquire::EntropySp`]: superpixel baselines without entities.
//! - [`Acquire::Full`] labels everything; [`Acquire::SourceOnly`] nothing.
//!
//! All scores work on one image's softmax probabilities `(C, H, W)`, channel-major. See
//! `docs/methods/esa.md` for the formulas.

use crate::scenes::IGNORE;
use rand::seq::SliceRandom;
use rand::Rng;

/// The `+1e-6` inside RIPU's logarithms.
const EPS: f32 = 1e-6;

/// The acquisition methods compared on the results page.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Acquire {
    Esa,
    RipuPa,
    RipuRa,
    RandomSp,
    EntropySp,
    Full,
    SourceOnly,
}

impl Acquire {
    pub const ALL: [Acquire; 7] = [
        Acquire::Esa,
        Acquire::RipuPa,
        Acquire::RipuRa,
        Acquire::RandomSp,
        Acquire::EntropySp,
        Acquire::Full,
        Acquire::SourceOnly,
    ];

    /// Command-line name (`ripu-pa`).
    pub fn name(self) -> &'static str {
        match self {
            Acquire::Esa => "esa",
            Acquire::RipuPa => "ripu-pa",
            Acquire::RipuRa => "ripu-ra",
            Acquire::RandomSp => "random-sp",
            Acquire::EntropySp => "entropy-sp",
            Acquire::Full => "full",
            Acquire::SourceOnly => "source-only",
        }
    }

    /// Key in the results JSON (`ripu_pa`).
    pub fn key(self) -> String {
        self.name().replace('-', "_")
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s || a.key() == s)
    }

    /// Whether one click labels a superpixel.
    pub fn uses_superpixels(self) -> bool {
        matches!(self, Acquire::Esa | Acquire::RandomSp | Acquire::EntropySp)
    }
}

/// ESA's switchable terms (the paper does not give its exact formula: the terms are the brief's
/// reading of its figure and abstract; `top_entities` and the spill-over are ours).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EsaConfig {
    /// Rank entities by mean pixel entropy (off: every entity is a candidate).
    pub entity_uncertainty: bool,
    /// Entities kept per image and round (ours).
    pub top_entities: usize,
    /// Multiply a superpixel's score by its impurity (entropy of its predicted-class histogram).
    pub impurity: bool,
    /// Multiply a superpixel's score by its mean pixel entropy.
    pub entropy: bool,
    /// When the kept entities have fewer unlabelled superpixels than the round's clicks, go on
    /// to the next entities in rank order (ours; otherwise clicks would be left unspent).
    pub spill_over: bool,
}

impl Default for EsaConfig {
    fn default() -> Self {
        Self {
            entity_uncertainty: true,
            top_entities: 3,
            impurity: true,
            entropy: true,
            spill_over: true,
        }
    }
}

/// RIPU's window sizes. The paper's PA radius is 32 (a 65 × 65 window) on 2048-pixel-wide
/// Cityscapes frames; on 64-pixel scenes such a window covers the whole image and its exclusion
/// would stop PA after one pixel per round, so the default here is scaled down (ours).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RipuConfig {
    /// PA: impurity window and exclusion radius `k` (window `2k + 1`).
    pub pa_radius: usize,
    /// RA: region radius `k` (3 × 3 regions for k = 1); exclusion radius is `2k` (RIPU's).
    pub ra_radius: usize,
}

impl Default for RipuConfig {
    fn default() -> Self {
        Self {
            pa_radius: 2,
            ra_radius: 1,
        }
    }
}

/// Pixel entropy `−Σ_c p_c log(p_c + 1e-6)` of `(C, N)` probabilities.
pub fn pixel_entropy(probs: &[f32], classes: usize) -> Vec<f32> {
    let n = probs.len() / classes;
    let mut h = vec![0f32; n];
    for c in 0..classes {
        for (i, hv) in h.iter_mut().enumerate() {
            let p = probs[c * n + i];
            *hv -= p * (p + EPS).ln();
        }
    }
    h
}

/// Arg-max class of every pixel of `(C, N)` probabilities (first maximum on ties).
pub fn argmax(probs: &[f32], classes: usize) -> Vec<u8> {
    let n = probs.len() / classes;
    (0..n)
        .map(|i| {
            let mut best = 0;
            for c in 1..classes {
                if probs[c * n + i] > probs[best * n + i] {
                    best = c;
                }
            }
            best as u8
        })
        .collect()
}

/// Summed-area table of a `(H, W)` map, `(H+1) × (W+1)`.
fn integral(v: impl Fn(usize) -> f32, h: usize, w: usize) -> Vec<f64> {
    let mut t = vec![0f64; (h + 1) * (w + 1)];
    for y in 0..h {
        let mut row = 0f64;
        for x in 0..w {
            row += v(y * w + x) as f64;
            t[(y + 1) * (w + 1) + x + 1] = t[y * (w + 1) + x + 1] + row;
        }
    }
    t
}

/// Sum of a summed-area table over the `(2k+1)²` window at `(x, y)`, clipped to the image (the
/// zero padding of RIPU's all-ones convolutions), and the number of pixels inside.
fn window_sum(t: &[f64], h: usize, w: usize, x: usize, y: usize, k: usize) -> (f64, usize) {
    let (x0, y0) = (x.saturating_sub(k), y.saturating_sub(k));
    let (x1, y1) = ((x + k + 1).min(w), (y + k + 1).min(h));
    let ww = w + 1;
    let s = t[y1 * ww + x1] - t[y0 * ww + x1] - t[y1 * ww + x0] + t[y0 * ww + x0];
    (s, (x1 - x0) * (y1 - y0))
}

/// Impurity of every pixel's `(2k+1)²` window: the entropy of the histogram of predicted classes
/// inside it (RIPU's `SpatialPurity`, unnormalised).
pub fn window_impurity(pred: &[u8], classes: usize, h: usize, w: usize, k: usize) -> Vec<f32> {
    let tables: Vec<Vec<f64>> = (0..classes)
        .map(|c| integral(|i| (pred[i] as usize == c) as u8 as f32, h, w))
        .collect();
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let counts: Vec<f64> = tables
                .iter()
                .map(|t| window_sum(t, h, w, x, y, k).0)
                .collect();
            let total: f64 = counts.iter().sum();
            out[y * w + x] = counts
                .iter()
                .map(|&c| {
                    let d = (c / total) as f32;
                    -d * (d + EPS).ln()
                })
                .sum();
        }
    }
    out
}

/// Mean of `values` over every pixel's `(2k+1)²` window (in-image pixels only).
pub fn window_mean(values: &[f32], h: usize, w: usize, k: usize) -> Vec<f32> {
    let t = integral(|i| values[i], h, w);
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let (s, n) = window_sum(&t, h, w, x, y, k);
            out[y * w + x] = (s / n as f64) as f32;
        }
    }
    out
}

/// RIPU-PA's score: pixel entropy × impurity of the `(2k+1)²` window.
pub fn ripu_pa_score(probs: &[f32], classes: usize, h: usize, w: usize, k: usize) -> Vec<f32> {
    let ent = pixel_entropy(probs, classes);
    let imp = window_impurity(&argmax(probs, classes), classes, h, w, k);
    ent.iter().zip(&imp).map(|(a, b)| a * b).collect()
}

/// RIPU-RA's score: (window impurity / log C) × (window mean of entropy / log C).
pub fn ripu_ra_score(probs: &[f32], classes: usize, h: usize, w: usize, k: usize) -> Vec<f32> {
    let logc = (classes as f32).ln();
    let ent: Vec<f32> = pixel_entropy(probs, classes)
        .iter()
        .map(|v| v / logc)
        .collect();
    let unc = window_mean(&ent, h, w, k);
    let imp = window_impurity(&argmax(probs, classes), classes, h, w, k);
    imp.iter().zip(&unc).map(|(i, u)| i / logc * u).collect()
}

/// One image's annotation state, carried across rounds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageLabels {
    /// Acquired label per pixel ([`IGNORE`] = not labelled).
    pub labels: Vec<u8>,
    /// RIPU's "active" mask: pixels no later pick may be centred on (exclusion windows).
    pub blocked: Vec<bool>,
    /// Superpixels already clicked.
    pub clicked: Vec<bool>,
    /// Clicks spent so far.
    pub clicks: usize,
}

impl ImageLabels {
    pub fn new(pixels: usize, superpixels: usize) -> Self {
        Self {
            labels: vec![IGNORE; pixels],
            blocked: vec![false; pixels],
            clicked: vec![false; superpixels],
            clicks: 0,
        }
    }

    /// Labelled pixels and, of those, how many carry a label other than the truth.
    pub fn noise(&self, truth: &[u8]) -> (usize, usize) {
        let mut labelled = 0;
        let mut wrong = 0;
        for (&l, &t) in self.labels.iter().zip(truth) {
            if l != IGNORE {
                labelled += 1;
                wrong += (l != t) as usize;
            }
        }
        (labelled, wrong)
    }
}

/// Everything one image offers the acquisition functions.
pub struct ImageView<'a> {
    pub height: usize,
    pub width: usize,
    /// Softmax probabilities `(C, H, W)`.
    pub probs: &'a [f32],
    pub classes: usize,
    /// Superpixel id per pixel and their count.
    pub superpixels: &'a [u32],
    pub n_superpixels: usize,
    /// Entity id per pixel and their count.
    pub entities: &'a [u32],
    pub n_entities: usize,
    /// Ground truth, read only by the simulated annotator.
    pub truth: &'a [u8],
}

/// What one round picked in one image (for the preview pictures).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Picked {
    pub entities: Vec<u32>,
    pub superpixels: Vec<u32>,
    /// Pixel indices of RIPU's picks (PA pixels, RA region centres).
    pub centres: Vec<usize>,
}

/// Per-superpixel mean entropy and impurity (entropy of the predicted-class histogram), and
/// each superpixel's entity (the entity holding most of its pixels).
pub struct SuperpixelStats {
    pub entropy: Vec<f32>,
    pub impurity: Vec<f32>,
    pub entity: Vec<u32>,
}

pub fn superpixel_stats(v: &ImageView) -> SuperpixelStats {
    let k = v.classes;
    let ent = pixel_entropy(v.probs, k);
    let pred = argmax(v.probs, k);
    let ns = v.n_superpixels;
    let mut hist = vec![0u32; ns * k];
    let mut ent_sum = vec![0f64; ns];
    let mut size = vec![0u32; ns];
    let mut overlap: Vec<std::collections::HashMap<u32, u32>> = vec![Default::default(); ns];
    for i in 0..v.height * v.width {
        let s = v.superpixels[i] as usize;
        hist[s * k + pred[i] as usize] += 1;
        ent_sum[s] += ent[i] as f64;
        size[s] += 1;
        *overlap[s].entry(v.entities[i]).or_insert(0) += 1;
    }
    let impurity = (0..ns)
        .map(|s| {
            let n = size[s].max(1) as f32;
            let h: f32 = hist[s * k..(s + 1) * k]
                .iter()
                .map(|&c| {
                    let d = c as f32 / n;
                    -d * (d + EPS).ln()
                })
                .sum();
            // A pure superpixel scores −1e-6 through the ε; clamp so pure ones tie at 0.
            h.max(0.0)
        })
        .collect();
    let entity = overlap
        .iter()
        .map(|m| {
            m.iter()
                .max_by_key(|(e, c)| (**c, std::cmp::Reverse(**e)))
                .map(|(e, _)| *e)
                .unwrap_or(0)
        })
        .collect();
    SuperpixelStats {
        entropy: (0..ns)
            .map(|s| (ent_sum[s] / size[s].max(1) as f64) as f32)
            .collect(),
        impurity,
        entity,
    }
}

/// Mean pixel entropy of every entity.
pub fn entity_uncertainty(v: &ImageView) -> Vec<f32> {
    let ent = pixel_entropy(v.probs, v.classes);
    let mut sum = vec![0f64; v.n_entities];
    let mut n = vec![0u32; v.n_entities];
    for (i, &e) in v.entities.iter().enumerate() {
        sum[e as usize] += ent[i] as f64;
        n[e as usize] += 1;
    }
    sum.iter()
        .zip(&n)
        .map(|(s, &c)| (s / c.max(1) as f64) as f32)
        .collect()
}

/// Indices sorted by descending score (ties: lower index first).
fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// ESA's choice of `clicks` unclicked superpixels, and the entities it drew them from.
pub fn esa_pick(
    v: &ImageView,
    clicked: &[bool],
    clicks: usize,
    cfg: &EsaConfig,
) -> (Vec<u32>, Vec<u32>) {
    let stats = superpixel_stats(v);
    let sp_score: Vec<f32> = (0..v.n_superpixels)
        .map(|s| {
            let mut x = 1.0;
            if cfg.impurity {
                x *= stats.impurity[s];
            }
            if cfg.entropy {
                x *= stats.entropy[s];
            }
            x
        })
        .collect();
    // Candidate superpixels grouped by entity.
    let mut members: Vec<Vec<usize>> = vec![vec![]; v.n_entities];
    for s in 0..v.n_superpixels {
        if !clicked[s] {
            members[stats.entity[s] as usize].push(s);
        }
    }
    let order: Vec<usize> = if cfg.entity_uncertainty {
        ranked(&entity_uncertainty(v))
    } else {
        (0..v.n_entities).collect()
    };
    let order: Vec<usize> = order
        .into_iter()
        .filter(|&e| !members[e].is_empty())
        .collect();
    let keep = if cfg.entity_uncertainty {
        cfg.top_entities.max(1)
    } else {
        order.len()
    };
    let mut picked_sp = vec![];
    let mut picked_ent = vec![];
    let mut start = 0;
    while picked_sp.len() < clicks && start < order.len() {
        let group = &order[start..(start + keep).min(order.len())];
        let mut cand: Vec<usize> = group.iter().flat_map(|&e| members[e].clone()).collect();
        // Highest score first; ties (e.g. pure superpixels at impurity 0) by entropy, then id.
        cand.sort_by(|&a, &b| {
            sp_score[b]
                .total_cmp(&sp_score[a])
                .then(stats.entropy[b].total_cmp(&stats.entropy[a]))
                .then(a.cmp(&b))
        });
        for &e in group {
            picked_ent.push(e as u32);
        }
        for s in cand.into_iter().take(clicks - picked_sp.len()) {
            picked_sp.push(s as u32);
        }
        if !cfg.spill_over {
            break;
        }
        start += keep;
    }
    (picked_sp, picked_ent)
}

/// Unclicked superpixels by descending mean entropy (no entities).
pub fn entropy_sp_pick(v: &ImageView, clicked: &[bool], clicks: usize) -> Vec<u32> {
    let stats = superpixel_stats(v);
    ranked(&stats.entropy)
        .into_iter()
        .filter(|&s| !clicked[s])
        .take(clicks)
        .map(|s| s as u32)
        .collect()
}

/// Uniformly random unclicked superpixels.
pub fn random_sp_pick(
    n_superpixels: usize,
    clicked: &[bool],
    clicks: usize,
    rng: &mut impl Rng,
) -> Vec<u32> {
    let mut free: Vec<u32> = (0..n_superpixels as u32)
        .filter(|&s| !clicked[s as usize])
        .collect();
    free.shuffle(rng);
    free.truncate(clicks);
    free
}

/// RIPU's greedy selection: take the highest-scoring pixel not blocked, label the
/// `(2·label_radius + 1)²` window around it with the truth, block the `(2·block_radius + 1)²`
/// window around it; `picks` times. Stops early when every pixel is blocked (ours: RIPU would
/// then re-pick pixel (0, 0)). Returns the picked centres.
#[allow(clippy::too_many_arguments)]
pub fn ripu_greedy(
    score: &[f32],
    h: usize,
    w: usize,
    truth: &[u8],
    state: &mut ImageLabels,
    picks: usize,
    label_radius: usize,
    block_radius: usize,
) -> Vec<usize> {
    let mut centres = vec![];
    for _ in 0..picks {
        let mut best: Option<usize> = None;
        for (i, &s) in score.iter().enumerate() {
            if !state.blocked[i] && !s.is_nan() && best.is_none_or(|b| s > score[b]) {
                best = Some(i);
            }
        }
        let Some(p) = best else { break };
        let (x, y) = (p % w, p / w);
        let win = |r: usize| {
            let (x0, y0) = (x.saturating_sub(r), y.saturating_sub(r));
            let (x1, y1) = ((x + r + 1).min(w), (y + r + 1).min(h));
            (y0..y1).flat_map(move |yy| (x0..x1).map(move |xx| yy * w + xx))
        };
        for q in win(label_radius) {
            state.labels[q] = truth[q];
        }
        for q in win(block_radius) {
            state.blocked[q] = true;
        }
        state.clicks += 1;
        centres.push(p);
    }
    centres
}

/// The simulated annotator: one click labels every pixel of superpixel `s` with the
/// superpixel's majority true class (ties: lowest class id).
pub fn annotate_superpixel(v: &ImageView, s: u32, state: &mut ImageLabels) {
    let mut hist = [0u32; 256];
    for (i, &sp) in v.superpixels.iter().enumerate() {
        if sp == s {
            hist[v.truth[i] as usize] += 1;
        }
    }
    hist[IGNORE as usize] = 0;
    let mut major = 0usize;
    for (c, &n) in hist.iter().enumerate() {
        if n > hist[major] {
            major = c;
        }
    }
    if hist[major] == 0 {
        return; // nothing labelled inside: the click is spent but gives no label
    }
    for (i, &sp) in v.superpixels.iter().enumerate() {
        if sp == s {
            state.labels[i] = major as u8;
        }
    }
    state.clicked[s as usize] = true;
}

/// How a round's budget is given to one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundBudget {
    /// Clicks this round (superpixels, PA pixels, or RA regions).
    pub clicks: usize,
}

/// RA regions per image and round for a pixel share `ratio` over `rounds` rounds:
/// `⌈H·W·ratio / rounds / (2k+1)²⌉`, RIPU's rounding.
pub fn ra_regions_per_round(pixels: usize, ratio: f64, rounds: usize, radius: usize) -> usize {
    let per_region = ((2 * radius + 1) * (2 * radius + 1)) as f64;
    (pixels as f64 * ratio / rounds as f64 / per_region).ceil() as usize
}

/// Run one round of `method` on one image: pick, annotate, update `state`.
pub fn acquire_round(
    method: Acquire,
    v: &ImageView,
    state: &mut ImageLabels,
    budget: RoundBudget,
    esa: &EsaConfig,
    ripu: &RipuConfig,
    rng: &mut impl Rng,
) -> Picked {
    let mut picked = Picked::default();
    let (h, w) = (v.height, v.width);
    match method {
        Acquire::SourceOnly => {}
        Acquire::Full => {
            state.labels.copy_from_slice(v.truth);
        }
        Acquire::RipuPa => {
            let score = ripu_pa_score(v.probs, v.classes, h, w, ripu.pa_radius);
            picked.centres = ripu_greedy(
                &score,
                h,
                w,
                v.truth,
                state,
                budget.clicks,
                0,
                ripu.pa_radius,
            );
        }
        Acquire::RipuRa => {
            let score = ripu_ra_score(v.probs, v.classes, h, w, ripu.ra_radius);
            picked.centres = ripu_greedy(
                &score,
                h,
                w,
                v.truth,
                state,
                budget.clicks,
                ripu.ra_radius,
                2 * ripu.ra_radius,
            );
        }
        Acquire::RandomSp | Acquire::EntropySp | Acquire::Esa => {
            let sps = match method {
                Acquire::RandomSp => {
                    random_sp_pick(v.n_superpixels, &state.clicked, budget.clicks, rng)
                }
                Acquire::EntropySp => entropy_sp_pick(v, &state.clicked, budget.clicks),
                _ => {
                    let (s, e) = esa_pick(v, &state.clicked, budget.clicks, esa);
                    picked.entities = e;
                    s
                }
            };
            for &s in &sps {
                annotate_superpixel(v, s, state);
                state.clicks += 1;
            }
            picked.superpixels = sps;
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// `(C, N)` probabilities from per-pixel distributions.
    fn probs(px: &[Vec<f32>]) -> Vec<f32> {
        let c = px[0].len();
        let n = px.len();
        let mut v = vec![0f32; c * n];
        for (i, p) in px.iter().enumerate() {
            for k in 0..c {
                v[k * n + i] = p[k];
            }
        }
        v
    }

    #[test]
    fn entropy_of_uniform_and_one_hot() {
        let p = probs(&[vec![0.25; 4], vec![1.0, 0.0, 0.0, 0.0]]);
        let h = pixel_entropy(&p, 4);
        assert!((h[0] - 4f32.ln()).abs() < 1e-4, "{h:?}");
        assert!(h[1].abs() < 1e-5, "{h:?}");
        assert_eq!(argmax(&p, 4), vec![0, 0]);
    }

    #[test]
    fn window_impurity_and_mean_on_a_half_split() {
        // 4×4 predictions: left two columns class 0, right two class 1.
        let pred: Vec<u8> = (0..16).map(|i| (i % 4 >= 2) as u8).collect();
        let imp = window_impurity(&pred, 2, 4, 4, 1);
        assert!(imp[0].abs() < 1e-5); // corner window: 2×2 of class 0
                                      // (1, 0): window x 0..=2, y 0..=1 → 4 of class 0, 2 of class 1.
        let want = -(2.0f32 / 3.0) * (2.0f32 / 3.0).ln() - (1.0 / 3.0) * (1.0f32 / 3.0).ln();
        assert!((imp[1] - want).abs() < 1e-4, "{} vs {want}", imp[1]);
        // Mean of x-coordinates over the clipped window at (0, 0): (0 + 1) / 2.
        let xs: Vec<f32> = (0..16).map(|i| (i % 4) as f32).collect();
        let m = window_mean(&xs, 4, 4, 1);
        assert!((m[0] - 0.5).abs() < 1e-6);
        assert!((m[5] - 1.0).abs() < 1e-6);
    }

    /// A 6×6 image, 2 classes: confident everywhere except pixel (3, 3) (uniform), and the
    /// predictions switch class at column 3.
    fn peaked() -> Vec<f32> {
        let px: Vec<Vec<f32>> = (0..36)
            .map(|i| {
                if i == 3 * 6 + 3 {
                    vec![0.5, 0.5]
                } else if i % 6 >= 3 {
                    vec![0.1, 0.9]
                } else {
                    vec![0.9, 0.1]
                }
            })
            .collect();
        probs(&px)
    }

    #[test]
    fn ripu_pa_picks_the_peak_then_leaves_its_window() {
        let p = peaked();
        let score = ripu_pa_score(&p, 2, 6, 6, 1);
        let best = ranked(&score)[0];
        assert_eq!(best, 3 * 6 + 3);
        let truth = vec![1u8; 36];
        let mut st = ImageLabels::new(36, 0);
        let c = ripu_greedy(&score, 6, 6, &truth, &mut st, 3, 0, 1);
        assert_eq!(c[0], 21);
        // Later picks lie outside the 3×3 window around (3, 3).
        for &p in &c[1..] {
            let (x, y) = (p % 6, p / 6);
            assert!(x.abs_diff(3) > 1 || y.abs_diff(3) > 1, "{p}");
        }
        assert_eq!(st.clicks, 3);
        assert_eq!(st.labels.iter().filter(|&&l| l != IGNORE).count(), 3);
        // With a window as large as the image, one pick blocks everything: selection stops.
        let mut st = ImageLabels::new(36, 0);
        let c = ripu_greedy(&score, 6, 6, &truth, &mut st, 5, 0, 6);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn ripu_ra_labels_a_region_and_blocks_twice_its_radius() {
        let p = peaked();
        let score = ripu_ra_score(&p, 2, 6, 6, 1);
        // RA's normalised score stays within [0, 1] (pure windows: −1e-6 through RIPU's ε).
        assert!(score.iter().all(|&s| (-1e-5..=1.0).contains(&s)));
        let truth: Vec<u8> = (0..36).map(|i| (i % 6 >= 3) as u8).collect();
        let mut st = ImageLabels::new(36, 0);
        let c = ripu_greedy(&score, 6, 6, &truth, &mut st, 1, 1, 2);
        let (x, y) = (c[0] % 6, c[0] / 6);
        // The region straddles the class border next to the uncertain pixel.
        assert!((2..=4).contains(&x) && (2..=4).contains(&y), "({x}, {y})");
        let labelled: Vec<usize> = (0..36).filter(|&i| st.labels[i] != IGNORE).collect();
        assert_eq!(labelled.len(), 9);
        for &i in &labelled {
            assert_eq!(st.labels[i], truth[i]);
        }
        assert_eq!(st.blocked.iter().filter(|&&b| b).count(), 25);
        // RIPU's rounding: 2.2 % of 64×64 over 5 rounds in 3×3 regions is 2.002 → 3 per round.
        assert_eq!(ra_regions_per_round(64 * 64, 0.022, 5, 1), 3);
    }

    /// A 4×4 image with 4 superpixels (2×2 quadrants) and 2 entities (left / right halves).
    /// Left half uncertain (entity 0), right half confident.
    fn quadrant_view<'a>(
        probs: &'a [f32],
        sp: &'a [u32],
        ent: &'a [u32],
        truth: &'a [u8],
    ) -> ImageView<'a> {
        ImageView {
            height: 4,
            width: 4,
            probs,
            classes: 2,
            superpixels: sp,
            n_superpixels: 4,
            entities: ent,
            n_entities: 2,
            truth,
        }
    }

    fn quadrants() -> (Vec<f32>, Vec<u32>, Vec<u32>, Vec<u8>) {
        let sp: Vec<u32> = (0..16)
            .map(|i| ((i / 4 >= 2) as u32) * 2 + (i % 4 >= 2) as u32)
            .collect();
        let ent: Vec<u32> = (0..16).map(|i| (i % 4 >= 2) as u32).collect();
        // Top-left quadrant: mixed predictions (impure) with moderate entropy; bottom-left:
        // pure but very uncertain; right: confident class 1.
        let px: Vec<Vec<f32>> = (0..16)
            .map(|i| match sp[i] {
                0 => {
                    if i % 2 == 0 {
                        vec![0.7, 0.3]
                    } else {
                        vec![0.3, 0.7]
                    }
                }
                2 => vec![0.55, 0.45],
                _ => vec![0.02, 0.98],
            })
            .collect();
        // Truth: superpixel 0 has 3 pixels of class 0 and 1 of class 1.
        let truth: Vec<u8> = (0..16).map(|i| (i == 1 || i % 4 >= 2) as u8).collect();
        (probs(&px), sp, ent, truth)
    }

    #[test]
    fn superpixel_stats_and_entity_uncertainty() {
        let (p, sp, ent, truth) = quadrants();
        let v = quadrant_view(&p, &sp, &ent, &truth);
        let s = superpixel_stats(&v);
        assert!((s.impurity[0] - 2f32.ln()).abs() < 1e-4); // half/half predictions
        assert!(s.impurity[2].abs() < 1e-5 && s.impurity[1].abs() < 1e-5);
        assert!(s.entropy[2] > s.entropy[0] && s.entropy[0] > s.entropy[1]);
        assert_eq!(s.entity, vec![0, 1, 0, 1]);
        let u = entity_uncertainty(&v);
        assert!(u[0] > u[1]);
        assert!((u[0] - 0.5 * (s.entropy[0] + s.entropy[2])).abs() < 1e-5);
    }

    #[test]
    fn esa_picks_impure_superpixels_of_the_uncertain_entity_and_spills_over() {
        let (p, sp, ent, truth) = quadrants();
        let v = quadrant_view(&p, &sp, &ent, &truth);
        let cfg = EsaConfig {
            top_entities: 1,
            ..Default::default()
        };
        let clicked = vec![false; 4];
        // One click: entity 0 (left) is the more uncertain; inside it superpixel 0 is impure
        // (impurity × entropy > 0) while superpixel 2 is pure (score 0).
        let (s, e) = esa_pick(&v, &clicked, 1, &cfg);
        assert_eq!((s, e), (vec![0], vec![0]));
        // Without the impurity term, the most uncertain superpixel wins.
        let no_imp = EsaConfig {
            impurity: false,
            ..cfg.clone()
        };
        assert_eq!(esa_pick(&v, &clicked, 1, &no_imp).0, vec![2]);
        // Three clicks: entity 0 has two superpixels, the third spills into entity 1.
        let (s, e) = esa_pick(&v, &clicked, 3, &cfg);
        assert_eq!(s.len(), 3);
        assert_eq!(&s[..2], &[0, 2]);
        assert_eq!(e, vec![0, 1]);
        let strict = EsaConfig {
            spill_over: false,
            ..cfg
        };
        assert_eq!(esa_pick(&v, &clicked, 3, &strict).0.len(), 2);
        // Clicked superpixels are never offered again.
        assert_eq!(
            esa_pick(&v, &[true, false, true, false], 2, &no_imp).0,
            vec![1, 3]
        );
    }

    #[test]
    fn annotator_labels_the_majority_and_noise_is_counted() {
        let (p, sp, ent, truth) = quadrants();
        let v = quadrant_view(&p, &sp, &ent, &truth);
        let mut st = ImageLabels::new(16, 4);
        annotate_superpixel(&v, 0, &mut st);
        // Superpixel 0 = pixels 0, 1, 4, 5 with truth 0, 1, 0, 0 → all labelled 0, one wrong.
        assert_eq!(st.labels[0], 0);
        assert_eq!(st.labels[1], 0);
        assert_eq!(st.noise(&truth), (4, 1));
        assert!(st.clicked[0]);
    }

    #[test]
    fn baselines_pick_distinct_unclicked_superpixels() {
        let (p, sp, ent, truth) = quadrants();
        let v = quadrant_view(&p, &sp, &ent, &truth);
        assert_eq!(entropy_sp_pick(&v, &[false; 4], 2), vec![2, 0]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut r = random_sp_pick(4, &[true, false, false, false], 5, &mut rng);
        r.sort();
        assert_eq!(r, vec![1, 2, 3]);
        // A whole round through the dispatcher: ESA with 2 clicks labels 8 pixels.
        let mut st = ImageLabels::new(16, 4);
        let picked = acquire_round(
            Acquire::Esa,
            &v,
            &mut st,
            RoundBudget { clicks: 2 },
            &EsaConfig::default(),
            &RipuConfig::default(),
            &mut rng,
        );
        assert_eq!(picked.superpixels.len(), 2);
        assert_eq!(st.clicks, 2);
        assert_eq!(st.noise(&truth).0, 8);
        assert_eq!(Acquire::parse("ripu_pa"), Some(Acquire::RipuPa));
        assert_eq!(Acquire::RipuRa.key(), "ripu_ra");
    }
}
