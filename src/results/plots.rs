//! Charts a person can read: a title, labelled axes with tick labels, and a legend.
//!
//! Three shapes cover every figure ablate draws: [`LineChart`] (numbers against a
//! numeric or a categorical x axis, optionally with error bars), [`BarChart`] (one bar
//! per bin, with an optional reference line) and [`ScatterChart`] (2-D points with
//! marked centres). Each renders to SVG (for the HTML report: the browser draws the
//! text) or to PNG (for files the stages write: text rasterised with DejaVu Sans,
//! which is embedded in the binary, so no system font is needed). Nothing here knows
//! what is plotted; callers name the axes, units and series.

use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::sync::Once;

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Register the embedded font as plotters' `sans-serif` (once per process).
fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the embedded font did not load: figures will have no text");
        }
    });
}

/// Colours of series, in order (the "tab10" palette).
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The `i`-th series colour.
pub fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// (x, y); for a categorical axis x is the category's index. Non-finite points are
    /// left out (the line breaks there).
    pub points: Vec<(f64, f64)>,
    /// Half-heights of error bars, one per point (empty: no error bars).
    pub err: Vec<f64>,
}

/// What the x axis shows.
#[derive(Debug, Clone, PartialEq)]
pub enum XAxis {
    /// Numbers (steps, epochs, ...).
    Linear,
    /// Named values at x = 0, 1, ... (the values of a matrix axis).
    Categories(Vec<String>),
}

/// Lines against x, with a title, axis labels and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    /// Axis labels, units included (`step`, `loss (nats)`).
    pub x_label: String,
    pub y_label: String,
    pub x: XAxis,
    pub series: Vec<Series>,
    /// Draw a marker at every point (for few points; lines alone for long logs).
    pub markers: bool,
}

/// Bars at 0, 1, ..., with an optional horizontal reference line.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The legend entry of the bars.
    pub name: String,
    pub values: Vec<f64>,
    /// (y, legend entry), e.g. the count every mode would get under a uniform generator.
    pub reference: Option<(f64, String)>,
}

/// 2-D points, optionally with marked centres.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterChart {
    pub title: String,
    /// Row-major [N, 2].
    pub points: Vec<f32>,
    pub points_name: String,
    pub centres: Vec<[f32; 2]>,
    pub centres_name: String,
}

/// A chart that can be drawn on any plotters backend.
pub trait Chart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;

    /// The chart as an SVG document of `w` x `h` px (text as `<text>`, drawn by the browser).
    fn svg(&self, w: u32, h: u32) -> Result<String> {
        ensure_font();
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            self.draw(&root)?;
            root.present().map_err(err)?;
        }
        Ok(s)
    }

    /// The chart as PNG bytes (text rasterised with the embedded font).
    fn png(&self, w: u32, h: u32) -> Result<Vec<u8>> {
        ensure_font();
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            self.draw(&root)?;
            root.present().map_err(err)?;
        }
        let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("plot buffer"))?;
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        Ok(png)
    }
}

/// `lo..hi` padded by 5% (a flat or empty range gets a unit-sized window).
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad, hi + pad)
}

/// Tick labels that stay short: 4 significant digits, scientific for very small or large.
pub fn tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn caption_style() -> TextStyle<'static> {
    (FAMILY, 22).into_font().into()
}

impl LineChart {
    fn y_range(&self) -> (f64, f64) {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for s in &self.series {
            for (i, &(x, y)) in s.points.iter().enumerate() {
                if !(x.is_finite() && y.is_finite()) {
                    continue;
                }
                let e = s
                    .err
                    .get(i)
                    .copied()
                    .filter(|e| e.is_finite())
                    .unwrap_or(0.0);
                lo = lo.min(y - e);
                hi = hi.max(y + e);
            }
        }
        padded(lo, hi)
    }

    fn x_range(&self) -> (f64, f64) {
        match &self.x {
            XAxis::Categories(c) => (-0.5, c.len().max(1) as f64 - 0.5),
            XAxis::Linear => {
                let xs = self
                    .series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.0))
                    .filter(|x| x.is_finite());
                let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
                    (l.min(x), h.max(x))
                });
                if lo.is_finite() && hi > lo {
                    (lo, hi)
                } else {
                    padded(lo, hi)
                }
            }
        }
    }
}

impl Chart for LineChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (x0, x1) = self.x_range();
        let (y0, y1) = self.y_range();
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, caption_style())
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        let cats = match &self.x {
            XAxis::Categories(c) => Some(c),
            XAxis::Linear => None,
        };
        // A category's name at its integer position; nothing between categories.
        let fmt = |x: &f64| match cats {
            Some(c) => {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    c.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            }
            None => tick(*x),
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&fmt)
            .y_label_formatter(&|y| tick(*y))
            .label_style((FAMILY, 15).into_font())
            .axis_desc_style((FAMILY, 16).into_font());
        if let Some(c) = cats {
            // Ticks at least as fine as the categories (unlabelled ones in between are blank).
            mesh.x_labels(2 * c.len() + 2).disable_x_mesh();
        }
        mesh.draw().map_err(err)?;
        // Series side by side around each category, so their error bars do not overlap.
        let n = self.series.len().max(1) as f64;
        let dodge = if cats.is_some() {
            (0.3 / n).min(0.08)
        } else {
            0.0
        };
        for (k, s) in self.series.iter().enumerate() {
            let off = (k as f64 - (n - 1.0) / 2.0) * dodge;
            let shifted = Series {
                points: s.points.iter().map(|&(x, y)| (x + off, y)).collect(),
                ..s.clone()
            };
            draw_series(&mut chart, &shifted, k, self.markers)?;
        }
        legend(&mut chart)
    }
}

/// One series: line segments between finite points, markers, error bars; legend entry.
fn draw_series<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    s: &Series,
    k: usize,
    markers: bool,
) -> Result<()> {
    let c = colour(k);
    // Runs of finite points, so a NaN breaks the line instead of ending the chart.
    let mut runs: Vec<Vec<(f64, f64)>> = vec![vec![]];
    for &(x, y) in &s.points {
        if x.is_finite() && y.is_finite() {
            runs.last_mut().unwrap().push((x, y));
        } else if !runs.last().unwrap().is_empty() {
            runs.push(vec![]);
        }
    }
    let mut labelled = false;
    for run in runs.into_iter().filter(|r| !r.is_empty()) {
        let ann = chart
            .draw_series(LineSeries::new(run, c.stroke_width(2)))
            .map_err(err)?;
        if !labelled {
            ann.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
            });
            labelled = true;
        }
    }
    if !labelled {
        // No finite point: keep the legend entry, so the reader sees the series exists.
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(err)?
            .label(format!("{} (no finite values)", s.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    let finite = s
        .points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    if markers {
        chart
            .draw_series(finite.map(|p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
    }
    if !s.err.is_empty() {
        let bars = s
            .points
            .iter()
            .zip(&s.err)
            .filter(|((x, y), e)| x.is_finite() && y.is_finite() && e.is_finite() && **e > 0.0);
        chart
            .draw_series(bars.map(|(&(x, y), &e)| {
                ErrorBar::new_vertical(x, y - e, y, y + e, c.stroke_width(2), 10)
            }))
            .map_err(err)?;
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FAMILY, 15).into_font())
        .draw()
        .map_err(err)?;
    Ok(())
}

impl Chart for BarChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let n = self.values.len().max(1);
        let top = self
            .values
            .iter()
            .copied()
            .chain(self.reference.as_ref().map(|r| r.0))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, caption_style())
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..top)
            .map_err(err)?;
        // Integer ticks only: bins are whole numbers.
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(n.min(12))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 {
                    format!("{i}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| tick(*y))
            .disable_x_mesh()
            .draw()
            .map_err(err)?;
        let c = colour(0);
        let w = if n > 60 { 0.5 } else { 0.4 };
        chart
            .draw_series(self.values.iter().enumerate().map(|(i, &v)| {
                let v = if v.is_finite() { v } else { 0.0 };
                Rectangle::new([(i as f64 - w, 0.0), (i as f64 + w, v)], c.filled())
            }))
            .map_err(err)?
            .label(self.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
        if let Some((y, name)) = &self.reference {
            let r = colour(3);
            chart
                .draw_series(LineSeries::new(
                    [(-0.5, *y), (n as f64 - 0.5, *y)],
                    r.stroke_width(2),
                ))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], r.stroke_width(2))
                });
        }
        legend(&mut chart)
    }
}

impl Chart for ScatterChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let m = self
            .points
            .iter()
            .chain(self.centres.iter().flatten())
            .filter(|v| v.is_finite())
            .fold(0.0f32, |m, v| m.max(v.abs()));
        let e = if m > 0.0 { m as f64 * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, caption_style())
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(-e..e, -e..e)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("x")
            .y_desc("y")
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .draw()
            .map_err(err)?;
        let pc = colour(0);
        let pts = self
            .points
            .chunks_exact(2)
            .filter(|p| p[0].is_finite() && p[1].is_finite())
            .map(|p| Circle::new((p[0] as f64, p[1] as f64), 1, pc.mix(0.5).filled()));
        chart
            .draw_series(pts)
            .map_err(err)?
            .label(self.points_name.clone())
            .legend(move |(x, y)| Circle::new((x + 7, y), 3, pc.filled()));
        if !self.centres.is_empty() {
            let cc = colour(3);
            chart
                .draw_series(
                    self.centres
                        .iter()
                        .map(|c| Cross::new((c[0] as f64, c[1] as f64), 6, cc.stroke_width(2))),
                )
                .map_err(err)?
                .label(self.centres_name.clone())
                .legend(move |(x, y)| Cross::new((x + 7, y), 5, cc.stroke_width(2)));
        }
        legend(&mut chart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> LineChart {
        LineChart {
            title: "losses of run A".into(),
            x_label: "step".into(),
            y_label: "loss (nats)".into(),
            x: XAxis::Linear,
            series: vec![
                Series {
                    name: "D loss".into(),
                    points: vec![(0.0, 1.0), (10.0, 0.5), (20.0, f64::NAN), (30.0, 0.25)],
                    err: vec![],
                },
                Series {
                    name: "G loss".into(),
                    points: vec![(0.0, 2.0), (10.0, 2.5), (20.0, 3.0), (30.0, 3.5)],
                    err: vec![],
                },
            ],
            markers: false,
        }
    }

    /// The text of every `<text>` element of an SVG document.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    #[test]
    fn svg_has_title_axis_labels_ticks_and_legend() {
        let svg = chart().svg(640, 360).unwrap();
        let t = texts(&svg);
        for want in ["losses of run A", "step", "loss (nats)", "D loss", "G loss"] {
            assert!(t.iter().any(|s| s == want), "no `{want}` in {t:?}");
        }
        // y ticks span the data: 0.25 .. 3.5 (padded), so 1 and 3 are among them.
        assert!(
            t.iter().any(|s| s == "1") && t.iter().any(|s| s == "3"),
            "{t:?}"
        );
        // x ticks: 0 .. 30.
        assert!(
            t.iter().any(|s| s == "0") && t.iter().any(|s| s == "30"),
            "{t:?}"
        );
        // The NaN splits D's line in two polylines, G is one; each has a legend swatch.
        assert_eq!(
            svg.matches("stroke=\"#1F77B4\" stroke-width=\"2\"").count(),
            2 + 1
        );
        assert_eq!(
            svg.matches("stroke=\"#FF7F0E\" stroke-width=\"2\"").count(),
            1 + 1
        );
    }

    #[test]
    fn categorical_axis_labels_each_category_once() {
        let c = LineChart {
            title: "modes vs objective".into(),
            x_label: "objective".into(),
            y_label: "modes".into(),
            x: XAxis::Categories(vec!["rpgan-r1+r2".into(), "ns-r1".into(), "hinge".into()]),
            series: vec![Series {
                name: "mean over seed".into(),
                points: vec![(0.0, 8.0), (1.0, 6.0), (2.0, 7.0)],
                err: vec![0.0, 1.0, 0.5],
            }],
            markers: true,
        };
        let svg = c.svg(480, 320).unwrap();
        let t = texts(&svg);
        for cat in ["rpgan-r1+r2", "ns-r1", "hinge"] {
            assert_eq!(t.iter().filter(|s| *s == cat).count(), 1, "{cat} in {t:?}");
        }
        // Two error bars (the zero one is not drawn): each is 3 lines.
        assert!(svg.matches("<circle").count() >= 3, "markers");
    }

    #[test]
    fn png_has_text_pixels_where_the_title_is() {
        let with = chart().png(640, 360).unwrap();
        let mut no_title = chart();
        no_title.title = String::new();
        let without = no_title.png(640, 360).unwrap();
        let a = image::load_from_memory(&with).unwrap().to_rgb8();
        let b = image::load_from_memory(&without).unwrap().to_rgb8();
        assert_eq!(a.dimensions(), (640, 360));
        // The caption band (top 30 px, middle half) has dark glyph pixels only with a title.
        let dark = |img: &image::RgbImage| {
            (160..480)
                .flat_map(|x| (0..30).map(move |y| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 100))
                .count()
        };
        assert!(dark(&a) > 50, "title drew {} dark pixels", dark(&a));
        assert_eq!(dark(&b), 0);
    }

    #[test]
    fn bar_chart_and_scatter_render_with_legends() {
        let b = BarChart {
            title: "samples per mode".into(),
            x_label: "mode".into(),
            y_label: "samples".into(),
            name: "generated".into(),
            values: vec![3.0, 0.0, 5.0, 2.0],
            reference: Some((2.5, "uniform".into())),
        };
        let svg = b.svg(600, 300).unwrap();
        let t = texts(&svg);
        for want in [
            "samples per mode",
            "mode",
            "samples",
            "generated",
            "uniform",
        ] {
            assert!(t.iter().any(|s| s == want), "no `{want}` in {t:?}");
        }
        // 4 bars (the empty one is a flat rectangle) + the legend swatch.
        assert_eq!(svg.matches("fill=\"#1F77B4\"").count(), 4 + 1, "{svg}");
        // The uniform line, red, across the chart + its swatch.
        assert_eq!(svg.matches("stroke=\"#D62728\"").count(), 1 + 1, "{svg}");
        let s = ScatterChart {
            title: "samples".into(),
            points: vec![0.0, 1.0, -1.0, 0.5],
            points_name: "generated (2)".into(),
            centres: vec![[1.0, 0.0]],
            centres_name: "mode centres".into(),
        };
        let t = texts(&s.svg(400, 400).unwrap());
        assert!(t.iter().any(|s| s == "generated (2)") && t.iter().any(|s| s == "mode centres"));
        assert!(!s.png(300, 300).unwrap().is_empty());
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(0.123456), "0.1235");
        assert_eq!(tick(2.0e-5), "2.0e-5");
        assert_eq!(tick(-3.0), "-3");
    }
}
