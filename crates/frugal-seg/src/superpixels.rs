//! SLIC superpixels (Achanta et al.): k-means in (L*, a*, b*, x, y) with a grid of seeds, each
//! centre searching only a `2S × 2S` window, then a connectivity clean-up that gives every
//! superpixel one connected piece. ESA's annotator labels a whole superpixel with one click; see
//! `docs/methods/esa.md`.

use std::collections::VecDeque;

/// SLIC settings. Defaults follow scikit-image's `slic` (100 segments, compactness 10, 10
/// iterations, pieces under half a grid cell merged) except where noted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlicConfig {
    /// Wanted number of superpixels (the grid has about this many seeds).
    pub segments: usize,
    /// Weight of the spatial distance against the Lab distance (`m` in the paper).
    pub compactness: f32,
    pub iterations: usize,
    /// Connected pieces smaller than this fraction of a grid cell (`S²`) are merged into a
    /// neighbour.
    pub min_size_factor: f32,
    /// Gaussian pre-smoothing in pixels (scikit-image's `sigma`; its default is 0, ours is 1:
    /// on noisy, textured target scenes unsmoothed clusters fragment into specks that the
    /// clean-up then merges into a few huge superpixels).
    pub sigma: f32,
}

impl Default for SlicConfig {
    fn default() -> Self {
        Self {
            segments: 100,
            compactness: 10.0,
            iterations: 10,
            min_size_factor: 0.5,
            sigma: 1.0,
        }
    }
}

/// sRGB in `[0, 1]` → CIE L*a*b* (D65 white).
pub fn rgb_to_lab(rgb: [f32; 3]) -> [f32; 3] {
    let lin = |c: f32| {
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f32| {
        if t > 0.008_856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// SLIC superpixels of a `(3, H, W)` channel-major image in `[0, 1]`. Returns a label per pixel
/// (row-major), numbered `0..n` with every label one 4-connected piece, and `n`.
pub fn slic(img: &[f32], height: usize, width: usize, cfg: &SlicConfig) -> (Vec<u32>, usize) {
    let n = height * width;
    assert_eq!(
        img.len(),
        3 * n,
        "slic: image is not (3, {height}, {width})"
    );
    let mut img = img.to_vec();
    crate::domains::gaussian_blur(&mut img, height, width, cfg.sigma);
    let lab: Vec<[f32; 3]> = (0..n)
        .map(|i| rgb_to_lab([img[i], img[n + i], img[2 * n + i]]))
        .collect();
    // Grid of seeds: ny × nx cells of about S × S pixels.
    let step = ((n as f32) / cfg.segments.max(1) as f32).sqrt().max(1.0);
    let ny = ((height as f32 / step).round() as usize).clamp(1, height);
    let nx = ((width as f32 / step).round() as usize).clamp(1, width);
    let (sy, sx) = (height as f32 / ny as f32, width as f32 / nx as f32);
    let s = 0.5 * (sy + sx);
    // centre = [L, a, b, x, y]
    let mut centres: Vec<[f32; 5]> = Vec::with_capacity(ny * nx);
    for j in 0..ny {
        for i in 0..nx {
            let (x, y) = ((i as f32 + 0.5) * sx, (j as f32 + 0.5) * sy);
            let p = (y as usize).min(height - 1) * width + (x as usize).min(width - 1);
            let l = lab[p];
            centres.push([l[0], l[1], l[2], x - 0.5, y - 0.5]);
        }
    }
    let mut label = vec![0u32; n];
    let mut dist = vec![f32::INFINITY; n];
    let spatial = (cfg.compactness / s).powi(2);
    let reach = (2.0 * s).ceil() as isize;
    for _ in 0..cfg.iterations.max(1) {
        dist.fill(f32::INFINITY);
        for (k, c) in centres.iter().enumerate() {
            let (cx, cy) = (c[3].round() as isize, c[4].round() as isize);
            for y in (cy - reach).max(0)..(cy + reach + 1).min(height as isize) {
                for x in (cx - reach).max(0)..(cx + reach + 1).min(width as isize) {
                    let p = y as usize * width + x as usize;
                    let l = lab[p];
                    let dc = (l[0] - c[0]).powi(2) + (l[1] - c[1]).powi(2) + (l[2] - c[2]).powi(2);
                    let ds = (x as f32 - c[3]).powi(2) + (y as f32 - c[4]).powi(2);
                    let d = dc + spatial * ds;
                    if d < dist[p] {
                        dist[p] = d;
                        label[p] = k as u32;
                    }
                }
            }
        }
        let mut sums = vec![[0f64; 6]; centres.len()];
        for p in 0..n {
            if dist[p].is_finite() {
                let s = &mut sums[label[p] as usize];
                let l = lab[p];
                s[0] += l[0] as f64;
                s[1] += l[1] as f64;
                s[2] += l[2] as f64;
                s[3] += (p % width) as f64;
                s[4] += (p / width) as f64;
                s[5] += 1.0;
            }
        }
        for (c, s) in centres.iter_mut().zip(&sums) {
            if s[5] > 0.0 {
                for d in 0..5 {
                    c[d] = (s[d] / s[5]) as f32;
                }
            }
        }
    }
    // Pixels no window reached (only possible with extreme settings) join centre 0's label.
    let min_size = ((cfg.min_size_factor * s * s) as usize).max(1);
    enforce_connectivity(&label, height, width, min_size)
}

/// Relabel `label` so every label is one 4-connected piece, merging pieces smaller than
/// `min_size` into the neighbouring piece met first (scanning in raster order, as in the SLIC
/// paper's clean-up). Returns labels `0..n` and `n`.
pub fn enforce_connectivity(
    label: &[u32],
    height: usize,
    width: usize,
    min_size: usize,
) -> (Vec<u32>, usize) {
    let n = height * width;
    let mut comp = vec![u32::MAX; n];
    let mut pieces: Vec<Vec<usize>> = vec![];
    for start in 0..n {
        if comp[start] != u32::MAX {
            continue;
        }
        let id = pieces.len() as u32;
        let mut members = vec![start];
        comp[start] = id;
        let mut queue = VecDeque::from([start]);
        while let Some(p) = queue.pop_front() {
            for q in neighbours4(p, height, width) {
                if comp[q] == u32::MAX && label[q] == label[start] {
                    comp[q] = id;
                    members.push(q);
                    queue.push_back(q);
                }
            }
        }
        pieces.push(members);
    }
    // Merge small pieces, in raster order of their first pixel, into an adjacent piece.
    let mut target: Vec<u32> = (0..pieces.len() as u32).collect();
    let find = |t: &Vec<u32>, mut a: u32| {
        while t[a as usize] != a {
            a = t[a as usize];
        }
        a
    };
    let mut size: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    for id in 0..pieces.len() {
        if size[id] >= min_size || pieces.len() == 1 {
            continue;
        }
        // The first neighbouring piece around the piece's first pixel, else any neighbour.
        let mut into = None;
        for &p in &pieces[id] {
            for q in neighbours4(p, height, width) {
                let other = find(&target, comp[q]);
                if other != id as u32 {
                    into = Some(other);
                    break;
                }
            }
            if into.is_some() {
                break;
            }
        }
        if let Some(o) = into {
            target[id] = o;
            size[o as usize] += size[id];
        }
    }
    let mut remap = vec![u32::MAX; pieces.len()];
    let mut next = 0u32;
    let mut out = vec![0u32; n];
    for p in 0..n {
        let root = find(&target, comp[p]) as usize;
        if remap[root] == u32::MAX {
            remap[root] = next;
            next += 1;
        }
        out[p] = remap[root];
    }
    (out, next as usize)
}

/// The 4-neighbours of pixel `p`.
pub fn neighbours4(p: usize, height: usize, width: usize) -> impl Iterator<Item = usize> {
    let (x, y) = (p % width, p / width);
    [
        (x > 0).then(|| p - 1),
        (x + 1 < width).then(|| p + 1),
        (y > 0).then(|| p - width),
        (y + 1 < height).then(|| p + width),
    ]
    .into_iter()
    .flatten()
}

/// Whether every label of a map is one 4-connected piece (a check for tests and callers).
pub fn all_connected(label: &[u32], height: usize, width: usize) -> bool {
    let (_, n) = enforce_connectivity(label, height, width, 1);
    let mut v = label.to_vec();
    v.sort_unstable();
    v.dedup();
    n == v.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(h: usize, w: usize, mut f: impl FnMut(usize, usize) -> [f32; 3]) -> Vec<f32> {
        let n = h * w;
        let mut v = vec![0f32; 3 * n];
        for y in 0..h {
            for x in 0..w {
                let c = f(x, y);
                for k in 0..3 {
                    v[k * n + y * w + x] = c[k];
                }
            }
        }
        v
    }

    #[test]
    fn lab_of_white_black_and_red() {
        let w = rgb_to_lab([1.0, 1.0, 1.0]);
        assert!((w[0] - 100.0).abs() < 0.05 && w[1].abs() < 0.05 && w[2].abs() < 0.05);
        let k = rgb_to_lab([0.0, 0.0, 0.0]);
        assert!(k[0].abs() < 1e-3);
        // sRGB red: L 53.24, a 80.09, b 67.20
        let r = rgb_to_lab([1.0, 0.0, 0.0]);
        assert!((r[0] - 53.24).abs() < 0.05, "{r:?}");
        assert!((r[1] - 80.09).abs() < 0.1, "{r:?}");
        assert!((r[2] - 67.20).abs() < 0.1, "{r:?}");
    }

    #[test]
    fn two_flat_halves_give_the_two_halves() {
        // 8×16 image, left half black, right half white, 2 segments.
        let img = image(8, 16, |x, _| if x < 8 { [0.0; 3] } else { [1.0; 3] });
        let (l, n) = slic(
            &img,
            8,
            16,
            &SlicConfig {
                segments: 2,
                ..Default::default()
            },
        );
        assert_eq!(n, 2);
        for y in 0..8 {
            for x in 0..16 {
                assert_eq!(l[y * 16 + x], (x >= 8) as u32, "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn colour_beats_the_grid_at_low_compactness() {
        // A 12×24 image whose colour edge sits at x = 8, while the 2-cell grid splits at x = 12:
        // with low compactness the superpixels follow the colour edge.
        let img = image(12, 24, |x, _| {
            if x < 8 {
                [1.0, 0.0, 0.0]
            } else {
                [0.0, 0.0, 1.0]
            }
        });
        let (l, n) = slic(
            &img,
            12,
            24,
            &SlicConfig {
                segments: 2,
                compactness: 0.1,
                ..Default::default()
            },
        );
        assert_eq!(n, 2);
        for y in 0..12 {
            for x in 0..24 {
                assert_eq!(l[y * 24 + x] == l[0], x < 8, "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn flat_image_gives_the_grid_and_noise_stays_connected() {
        let img = image(16, 16, |_, _| [0.5; 3]);
        let (l, n) = slic(
            &img,
            16,
            16,
            &SlicConfig {
                segments: 16,
                ..Default::default()
            },
        );
        assert_eq!(n, 16);
        // Every superpixel of a flat image is a 4×4 grid cell.
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(l[y * 16 + x], l[(y / 4 * 4) * 16 + x / 4 * 4]);
            }
        }
        // Random noise: every label one connected piece, labels dense 0..n.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let img = image(24, 24, |_, _| [rng.gen(), rng.gen(), rng.gen()]);
        let (l, n) = slic(&img, 24, 24, &SlicConfig::default());
        assert!(all_connected(&l, 24, 24));
        assert_eq!(*l.iter().max().unwrap() as usize + 1, n);
        assert!(n > 10 && n < 200, "{n}");
    }

    #[test]
    fn connectivity_splits_and_merges() {
        // Label 0 in two separate pieces, plus a one-pixel piece of label 2.
        #[rustfmt::skip]
        let l = [
            0, 0, 1, 0,
            0, 0, 1, 0,
            1, 1, 1, 1,
            1, 2, 1, 1,
        ];
        let (out, n) = enforce_connectivity(&l, 4, 4, 1);
        assert_eq!(n, 4); // left block, bar, right column, single pixel
        assert_ne!(out[0], out[3]);
        let (out, n) = enforce_connectivity(&l, 4, 4, 3);
        // The right column (2 px) and the single pixel (1 px) are merged into the bar.
        assert_eq!(n, 2);
        assert_eq!(out[3], out[2]);
        assert_eq!(out[13], out[12]);
        assert!(all_connected(&out, 4, 4));
    }
}
