//! `pool.svg`: completed requests/s per configuration, and p99 TTFT of crit 5 and crit 1.

use super::ConfigResult;
use flowgate_bench::plot::criticality_color;
use plotters::prelude::*;
use std::path::Path;

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Draw both panels; `unloaded_p99_ms` (crit 5, unloaded) is drawn at 2× as the TTFT target.
pub fn draw(path: &Path, configs: &[ConfigResult], capacity: f64, unloaded_p99_ms: f64) -> PlotResult {
    let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(36);
    top.titled("heterogeneous pool at 1.5x capacity: detectors compared", ("sans-serif", 20))?;
    let (left, right) = body.split_horizontally(460);
    let n = configs.len().max(1) as f64;
    let names: Vec<String> = configs.iter().map(|c| c.config.clone()).collect();
    let label = move |x: &f64| {
        let i = x.floor();
        if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };

    let ymax = configs.iter().map(|c| c.completed_rps).fold(capacity, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption("completed requests/s", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n, 0f64..ymax.max(1.0))?;
    chart.configure_mesh().x_labels(2 * n as usize + 1).x_label_formatter(&label).y_desc("req/s").draw()?;
    let blue = RGBColor(31, 119, 180);
    chart.draw_series(configs.iter().enumerate().map(|(i, c)| {
        Rectangle::new([(i as f64 + 0.2, 0.0), (i as f64 + 0.8, c.completed_rps)], blue.filled())
    }))?;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.0, capacity), (n, capacity)],
            6,
            4,
            BLACK.stroke_width(1),
        ))?
        .label("derived pool capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).border_style(BLACK).draw()?;

    let p99 = |c: &ConfigResult, crit: u8| {
        c.classes.iter().find(|k| k.criticality == crit).map_or(0.0, |k| k.ttft.p99_ms)
    };
    let ymax =
        configs.iter().flat_map(|c| [p99(c, 5), p99(c, 1)]).fold(2.0 * unloaded_p99_ms, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("p99 TTFT (ms, from arrival)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, 0f64..ymax.max(1.0))?;
    let names: Vec<String> = configs.iter().map(|c| c.config.clone()).collect();
    let label = move |x: &f64| {
        let i = x.floor();
        if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart.configure_mesh().x_labels(2 * n as usize + 1).x_label_formatter(&label).y_desc("ms").draw()?;
    for (crit, offset) in [(5u8, 0.15), (1u8, 0.5)] {
        let color = criticality_color(crit);
        chart
            .draw_series(configs.iter().enumerate().map(|(i, c)| {
                let x = i as f64 + offset;
                Rectangle::new([(x, 0.0), (x + 0.35, p99(c, crit))], color.filled())
            }))?
            .label(format!("crit {crit}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    let target = 2.0 * unloaded_p99_ms;
    chart
        .draw_series(DashedLineSeries::new(vec![(0.0, target), (n, target)], 6, 4, BLACK.stroke_width(1)))?
        .label("2x unloaded crit-5 p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
