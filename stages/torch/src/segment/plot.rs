//! `curve.png`: training and validation loss per epoch (left), validation Dice, positive-only Dice
//! and the all-empty predictor's Dice (right). The canvas, axes, font, lines, legends and PNG
//! writing are the workspace's shared scaffolding, `artifacts::plot`.

use std::path::Path;

use artifacts::plot::{self, Area, DrawResult, Panel, CURVE_SIZE};
use plotters::prelude::*;

use super::train::SegEpoch;

type BoxErr = Box<dyn std::error::Error>;

/// `initial`: the untrained decoder's (valid loss, Dice, positive Dice), drawn at epoch 0.
pub fn curve(
    path: &Path,
    epochs: &[SegEpoch],
    initial: (f64, f64, f64),
    empty_baseline: f64,
    title: &str,
) -> Result<(), BoxErr> {
    plot::png(path, CURVE_SIZE, Some(title), |root| {
        let (left, right) = root.split_horizontally(CURVE_SIZE.0 / 2);
        draw_losses(&left, epochs, initial.0)?;
        draw_dice(&right, epochs, (initial.1, initial.2), empty_baseline)
    })?;
    Ok(())
}

fn draw_losses(area: &Area, epochs: &[SegEpoch], initial: f64) -> DrawResult {
    let x_max = epochs.len().max(1) as f64;
    let train: Vec<(f64, f64)> = epochs
        .iter()
        .map(|e| (e.epoch as f64, e.train_loss))
        .collect();
    let valid: Vec<(f64, f64)> = std::iter::once((0.0, initial))
        .chain(epochs.iter().map(|e| (e.epoch as f64, e.valid_loss)))
        .collect();
    let ys = train.iter().chain(&valid).map(|p| p.1);
    let mut c = Panel::curve("loss", 56).build(area, 0.0..x_max, plot::padded_range(ys))?;
    plot::mesh(&mut c, "epoch", "")?;
    plot::line(&mut c, train, BLUE, 2, "train")?;
    plot::line(&mut c, valid, RED, 2, "validation")?;
    plot::legend(&mut c, None)
}

fn draw_dice(
    area: &Area,
    epochs: &[SegEpoch],
    (dice0, positive0): (f64, f64),
    empty_baseline: f64,
) -> DrawResult {
    let x_max = epochs.len().max(1) as f64;
    let mut c = Panel::curve("validation Dice", 48).build(area, 0.0..x_max, 0.0..1.0f64)?;
    plot::mesh(&mut c, "epoch", "")?;
    let dice: Vec<(f64, f64)> = std::iter::once((0.0, dice0))
        .chain(epochs.iter().map(|e| (e.epoch as f64, e.valid_dice)))
        .collect();
    let pos: Vec<(f64, f64)> = std::iter::once((0.0, positive0))
        .chain(
            epochs
                .iter()
                .map(|e| (e.epoch as f64, e.valid_dice_positive)),
        )
        .filter(|p| p.1.is_finite())
        .collect();
    plot::line(&mut c, dice, RGBColor(0, 120, 60), 2, "Dice (all images)")?;
    plot::line(
        &mut c,
        pos,
        RGBColor(200, 120, 0),
        2,
        "Dice (positive images)",
    )?;
    if empty_baseline.is_finite() {
        let flat = [(0.0, empty_baseline), (x_max, empty_baseline)];
        plot::line(&mut c, flat, BLACK, 1, "all-empty predictor")?;
    }
    if let Some(best) = epochs.iter().rev().find(|e| e.improved) {
        plot::best_marker(&mut c, (best.epoch as f64, best.valid_dice))?;
    }
    plot::legend(&mut c, Some(SeriesLabelPosition::LowerRight))
}
