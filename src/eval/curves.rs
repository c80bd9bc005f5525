//! Training curves as a picture: loss and validation metrics per epoch from a model's training
//! record (its manifest), the best epoch marked. Drawn by `seqserve train --report DIR` and, for
//! every evaluated model that has a record, by `seqserve evaluate --report DIR`.
use crate::model::manifest::TrainingRecord;
use plotters::prelude::*;
use std::path::Path;

/// Validation metrics drawn (at the run's selection K when recorded, else @10).
const CURVES: [(&str, RGBColor); 3] = [
    ("hr", RGBColor(31, 119, 180)),
    ("ndcg", RGBColor(255, 127, 14)),
    ("f1", RGBColor(44, 160, 44)),
];

/// One validation metric's line: its name, colour and (epoch, value) points.
type Curve = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Draws `t`'s curves as an SVG at `path`: the training loss above, the validation metrics below,
/// a vertical line at the best epoch in both.
pub fn draw(path: &Path, title: &str, t: &TrainingRecord) -> Result<(), String> {
    draw_inner(path, title, t).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw_inner(
    path: &Path,
    title: &str,
    t: &TrainingRecord,
) -> Result<(), Box<dyn std::error::Error>> {
    if t.epochs.is_empty() {
        return Err("the training record has no epochs".into());
    }
    let k = t
        .selection_metric
        .split('@')
        .nth(1)
        .unwrap_or("10")
        .to_string();
    let last = t.epochs.last().map_or(1, |e| e.epoch).max(1) as f64;
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(300);
    let losses: Vec<(f64, f64)> = t.epochs.iter().map(|e| (e.epoch as f64, e.loss)).collect();
    let (lo, hi) = losses
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &(_, l)| (a.min(l), b.max(l)));
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let mut c = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("training loss", ("sans-serif", 16))
        .build_cartesian_2d(0.5..last + 0.5, (lo - pad)..(hi + pad))?;
    c.configure_mesh().x_desc("epoch").draw()?;
    c.draw_series(LineSeries::new(losses.clone(), BLACK.stroke_width(2)))?;
    c.draw_series(std::iter::once(PathElement::new(
        vec![
            (t.best_epoch as f64, lo - pad),
            (t.best_epoch as f64, hi + pad),
        ],
        RED.stroke_width(1),
    )))?;
    let series: Vec<Curve> = CURVES
        .iter()
        .map(|(m, col)| {
            let key = format!("{m}@{k}");
            let pts = t
                .epochs
                .iter()
                .filter_map(|e| e.validation.get(&key).map(|v| (e.epoch as f64, *v)))
                .collect();
            (*m, *col, pts)
        })
        .filter(|(_, _, p): &Curve| !p.is_empty())
        .collect();
    let top_v = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        * 1.1
        + 1e-6;
    let mut c = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .caption(
            format!(
                "validation (best epoch {} of {})",
                t.best_epoch, t.epochs_run
            ),
            ("sans-serif", 16),
        )
        .build_cartesian_2d(0.5..last + 0.5, 0.0..top_v)?;
    c.configure_mesh().x_desc("epoch").draw()?;
    for (m, col, pts) in &series {
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(format!("{m}@{k}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
    }
    c.draw_series(std::iter::once(PathElement::new(
        vec![(t.best_epoch as f64, 0.0), (t.best_epoch as f64, top_v)],
        RED.stroke_width(1),
    )))?
    .label("best epoch")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(1)));
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A small page around the curves of one training run.
pub fn write_page(
    dir: &Path,
    name: &str,
    t: &TrainingRecord,
) -> Result<Vec<std::path::PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let svg = dir.join("curves.svg");
    draw(&svg, &format!("{name}: training curves"), t)?;
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{name}: training</title></head>\
         <body style=\"font-family:sans-serif;margin:2em\"><h1>{name}</h1><p>{} epochs run of {}, best epoch {} \
         ({}; {}); {:.1} s per epoch, {:.0} s in all.</p><img src=\"curves.svg\" alt=\"training curves\">\
         <p><code>{}</code></p></body></html>\n",
        t.epochs_run,
        t.max_epochs,
        t.best_epoch,
        t.selection_metric,
        t.stopped_by.as_deref().unwrap_or("finished"),
        t.seconds_per_epoch,
        t.wall_time_seconds,
        t.command.replace('<', "&lt;")
    );
    let index = dir.join("index.html");
    std::fs::write(&index, html).map_err(|e| format!("cannot write {}: {e}", index.display()))?;
    Ok(vec![svg, index])
}
