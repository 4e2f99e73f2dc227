//! PNG pictures of datasets and generated samples: an image grid and a 2-D
//! scatter plot. Files are written atomically.

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};

use super::{write_file, DataError, DataTensor, Dataset, Result};

/// Padding between and around grid cells, in pixels.
pub const GRID_PADDING: u32 = 2;
/// Colour of the grid padding (dark grey, so black MNIST backgrounds stay apart).
pub const GRID_PAD_COLOUR: [u8; 3] = [64, 64, 64];

/// Maps a value in [-1, 1] to 0..=255 (clamped; NaN becomes 0).
#[inline]
pub fn unit_to_u8(v: f32) -> u8 {
    if v.is_nan() {
        return 0;
    }
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Lays out `n` NCHW images (values in [-1, 1], 1 or 3 channels) in a grid
/// of `cols` columns with [`GRID_PADDING`] px between and around them.
pub fn grid_image(
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
) -> Result<RgbImage> {
    if c != 1 && c != 3 {
        return Err(DataError::Invalid(format!(
            "an image grid needs 1 or 3 channels, got {c}"
        )));
    }
    if n == 0 || cols == 0 || h == 0 || w == 0 {
        return Err(DataError::Invalid(format!(
            "an image grid needs n, cols, h, w >= 1 (got n={n}, cols={cols}, h={h}, w={w})"
        )));
    }
    if images.len() != n * c * h * w {
        return Err(DataError::Invalid(format!(
            "{} values for {n} images of {c} x {h} x {w}",
            images.len()
        )));
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let p = GRID_PADDING as usize;
    let width = cols * (w + p) + p;
    let height = rows * (h + p) + p;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb(GRID_PAD_COLOUR));
    let plane = h * w;
    for k in 0..n {
        let src = &images[k * c * plane..(k + 1) * c * plane];
        let x0 = p + (k % cols) * (w + p);
        let y0 = p + (k / cols) * (h + p);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let px = if c == 1 {
                    let g = unit_to_u8(src[i]);
                    [g, g, g]
                } else {
                    [
                        unit_to_u8(src[i]),
                        unit_to_u8(src[plane + i]),
                        unit_to_u8(src[2 * plane + i]),
                    ]
                };
                img.put_pixel((x0 + x) as u32, (y0 + y) as u32, Rgb(px));
            }
        }
    }
    Ok(img)
}

fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut buf = Vec::new();
    img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
        .map_err(|e| DataError::image(path, e))?;
    write_file(path, &buf)
}

/// Writes [`grid_image`] as a PNG.
pub fn write_image_grid(
    path: &Path,
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
) -> Result<()> {
    save_png(path, &grid_image(images, n, c, h, w, cols)?)
}

/// How to draw a scatter plot.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterOptions {
    /// Side of the square picture in pixels.
    pub size: u32,
    /// The plot shows [-extent, extent] on both axes; `None` fits the points
    /// and centres with a 10% margin.
    pub extent: Option<f32>,
    /// Mode centres, drawn as red crosses.
    pub centres: Vec<[f32; 2]>,
}

impl Default for ScatterOptions {
    fn default() -> Self {
        ScatterOptions {
            size: 512,
            extent: None,
            centres: vec![],
        }
    }
}

const POINT_COLOUR: Rgb<u8> = Rgb([31, 70, 160]);
const CENTRE_COLOUR: Rgb<u8> = Rgb([220, 30, 30]);
const AXIS_COLOUR: Rgb<u8> = Rgb([210, 210, 210]);

/// Draws [N, 2] points (row-major) on a white square: grey axes through the
/// origin, one blue pixel per point (points outside the extent are left
/// out), red crosses at the centres.
pub fn scatter_image(points: &[f32], opts: &ScatterOptions) -> Result<RgbImage> {
    if !points.len().is_multiple_of(2) {
        return Err(DataError::Invalid(format!(
            "{} values are not [N, 2] points",
            points.len()
        )));
    }
    if opts.size < 8 {
        return Err(DataError::Invalid("a scatter plot needs size >= 8".into()));
    }
    let extent = match opts.extent {
        Some(e) if e.is_finite() && e > 0.0 => e,
        Some(e) => {
            return Err(DataError::Invalid(format!(
                "scatter extent must be positive, got {e}"
            )))
        }
        None => {
            let m = points
                .iter()
                .chain(opts.centres.iter().flatten())
                .filter(|v| v.is_finite())
                .fold(0.0f32, |m, v| m.max(v.abs()));
            if m > 0.0 {
                m * 1.1
            } else {
                1.0
            }
        }
    };
    let s = opts.size;
    let to_px = |x: f32, y: f32| -> Option<(u32, u32)> {
        let fx = (x + extent) / (2.0 * extent) * (s - 1) as f32;
        let fy = (extent - y) / (2.0 * extent) * (s - 1) as f32;
        let range = 0.0..=(s - 1) as f32;
        (range.contains(&fx) && range.contains(&fy)).then(|| (fx.round() as u32, fy.round() as u32))
    };
    let mut img = RgbImage::from_pixel(s, s, Rgb([255, 255, 255]));
    if let Some((ox, oy)) = to_px(0.0, 0.0) {
        for i in 0..s {
            img.put_pixel(ox, i, AXIS_COLOUR);
            img.put_pixel(i, oy, AXIS_COLOUR);
        }
    }
    for p in points.chunks_exact(2) {
        if let Some((x, y)) = to_px(p[0], p[1]) {
            img.put_pixel(x, y, POINT_COLOUR);
        }
    }
    for c in &opts.centres {
        if let Some((x, y)) = to_px(c[0], c[1]) {
            for d in -4i64..=4 {
                for (dx, dy) in [(d, d), (d, -d)] {
                    let (px, py) = (x as i64 + dx, y as i64 + dy);
                    if (0..s as i64).contains(&px) && (0..s as i64).contains(&py) {
                        img.put_pixel(px as u32, py as u32, CENTRE_COLOUR);
                    }
                }
            }
        }
    }
    Ok(img)
}

/// Writes [`scatter_image`] as a PNG.
pub fn write_scatter_png(path: &Path, points: &[f32], opts: &ScatterOptions) -> Result<()> {
    save_png(path, &scatter_image(points, opts)?)
}

/// The preview of a dataset: the first 64 images in 8 columns, or a 512 px
/// scatter plot of all points with the mixture centres (if any), with axes, tick
/// labels, `title` and a legend.
pub fn write_preview(ds: &Dataset, path: &Path, title: &str) -> Result<()> {
    match &ds.data {
        DataTensor::Images { n, c, h, w, values } => {
            let k = (*n).min(64);
            write_image_grid(path, &values[..k * c * h * w], k, *c, *h, *w, 8)
        }
        DataTensor::Points { n, values } => {
            use crate::results::plots::{Chart, ScatterChart};
            let chart = ScatterChart {
                title: title.to_string(),
                points: values.clone(),
                points_name: format!("points ({n})"),
                centres: ds
                    .mixture
                    .as_ref()
                    .map(|m| m.centres.clone())
                    .unwrap_or_default(),
                centres_name: "mode centres".into(),
            };
            let png = chart
                .png(512, 512)
                .map_err(|e| DataError::Invalid(format!("{}: {e:#}", path.display())))?;
            write_file(path, &png)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_mapping() {
        assert_eq!(unit_to_u8(-1.0), 0);
        assert_eq!(unit_to_u8(1.0), 255);
        assert_eq!(unit_to_u8(0.0), 128);
        assert_eq!(unit_to_u8(-7.0), 0);
        assert_eq!(unit_to_u8(f32::NAN), 0);
    }

    #[test]
    fn grid_layout_gray_and_rgb() {
        // Three 1x2 grayscale images in 2 columns: 2 rows.
        let vals = [-1.0, 1.0, 0.0, 0.0, 1.0, -1.0];
        let g = grid_image(&vals, 3, 1, 1, 2, 2).unwrap();
        assert_eq!(g.dimensions(), (2 * 4 + 2, 2 * 3 + 2));
        assert_eq!(g.get_pixel(2, 2).0, [0, 0, 0]);
        assert_eq!(g.get_pixel(3, 2).0, [255, 255, 255]);
        assert_eq!(g.get_pixel(6, 2).0, [128, 128, 128]);
        assert_eq!(g.get_pixel(2, 5).0, [255, 255, 255]);
        assert_eq!(g.get_pixel(0, 0).0, GRID_PAD_COLOUR);
        assert_eq!(g.get_pixel(6, 5).0, GRID_PAD_COLOUR); // empty cell

        let rgb = [1.0, -1.0, 0.0]; // one 1x1 image: R=255, G=0, B=128
        let g = grid_image(&rgb, 1, 3, 1, 1, 8).unwrap();
        assert_eq!(g.dimensions(), (5, 5));
        assert_eq!(g.get_pixel(2, 2).0, [255, 0, 128]);

        assert!(grid_image(&rgb, 1, 2, 1, 1, 1).is_err());
        assert!(grid_image(&rgb, 2, 3, 1, 1, 1).is_err());
    }

    #[test]
    fn writes_pngs_that_decode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grid.png");
        write_image_grid(&p, &[0.0; 2 * 3 * 4 * 4], 2, 3, 4, 4, 1).unwrap();
        let back = image::open(&p).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (4 + 4, 2 * 6 + 2));

        let s = dir.path().join("scatter.png");
        let opts = ScatterOptions {
            size: 101,
            extent: Some(1.0),
            centres: vec![[0.5, 0.5]],
        };
        write_scatter_png(&s, &[1.0, 1.0, -1.0, -1.0, 5.0, 0.0], &opts).unwrap();
        let img = image::open(&s).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (101, 101));
        assert_eq!(*img.get_pixel(100, 0), POINT_COLOUR); // (1, 1): top right
        assert_eq!(*img.get_pixel(0, 100), POINT_COLOUR); // (-1, -1): bottom left
        assert_eq!(*img.get_pixel(75, 25), CENTRE_COLOUR);
        assert_eq!(*img.get_pixel(50, 10), AXIS_COLOUR);
    }

    #[test]
    fn previews_of_both_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let ring = crate::data::gaussian_ring(1000, 2.0, 0.02, 0).unwrap();
        let p = dir.path().join("ring.png");
        write_preview(&ring, &p, "ring").unwrap();
        assert_eq!(image::open(&p).unwrap().width(), 512);
        let imgs = Dataset {
            data: DataTensor::Images {
                n: 100,
                c: 1,
                h: 3,
                w: 3,
                values: vec![0.0; 900],
            },
            labels: None,
            classes: None,
            sources: vec![],
            mixture: None,
        };
        let p = dir.path().join("imgs.png");
        write_preview(&imgs, &p, "images").unwrap();
        assert_eq!(image::open(&p).unwrap().width(), 8 * 5 + 2);
        assert_eq!(image::open(&p).unwrap().height(), 8 * 5 + 2);
    }
}
