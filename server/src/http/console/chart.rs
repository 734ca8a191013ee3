//! Vitals charts as inline SVG (plotters' SVG backend): one chart per reading kind for a month,
//! x = day of the month in the facility's time zone.

use chrono_tz::Tz;
use plotters::prelude::*;
use rounds_core::{Month, Reading, ReadingKind};

type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// An SVG chart of a patient's readings of one kind over `month`, or None without readings.
pub fn vitals_svg(
    kind: ReadingKind,
    readings: &[&Reading],
    month: Month,
    tz: Tz,
) -> Option<String> {
    let day_of = |r: &Reading| {
        let t = r.measured_at.with_timezone(&tz);
        let d = t.date_naive();
        let secs = t
            .time()
            .signed_duration_since(chrono::NaiveTime::MIN)
            .num_seconds() as f64;
        ((d - month.first_day()).num_days() as f64) + 1.0 + secs / 86_400.0
    };
    let mut series: Vec<Series> = if kind == ReadingKind::BloodPressure {
        vec![
            ("systolic", RGBColor(190, 30, 45), Vec::new()),
            ("diastolic", RGBColor(30, 90, 190), Vec::new()),
        ]
    } else {
        vec![(kind.as_str(), RGBColor(30, 120, 90), Vec::new())]
    };
    for r in readings {
        let x = day_of(r);
        if kind == ReadingKind::BloodPressure {
            if let Some(v) = r.systolic {
                series[0].2.push((x, v));
            }
            if let Some(v) = r.diastolic {
                series[1].2.push((x, v));
            }
        } else if let Some(v) = r.value {
            series[0].2.push((x, v));
        }
    }
    for s in series.iter_mut() {
        s.2.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .collect();
    if values.is_empty() {
        return None;
    }
    let lo = values.iter().copied().fold(f64::MAX, f64::min);
    let hi = values.iter().copied().fold(f64::MIN, f64::max);
    let pad = ((hi - lo) * 0.15).max(2.0);
    let days = month
        .last_day()
        .signed_duration_since(month.first_day())
        .num_days() as f64
        + 2.0;
    let unit = readings.first().map(|r| r.unit.clone()).unwrap_or_default();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 220)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .caption(
                format!("{} ({unit})", kind.as_str().replace('_', " ")),
                ("sans-serif", 15),
            )
            .build_cartesian_2d(1.0..days, (lo - pad)..(hi + pad))
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("day of month")
            .x_labels(10)
            .y_labels(6)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .ok()?;
        for (name, color, points) in &series {
            let c = *color;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
                .ok()?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))
                .ok()?;
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .draw()
                .ok()?;
        }
        root.present().ok()?;
    }
    Some(svg)
}
