//! `wgpu-optim`: checks the fused GPU optimizers against PyTorch and the CPU reference, measures
//! them, and reports. `args.rs` is the command line, `commands.rs` what each command does,
//! `output.rs` how results are printed and written, `lab.rs` the `lab` command's charts.

mod args;
mod commands;
mod lab;
mod output;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use wgpu_optim::tools::bench::BenchOptions;
use wgpu_optim::{GradScaler, TrainingOptions};

use args::{Cli, Command};
use commands::{run_adapters, run_bench, run_conformance, run_default, run_report};

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
            formats,
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
                storages: if formats.is_empty() {
                    vec![wgpu_optim::Storage::F32]
                } else {
                    formats
                },
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
        Command::Lab { out } => lab::run_lab(&out, &adapter),
        Command::BenchMatrices {
            sizes,
            width,
            steps,
            json,
        } => commands::run_bench_matrices(&sizes, width as usize, steps, json.as_deref(), &adapter),
    }
}
