//! Choosing anchor views and the supporters of each (see `docs/methods/zpressor.md`).
//!
//! Two ways, as in the reference module:
//! - with poses: farthest-point sampling over camera centres, then every view goes to its nearest
//!   anchor ([`farthest_point_anchors`], [`assign_to_nearest_anchor`]);
//! - without poses (flagged, see [`kmeans_anchors`]): k-means over one feature vector per view.
//!
//! All distance arithmetic is in `f32` in the reference's order of operations, because exact ties
//! decide the picks: selection takes the first maximum and assignment the first minimum.

use crate::error::ZpressorError;
use rand::{Rng, SeedableRng};

/// Which anchor view each slot holds and which slot each view belongs to, for one scene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// View index of each anchor, in selection order (slot `j` holds view `anchors[j]`).
    pub anchors: Vec<usize>,
    /// For every input view, the slot (0..anchors.len()) of the anchor it is assigned to.
    pub clusters: Vec<usize>,
}

impl Assignment {
    /// The views whose tokens anchor slot `slot` reads: every view assigned to that slot except
    /// the anchor view itself, in increasing view order. Empty means the anchor passes through.
    pub fn supporters(&self, slot: usize) -> Vec<usize> {
        let anchor = self.anchors[slot];
        self.clusters
            .iter()
            .enumerate()
            .filter(|&(v, &c)| c == slot && v != anchor)
            .map(|(v, _)| v)
            .collect()
    }
}

/// Tolerances for [`check_rigid`]; ours (the reference reads only the translation and checks
/// nothing).
#[derive(Debug, Clone, Copy)]
pub struct RigidTolerance {
    /// Largest allowed |RᵀR − I| entry.
    pub orthonormal: f32,
    /// Largest allowed |det R − 1|.
    pub determinant: f32,
    /// Largest allowed deviation of the bottom row from (0, 0, 0, 1).
    pub bottom_row: f32,
}

impl Default for RigidTolerance {
    fn default() -> Self {
        Self {
            orthonormal: 1e-3,
            determinant: 1e-3,
            bottom_row: 1e-5,
        }
    }
}

/// Checks that a row-major 4×4 camera-to-world matrix is a rigid transform (rotation plus
/// translation), so that its last column really is a camera centre. A scaled, sheared or
/// projective matrix would silently give wrong anchors, so it is an error instead.
pub fn check_rigid(
    m: &[f32; 16],
    tol: RigidTolerance,
    batch: usize,
    view: usize,
) -> Result<(), ZpressorError> {
    let err = |reason: String| ZpressorError::NonRigidExtrinsics {
        batch,
        view,
        reason,
    };
    if m.iter().any(|v| !v.is_finite()) {
        return Err(err("the matrix holds NaN or infinity".into()));
    }
    let bottom = [m[12], m[13], m[14], m[15] - 1.0];
    if bottom.iter().any(|v| v.abs() > tol.bottom_row) {
        return Err(err(format!(
            "bottom row is ({}, {}, {}, {}), not (0, 0, 0, 1)",
            m[12], m[13], m[14], m[15]
        )));
    }
    let r = |i: usize, j: usize| m[i * 4 + j];
    for a in 0..3 {
        for b in 0..3 {
            let dot: f32 = (0..3).map(|i| r(i, a) * r(i, b)).sum();
            let want = if a == b { 1.0 } else { 0.0 };
            if (dot - want).abs() > tol.orthonormal {
                return Err(err(format!(
                    "rotation block is not orthonormal: (RᵀR)[{a}][{b}] = {dot}, expected {want}"
                )));
            }
        }
    }
    let det = r(0, 0) * (r(1, 1) * r(2, 2) - r(1, 2) * r(2, 1))
        - r(0, 1) * (r(1, 0) * r(2, 2) - r(1, 2) * r(2, 0))
        + r(0, 2) * (r(1, 0) * r(2, 1) - r(1, 1) * r(2, 0));
    if (det - 1.0).abs() > tol.determinant {
        return Err(err(format!(
            "rotation block has determinant {det}, expected 1 (a reflection or a scale)"
        )));
    }
    Ok(())
}

fn sq_dist(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    let d0 = a[0] - b[0];
    let d1 = a[1] - b[1];
    let d2 = a[2] - b[2];
    d0 * d0 + d1 * d1 + d2 * d2
}

/// Index of the first maximum (the reference's `max` returns the first on ties).
fn first_argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Farthest-point sampling of `n` anchors over camera centres.
///
/// Start rule (the reference's): the view farthest from the mean of all centres. Then, with `d[v]`
/// the squared distance from view `v` to the chosen set (initialised to 1e10 and lowered with a
/// strict `<`; chosen views held at 0), repeatedly take the first view with the largest `d`.
pub fn farthest_point_anchors(centres: &[[f32; 3]], n: usize) -> Result<Vec<usize>, ZpressorError> {
    let k = centres.len();
    if n == 0 || n > k {
        return Err(ZpressorError::TooFewViews {
            views: k,
            anchors: n,
        });
    }
    let mut sum = [0f32; 3];
    for c in centres {
        for i in 0..3 {
            sum[i] += c[i];
        }
    }
    let mean = [sum[0] / k as f32, sum[1] / k as f32, sum[2] / k as f32];
    let from_mean: Vec<f32> = centres.iter().map(|c| sq_dist(c, &mean)).collect();
    let mut farthest = first_argmax(&from_mean);
    let mut distance = vec![1e10f32; k];
    let mut selected = vec![false; k];
    let mut anchors = Vec::with_capacity(n);
    for _ in 0..n {
        anchors.push(farthest);
        selected[farthest] = true;
        let c = centres[farthest];
        for v in 0..k {
            let d = if selected[v] {
                0.0
            } else {
                sq_dist(&centres[v], &c)
            };
            if d < distance[v] {
                distance[v] = d;
            }
        }
        farthest = first_argmax(&distance);
    }
    Ok(anchors)
}

/// Every view goes to the anchor slot whose camera centre is nearest (squared Euclidean distance,
/// first minimum on ties). An anchor normally lands in its own slot; with duplicated centres it can
/// land in an earlier slot, exactly as in the reference.
pub fn assign_to_nearest_anchor(centres: &[[f32; 3]], anchors: &[usize]) -> Vec<usize> {
    centres
        .iter()
        .map(|c| {
            let mut best = 0;
            let mut best_d = f32::INFINITY;
            for (slot, &a) in anchors.iter().enumerate() {
                let d = sq_dist(c, &centres[a]);
                if d < best_d {
                    best_d = d;
                    best = slot;
                }
            }
            best
        })
        .collect()
}

/// Farthest-point anchors plus nearest-anchor assignment: the posed path.
pub fn posed_assignment(centres: &[[f32; 3]], n: usize) -> Result<Assignment, ZpressorError> {
    let anchors = farthest_point_anchors(centres, n)?;
    let clusters = assign_to_nearest_anchor(centres, &anchors);
    Ok(Assignment { anchors, clusters })
}

/// Settings of the pose-free k-means; the defaults are the reference's (`n_init = 10`,
/// `random_state = 42`, and scikit-learn's `max_iter = 300`).
#[derive(Debug, Clone, Copy)]
pub struct KmeansConfig {
    pub n_init: usize,
    pub seed: u64,
    pub max_iter: usize,
}

impl Default for KmeansConfig {
    fn default() -> Self {
        Self {
            n_init: 10,
            seed: 42,
            max_iter: 300,
        }
    }
}

/// **Flagged variant, not bit-compatible with the reference.** Pose-free anchors: k-means over one
/// feature vector per view (a class token or mean-pooled features), `n_init` k-means++ restarts,
/// the lowest-inertia run kept. Each slot's anchor is the member nearest its cluster centre; a
/// slot whose cluster is empty falls back to view 0 (the reference's rule, which can duplicate an
/// anchor). Our k-means++ draws from our own seeded generator, so the clusters found can differ
/// from scikit-learn's for the same seed; the rules around them are the reference's.
pub fn kmeans_anchors(
    features: &[Vec<f32>],
    n: usize,
    cfg: KmeansConfig,
) -> Result<Assignment, ZpressorError> {
    let k = features.len();
    if n == 0 || n > k {
        return Err(ZpressorError::TooFewViews {
            views: k,
            anchors: n,
        });
    }
    let dim = features[0].len();
    if let Some(bad) = features.iter().position(|f| f.len() != dim) {
        return Err(ZpressorError::ShapeMismatch {
            what: format!("feature vector of view {bad}"),
            expected: format!("{dim} values"),
            got: format!("{} values", features[bad].len()),
        });
    }
    let d2 = |a: &[f32], b: &[f32]| -> f64 {
        a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut best: Option<(f64, Vec<usize>, Vec<Vec<f32>>)> = None;
    for _ in 0..cfg.n_init.max(1) {
        // k-means++ seeding.
        let mut centres: Vec<Vec<f32>> = vec![features[rng.gen_range(0..k)].clone()];
        while centres.len() < n {
            let w: Vec<f64> = features
                .iter()
                .map(|f| {
                    centres
                        .iter()
                        .map(|c| d2(f, c))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            let total: f64 = w.iter().sum();
            let pick = if total <= 0.0 {
                rng.gen_range(0..k)
            } else {
                let mut t = rng.gen::<f64>() * total;
                let mut idx = k - 1;
                for (i, wi) in w.iter().enumerate() {
                    if t < *wi {
                        idx = i;
                        break;
                    }
                    t -= wi;
                }
                idx
            };
            centres.push(features[pick].clone());
        }
        // Lloyd iterations.
        let mut labels = vec![0usize; k];
        for _ in 0..cfg.max_iter {
            let mut changed = false;
            for (v, f) in features.iter().enumerate() {
                let mut bl = 0;
                let mut bd = f64::INFINITY;
                for (j, c) in centres.iter().enumerate() {
                    let d = d2(f, c);
                    if d < bd {
                        bd = d;
                        bl = j;
                    }
                }
                if labels[v] != bl {
                    labels[v] = bl;
                    changed = true;
                }
            }
            for (j, c) in centres.iter_mut().enumerate() {
                let members: Vec<&Vec<f32>> = features
                    .iter()
                    .zip(&labels)
                    .filter(|(_, &l)| l == j)
                    .map(|(f, _)| f)
                    .collect();
                if members.is_empty() {
                    continue;
                }
                for (i, ci) in c.iter_mut().enumerate() {
                    *ci = members.iter().map(|m| m[i]).sum::<f32>() / members.len() as f32;
                }
            }
            if !changed {
                break;
            }
        }
        let inertia: f64 = features
            .iter()
            .zip(&labels)
            .map(|(f, &l)| d2(f, &centres[l]))
            .sum();
        if best.as_ref().is_none_or(|(b, _, _)| inertia < *b) {
            best = Some((inertia, labels, centres));
        }
    }
    let (_, clusters, centres) = best.expect("n_init >= 1");
    let anchors = (0..n)
        .map(|j| {
            let mut pick = None;
            let mut bd = f64::INFINITY;
            for (v, f) in features.iter().enumerate() {
                if clusters[v] == j {
                    let d = d2(f, &centres[j]);
                    if d < bd {
                        bd = d;
                        pick = Some(v);
                    }
                }
            }
            pick.unwrap_or(0)
        })
        .collect();
    Ok(Assignment { anchors, clusters })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fps_starts_farthest_from_mean_and_spreads() {
        let c = [
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [10.0, 0.0, 0.0],
            [5.0, 0.0, 0.0],
        ];
        // mean 4: view 2 is 6 away, the farthest; then view 0 (10 away), then view 3.
        assert_eq!(farthest_point_anchors(&c, 3).unwrap(), vec![2, 0, 3]);
        let a = posed_assignment(&c, 2).unwrap();
        assert_eq!(a.clusters, vec![1, 1, 0, 0]);
        assert_eq!(a.supporters(0), vec![3]);
        assert_eq!(a.supporters(1), vec![1]);
    }

    #[test]
    fn too_many_anchors_is_an_error() {
        let c = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]];
        let e = farthest_point_anchors(&c, 3).unwrap_err();
        assert!(e.to_string().contains("fewer views than anchors"), "{e}");
        assert!(farthest_point_anchors(&c, 0).is_err());
    }

    #[test]
    fn rigid_check_rejects_scale_shear_and_projective_rows() {
        let mut m = [0f32; 16];
        m[0] = 1.0;
        m[5] = 1.0;
        m[10] = 1.0;
        m[15] = 1.0;
        m[3] = 2.0;
        assert!(check_rigid(&m, RigidTolerance::default(), 0, 0).is_ok());
        let mut scaled = m;
        scaled[0] = 2.0;
        assert!(check_rigid(&scaled, RigidTolerance::default(), 0, 3)
            .unwrap_err()
            .to_string()
            .contains("view 3"));
        let mut reflected = m;
        reflected[10] = -1.0;
        let e = check_rigid(&reflected, RigidTolerance::default(), 0, 0).unwrap_err();
        assert!(e.to_string().contains("determinant"), "{e}");
        let mut proj = m;
        proj[14] = 0.5;
        assert!(check_rigid(&proj, RigidTolerance::default(), 0, 0).is_err());
    }

    #[test]
    fn kmeans_finds_separated_groups_and_picks_members_nearest_the_centre() {
        let f: Vec<Vec<f32>> = vec![
            vec![0.0, 0.0],
            vec![0.2, 0.0],
            vec![0.1, 0.05],
            vec![10.0, 10.0],
            vec![10.3, 10.0],
            vec![10.1, 10.1],
        ];
        let a = kmeans_anchors(&f, 2, KmeansConfig::default()).unwrap();
        assert_eq!(a.clusters[0], a.clusters[1]);
        assert_eq!(a.clusters[0], a.clusters[2]);
        assert_eq!(a.clusters[3], a.clusters[5]);
        assert_ne!(a.clusters[0], a.clusters[3]);
        let mut anchors = a.anchors.clone();
        anchors.sort();
        assert_eq!(anchors, vec![2, 5]);
    }
}
