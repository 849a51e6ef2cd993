//! Synthetic text-labelled motion, generated with fixed seeds: a BABEL-like stand-in, since no
//! text-labelled motion capture ships in any package we can fetch.
//!
//! Fourteen primitives with explicit direction drive the skeleton of [`crate::skeleton`], each
//! 40–80 frames (a multiple of 4, so segments align with the tokenizer's ×4 downsampling), with
//! random amplitude and speed. A sequence chains 2–5 of them; each segment keeps its own text, one
//! of at least three phrasings, and the first frames of each segment are blended from the end of
//! the previous one so transitions are smooth. The "D" split keeps sequences whose every segment
//! names a left/right direction.

use crate::skeleton::{joint, poses_to_features, Pose, FEATURE_DIM, STAND_HEIGHT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f32::consts::PI;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Primitive {
    WalkForward,
    WalkBackward,
    TurnLeft,
    TurnRight,
    RaiseLeftArm,
    RaiseRightArm,
    KickLeft,
    KickRight,
    WaveLeft,
    WaveRight,
    StepLeft,
    StepRight,
    Jump,
    Sit,
}

/// Which side a primitive names, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

impl Primitive {
    pub const ALL: [Primitive; 14] = [
        Primitive::WalkForward,
        Primitive::WalkBackward,
        Primitive::TurnLeft,
        Primitive::TurnRight,
        Primitive::RaiseLeftArm,
        Primitive::RaiseRightArm,
        Primitive::KickLeft,
        Primitive::KickRight,
        Primitive::WaveLeft,
        Primitive::WaveRight,
        Primitive::StepLeft,
        Primitive::StepRight,
        Primitive::Jump,
        Primitive::Sit,
    ];

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap()
    }

    pub fn side(self) -> Option<Side> {
        use Primitive::*;
        match self {
            TurnLeft | RaiseLeftArm | KickLeft | WaveLeft | StepLeft => Some(Side::Left),
            TurnRight | RaiseRightArm | KickRight | WaveRight | StepRight => Some(Side::Right),
            _ => None,
        }
    }

    /// At least three phrasings each; the first is the canonical one.
    pub fn phrasings(self) -> &'static [&'static str] {
        use Primitive::*;
        match self {
            WalkForward => &[
                "walk forward",
                "a person walks forwards",
                "move ahead by walking",
                "walk straight ahead",
            ],
            WalkBackward => &[
                "walk backward",
                "a person walks backwards",
                "step back slowly",
                "move backwards by walking",
            ],
            TurnLeft => &[
                "turn left",
                "a person turns to the left",
                "rotate to the left",
                "turn around to the left side",
            ],
            TurnRight => &[
                "turn right",
                "a person turns to the right",
                "rotate to the right",
                "turn around to the right side",
            ],
            RaiseLeftArm => &[
                "raise the left arm",
                "a person lifts the left arm",
                "put the left hand up",
                "raise left arm up high",
            ],
            RaiseRightArm => &[
                "raise the right arm",
                "a person lifts the right arm",
                "put the right hand up",
                "raise right arm up high",
            ],
            KickLeft => &[
                "kick with the left leg",
                "a person kicks with the left foot",
                "left leg kick",
                "kick forward with the left leg",
            ],
            KickRight => &[
                "kick with the right leg",
                "a person kicks with the right foot",
                "right leg kick",
                "kick forward with the right leg",
            ],
            WaveLeft => &[
                "wave the left hand",
                "a person waves with the left hand",
                "wave left hand hello",
                "greet by waving the left hand",
            ],
            WaveRight => &[
                "wave the right hand",
                "a person waves with the right hand",
                "wave right hand hello",
                "greet by waving the right hand",
            ],
            StepLeft => &[
                "step to the left",
                "a person sidesteps left",
                "move sideways to the left",
                "side step left",
            ],
            StepRight => &[
                "step to the right",
                "a person sidesteps right",
                "move sideways to the right",
                "side step right",
            ],
            Jump => &[
                "jump",
                "a person jumps up",
                "jump in place",
                "hop up into the air",
            ],
            Sit => &[
                "sit down",
                "a person sits down",
                "take a seat",
                "lower down and sit",
            ],
        }
    }

    /// Canonical text for command-line matching.
    pub fn name(self) -> &'static str {
        self.phrasings()[0]
    }
}

/// Random style of one primitive instance.
#[derive(Debug, Clone, Copy)]
struct Style {
    amp: f32,
    speed: f32,
}

/// Pose offsets of a primitive at phase `u ∈ [0, 1]` of a segment of `n` frames: per-frame root
/// velocity (sideways, forward), yaw velocity, root height and joint angles (radians).
struct Frame {
    vel: [f32; 2],
    dyaw: f32,
    height: f32,
    angles: [[f32; 3]; crate::skeleton::N_JOINTS],
}

fn bump(u: f32) -> f32 {
    // 0 → 1 → 0, held flat in the middle half
    let r = (u / 0.25).min((1.0 - u) / 0.25).clamp(0.0, 1.0);
    0.5 - 0.5 * (PI * r).cos()
}

fn gait(f: &mut Frame, u: f32, n: usize, st: Style, sign: f32) {
    let cycles = (n as f32 / 30.0) * st.speed;
    let ph = 2.0 * PI * cycles * u * sign;
    let a = 0.45 * st.amp;
    f.angles[joint("LeftHip")][1] = -a * ph.sin();
    f.angles[joint("RightHip")][1] = a * ph.sin();
    f.angles[joint("LeftKnee")][1] = 0.6 * st.amp * (ph.sin()).max(0.0);
    f.angles[joint("RightKnee")][1] = 0.6 * st.amp * (-ph.sin()).max(0.0);
    f.angles[joint("LeftShoulder")][1] = 0.4 * a * ph.sin();
    f.angles[joint("RightShoulder")][1] = -0.4 * a * ph.sin();
    f.height = STAND_HEIGHT - 2.0 * (2.0 * ph).cos().abs();
}

fn primitive_frame(p: Primitive, t: usize, n: usize, st: Style) -> Frame {
    use Primitive::*;
    let u = t as f32 / (n - 1) as f32;
    let mut f = Frame {
        vel: [0.0, 0.0],
        dyaw: 0.0,
        height: STAND_HEIGHT,
        angles: [[0.0; 3]; crate::skeleton::N_JOINTS],
    };
    let b = bump(u);
    match p {
        WalkForward => {
            gait(&mut f, u, n, st, 1.0);
            f.vel = [0.0, 2.5 * st.speed];
        }
        WalkBackward => {
            gait(&mut f, u, n, st, -1.0);
            f.vel = [0.0, -1.6 * st.speed];
        }
        TurnLeft | TurnRight => {
            let s = if p == TurnLeft { 1.0 } else { -1.0 };
            gait(
                &mut f,
                u,
                n,
                Style {
                    amp: 0.4 * st.amp,
                    speed: st.speed,
                },
                1.0,
            );
            // a quarter to a half turn over the segment, smooth in time
            let total = (PI / 2.0) * (1.0 + 0.6 * (st.amp - 0.85) / 0.3);
            f.dyaw = s * total * (PI * u).sin() * PI / (2.0 * n as f32);
            f.angles[joint("Spine")][2] = s * 0.15 * (PI * u).sin();
        }
        RaiseLeftArm | RaiseRightArm => {
            let (sh, s) = if p == RaiseLeftArm {
                ("LeftShoulder", 1.0)
            } else {
                ("RightShoulder", -1.0)
            };
            f.angles[joint(sh)][0] = s * 2.6 * st.amp.min(1.1) * b;
        }
        KickLeft | KickRight => {
            let (hip, knee, s) = if p == KickLeft {
                ("LeftHip", "LeftKnee", 1.0)
            } else {
                ("RightHip", "RightKnee", -1.0)
            };
            let k = (PI * ((u - 0.2) / 0.6).clamp(0.0, 1.0)).sin();
            f.angles[joint(hip)][1] = -1.3 * st.amp * k;
            f.angles[joint(knee)][1] = 1.2
                * (1.0
                    - (2.0 * PI * ((u - 0.2) / 0.6).clamp(0.0, 1.0))
                        .sin()
                        .max(0.0))
                * k;
            // lean back and swing the opposite arm
            f.angles[joint("Spine")][1] = 0.2 * k;
            let other = if s > 0.0 {
                "RightShoulder"
            } else {
                "LeftShoulder"
            };
            f.angles[joint(other)][1] = -0.5 * k;
        }
        WaveLeft | WaveRight => {
            let (sh, el, s) = if p == WaveLeft {
                ("LeftShoulder", "LeftElbow", 1.0)
            } else {
                ("RightShoulder", "RightElbow", -1.0)
            };
            f.angles[joint(sh)][0] = s * 2.4 * b;
            let osc = (2.0 * PI * 3.0 * st.speed * u).sin();
            f.angles[joint(el)][0] = s * (0.5 + 0.4 * st.amp * osc) * b;
        }
        StepLeft | StepRight => {
            let s = if p == StepLeft { 1.0 } else { -1.0 };
            let ph = 2.0 * PI * u * 2.0 * st.speed;
            let lead = if s > 0.0 { "LeftHip" } else { "RightHip" };
            let trail = if s > 0.0 { "RightHip" } else { "LeftHip" };
            f.angles[joint(lead)][0] = s * 0.35 * st.amp * ph.sin().max(0.0);
            f.angles[joint(trail)][0] = s * 0.25 * st.amp * (-ph.sin()).max(0.0);
            f.vel = [s * 1.5 * st.speed * (0.5 - 0.5 * (2.0 * ph).cos()), 0.0];
        }
        Jump => {
            // crouch, take off, flight, land
            let crouch = (PI * (u / 0.35).clamp(0.0, 1.0)).sin().max(0.0)
                + (PI * ((u - 0.7) / 0.3).clamp(0.0, 1.0)).sin().max(0.0);
            let flight = (PI * ((u - 0.35) / 0.35).clamp(0.0, 1.0)).sin();
            f.height = STAND_HEIGHT - 15.0 * crouch + 30.0 * st.amp * flight;
            for (h, k) in [("LeftHip", "LeftKnee"), ("RightHip", "RightKnee")] {
                f.angles[joint(h)][1] = -0.6 * crouch;
                f.angles[joint(k)][1] = 1.1 * crouch;
            }
            f.angles[joint("LeftShoulder")][0] = 0.8 * flight;
            f.angles[joint("RightShoulder")][0] = -0.8 * flight;
        }
        Sit => {
            let s = 0.5 - 0.5 * (PI * (u / 0.6).clamp(0.0, 1.0)).cos();
            f.height = STAND_HEIGHT - 42.0 * s;
            for (h, k) in [("LeftHip", "LeftKnee"), ("RightHip", "RightKnee")] {
                f.angles[joint(h)][1] = -1.5 * s;
                f.angles[joint(k)][1] = 1.5 * s;
            }
            f.angles[joint("Spine")][1] = -0.3 * s;
        }
    }
    f
}

/// One text-labelled segment of a sequence.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub primitive: Primitive,
    pub text: String,
    /// First frame (inclusive) and end frame (exclusive) in the sequence.
    pub start: usize,
    pub end: usize,
}

/// A multi-segment motion: per-frame features and the segment labels.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub features: Vec<[f32; FEATURE_DIM]>,
    pub segments: Vec<Segment>,
}

/// Generation settings. `Default` is what the results page uses.
#[derive(Debug, Clone, Copy)]
pub struct DataConfig {
    pub min_segments: usize,
    pub max_segments: usize,
    pub min_frames: usize,
    pub max_frames: usize,
    /// Frames at the start of each segment blended from the previous segment's last pose (ours).
    pub blend_frames: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            min_segments: 2,
            max_segments: 5,
            min_frames: 40,
            max_frames: 80,
            blend_frames: 10,
        }
    }
}

/// Builds one sequence from a list of primitives (and texts), with random style from `rng`.
pub fn synthesize(
    plan: &[(Primitive, String, usize)],
    cfg: &DataConfig,
    rng: &mut StdRng,
) -> Sequence {
    let mut poses: Vec<Pose> = Vec::new();
    let mut segments = Vec::new();
    let mut cur = Pose::default();
    for (p, text, n) in plan {
        let st = Style {
            amp: rng.gen_range(0.85..1.15),
            speed: rng.gen_range(0.8..1.2),
        };
        let start = poses.len();
        let prev = poses.last().cloned();
        for t in 0..*n {
            let f = primitive_frame(*p, t, *n, st);
            let w = if prev.is_some() && t < cfg.blend_frames {
                let x = (t + 1) as f32 / (cfg.blend_frames + 1) as f32;
                0.5 - 0.5 * (PI * x).cos()
            } else {
                1.0
            };
            let mut angles = f.angles;
            let mut height = f.height;
            if let Some(q) = &prev {
                for (a, qa) in angles.iter_mut().zip(&q.angles) {
                    for k in 0..3 {
                        a[k] = w * a[k] + (1.0 - w) * qa[k];
                    }
                }
                height = w * height + (1.0 - w) * q.root[1];
            }
            if !poses.is_empty() {
                let (s, c) = cur.yaw.sin_cos();
                let v = [w * f.vel[0], w * f.vel[1]];
                cur.root[0] += v[0] * c + v[1] * s;
                cur.root[2] += -v[0] * s + v[1] * c;
                cur.yaw += w * f.dyaw;
            }
            cur.root[1] = height;
            cur.angles = angles;
            poses.push(cur.clone());
        }
        segments.push(Segment {
            primitive: *p,
            text: text.clone(),
            start,
            end: poses.len(),
        });
    }
    Sequence {
        features: poses_to_features(&poses),
        segments,
    }
}

/// Draws a random sequence; with `directional`, only left/right primitives are used.
pub fn random_sequence(cfg: &DataConfig, directional: bool, rng: &mut StdRng) -> Sequence {
    let pool: Vec<Primitive> = Primitive::ALL
        .iter()
        .copied()
        .filter(|p| !directional || p.side().is_some())
        .collect();
    let k = rng.gen_range(cfg.min_segments..=cfg.max_segments);
    let mut plan = Vec::new();
    let mut last = None;
    for _ in 0..k {
        let mut p = pool[rng.gen_range(0..pool.len())];
        while Some(p) == last {
            p = pool[rng.gen_range(0..pool.len())];
        }
        last = Some(p);
        let ph = p.phrasings();
        let text = ph[rng.gen_range(0..ph.len())].to_string();
        let n = 4 * rng.gen_range(cfg.min_frames / 4..=cfg.max_frames / 4);
        plan.push((p, text, n));
    }
    synthesize(&plan, cfg, rng)
}

/// The splits of the synthetic set.
pub struct Dataset {
    pub train: Vec<Sequence>,
    pub test: Vec<Sequence>,
    /// Test sequences whose every prompt names left or right.
    pub test_d: Vec<Sequence>,
    /// Training sequences of directional prompts (for the left/right classifier).
    pub train_d: Vec<Sequence>,
}

/// Builds all splits from one seed (each split from its own derived stream).
pub fn build_dataset(seed: u64, n_train: usize, n_test: usize, cfg: &DataConfig) -> Dataset {
    let mk = |offset: u64, n: usize, d: bool| {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(offset));
        (0..n)
            .map(|_| random_sequence(cfg, d, &mut rng))
            .collect::<Vec<_>>()
    };
    Dataset {
        train: mk(1, n_train, false),
        test: mk(2, n_test, false),
        test_d: mk(3, n_test, true),
        train_d: mk(4, n_train / 2, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skeleton::{features_to_poses, forward_kinematics};

    #[test]
    fn sequences_have_the_promised_shape() {
        let cfg = DataConfig::default();
        let ds = build_dataset(0, 40, 10, &cfg);
        for s in ds.train.iter().chain(&ds.test) {
            assert!((2..=5).contains(&s.segments.len()));
            for seg in &s.segments {
                let n = seg.end - seg.start;
                assert!((40..=80).contains(&n) && n % 4 == 0);
            }
            assert_eq!(s.segments.last().unwrap().end, s.features.len());
        }
        for s in &ds.test_d {
            assert!(s.segments.iter().all(|g| g.primitive.side().is_some()));
            assert!(s
                .segments
                .iter()
                .all(|g| g.text.contains("left") || g.text.contains("right")));
        }
        for p in Primitive::ALL {
            assert!(p.phrasings().len() >= 3);
        }
    }

    #[test]
    fn directions_are_physical() {
        let cfg = DataConfig::default();
        let mut rng = StdRng::seed_from_u64(5);
        let run = |p: Primitive, rng: &mut StdRng| {
            let s = synthesize(&[(p, p.name().into(), 60)], &cfg, rng);
            let feats: Vec<Vec<f32>> = s.features.iter().map(|f| f.to_vec()).collect();
            features_to_poses(&feats)
        };
        let walk = run(Primitive::WalkForward, &mut rng);
        assert!(walk.last().unwrap().root[2] > 50.0);
        let back = run(Primitive::WalkBackward, &mut rng);
        assert!(back.last().unwrap().root[2] < -30.0);
        let tl = run(Primitive::TurnLeft, &mut rng);
        assert!(tl.last().unwrap().yaw > 0.5);
        let tr = run(Primitive::TurnRight, &mut rng);
        assert!(tr.last().unwrap().yaw < -0.5);
        let sl = run(Primitive::StepLeft, &mut rng);
        assert!(sl.last().unwrap().root[0] > 10.0);
        let ra = run(Primitive::RaiseLeftArm, &mut rng);
        let mid = forward_kinematics(&ra[30]);
        assert!(
            mid[crate::skeleton::joint("LeftWrist")][1] > mid[crate::skeleton::joint("Head")][1]
        );
        let rr = run(Primitive::RaiseRightArm, &mut rng);
        let mid = forward_kinematics(&rr[30]);
        let rw = mid[crate::skeleton::joint("RightWrist")];
        assert!(rw[1] > mid[crate::skeleton::joint("Head")][1] && rw[0] < 0.0);
    }
}
