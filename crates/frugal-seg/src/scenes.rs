//! The segmentation scenes: objects of 20 classes (5 shapes × 4 materials) pasted on
//! backgrounds, where every material and every background is a crop of a real photograph
//! bundled with scikit-image (exported once by `scripts/seg/fetch-photos.sh`, checked by sha256).
//!
//! Labels follow ADE20K after its zero-label reduction: an object pixel carries its class
//! `0..20`, a background pixel carries [`IGNORE`]. Class ids are `shape · 4 + material`, so the
//! first ten classes (the base task of every protocol) are all disks and squares and two
//! triangles; later tasks add the other triangles, rings and crosses in materials the model has
//! already seen on other shapes.
//!
//! Everything is a function of the seed: scene `i` of a dataset depends only on `(seed, i)`.

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Label of pixels that no loss and no metric reads (background, and classes outside a task).
pub const IGNORE: u8 = 255;
/// Number of object classes.
pub const NUM_CLASSES: usize = SHAPES.len() * MATERIALS.len();

/// Object shapes, in class order.
pub const SHAPES: [&str; 5] = ["disk", "square", "triangle", "ring", "cross"];

/// A material: a photograph, the side its short edge is resized to (which sets how coarse the
/// texture looks at scene scale) and a colour tint (ours: it keeps three grey-scale textures
/// apart for a model this small; the texture itself is the photograph's).
#[derive(Debug, Clone, Copy)]
pub struct MaterialSpec {
    pub name: &'static str,
    pub file: &'static str,
    pub side: u32,
    pub tint: [f32; 3],
}

/// The four object materials, in class order.
pub const MATERIALS: [MaterialSpec; 4] = [
    MaterialSpec {
        name: "brick",
        file: "brick.png",
        side: 128,
        tint: [1.0, 0.55, 0.45],
    },
    MaterialSpec {
        name: "grass",
        file: "grass.png",
        side: 128,
        tint: [0.55, 1.0, 0.45],
    },
    MaterialSpec {
        name: "gravel",
        file: "gravel.png",
        side: 128,
        tint: [0.7, 0.75, 1.0],
    },
    MaterialSpec {
        name: "fur",
        file: "chelsea.png",
        side: 128,
        tint: [1.0, 1.0, 1.0],
    },
];

/// Background photographs (short edge resized to 128, random 64×64 crops).
pub const BACKGROUNDS: [&str; 6] = [
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "camera.png",
    "hubble_deep_field.jpg",
    "coffee.png",
];

/// File names and sha256 of every photograph (scikit-image 0.25.2).
pub const PHOTO_SHA256: [(&str, &str); 10] = [
    (
        "brick.png",
        "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
    ),
    (
        "grass.png",
        "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
    ),
    (
        "gravel.png",
        "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
    ),
    (
        "chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    (
        "astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    (
        "rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    ),
    (
        "motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    ),
    (
        "camera.png",
        "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    ),
    (
        "hubble_deep_field.jpg",
        "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
    ),
    (
        "coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    ),
];

/// Name of class `c`, e.g. `ring/grass`.
pub fn class_name(c: usize) -> String {
    format!(
        "{}/{}",
        SHAPES[c / MATERIALS.len()],
        MATERIALS[c % MATERIALS.len()].name
    )
}

/// The default photo folder: `$HOME/.cache/frugal/seg-photos`.
pub fn default_photo_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/frugal/seg-photos")
}

/// An RGB picture, row-major `[r, g, b]` per pixel in `[0, 1]`.
#[derive(Debug, Clone)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<[f32; 3]>,
}

impl Picture {
    pub fn at(&self, x: usize, y: usize) -> [f32; 3] {
        self.rgb[y * self.width + x]
    }
}

/// The decoded photographs: materials and backgrounds.
#[derive(Debug, Clone)]
pub struct Photos {
    pub materials: Vec<Picture>,
    pub backgrounds: Vec<Picture>,
}

pub fn load_photo(dir: &Path, file: &str, short_side: u32) -> Result<Picture> {
    let sha = PHOTO_SHA256
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, s)| *s)
        .with_context(|| format!("no checksum for {file}"))?;
    let path = dir.join(file);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading photo {} (export the photos with scripts/seg/fetch-photos.sh)",
            path.display()
        )
    })?;
    let got = format!("{:x}", Sha256::digest(&bytes));
    if got != sha {
        bail!("photo {} has sha256 {got}, expected {sha}", path.display());
    }
    let img = image::load_from_memory(&bytes)
        .with_context(|| format!("decoding {}", path.display()))?
        .to_rgb8();
    let (w, h) = (img.width(), img.height());
    let s = short_side as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * s).round() as u32).max(short_side),
        ((h as f64 * s).round() as u32).max(short_side),
    );
    let small = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    Ok(Picture {
        width: nw as usize,
        height: nh as usize,
        rgb: small
            .pixels()
            .map(|p| {
                [
                    p[0] as f32 / 255.0,
                    p[1] as f32 / 255.0,
                    p[2] as f32 / 255.0,
                ]
            })
            .collect(),
    })
}

impl Photos {
    /// Load and check every photograph in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let materials = MATERIALS
            .iter()
            .map(|m| {
                let mut p = load_photo(dir, m.file, m.side)?;
                for px in &mut p.rgb {
                    for (v, t) in px.iter_mut().zip(m.tint) {
                        *v *= t;
                    }
                }
                Ok(p)
            })
            .collect::<Result<Vec<_>>>()?;
        let backgrounds = BACKGROUNDS
            .iter()
            .map(|f| load_photo(dir, f, 128))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            materials,
            backgrounds,
        })
    }
}

/// Settings of the scene generator (all ours: the paper uses ADE20K).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SceneConfig {
    /// Side of the square scene in pixels.
    pub size: usize,
    /// Objects per scene, inclusive range.
    pub min_objects: usize,
    pub max_objects: usize,
    /// Object half-extent in pixels, inclusive range.
    pub min_radius: f32,
    pub max_radius: f32,
    /// Random brightness gain of each crop, `1 ± jitter`.
    pub jitter: f32,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            size: 64,
            min_objects: 1,
            max_objects: 3,
            min_radius: 8.0,
            max_radius: 15.0,
            jitter: 0.2,
        }
    }
}

/// Scenes as flat arrays: images `(N, 3, S, S)` channel-major, labels `(N, S, S)`.
#[derive(Debug, Clone)]
pub struct SceneSet {
    pub size: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
}

impl SceneSet {
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

    /// Indices of the scenes with at least `min_pixels` pixels of a class in `classes`.
    pub fn containing(&self, classes: std::ops::Range<usize>, min_pixels: usize) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| {
                self.label(i)
                    .iter()
                    .filter(|&&l| classes.contains(&(l as usize)))
                    .count()
                    >= min_pixels
            })
            .collect()
    }
}

/// Whether pixel centre `(x, y)` lies inside shape `shape` centred at `(cx, cy)` with half-extent
/// `r` and rotation `rot` (radians).
pub fn inside(shape: usize, x: f32, y: f32, cx: f32, cy: f32, r: f32, rot: f32) -> bool {
    let (dx, dy) = (x - cx, y - cy);
    let (s, c) = rot.sin_cos();
    let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
    match shape {
        0 => dx * dx + dy * dy <= r * r,
        1 => u.abs() <= 0.8 * r && v.abs() <= 0.8 * r,
        2 => {
            // equilateral triangle with circumradius r, apex at −v
            let h = 1.5 * r;
            let top = -r;
            let t = (v - top) / h; // 0 at apex, 1 at base
            (0.0..=1.0).contains(&t) && u.abs() <= t * r * 0.866
        }
        3 => {
            let d2 = dx * dx + dy * dy;
            d2 <= r * r && d2 >= (0.5 * r) * (0.5 * r)
        }
        4 => (u.abs() <= 0.3 * r && v.abs() <= r) || (v.abs() <= 0.3 * r && u.abs() <= r),
        _ => false,
    }
}

fn crop<'a>(
    p: &'a Picture,
    rng: &mut impl Rng,
    size: usize,
    gain: f32,
) -> impl Fn(usize, usize) -> [f32; 3] + 'a {
    let ox = rng.gen_range(0..=p.width - size);
    let oy = rng.gen_range(0..=p.height - size);
    let flip = rng.gen_bool(0.5);
    move |x, y| {
        let xx = if flip { size - 1 - x } else { x };
        let px = p.at(ox + xx, oy + y);
        [px[0] * gain, px[1] * gain, px[2] * gain]
    }
}

/// Scene `index` of the dataset with `seed`: image `(3, S, S)` and label `(S, S)`.
pub fn scene(photos: &Photos, cfg: &SceneConfig, seed: u64, index: u64) -> (Vec<f32>, Vec<u8>) {
    let s = cfg.size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_mul(0xbf58_476d_1ce4_e5b9),
    );
    let mut rgb = vec![[0f32; 3]; s * s];
    let mut label = vec![IGNORE; s * s];
    let bg = &photos.backgrounds[rng.gen_range(0..photos.backgrounds.len())];
    let gain = 1.0 + rng.gen_range(-cfg.jitter..=cfg.jitter);
    let bgf = crop(bg, &mut rng, s, gain);
    for y in 0..s {
        for x in 0..s {
            rgb[y * s + x] = bgf(x, y);
        }
    }
    let n = rng.gen_range(cfg.min_objects..=cfg.max_objects);
    for _ in 0..n {
        let class = rng.gen_range(0..NUM_CLASSES);
        let (shape, material) = (class / MATERIALS.len(), class % MATERIALS.len());
        let r = rng.gen_range(cfg.min_radius..=cfg.max_radius);
        let cx = rng.gen_range(r * 0.5..s as f32 - r * 0.5);
        let cy = rng.gen_range(r * 0.5..s as f32 - r * 0.5);
        let rot = rng.gen_range(0.0..std::f32::consts::TAU);
        let gain = 1.0 + rng.gen_range(-cfg.jitter..=cfg.jitter);
        let tex = crop(&photos.materials[material], &mut rng, s, gain);
        for y in 0..s {
            for x in 0..s {
                if inside(shape, x as f32 + 0.5, y as f32 + 0.5, cx, cy, r, rot) {
                    rgb[y * s + x] = tex(x, y);
                    label[y * s + x] = class as u8;
                }
            }
        }
    }
    let mut img = vec![0f32; 3 * s * s];
    for (i, px) in rgb.iter().enumerate() {
        for c in 0..3 {
            img[c * s * s + i] = px[c].clamp(0.0, 1.0);
        }
    }
    (img, label)
}

/// `n` scenes of the dataset with `seed`.
pub fn generate(photos: &Photos, cfg: &SceneConfig, seed: u64, n: usize) -> SceneSet {
    let mut images = Vec::with_capacity(n * 3 * cfg.size * cfg.size);
    let mut labels = Vec::with_capacity(n * cfg.size * cfg.size);
    for i in 0..n {
        let (img, lab) = scene(photos, cfg, seed, i as u64);
        images.extend(img);
        labels.extend(lab);
    }
    SceneSet {
        size: cfg.size,
        images,
        labels,
    }
}

/// A fixed colour per class for label maps (hues spread around the circle); ignore is black.
pub fn class_colour(c: u8) -> [u8; 3] {
    if c == IGNORE {
        return [0, 0, 0];
    }
    let h = (c as f32 * 0.618_034).fract() * 6.0;
    let v = if c % 2 == 0 { 1.0 } else { 0.7 };
    let x = 1.0 - (h % 2.0 - 1.0).abs();
    let (r, g, b) = match h as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    [
        (r * v * 255.0) as u8,
        (g * v * 255.0) as u8,
        (b * v * 255.0) as u8,
    ]
}

/// Tiles of `size × size` pixels (RGB) laid out in rows with a 2-pixel white gap, scaled by
/// `scale`: the preview grid and the prediction strips.
pub fn tile_rows(rows: &[Vec<Vec<[u8; 3]>>], size: usize, scale: usize) -> Result<image::RgbImage> {
    let ncols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    if rows.is_empty() || ncols == 0 {
        bail!("nothing to draw");
    }
    let t = size * scale;
    let mut out = image::RgbImage::from_pixel(
        (ncols * (t + 2) + 2) as u32,
        (rows.len() * (t + 2) + 2) as u32,
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            if tile.len() != size * size {
                bail!("tile has {} pixels, expected {}", tile.len(), size * size);
            }
            for y in 0..t {
                for x in 0..t {
                    let px = tile[(y / scale) * size + x / scale];
                    out.put_pixel(
                        (2 + c * (t + 2) + x) as u32,
                        (2 + r * (t + 2) + y) as u32,
                        image::Rgb(px),
                    );
                }
            }
        }
    }
    Ok(out)
}

/// A scene image as an RGB tile.
pub fn image_tile(img: &[f32], size: usize) -> Vec<[u8; 3]> {
    let n = size * size;
    (0..n)
        .map(|i| [0, 1, 2].map(|c| (img[c * n + i] * 255.0).round().clamp(0.0, 255.0) as u8))
        .collect()
}

/// A label map as an RGB tile.
pub fn label_tile(labels: &[u8]) -> Vec<[u8; 3]> {
    labels.iter().map(|&l| class_colour(l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_plausible_areas() {
        // Count covered pixel centres of each shape of radius 10 on a fine grid.
        let areas: Vec<usize> = (0..5)
            .map(|s| {
                (0..40 * 40)
                    .filter(|i| {
                        let (x, y) = ((i % 40) as f32, (i / 40) as f32);
                        inside(s, x, y, 20.0, 20.0, 10.0, 0.3)
                    })
                    .count()
            })
            .collect();
        assert!((areas[0] as f32 - 314.0).abs() < 20.0, "{areas:?}"); // π r²
        assert!((areas[1] as f32 - 256.0).abs() < 25.0, "{areas:?}"); // (1.6 r)²
        assert!(areas[3] < areas[0] && areas[3] > 200, "{areas:?}"); // ring = ¾ disk
        assert!(areas[2] > 80 && areas[4] > 80, "{areas:?}");
    }

    #[test]
    fn class_names_and_colours() {
        assert_eq!(NUM_CLASSES, 20);
        assert_eq!(class_name(0), "disk/brick");
        assert_eq!(class_name(19), "cross/fur");
        assert_eq!(class_colour(IGNORE), [0, 0, 0]);
        let mut cols: Vec<[u8; 3]> = (0..20).map(class_colour).collect();
        cols.sort();
        cols.dedup();
        assert_eq!(cols.len(), 20);
    }
}
