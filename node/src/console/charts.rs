//! The console's charts: bar charts drawn as SVG on the server. Hand-written because what
//! they need is a few rectangles and labels: a chart library would put JavaScript in every
//! page, a build step from npm into the node's binary, and a second way of drawing the same
//! figures; SVG renders without script, offline, and is checked by the same templates
//! (maud escapes every label).

use maud::{html, Markup};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 12.0;

/// One group of bars (a day), one bar per series (a region).
pub struct Group {
    pub label: String,
    pub values: Vec<f64>,
}

/// A grouped bar chart of `groups` with a legend of `series`; `format` writes an axis value.
pub fn bars(title: &str, series: &[String], groups: &[Group], format: fn(f64) -> String) -> Markup {
    let max = groups.iter().flat_map(|g| g.values.iter().copied()).fold(0.0, f64::max);
    let scale = if max > 0.0 { (HEIGHT - BOTTOM - TOP) / max } else { 0.0 };
    let slot = (WIDTH - LEFT) / groups.len().max(1) as f64;
    let bar = (slot * 0.8) / series.len().max(1) as f64;
    html! {
        figure.chart {
            figcaption { (title) }
            svg role="img" aria-label=(title) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) width="100%" {
                line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
                text.tick x=(LEFT - 6.0) y=(TOP + 4.0) text-anchor="end" { (format(max)) }
                text.tick x=(LEFT - 6.0) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
                @for (i, g) in groups.iter().enumerate() {
                    @let x0 = LEFT + i as f64 * slot + slot * 0.1;
                    @for (s, v) in g.values.iter().enumerate() {
                        @let h = v * scale;
                        rect class=(format!("bar s{}", s % 6)) x=(x0 + s as f64 * bar) y=(HEIGHT - BOTTOM - h)
                            width=(bar.max(1.0)) height=(h) {
                            title { (series.get(s).map(String::as_str).unwrap_or("")) " " (g.label) ": " (format(*v)) }
                        }
                    }
                    @if groups.len() <= 16 || i % (groups.len() / 8).max(1) == 0 {
                        text.tick x=(x0 + slot * 0.4) y=(HEIGHT - 8.0) text-anchor="middle" { (g.label) }
                    }
                }
            }
            @if series.len() > 1 {
                ul.legend {
                    @for (s, name) in series.iter().enumerate() {
                        li { span class=(format!("swatch s{}", s % 6)) {} (name) }
                    }
                }
            }
        }
    }
}

/// A count as the axis shows it.
pub fn count(v: f64) -> String {
    format!("{v:.0}")
}

/// Bytes in binary units.
pub fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_as_tall_as_their_share_and_labels_are_escaped() {
        let groups = vec![
            Group { label: "<b>".into(), values: vec![2.0, 0.0] },
            Group { label: "d2".into(), values: vec![4.0, 1.0] },
        ];
        let svg = bars("pulls", &["us".into(), "eu".into()], &groups, count).into_string();
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        let full = HEIGHT - BOTTOM - TOP;
        assert!(svg.contains(&format!("height=\"{full}\"")), "the largest bar spans the chart: {svg}");
        assert!(svg.contains(&format!("height=\"{}\"", full / 2.0)));
    }

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }
}
