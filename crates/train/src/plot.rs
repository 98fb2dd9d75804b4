//! The loss-curve PNG written at the end of a run (training loss per logged step, validation loss when
//! computed), drawn with plotters and an embedded DejaVu font so no system fonts are needed.

use crate::error::{io, Result, TrainError};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

fn ensure_font() {
    FONT.call_once(|| {
        // Registration only fails for unparsable font bytes; the embedded DejaVu font parses.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// `(step, value)` points.
pub type Series = Vec<(u64, f64)>;

/// Reads the `loss` and `val_loss` series from a run's `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<(Series, Series)> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            TrainError::Invalid(format!("{}:{}: not JSON: {e}", path.display(), i + 1))
        })?;
        let Some(step) = v.get("step").and_then(|s| s.as_u64()) else {
            continue;
        };
        if let Some(l) = v.get("loss").and_then(|x| x.as_f64()) {
            train.push((step, l));
        }
        if let Some(l) = v.get("val_loss").and_then(|x| x.as_f64()) {
            val.push((step, l));
        }
    }
    Ok((train, val))
}

/// Draws the curves into `path` (PNG, 900x540), through a temporary file renamed into place.
pub fn loss_curve_png(path: &Path, train: &[(u64, f64)], val: &[(u64, f64)]) -> Result<()> {
    if train.is_empty() {
        return Ok(());
    }
    ensure_font();
    let tmp = path.with_file_name(format!(".loss.tmp-{}.png", std::process::id()));
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = train
            .iter()
            .chain(val)
            .map(|p| p.0)
            .max()
            .unwrap_or(1)
            .max(1);
        let ys = train
            .iter()
            .chain(val)
            .map(|p| p.1)
            .filter(|y| y.is_finite());
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..x_max, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .label_style(("sans-serif", 14))
            .draw()?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.iter().copied(), &RED))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    };
    if let Err(e) = draw() {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::Invalid(format!(
            "drawing {}: {e}",
            path.display()
        )));
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}
