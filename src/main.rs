//! `wgpu-optim`: checks the fused GPU optimizers against PyTorch and the CPU reference.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use wgpu_optim::tools::bench::{self, BenchOptions, Workload};
use wgpu_optim::tools::conformance::{self, Fixture, Status};
use wgpu_optim::context::AdapterSummary;
use wgpu_optim::context::list_adapters;
use wgpu_optim::optim::OPTIMIZER_NAMES;
use wgpu_optim::tools::report;
use wgpu_optim::{ContextOptions, GpuContext, GradScaler, TrainingOptions};

#[derive(Parser)]
#[command(
    version,
    about = "Fused WGSL optimizer steps, checked against torch.optim",
    long_about = "Fused WGSL optimizer steps, checked against torch.optim.\n\n\
        With no command: picks the best adapter (discrete GPU, then integrated, then software), \
        prints it, replays the built-in PyTorch fixture on it and benchmarks every optimizer \
        briefly, then prints one table. Exits 1 if any conformance case fails.\n\n\
        --backend and --adapter go before or after the command."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Adapter choice, for every command that opens one.
    #[command(flatten)]
    adapter: AdapterArgs,
}

/// Which adapter to run on: global options, read by every command that opens an adapter.
#[derive(clap::Args, Clone, Debug, Default)]
struct AdapterArgs {
    /// Only consider adapters of this backend (default: `WGPU_BACKEND`, else every backend).
    #[arg(long, value_enum, global = true)]
    backend: Option<Backend>,
    /// Only consider adapters whose name contains this (case-insensitive).
    #[arg(long, value_name = "SUBSTRING", global = true)]
    adapter: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    Vulkan,
    Gl,
    Metal,
    Dx12,
}

impl Backend {
    fn backends(self) -> wgpu::Backends {
        match self {
            Backend::Vulkan => wgpu::Backends::VULKAN,
            Backend::Gl => wgpu::Backends::GL,
            Backend::Metal => wgpu::Backends::METAL,
            Backend::Dx12 => wgpu::Backends::DX12,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Vulkan => "vulkan",
            Backend::Gl => "gl",
            Backend::Metal => "metal",
            Backend::Dx12 => "dx12",
        }
    }
}

impl AdapterArgs {
    fn context(&self) -> Result<GpuContext> {
        Ok(GpuContext::new(&ContextOptions {
            backends: self.backend.map(Backend::backends),
            adapter_name: self.adapter.clone(),
            ..Default::default()
        })?)
    }

    /// The options given, as typed: "--backend gl --adapter nvidia".
    fn given(&self) -> Vec<String> {
        let mut given = Vec::new();
        if let Some(b) = self.backend {
            given.push(format!("--backend {}", b.name()));
        }
        if let Some(a) = &self.adapter {
            given.push(format!("--adapter {a}"));
        }
        given
    }
}

#[derive(Subcommand)]
enum Command {
    /// Replay PyTorch's trajectories on the GPU and on the CPU reference; exit 1 on any failure.
    Conformance {
        /// Fixture file (format optimizer-conformance/1); default: the copy built into the binary.
        file: Option<PathBuf>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Measure each optimizer's effective bandwidth as a fraction of this adapter's copy kernel.
    Bench {
        /// Optimizers to measure (default: all). SGD and SGDW run with momentum 0.9.
        #[arg(long = "optimizer", value_name = "NAME", num_args = 1..)]
        optimizers: Vec<String>,
        /// Sizes in elements: a number, 2^k, or gpt2 (GPT-2 small's 148 tensors, 124M).
        #[arg(
            long,
            value_name = "N",
            num_args = 1..,
            default_values = ["2^20", "2^24"],
            allow_negative_numbers = true
        )]
        sizes: Vec<String>,
        /// Timed steps per measurement (at least 1); the median is reported.
        #[arg(long, value_name = "N", default_value_t = 30, value_parser = at_least_one, allow_negative_numbers = true)]
        steps: usize,
        /// Untimed steps before timing.
        #[arg(long, value_name = "N", default_value_t = 5, value_parser = whole_number, allow_negative_numbers = true)]
        warmup: usize,
        /// Clip every step by the global gradient norm (measures the norm pass's cost).
        #[arg(long, value_name = "MAX_NORM", value_parser = positive_finite, allow_negative_numbers = true)]
        max_grad_norm: Option<f64>,
        /// Loss scaling with GradScaler's defaults (measures the non-finite check's cost).
        #[arg(long)]
        grad_scaler: bool,
        /// Cut the optimizer's arenas into buffers of at most this many MiB (default and
        /// maximum: the adapter's storage binding limit). For studying how allocation sizes
        /// change speed.
        #[arg(long, value_name = "MIB", value_parser = mebibytes, allow_negative_numbers = true)]
        segment_mib: Option<u64>,
        /// Also write the full results (adapter, copy ceiling, every measurement) as JSON
        /// (checked for writing before anything is measured).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Merge `bench --json` files from different machines into a markdown table and a chart of
    /// GB/s and fraction of copy bandwidth per optimizer per adapter (PNG and SVG). Opens no
    /// adapter.
    Report {
        /// Result files written by `wgpu-optim bench --json FILE`.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Where the chart goes: STEM.png and STEM.svg.
        #[arg(long, value_name = "STEM", default_value = "report")]
        chart: PathBuf,
        /// Also write the markdown table to this file (it is printed either way).
        #[arg(long, value_name = "FILE")]
        markdown: Option<PathBuf>,
    },
    /// List every adapter wgpu finds, best first, with the limits that matter here (only those
    /// of --backend, and whose names contain --adapter, when given).
    Adapters {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A whole number of at least 1 (`--steps`).
fn at_least_one(text: &str) -> Result<usize, String> {
    match whole_number(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A whole number, 0 or more (`--warmup`).
fn whole_number(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i128>() {
        Ok(n) if n < 0 => Err("must not be negative".into()),
        Ok(n) => usize::try_from(n).map_err(|_| "is too large".into()),
        Err(_) => Err("must be a whole number".into()),
    }
}

/// A finite number > 0 (`--max-grad-norm`).
fn positive_finite(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(_) => Err("must be a finite number > 0".into()),
        Err(_) => Err("must be a number".into()),
    }
}

/// A whole number of MiB, at least 1, returned in bytes (`--segment-mib`).
fn mebibytes(text: &str) -> Result<u64, String> {
    let mib = at_least_one(text)? as u64;
    mib.checked_mul(1 << 20)
        .ok_or_else(|| "is more bytes than 64 bits count".into())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let adapter = cli.adapter;
    let Some(command) = cli.command else {
        return run_default(&adapter);
    };
    match command {
        Command::Conformance { file, json } => run_conformance(file, json, &adapter),
        Command::Bench {
            optimizers,
            sizes,
            steps,
            warmup,
            max_grad_norm,
            grad_scaler,
            segment_mib,
            json,
        } => {
            let options = BenchOptions {
                steps,
                warmup,
                training: TrainingOptions {
                    max_grad_norm,
                    grad_scaler: grad_scaler.then(GradScaler::default),
                    ..Default::default()
                },
                max_segment_bytes: segment_mib,
                ..Default::default()
            };
            run_bench(&optimizers, &sizes, &options, json, &adapter)
        }
        Command::Report {
            files,
            chart,
            markdown,
        } => {
            let given = adapter.given();
            if !given.is_empty() {
                anyhow::bail!(
                    "report opens no adapter (it merges result files, each made on the adapter \
                     it names): {} does not apply; adapter options are for conformance, bench \
                     and adapters",
                    given.join(" ")
                );
            }
            run_report(&files, &chart, markdown.as_deref())
        }
        Command::Adapters { json } => run_adapters(json, &adapter),
    }
}

/// A file a command writes when its work is done, opened for writing before the work starts,
/// so that a path that cannot be written fails at once. A file it created and never wrote is
/// removed again.
struct Output {
    path: PathBuf,
    file: Option<std::fs::File>,
    created: bool,
    done: bool,
}

impl Output {
    fn open(path: &Path, what: &str) -> Result<Self> {
        let created = std::fs::symlink_metadata(path).is_err();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write the {what} to {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            created,
            done: false,
        })
    }

    /// Replaces the file's contents.
    fn write(mut self, contents: &[u8]) -> Result<()> {
        let mut file = self.file.take().expect("open until written");
        file.set_len(0)
            .and_then(|()| file.write_all(contents))
            .and_then(|()| file.flush())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.done = true;
        Ok(())
    }

    /// Someone else has written the file: keep it.
    fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.file = None;
        if self.created && !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn run_report(files: &[PathBuf], chart: &Path, markdown: Option<&Path>) -> Result<ExitCode> {
    let files = files
        .iter()
        .map(|f| report::BenchFile::load(f))
        .collect::<Result<Vec<_>, _>>()?;
    let markdown = markdown
        .map(|p| Output::open(p, "markdown table"))
        .transpose()?;
    let (png, svg) = report::chart_paths(chart);
    let charts = [Output::open(&png, "chart")?, Output::open(&svg, "chart")?];
    let table = report::markdown(&files);
    print!("{table}");
    if let Some(out) = markdown {
        out.write(table.as_bytes())?;
    }
    let (png, svg) = report::write_chart(&files, chart)?;
    for output in charts {
        output.keep();
    }
    eprintln!("chart: {} and {}", png.display(), svg.display());
    Ok(ExitCode::SUCCESS)
}

fn run_adapters(json: bool, adapter: &AdapterArgs) -> Result<ExitCode> {
    let all = list_adapters(adapter.backend.map(Backend::backends))?;
    if all.is_empty() && !json {
        anyhow::bail!(wgpu_optim::Error::NoAdapter {
            detail: adapter
                .backend
                .map_or(String::new(), |b| format!(" for backend {}", b.name())),
        });
    }
    let adapters: Vec<&AdapterSummary> = match &adapter.adapter {
        None => all.iter().collect(),
        Some(wanted) => {
            let lower = wanted.to_lowercase();
            let matching: Vec<_> = all
                .iter()
                .filter(|a| a.name.to_lowercase().contains(&lower))
                .collect();
            if matching.is_empty() && !all.is_empty() {
                anyhow::bail!(wgpu_optim::Error::NoMatchingAdapter {
                    wanted: wanted.clone(),
                    available: all
                        .iter()
                        .map(|a| format!("`{}` ({})", a.name, a.backend))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            matching
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&adapters)?);
    } else {
        for (i, a) in adapters.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", describe_adapter(a));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_conformance(file: Option<PathBuf>, json: bool, adapter: &AdapterArgs) -> Result<ExitCode> {
    let fixture = match &file {
        Some(path) => Fixture::load(path)?,
        None => Fixture::builtin(),
    };
    let ctx = adapter.context()?;
    let bar = progress_bar(fixture.cases.len() as u64, "conformance");
    let report = conformance::run_with_progress(&ctx, &fixture, |c| {
        bar.set_message(c.name.clone());
        bar.inc(1);
    });
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serializing the report")?
        );
    } else {
        let a = &report.adapter;
        println!(
            "adapter: {} ({}, {}, {})",
            a.name, a.backend, a.device_type, a.driver_info
        );
        println!(
            "fixture: {} ({} cases, {} schedules), tolerance rel-L2 {:e}",
            file.as_ref()
                .map_or("built-in torch-optim.json".into(), |p| p
                    .display()
                    .to_string()),
            fixture.cases.len(),
            fixture.schedules.len(),
            fixture.tolerance.rel_l2
        );
        println!(
            "{:<28} {:<9} {:>5} {:>12} {:>12}  status",
            "case", "optimizer", "steps", "gpu rel-L2", "cpu rel-L2"
        );
        let fmt = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{e:.3e}"));
        for c in &report.cases {
            println!(
                "{:<28} {:<9} {:>5} {:>12} {:>12}  {}{}",
                c.name,
                c.optimizer,
                c.steps,
                fmt(c.gpu_rel_l2),
                fmt(c.cpu_rel_l2),
                status_word(c.status),
                c.note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
            );
        }
        for s in &report.schedules {
            println!(
                "schedule {:<19} max lr rel. error {:.2e} (tolerance {:e})  {}",
                s.name,
                s.max_rel_error,
                fixture.tolerance.lr_rel,
                status_word(s.status),
            );
        }
        let count = |st| report.cases.iter().filter(|c| c.status == st).count();
        let schedules = report
            .schedules
            .iter()
            .filter(|s| s.status == Status::Pass)
            .count();
        println!(
            "cases: {} pass, {} fail, {} unsupported; schedules: {} of {} pass",
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Unsupported),
            schedules,
            report.schedules.len()
        );
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_bench(
    optimizers: &[String],
    sizes: &[String],
    options: &BenchOptions,
    json: Option<PathBuf>,
    adapter: &AdapterArgs,
) -> Result<ExitCode> {
    options.training.validate()?;
    let names: Vec<&str> = if optimizers.is_empty() {
        OPTIMIZER_NAMES.to_vec()
    } else {
        optimizers.iter().map(String::as_str).collect()
    };
    let configs = names
        .iter()
        .map(|n| bench::bench_config(n))
        .collect::<Result<Vec<_>, _>>()?;
    let workloads = sizes
        .iter()
        .map(|s| Workload::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let output = json
        .as_deref()
        .map(|p| Output::open(p, "bench results"))
        .transpose()?;
    let ctx = adapter.context()?;
    // bench::run checks every workload against the device's limits and memory first.
    let bar = progress_bar((configs.len() * workloads.len()) as u64, "bench");
    let report = bench::run(&ctx, &configs, &workloads, options, |r| {
        bar.set_message(format!("{} {}", r.optimizer, r.workload));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    print!("{}", report.table());
    if let Some(output) = output {
        output.write(serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{bytes} B")
    }
}

/// An adapter and the limits that shape the arenas and the kernels, as a few lines.
fn describe_adapter(a: &AdapterSummary) -> String {
    format!(
        "adapter {}\n  vendor {}, type {}, backend {}\n  driver {} {}\n  limits: storage binding {}, \
         buffer {}, workgroups per dimension {}, storage offset alignment {} B, immediates {} B, \
         timestamps {}, subgroup size {}\n",
        a.name,
        a.vendor,
        a.device_type,
        a.backend,
        a.driver,
        a.driver_info,
        mib(a.max_storage_buffer_binding_size),
        mib(a.max_buffer_size),
        a.max_compute_workgroups_per_dimension,
        a.min_storage_buffer_offset_alignment,
        a.max_immediate_size,
        if a.timestamp_query { "yes" } else { "no" },
        a.subgroup_size
    )
}

/// The default run: the adapter, the fixture, a short benchmark, one table.
fn run_default(adapter: &AdapterArgs) -> Result<ExitCode> {
    let ctx = adapter.context()?;
    print!("{}", describe_adapter(&ctx.summary()));
    let fixture = Fixture::builtin();
    let configs = OPTIMIZER_NAMES
        .iter()
        .map(|n| bench::bench_config(n))
        .collect::<Result<Vec<_>, _>>()?;
    let bar = progress_bar((fixture.cases.len() + configs.len()) as u64, "checking");
    let conformance = conformance::run_with_progress(&ctx, &fixture, |c| {
        bar.set_message(format!("conformance {}", c.name));
        bar.inc(1);
    });
    let size = Workload::Elements(1 << 20);
    let report = bench::run(&ctx, &configs, &[size], &BenchOptions::quick(), |r| {
        bar.set_message(format!("bench {}", r.optimizer));
        bar.inc(1);
    })?;
    bar.finish_and_clear();

    let count = |st| conformance.cases.iter().filter(|c| c.status == st).count();
    let schedules = conformance
        .schedules
        .iter()
        .filter(|s| s.status == Status::Pass)
        .count();
    println!(
        "conformance: {} of {} PyTorch fixture cases pass, {} fail; {} of {} lr schedules pass",
        count(Status::Pass),
        conformance.cases.len(),
        count(Status::Fail),
        schedules,
        conformance.schedules.len(),
    );
    println!(
        "copy kernel: {:.1} GB/s ({} buffers); steps on 2^20 elements, median of {} ({:?})\n",
        report.copy.gbps,
        mib(report.copy.bytes),
        BenchOptions::quick().steps,
        report.timing
    );
    println!(
        "{:<9} {:>5} {:>13} {:>9} {:>7} {:>8} {:>6}",
        "optimizer", "cases", "max rel-L2", "GB/s", "x copy", "ns/elem", "B/elem"
    );
    for r in &report.results {
        let cases: Vec<_> = conformance
            .cases
            .iter()
            .filter(|c| c.optimizer == r.optimizer)
            .collect();
        let failed = cases.iter().any(|c| c.status == Status::Fail);
        // NaN is the worst error: it must show, not vanish in a max.
        let worst = cases
            .iter()
            .map(|c| c.gpu_rel_l2.unwrap_or(f64::NAN))
            .fold(0.0f64, |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.max(b)
                }
            });
        println!(
            "{:<9} {:>5} {:>13} {:>9.1} {:>7.3} {:>8.3} {:>6}",
            r.optimizer,
            cases.len(),
            format!("{worst:.2e}{}", if failed { " FAIL" } else { "" }),
            r.gbps,
            r.fraction_of_copy,
            r.ns_per_element,
            r.bytes_per_element
        );
    }
    println!(
        "\nmax rel-L2: the largest relative L2 error of the GPU (float32) against torch.optim \
         (float64) over each optimizer's fixture cases (tolerance {:e}). GB/s: the fewest bytes a \
         step must move over its time; x copy: as a fraction of the copy kernel's.",
        fixture.tolerance.rel_l2
    );
    Ok(if conformance.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Pass => "pass",
        Status::Fail => "FAIL",
        Status::Unsupported => "unsupported",
    }
}
