//! `wgpu-optim`: checks the fused GPU optimizers against PyTorch and the CPU reference.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use wgpu_optim::bench::{self, BenchOptions, Workload};
use wgpu_optim::conformance::{self, Fixture, Status};
use wgpu_optim::context::list_adapters;
use wgpu_optim::optim::OPTIMIZER_NAMES;
use wgpu_optim::{ContextOptions, GpuContext};

#[derive(Parser)]
#[command(
    version,
    about = "Fused WGSL optimizer steps, checked against torch.optim"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
        /// Also write the full results (adapter, copy ceiling, every measurement) as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        #[command(flatten)]
        adapter: AdapterArgs,
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
    match cli.command.unwrap_or(Command::Conformance {
        file: None,
        json: false,
        adapter: AdapterArgs::default(),
    }) {
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
            json,
            adapter,
        } => run_bench(&optimizers, &sizes, steps, warmup, json, &adapter),
        Command::Adapters { backend, json } => {
            let adapters = list_adapters(backend.map(Backend::backends));
            if json {
                println!("{}", serde_json::to_string_pretty(&adapters)?);
            } else if adapters.is_empty() {
                anyhow::bail!(wgpu_optim::Error::NoAdapter {
                    detail: String::new()
                });
            } else {
                for a in adapters {
                    println!(
                        "{} [{}] {} {} ({} {}): max binding {} B, max buffer {} B, timestamps {}",
                        a.name,
                        a.backend,
                        a.vendor,
                        a.device_type,
                        a.driver,
                        a.driver_info,
                        a.max_storage_buffer_binding_size,
                        a.max_buffer_size,
                        a.timestamp_query
                    );
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
    let report = conformance::run(&ctx, &fixture);
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
                "schedule {:<19} {}{}",
                s.name,
                status_word(s.status),
                s.note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
            );
        }
        let count = |st| report.cases.iter().filter(|c| c.status == st).count();
        println!(
            "cases: {} pass, {} fail, {} unsupported",
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Unsupported)
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
    steps: usize,
    warmup: usize,
    json: Option<PathBuf>,
    adapter: &AdapterArgs,
) -> Result<ExitCode> {
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
    let options = BenchOptions {
        steps,
        warmup,
        ..Default::default()
    };
    let report = bench::run(&ctx, &configs, &workloads, &options, |_| {})?;
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Pass => "pass",
        Status::Fail => "FAIL",
        Status::Unsupported => "unsupported",
    }
}
