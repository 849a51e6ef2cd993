//! Streaming output for arbitrarily long motion: a BVH writer that writes frames as they come
//! (memory independent of the length), and a feature-to-pose integrator that carries the root's
//! position and heading from chunk to chunk.
//!
//! BVH states the frame count in its header, before the frames, so the writer is told the count
//! up front and refuses to finish with any other number. It writes to `PATH.part` and renames on
//! [`BvhStreamWriter::finish`], so an interrupted run leaves no half-written `PATH`.

use crate::bvh::{frame_line, hierarchy_text, motion_header};
use crate::skeleton::{Pose, N_JOINTS};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct BvhStreamWriter {
    out: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    expected: usize,
    written: usize,
}

impl BvhStreamWriter {
    /// Starts `path` (via `path.part`) for exactly `frames` frames at `fps`.
    pub fn create(path: &Path, frames: usize, fps: f64) -> Result<Self> {
        if frames == 0 {
            bail!("cannot write a BVH with no frames");
        }
        if !(fps.is_finite() && fps > 0.0) {
            bail!("frame rate must be positive, got {fps}");
        }
        let tmp = path.with_extension("bvh.part");
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = std::io::BufWriter::new(f);
        out.write_all(hierarchy_text().as_bytes())?;
        out.write_all(motion_header(frames, fps).as_bytes())?;
        Ok(Self {
            out,
            tmp,
            path: path.to_path_buf(),
            expected: frames,
            written: 0,
        })
    }

    /// Appends frames (an error past the announced count).
    pub fn write(&mut self, poses: &[Pose]) -> Result<()> {
        if self.written + poses.len() > self.expected {
            bail!(
                "BVH stream: {} frames announced, {} offered",
                self.expected,
                self.written + poses.len()
            );
        }
        for p in poses {
            self.out.write_all(frame_line(p)?.as_bytes())?;
        }
        self.written += poses.len();
        Ok(())
    }

    pub fn written(&self) -> usize {
        self.written
    }

    /// Flushes and renames to the final path (an error, and no file, if frames are missing).
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.expected {
            let _ = std::fs::remove_file(&self.tmp);
            bail!(
                "BVH stream: {} frames announced, {} written",
                self.expected,
                self.written
            );
        }
        self.out.flush()?;
        drop(self.out);
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming to {}", self.path.display()))?;
        Ok(())
    }
}

/// Integrates feature frames to poses chunk by chunk, carrying the root across chunks (the
/// same arithmetic as [`crate::skeleton::features_to_poses`] over the concatenation).
#[derive(Debug, Clone, Default)]
pub struct PoseIntegrator {
    x: f32,
    z: f32,
    yaw: f32,
    started: bool,
}

impl PoseIntegrator {
    pub fn push(&mut self, feats: &[Vec<f32>]) -> Vec<Pose> {
        let mut out = Vec::with_capacity(feats.len());
        for f in feats {
            if self.started {
                let (s, c) = self.yaw.sin_cos();
                self.x += f[1] * c + f[2] * s;
                self.z += -f[1] * s + f[2] * c;
                self.yaw += f[3];
            }
            self.started = true;
            let mut p = Pose {
                root: [self.x, f[0], self.z],
                yaw: self.yaw,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bvh::{poses_to_bvh_text, read_bvh};
    use crate::data::{synthesize, DataConfig, Primitive};
    use crate::skeleton::features_to_poses;
    use rand::SeedableRng;

    #[test]
    fn streamed_bvh_round_trips_through_the_reader_and_equals_the_one_shot_writer() -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let seq = synthesize(
            &[
                (Primitive::WalkForward, "walk forward".into(), 60),
                (Primitive::TurnLeft, "turn left".into(), 48),
            ],
            &DataConfig::default(),
            &mut rng,
        );
        let feats: Vec<Vec<f32>> = seq.features.iter().map(|f| f.to_vec()).collect();
        let whole = features_to_poses(&feats);
        let dir = std::env::temp_dir().join(format!("frugal-bvh-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("s.bvh");
        let mut w = BvhStreamWriter::create(&path, feats.len(), 30.0)?;
        let mut integ = PoseIntegrator::default();
        for chunk in feats.chunks(17) {
            let poses = integ.push(chunk);
            w.write(&poses)?;
        }
        assert!(!path.exists(), "nothing at the final path before finish");
        w.finish()?;
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(text, poses_to_bvh_text(&whole, 30.0)?);
        let clip = read_bvh(&path)?;
        assert_eq!(clip.motion.len(), feats.len());
        assert_eq!(clip.joint_names.len(), N_JOINTS);
        // a short stream is an error and leaves no file
        let bad = dir.join("bad.bvh");
        let mut w = BvhStreamWriter::create(&bad, 10, 30.0)?;
        w.write(&whole[..5])?;
        assert!(w.finish().is_err());
        assert!(!bad.exists() && !bad.with_extension("bvh.part").exists());
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }
}
