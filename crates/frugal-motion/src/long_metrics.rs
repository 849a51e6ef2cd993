//! Metrics for long motion beyond KMM's: transition quality around segment boundaries (jerk and
//! a foot-skating proxy in a ±10-frame window), per-position grouping for drift, and the slope of
//! a metric against position. See docs/methods/infinimotion.md.
//!
//! - **Jerk**: third difference of global joint positions (cm per frame³), its norm averaged
//!   over joints and over the frames of the window. Smooth transitions have low jerk; a pop or a
//!   freeze-then-snap at a boundary shows up as a spike.
//! - **Foot skating** (proxy): an ankle lower than `contact_height` above the floor in two
//!   consecutive frames is taken to be on the ground; its horizontal displacement between those
//!   frames is skating. Reported as mean displacement per contact frame (cm per frame).
//! - **Drift**: FID per position group against one pooled real reference; the drift slope is
//!   the least-squares slope of FID against the group's position (in training lengths).

use crate::skeleton::{features_to_poses, forward_kinematics, joint, N_JOINTS};

/// Window and contact settings (ours: the brief's ±10 frames; 5 cm ankle height, which the
/// standing skeleton's ankles, 2 cm above the floor, are under).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct TransitionConfig {
    pub half_window: usize,
    pub contact_height: f32,
}

impl Default for TransitionConfig {
    fn default() -> Self {
        Self {
            half_window: 10,
            contact_height: 5.0,
        }
    }
}

/// Global joint positions of every frame of a feature sequence.
pub fn joint_positions(features: &[Vec<f32>]) -> Vec<[[f32; 3]; N_JOINTS]> {
    features_to_poses(features)
        .iter()
        .map(forward_kinematics)
        .collect()
}

/// Mean jerk (cm/frame³) over frames `t ∈ [a, b)` with `t+3` inside the sequence.
pub fn mean_jerk(pos: &[[[f32; 3]; N_JOINTS]], a: usize, b: usize) -> Option<f64> {
    let end = b.min(pos.len().saturating_sub(3));
    if a >= end {
        return None;
    }
    let mut sum = 0.0;
    for w in pos[a..end + 3].windows(4) {
        for (((p0, p1), p2), p3) in w[0].iter().zip(&w[1]).zip(&w[2]).zip(&w[3]) {
            let n2: f64 = (0..3)
                .map(|k| {
                    let d = p3[k] - 3.0 * p2[k] + 3.0 * p1[k] - p0[k];
                    (d as f64).powi(2)
                })
                .sum();
            sum += n2.sqrt();
        }
    }
    Some(sum / ((end - a) * N_JOINTS) as f64)
}

/// Foot-skating proxy over frames `[a, b)`: mean horizontal ankle displacement per frame in
/// which an ankle is in ground contact (0 when no contact).
pub fn foot_skate(pos: &[[[f32; 3]; N_JOINTS]], a: usize, b: usize, contact_height: f32) -> f64 {
    let ankles = [joint("LeftAnkle"), joint("RightAnkle")];
    let b = b.min(pos.len());
    let (mut sum, mut n) = (0.0f64, 0usize);
    for t in a.max(1)..b {
        for &j in &ankles {
            let (p, q) = (pos[t][j], pos[t - 1][j]);
            if p[1] < contact_height && q[1] < contact_height {
                sum += (((p[0] - q[0]).powi(2) + (p[2] - q[2]).powi(2)) as f64).sqrt();
                n += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Jerk and skating in the ±`half_window` frames around each boundary (frame index where a new
/// segment starts). Returns one `(jerk, skate)` per boundary.
pub fn boundary_transitions(
    features: &[Vec<f32>],
    boundaries: &[usize],
    cfg: &TransitionConfig,
) -> Vec<(f64, f64)> {
    let pos = joint_positions(features);
    boundaries
        .iter()
        .filter_map(|&e| {
            let a = e.saturating_sub(cfg.half_window);
            let b = e + cfg.half_window;
            let j = mean_jerk(&pos, a, b)?;
            Some((j, foot_skate(&pos, a, b, cfg.contact_height)))
        })
        .collect()
}

/// Least-squares slope of `y` against `x`.
pub fn slope(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Replaces the frames within `half` of each boundary by a linear interpolation between the
/// frames just outside (the blending of independently generated segments).
pub fn blend_boundaries(frames: &mut [Vec<f32>], boundaries: &[usize], half: usize) {
    for &e in boundaries {
        if e < half + 1 || e + half >= frames.len() {
            continue;
        }
        let (a, b) = (e - half - 1, e + half);
        let (fa, fb) = (frames[a].clone(), frames[b].clone());
        for (i, f) in frames[a + 1..b].iter_mut().enumerate() {
            let w = (i + 1) as f32 / (b - a) as f32;
            for (v, (x, y)) in f.iter_mut().zip(fa.iter().zip(&fb)) {
                *v = (1.0 - w) * x + w * y;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skeleton::{poses_to_features, Pose};

    fn walk(n: usize, step: f32, snap_at: Option<usize>) -> Vec<Vec<f32>> {
        let poses: Vec<Pose> = (0..n)
            .map(|t| {
                let mut p = Pose::default();
                p.root[2] = step * t as f32;
                if snap_at.is_some_and(|s| t >= s) {
                    p.angles[joint("LeftShoulder")][0] = 1.5;
                }
                p
            })
            .collect();
        poses_to_features(&poses)
            .iter()
            .map(|f| f.to_vec())
            .collect()
    }

    #[test]
    fn a_snap_at_the_boundary_raises_jerk_and_blending_lowers_it_again() {
        let cfg = TransitionConfig::default();
        let smooth = boundary_transitions(&walk(60, 1.0, None), &[30], &cfg);
        let snap = walk(60, 1.0, Some(30));
        let jerky = boundary_transitions(&snap, &[30], &cfg);
        assert!(
            smooth[0].0 < 1e-3,
            "constant velocity has no jerk: {}",
            smooth[0].0
        );
        assert!(jerky[0].0 > 1.0, "snap: {}", jerky[0].0);
        let mut blended = snap.clone();
        blend_boundaries(&mut blended, &[30], 5);
        let b = boundary_transitions(&blended, &[30], &cfg);
        assert!(b[0].0 < 0.5 * jerky[0].0, "{} vs {}", b[0].0, jerky[0].0);
    }

    #[test]
    fn sliding_feet_on_the_ground_count_as_skating() {
        // the standing skeleton's ankles touch the floor; translating the root slides them
        let pos = joint_positions(&walk(20, 2.0, None));
        let s = foot_skate(&pos, 0, 20, 5.0);
        assert!((s - 2.0).abs() < 1e-3, "{s}");
        let still = joint_positions(&walk(20, 0.0, None));
        assert!(foot_skate(&still, 0, 20, 5.0) < 1e-6);
        assert!((slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]) - 2.0).abs() < 1e-12);
    }
}
