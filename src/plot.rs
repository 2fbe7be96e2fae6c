//! Figures as PNG files: scatter grids of 2-D samples and quality-against-NFE line charts.
//!
//! Drawn on an `image` buffer; text uses `embedded-graphics`' built-in bitmap fonts, so the
//! figures need no font files on the machine that makes them.

use crate::error::{Error, Result};
use embedded_graphics::mono_font::{ascii::FONT_6X10, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};
use image::{Rgb, RgbImage};
use std::path::Path;

/// One panel of a scatter figure: 2-D points (row-major `[n, 2]`) and their colour.
pub struct Panel<'a> {
    /// The points, `x0, y0, x1, y1, …`.
    pub points: &'a [f32],
    /// The colour of the points.
    pub colour: [u8; 3],
}

/// An `RgbImage` as an `embedded-graphics` draw target (pixels outside are dropped).
struct Canvas(RgbImage);

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> std::result::Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, c) in pixels {
            if p.x >= 0
                && p.y >= 0
                && (p.x as u32) < self.0.width()
                && (p.y as u32) < self.0.height()
            {
                self.0
                    .put_pixel(p.x as u32, p.y as u32, Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Canvas(RgbImage::from_pixel(width, height, Rgb([255, 255, 255])))
    }

    fn text(&mut self, s: &str, x: i32, y: i32, align: Alignment) {
        let style = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
        let Ok(_) = Text::with_alignment(s, Point::new(x, y), style, align).draw(self);
    }

    fn line(&mut self, from: (i32, i32), to: (i32, i32), colour: [u8; 3], width: u32) {
        let style = PrimitiveStyle::with_stroke(rgb(colour), width);
        let Ok(()) = Line::new(Point::new(from.0, from.1), Point::new(to.0, to.1))
            .into_styled(style)
            .draw(self);
    }

    fn frame(&mut self, x: i32, y: i32, w: u32, h: u32, colour: [u8; 3]) {
        let style = PrimitiveStyle::with_stroke(rgb(colour), 1);
        let Ok(()) = Rectangle::new(Point::new(x, y), Size::new(w, h))
            .into_styled(style)
            .draw(self);
    }

    fn dot(&mut self, x: i32, y: i32, colour: [u8; 3]) {
        let Ok(()) = Circle::with_center(Point::new(x, y), 7)
            .into_styled(PrimitiveStyle::with_fill(rgb(colour)))
            .draw(self);
    }

    fn save(self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        self.0
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(|e| Error::InvalidArgument {
                name: "figure",
                reason: format!("PNG encoding failed: {e}"),
            })?;
        crate::data::write_atomically(path, &bytes)
    }
}

fn rgb(c: [u8; 3]) -> Rgb888 {
    Rgb888::new(c[0], c[1], c[2])
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
    scatter_grid_png(path, &[panels], &[], &[], extent, size)
}

/// Like [`scatter_png`], but each panel overlays several layers of points in their own
/// colours, drawn in order (later layers on top): classes of one sample set, say.
pub fn scatter_layers_png(
    path: impl AsRef<Path>,
    panels: &[&[Panel<'_>]],
    extent: f32,
    size: u32,
) -> Result<()> {
    draw_grid(path.as_ref(), &[panels], &[], &[], extent, size)
}

/// A grid of scatter panels (`rows[r][c]`), with optional titles above the columns and at the
/// left of the rows; every panel shows `[-extent, extent]²` in `size`×`size` pixels.
pub fn scatter_grid_png(
    path: impl AsRef<Path>,
    rows: &[&[Panel<'_>]],
    column_titles: &[&str],
    row_titles: &[&str],
    extent: f32,
    size: u32,
) -> Result<()> {
    let layered: Vec<Vec<&[Panel<'_>]>> = rows
        .iter()
        .map(|row| row.iter().map(std::slice::from_ref).collect())
        .collect();
    let layered: Vec<&[&[Panel<'_>]]> = layered.iter().map(Vec::as_slice).collect();
    draw_grid(
        path.as_ref(),
        &layered,
        column_titles,
        row_titles,
        extent,
        size,
    )
}

/// The grid of [`scatter_grid_png`] whose panels are stacks of layers.
fn draw_grid(
    path: &Path,
    rows: &[&[&[Panel<'_>]]],
    column_titles: &[&str],
    row_titles: &[&str],
    extent: f32,
    size: u32,
) -> Result<()> {
    let columns = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    if rows
        .iter()
        .flat_map(|r| r.iter())
        .flat_map(|layers| layers.iter())
        .any(|p| p.points.len() % 2 != 0)
    {
        return Err(Error::InvalidArgument {
            name: "panels",
            reason: "a panel's points are x, y pairs: its length must be even".into(),
        });
    }
    if columns == 0 || size < 8 || !(extent.is_finite() && extent > 0.0) {
        return Err(Error::InvalidArgument {
            name: "panels",
            reason: "a scatter figure needs at least one panel, size ≥ 8 and a positive extent"
                .into(),
        });
    }
    let gap = 8;
    let left = if row_titles.is_empty() {
        0
    } else {
        8 + 6 * row_titles.iter().map(|t| t.len() as u32).max().unwrap_or(0)
    };
    let top = if column_titles.is_empty() { 0 } else { 16 };
    let width = left + columns as u32 * (size + gap) - gap;
    let height = top + rows.len() as u32 * (size + gap) - gap;
    let mut canvas = Canvas::new(width, height);
    for (c, title) in column_titles.iter().enumerate().take(columns) {
        let x = left + c as u32 * (size + gap) + size / 2;
        canvas.text(title, x as i32, 11, Alignment::Center);
    }
    for (r, row) in rows.iter().enumerate() {
        let y0 = top + r as u32 * (size + gap);
        if let Some(title) = row_titles.get(r) {
            canvas.text(title, 4, (y0 + size / 2) as i32, Alignment::Left);
        }
        for (c, layers) in row.iter().enumerate() {
            let x0 = left + c as u32 * (size + gap);
            for panel in layers.iter() {
                draw_density(&mut canvas.0, panel, x0, y0, extent, size);
            }
            canvas.frame(x0 as i32, y0 as i32, size, size, [160, 160, 160]);
        }
    }
    canvas.save(path)
}

/// Colours each pixel of the panel at `(x0, y0)` by the number of points in it: one point is
/// light, many are saturated (blended over what is there; pixels without points are left).
fn draw_density(img: &mut RgbImage, panel: &Panel<'_>, x0: u32, y0: u32, extent: f32, size: u32) {
    let mut ink = vec![0.0f32; (size * size) as usize];
    for p in panel.points.chunks_exact(2) {
        let px = ((p[0] / extent + 1.0) * 0.5 * size as f32).floor();
        let py = ((1.0 - p[1] / extent) * 0.5 * size as f32).floor();
        if px >= 0.0 && py >= 0.0 && (px as u32) < size && (py as u32) < size {
            ink[(py as u32 * size + px as u32) as usize] += 1.0;
        }
    }
    for y in 0..size {
        for x in 0..size {
            let count = ink[(y * size + x) as usize];
            if count == 0.0 {
                continue;
            }
            let a = 1.0 - (-0.6 * count).exp();
            let below = img.get_pixel(x0 + x, y0 + y).0;
            let mut c = [0u8; 3];
            for ((out, &top), &under) in c.iter_mut().zip(&panel.colour).zip(&below) {
                *out = (f32::from(under) + a * (f32::from(top) - f32::from(under))) as u8;
            }
            img.put_pixel(x0 + x, y0 + y, Rgb(c));
        }
    }
}

/// One line of a [`line_chart_png`]: `(x, y)` points joined in order, with a dot at each.
pub struct Series<'a> {
    /// The legend entry.
    pub name: &'a str,
    /// The points; non-finite ones (and non-positive ones on a log axis) are skipped.
    pub points: &'a [(f64, f64)],
    /// The line colour.
    pub colour: [u8; 3],
}

/// A colour cycle for series.
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

/// A line chart on log-log axes (e.g. quality against NFE), `width`×`height` pixels, with a
/// title, axis labels, decade ticks and a legend; written as PNG to `path` atomically.
pub fn line_chart_png(
    path: impl AsRef<Path>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    width: u32,
    height: u32,
) -> Result<()> {
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && x > 0.0 && y > 0.0;
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied().filter(usable))
        .collect();
    if all.is_empty() || width < 200 || height < 150 {
        return Err(Error::InvalidArgument {
            name: "series",
            reason: "a line chart needs a positive finite point and at least 200×150 pixels".into(),
        });
    }
    let range = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min).log10();
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max).log10();
        let pad = 0.05 * (hi - lo).max(0.2);
        (lo - pad, hi + pad)
    };
    let (x_lo, x_hi) = range(all.iter().map(|p| p.0).collect());
    let (y_lo, y_hi) = range(all.iter().map(|p| p.1).collect());
    // The legend's column is as wide as its longest name (6-pixel glyphs), within half the
    // figure; a longer name is cut with "..".
    let legend_chars = series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let right = (36 + 6 * legend_chars as i32)
        .max(150)
        .min(width as i32 / 2);
    let fits = ((right - 36) / 6).max(3) as usize;
    let (left, top, bottom) = (56i32, 28i32, 34i32);
    let (pw, ph) = (width as i32 - left - right, height as i32 - top - bottom);
    let to_px = |x: f64, y: f64| {
        (
            left + ((x.log10() - x_lo) / (x_hi - x_lo) * pw as f64).round() as i32,
            top + ph - ((y.log10() - y_lo) / (y_hi - y_lo) * ph as f64).round() as i32,
        )
    };
    let mut canvas = Canvas::new(width, height);
    canvas.text(title, left + pw / 2, 14, Alignment::Center);
    canvas.text(x_label, left + pw / 2, height as i32 - 6, Alignment::Center);
    canvas.text(y_label, 4, top - 4, Alignment::Left);
    for (lo, hi, is_x) in [(x_lo, x_hi, true), (y_lo, y_hi, false)] {
        for (v, grid) in log_axis_ticks(lo, hi) {
            let label = format_tick(v);
            if is_x {
                let (px, _) = to_px(v, 10f64.powf(y_lo));
                if grid {
                    canvas.line((px, top), (px, top + ph), [225, 225, 225], 1);
                }
                canvas.line((px, top + ph), (px, top + ph + 4), [0, 0, 0], 1);
                canvas.text(&label, px, top + ph + 14, Alignment::Center);
            } else {
                let (_, py) = to_px(10f64.powf(x_lo), v);
                if grid {
                    canvas.line((left, py), (left + pw, py), [225, 225, 225], 1);
                }
                canvas.line((left - 4, py), (left, py), [0, 0, 0], 1);
                canvas.text(&label, left - 6, py + 3, Alignment::Right);
            }
        }
    }
    canvas.frame(left, top, pw as u32, ph as u32, [0, 0, 0]);
    for (i, s) in series.iter().enumerate() {
        let points: Vec<(i32, i32)> = s
            .points
            .iter()
            .filter(|p| usable(p))
            .map(|&(x, y)| to_px(x, y))
            .collect();
        for pair in points.windows(2) {
            canvas.line(pair[0], pair[1], s.colour, 2);
        }
        for &(x, y) in &points {
            canvas.dot(x, y, s.colour);
        }
        let ly = top + 8 + 14 * i as i32;
        canvas.line((left + pw + 8, ly), (left + pw + 24, ly), s.colour, 2);
        canvas.dot(left + pw + 16, ly, s.colour);
        let name: String = if s.name.chars().count() > fits {
            s.name.chars().take(fits - 2).chain("..".chars()).collect()
        } else {
            s.name.to_string()
        };
        canvas.text(&name, left + pw + 28, ly + 3, Alignment::Left);
    }
    canvas.save(path.as_ref())
}

/// The ticks of a log axis whose window is `[10^lo, 10^hi]`, each with whether it gets a grid
/// line: 1, 2 and 5 times each decade (grid lines at the decades) where that gives at least
/// three ticks; in a narrower window (less than about a decade) evenly spaced round values
/// (steps of 1, 2 or 5 times a power of ten), each with a grid line, so that every chart's axis
/// can be read.
fn log_axis_ticks(lo: f64, hi: f64) -> Vec<(f64, bool)> {
    let inside = |v: f64| (lo..=hi).contains(&v.log10());
    let decades: Vec<(f64, bool)> = ((lo.floor() as i32)..=(hi.ceil() as i32))
        .flat_map(|decade| [1.0, 2.0, 5.0].map(|m| (m * 10f64.powi(decade), m == 1.0)))
        .filter(|&(v, _)| inside(v))
        .collect();
    if decades.len() >= 3 {
        return decades;
    }
    let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
    // The largest round step that still leaves three intervals across the window: three
    // to seven ticks.
    let raw = (b - a) / 3.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s <= raw)
        .unwrap_or(magnitude);
    let first = (a / step).ceil() as i64;
    let last = (b / step).floor() as i64;
    (first..=last)
        .map(|k| (k as f64 * step, true))
        .filter(|&(v, _)| v > 0.0 && inside(v))
        .collect()
}

/// A tick label with up to three significant digits: plain decimals where short, else
/// scientific.
fn format_tick(v: f64) -> String {
    if (0.01..10_000.0).contains(&v) {
        let decimals = (2 - v.log10().floor() as i32).max(0) as usize;
        without_trailing_zeros(&format!("{v:.decimals$}")).to_string()
    } else {
        let s = format!("{v:.2e}");
        match s.split_once('e') {
            Some((mantissa, exponent)) => {
                format!("{}e{exponent}", without_trailing_zeros(mantissa))
            }
            None => s,
        }
    }
}

/// A decimal number's text without the zeros after its point (and the point if nothing is
/// left after it); a whole number is left as it is.
fn without_trailing_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Writes the first `rows·cols` images of `values` (flat `[n, c·h·w]`, values in [-1, 1],
/// `c` = 1 or 3) as a grid PNG with a one-pixel white gutter, each pixel drawn `scale`×`scale`,
/// atomically.
///
/// ```
/// let dir = std::env::temp_dir().join("integration_flow_grid_doc");
/// std::fs::create_dir_all(&dir).unwrap();
/// let images = vec![0.0f32; 4 * 2 * 2];
/// integration_flow::plot::image_grid_png(dir.join("g.png"), &images, [1, 2, 2], 2, 2, 3)?;
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn image_grid_png(
    path: impl AsRef<Path>,
    values: &[f32],
    shape: [usize; 3],
    rows: usize,
    cols: usize,
    scale: u32,
) -> Result<()> {
    let [c, h, w] = shape;
    let per = c * h * w;
    if !(c == 1 || c == 3) || per == 0 || rows == 0 || cols == 0 || scale == 0 {
        return Err(Error::InvalidArgument {
            name: "shape",
            reason: format!(
                "need 1 or 3 channels, non-empty images, rows, columns and scale; got {shape:?}, \
                 {rows}×{cols}, scale {scale}"
            ),
        });
    }
    if values.len() < rows * cols * per {
        return Err(Error::ShapeMismatch {
            context: "image_grid_png",
            expected: format!("at least {} images of {per} values", rows * cols),
            found: format!("{} values", values.len()),
        });
    }
    let s = scale as usize;
    let (cell_w, cell_h) = (w * s + 1, h * s + 1);
    let mut img = RgbImage::from_pixel(
        (cols * cell_w + 1) as u32,
        (rows * cell_h + 1) as u32,
        Rgb([255, 255, 255]),
    );
    let byte = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    for r in 0..rows {
        for col in 0..cols {
            let image = &values[(r * cols + col) * per..(r * cols + col + 1) * per];
            for y in 0..h * s {
                for x in 0..w * s {
                    let i = (y / s) * w + x / s;
                    let pixel = if c == 1 {
                        let g = byte(image[i]);
                        [g, g, g]
                    } else {
                        [
                            byte(image[i]),
                            byte(image[h * w + i]),
                            byte(image[2 * h * w + i]),
                        ]
                    };
                    img.put_pixel(
                        (1 + col * cell_w + x) as u32,
                        (1 + r * cell_h + y) as u32,
                        Rgb(pixel),
                    );
                }
            }
        }
    }
    Canvas(img).save(path.as_ref())
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_grids_place_each_image_in_its_cell() {
        let dir = std::env::temp_dir().join("integration_flow_grid_test");
        std::fs::create_dir_all(&dir).unwrap();
        // Four 2×2 grey images: image k is uniformly −1 + k·0.5.
        let values: Vec<f32> = (0..4)
            .flat_map(|k| std::iter::repeat_n(-1.0 + 0.5 * k as f32, 4))
            .collect();
        let path = dir.join("grid.png");
        super::image_grid_png(&path, &values, [1, 2, 2], 2, 2, 3).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // Cells are 2·3 + 1 = 7 pixels with a one-pixel gutter: 2·7 + 1 = 15.
        assert_eq!((img.width(), img.height()), (15, 15));
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
        let level = |k: f32| ((k + 1.0) * 127.5).round() as u8;
        assert_eq!(img.get_pixel(1, 1).0, [level(-1.0); 3]);
        assert_eq!(img.get_pixel(8, 1).0, [level(-0.5); 3]);
        assert_eq!(img.get_pixel(1, 8).0, [level(0.0); 3]);
        assert_eq!(img.get_pixel(13, 13).0, [level(0.5); 3]);
        assert!(super::image_grid_png(&path, &values[..15], [1, 2, 2], 2, 2, 1).is_err());
        assert!(super::image_grid_png(&path, &values, [2, 1, 2], 2, 2, 1).is_err());
    }

    use super::*;

    #[test]
    fn charts_and_grids_are_written_as_png() {
        let dir =
            std::env::temp_dir().join(format!("integration_flow_plot_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let points = [(1.0, 0.5), (2.0, 0.2), (100.0, 0.1)];
        let series = [Series {
            name: "a",
            points: &points,
            colour: PALETTE[0],
        }];
        let chart = dir.join("chart.png");
        line_chart_png(&chart, "t", "x", "y", &series, 400, 300).unwrap();
        let img = image::open(&chart).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (400, 300));
        // The line's colour is drawn somewhere.
        assert!(img.pixels().any(|p| p.0 == PALETTE[0]));
        // No usable point (log axes need positive values): a typed error, no file.
        let bad = [(0.0, 1.0), (1.0, f64::NAN)];
        let series = [Series {
            name: "b",
            points: &bad,
            colour: PALETTE[1],
        }];
        assert!(line_chart_png(dir.join("bad.png"), "t", "x", "y", &series, 400, 300).is_err());
        assert!(!dir.join("bad.png").exists());
        let cloud = [0.0f32, 0.0, 1.0, 1.0];
        let panel = [Panel {
            points: &cloud,
            colour: [200, 0, 0],
        }];
        let grid = dir.join("grid.png");
        scatter_grid_png(
            &grid,
            &[&panel, &panel],
            &["c"],
            &["row one", "row two"],
            2.0,
            64,
        )
        .unwrap();
        let img = image::open(&grid).unwrap().to_rgb8();
        assert!(img.width() > 64 && img.height() > 2 * 64);
        assert!(scatter_grid_png(dir.join("empty.png"), &[], &[], &[], 2.0, 64).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_axis_window_gets_ticks() {
        let ticks = |a: f64, b: f64| -> Vec<f64> {
            log_axis_ticks(a.log10(), b.log10())
                .into_iter()
                .map(|(v, _)| v)
                .collect()
        };
        // Over decades: 1, 2 and 5 times each, grid lines at the decades only.
        assert_eq!(ticks(0.9, 110.0), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        let grid: Vec<bool> = log_axis_ticks(0.9f64.log10(), 110f64.log10())
            .into_iter()
            .map(|(_, g)| g)
            .collect();
        assert_eq!(grid, [true, false, false, true, false, false, true]);
        // FD between 52 and 108 (one 1-2-5 tick inside, 100): round steps of 10.
        assert_eq!(ticks(52.0, 108.0), [60.0, 70.0, 80.0, 90.0, 100.0]);
        assert_eq!(ticks(51.0, 148.0), [60.0, 80.0, 100.0, 120.0, 140.0]);
        // One to four network calls: every integer.
        assert_eq!(ticks(0.95, 4.2), [1.0, 2.0, 3.0, 4.0]);
        // A window narrower than any 1-2-5 step still gets three to seven readable ticks.
        for (a, b) in [(97.0, 103.0), (0.0101, 0.0123), (3.1e5, 3.9e5)] {
            let t = ticks(a, b);
            assert!((3..=7).contains(&t.len()), "{a}..{b}: {t:?}");
            assert!(t.iter().all(|&v| (a..=b).contains(&v)), "{a}..{b}: {t:?}");
        }
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(format_tick(0.05), "0.05");
        assert_eq!(format_tick(2.0), "2");
        assert_eq!(format_tick(100.0), "100");
        assert_eq!(format_tick(0.001), "1e-3");
        // Ticks a narrow window puts close together keep distinct labels.
        assert_eq!(format_tick(0.0105), "0.0105");
        assert_eq!(format_tick(3.5e5), "3.5e5");
        assert_eq!(format_tick(125.0), "125");
    }
}
