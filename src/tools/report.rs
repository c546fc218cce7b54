//! Merges `bench --json` results from different machines and vendors into one markdown table
//! and one chart (PNG and SVG): effective GB/s and fraction of copy bandwidth per optimizer
//! per adapter.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

use crate::context::AdapterSummary;
use crate::error::{Error, Result};
use crate::tools::bench::{BenchResult, CopyResult};

/// The font the PNG's text is drawn with (DejaVu Sans, Bitstream Vera license: see
/// `assets/DejaVuSans-LICENSE`), built in so that charts render on machines without fonts.
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// What the report reads of one `bench --json` file: the adapter, copy ceiling and results as
/// [`crate::tools::bench::run`] wrote them (the same types, so writer and reader cannot drift apart).
#[derive(Clone, Debug, Deserialize)]
pub struct BenchFile {
    /// The adapter measured.
    pub adapter: AdapterSummary,
    /// When it was measured (UTC, RFC 3339).
    pub date: String,
    /// How times were taken: `gpu-timestamps` or `wall-clock`.
    pub timing: String,
    /// The copy kernel's bandwidth on that adapter: the ceiling the results are compared to.
    pub copy: CopyResult,
    /// One per configuration and workload, in the order measured.
    pub results: Vec<BenchResult>,
}

impl BenchFile {
    /// Reads one result file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Report {
            what: "bench result file",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Report {
            what: "bench result file",
            path: path.display().to_string(),
            reason: format!("not a `wgpu-optim bench --json` file: {e}"),
        })
    }

    /// The adapter as the table and the legend name it: "name (backend)".
    pub fn label(&self) -> String {
        format!("{} ({})", self.adapter.name, self.adapter.backend)
    }
}

/// The rows of the report: every (workload, optimizer) any file measured, in first-seen order.
fn rows(files: &[BenchFile]) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = Vec::new();
    for file in files {
        for r in &file.results {
            let key = (r.workload.clone(), r.label());
            if !rows.contains(&key) {
                rows.push(key);
            }
        }
    }
    rows
}

fn find<'a>(file: &'a BenchFile, workload: &str, optimizer: &str) -> Option<&'a BenchResult> {
    file.results
        .iter()
        .find(|r| r.workload == workload && r.label() == optimizer)
}

/// The markdown: the adapters with their copy ceiling, then GB/s and fraction of copy for
/// every optimizer and size, one column per adapter.
pub fn markdown(files: &[BenchFile]) -> String {
    let mut out = String::from(
        "| adapter | vendor | type | driver | copy kernel GB/s | timing | date |\n\
         | --- | --- | --- | --- | ---: | --- | --- |\n",
    );
    for f in files {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {} | {} |\n",
            f.label(),
            f.adapter.vendor,
            f.adapter.device_type,
            format!("{} {}", f.adapter.driver, f.adapter.driver_info).trim(),
            f.copy.gbps,
            f.timing,
            f.date
        ));
    }
    out.push_str("\nEffective GB/s (fraction of the same adapter's copy bandwidth):\n\n");
    out.push_str("| optimizer | size | B/elem |");
    for f in files {
        out.push_str(&format!(" {} |", f.label()));
    }
    out.push_str("\n| --- | --- | ---: |");
    out.push_str(&" ---: |".repeat(files.len()));
    out.push('\n');
    for (workload, optimizer) in rows(files) {
        let bytes = files
            .iter()
            .find_map(|f| find(f, &workload, &optimizer))
            .map_or("-".to_string(), |r| {
                super::bench::byte_count(r.bytes_per_element)
            });
        out.push_str(&format!("| {optimizer} | {workload} | {bytes} |"));
        for f in files {
            match find(f, &workload, &optimizer) {
                Some(r) => out.push_str(&format!(" {:.1} ({:.2}) |", r.gbps, r.fraction_of_copy)),
                None => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }
    out
}

/// The workload the chart shows: the largest size that every file measured, else the first.
pub fn chart_workload(files: &[BenchFile]) -> Option<String> {
    let all = rows(files);
    let common: Vec<&String> = all
        .iter()
        .map(|(w, _)| w)
        .filter(|w| {
            files
                .iter()
                .all(|f| f.results.iter().any(|r| &r.workload == *w))
        })
        .collect();
    let size = |w: &str| match w.strip_prefix("2^") {
        Some(k) => k.parse::<u32>().map_or(0, |k| 1u128 << k),
        None => w.parse::<u128>().unwrap_or(u128::MAX),
    };
    common
        .into_iter()
        .max_by_key(|w| size(w))
        .or(all.first().map(|(w, _)| w))
        .cloned()
}

/// The chart's files for `stem`: `<stem>.png` and `<stem>.svg`.
pub fn chart_paths(stem: &Path) -> (PathBuf, PathBuf) {
    (stem.with_extension("png"), stem.with_extension("svg"))
}

/// Writes `<stem>.png` and `<stem>.svg`; returns their paths. A file that cannot be written
/// is an error naming it.
pub fn write_chart(files: &[BenchFile], stem: &Path) -> Result<(PathBuf, PathBuf)> {
    let workload =
        chart_workload(files).ok_or_else(|| Error::Empty("no results to chart".into()))?;
    let (png, svg) = chart_paths(stem);
    let failed = |path: &Path, reason: String| Error::Report {
        what: "chart",
        path: path.display().to_string(),
        reason,
    };
    // The PNG encoder opens its file only at the end and reports a failure as a debug dump:
    // open it first, for an error that says what went wrong.
    std::fs::File::create(&png).map_err(|e| failed(&png, e.to_string()))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| failed(&png, "the built-in font does not load".into()))?;
    let size = (1200, 900);
    draw(
        &BitMapBackend::new(&png, size).into_drawing_area(),
        files,
        &workload,
    )
    .map_err(|e| failed(&png, e))?;
    let mut text = String::new();
    draw(
        &SVGBackend::with_string(&mut text, size).into_drawing_area(),
        files,
        &workload,
    )
    .map_err(|e| failed(&svg, e))?;
    std::fs::write(&svg, text).map_err(|e| failed(&svg, e.to_string()))?;
    Ok((png, svg))
}

/// Adapter colours, distinct in print and for the common colour-vision deficiencies.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

fn chart_error<E: std::fmt::Display>(e: E) -> String {
    format!("drawing the chart failed: {e}")
}

/// One quantity per (adapter, optimizer): what a panel shows.
struct Panel<'a> {
    title: String,
    y_desc: &'a str,
    metric: fn(&BenchResult) -> f64,
    log: bool,
    /// A dashed horizontal line at this value (the copy ceiling).
    ceiling: Option<f64>,
}

fn draw<B: DrawingBackend>(
    area: &DrawingArea<B, Shift>,
    files: &[BenchFile],
    workload: &str,
) -> std::result::Result<(), String>
where
    B::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(chart_error)?;
    let values = |metric: fn(&BenchResult) -> f64| -> Vec<f64> {
        files
            .iter()
            .flat_map(|f| &f.results)
            .filter(|r| r.workload == workload)
            .map(metric)
            .filter(|v| *v > 0.0)
            .collect()
    };
    let gbps = values(|r| r.gbps);
    let spread = gbps.iter().copied().fold(0.0, f64::max)
        / gbps.iter().copied().fold(f64::INFINITY, f64::min);
    // Across vendors the rates differ by orders of magnitude: a log axis keeps them all readable.
    let log = spread > 20.0;
    let (top, bottom) = area.split_vertically(area.dim_in_pixel().1 / 2);
    draw_panel(
        &top,
        files,
        workload,
        &Panel {
            title: format!("Effective bandwidth, {workload} elements"),
            y_desc: if log { "GB/s (log scale)" } else { "GB/s" },
            metric: |r| r.gbps,
            log,
            ceiling: None,
        },
    )?;
    draw_panel(
        &bottom,
        files,
        workload,
        &Panel {
            title: format!("Fraction of the adapter's copy bandwidth, {workload} elements"),
            y_desc: "x copy kernel",
            metric: |r| r.fraction_of_copy,
            log: false,
            ceiling: Some(1.0),
        },
    )?;
    area.present().map_err(chart_error)
}

/// One adapter's bars: its legend label, colour and one rectangle per optimizer it measured.
type AdapterBars = (String, RGBColor, Vec<Rectangle<(f64, f64)>>);

/// Grouped bars: one group per optimizer, one bar per adapter.
fn draw_panel<B: DrawingBackend>(
    area: &DrawingArea<B, Shift>,
    files: &[BenchFile],
    workload: &str,
    panel: &Panel,
) -> std::result::Result<(), String>
where
    B::ErrorType: 'static,
{
    let optimizers: Vec<String> = rows(files)
        .into_iter()
        .filter(|(w, _)| w == workload)
        .map(|(_, o)| o)
        .collect();
    let values: Vec<f64> = files
        .iter()
        .flat_map(|f| &f.results)
        .filter(|r| r.workload == workload)
        .map(panel.metric)
        .collect();
    let max = values.iter().copied().fold(1e-3, f64::max);
    let min = values
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(max, f64::min);
    let n = optimizers.len();
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    // Labels sit at the middle of each group; other tick positions stay blank.
    let x_label = |x: &f64| {
        let i = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 1e-9 && i < n {
            optimizers[i].clone()
        } else {
            String::new()
        }
    };
    let bars = |floor: f64| -> Vec<AdapterBars> {
        let width = 0.8 / files.len() as f64;
        files
            .iter()
            .enumerate()
            .map(|(k, file)| {
                let color = PALETTE[k % PALETTE.len()];
                let rects = optimizers
                    .iter()
                    .enumerate()
                    .filter_map(|(i, o)| find(file, workload, o).map(|r| (i, (panel.metric)(r))))
                    .map(|(i, v)| {
                        let x0 = i as f64 + 0.1 + k as f64 * width;
                        Rectangle::new(
                            [(x0, floor), (x0 + width * 0.95, v.max(floor))],
                            color.filled(),
                        )
                    })
                    .collect();
                (file.label(), color, rects)
            })
            .collect()
    };
    macro_rules! finish {
        ($chart:expr, $floor:expr) => {{
            $chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(2 * n + 1)
                .x_label_formatter(&x_label)
                .y_desc(panel.y_desc)
                .label_style(("sans-serif", 16))
                .draw()
                .map_err(chart_error)?;
            if let Some(y) = panel.ceiling {
                let line =
                    DashedLineSeries::new([(0.0, y), (n as f64, y)], 8, 5, BLACK.stroke_width(2));
                $chart
                    .draw_series(line)
                    .map_err(chart_error)?
                    .label("copy kernel")
                    .legend(|(x, y)| {
                        PathElement::new([(x, y), (x + 14, y)], BLACK.stroke_width(2))
                    });
            }
            for (label, color, rects) in bars($floor) {
                $chart
                    .draw_series(rects)
                    .map_err(chart_error)?
                    .label(label)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                    });
            }
            $chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 16))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(chart_error)?;
        }};
    }
    // The two axis kinds are different types in plotters, hence the macro.
    if panel.log {
        let floor = min / 2.0;
        let mut chart = builder
            .build_cartesian_2d(0.0..n as f64, (floor..max * 4.0).log_scale())
            .map_err(chart_error)?;
        finish!(chart, floor);
    } else {
        let mut chart = builder
            .build_cartesian_2d(
                0.0..n as f64,
                0.0..max.max(panel.ceiling.unwrap_or(0.0)) * 1.45,
            )
            .map_err(chart_error)?;
        finish!(chart, 0.0);
    }
    Ok(())
}
