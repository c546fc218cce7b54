//! `wgpu-optim lab`: runs the seeds' experiments ([`wgpu_optim::tools::lab`]) on the GPU,
//! draws each one (`<name>.png` and `<name>.svg`: the measured curves solid, theory's rates and
//! bounds thin and dashed in the same colour) and prints measured against predicted.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use wgpu_optim::tools::lab::{EXPERIMENTS, Experiment, Line, Panel};

use crate::args::AdapterArgs;
use crate::output::describe_adapter;

/// The font the PNG's text is drawn with (DejaVu Sans, Bitstream Vera license: see
/// `assets/DejaVuSans-LICENSE`), built in so that charts render on machines without fonts; it
/// has the Greek letters and symbols (κ, √, ‖) the legends use.
const FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");

/// Colours distinct in print and for the common colour-vision deficiencies (Okabe & Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Pixels per panel; panels sit side by side.
const PANEL_SIZE: (u32, u32) = (760, 560);

/// The width of each panel of a chart with three or more.
const NARROW_PANEL_WIDTH: u32 = 520;

pub(crate) fn run_lab(out: &Path, adapter: &AdapterArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output folder {}", out.display()))?;
    let ctx = adapter.context()?;
    print!("{}", describe_adapter(&ctx.summary()));
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the built-in font does not load"))?;
    let mut rows = Vec::new();
    for entry in EXPERIMENTS {
        eprintln!("running {}", entry.name);
        let experiment = (entry.run)(&ctx).with_context(|| format!("experiment {}", entry.name))?;
        let (png, svg) = write_chart(&experiment, out)?;
        eprintln!("  {} and {}", png.display(), svg.display());
        rows.extend(
            experiment
                .comparisons
                .iter()
                .map(|c| (c.what.clone(), c.predicted, c.measured)),
        );
    }
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    println!(
        "\n{:width$}  {:>12}  {:>12}",
        "measured on the GPU", "predicted", "measured"
    );
    for (what, predicted, measured) in rows {
        println!(
            "{what:width$}  {:>12}  {:>12}",
            number(predicted),
            number(measured)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A table cell: 6, 0.990000, 3.210e-7, "-" where theory gives no number, "∞" for an unbounded
/// quantity or a target never reached.
fn number(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.is_infinite() {
        "∞".into()
    } else if v == v.round() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if (1e-3..1e4).contains(&v.abs()) {
        format!("{v:.6}")
    } else {
        format!("{v:.3e}")
    }
}

/// Writes `<out>/<name>.png` and `.svg`.
fn write_chart(
    experiment: &Experiment,
    out: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let png = out.join(format!("{}.png", experiment.name));
    let svg = out.join(format!("{}.svg", experiment.name));
    // One panel alone gets more width, for the caption; three or more get less each, so that
    // the PNG stays small enough for the README.
    let panels = experiment.panels.len() as u32;
    let panel_width = if panels > 2 {
        NARROW_PANEL_WIDTH
    } else {
        PANEL_SIZE.0
    };
    let size = (
        (panel_width * panels).max(PANEL_SIZE.0 * 4 / 3),
        PANEL_SIZE.1 + 40,
    );
    draw(
        &BitMapBackend::new(&png, size).into_drawing_area(),
        experiment,
    )
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("drawing {}", png.display()))?;
    let mut text = String::new();
    draw(
        &SVGBackend::with_string(&mut text, size).into_drawing_area(),
        experiment,
    )
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("drawing {}", svg.display()))?;
    std::fs::write(&svg, text).with_context(|| format!("writing {}", svg.display()))?;
    Ok((png, svg))
}

fn chart_error<E: std::fmt::Display>(e: E) -> String {
    format!("drawing the chart failed: {e}")
}

fn draw<B: DrawingBackend>(
    area: &DrawingArea<B, Shift>,
    experiment: &Experiment,
) -> std::result::Result<(), String>
where
    B::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(chart_error)?;
    let area = area
        .titled(&experiment.title, ("sans-serif", 24))
        .map_err(chart_error)?;
    let panels = area.split_evenly((1, experiment.panels.len()));
    for (panel, panel_area) in experiment.panels.iter().zip(&panels) {
        draw_panel(panel_area, panel)?;
    }
    area.present().map_err(chart_error)
}

/// A tick label: whole iterations as integers, log-scale values as 1e-6 (their ticks sit at
/// powers of ten, a hair off in floating point), other values with the digits they need.
fn tick(v: f64, log: bool) -> String {
    if log {
        let exponent = v.log10().round();
        if (v.log10() - exponent).abs() < 1e-6 {
            return match exponent as i32 {
                0 => "1".into(),
                1 => "10".into(),
                2 => "100".into(),
                3 => "1000".into(),
                e => format!("1e{e}"),
            };
        }
        return format!("{v:.1e}");
    }
    if v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The corner of the plot that the fewest points fall into (a box of the legend's size, in
/// fractions of the plot's width and height), for the legend: curves fall from the upper left,
/// grow to the upper right, or swing. A point of a line drawn with markers counts ten times:
/// each one is a measurement the legend should not hide; the second value says whether the
/// corner chosen still hides one.
fn emptiest_corner(
    lines: &[(&Line, Vec<(f64, f64)>)],
    panel: &Panel,
    x: (f64, f64),
    y: (f64, f64),
    (width, height): (f64, f64),
) -> (SeriesLabelPosition, bool) {
    let unit = |v: f64, (low, high): (f64, f64), log: bool| {
        if log {
            (v.ln() - low.ln()) / (high.ln() - low.ln())
        } else {
            (v - low) / (high - low)
        }
    };
    let (left, right) = ((0.0, width), (1.0 - width, 1.0));
    let (low, high) = ((0.0, height), (1.0 - height, 1.0));
    let corners = [
        (SeriesLabelPosition::UpperRight, right, high),
        (SeriesLabelPosition::LowerLeft, left, low),
        (SeriesLabelPosition::UpperLeft, left, high),
        (SeriesLabelPosition::LowerRight, right, low),
    ];
    // Points along every segment, in axis units (0..1), so that a line with few points
    // still counts where it passes.
    let mut samples = Vec::new();
    for (line, points) in lines {
        let weight = if line.markers { 10 } else { 1 };
        let units: Vec<(f64, f64)> = points
            .iter()
            .map(|(px, py)| (unit(*px, x, panel.log_x), unit(*py, y, panel.log_y)))
            .collect();
        samples.extend(units.first().map(|p| (*p, weight)));
        for w in units.windows(2) {
            samples.extend((1..=8).map(|i| {
                let t = i as f64 / 8.0;
                let p = (
                    w[0].0 + t * (w[1].0 - w[0].0),
                    w[0].1 + t * (w[1].1 - w[0].1),
                );
                // The segment's own end is a measurement; the points between are not.
                (p, if i == 8 { weight } else { 1 })
            }));
        }
    }
    let inside = |(xs, ys): ((f64, f64), (f64, f64))| {
        samples
            .iter()
            .filter(move |((u, v), _)| (xs.0..=xs.1).contains(u) && (ys.0..=ys.1).contains(v))
            .map(|(_, weight)| *weight)
    };
    corners
        .into_iter()
        .min_by_key(|(_, xs, ys)| inside((*xs, *ys)).sum::<usize>())
        .map_or(
            (SeriesLabelPosition::UpperRight, false),
            |(corner, xs, ys)| (corner, inside((xs, ys)).any(|weight| weight > 1)),
        )
}

/// The legend's size as fractions of the plot's width and height, estimated from its labels
/// (14 px text: about 8 px a character, 19 px a row, plus the sample line and padding) and
/// the plot's size (the panel less its axis label areas, caption and margins); at least a
/// quarter-width, third-height box.
fn legend_size(panel: &Panel, (width, height): (u32, u32)) -> (f64, f64) {
    let plot_width = (f64::from(width) - 76.0 - 28.0).max(1.0);
    let plot_height = (f64::from(height) - 44.0 - 28.0 - 30.0).max(1.0);
    let chars = panel
        .lines
        .iter()
        .map(|l| l.label.chars().count())
        .max()
        .unwrap_or(0);
    let legend_width = 40.0 + 8.0 * chars as f64;
    let legend_height = 12.0 + 19.0 * panel.lines.len() as f64;
    (
        (legend_width / plot_width).clamp(0.45, 0.95),
        (legend_height / plot_height).clamp(0.32, 0.95),
    )
}

/// The points a line shows on these axes: log axes drop what they cannot place (x = 0,
/// y ≤ 0, non-finite values).
fn visible(line: &Line, panel: &Panel) -> Vec<(f64, f64)> {
    line.points
        .iter()
        .copied()
        .filter(|(x, y)| {
            x.is_finite()
                && y.is_finite()
                && (!panel.log_x || *x > 0.0)
                && (!panel.log_y || *y > 0.0)
        })
        .collect()
}

fn draw_panel<B: DrawingBackend>(
    area: &DrawingArea<B, Shift>,
    panel: &Panel,
) -> std::result::Result<(), String>
where
    B::ErrorType: 'static,
{
    let lines: Vec<(&Line, Vec<(f64, f64)>)> =
        panel.lines.iter().map(|l| (l, visible(l, panel))).collect();
    let all = || lines.iter().flat_map(|(_, p)| p.iter().copied());
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let x_min = if panel.log_x { 1.0 } else { 0.0 };
    let y_max = all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let y_min = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let (mut y_low, y_high) = if panel.log_y {
        // Below 1e-16 of the top lies only float64 rounding.
        (y_min.max(y_max * 1e-16) / 3.0, y_max * 3.0)
    } else {
        let pad = 0.08 * (y_max - y_min).max(1e-12);
        (y_min - pad, y_max + pad)
    };
    let legend = legend_size(panel, area.dim_in_pixel());
    let (mut legend_corner, hides_marker) =
        emptiest_corner(&lines, panel, (x_min, x_max), (y_low, y_high), legend);
    if hides_marker {
        // Every corner would hide a measurement: room under the curves for the legend, the
        // axis extended down by the legend's height (and 5%).
        let room = 1.05 * legend.1 / (1.0 - legend.1);
        y_low = if panel.log_y {
            y_low / (y_high / y_low).powf(room)
        } else {
            y_low - room * (y_high - y_low)
        };
        legend_corner = emptiest_corner(&lines, panel, (x_min, x_max), (y_low, y_high), legend).0;
    }
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(76);
    let x_desc = if panel.log_x {
        format!("{} (log scale)", panel.x_label)
    } else {
        panel.x_label.clone()
    };
    macro_rules! finish {
        ($chart:expr) => {{
            $chart
                .configure_mesh()
                .x_desc(x_desc.as_str())
                .y_desc(panel.y_label.as_str())
                .x_label_formatter(&|x: &f64| tick(*x, panel.log_x))
                .y_label_formatter(&|y: &f64| tick(*y, panel.log_y))
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 16))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(chart_error)?;
            // Measurements first, broad and light; theory's thin dashed lines on top, so that
            // both stay visible where they coincide.
            let mut ordered: Vec<&(&Line, Vec<(f64, f64)>)> = lines.iter().collect();
            ordered.sort_by_key(|(line, _)| line.predicted);
            for (line, points) in ordered {
                let colour = PALETTE[line.colour % PALETTE.len()];
                let annotation = if line.predicted {
                    let style = colour.stroke_width(2);
                    $chart
                        .draw_series(DashedLineSeries::new(points.iter().copied(), 6, 5, style))
                        .map_err(chart_error)?
                } else {
                    let style = colour.mix(0.55).stroke_width(4);
                    if line.markers {
                        $chart
                            .draw_series(
                                points
                                    .iter()
                                    .map(|p| Circle::new(*p, 4, colour.mix(0.8).filled())),
                            )
                            .map_err(chart_error)?;
                    }
                    $chart
                        .draw_series(LineSeries::new(points.iter().copied(), style))
                        .map_err(chart_error)?
                };
                let predicted = line.predicted;
                annotation.label(line.label.as_str()).legend(move |(x, y)| {
                    if predicted {
                        PathElement::new([(x, y), (x + 7, y)], colour.stroke_width(2))
                    } else {
                        PathElement::new([(x, y), (x + 18, y)], colour.mix(0.55).stroke_width(4))
                    }
                });
            }
            $chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .position(legend_corner)
                .draw()
                .map_err(chart_error)?;
        }};
    }
    // The four axis kinds are different types in plotters, hence the macro.
    match (panel.log_x, panel.log_y) {
        (false, false) => {
            let mut chart = builder
                .build_cartesian_2d(x_min..x_max, y_low..y_high)
                .map_err(chart_error)?;
            finish!(chart);
        }
        (false, true) => {
            let mut chart = builder
                .build_cartesian_2d(x_min..x_max, (y_low..y_high).log_scale())
                .map_err(chart_error)?;
            finish!(chart);
        }
        (true, false) => {
            let mut chart = builder
                .build_cartesian_2d((x_min..x_max).log_scale(), y_low..y_high)
                .map_err(chart_error)?;
            finish!(chart);
        }
        (true, true) => {
            let mut chart = builder
                .build_cartesian_2d((x_min..x_max).log_scale(), (y_low..y_high).log_scale())
                .map_err(chart_error)?;
            finish!(chart);
        }
    }
    Ok(())
}
