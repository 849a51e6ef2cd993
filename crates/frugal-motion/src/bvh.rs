//! BVH in and out, through the `bvh_anim` crate.
//!
//! Reading: any BVH `bvh_anim` parses, flattened to a `(frames, channels)` table. Writing our
//! skeleton: the hierarchy and motion are formatted as BVH text, parsed back by `bvh_anim`
//! (so what we write is checked to be valid BVH, and malformed output is an error, not a file),
//! and written by `bvh_anim`'s writer. The real motion-capture clip that `bvh_anim` ships
//! (MocapBank, 455 frames) is what the round-trip test and the tokenizer check use.

use crate::skeleton::{Pose, JOINTS, N_JOINTS};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A BVH file flattened: joint names, channel count, frame time and the motion table.
#[derive(Debug, Clone)]
pub struct BvhClip {
    pub joint_names: Vec<String>,
    pub num_channels: usize,
    pub frame_time_s: f64,
    /// `frames × num_channels`, in file order.
    pub motion: Vec<Vec<f32>>,
}

pub fn parse_bvh(bytes: &[u8]) -> Result<(bvh_anim::Bvh, BvhClip)> {
    let bvh = bvh_anim::from_bytes(bytes).map_err(|e| anyhow::anyhow!("invalid BVH: {e}"))?;
    let joint_names = bvh.joints().map(|j| j.data().name().to_string()).collect();
    let motion = bvh.frames().map(|f| f.as_slice().to_vec()).collect();
    let clip = BvhClip {
        joint_names,
        num_channels: bvh.num_channels(),
        frame_time_s: bvh.frame_time().as_secs_f64(),
        motion,
    };
    Ok((bvh, clip))
}

/// Reads a BVH file.
pub fn read_bvh(path: &Path) -> Result<BvhClip> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_bvh(&bytes)
        .with_context(|| format!("parsing {}", path.display()))
        .map(|(_, c)| c)
}

/// The `HIERARCHY` section of our skeleton (angles in degrees, channel order Z X Y).
pub fn hierarchy_text() -> String {
    let mut s = String::from("HIERARCHY\n");
    fn children(i: usize) -> Vec<usize> {
        (0..N_JOINTS)
            .filter(|&c| JOINTS[c].parent == Some(i))
            .collect()
    }
    fn emit(s: &mut String, i: usize, depth: usize) {
        let pad = "  ".repeat(depth);
        let j = &JOINTS[i];
        let o = j.offset;
        if j.parent.is_none() {
            let _ = writeln!(s, "{pad}ROOT {}", j.name);
        } else {
            let _ = writeln!(s, "{pad}JOINT {}", j.name);
        }
        let _ = writeln!(s, "{pad}{{");
        let _ = writeln!(s, "{pad}  OFFSET {:.4} {:.4} {:.4}", o[0], o[1], o[2]);
        if j.parent.is_none() {
            let _ = writeln!(
                s,
                "{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation"
            );
        } else {
            let _ = writeln!(s, "{pad}  CHANNELS 3 Zrotation Xrotation Yrotation");
        }
        let ch = children(i);
        if ch.is_empty() {
            // an end site continuing the bone direction
            let _ = writeln!(
                s,
                "{pad}  End Site\n{pad}  {{\n{pad}    OFFSET {:.4} {:.4} {:.4}\n{pad}  }}",
                o[0] * 0.3,
                o[1] * 0.3,
                o[2] * 0.3
            );
        }
        for c in ch {
            emit(s, c, depth + 1);
        }
        let _ = writeln!(s, "{pad}}}");
    }
    emit(&mut s, 0, 0);
    s
}

/// The `MOTION` header for `frames` frames at `fps`.
pub fn motion_header(frames: usize, fps: f64) -> String {
    format!("MOTION\nFrames: {frames}\nFrame Time: {:.6}\n", 1.0 / fps)
}

/// One motion line (with its newline) of a pose, channels in the hierarchy's depth-first order.
pub fn frame_line(p: &Pose) -> Result<String> {
    // channel order follows the depth-first joint order of the hierarchy
    fn dfs(i: usize, order: &mut Vec<usize>) {
        order.push(i);
        for c in (0..N_JOINTS).filter(|&c| JOINTS[c].parent == Some(i)) {
            dfs(c, order);
        }
    }
    let mut order = Vec::with_capacity(N_JOINTS);
    dfs(0, &mut order);
    let mut vals: Vec<f32> = vec![
        p.root[0],
        p.root[1],
        p.root[2],
        0.0,
        0.0,
        p.yaw.to_degrees(),
    ];
    for &j in order.iter().skip(1) {
        vals.extend(p.angles[j].iter().map(|a| a.to_degrees()));
    }
    if vals.iter().any(|v| !v.is_finite()) {
        bail!("motion has non-finite values; refusing to write it");
    }
    let line: Vec<String> = vals.iter().map(|v| format!("{v:.4}")).collect();
    Ok(format!("{}\n", line.join(" ")))
}

/// BVH text for our skeleton and a list of poses (angles written in degrees, order Z X Y).
pub fn poses_to_bvh_text(poses: &[Pose], fps: f64) -> Result<String> {
    if poses.is_empty() {
        bail!("cannot write a BVH with no frames");
    }
    let mut s = hierarchy_text();
    s.push_str(&motion_header(poses.len(), fps));
    for p in poses {
        s.push_str(&frame_line(p)?);
    }
    Ok(s)
}

/// Writes poses as a BVH file (validated by parsing before anything is written).
pub fn write_poses_bvh(path: &Path, poses: &[Pose], fps: f64) -> Result<()> {
    let text = poses_to_bvh_text(poses, fps)?;
    let (bvh, _) = parse_bvh(text.as_bytes()).context("our BVH text did not parse")?;
    write_bvh(path, &bvh)
}

/// Writes a parsed BVH with `bvh_anim`'s writer (to a temporary name, then renamed, so a failed
/// write leaves no half file).
pub fn write_bvh(path: &Path, bvh: &bvh_anim::Bvh) -> Result<()> {
    let tmp = path.with_extension("bvh.part");
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        bvh.write_to(&mut f).context("writing BVH")?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Where cargo unpacked the `bvh_anim` crate's bundled MocapBank clip, if it did (it does for
/// any build of this crate, since `bvh_anim` is a dependency).
pub fn mocapbank_clip_path() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let src = home.join("registry").join("src");
    for reg in std::fs::read_dir(src).ok()? {
        let p = reg
            .ok()?
            .path()
            .join("bvh_anim-0.4.0/data/test_mocapbank.bvh");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mocapbank_clip_round_trips_through_bvh_anim() -> Result<()> {
        let path = mocapbank_clip_path()
            .context("bvh_anim's test_mocapbank.bvh not found in the cargo registry")?;
        let bytes = std::fs::read(&path)?;
        let (bvh, clip) = parse_bvh(&bytes)?;
        assert_eq!(clip.motion.len(), 455);
        assert_eq!(clip.num_channels, 6 + 3 * (clip.joint_names.len() - 1));
        let dir = std::env::temp_dir().join(format!("frugal-motion-bvh-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let out = dir.join("rt.bvh");
        write_bvh(&out, &bvh)?;
        let back = read_bvh(&out)?;
        assert_eq!(back.joint_names, clip.joint_names);
        assert_eq!(back.motion.len(), clip.motion.len());
        let mut worst = 0f32;
        for (a, b) in clip.motion.iter().zip(&back.motion) {
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
            }
        }
        // bvh_anim writes rotations with two decimals, as the source clip stores them; positions
        // keep more, so the round trip is exact up to half of 0.01
        assert!(worst <= 0.0051, "round-trip error {worst}");
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    #[test]
    fn our_skeleton_writes_and_reads_back() -> Result<()> {
        let mut p = Pose::default();
        p.angles[crate::skeleton::joint("LeftShoulder")] = [1.0, 0.2, -0.1];
        p.yaw = 0.3;
        let text = poses_to_bvh_text(&[p.clone(), p], 30.0)?;
        let (_, clip) = parse_bvh(text.as_bytes())?;
        assert_eq!(clip.joint_names.len(), N_JOINTS);
        assert_eq!(clip.motion.len(), 2);
        assert!(parse_bvh(b"HIERARCHY\nROOT x\n{").is_err());
        Ok(())
    }
}
