//! SVG charts of a report, drawn with plotters: the ratio of afreg to the faster peer for every
//! comparable workload (the one chart to read first; another for afreg with its defaults), blob
//! throughput per size, crane's image push and pull, manifest request rates against
//! connections, and the cluster's figures. Bars show the median, whiskers the spread over the
//! rounds.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::{size_label, Report};
use crate::targets::label;

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(227, 119, 194),
];

/// A bar: its label, median, minimum and maximum, and the index of its colour.
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub color: usize,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("chart: {e}")
}

/// Horizontal bars with whiskers, the first row on top; `line` draws a vertical rule (a goal)
/// at that value.
pub fn bars(path: &Path, title: &str, unit: &str, rows: &[Bar], line: Option<f64>) -> Result<()> {
    // plotters counts rows from the bottom.
    let rows: Vec<&Bar> = rows.iter().rev().collect();
    let n = rows.len().max(1);
    let height = 90 + 26 * n as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let top = rows.iter().map(|r| r.max.max(r.median)).filter(|v| v.is_finite()).fold(line.unwrap_or(0.0), f64::max);
    let top = if top > 0.0 { top * 1.12 } else { 1.0 };
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(300)
        .build_cartesian_2d(0.0..top, (0..n).into_segmented())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .max_light_lines(1)
        .x_desc(unit)
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().filter(|(_, r)| r.median.is_finite()).map(|(i, r)| {
            let c = COLORS[r.color % COLORS.len()];
            let mut bar = Rectangle::new(
                [(0.0, SegmentValue::Exact(i)), (r.median, SegmentValue::Exact(i + 1))],
                c.mix(0.8).filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().filter(|(_, r)| r.min.is_finite() && r.max > r.min).map(|(i, r)| {
            ErrorBar::new_horizontal(SegmentValue::CenterOf(i), r.min, r.median, r.max, BLACK.stroke_width(1), 8)
        }))
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().filter(|(_, r)| r.median.is_finite()).map(|(i, r)| {
            Text::new(crate::report::fmt(Some(r.median)), (r.median, SegmentValue::CenterOf(i)), ("sans-serif", 12))
        }))
        .map_err(err)?;
    if let Some(x) = line {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, SegmentValue::Exact(0)), (x, SegmentValue::Exact(n))],
                RED.stroke_width(2),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Lines of (x, y) points, one per series, on a log-2 x axis (connections).
pub fn lines(path: &Path, title: &str, x_desc: &str, unit: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmax = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(1.0, f64::max);
    let ymax = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..xmax * 1.2).log_scale(), 0.0..ymax)
        .map_err(err)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(unit).y_label_formatter(&|v| format!("{v:.0}")).draw().map_err(err)?;
    for (k, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn color_of(target: &str) -> usize {
    match target {
        "afreg" => 0,
        "afreg-token" => 4,
        "afreg-defaults" => 7,
        "afreg-cluster" => 5,
        "afreg-notify" => 8,
        "afreg-no-usage" => 9,
        "distribution-v3" => 1,
        "distribution-2.8" => 2,
        "zot" => 3,
        _ => 6,
    }
}

/// Draws every chart of `report` into `dir`; returns the files written.
pub fn draw_all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    // 1. afreg ÷ the faster peer, every comparable workload; then the same for afreg with its
    // defaults.
    for (target, file) in [("afreg", "ratios.svg"), ("afreg-defaults", "ratios-defaults.svg")] {
        let mut rows = vec![];
        for w in comparable_workloads(report, target) {
            if let Some((ratio, _)) = report.vs_best_peer(&w, target) {
                rows.push(Bar {
                    label: w.clone(),
                    median: ratio,
                    min: f64::NAN,
                    max: f64::NAN,
                    color: if ratio >= 1.0 { 2 } else { 3 },
                });
            }
        }
        let p = dir.join(file);
        let title = format!("{} ÷ the faster peer (median; > 1 is ahead; red rule = parity)", label(target));
        bars(&p, &title, "times the faster peer", &rows, Some(1.0))?;
        out.push(p);
    }
    // 2. Blob throughput, a chart per size.
    for &size in &report.blob_sizes {
        let s = size_label(size);
        let mut rows = vec![];
        let at_once = format!("pull-{}x{}", crate::AT_ONCE_CLIENTS, crate::AT_ONCE_BLOBS);
        for w in ["push-mono", "push-single-post", "push-streamed", "push-chunked", "pull", at_once.as_str()] {
            for f in report.figures.iter().filter(|f| f.workload == format!("{w}/{s}")) {
                rows.push(Bar {
                    label: format!("{w} · {}", label(&f.target)),
                    median: f.median,
                    min: f.min,
                    max: f.max,
                    color: color_of(&f.target),
                });
            }
        }
        let p = dir.join(format!("blobs-{s}.svg"));
        bars(&p, &format!("Blob push and pull, {s} (MiB/s, higher is better)"), "MiB/s", &rows, None)?;
        out.push(p);
    }
    // 3. crane: a whole image pushed and pulled.
    let mut rows = vec![];
    for f in report.figures.iter().filter(|f| f.group == "images") {
        rows.push(Bar {
            label: format!("{} · {}", f.workload, label(&f.target)),
            median: f.median,
            min: f.min,
            max: f.max,
            color: color_of(&f.target),
        });
    }
    let p = dir.join("crane.svg");
    bars(&p, "crane push and pull of a 20-layer image (MiB/s, higher is better)", "MiB/s", &rows, None)?;
    out.push(p);
    // 4. Manifests: req/s against connections.
    for method in ["get", "head"] {
        let mut series = vec![];
        for t in report.targets.iter().filter(|t| t.available && t.role != "reference") {
            let pts: Vec<(f64, f64)> = report
                .figures
                .iter()
                .filter(|f| f.target == t.id && f.workload.starts_with(&format!("manifest-{method}/")))
                .filter_map(|f| Some((f.workload.rsplit('/').next()?.parse::<f64>().ok()?, f.median)))
                .collect();
            if !pts.is_empty() {
                series.push((t.label.clone(), pts));
            }
        }
        let p = dir.join(format!("manifest-{method}.svg"));
        lines(
            &p,
            &format!("Manifest {} by tag (req/s, higher is better)", method.to_uppercase()),
            "connections",
            "req/s",
            &series,
        )?;
        out.push(p);
    }
    // 5. The cluster against its goals.
    let mut rows = vec![];
    for f in report.figures.iter().filter(|f| f.group == "cluster" && f.unit == "ms") {
        rows.push(Bar {
            label: f.workload.clone(),
            median: f.median,
            min: f.min,
            max: f.max,
            color: color_of(&f.target),
        });
    }
    let p = dir.join("replication-lag.svg");
    bars(&p, "Replication lag, us → region (ms, lower is better; red rule = 50 ms goal)", "ms", &rows, Some(50.0))?;
    out.push(p);
    let mut rows = vec![];
    for f in report.figures.iter().filter(|f| f.group == "cluster" && f.unit == "MiB/s") {
        let who = if f.target == "reference" { "raw Kubo → Kubo" } else { "afreg eu (alone)" };
        rows.push(Bar {
            label: format!("{} · {who}", f.workload),
            median: f.median,
            min: f.min,
            max: f.max,
            color: color_of(&f.target),
        });
    }
    let p = dir.join("cross-region-pin.svg");
    bars(&p, "Cross-region pin (MiB/s, higher is better)", "MiB/s", &rows, None)?;
    out.push(p);
    Ok(out)
}

/// Workloads that `target` and at least one peer both ran, in report order.
pub fn comparable_workloads(report: &Report, target: &str) -> Vec<String> {
    let mut seen = vec![];
    for f in &report.figures {
        if f.target == target && !seen.contains(&f.workload) && report.best_peer(&f.workload).is_some() {
            seen.push(f.workload.clone());
        }
    }
    seen
}
