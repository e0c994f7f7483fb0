//! The training-curve PNGs: the adaptor's (losses per step and per epoch, validation recall) and a
//! classification head's (losses, the selection metric). The canvas, axes, font, lines, legends
//! and PNG writing are the workspace's shared scaffolding, `artifacts::plot`.

use std::path::Path;

use artifacts::plot::{self, Area, DrawResult, Panel, CURVE_SIZE};
use plotters::prelude::*;

use crate::error::Result;
use crate::metrics::{EpochMetrics, Recall, StepMetrics};

const W: u32 = CURVE_SIZE.0;

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
    Ok(plot::png(path, CURVE_SIZE, Some(title), |root| {
        let (left, right) = root.split_horizontally(W * 3 / 5);
        draw_losses(&left, steps, epochs, steps_per_epoch, initial.map(|i| i.0))?;
        draw_recall(&right, epochs, initial.map(|i| i.1))
    })?)
}

fn draw_losses(
    area: &Area,
    steps: &[StepMetrics],
    epochs: &[EpochMetrics],
    spe: u64,
    initial: Option<f64>,
) -> DrawResult {
    let x_of = |s: &StepMetrics| s.step as f64 / spe.max(1) as f64;
    let x_max = epochs.len().max(1) as f64;
    let ys = steps
        .iter()
        .map(|s| s.loss)
        .chain(epochs.iter().map(|e| e.val_loss))
        .chain(initial);
    let mut chart = Panel::curve("loss", 56).build(area, 0.0..x_max, plot::padded_range(ys))?;
    plot::mesh(&mut chart, "epoch", "loss")?;
    let steps = steps.iter().map(|s| (x_of(s), s.loss));
    plot::line(
        &mut chart,
        steps,
        RGBColor(150, 180, 230),
        1,
        "train (step)",
    )?;
    let train = epochs.iter().map(|e| (e.epoch as f64, e.train_loss));
    plot::line(&mut chart, train, BLUE, 2, "train (epoch mean)")?;
    let val: Vec<(f64, f64)> = initial
        .map(|v| (0.0, v))
        .into_iter()
        .chain(epochs.iter().map(|e| (e.epoch as f64, e.val_loss)))
        .collect();
    plot::line(&mut chart, val.iter().copied(), RED, 2, "validation")?;
    plot::dots(&mut chart, val.iter().copied(), RED)?;
    if let Some(best) = epochs.iter().rev().find(|e| e.improved) {
        plot::best_marker(&mut chart, (best.epoch as f64, best.val_loss))?;
    }
    plot::legend(&mut chart, None)
}

fn draw_recall(area: &Area, epochs: &[EpochMetrics], initial: Option<Recall>) -> DrawResult {
    let x_max = epochs.len().max(1) as f64;
    let mut chart =
        Panel::curve("validation recall@1 / @10", 48).build(area, 0.0..x_max, 0.0..1.0f64)?;
    plot::mesh(&mut chart, "epoch", "")?;
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
        let points = initial
            .iter()
            .map(|r| (0.0, f(r)))
            .chain(epochs.iter().map(|e| (e.epoch as f64, f(&e.recall))));
        plot::line(&mut chart, points, color, 2, label)?;
    }
    plot::legend(&mut chart, Some(SeriesLabelPosition::LowerRight))
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
    Ok(plot::png(path, CURVE_SIZE, Some(title), |root| {
        let (left, right) = root.split_horizontally(W / 2);
        draw_head_losses(&left, points, best_epoch)?;
        draw_head_metric(&right, points, metric_name, best_epoch)
    })?)
}

fn draw_head_losses(
    area: &Area,
    points: &[HeadCurvePoint],
    best_epoch: Option<usize>,
) -> DrawResult {
    let x_max = points.len().max(1) as f64;
    let ys = points.iter().flat_map(|p| [p.train_loss, p.valid_loss]);
    let mut chart =
        Panel::curve("loss", 56).build(area, 0.5..x_max + 0.5, plot::padded_range(ys))?;
    plot::mesh(&mut chart, "epoch", "loss")?;
    let train = points.iter().map(|p| (p.epoch as f64, p.train_loss));
    plot::line(&mut chart, train, BLUE, 2, "train")?;
    let valid = points.iter().map(|p| (p.epoch as f64, p.valid_loss));
    plot::line(&mut chart, valid, RED, 2, "validation")?;
    if let Some(p) = points.iter().find(|p| Some(p.epoch) == best_epoch) {
        plot::best_marker(&mut chart, (p.epoch as f64, p.valid_loss))?;
    }
    plot::legend(&mut chart, Some(SeriesLabelPosition::UpperRight))
}

fn draw_head_metric(
    area: &Area,
    points: &[HeadCurvePoint],
    metric_name: &str,
    best_epoch: Option<usize>,
) -> DrawResult {
    let x_max = points.len().max(1) as f64;
    let caption = format!("validation {metric_name}");
    let mut chart = Panel::curve(&caption, 48).build(area, 0.5..x_max + 0.5, 0.0..1.0f64)?;
    plot::mesh(&mut chart, "epoch", "")?;
    let green = RGBColor(0, 120, 60);
    let series: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.valid_metric.map(|m| (p.epoch as f64, m)))
        .collect();
    plot::line(&mut chart, series.iter().copied(), green, 2, "")?;
    plot::dots(&mut chart, series.iter().copied(), green)?;
    if let Some(&p) = series
        .iter()
        .find(|p| best_epoch.is_some_and(|b| p.0 == b as f64))
    {
        plot::best_marker(&mut chart, p)?;
    }
    Ok(())
}
