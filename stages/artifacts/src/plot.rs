//! The plotting scaffolding every PNG of the workspace shares (the report's task plots, the
//! training curves of train, segmentation's `curve.png`): plotters on a raw RGB buffer,
//! text in the embedded DejaVu Sans Mono (`assets/DejaVuSansMono.ttf`, Bitstream Vera licence,
//! `assets/DejaVuSansMono.LICENSE`), PNG written with `png`; panels, lines, markers and legends
//! in one style.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

/// Size of the two-panel curves (training, head and segmentation curves).
pub const CURVE_SIZE: (u32, u32) = (1200, 480);

/// The font family every text of a plot uses (the embedded font is registered under it).
pub const FONT_FAMILY: &str = "sans-serif";

/// A drawing area of a plot.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A chart of f64 values on both axes (linear or log).
pub type Chart<'a, 'b, X, Y> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>;

/// An axis of f64 values (linear or log).
pub trait Axis: Ranged<ValueType = f64> {}
impl<T: Ranged<ValueType = f64>> Axis for T {}

/// A colour a series can be drawn and keyed in.
pub trait PlotColor: Color + Copy + 'static {}
impl<T: Color + Copy + 'static> PlotColor for T {}

/// A chart with linear axes.
pub type LinearChart<'a, 'b> = Chart<'a, 'b, RangedCoordf64, RangedCoordf64>;

/// plotters' drawing errors are generic over the backend: drawing code returns them boxed, and
/// [`png`] names the file they happened in.
pub type DrawResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Registers the embedded font as plotters' [`FONT_FAMILY`] (once per process).
pub fn register_embedded_font() {
    REGISTER.call_once(|| {
        // Only fails on an unparsable font, which the embedded one is not.
        let _ = register_font(FONT_FAMILY, FontStyle::Normal, FONT);
    });
}

/// Draws a `w × h` PNG into `path`: a white canvas, with `title` on top when given, handed to
/// `draw`.
pub fn png(
    path: &Path,
    (w, h): (u32, u32),
    title: Option<&str>,
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<()> {
    register_embedded_font();
    let err = Error::plot(path);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let area = match title {
            Some(t) => root.titled(t, (FONT_FAMILY, 18)).map_err(|e| err(&e))?,
            None => root.clone(),
        };
        draw(&area).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_png(path, &buf, w, h)
}

/// Writes an RGB buffer of `w × h` pixels as a PNG.
pub fn write_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<()> {
    let png_err = |source| Error::Png {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = ::png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(::png::ColorType::Rgb);
    enc.set_depth(::png::BitDepth::Eight);
    let mut wr = enc.write_header().map_err(png_err)?;
    wr.write_image_data(rgb).map_err(png_err)?;
    wr.finish().map_err(png_err)
}

/// The range of the finite `values`, padded by 5 % on each side (0..1 when none is finite), for a
/// loss axis.
pub fn padded_range(values: impl IntoIterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo.min(hi - 1e-6), hi)
    } else {
        (0.0, 1.0)
    };
    let pad = (hi - lo) * 0.05;
    (lo - pad)..(hi + pad)
}

/// Axes of one panel: caption, margin and label areas.
#[derive(Debug, Clone, Copy)]
pub struct Panel<'s> {
    pub caption: &'s str,
    pub caption_size: u32,
    pub margin: u32,
    pub x_label_area: u32,
    pub y_label_area: u32,
}

impl<'s> Panel<'s> {
    /// A panel of a two-panel curve.
    pub fn curve(caption: &'s str, y_label_area: u32) -> Self {
        Panel {
            caption,
            caption_size: 16,
            margin: 10,
            x_label_area: 36,
            y_label_area,
        }
    }

    /// Builds the chart on `area` over `x × y`.
    pub fn build<'a, 'b, X: AsRangedCoord, Y: AsRangedCoord>(
        &self,
        area: &'a Area<'b>,
        x: X,
        y: Y,
    ) -> DrawResult<Chart<'a, 'b, X::CoordDescType, Y::CoordDescType>> {
        Ok(ChartBuilder::on(area)
            .caption(self.caption, (FONT_FAMILY, self.caption_size))
            .margin(self.margin)
            .x_label_area_size(self.x_label_area)
            .y_label_area_size(self.y_label_area)
            .build_cartesian_2d(x, y)?)
    }
}

/// Draws the mesh of a linear chart with the axis descriptions (`y_desc` may be empty) in the
/// labels' font.
pub fn mesh(chart: &mut LinearChart, x_desc: &str, y_desc: &str) -> DrawResult {
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc).label_style((FONT_FAMILY, 12));
    if !y_desc.is_empty() {
        mesh.y_desc(y_desc);
    }
    mesh.draw()?;
    Ok(())
}

/// A line of `width` pixels; with a legend entry when `label` is not empty.
pub fn line<X: Axis, Y: Axis>(
    chart: &mut Chart<X, Y>,
    points: impl IntoIterator<Item = (f64, f64)>,
    color: impl PlotColor,
    width: u32,
    label: &str,
) -> DrawResult {
    let series = chart.draw_series(LineSeries::new(points, color.stroke_width(width)))?;
    if !label.is_empty() {
        series
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    Ok(())
}

/// Filled dots of radius 3 at `points`.
pub fn dots<X: Axis, Y: Axis>(
    chart: &mut Chart<X, Y>,
    points: impl IntoIterator<Item = (f64, f64)>,
    color: impl PlotColor,
) -> DrawResult {
    chart.draw_series(
        points
            .into_iter()
            .map(|p| Circle::new(p, 3, color.filled())),
    )?;
    Ok(())
}

/// The black ring around the selected (best) epoch.
pub fn best_marker<X: Axis, Y: Axis>(chart: &mut Chart<X, Y>, point: (f64, f64)) -> DrawResult {
    chart.draw_series(std::iter::once(Circle::new(
        point,
        7,
        BLACK.stroke_width(2),
    )))?;
    Ok(())
}

/// Error bars (± `err` around `mean` at `x`) for `(x, mean, err)` points.
pub fn error_bars<X: Axis, Y: Axis>(
    chart: &mut Chart<X, Y>,
    points: &[(f64, f64, f64)],
    color: impl PlotColor,
) -> DrawResult {
    chart.draw_series(
        points
            .iter()
            .map(|p| ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.filled(), 6)),
    )?;
    Ok(())
}

/// The legend box, at `position` (plotters' default: upper left).
pub fn legend<'a, 'b: 'a, X: Axis, Y: Axis>(
    chart: &mut Chart<'a, 'b, X, Y>,
    position: Option<SeriesLabelPosition>,
) -> DrawResult {
    let mut labels = chart.configure_series_labels();
    if let Some(p) = position {
        labels.position(p);
    }
    labels
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT_FAMILY, 12))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_range_pads_finite_values_and_falls_back_to_unit() {
        let r = padded_range([1.0, f64::NAN, 3.0]);
        assert!(
            (r.start - 0.9).abs() < 1e-12 && (r.end - 3.1).abs() < 1e-12,
            "{r:?}"
        );
        assert_eq!(padded_range([f64::INFINITY]), -0.05..1.05);
    }

    #[test]
    fn a_two_panel_png_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        png(&path, CURVE_SIZE, Some("title"), |root| {
            let (left, _) = root.split_horizontally(CURVE_SIZE.0 / 2);
            let mut c =
                Panel::curve("loss", 56).build(&left, 0.0..2.0, padded_range([1.0, 2.0]))?;
            mesh(&mut c, "epoch", "loss")?;
            line(&mut c, [(0.0, 1.0), (2.0, 2.0)], BLUE, 2, "train")?;
            best_marker(&mut c, (1.0, 1.5))?;
            legend(&mut c, None)
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
