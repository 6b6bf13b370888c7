//! SVG plots (plotters, SVG backend only).

use crate::measurement::{Measurement, ScalingPoint};
use plotters::prelude::*;
use std::path::Path;

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Colour of a criticality, 1 (red) to 5 (blue).
pub fn criticality_color(c: u8) -> RGBColor {
    match c {
        1 => RGBColor(214, 39, 40),
        2 => RGBColor(255, 127, 14),
        3 => RGBColor(44, 160, 44),
        4 => RGBColor(23, 190, 207),
        _ => RGBColor(31, 119, 180),
    }
}

const BASELINE_COLORS: [RGBColor; 2] = [RGBColor(148, 103, 189), RGBColor(127, 127, 127)];

/// Saturation throughput vs shards, with the baselines as dashed horizontal lines.
pub fn scaling(path: &Path, flowgate: &[ScalingPoint], baselines: &[Measurement]) -> PlotResult {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let values: Vec<f64> = flowgate
        .iter()
        .flat_map(|p| [p.req_per_s, p.low_load_req_per_s])
        .chain(baselines.iter().map(|m| m.req_per_s))
        .filter(|v| *v > 0.0)
        .map(|v| v / 1e6)
        .collect();
    // Low load and saturation differ by orders of magnitude: a log axis shows both.
    let ymax = values.iter().copied().fold(1e-3, f64::max) * 2.0;
    let ymin = values.iter().copied().fold(ymax, f64::min) / 2.0;
    let xmax = flowgate.iter().map(|p| p.shards).max().unwrap_or(1) as f64 + 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("flowgate throughput vs shards (free capacity)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..xmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("shards")
        .y_desc("M requests/s")
        .x_labels(2 * xmax as usize)
        .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-9 { format!("{x:.0}") } else { String::new() })
        .draw()?;
    let sat: Vec<(f64, f64)> = flowgate.iter().map(|p| (p.shards as f64, p.req_per_s / 1e6)).collect();
    let low: Vec<(f64, f64)> =
        flowgate.iter().map(|p| (p.shards as f64, p.low_load_req_per_s / 1e6)).collect();
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(sat.clone(), blue.stroke_width(2)))?
        .label("flowgate, saturation")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart.draw_series(sat.iter().map(|p| Circle::new(*p, 4, blue.filled())))?;
    let green = RGBColor(44, 160, 44);
    chart
        .draw_series(LineSeries::new(low.clone(), green.stroke_width(2)))?
        .label("flowgate, low load (1 at a time)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green.stroke_width(2)));
    chart.draw_series(low.iter().map(|p| Circle::new(*p, 4, green.filled())))?;
    for (m, color) in baselines.iter().zip(BASELINE_COLORS) {
        let y = m.req_per_s / 1e6;
        chart
            .draw_series(DashedLineSeries::new(vec![(0.5, y), (xmax, y)], 6, 4, color.stroke_width(2)))?
            .label(format!("{} (saturation)", m.implementation))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One CDF line: label, criticality (for the colour), ascending waits in ns.
pub struct CdfLine {
    /// Legend text.
    pub label: String,
    /// Criticality (colour).
    pub criticality: u8,
    /// Ascending waits, ns.
    pub waits_ns: Vec<u64>,
}

/// Smallest wait drawn (log axis), ms.
const FLOOR_MS: f64 = 0.01;

fn cdf_points(sorted: &[u64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let steps = n.min(400);
    let mut pts = Vec::with_capacity(steps + 1);
    for k in 0..=steps {
        let idx = (k * (n - 1)) / steps.max(1);
        pts.push(((sorted[idx] as f64 / 1e6).max(FLOOR_MS), (idx + 1) as f64 / n as f64));
    }
    pts
}

/// One SVG with a panel per implementation, each with a wait CDF per criticality.
pub fn cdf_panels(path: &Path, title: &str, panels: &[(String, Vec<CdfLine>)]) -> PlotResult {
    let width = 430 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(36);
    top.titled(title, ("sans-serif", 20))?;
    let xmax = panels
        .iter()
        .flat_map(|(_, lines)| lines.iter().filter_map(|l| l.waits_ns.last()))
        .map(|&w| w as f64 / 1e6)
        .fold(1.0, f64::max)
        * 1.5;
    for ((name, lines), area) in panels.iter().zip(body.split_evenly((1, panels.len().max(1)))) {
        let mut chart = ChartBuilder::on(&area)
            .caption(name, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(40)
            .build_cartesian_2d((FLOOR_MS..xmax).log_scale(), 0f64..1.02)?;
        chart.configure_mesh().x_desc("wait (ms)").y_desc("fraction dispatched").x_labels(6).draw()?;
        for line in lines {
            let color = criticality_color(line.criticality);
            chart
                .draw_series(LineSeries::new(cdf_points(&line.waits_ns), color.stroke_width(2)))?
                .label(format!("{} (n={})", line.label, line.waits_ns.len()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points_are_monotone_and_end_at_one() {
        let waits: Vec<u64> = (0..1000).map(|i| i * 10_000).collect();
        let pts = cdf_points(&waits);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(pts.last().unwrap().1, 1.0);
        assert_eq!(pts[0].0, FLOOR_MS, "a zero wait is drawn at the floor");
        assert!(cdf_points(&[]).is_empty());
    }
}
