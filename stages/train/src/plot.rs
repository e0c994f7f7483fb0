//! The training-curve PNG: losses per step and per epoch (left), validation recall@1 (right).
//! Drawn with plotters into an RGB buffer; text uses the embedded DejaVu Sans Mono
//! (`assets/DejaVuSansMono.ttf`, Bitstream Vera licence, `assets/DejaVuSansMono.LICENSE`).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{io_err, Error, Result};
use crate::metrics::{EpochMetrics, Recall, StepMetrics};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();

const W: u32 = 1200;
const H: u32 = 480;

/// Writes `path` (PNG). `steps_per_epoch` puts per-step points on the epoch axis; `initial`
/// (validation loss and recall before training) is drawn at epoch 0.
pub fn training_curve(
    path: &Path,
    steps: &[StepMetrics],
    epochs: &[EpochMetrics],
    steps_per_epoch: u64,
    initial: Option<(f64, Recall)>,
    title: &str,
) -> Result<()> {
    register_embedded_font();
    let err = |e: &dyn std::fmt::Display| Error::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root
            .titled(title, ("sans-serif", 18))
            .map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(W * 3 / 5);
        draw_losses(&left, steps, epochs, steps_per_epoch, initial.map(|i| i.0))
            .map_err(|e| err(&e))?;
        draw_recall(&right, epochs, initial.map(|i| i.1)).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_png(path, &buf, W, H)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_losses(
    area: &Area,
    steps: &[StepMetrics],
    epochs: &[EpochMetrics],
    spe: u64,
    initial: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let x_of = |s: &StepMetrics| s.step as f64 / spe.max(1) as f64;
    let x_max = epochs.len().max(1) as f64;
    let ys = steps
        .iter()
        .map(|s| s.loss)
        .chain(epochs.iter().map(|e| e.val_loss))
        .chain(initial)
        .filter(|v| v.is_finite());
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo.min(hi - 1e-6), hi)
    } else {
        (0.0, 1.0)
    };
    let pad = (hi - lo) * 0.05;
    let mut chart = ChartBuilder::on(area)
        .caption("loss", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .label_style(("sans-serif", 12))
        .draw()?;
    let light = RGBColor(150, 180, 230);
    chart
        .draw_series(LineSeries::new(
            steps.iter().map(|s| (x_of(s), s.loss)),
            light.stroke_width(1),
        ))?
        .label("train (step)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], light));
    chart
        .draw_series(LineSeries::new(
            epochs.iter().map(|e| (e.epoch as f64, e.train_loss)),
            BLUE.stroke_width(2),
        ))?
        .label("train (epoch mean)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    let val: Vec<(f64, f64)> = initial
        .map(|v| (0.0, v))
        .into_iter()
        .chain(epochs.iter().map(|e| (e.epoch as f64, e.val_loss)))
        .collect();
    chart
        .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    if let Some(best) = epochs.iter().rev().find(|e| e.improved) {
        chart.draw_series(std::iter::once(Circle::new(
            (best.epoch as f64, best.val_loss),
            7,
            BLACK.stroke_width(2),
        )))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

fn draw_recall(
    area: &Area,
    epochs: &[EpochMetrics],
    initial: Option<Recall>,
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = epochs.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("validation recall@1 / @10", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style(("sans-serif", 12))
        .draw()?;
    type Series = (&'static str, fn(&Recall) -> f64, RGBColor);
    let series: [Series; 4] = [
        (
            "image→text R@1",
            |r| r.image_to_text_r1,
            RGBColor(0, 120, 60),
        ),
        (
            "text→image R@1",
            |r| r.text_to_image_r1,
            RGBColor(200, 120, 0),
        ),
        (
            "image→text R@10",
            |r| r.image_to_text_r10,
            RGBColor(120, 200, 150),
        ),
        (
            "text→image R@10",
            |r| r.text_to_image_r10,
            RGBColor(240, 190, 110),
        ),
    ];
    for (label, f, color) in series {
        chart
            .draw_series(LineSeries::new(
                initial
                    .iter()
                    .map(|r| (0.0, f(r)))
                    .chain(epochs.iter().map(|e| (e.epoch as f64, f(&e.recall)))),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

/// One epoch of a classification head's training, as the curve draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadCurvePoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: f64,
    /// The validation metric used for model selection (AUROC or accuracy).
    pub valid_metric: Option<f64>,
}

/// The classification-head curve PNG: training and validation loss per epoch (left), the
/// selection metric on the validation split (right), the selected epoch circled.
pub fn head_curve(
    path: &Path,
    points: &[HeadCurvePoint],
    metric_name: &str,
    best_epoch: Option<usize>,
    title: &str,
) -> Result<()> {
    register_embedded_font();
    let err = |e: &dyn std::fmt::Display| Error::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root
            .titled(title, ("sans-serif", 18))
            .map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(W / 2);
        draw_head_losses(&left, points, best_epoch).map_err(|e| err(&e))?;
        draw_head_metric(&right, points, metric_name, best_epoch).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_png(path, &buf, W, H)
}

fn draw_head_losses(
    area: &Area,
    points: &[HeadCurvePoint],
    best_epoch: Option<usize>,
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = points.len().max(1) as f64;
    let (lo, hi) = points
        .iter()
        .flat_map(|p| [p.train_loss, p.valid_loss])
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
    let mut chart = ChartBuilder::on(area)
        .caption("loss", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5..x_max + 0.5, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .label_style(("sans-serif", 12))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.epoch as f64, p.train_loss)),
            BLUE.stroke_width(2),
        ))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.epoch as f64, p.valid_loss)),
            RED.stroke_width(2),
        ))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    if let Some(p) = points.iter().find(|p| Some(p.epoch) == best_epoch) {
        chart.draw_series(std::iter::once(Circle::new(
            (p.epoch as f64, p.valid_loss),
            7,
            BLACK.stroke_width(2),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

fn draw_head_metric(
    area: &Area,
    points: &[HeadCurvePoint],
    metric_name: &str,
    best_epoch: Option<usize>,
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = points.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("validation {metric_name}"), ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.5..x_max + 0.5, 0.0..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style(("sans-serif", 12))
        .draw()?;
    let green = RGBColor(0, 120, 60);
    let series: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.valid_metric.map(|m| (p.epoch as f64, m)))
        .collect();
    chart.draw_series(LineSeries::new(
        series.iter().copied(),
        green.stroke_width(2),
    ))?;
    chart.draw_series(series.iter().map(|&p| Circle::new(p, 3, green.filled())))?;
    if let Some(&p) = series
        .iter()
        .find(|p| best_epoch.is_some_and(|b| p.0 == b as f64))
    {
        chart.draw_series(std::iter::once(Circle::new(p, 7, BLACK.stroke_width(2))))?;
    }
    Ok(())
}

/// Registers the embedded font as plotters' `sans-serif` (for other plots of the workspace).
pub fn register_embedded_font() {
    REGISTER.call_once(|| {
        // Only fails on an unparsable font, which the embedded one is not.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Writes an RGB buffer of `w × h` pixels as a PNG.
pub fn write_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().map_err(|e| err(&e))?;
    wr.write_image_data(rgb).map_err(|e| err(&e))?;
    wr.finish().map_err(|e| err(&e))
}
