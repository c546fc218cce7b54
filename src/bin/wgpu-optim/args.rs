//! The command line: the commands, their options and how each option's text is checked.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use wgpu_optim::{ContextOptions, GpuContext, Q8Lookups};

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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Adapter choice, for every command that opens one.
    #[command(flatten)]
    pub(crate) adapter: AdapterArgs,
}

/// Which adapter to run on: global options, read by every command that opens an adapter.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct AdapterArgs {
    /// Only consider adapters of this backend (default: `WGPU_BACKEND`, else every backend).
    #[arg(long, value_enum, global = true)]
    pub(crate) backend: Option<Backend>,
    /// Only consider adapters whose name contains this (case-insensitive).
    #[arg(long, value_name = "SUBSTRING", global = true)]
    pub(crate) adapter: Option<String>,
    /// Where q8 kernels read their maps: workgroup memory (a GPU's default) or the uniform
    /// they come in (a CPU adapter's). Default: what suits the adapter.
    #[arg(long, value_enum, global = true)]
    pub(crate) q8_lookups: Option<Q8LookupsArg>,
    /// Whether kernels read and write buffers as 64-bit words (fewer components per access:
    /// what a CPU adapter pays for). Default: true on CPU adapters with 64-bit integers.
    #[arg(long, value_name = "BOOL", global = true)]
    pub(crate) wide_words: Option<bool>,
    /// Whether a subgroup holds each q8 block in the update kernels (no barrier: what a CPU
    /// adapter is fast at) rather than 64 invocations of a workgroup. Default: true on CPU
    /// adapters whose subgroups have one size.
    #[arg(long, value_name = "BOOL", global = true)]
    pub(crate) q8_subgroup_blocks: Option<bool>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Q8LookupsArg {
    Workgroup,
    Uniform,
}

impl Q8LookupsArg {
    fn lookups(self) -> Q8Lookups {
        match self {
            Q8LookupsArg::Workgroup => Q8Lookups::Workgroup,
            Q8LookupsArg::Uniform => Q8Lookups::Uniform,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Q8LookupsArg::Workgroup => "workgroup",
            Q8LookupsArg::Uniform => "uniform",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Backend {
    Vulkan,
    Gl,
    Metal,
    Dx12,
}

impl Backend {
    pub(crate) fn backends(self) -> wgpu::Backends {
        match self {
            Backend::Vulkan => wgpu::Backends::VULKAN,
            Backend::Gl => wgpu::Backends::GL,
            Backend::Metal => wgpu::Backends::METAL,
            Backend::Dx12 => wgpu::Backends::DX12,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Vulkan => "vulkan",
            Backend::Gl => "gl",
            Backend::Metal => "metal",
            Backend::Dx12 => "dx12",
        }
    }
}

impl AdapterArgs {
    pub(crate) fn context(&self) -> Result<GpuContext> {
        Ok(GpuContext::new(&ContextOptions {
            backends: self.backend.map(Backend::backends),
            adapter_name: self.adapter.clone(),
            q8_lookups: self.q8_lookups.map(Q8LookupsArg::lookups),
            wide_words: self.wide_words,
            q8_subgroup_blocks: self.q8_subgroup_blocks,
            ..Default::default()
        })?)
    }

    /// The options given, as typed: "--backend gl --adapter nvidia".
    pub(crate) fn given(&self) -> Vec<String> {
        let mut given = Vec::new();
        if let Some(b) = self.backend {
            given.push(format!("--backend {}", b.name()));
        }
        if let Some(a) = &self.adapter {
            given.push(format!("--adapter {a}"));
        }
        if let Some(l) = self.q8_lookups {
            given.push(format!("--q8-lookups {}", l.name()));
        }
        if let Some(w) = self.wide_words {
            given.push(format!("--wide-words {w}"));
        }
        if let Some(b) = self.q8_subgroup_blocks {
            given.push(format!("--q8-subgroup-blocks {b}"));
        }
        given
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Replay PyTorch's trajectories on the GPU and on the CPU reference; exit 1 on any failure.
    Conformance {
        /// Fixture file (format optimizer-conformance/1); default: every fixture built into the
        /// binary (torch-optim.json, formats.json, more-optimizers.json).
        file: Option<PathBuf>,
        /// Print JSON instead of the tables: one report for a file, an array of reports for
        /// the built-in fixtures.
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
        /// Storages to measure each optimizer in, one after the other (default: f32):
        /// parameters' format, `/` and the gradients' if they differ, `-master` for float32
        /// master weights, `-sr` stochastic rounding, `-kahan` Kahan summation, `+` and the
        /// states' format, then `,state=format` for a state in a format of its own, and
        /// `,nonzero` for q8 that never rounds a positive second moment to 0. E.g. `f32
        /// bf16 bf16-master bf16-sr bf16-kahan bf16+bf16 bf16+q8 f32/bf16
        /// bf16+q8,max_exp_avg_sq=f32 bf16+q8,nonzero`. Formats: f32, bf16, f16, and q8
        /// (8-bit blockwise) for states.
        #[arg(long = "formats", value_name = "STORAGE", num_args = 1.., value_parser = storage)]
        formats: Vec<wgpu_optim::Storage>,
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
    /// Measure the optimizers over shaped tensors: the tiled matrix product against a naive one
    /// (GFLOP/s, alternating in one run), Adafactor's and Muon's steps on one transformer
    /// block's matrices (bytes per parameter, fraction of the copy kernel measured in the same
    /// run, Newton–Schulz GFLOP/s) and L-BFGS's device dot product.
    BenchMatrices {
        /// Sizes n of the (n×n)·(n×n) products (4 per batch).
        #[arg(long, value_name = "N", num_args = 1.., default_values_t = [128u32, 256, 512], value_parser = clap::value_parser!(u32).range(1..=16384))]
        sizes: Vec<u32>,
        /// The block's width: width×width matrices ×4, width×4·width and 4·width×width.
        #[arg(long, value_name = "W", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=8192))]
        width: u64,
        /// Timed repetitions (medians reported).
        #[arg(long, value_name = "N", default_value_t = 7, value_parser = at_least_one, allow_negative_numbers = true)]
        steps: usize,
        /// Also write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Run the classic convergence experiments on the GPU, chart them and print measured
    /// against predicted rates.
    ///
    /// Gradient descent's 1 − 1/κ, heavy ball's (√κ−1)/(√κ+1), Nesterov's O(1/k²), step sizes
    /// on x², Newton's method on a quadratic and on Rosenbrock: each drawn as OUT/<name>.png
    /// and OUT/<name>.svg.
    Lab {
        /// The folder the charts go to (created if missing).
        #[arg(long, value_name = "DIR", default_value = "docs/lab")]
        out: PathBuf,
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
pub(crate) fn at_least_one(text: &str) -> Result<usize, String> {
    match whole_number(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A whole number, 0 or more (`--warmup`).
pub(crate) fn whole_number(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i128>() {
        Ok(n) if n < 0 => Err("must not be negative".into()),
        Ok(n) => usize::try_from(n).map_err(|_| "is too large".into()),
        Err(_) => Err("must be a whole number".into()),
    }
}

/// A finite number > 0 (`--max-grad-norm`).
pub(crate) fn positive_finite(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(_) => Err("must be a finite number > 0".into()),
        Err(_) => Err("must be a number".into()),
    }
}

/// A whole number of MiB, at least 1, returned in bytes (`--segment-mib`).
pub(crate) fn storage(text: &str) -> Result<wgpu_optim::Storage, String> {
    wgpu_optim::Storage::parse(text).map_err(|e| e.to_string())
}

pub(crate) fn mebibytes(text: &str) -> Result<u64, String> {
    let mib = at_least_one(text)? as u64;
    mib.checked_mul(1 << 20)
        .ok_or_else(|| "is more bytes than 64 bits count".into())
}
