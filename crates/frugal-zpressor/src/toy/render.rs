//! Procedural posed scenes for the toy (ours): a small ray caster of textured primitives (a
//! ground plane, spheres and boxes) seen by pinhole cameras on an orbit around the scene.
//! Textures are photographs (see [`super::textures`]); shading is Lambertian with one directional
//! light plus ambient, and rays that miss see a sky gradient.

use rand::Rng;

pub type Vec3 = [f32; 3];

fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn add(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn scale(a: Vec3, s: f32) -> Vec3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
pub fn dot(a: Vec3, b: Vec3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn normalize(a: Vec3) -> Vec3 {
    scale(a, 1.0 / dot(a, a).sqrt().max(1e-12))
}

/// An RGB texture, values in [0, 1], row-major.
#[derive(Debug, Clone)]
pub struct Texture {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<[f32; 3]>,
}

impl Texture {
    /// Nearest-texel lookup with wrap-around.
    pub fn color_at(&self, u: f32, v: f32) -> [f32; 3] {
        let fx = u - u.floor();
        let fy = v - v.floor();
        let x = ((fx * self.width as f32) as usize).min(self.width - 1);
        let y = ((fy * self.height as f32) as usize).min(self.height - 1);
        self.rgb[y * self.width + x]
    }
}

#[derive(Debug, Clone)]
enum Shape {
    Sphere {
        centre: Vec3,
        radius: f32,
    },
    /// Axis-aligned box.
    Cuboid {
        min: Vec3,
        max: Vec3,
    },
    /// The plane y = 0, textured with `tile` repeats per unit.
    Ground {
        tile: f32,
    },
}

#[derive(Debug, Clone)]
struct Object {
    shape: Shape,
    texture: usize,
    /// Texture coordinate offset, so two objects with one photo show different parts.
    uv_offset: [f32; 2],
}

/// A random scene: textured ground and 3–5 objects within a disc of radius 1.5.
#[derive(Debug, Clone)]
pub struct Scene {
    objects: Vec<Object>,
    light: Vec3,
    sky: [Vec3; 2],
}

impl Scene {
    pub fn random(rng: &mut impl Rng, textures: usize) -> Self {
        let mut objects = vec![Object {
            shape: Shape::Ground {
                tile: rng.gen_range(0.3..0.8),
            },
            texture: rng.gen_range(0..textures),
            uv_offset: [rng.gen(), rng.gen()],
        }];
        let n = rng.gen_range(3..=5);
        for _ in 0..n {
            let r = rng.gen_range(0.0f32..1.5);
            let a = rng.gen_range(0.0f32..std::f32::consts::TAU);
            let (x, z) = (r * a.cos(), r * a.sin());
            let size = rng.gen_range(0.25f32..0.6);
            let shape = if rng.gen_bool(0.5) {
                Shape::Sphere {
                    centre: [x, size, z],
                    radius: size,
                }
            } else {
                let h = rng.gen_range(0.3f32..1.4);
                Shape::Cuboid {
                    min: [x - size, 0.0, z - size],
                    max: [x + size, h, z + size],
                }
            };
            objects.push(Object {
                shape,
                texture: rng.gen_range(0..textures),
                uv_offset: [rng.gen(), rng.gen()],
            });
        }
        let light = normalize([rng.gen_range(-1.0..1.0), 1.5, rng.gen_range(-1.0..1.0)]);
        let top = [
            rng.gen_range(0.3..0.6),
            rng.gen_range(0.5..0.8),
            rng.gen_range(0.7..1.0),
        ];
        Self {
            objects,
            light,
            sky: [top, [0.9, 0.9, 0.85]],
        }
    }

    /// Nearest hit along the ray: (distance, normal, uv, texture index of the object).
    fn hit(&self, o: Vec3, d: Vec3) -> Option<(f32, Vec3, [f32; 2], usize)> {
        let mut best: Option<(f32, Vec3, [f32; 2], usize)> = None;
        for obj in &self.objects {
            let h = match &obj.shape {
                Shape::Ground { tile } => {
                    if d[1].abs() < 1e-6 {
                        None
                    } else {
                        let t = -o[1] / d[1];
                        (t > 1e-4).then(|| {
                            let p = add(o, scale(d, t));
                            (t, [0.0, 1.0, 0.0], [p[0] * tile, p[2] * tile])
                        })
                    }
                }
                Shape::Sphere { centre, radius } => {
                    let oc = sub(o, *centre);
                    let b = dot(oc, d);
                    let c = dot(oc, oc) - radius * radius;
                    let disc = b * b - c;
                    if disc < 0.0 {
                        None
                    } else {
                        let s = disc.sqrt();
                        let t = if -b - s > 1e-4 { -b - s } else { -b + s };
                        (t > 1e-4).then(|| {
                            let n = normalize(sub(add(o, scale(d, t)), *centre));
                            let u = 0.5 + n[2].atan2(n[0]) / std::f32::consts::TAU;
                            let v = 0.5 - n[1].asin() / std::f32::consts::PI;
                            (t, n, [u, v])
                        })
                    }
                }
                Shape::Cuboid { min, max } => {
                    let mut t0 = f32::NEG_INFINITY;
                    let mut t1 = f32::INFINITY;
                    let mut axis = 0;
                    for i in 0..3 {
                        let inv = 1.0 / d[i];
                        let (mut a, mut b) = ((min[i] - o[i]) * inv, (max[i] - o[i]) * inv);
                        if a > b {
                            std::mem::swap(&mut a, &mut b);
                        }
                        if a > t0 {
                            t0 = a;
                            axis = i;
                        }
                        t1 = t1.min(b);
                    }
                    (t0 <= t1 && t0 > 1e-4).then(|| {
                        let p = add(o, scale(d, t0));
                        let mut n = [0.0; 3];
                        n[axis] = -d[axis].signum();
                        let (a, b) = match axis {
                            0 => (p[2], p[1]),
                            1 => (p[0], p[2]),
                            _ => (p[0], p[1]),
                        };
                        (t0, n, [a * 0.7, b * 0.7])
                    })
                }
            };
            if let Some((t, n, uv)) = h {
                if best.as_ref().is_none_or(|b| t < b.0) {
                    best = Some((
                        t,
                        n,
                        [uv[0] + obj.uv_offset[0], uv[1] + obj.uv_offset[1]],
                        obj.texture,
                    ));
                }
            }
        }
        best
    }

    /// Colour seen along a ray.
    pub fn shade(&self, o: Vec3, d: Vec3, textures: &[Texture]) -> [f32; 3] {
        match self.hit(o, d) {
            Some((_, n, uv, tex)) => {
                let albedo = textures[tex].color_at(uv[0], uv[1]);
                let l = 0.35 + 0.65 * dot(n, self.light).max(0.0);
                [albedo[0] * l, albedo[1] * l, albedo[2] * l]
            }
            None => {
                let t = (0.5 * (d[1] + 1.0)).clamp(0.0, 1.0);
                let [a, b] = self.sky;
                [
                    b[0] + (a[0] - b[0]) * t,
                    b[1] + (a[1] - b[1]) * t,
                    b[2] + (a[2] - b[2]) * t,
                ]
            }
        }
    }
}

/// A pinhole camera: camera-to-world rotation (columns: right, down, forward; the OpenCV
/// convention) and centre, and a square image with field of view `fov_deg`.
#[derive(Debug, Clone, Copy)]
pub struct Camera {
    pub right: Vec3,
    pub down: Vec3,
    pub forward: Vec3,
    pub centre: Vec3,
    pub fov_deg: f32,
}

impl Camera {
    /// A camera at `centre` looking at `target` with world up +y.
    pub fn look_at(centre: Vec3, target: Vec3, fov_deg: f32) -> Self {
        let forward = normalize(sub(target, centre));
        let right = normalize(cross(forward, [0.0, 1.0, 0.0]));
        let down = cross(forward, right);
        Self {
            right,
            down,
            forward,
            centre,
            fov_deg,
        }
    }

    /// A camera on the orbit: azimuth (radians), radius and height, looking at (0, 0.4, 0).
    pub fn on_orbit(azimuth: f32, radius: f32, height: f32) -> Self {
        Self::look_at(
            [radius * azimuth.cos(), height, radius * azimuth.sin()],
            [0.0, 0.4, 0.0],
            55.0,
        )
    }

    /// Row-major 4×4 camera-to-world matrix.
    pub fn extrinsic(&self) -> [f32; 16] {
        let (r, d, f, c) = (self.right, self.down, self.forward, self.centre);
        [
            r[0], d[0], f[0], c[0], r[1], d[1], f[1], c[1], r[2], d[2], f[2], c[2], 0.0, 0.0, 0.0,
            1.0,
        ]
    }

    /// World-space unit direction of the ray through pixel (x, y) (pixel centres).
    pub fn ray(&self, x: usize, y: usize, size: usize) -> Vec3 {
        let f = 0.5 * size as f32 / (0.5 * self.fov_deg.to_radians()).tan();
        let u = (x as f32 + 0.5 - 0.5 * size as f32) / f;
        let v = (y as f32 + 0.5 - 0.5 * size as f32) / f;
        normalize(add(
            add(scale(self.right, u), scale(self.down, v)),
            self.forward,
        ))
    }
}

/// Renders `scene` through `cam`: `size`×`size` RGB, channel-major [3, size, size].
pub fn render(scene: &Scene, cam: &Camera, size: usize, textures: &[Texture]) -> Vec<f32> {
    let mut out = vec![0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let c = scene.shade(cam.centre, cam.ray(x, y, size), textures);
            for ch in 0..3 {
                out[ch * size * size + y * size + x] = c[ch];
            }
        }
    }
    out
}

/// Plücker coordinates of every pixel's ray, channel-major [6, size, size]: direction d and
/// moment o × d. They tell the network where each pixel looks from, independent of the scene.
pub fn plucker(cam: &Camera, size: usize) -> Vec<f32> {
    let mut out = vec![0f32; 6 * size * size];
    for y in 0..size {
        for x in 0..size {
            let d = cam.ray(x, y, size);
            let m = cross(cam.centre, d);
            for ch in 0..3 {
                out[ch * size * size + y * size + x] = d[ch];
                out[(ch + 3) * size * size + y * size + x] = m[ch];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orbit_cameras_are_rigid_and_look_down_at_the_ground_and_up_at_the_sky() {
        let cam = Camera::on_orbit(0.7, 4.0, 1.5);
        crate::anchors::check_rigid(&cam.extrinsic(), Default::default(), 0, 0).unwrap();
        // A scene of only the ground: the bottom row hits it (red texture), the top row sees sky.
        let scene = Scene {
            objects: vec![Object {
                shape: Shape::Ground { tile: 1.0 },
                texture: 0,
                uv_offset: [0.0, 0.0],
            }],
            light: [0.0, 1.0, 0.0],
            sky: [[0.2, 0.4, 0.9], [0.9, 0.9, 0.9]],
        };
        let tex = [Texture {
            width: 1,
            height: 1,
            rgb: vec![[1.0, 0.0, 0.0]],
        }];
        let img = render(&scene, &cam, 16, &tex);
        let px = |x: usize, y: usize| {
            [
                img[y * 16 + x],
                img[256 + y * 16 + x],
                img[512 + y * 16 + x],
            ]
        };
        assert_eq!(
            px(8, 15),
            [1.0, 0.0, 0.0],
            "ground, lit from straight above"
        );
        assert!(px(8, 0)[2] > 0.5, "sky at the top: {:?}", px(8, 0));
        // A unit sphere in front of the camera occludes the ground.
        let cam = Camera::look_at([0.0, 1.0, -4.0], [0.0, 1.0, 0.0], 40.0);
        let mut s2 = scene.clone();
        s2.objects.push(Object {
            shape: Shape::Sphere {
                centre: [0.0, 1.0, 0.0],
                radius: 1.0,
            },
            texture: 1,
            uv_offset: [0.0, 0.0],
        });
        let tex2 = [
            tex[0].clone(),
            Texture {
                width: 1,
                height: 1,
                rgb: vec![[0.0, 1.0, 0.0]],
            },
        ];
        let img = render(&s2, &cam, 16, &tex2);
        assert!(
            img[256 + 8 * 16 + 8] > 0.3 && img[8 * 16 + 8] == 0.0,
            "green sphere in the middle"
        );
    }
}
