//! The report's plots: per task, the metric against the label fraction.

use std::collections::BTreeSet;
use std::path::Path;

use plotters::prelude::{Color, IntoLogRange, Palette, Palette99, SeriesLabelPosition};

use super::group::{group, has_plot, mean_std, metric_name};
use super::EvalResult;
use crate::error::Result;
use crate::plot::{self, Panel};

/// Size of a task's plot.
const SIZE: (u32, u32) = (900, 560);

/// One PNG per task: the metric (mean over seeds, error bars ± std) against the label fraction
/// (log axis), one line per (vision backbone, row). A table of zero-shot results alone (fraction
/// 0 only) has no plot.
pub fn plots(dir: &Path, results: &[EvalResult]) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for (task, cells) in group(results).into_iter().filter(|(_, c)| has_plot(c)) {
        let name = format!("{}.png", task.file_stem());
        plot::png(&dir.join(&name), SIZE, None, |root| {
            let fractions: Vec<f64> = cells
                .values()
                .flat_map(|m| m.keys().map(|k| k.1.value()))
                .filter(|f| *f > 0.0)
                .collect();
            let lo = fractions.iter().cloned().fold(1.0f64, f64::min).min(0.01);
            let panel = Panel {
                caption: &task.title(),
                caption_size: 18,
                margin: 12,
                x_label_area: 40,
                y_label_area: 56,
            };
            let mut chart = panel.build(root, (lo * 0.7..1.4f64).log_scale(), 0.0..100.0f64)?;
            chart
                .configure_mesh()
                .x_desc("label fraction")
                .y_desc(format!("{} (%)", metric_name(&task.metric)))
                .x_label_formatter(&|x| format!("{}%", x * 100.0))
                .label_style((plot::FONT_FAMILY, 12))
                .draw()?;
            let lines: BTreeSet<(String, String)> = cells
                .iter()
                .flat_map(|(row, m)| m.keys().map(move |(v, _)| (v.clone(), row.clone())))
                .collect();
            for (i, (vision, row)) in lines.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let mut pts: Vec<(f64, f64, f64)> = cells[row]
                    .iter()
                    .filter(|((v, f), _)| v == vision && f.value() > 0.0)
                    .map(|((_, f), vals)| {
                        let (m, s) = mean_std(vals);
                        (f.value(), m * 100.0, s * 100.0)
                    })
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                let label = format!("{vision} + {row}");
                plot::line(&mut chart, pts.iter().map(|p| (p.0, p.1)), color, 2, &label)?;
                plot::error_bars(&mut chart, &pts, color)?;
            }
            plot::legend(&mut chart, Some(SeriesLabelPosition::LowerRight))
        })?;
        files.push(name);
    }
    Ok(files)
}
