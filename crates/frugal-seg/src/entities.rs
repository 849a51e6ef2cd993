//! Entities: class-agnostic regions that ESA ranks by uncertainty before it picks superpixels.
//!
//! The paper takes entities from a pretrained entity-segmentation network; offline we use
//! Felzenszwalb & Huttenlocher's graph segmentation (classical, no training: ours) and, as a
//! labelled *oracle* upper bound, the ground-truth instance masks. See `docs/methods/esa.md`.

use crate::domains::gaussian_blur;

/// Felzenszwalb settings (ours, chosen for 64-pixel scenes: the paper's entity network has none).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FelzenszwalbConfig {
    /// `k`: larger values prefer larger components (threshold `k / |C|`), on the 0–255 scale.
    pub scale: f32,
    /// Gaussian pre-smoothing in pixels.
    pub sigma: f32,
    /// Components smaller than this are merged into a neighbour at the end.
    pub min_size: usize,
}

impl Default for FelzenszwalbConfig {
    fn default() -> Self {
        Self {
            scale: 400.0,
            sigma: 0.8,
            min_size: 40,
        }
    }
}

/// Union-find with component size and internal difference (largest MST edge inside).
struct Forest {
    parent: Vec<u32>,
    size: Vec<u32>,
    internal: Vec<f32>,
}

impl Forest {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
            internal: vec![0.0; n],
        }
    }

    fn find(&mut self, mut a: u32) -> u32 {
        while self.parent[a as usize] != a {
            let g = self.parent[self.parent[a as usize] as usize];
            self.parent[a as usize] = g;
            a = g;
        }
        a
    }

    fn union(&mut self, a: u32, b: u32, w: f32) {
        let (a, b) = if self.size[a as usize] < self.size[b as usize] {
            (b, a)
        } else {
            (a, b)
        };
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
        self.internal[a as usize] = w
            .max(self.internal[a as usize])
            .max(self.internal[b as usize]);
    }
}

/// Felzenszwalb–Huttenlocher segmentation of a `(3, H, W)` image in `[0, 1]` on the 8-connected
/// pixel grid with Euclidean RGB edge weights (0–255 scale). Returns labels `0..n` (row-major, in
/// raster order of first appearance) and `n`.
pub fn felzenszwalb(
    img: &[f32],
    height: usize,
    width: usize,
    cfg: &FelzenszwalbConfig,
) -> (Vec<u32>, usize) {
    let n = height * width;
    assert_eq!(
        img.len(),
        3 * n,
        "felzenszwalb: image is not (3, {height}, {width})"
    );
    let mut smooth: Vec<f32> = img.iter().map(|v| v * 255.0).collect();
    gaussian_blur(&mut smooth, height, width, cfg.sigma);
    let diff = |p: usize, q: usize| {
        (0..3)
            .map(|c| (smooth[c * n + p] - smooth[c * n + q]).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    let mut edges: Vec<(f32, u32, u32)> = Vec::with_capacity(4 * n);
    for y in 0..height {
        for x in 0..width {
            let p = y * width + x;
            if x + 1 < width {
                edges.push((diff(p, p + 1), p as u32, (p + 1) as u32));
            }
            if y + 1 < height {
                edges.push((diff(p, p + width), p as u32, (p + width) as u32));
                if x + 1 < width {
                    edges.push((diff(p, p + width + 1), p as u32, (p + width + 1) as u32));
                }
                if x > 0 {
                    edges.push((diff(p, p + width - 1), p as u32, (p + width - 1) as u32));
                }
            }
        }
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut f = Forest::new(n);
    for &(w, a, b) in &edges {
        let (ra, rb) = (f.find(a), f.find(b));
        if ra == rb {
            continue;
        }
        let ta = f.internal[ra as usize] + cfg.scale / f.size[ra as usize] as f32;
        let tb = f.internal[rb as usize] + cfg.scale / f.size[rb as usize] as f32;
        if w <= ta.min(tb) {
            f.union(ra, rb, w);
        }
    }
    for &(w, a, b) in &edges {
        let (ra, rb) = (f.find(a), f.find(b));
        if ra != rb
            && (f.size[ra as usize] < cfg.min_size as u32
                || f.size[rb as usize] < cfg.min_size as u32)
        {
            f.union(ra, rb, w);
        }
    }
    dense_labels(
        (0..n as u32)
            .map(|p| f.find(p))
            .collect::<Vec<_>>()
            .as_slice(),
    )
}

/// Renumber arbitrary ids to `0..n` in raster order of first appearance.
pub fn dense_labels<T: Copy + Eq + std::hash::Hash>(ids: &[T]) -> (Vec<u32>, usize) {
    let mut map = std::collections::HashMap::new();
    let out = ids
        .iter()
        .map(|&id| {
            let next = map.len() as u32;
            *map.entry(id).or_insert(next)
        })
        .collect();
    (out, map.len())
}

/// Oracle entities: the ground-truth instance masks, each 4-connected piece its own entity (an
/// object split by an occluder becomes two entities, as an entity network would see it).
pub fn oracle_entities(instances: &[u16], height: usize, width: usize) -> (Vec<u32>, usize) {
    let ids: Vec<u32> = instances.iter().map(|&v| v as u32).collect();
    crate::superpixels::enforce_connectivity(&ids, height, width, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(h: usize, w: usize, f: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        let n = h * w;
        let mut v = vec![0f32; 3 * n];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    v[c * n + y * w + x] = f(x, y);
                }
            }
        }
        v
    }

    #[test]
    fn flat_regions_become_one_component_each() {
        // A 12×12 image: dark square 0..6 × 0..6 on a bright background.
        let img = image(12, 12, |x, y| if x < 6 && y < 6 { 0.1 } else { 0.9 });
        let cfg = FelzenszwalbConfig {
            scale: 100.0,
            sigma: 0.0,
            min_size: 1,
        };
        let (l, n) = felzenszwalb(&img, 12, 12, &cfg);
        assert_eq!(n, 2);
        for y in 0..12 {
            for x in 0..12 {
                assert_eq!(l[y * 12 + x] == l[0], x < 6 && y < 6, "({x}, {y})");
            }
        }
    }

    #[test]
    fn scale_controls_merging_and_min_size_absorbs_specks() {
        // Two regions that differ by 10 grey levels in each channel (edge weight √3·10 ≈ 17.3 on
        // 0–255): a small k keeps them apart (50/72 < 17.3), a large one merges them (2000/72).
        let img = image(12, 12, |x, _| if x < 6 { 0.5 } else { 0.5 + 10.0 / 255.0 });
        let small = FelzenszwalbConfig {
            scale: 50.0,
            sigma: 0.0,
            min_size: 1,
        };
        assert_eq!(felzenszwalb(&img, 12, 12, &small).1, 2);
        let large = FelzenszwalbConfig {
            scale: 2000.0,
            ..small.clone()
        };
        assert_eq!(felzenszwalb(&img, 12, 12, &large).1, 1);
        // One bright pixel in a dark field: its own component, unless min_size absorbs it.
        let img = image(12, 12, |x, y| if (x, y) == (5, 5) { 1.0 } else { 0.0 });
        assert_eq!(felzenszwalb(&img, 12, 12, &small).1, 2);
        let absorb = FelzenszwalbConfig {
            min_size: 4,
            ..small
        };
        assert_eq!(felzenszwalb(&img, 12, 12, &absorb).1, 1);
    }

    #[test]
    fn oracle_entities_split_occluded_instances() {
        // Instance 1 cut in two by instance 2 → three entities.
        let inst = [1u16, 2, 1, 1, 2, 1];
        let (l, n) = oracle_entities(&inst, 2, 3);
        assert_eq!(n, 3);
        assert_ne!(l[0], l[2]);
        assert_eq!(l[0], l[3]);
        assert_eq!(l[1], l[4]);
    }
}
