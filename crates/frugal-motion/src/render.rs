//! Pictures of the skeleton: a strip of evenly spaced frames (PNG) and an animated GIF.
//!
//! View: the camera looks at the body from the front-right at 30° (so left/right and
//! forward/back are both visible), orthographic. Each strip panel is centred on the root so the
//! body stays in frame; the root's path so far is drawn on the floor as a grey trail.

use crate::skeleton::{forward_kinematics, Pose, JOINTS, N_JOINTS};
use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

const W: u32 = 160;
const H: u32 = 220;

fn project(p: [f32; 3], centre: [f32; 3]) -> (f32, f32) {
    let (s, c) = (30f32.to_radians()).sin_cos();
    let x = p[0] - centre[0];
    let z = p[2] - centre[2];
    // screen x: the body's left (+X) appears on the viewer's right when seen from the front
    let sx = -(x * c - z * s);
    let depth = x * s + z * c;
    let sy = p[1] + 0.25 * depth;
    (W as f32 / 2.0 + sx * 0.9, H as f32 - 15.0 - sy * 0.9)
}

fn line(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), col: Rgb<u8>) {
    let steps = ((a.0 - b.0).abs().max((a.1 - b.1).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f32 / steps as f32;
        let x = a.0 + t * (b.0 - a.0);
        let y = a.1 + t * (b.1 - a.1);
        for (dx, dy) in [(0i32, 0i32), (1, 0), (0, 1)] {
            let (px, py) = (x as i32 + dx, y as i32 + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, col);
            }
        }
    }
}

fn colour(j: usize) -> Rgb<u8> {
    let name = JOINTS[j].name;
    if name.starts_with("Left") {
        Rgb([200, 40, 40]) // left side red
    } else if name.starts_with("Right") {
        Rgb([40, 80, 200]) // right side blue
    } else {
        Rgb([30, 30, 30])
    }
}

/// Draws one pose into a panel; `trail` are earlier root positions.
fn draw_pose(p: &Pose, trail: &[[f32; 3]]) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([250, 250, 250]));
    let centre = [p.root[0], 0.0, p.root[2]];
    let floor = |q: [f32; 3]| project([q[0], 0.0, q[2]], centre);
    line(
        &mut img,
        floor([centre[0] - 60.0, 0.0, centre[2]]),
        floor([centre[0] + 60.0, 0.0, centre[2]]),
        Rgb([210, 210, 210]),
    );
    for w in trail.windows(2) {
        line(&mut img, floor(w[0]), floor(w[1]), Rgb([160, 160, 160]));
    }
    let pos = forward_kinematics(p);
    for j in 1..N_JOINTS {
        let par = JOINTS[j].parent.unwrap();
        line(
            &mut img,
            project(pos[par], centre),
            project(pos[j], centre),
            colour(j),
        );
    }
    img
}

/// A strip of `panels` evenly spaced frames, side by side.
pub fn strip(poses: &[Pose], panels: usize) -> Result<RgbImage> {
    if poses.is_empty() || panels == 0 {
        bail!("nothing to draw");
    }
    let mut out = RgbImage::from_pixel(W * panels as u32, H, Rgb([255, 255, 255]));
    for k in 0..panels {
        let t = if panels == 1 {
            0
        } else {
            k * (poses.len() - 1) / (panels - 1)
        };
        let trail: Vec<[f32; 3]> = poses[..=t].iter().map(|p| p.root).collect();
        let img = draw_pose(&poses[t], &trail);
        image::imageops::overlay(&mut out, &img, (k as u32 * W) as i64, 0);
        // panel separator
        for y in 0..H {
            out.put_pixel(k as u32 * W, y, Rgb([200, 200, 200]));
        }
    }
    Ok(out)
}

pub fn write_strip(path: &Path, poses: &[Pose], panels: usize) -> Result<()> {
    strip(poses, panels)?
        .save(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Animated GIF of every `every`-th frame at 30 / `every` frames per second.
pub fn write_gif(path: &Path, poses: &[Pose], every: usize) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame};
    if poses.is_empty() {
        bail!("nothing to draw");
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = GifEncoder::new_with_speed(file, 10);
    enc.set_repeat(Repeat::Infinite)?;
    let every = every.max(1);
    let delay = Delay::from_numer_denom_ms(1000 * every as u32, 30);
    let frames = (0..poses.len()).step_by(every).map(|t| {
        let trail: Vec<[f32; 3]> = poses[..=t].iter().map(|p| p.root).collect();
        let rgba = image::DynamicImage::ImageRgb8(draw_pose(&poses[t], &trail)).to_rgba8();
        Frame::from_parts(rgba, 0, 0, delay)
    });
    enc.encode_frames(frames)?;
    Ok(())
}
