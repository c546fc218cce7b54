//! The benchmark harness: effective bandwidth of optimizer steps, as a fraction of the same
//! adapter's copy bandwidth measured in the same run.
//!
//! Effective bandwidth = the fewest bytes a step must move ([`UpdateRule::bytes_per_element`](crate::UpdateRule::bytes_per_element)
//! times the elements: read and write the parameters and every state, read the gradients) over
//! the step's GPU time. The ceiling is a WGSL copy kernel with 16-byte loads and stores (bytes
//! read plus written), not `copy_buffer_to_buffer`, which runs far below it on some drivers.
//!
//! Times come from GPU timestamps around each step's compute pass where the adapter has them,
//! else from the wall clock around submit-and-wait. Every figure is the median of many steps
//! after a warm-up, on pseudo-random data generated on the GPU, rotating over enough optimizer
//! instances that the working set is larger than any cache.

mod footprint;
pub mod matrices;
mod prepared;
mod timing;
mod workload;

pub use footprint::{DeviceFacts, Footprint, check_fits, footprint};
pub use prepared::PreparedSteps;
pub use timing::{COPY_KERNEL, COPY_WIDE_KERNEL, measure_copy};
pub use workload::{Workload, gpt2_small_shapes};

use self::timing::median;
use serde::{Deserialize, Serialize};

use crate::context::{AdapterSummary, GpuContext};
use crate::engine::control::TrainingOptions;
use crate::error::Result;
use crate::optim::{Hyperparameters, OptimizerConfig};
use crate::storage::Storage;

/// How to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed steps (the median is reported).
    pub steps: usize,
    /// Untimed steps first (at least one per instance).
    pub warmup: usize,
    /// Rotate over optimizer instances until this many bytes are resident, so that no step
    /// finds its inputs in a cache.
    pub min_working_set_bytes: u64,
    /// The copy kernel's buffers hold at most this many bytes (and one binding's worth).
    pub max_copy_bytes: u64,
    /// Measure the copy ceiling again before each result (long runs drift), else once.
    pub copy_per_result: bool,
    /// Clipping and loss scaling for every measured group (their norm pass reads the
    /// gradients once more: 4 bytes per element, counted).
    pub training: TrainingOptions,
    /// Cut the arenas into buffers of at most this many bytes (default: the device's binding
    /// limit). How a process allocates its memory changes what a GPU's kernels reach (see the
    /// "cliff" in BENCHMARKS.md); this lets one run compare allocation sizes.
    pub max_segment_bytes: Option<u64>,
    /// The storages every configuration is measured in, one after the other (float32 only by
    /// default).
    pub storages: Vec<Storage>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            steps: 30,
            warmup: 5,
            min_working_set_bytes: 256 << 20,
            max_copy_bytes: 1 << 30,
            copy_per_result: true,
            training: TrainingOptions::default(),
            max_segment_bytes: None,
            storages: vec![Storage::F32],
        }
    }
}

impl BenchOptions {
    /// A few seconds for every optimizer on a software adapter: fewer steps and a smaller
    /// (still cache-beating) working set.
    pub fn quick() -> Self {
        Self {
            steps: 10,
            warmup: 2,
            min_working_set_bytes: 128 << 20,
            max_copy_bytes: 64 << 20,
            copy_per_result: false,
            training: TrainingOptions::default(),
            max_segment_bytes: None,
            storages: vec![Storage::F32],
        }
    }
}

/// How times were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timing {
    /// GPU timestamps written around each step's compute pass.
    GpuTimestamps,
    /// The host's clock around submit-and-wait (adapters without timestamps).
    WallClock,
}

/// The ceiling.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopyResult {
    /// Bytes of one copy's source (as many are written).
    pub bytes: u64,
    /// Median time of one copy, in milliseconds.
    pub median_ms: f64,
    /// Bytes read plus written per second, 1e9.
    pub gbps: f64,
}

/// One optimizer on one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    /// The optimizer's name (`adamw`).
    pub optimizer: String,
    /// "clip", "scaler", "clip+scaler", or empty.
    #[serde(default)]
    pub features: String,
    /// The storage's label (`bf16-master`, see [`Storage::label`]); empty for float32.
    #[serde(default)]
    pub storage: String,
    /// The workload as the tables name it (`2^24`, `gpt2`).
    pub workload: String,
    /// Elements updated per step, every tensor together.
    pub elements: u64,
    /// Tensors in the group (148 for gpt2).
    pub tensors: usize,
    /// The fewest bytes a step must move per element.
    pub bytes_per_element: f64,
    /// Compute dispatches one step records (update kernels, plus norm and finalize).
    pub dispatches_per_step: usize,
    /// Optimizer instances rotated over.
    pub instances: usize,
    /// Median step time, in milliseconds.
    pub median_ms: f64,
    /// Fastest step, in milliseconds.
    pub min_ms: f64,
    /// Effective bandwidth: bytes_per_element * elements / median time, in 1e9 bytes/s.
    pub gbps: f64,
    /// The copy kernel's GB/s, measured just before this result.
    #[serde(default)]
    pub copy_gbps: f64,
    /// `gbps` over the copy kernel's (the one measured just before).
    pub fraction_of_copy: f64,
    /// Median step time per element, in nanoseconds.
    pub ns_per_element: f64,
}

impl BenchResult {
    /// The optimizer with its measured features and storage: "adamw", "adamw+clip+scaler",
    /// "adamw bf16-master".
    pub fn label(&self) -> String {
        let mut label = self.optimizer.clone();
        if !self.features.is_empty() {
            label = format!("{label}+{}", self.features);
        }
        if !self.storage.is_empty() {
            label = format!("{label} {}", self.storage);
        }
        label
    }
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The adapter measured.
    pub adapter: AdapterSummary,
    /// UTC, RFC 3339.
    pub date: String,
    /// How times were taken.
    pub timing: Timing,
    /// The median of the copy measurements (one before each result).
    pub copy: CopyResult,
    /// The segment cap asked for with `--segment-mib`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_segment_bytes: Option<u64>,
    /// Where q8 kernels read their maps (`--q8-lookups`, else what suits the adapter).
    pub q8_lookups: crate::Q8Lookups,
    /// Whether kernels read their buffers as 64-bit words (`--wide-words`, else what suits
    /// the adapter); absent in reports from before the option (32-bit words).
    #[serde(default)]
    pub wide_words: bool,
    /// Which invocations hold a q8 block (`--q8-subgroup-blocks`, else what suits the adapter).
    pub q8_blocks: crate::Q8Blocks,
    /// One per configuration and workload, in the order measured.
    pub results: Vec<BenchResult>,
}

impl BenchReport {
    /// The results as a plain-text table, the copy ceiling first.
    pub fn table(&self) -> String {
        let mut out = format!(
            "adapter: {} ({}, {}, {} {})\ncopy kernel: {:.1} GB/s, median of the measurements before each result ({} MiB buffers, {:.3} ms; timing: {:?})\n",
            self.adapter.name,
            self.adapter.backend,
            self.adapter.device_type,
            self.adapter.driver,
            self.adapter.driver_info,
            self.copy.gbps,
            self.copy.bytes >> 20,
            self.copy.median_ms,
            self.timing,
        );
        out.push_str(&format!(
            "buffers read as {}-bit words (--wide-words)\n",
            if self.wide_words { 64 } else { 32 }
        ));
        if self.results.iter().any(|r| r.storage.contains("q8")) {
            out.push_str(&format!(
                "q8 maps read from: {:?} (--q8-lookups); a block held by: {} (--q8-subgroup-blocks)\n",
                self.q8_lookups,
                match self.q8_blocks {
                    crate::Q8Blocks::Workgroup => "64 invocations of a workgroup".to_string(),
                    crate::Q8Blocks::Subgroup { size } => format!("a subgroup of {size}"),
                }
            ));
        }
        // The first column as wide as the longest label (storages like `bf16+q8,nonzero`).
        let width = self
            .results
            .iter()
            .map(|r| r.label().len())
            .max()
            .unwrap_or(0)
            .max(20);
        out.push_str(&format!(
            "{:<width$} {:>7} {:>7} {:>6} {:>5} {:>11} {:>9} {:>9} {:>7} {:>8}\n",
            "optimizer",
            "size",
            "tensors",
            "B/elem",
            "disp",
            "median ms",
            "GB/s",
            "copy GB/s",
            "x copy",
            "ns/elem"
        ));
        for r in &self.results {
            out.push_str(&format!(
                "{:<width$} {:>7} {:>7} {:>6} {:>5} {:>11.3} {:>9.2} {:>9.2} {:>7.3} {:>8.4}\n",
                r.label(),
                r.workload,
                r.tensors,
                byte_count(r.bytes_per_element),
                r.dispatches_per_step,
                r.median_ms,
                r.gbps,
                r.copy_gbps,
                r.fraction_of_copy,
                r.ns_per_element
            ));
        }
        out
    }
}

/// The configuration a benchmark runs for `name`: PyTorch's defaults, except SGD and SGDW with
/// momentum 0.9 (their common use; plain SGD moves 12 bytes per element, not 20).
pub fn bench_config(name: &str) -> Result<OptimizerConfig> {
    let mut config = OptimizerConfig::default_for(name)?;
    match &mut config {
        OptimizerConfig::Sgd(c) => c.momentum = 0.9,
        OptimizerConfig::Sgdw(c) => c.momentum = 0.9,
        _ => {}
    }
    Ok(config)
}

/// Measures `config` on `workload`. `copy_gbps` is the ceiling the fraction is taken of.
pub fn bench_optimizer(
    ctx: &GpuContext,
    config: &OptimizerConfig,
    storage: &Storage,
    workload: &Workload,
    options: &BenchOptions,
    copy_gbps: f64,
) -> Result<BenchResult> {
    let mut prepared = PreparedSteps::new(ctx, config, storage, workload, options)?;
    let (_, mut times) = prepared.time(options.steps)?;
    let seconds = median(&mut times);
    let elements = prepared.elements();
    let gbps = prepared.bytes_per_step() / seconds / 1e9;
    let features = [
        (options.training.max_grad_norm.is_some(), "clip"),
        (options.training.grad_scaler.is_some(), "scaler"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| *name)
    .collect::<Vec<_>>()
    .join("+");
    Ok(BenchResult {
        optimizer: config.name().into(),
        features,
        storage: if storage.is_f32() {
            String::new()
        } else {
            storage.label()
        },
        workload: workload.label(),
        elements,
        tensors: workload.lens().len(),
        bytes_per_element: prepared.bytes_per_element(),
        dispatches_per_step: prepared.instances[0].dispatches_per_step(),
        instances: prepared.instances.len(),
        median_ms: seconds * 1e3,
        min_ms: times[0] * 1e3,
        gbps,
        copy_gbps,
        fraction_of_copy: gbps / copy_gbps,
        ns_per_element: seconds * 1e9 / elements as f64,
    })
}

/// Measures every configuration on every workload, each right after a measurement of the copy
/// ceiling (a long run's conditions drift: each fraction is taken against its neighbour),
/// calling `progress` after each result.
#[cfg(feature = "cli")]
pub fn run(
    ctx: &GpuContext,
    configs: &[OptimizerConfig],
    workloads: &[Workload],
    options: &BenchOptions,
    mut progress: impl FnMut(&BenchResult),
) -> Result<BenchReport> {
    if options.steps == 0 {
        return Err(crate::Error::InvalidConfig {
            optimizer: "benchmark",
            reason: "at least one timed step is needed".into(),
        });
    }
    // Everything that will be measured must fit, before the first measurement.
    check_fits(&DeviceFacts::of(ctx), configs, workloads, options)?;
    let mut copies = vec![measure_copy(ctx, options)?];
    let mut results = Vec::new();
    for workload in workloads {
        for config in configs {
            // Every storage of a configuration measured one after the other: same conditions.
            for storage in &options.storages {
                if options.copy_per_result && !results.is_empty() {
                    copies.push(measure_copy(ctx, options)?);
                }
                let ceiling = copies.last().expect("measured").gbps;
                let result = bench_optimizer(ctx, config, storage, workload, options, ceiling)?;
                progress(&result);
                results.push(result);
            }
        }
    }
    copies.sort_by(|a, b| a.gbps.total_cmp(&b.gbps));
    let copy = copies[copies.len() / 2].clone();
    Ok(BenchReport {
        adapter: ctx.summary(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        timing: if ctx.has_timestamps() {
            Timing::GpuTimestamps
        } else {
            Timing::WallClock
        },
        copy,
        max_segment_bytes: options.max_segment_bytes,
        q8_lookups: ctx.kernel_target().q8_lookups,
        wide_words: ctx.kernel_target().wide_words,
        q8_blocks: ctx.kernel_target().q8_blocks,
        results,
    })
}

/// A byte count per element as the tables print it: whole where it is (`28`), else with two
/// decimals (`10.06`, q8's absmax shared by a block).
pub fn byte_count(bytes: f64) -> String {
    if bytes.fract() == 0.0 {
        format!("{bytes:.0}")
    } else {
        format!("{bytes:.2}")
    }
}
