//! Two scene domains from one layout generator, for domain-adaptive segmentation (ESA): a
//! labelled *source* and a shifted, unlabelled *target*.
//!
//! A scene is a street-like layout at `S × S` pixels: three horizontal "stuff" bands with wavy
//! borders (sky, wall, ground) and one to four "thing" objects of five shapes (disk, square,
//! triangle, ring, cross) on top. Every pixel is labelled (8 classes, as in Cityscapes-style dense
//! labels), and every pixel also carries an *instance* id (each band is one instance, each object
//! one instance): the ground-truth instance masks are the oracle entities.
//!
//! The two domains share the layout distribution and differ in appearance only (all ours; the
//! paper adapts GTAV → Cityscapes):
//! - source: every class region is a crop of one set of scikit-image photographs, clean;
//! - target: other photographs for every class, a per-image colour shift (channel gains and
//!   offsets), Gaussian blur and additive Gaussian noise.
//!
//! Everything is a function of `(domain, seed, index)`.

use crate::scenes::{inside, load_photo, Picture};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use std::path::Path;

/// Number of classes: 3 stuff bands + 5 object shapes.
pub const NUM_CLASSES: usize = 8;
/// Class names in id order.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "sky", "wall", "ground", "disk", "square", "triangle", "ring", "cross",
];
/// First object class (objects are `3..8`, shape `c − 3` of [`crate::scenes::SHAPES`]).
pub const FIRST_OBJECT: usize = 3;

/// Which domain a scene comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Domain {
    Source,
    Target,
}

/// A photograph used as a material: file, short side after resizing, colour tint.
#[derive(Debug, Clone, Copy)]
pub struct Material {
    pub file: &'static str,
    pub side: u32,
    pub tint: [f32; 3],
}

const fn mat(file: &'static str, side: u32, tint: [f32; 3]) -> Material {
    Material { file, side, tint }
}

/// Source materials: sky, wall, ground, then the object materials (one drawn per object).
pub const SOURCE_STUFF: [Material; 3] = [
    mat("grass.png", 128, [0.55, 0.75, 1.0]),
    mat("brick.png", 128, [1.0, 0.6, 0.5]),
    mat("gravel.png", 128, [0.8, 0.75, 0.55]),
];
pub const SOURCE_OBJECTS: [Material; 2] = [
    mat("chelsea.png", 128, [1.0, 1.0, 1.0]),
    mat("coffee.png", 128, [1.0, 1.0, 1.0]),
];
/// Target materials (other photographs for every class).
pub const TARGET_STUFF: [Material; 3] = [
    mat("hubble_deep_field.jpg", 128, [0.8, 0.9, 1.3]),
    mat("camera.png", 128, [0.95, 0.9, 1.0]),
    mat("rocket.jpg", 128, [1.0, 0.95, 0.8]),
];
pub const TARGET_OBJECTS: [Material; 2] = [
    mat("astronaut.png", 128, [1.0, 1.0, 1.0]),
    mat("motorcycle_left.png", 128, [1.0, 1.0, 1.0]),
];

/// Layout and corruption settings (all ours).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DomainConfig {
    pub size: usize,
    pub min_objects: usize,
    pub max_objects: usize,
    pub min_radius: f32,
    pub max_radius: f32,
    /// Brightness gain of each crop, `1 ± jitter` (both domains).
    pub jitter: f32,
    /// Target: per-channel gain drawn from `1 ± colour_gain`, offset from `± colour_offset`.
    pub colour_gain: f32,
    pub colour_offset: f32,
    /// Target: Gaussian blur sigma in pixels (0 = none).
    pub blur_sigma: f32,
    /// Target: standard deviation of the additive Gaussian noise (image range `[0, 1]`).
    pub noise_std: f32,
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self {
            size: 64,
            min_objects: 1,
            max_objects: 4,
            min_radius: 6.0,
            max_radius: 12.0,
            jitter: 0.15,
            colour_gain: 0.2,
            colour_offset: 0.08,
            blur_sigma: 0.8,
            noise_std: 0.05,
        }
    }
}

/// Decoded materials of both domains.
#[derive(Debug, Clone)]
pub struct DomainPhotos {
    pub source_stuff: Vec<Picture>,
    pub source_objects: Vec<Picture>,
    pub target_stuff: Vec<Picture>,
    pub target_objects: Vec<Picture>,
}

fn load_all(dir: &Path, ms: &[Material]) -> Result<Vec<Picture>> {
    ms.iter()
        .map(|m| {
            let mut p = load_photo(dir, m.file, m.side)?;
            for px in &mut p.rgb {
                for (v, t) in px.iter_mut().zip(m.tint) {
                    *v *= t;
                }
            }
            Ok(p)
        })
        .collect()
}

impl DomainPhotos {
    /// Load (and sha256-check) every photograph from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        Ok(Self {
            source_stuff: load_all(dir, &SOURCE_STUFF)?,
            source_objects: load_all(dir, &SOURCE_OBJECTS)?,
            target_stuff: load_all(dir, &TARGET_STUFF)?,
            target_objects: load_all(dir, &TARGET_OBJECTS)?,
        })
    }
}

/// Scenes of one domain: images `(N, 3, S, S)`, labels `(N, S, S)`, instance ids `(N, S, S)`.
#[derive(Debug, Clone)]
pub struct DomainSet {
    pub size: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub instances: Vec<u16>,
}

impl DomainSet {
    pub fn len(&self) -> usize {
        self.labels.len() / (self.size * self.size)
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[f32] {
        let n = 3 * self.size * self.size;
        &self.images[i * n..(i + 1) * n]
    }
    pub fn label(&self, i: usize) -> &[u8] {
        let n = self.size * self.size;
        &self.labels[i * n..(i + 1) * n]
    }
    pub fn instance(&self, i: usize) -> &[u16] {
        let n = self.size * self.size;
        &self.instances[i * n..(i + 1) * n]
    }
}

type Sampler<'a> = Box<dyn Fn(usize, usize) -> [f32; 3] + 'a>;

fn crop<'a>(p: &'a Picture, rng: &mut impl Rng, size: usize, gain: f32) -> Sampler<'a> {
    let ox = rng.gen_range(0..=p.width - size);
    let oy = rng.gen_range(0..=p.height - size);
    let flip = rng.gen_bool(0.5);
    Box::new(move |x, y| {
        let xx = if flip { size - 1 - x } else { x };
        let px = p.at(ox + xx, oy + y);
        [px[0] * gain, px[1] * gain, px[2] * gain]
    })
}

/// Separable Gaussian blur of a `(C, H, W)` channel-major image (clamped borders).
pub fn gaussian_blur(img: &mut [f32], height: usize, width: usize, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let n = height * width;
    let mut tmp = vec![0f32; n];
    let cx = |v: isize| v.clamp(0, width as isize - 1) as usize;
    let cy = |v: isize| v.clamp(0, height as isize - 1) as usize;
    for ch in img.chunks_mut(n) {
        for y in 0..height {
            for x in 0..width {
                tmp[y * width + x] = (-r..=r)
                    .map(|d| k[(d + r) as usize] * ch[y * width + cx(x as isize + d)])
                    .sum();
            }
        }
        for y in 0..height {
            for x in 0..width {
                ch[y * width + x] = (-r..=r)
                    .map(|d| k[(d + r) as usize] * tmp[cy(y as isize + d) * width + x])
                    .sum();
            }
        }
    }
}

/// Scene `index` of `domain` with `seed`: image `(3, S, S)`, label `(S, S)`, instances `(S, S)`.
///
/// The layout is drawn from a generator seeded by `(seed, index)` alone, so source and target
/// scenes with the same seed and index share their layout; appearance draws use a second
/// generator.
pub fn scene(
    photos: &DomainPhotos,
    cfg: &DomainConfig,
    domain: Domain,
    seed: u64,
    index: u64,
) -> (Vec<f32>, Vec<u8>, Vec<u16>) {
    let s = cfg.size;
    let base = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut lay = rand::rngs::StdRng::seed_from_u64(base);
    let mut look = rand::rngs::StdRng::seed_from_u64(
        base ^ match domain {
            Domain::Source => 0x1234_5678,
            Domain::Target => 0x8765_4321_0fed_cba9,
        },
    );
    let (stuff, objects) = match domain {
        Domain::Source => (&photos.source_stuff, &photos.source_objects),
        Domain::Target => (&photos.target_stuff, &photos.target_objects),
    };
    let mut label = vec![0u8; s * s];
    let mut inst = vec![0u16; s * s];
    let mut rgb = vec![[0f32; 3]; s * s];
    // Wavy band borders.
    let sf = s as f32;
    let h1 = lay.gen_range(0.18..0.4) * sf;
    let h2 = lay.gen_range(0.55..0.75) * sf;
    let (a1, a2) = (lay.gen_range(0.0..0.06) * sf, lay.gen_range(0.0..0.06) * sf);
    let (p1, p2) = (lay.gen_range(0.4..1.0) * sf, lay.gen_range(0.4..1.0) * sf);
    let (f1, f2) = (
        lay.gen_range(0.0..std::f32::consts::TAU),
        lay.gen_range(0.0..std::f32::consts::TAU),
    );
    let samplers: Vec<Sampler> = stuff
        .iter()
        .map(|p| {
            let g = 1.0 + look.gen_range(-cfg.jitter..=cfg.jitter);
            crop(p, &mut look, s, g)
        })
        .collect();
    for y in 0..s {
        for x in 0..s {
            let t = std::f32::consts::TAU * x as f32;
            let b1 = h1 + a1 * (t / p1 + f1).sin();
            let b2 = h2 + a2 * (t / p2 + f2).sin();
            let yc = y as f32 + 0.5;
            let c = if yc < b1 {
                0
            } else if yc < b2 {
                1
            } else {
                2
            };
            label[y * s + x] = c as u8;
            inst[y * s + x] = c as u16;
            rgb[y * s + x] = samplers[c](x, y);
        }
    }
    let n = lay.gen_range(cfg.min_objects..=cfg.max_objects);
    for k in 0..n {
        let shape = lay.gen_range(0..NUM_CLASSES - FIRST_OBJECT);
        let r = lay.gen_range(cfg.min_radius..=cfg.max_radius);
        let cx = lay.gen_range(r * 0.5..sf - r * 0.5);
        let cy = lay.gen_range(r * 0.5..sf - r * 0.5);
        let rot = lay.gen_range(0.0..std::f32::consts::TAU);
        let m = look.gen_range(0..objects.len());
        let g = 1.0 + look.gen_range(-cfg.jitter..=cfg.jitter);
        let tex = crop(&objects[m], &mut look, s, g);
        for y in 0..s {
            for x in 0..s {
                if inside(shape, x as f32 + 0.5, y as f32 + 0.5, cx, cy, r, rot) {
                    rgb[y * s + x] = tex(x, y);
                    label[y * s + x] = (FIRST_OBJECT + shape) as u8;
                    inst[y * s + x] = (FIRST_OBJECT + k) as u16;
                }
            }
        }
    }
    let mut img = vec![0f32; 3 * s * s];
    for (i, px) in rgb.iter().enumerate() {
        for c in 0..3 {
            img[c * s * s + i] = px[c];
        }
    }
    if domain == Domain::Target {
        for c in 0..3 {
            let gain = 1.0 + look.gen_range(-cfg.colour_gain..=cfg.colour_gain);
            let off = look.gen_range(-cfg.colour_offset..=cfg.colour_offset);
            for v in &mut img[c * s * s..(c + 1) * s * s] {
                *v = *v * gain + off;
            }
        }
        gaussian_blur(&mut img, s, s, cfg.blur_sigma);
        for v in &mut img {
            *v += cfg.noise_std * frugal_nn::init::normal(&mut look) as f32;
        }
    }
    for v in &mut img {
        *v = v.clamp(0.0, 1.0);
    }
    (img, label, inst)
}

/// Scenes `start..start + n` of `domain` with `seed`.
pub fn generate(
    photos: &DomainPhotos,
    cfg: &DomainConfig,
    domain: Domain,
    seed: u64,
    start: usize,
    n: usize,
) -> DomainSet {
    let s = cfg.size;
    let mut set = DomainSet {
        size: s,
        images: Vec::with_capacity(n * 3 * s * s),
        labels: Vec::with_capacity(n * s * s),
        instances: Vec::with_capacity(n * s * s),
    };
    for i in start..start + n {
        let (img, lab, ins) = scene(photos, cfg, domain, seed, i as u64);
        set.images.extend(img);
        set.labels.extend(lab);
        set.instances.extend(ins);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_constants_and_spreads_an_impulse() {
        let s = 9;
        let mut img = vec![0.5f32; 3 * s * s];
        gaussian_blur(&mut img, s, s, 1.0);
        assert!(img.iter().all(|v| (v - 0.5).abs() < 1e-5));
        let mut img = vec![0f32; 3 * s * s];
        img[4 * s + 4] = 1.0;
        gaussian_blur(&mut img, s, s, 1.0);
        let total: f32 = img[..s * s].iter().sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        assert!(img[4 * s + 4] < 0.2 && img[4 * s + 5] > 0.05);
        assert_eq!(img[4 * s + 3], img[4 * s + 5]);
    }
}
