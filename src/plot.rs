//! Figures as PNG files, drawn without a plotting stack.

use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

/// One panel of a scatter figure: 2-D points (row-major `[n, 2]`) and a title colour.
pub struct Panel<'a> {
    /// The points, `x0, y0, x1, y1, …`.
    pub points: &'a [f32],
    /// The colour of the points.
    pub colour: [u8; 3],
}

/// Draws the panels side by side, `size`×`size` pixels each, on a common square window
/// `[-extent, extent]²`, and writes a PNG to `path` atomically. Dense regions darken, so the
/// figure shows density as well as support.
pub fn scatter_png(
    path: impl AsRef<Path>,
    panels: &[Panel<'_>],
    extent: f32,
    size: u32,
) -> Result<()> {
    if panels.is_empty() || size < 8 || !(extent.is_finite() && extent > 0.0) {
        return Err(Error::InvalidArgument {
            name: "panels",
            reason: "a scatter figure needs at least one panel, size ≥ 8 and a positive extent"
                .into(),
        });
    }
    let gap = 8;
    let width = panels.len() as u32 * (size + gap) - gap;
    let mut img = RgbImage::from_pixel(width, size, Rgb([255, 255, 255]));
    let mut ink = vec![0.0f32; (width * size) as usize];
    for (k, panel) in panels.iter().enumerate() {
        let x0 = k as u32 * (size + gap);
        for p in panel.points.chunks_exact(2) {
            let px = ((p[0] / extent + 1.0) * 0.5 * size as f32).floor();
            let py = ((1.0 - p[1] / extent) * 0.5 * size as f32).floor();
            if px >= 0.0 && py >= 0.0 && (px as u32) < size && (py as u32) < size {
                let i = (py as u32 * width + x0 + px as u32) as usize;
                ink[i] += 1.0;
            }
        }
        // Colour each pixel by its ink: one point is light, many are saturated.
        for y in 0..size {
            for x in 0..size {
                let i = (y * width + x0 + x) as usize;
                let a = 1.0 - (-0.6 * ink[i]).exp();
                let c = panel
                    .colour
                    .map(|c| (255.0 + a * (f32::from(c) - 255.0)) as u8);
                img.put_pixel(x0 + x, y, Rgb(c));
            }
        }
        // Frame.
        for t in 0..size {
            for (x, y) in [(x0 + t, 0), (x0 + t, size - 1), (x0, t), (x0 + size - 1, t)] {
                img.put_pixel(x, y, Rgb([160, 160, 160]));
            }
        }
    }
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::InvalidArgument {
        name: "panels",
        reason: format!("PNG encoding failed: {e}"),
    })?;
    crate::data::write_atomically(path.as_ref(), &bytes)
}
