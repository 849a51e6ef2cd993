//! A 17-joint humanoid skeleton, forward kinematics, and the per-frame feature vector the
//! tokenizer and evaluator read.
//!
//! Axes: Y up, the body faces +Z in its own frame, +X is the body's left. Rotations are Euler
//! angles applied in the order Z, X, Y (`R = Rz · Rx · Ry`), the channel order BVH files from
//! motion capture commonly use, so a pose writes to BVH unchanged.
//!
//! Feature vector per frame (`FEATURE_DIM` = 52), chosen so a motion can be rebuilt exactly from
//! it: root height, root velocity in the body's heading frame (sideways, forward), yaw velocity,
//! then the three Euler angles (radians) of each of the 16 non-root joints.

use nalgebra::{Matrix3, Vector3};

/// A joint: name, parent index (`None` for the root) and offset from the parent in cm.
#[derive(Debug, Clone, Copy)]
pub struct Joint {
    pub name: &'static str,
    pub parent: Option<usize>,
    pub offset: [f32; 3],
}

pub const JOINTS: [Joint; 17] = [
    Joint {
        name: "Hips",
        parent: None,
        offset: [0.0, 0.0, 0.0],
    },
    Joint {
        name: "Spine",
        parent: Some(0),
        offset: [0.0, 10.0, 0.0],
    },
    Joint {
        name: "Chest",
        parent: Some(1),
        offset: [0.0, 20.0, 0.0],
    },
    Joint {
        name: "Neck",
        parent: Some(2),
        offset: [0.0, 20.0, 0.0],
    },
    Joint {
        name: "Head",
        parent: Some(3),
        offset: [0.0, 10.0, 0.0],
    },
    Joint {
        name: "LeftShoulder",
        parent: Some(2),
        offset: [18.0, 15.0, 0.0],
    },
    Joint {
        name: "LeftElbow",
        parent: Some(5),
        offset: [0.0, -28.0, 0.0],
    },
    Joint {
        name: "LeftWrist",
        parent: Some(6),
        offset: [0.0, -25.0, 0.0],
    },
    Joint {
        name: "RightShoulder",
        parent: Some(2),
        offset: [-18.0, 15.0, 0.0],
    },
    Joint {
        name: "RightElbow",
        parent: Some(8),
        offset: [0.0, -28.0, 0.0],
    },
    Joint {
        name: "RightWrist",
        parent: Some(9),
        offset: [0.0, -25.0, 0.0],
    },
    Joint {
        name: "LeftHip",
        parent: Some(0),
        offset: [10.0, 0.0, 0.0],
    },
    Joint {
        name: "LeftKnee",
        parent: Some(11),
        offset: [0.0, -45.0, 0.0],
    },
    Joint {
        name: "LeftAnkle",
        parent: Some(12),
        offset: [0.0, -43.0, 0.0],
    },
    Joint {
        name: "RightHip",
        parent: Some(0),
        offset: [-10.0, 0.0, 0.0],
    },
    Joint {
        name: "RightKnee",
        parent: Some(14),
        offset: [0.0, -45.0, 0.0],
    },
    Joint {
        name: "RightAnkle",
        parent: Some(15),
        offset: [0.0, -43.0, 0.0],
    },
];

pub const N_JOINTS: usize = JOINTS.len();
/// Standing height of the root above the floor (legs are 88 cm).
pub const STAND_HEIGHT: f32 = 90.0;
pub const FEATURE_DIM: usize = 4 + 3 * (N_JOINTS - 1);

/// Index of a joint by name.
pub fn joint(name: &str) -> usize {
    JOINTS
        .iter()
        .position(|j| j.name == name)
        .expect("known joint")
}

/// One frame in absolute terms: root position and yaw, and per-joint Euler angles (radians,
/// order Z, X, Y); `angles[0]` (the root) is unused, the root turns only about Y.
#[derive(Debug, Clone, PartialEq)]
pub struct Pose {
    pub root: [f32; 3],
    pub yaw: f32,
    pub angles: [[f32; 3]; N_JOINTS],
}

impl Default for Pose {
    fn default() -> Self {
        Self {
            root: [0.0, STAND_HEIGHT, 0.0],
            yaw: 0.0,
            angles: [[0.0; 3]; N_JOINTS],
        }
    }
}

/// `Rz(z) · Rx(x) · Ry(y)`.
pub fn euler_zxy(a: [f32; 3]) -> Matrix3<f32> {
    let rz = nalgebra::Rotation3::from_axis_angle(&Vector3::z_axis(), a[0]);
    let rx = nalgebra::Rotation3::from_axis_angle(&Vector3::x_axis(), a[1]);
    let ry = nalgebra::Rotation3::from_axis_angle(&Vector3::y_axis(), a[2]);
    (rz * rx * ry).into_inner()
}

/// Global joint positions (cm) of a pose.
pub fn forward_kinematics(p: &Pose) -> [[f32; 3]; N_JOINTS] {
    let mut rot = [Matrix3::<f32>::identity(); N_JOINTS];
    let mut pos = [Vector3::<f32>::zeros(); N_JOINTS];
    for (i, j) in JOINTS.iter().enumerate() {
        match j.parent {
            None => {
                rot[i] = euler_zxy([0.0, 0.0, p.yaw]);
                pos[i] = Vector3::from(p.root);
            }
            Some(par) => {
                pos[i] = pos[par] + rot[par] * Vector3::from(j.offset);
                rot[i] = rot[par] * euler_zxy(p.angles[i]);
            }
        }
    }
    pos.map(|v| [v.x, v.y, v.z])
}

/// Poses → features (see the module doc). The first frame's velocity is taken as zero.
pub fn poses_to_features(poses: &[Pose]) -> Vec<[f32; FEATURE_DIM]> {
    let mut out = Vec::with_capacity(poses.len());
    for (t, p) in poses.iter().enumerate() {
        let mut f = [0f32; FEATURE_DIM];
        f[0] = p.root[1];
        if t > 0 {
            let q = &poses[t - 1];
            let (dx, dz) = (p.root[0] - q.root[0], p.root[2] - q.root[2]);
            // into the previous frame's heading: forward = (sin yaw, cos yaw), left = (cos, −sin)
            let (s, c) = q.yaw.sin_cos();
            f[1] = dx * c - dz * s;
            f[2] = dx * s + dz * c;
            f[3] = wrap_angle(p.yaw - q.yaw);
        }
        for j in 1..N_JOINTS {
            for k in 0..3 {
                f[4 + 3 * (j - 1) + k] = p.angles[j][k];
            }
        }
        out.push(f);
    }
    out
}

/// Features → poses, integrating the root from the origin facing +Z.
pub fn features_to_poses(feats: &[Vec<f32>]) -> Vec<Pose> {
    let mut out: Vec<Pose> = Vec::with_capacity(feats.len());
    let (mut x, mut z, mut yaw) = (0f32, 0f32, 0f32);
    for (t, f) in feats.iter().enumerate() {
        if t > 0 {
            let (s, c) = yaw.sin_cos();
            x += f[1] * c + f[2] * s;
            z += -f[1] * s + f[2] * c;
            yaw += f[3];
        }
        let mut p = Pose {
            root: [x, f[0], z],
            yaw,
            ..Default::default()
        };
        for j in 1..N_JOINTS {
            for k in 0..3 {
                p.angles[j][k] = f[4 + 3 * (j - 1) + k];
            }
        }
        out.push(p);
    }
    out
}

pub fn wrap_angle(a: f32) -> f32 {
    let tau = std::f32::consts::TAU;
    (a + std::f32::consts::PI).rem_euclid(tau) - std::f32::consts::PI
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_left_arm_sideways_lifts_the_left_wrist_on_the_left() {
        let mut p = Pose::default();
        let rest = forward_kinematics(&p);
        let lw = joint("LeftWrist");
        assert!(rest[lw][1] < rest[joint("LeftShoulder")][1]);
        p.angles[joint("LeftShoulder")] = [160f32.to_radians(), 0.0, 0.0];
        let up = forward_kinematics(&p);
        assert!(up[lw][1] > rest[joint("Head")][1], "wrist above head");
        assert!(up[lw][0] > 0.0, "still on the left (+X)");
        // turning left (positive yaw) moves the body's forward axis towards +X
        p.yaw = std::f32::consts::FRAC_PI_2;
        let turned = forward_kinematics(&p);
        assert!(turned[lw][2] < 0.0, "left side now points to −Z");
    }

    #[test]
    fn features_round_trip_to_the_same_positions() {
        let mut poses = Vec::new();
        for t in 0..20 {
            let tf = t as f32;
            let mut p = Pose {
                root: [0.0, 0.0, 0.0],
                yaw: 0.1 * tf,
                ..Default::default()
            };
            p.angles[joint("LeftKnee")] = [0.0, 0.05 * tf, 0.0];
            poses.push(p);
        }
        // integrate a walk along the heading
        for t in 1..poses.len() {
            let (s, c) = poses[t - 1].yaw.sin_cos();
            let prev = poses[t - 1].root;
            poses[t].root = [prev[0] + 2.0 * s, 90.0, prev[2] + 2.0 * c];
        }
        poses[0].root[1] = 90.0;
        let feats: Vec<Vec<f32>> = poses_to_features(&poses)
            .iter()
            .map(|f| f.to_vec())
            .collect();
        let back = features_to_poses(&feats);
        for (a, b) in poses.iter().zip(&back) {
            let pa = forward_kinematics(a);
            let pb = forward_kinematics(b);
            for j in 0..N_JOINTS {
                for k in 0..3 {
                    assert!((pa[j][k] - pb[j][k]).abs() < 1e-3);
                }
            }
        }
    }
}
