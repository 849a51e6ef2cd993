//! Photographs used as textures: eight images bundled with scikit-image, exported once from its
//! PyPI wheel by `scripts/zpressor/fetch-textures.sh`. Each file is checked against its sha256
//! and downsampled to a small square.

use super::render::Texture;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

/// File names and sha256 of the photographs (from scikit-image 0.25.2).
pub const PHOTOS: [(&str, &str); 8] = [
    (
        "astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    (
        "coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    ),
    (
        "chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    (
        "rocket.jpg",
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    ),
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
        "motorcycle_left.png",
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    ),
];

/// The default texture folder: `$HOME/.cache/frugal/zpressor-textures`.
pub fn default_dir() -> std::path::PathBuf {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default()
        .join(".cache/frugal/zpressor-textures")
}

/// Loads and checks every photograph, each resized to `side`×`side`.
pub fn load(dir: &Path, side: usize) -> Result<Vec<Texture>> {
    PHOTOS
        .iter()
        .map(|(name, sha)| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "reading texture {} (export them with scripts/zpressor/fetch-textures.sh)",
                    path.display()
                )
            })?;
            let got = format!("{:x}", Sha256::digest(&bytes));
            if got != *sha {
                bail!(
                    "texture {} has sha256 {got}, expected {sha}",
                    path.display()
                );
            }
            let img = image::load_from_memory(&bytes)
                .with_context(|| format!("decoding {}", path.display()))?
                .to_rgb8();
            let small = image::imageops::resize(
                &img,
                side as u32,
                side as u32,
                image::imageops::FilterType::Triangle,
            );
            Ok(Texture {
                width: side,
                height: side,
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
        })
        .collect()
}
