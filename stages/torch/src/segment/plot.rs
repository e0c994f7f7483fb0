//! `curve.png`: training and validation loss per epoch (left), validation Dice, positive-only Dice
//! and the all-empty predictor's Dice (right). Same drawing stack as `adaptor_train::plot`
//! (plotters on an RGB buffer, its embedded DejaVu Sans Mono and PNG writer).

use std::path::Path;

use plotters::prelude::*;

use super::train::SegEpoch;

const W: u32 = 1200;
const H: u32 = 480;

type BoxErr = Box<dyn std::error::Error>;

/// `initial`: the untrained decoder's (valid loss, Dice, positive Dice), drawn at epoch 0.
pub fn curve(
    path: &Path,
    epochs: &[SegEpoch],
    initial: (f64, f64, f64),
    empty_baseline: f64,
    title: &str,
) -> Result<(), BoxErr> {
    train::plot::register_embedded_font();
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 18))?;
        let (left, right) = root.split_horizontally(W / 2);
        let x_max = epochs.len().max(1) as f64;

        let train: Vec<(f64, f64)> = epochs
            .iter()
            .map(|e| (e.epoch as f64, e.train_loss))
            .collect();
        let valid: Vec<(f64, f64)> = std::iter::once((0.0, initial.0))
            .chain(epochs.iter().map(|e| (e.epoch as f64, e.valid_loss)))
            .collect();
        let ys = train
            .iter()
            .chain(&valid)
            .map(|p| p.1)
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
        let mut c = ChartBuilder::on(&left)
            .caption("loss", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))?;
        c.configure_mesh()
            .x_desc("epoch")
            .label_style(("sans-serif", 12))
            .draw()?;
        c.draw_series(LineSeries::new(train, BLUE.stroke_width(2)))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        c.draw_series(LineSeries::new(valid, RED.stroke_width(2)))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;

        let mut c = ChartBuilder::on(&right)
            .caption("validation Dice", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x_max, 0.0..1.0f64)?;
        c.configure_mesh()
            .x_desc("epoch")
            .label_style(("sans-serif", 12))
            .draw()?;
        let green = RGBColor(0, 120, 60);
        let orange = RGBColor(200, 120, 0);
        let dice: Vec<(f64, f64)> = std::iter::once((0.0, initial.1))
            .chain(epochs.iter().map(|e| (e.epoch as f64, e.valid_dice)))
            .collect();
        let pos: Vec<(f64, f64)> = std::iter::once((0.0, initial.2))
            .chain(
                epochs
                    .iter()
                    .map(|e| (e.epoch as f64, e.valid_dice_positive)),
            )
            .filter(|p| p.1.is_finite())
            .collect();
        c.draw_series(LineSeries::new(dice, green.stroke_width(2)))?
            .label("Dice (all images)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], green));
        c.draw_series(LineSeries::new(pos, orange.stroke_width(2)))?
            .label("Dice (positive images)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], orange));
        if empty_baseline.is_finite() {
            c.draw_series(LineSeries::new(
                [(0.0, empty_baseline), (x_max, empty_baseline)],
                BLACK.stroke_width(1),
            ))?
            .label("all-empty predictor")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        }
        if let Some(best) = epochs.iter().rev().find(|e| e.improved) {
            c.draw_series(std::iter::once(Circle::new(
                (best.epoch as f64, best.valid_dice),
                7,
                BLACK.stroke_width(2),
            )))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
        root.present()?;
    }
    train::plot::write_png(path, &buf, W, H)?;
    Ok(())
}
