//! `wgpu-optim`: checks the fused GPU optimizers against PyTorch and the CPU reference.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use wgpu_optim::bench::{self, BenchOptions, Workload};
use wgpu_optim::conformance::{self, Fixture, Status};
use wgpu_optim::context::AdapterSummary;
use wgpu_optim::context::list_adapters;
use wgpu_optim::optim::OPTIMIZER_NAMES;
use wgpu_optim::report;
use wgpu_optim::{ContextOptions, GpuContext, GradScaler, TrainingOptions};

#[derive(Parser)]
#[command(
    version,
    about = "Fused WGSL optimizer steps, checked against torch.optim",
    long_about = "Fused WGSL optimizer steps, checked against torch.optim.\n\n\
        With no command: picks the best adapter (discrete GPU, then integrated, then software), \
        prints it, replays the built-in PyTorch fixture on it and benchmarks every optimizer \
        briefly, then prints one table. Exits 1 if any conformance case fails."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Adapter choice for the default run.
    #[command(flatten)]
    adapter: AdapterArgs,
}

/// Which adapter to run on.
#[derive(clap::Args, Clone, Debug, Default)]
struct AdapterArgs {
    /// Only consider adapters of this backend (default: `WGPU_BACKEND`, else every backend).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Only consider adapters whose name contains this (case-insensitive).
    #[arg(long, value_name = "SUBSTRING")]
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
}

impl AdapterArgs {
    fn context(&self) -> Result<GpuContext> {
        Ok(GpuContext::new(&ContextOptions {
            backends: self.backend.map(Backend::backends),
            adapter_name: self.adapter.clone(),
            ..Default::default()
        })?)
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
        #[command(flatten)]
        adapter: AdapterArgs,
    },
    /// Measure each optimizer's effective bandwidth as a fraction of this adapter's copy kernel.
    Bench {
        /// Optimizers to measure (default: all). SGD and SGDW run with momentum 0.9.
        #[arg(long = "optimizer", value_name = "NAME", num_args = 1..)]
        optimizers: Vec<String>,
        /// Sizes in elements: a number, 2^k, or gpt2 (GPT-2 small's 148 tensors, 124M).
        #[arg(long, value_name = "N", num_args = 1.., default_values = ["2^20", "2^24"])]
        sizes: Vec<String>,
        /// Timed steps per measurement; the median is reported.
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Untimed steps before timing.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Clip every step by the global gradient norm (measures the norm pass's cost).
        #[arg(long, value_name = "MAX_NORM")]
        max_grad_norm: Option<f64>,
        /// Loss scaling with GradScaler's defaults (measures the non-finite check's cost).
        #[arg(long)]
        grad_scaler: bool,
        /// Cut the optimizer's arenas into buffers of at most this many MiB (default: the
        /// adapter's storage binding limit). For studying how allocation sizes change speed.
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
        segment_mib: Option<u64>,
        /// Also write the full results (adapter, copy ceiling, every measurement) as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        #[command(flatten)]
        adapter: AdapterArgs,
    },
    /// Merge `bench --json` files from different machines into a markdown table and a chart of
    /// GB/s and fraction of copy bandwidth per optimizer per adapter (PNG and SVG).
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
    /// List every adapter wgpu finds, best first, with the limits that matter here.
    Adapters {
        /// Only this backend.
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
    let Some(command) = cli.command else {
        return run_default(&cli.adapter);
    };
    match command {
        Command::Conformance {
            file,
            json,
            adapter,
        } => run_conformance(file, json, &adapter),
        Command::Bench {
            optimizers,
            sizes,
            steps,
            warmup,
            max_grad_norm,
            grad_scaler,
            segment_mib,
            json,
            adapter,
        } => {
            let options = BenchOptions {
                steps,
                warmup,
                training: TrainingOptions {
                    max_grad_norm,
                    grad_scaler: grad_scaler.then(GradScaler::default),
                    schedule: None,
                },
                max_segment_bytes: segment_mib.map(|mib| mib << 20),
                ..Default::default()
            };
            run_bench(&optimizers, &sizes, &options, json, &adapter)
        }
        Command::Report {
            files,
            chart,
            markdown,
        } => {
            let files = files
                .iter()
                .map(|f| report::BenchFile::load(f))
                .collect::<Result<Vec<_>, _>>()?;
            let table = report::markdown(&files);
            print!("{table}");
            if let Some(path) = markdown {
                std::fs::write(&path, &table)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let (png, svg) = report::write_chart(&files, &chart)?;
            eprintln!("chart: {} and {}", png.display(), svg.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Adapters { backend, json } => {
            let adapters = list_adapters(backend.map(Backend::backends));
            if json {
                println!("{}", serde_json::to_string_pretty(&adapters)?);
            } else if adapters.is_empty() {
                anyhow::bail!(wgpu_optim::Error::NoAdapter {
                    detail: String::new()
                });
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
    }
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
            "cases: {} pass, {} fail; schedules: {} of {} pass",
            count(Status::Pass),
            count(Status::Fail),
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
    let ctx = adapter.context()?;
    let bar = progress_bar((configs.len() * workloads.len()) as u64, "bench");
    let report = bench::run(&ctx, &configs, &workloads, options, |r| {
        bar.set_message(format!("{} {}", r.optimizer, r.workload));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
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
    }
}
