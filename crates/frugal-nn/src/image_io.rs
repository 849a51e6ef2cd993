//! Images in and out: loading (PNG/JPEG via the `image` crate), resizing, conversion between
//! 8-bit pixels and `[0, 1]` floats, PNG writing and JPEG round trips.
//!
//! An [`ImageF32`] is channel-major (`C × H × W`) floats in `[0, 1]` nominally; values outside
//! that range are allowed in memory (a recoded image may overshoot) and are clipped only when
//! converted to 8 bits.

use anyhow::{Context, Result};
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage};
use std::path::Path;

/// Channel-major float image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageF32 {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// How many channels a model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    Gray,
    Rgb,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }
}

impl ImageF32 {
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != channels * height * width {
            anyhow::bail!(
                "image data has {} values, {channels}x{height}x{width} needs {}",
                data.len(),
                channels * height * width
            );
        }
        Ok(Self {
            channels,
            height,
            width,
            data,
        })
    }

    /// Pixels rounded and clipped to 8 bits, channel-major.
    pub fn to_u8(&self) -> Vec<u8> {
        self.data.iter().map(|&v| to_u8(v)).collect()
    }

    /// The image as it would be after saving to 8 bits and reading back.
    pub fn quantized(&self) -> Self {
        Self {
            data: self.data.iter().map(|&v| to_u8(v) as f32 / 255.0).collect(),
            ..self.clone()
        }
    }

    fn to_dynamic(&self) -> Result<DynamicImage> {
        let (h, w) = (self.height as u32, self.width as u32);
        let px = self.to_u8();
        let hw = self.height * self.width;
        Ok(match self.channels {
            1 => {
                DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, px).context("gray buffer size")?)
            }
            3 => {
                let mut img: RgbImage = ImageBuffer::new(w, h);
                for (i, p) in img.pixels_mut().enumerate() {
                    *p = Rgb([px[i], px[hw + i], px[2 * hw + i]]);
                }
                DynamicImage::ImageRgb8(img)
            }
            c => anyhow::bail!("cannot encode an image with {c} channels"),
        })
    }

    fn from_dynamic(img: &DynamicImage, want: Channels) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let data = match want {
            Channels::Gray => img
                .to_luma8()
                .pixels()
                .map(|p| p.0[0] as f32 / 255.0)
                .collect(),
            Channels::Rgb => {
                let rgb = img.to_rgb8();
                let mut d = vec![0f32; 3 * h * w];
                for (i, p) in rgb.pixels().enumerate() {
                    for c in 0..3 {
                        d[c * h * w + i] = p.0[c] as f32 / 255.0;
                    }
                }
                d
            }
        };
        Self {
            channels: want.count(),
            height: h,
            width: w,
            data,
        }
    }

    /// Write as PNG (8 bits per channel).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        self.to_dynamic()?
            .save_with_format(path, image::ImageFormat::Png)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Encode as JPEG at `quality` (1..=100) and decode again.
    pub fn jpeg_roundtrip(&self, quality: u8) -> Result<Self> {
        let mut buf = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality);
        self.to_dynamic()?.write_with_encoder(enc)?;
        let img = image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg)?;
        let want = if self.channels == 1 {
            Channels::Gray
        } else {
            Channels::Rgb
        };
        Ok(Self::from_dynamic(&img, want))
    }

    /// Bilinear resize (of the 8-bit image; inputs are clipped to `[0, 1]` first).
    pub fn resize(&self, height: usize, width: usize) -> Result<Self> {
        let img = self.to_dynamic()?.resize_exact(
            width as u32,
            height as u32,
            image::imageops::FilterType::Triangle,
        );
        let want = if self.channels == 1 {
            Channels::Gray
        } else {
            Channels::Rgb
        };
        Ok(Self::from_dynamic(&img, want))
    }
}

/// Round and clip a `[0, 1]` value to 8 bits.
pub fn to_u8(v: f32) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

/// Load an image file, converting to the requested channel layout. A colour image asked for as
/// grey is converted to luma; a grey image asked for as RGB is an error (a model trained on
/// colour would silently get wrong input otherwise).
pub fn load(path: &Path, want: Channels) -> Result<ImageF32> {
    let img = image::open(path).with_context(|| format!("cannot read image {}", path.display()))?;
    let is_gray = matches!(
        img.color(),
        image::ColorType::L8
            | image::ColorType::L16
            | image::ColorType::La8
            | image::ColorType::La16
    );
    if want == Channels::Rgb && is_gray {
        anyhow::bail!(
            "{} is a grey-scale image but the model expects RGB",
            path.display()
        );
    }
    Ok(ImageF32::from_dynamic(&img, want))
}

/// A grey image from 8-bit pixels (row-major).
pub fn gray_from_u8(height: usize, width: usize, px: &[u8]) -> Result<ImageF32> {
    ImageF32::new(
        1,
        height,
        width,
        px.iter().map(|&p| p as f32 / 255.0).collect(),
    )
}

/// Lay equally sized grey images side by side (columns) and stacked (rows), scaled up by
/// `scale` with nearest neighbour, with a 1-pixel white gap: a picture strip.
pub fn grid(rows: &[Vec<ImageF32>], scale: usize) -> Result<GrayImage> {
    let first = rows
        .first()
        .and_then(|r| r.first())
        .context("empty picture grid")?;
    let (h, w) = (first.height * scale, first.width * scale);
    let ncols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut out = GrayImage::from_pixel(
        (ncols * (w + 1) + 1) as u32,
        (rows.len() * (h + 1) + 1) as u32,
        Luma([255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let px = img.to_u8();
            for y in 0..h {
                for x in 0..w {
                    let v = px[(y / scale) * img.width + x / scale];
                    out.put_pixel(
                        (1 + c * (w + 1) + x) as u32,
                        (1 + r * (h + 1) + y) as u32,
                        Luma([v]),
                    );
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_is_the_8bit_image_and_gray_for_rgb_is_refused() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("frugal-nn-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let img = ImageF32::new(1, 2, 3, vec![0.0, 0.1, 0.5, 1.2, -0.3, 0.999])?;
        let p = dir.join("a.png");
        img.save_png(&p)?;
        let back = load(&p, Channels::Gray)?;
        assert_eq!(back, img.quantized());
        assert_eq!(back.to_u8(), vec![0, 26, 128, 255, 0, 255]);
        let err = load(&p, Channels::Rgb).unwrap_err().to_string();
        assert!(err.contains("grey-scale"), "{err}");
        let bad = dir.join("bad.png");
        std::fs::write(&bad, b"not a png")?;
        assert!(load(&bad, Channels::Gray).is_err());
        let j = img.jpeg_roundtrip(90)?;
        assert_eq!((j.height, j.width), (2, 3));
        assert_eq!(img.resize(4, 6)?.data.len(), 24);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
