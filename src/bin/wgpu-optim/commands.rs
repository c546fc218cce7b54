//! What each command does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use wgpu_optim::AdapterSummary;
use wgpu_optim::Storage;
use wgpu_optim::context::list_adapters;
use wgpu_optim::optim::OPTIMIZER_NAMES;
use wgpu_optim::tools::bench::{self, BenchOptions, Workload, byte_count};
use wgpu_optim::tools::conformance::{self, Fixture, Status};
use wgpu_optim::tools::report;

use crate::args::{AdapterArgs, Backend};
use crate::output::{Output, describe_adapter, mib, progress_bar, status_word};

pub(crate) fn run_report(
    files: &[PathBuf],
    chart: &Path,
    markdown: Option<&Path>,
) -> Result<ExitCode> {
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

pub(crate) fn run_bench_matrices(
    sizes: &[u32],
    width: usize,
    steps: usize,
    json: Option<&std::path::Path>,
    adapter: &AdapterArgs,
) -> Result<ExitCode> {
    if let Some(path) = json {
        // Checked for writing before anything is measured.
        std::fs::write(path, b"").with_context(|| format!("cannot write {}", path.display()))?;
    }
    let ctx = adapter.context()?;
    print!("{}", describe_adapter(&ctx.summary()));
    let report = wgpu_optim::tools::bench::matrices::run(&ctx, sizes, width, steps)?;
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run_adapters(json: bool, adapter: &AdapterArgs) -> Result<ExitCode> {
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

pub(crate) fn run_conformance(
    file: Option<PathBuf>,
    json: bool,
    adapter: &AdapterArgs,
) -> Result<ExitCode> {
    // A file, or every fixture the binary ships.
    let fixtures: Vec<(String, Fixture)> = match &file {
        Some(path) => vec![(path.display().to_string(), Fixture::load(path)?)],
        None => Fixture::shipped()
            .into_iter()
            .map(|(name, fixture)| (format!("built-in {name}"), fixture))
            .collect(),
    };
    let ctx = adapter.context()?;
    let cases = fixtures.iter().map(|(_, f)| f.cases.len()).sum::<usize>();
    let bar = progress_bar(cases as u64, "conformance");
    let reports: Vec<_> = fixtures
        .iter()
        .map(|(_, fixture)| {
            conformance::run_with_progress(&ctx, fixture, |c| {
                bar.set_message(c.name.clone());
                bar.inc(1);
            })
        })
        .collect();
    bar.finish_and_clear();
    let passed = reports.iter().all(|r| r.passed());
    if json {
        let text = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])
        } else {
            serde_json::to_string_pretty(&reports)
        };
        println!("{}", text.context("serializing the report")?);
    } else {
        let a = &reports[0].adapter;
        println!(
            "adapter: {} ({}, {}, {})",
            a.name, a.backend, a.device_type, a.driver_info
        );
        for ((label, fixture), report) in fixtures.iter().zip(&reports) {
            print_conformance(label, fixture, report);
        }
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One fixture's results as a table.
fn print_conformance(label: &str, fixture: &Fixture, report: &conformance::Report) {
    println!(
        "\nfixture: {label} ({} cases, {} schedules), tolerance rel-L2 {:e}",
        fixture.cases.len(),
        fixture.schedules.len(),
        fixture.tolerance.rel_l2
    );
    println!(
        "{:<34} {:<18} {:>5} {:>12} {:>12}  status",
        "case", "optimizer", "steps", "gpu rel-L2", "cpu rel-L2"
    );
    let fmt = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{e:.3e}"));
    for c in &report.cases {
        println!(
            "{:<34} {:<18} {:>5} {:>12} {:>12}  {}{}",
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

pub(crate) fn run_bench(
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

/// The compact storages the default run measures AdamW in (labels of `Storage::parse`).
const COMPACT_STORAGES: [&str; 3] = ["bf16-master", "bf16+bf16", "bf16+q8"];

/// What each parameter keeps resident in AdamW, per storage.
fn print_memory_per_parameter(compact: &[Storage]) -> Result<()> {
    let adamw = bench::bench_config("adamw")?;
    let states = adamw.state_names();
    println!("\nmemory per parameter, AdamW:");
    for storage in std::iter::once(&Storage::F32).chain(compact) {
        let state = storage.state_bytes(&states);
        let master = if storage.master_weights { 4 } else { 0 };
        println!(
            "  {:<12} {:>5} B: {} B of state, {} B parameter{}, {} B gradient",
            storage.label(),
            byte_count(storage.resident_bytes(&states)),
            byte_count(state),
            storage.param.bytes(),
            if master > 0 { " + 4 B master" } else { "" },
            storage.grad.bytes(),
        );
    }
    Ok(())
}

/// The default run: the adapter, the fixture, a short benchmark, one table.
pub(crate) fn run_default(adapter: &AdapterArgs) -> Result<ExitCode> {
    let ctx = adapter.context()?;
    print!("{}", describe_adapter(&ctx.summary()));
    let fixture = Fixture::builtin();
    // The optimizers beyond torch.optim's classic ten have their cases in this one.
    let (_, more) = Fixture::shipped()
        .into_iter()
        .find(|(name, _)| *name == "more-optimizers.json")
        .expect("more-optimizers.json is shipped");
    let configs = OPTIMIZER_NAMES
        .iter()
        .map(|n| bench::bench_config(n))
        .collect::<Result<Vec<_>, _>>()?;
    // AdamW once more in compact storages: a row each under the table.
    let compact: Vec<Storage> = COMPACT_STORAGES
        .iter()
        .map(|s| Storage::parse(s))
        .collect::<Result<_, _>>()?;
    let bar = progress_bar(
        (fixture.cases.len() + more.cases.len() + configs.len() + compact.len()) as u64,
        "checking",
    );
    let mut progress = |c: &conformance::CaseResult| {
        bar.set_message(format!("conformance {}", c.name));
        bar.inc(1);
    };
    let conformance = conformance::run_with_progress(&ctx, &fixture, &mut progress);
    let more_conformance = conformance::run_with_progress(&ctx, &more, &mut progress);
    let size = Workload::Elements(1 << 20);
    let mut report = bench::run(
        &ctx,
        &configs,
        std::slice::from_ref(&size),
        &BenchOptions::quick(),
        |r| {
            bar.set_message(format!("bench {}", r.optimizer));
            bar.inc(1);
        },
    )?;
    let adamw = bench::bench_config("adamw")?;
    let compact_options = BenchOptions {
        storages: compact.clone(),
        ..BenchOptions::quick()
    };
    let compact_report = bench::run(&ctx, &[adamw], &[size], &compact_options, |r| {
        bar.set_message(format!("bench {}", r.label()));
        bar.inc(1);
    })?;
    report.results.extend(compact_report.results);
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
    let more_count = |st| {
        more_conformance
            .cases
            .iter()
            .filter(|c| c.status == st)
            .count()
    };
    println!(
        "             more-optimizers.json: {} pass, {} fail, {} not supported",
        more_count(Status::Pass),
        more_count(Status::Fail),
        more_count(Status::Unsupported),
    );
    println!(
        "copy kernel: {:.1} GB/s ({} buffers); steps on 2^20 elements, median of {} ({:?})\n",
        report.copy.gbps,
        mib(report.copy.bytes),
        BenchOptions::quick().steps,
        report.timing
    );
    println!(
        "{:<18} {:>5} {:>13} {:>9} {:>7} {:>8} {:>6}",
        "optimizer", "cases", "max rel-L2", "GB/s", "x copy", "ns/elem", "B/elem"
    );
    for r in &report.results {
        if !r.storage.is_empty() {
            // A compact storage: its fixture cases are formats.json's (`conformance`).
            println!(
                "{:<18} {:>5} {:>13} {:>9.1} {:>7.3} {:>8.3} {:>6}",
                r.label(),
                "-",
                "-",
                r.gbps,
                r.fraction_of_copy,
                r.ns_per_element,
                byte_count(r.bytes_per_element)
            );
            continue;
        }
        let cases: Vec<_> = conformance
            .cases
            .iter()
            .chain(&more_conformance.cases)
            .filter(|c| c.optimizer == r.optimizer && c.status != Status::Unsupported)
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
            "{:<18} {:>5} {:>13} {:>9.1} {:>7.3} {:>8.3} {:>6}",
            r.optimizer,
            cases.len(),
            if cases.is_empty() {
                "-".to_string()
            } else {
                format!("{worst:.2e}{}", if failed { " FAIL" } else { "" })
            },
            r.gbps,
            r.fraction_of_copy,
            r.ns_per_element,
            byte_count(r.bytes_per_element)
        );
    }
    print_memory_per_parameter(&compact)?;
    println!(
        "\nmax rel-L2: the largest relative L2 error of the GPU (float32) against the reference \
         implementations (torch.optim, lion-pytorch, torch-optimizer, schedulefree; float64) over each optimizer's fixture cases \
         (tolerance {:e}). GB/s: the fewest bytes a \
         step must move over its time; x copy: as a fraction of the copy kernel's.",
        fixture.tolerance.rel_l2
    );
    Ok(if conformance.passed() && more_conformance.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
