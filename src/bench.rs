//! The benchmark harness: effective bandwidth of optimizer steps, as a fraction of the same
//! adapter's copy bandwidth measured in the same run.
//!
//! Effective bandwidth = the fewest bytes a step must move ([`UpdateRule::bytes_per_element`]
//! times the elements: read and write the parameters and every state, read the gradients) over
//! the step's GPU time. The ceiling is a WGSL copy kernel with 16-byte loads and stores (bytes
//! read plus written), not `copy_buffer_to_buffer`, which runs far below it on some drivers.
//!
//! Times come from GPU timestamps around each step's compute pass where the adapter has them,
//! else from the wall clock around submit-and-wait. Every figure is the median of many steps
//! after a warm-up, on pseudo-random data generated on the GPU, rotating over enough optimizer
//! instances that the working set is larger than any cache.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::context::{AdapterSummary, GpuContext};
use crate::engine::control::TrainingOptions;
use crate::engine::{Optimizer, Role, Span, TensorId, TensorInit};
use crate::error::{Error, Result};
use crate::fill::{self, RandomFill};
use crate::kernels::{BindingKind, Element, UtilityKernel, workgroups_for};
use crate::optim::{OptimizerConfig, UpdateRule};

/// The copy kernel that measures the ceiling.
pub static COPY_KERNEL: UtilityKernel = UtilityKernel {
    name: "copy",
    source: include_str!("../shaders/copy.wgsl"),
    pieces: &[],
    elementwise: false,
    uniform: None,
    bindings: &[
        BindingKind::Storage { read_only: true },
        BindingKind::Storage { read_only: false },
    ],
};

/// GPT-2 small's parameter shapes (148 tensors, 124,439,808 parameters), in the order
/// `torch_baseline.py` lists them.
pub fn gpt2_small_shapes() -> Vec<Vec<u64>> {
    let mut shapes = vec![vec![50257, 768], vec![1024, 768]];
    for _ in 0..12 {
        shapes.extend([
            vec![768],
            vec![768],
            vec![768, 2304],
            vec![2304],
            vec![768, 768],
            vec![768],
            vec![768],
            vec![768],
            vec![768, 3072],
            vec![3072],
            vec![3072, 768],
            vec![768],
        ]);
    }
    shapes.extend([vec![768], vec![768]]);
    shapes
}

/// What one step updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One tensor of this many elements.
    Elements(u64),
    /// GPT-2 small's 148 tensors in one group.
    Gpt2Small,
}

impl Workload {
    /// Parses `16777216`, `2^24` or `gpt2`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::InvalidConfig {
            optimizer: "benchmark",
            reason: format!("size `{text}` is not a number of elements, 2^k, or gpt2"),
        };
        if text.eq_ignore_ascii_case("gpt2") {
            return Ok(Workload::Gpt2Small);
        }
        let elements = match text.split_once('^') {
            Some(("2", k)) => 1u64
                .checked_shl(k.parse().map_err(|_| bad())?)
                .ok_or_else(bad)?,
            Some(_) => return Err(bad()),
            None => text.replace('_', "").parse().map_err(|_| bad())?,
        };
        if elements == 0 {
            return Err(bad());
        }
        Ok(Workload::Elements(elements))
    }

    /// Tensor lengths.
    pub fn lens(&self) -> Vec<u64> {
        match self {
            Workload::Elements(n) => vec![*n],
            Workload::Gpt2Small => gpt2_small_shapes()
                .iter()
                .map(|s| s.iter().product())
                .collect(),
        }
    }

    /// How the tables name it.
    pub fn label(&self) -> String {
        match self {
            Workload::Elements(n) if n.is_power_of_two() => format!("2^{}", n.trailing_zeros()),
            Workload::Elements(n) => n.to_string(),
            Workload::Gpt2Small => "gpt2".into(),
        }
    }
}

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
        }
    }
}

/// How times were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timing {
    GpuTimestamps,
    WallClock,
}

/// The ceiling.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopyResult {
    /// Bytes of one copy's source (as many are written).
    pub bytes: u64,
    pub median_ms: f64,
    /// Bytes read plus written per second, 1e9.
    pub gbps: f64,
}

/// One optimizer on one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub optimizer: String,
    /// "clip", "scaler", "clip+scaler", or empty.
    #[serde(default)]
    pub features: String,
    pub workload: String,
    pub elements: u64,
    pub tensors: usize,
    /// The fewest bytes a step must move per element.
    pub bytes_per_element: u64,
    pub dispatches_per_step: usize,
    /// Optimizer instances rotated over.
    pub instances: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Effective bandwidth: bytes_per_element * elements / median time, in 1e9 bytes/s.
    pub gbps: f64,
    /// The copy kernel's GB/s, measured just before this result.
    #[serde(default)]
    pub copy_gbps: f64,
    /// `gbps` over the copy kernel's (the one measured just before).
    pub fraction_of_copy: f64,
    pub ns_per_element: f64,
}

impl BenchResult {
    /// The optimizer with its measured features: "adamw", "adamw+clip+scaler".
    pub fn label(&self) -> String {
        if self.features.is_empty() {
            self.optimizer.clone()
        } else {
            format!("{}+{}", self.optimizer, self.features)
        }
    }
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub adapter: AdapterSummary,
    /// UTC, RFC 3339.
    pub date: String,
    pub timing: Timing,
    /// The median of the copy measurements (one before each result).
    pub copy: CopyResult,
    /// The segment cap asked for with `--segment-mib`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_segment_bytes: Option<u64>,
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
            "{:<20} {:>7} {:>7} {:>6} {:>5} {:>11} {:>9} {:>9} {:>7} {:>8}\n",
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
                "{:<20} {:>7} {:>7} {:>6} {:>5} {:>11.3} {:>9.2} {:>9.2} {:>7.3} {:>8.4}\n",
                r.label(),
                r.workload,
                r.tensors,
                r.bytes_per_element,
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

/// Times `passes` compute passes, each recorded by `record` into its own submission; returns
/// seconds per pass.
fn time_passes(
    ctx: &GpuContext,
    passes: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder, Option<wgpu::ComputePassTimestampWrites>),
) -> Result<(Timing, Vec<f64>)> {
    if !ctx.has_timestamps() {
        let mut times = Vec::with_capacity(passes);
        for _ in 0..passes {
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            record(&mut encoder, None);
            let start = Instant::now();
            ctx.queue.submit([encoder.finish()]);
            ctx.wait()?;
            times.push(start.elapsed().as_secs_f64());
        }
        return Ok((Timing::WallClock, times));
    }
    let count = 2 * passes as u32;
    let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("step timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count,
    });
    let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("timestamps"),
        size: count as u64 * 8,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    for p in 0..passes as u32 {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        record(
            &mut encoder,
            Some(wgpu::ComputePassTimestampWrites {
                query_set: &queries,
                beginning_of_pass_write_index: Some(2 * p),
                end_of_pass_write_index: Some(2 * p + 1),
            }),
        );
        ctx.queue.submit([encoder.finish()]);
    }
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.resolve_query_set(&queries, 0..count, &resolve, 0);
    ctx.queue.submit([encoder.finish()]);
    let ticks = read_u64s(ctx, &resolve)?;
    let period_ns = ctx.queue.get_timestamp_period() as f64;
    let times = ticks
        .chunks_exact(2)
        .map(|t| t[1].saturating_sub(t[0]) as f64 * period_ns * 1e-9)
        .collect();
    Ok((Timing::GpuTimestamps, times))
}

fn read_u64s(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Result<Vec<u64>> {
    let span = Span {
        buffer,
        offset: 0,
        len: buffer.size() / 4,
    };
    // The words are moved, never computed on: their bits come back intact.
    let words: Vec<f32> = crate::engine::read_spans(ctx, &[span])?;
    Ok(bytemuck::pod_collect_to_vec(&words))
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Measures the copy kernel: buffers of up to 1 GiB (within one binding), rotated over enough
/// pairs to exceed the caches.
pub fn measure_copy(ctx: &GpuContext, options: &BenchOptions) -> Result<CopyResult> {
    let bytes = ctx.max_binding_bytes().min(options.max_copy_bytes) / 16 * 16;
    let pairs = (options.min_working_set_bytes.div_ceil(2 * bytes)).clamp(1, 8) as usize;
    let (layout, pipeline) = ctx
        .kernels
        .utility(&ctx.device, &COPY_KERNEL, Element::Vec4);
    let make = |label: &str| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let buffers: Vec<(wgpu::Buffer, wgpu::Buffer)> = (0..pairs)
        .map(|_| (make("copy source"), make("copy destination")))
        .collect();
    for (k, (src, _)) in buffers.iter().enumerate() {
        let span = Span {
            buffer: src,
            offset: 0,
            len: bytes / 4,
        };
        fill::fill(ctx, &[span], 0, &RandomFill::symmetric(k as u32, 1.0))?;
    }
    let bind_groups: Vec<wgpu::BindGroup> = buffers
        .iter()
        .map(|(src, dst)| {
            ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("copy"),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: src.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: dst.as_entire_binding(),
                    },
                ],
            })
        })
        .collect();
    let (x, y) = workgroups_for(bytes / 16, ctx.limits.max_compute_workgroups_per_dimension);
    let mut next = 0;
    let mut record =
        |encoder: &mut wgpu::CommandEncoder,
         timestamp_writes: Option<wgpu::ComputePassTimestampWrites>| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("copy"),
                timestamp_writes,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_groups[next % pairs], &[]);
            pass.dispatch_workgroups(x, y, 1);
            next += 1;
        };
    for _ in 0..options.warmup.max(pairs) {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        record(&mut encoder, None);
        ctx.queue.submit([encoder.finish()]);
    }
    ctx.wait()?;
    let (_, mut times) = time_passes(ctx, options.steps, record)?;
    let seconds = median(&mut times);
    Ok(CopyResult {
        bytes,
        median_ms: seconds * 1e3,
        gbps: 2.0 * bytes as f64 / seconds / 1e9,
    })
}

/// Optimizer instances of one configuration and workload, filled with random data and warmed
/// up, ready to be timed (also what the criterion benches drive).
pub struct PreparedSteps {
    ctx: GpuContext,
    config: OptimizerConfig,
    training: TrainingOptions,
    workload: Workload,
    instances: Vec<Optimizer>,
    next: usize,
}

impl PreparedSteps {
    /// Builds enough instances of `config` on `workload` that their resident bytes reach
    /// `options.min_working_set_bytes` (at most 64), fills parameters and gradients with
    /// pseudo-random values on the GPU and runs the warm-up steps.
    pub fn new(
        ctx: &GpuContext,
        config: &OptimizerConfig,
        workload: &Workload,
        options: &BenchOptions,
    ) -> Result<Self> {
        let lens = workload.lens();
        let elements: u64 = lens.iter().sum();
        let kept_states = config.initial_states().iter().flatten().count() as u64;
        let resident = (2 + kept_states) * 4 * elements;
        let count = options
            .min_working_set_bytes
            .div_ceil(resident)
            .clamp(1, 64) as usize;
        let mut instances = Vec::with_capacity(count);
        for k in 0..count {
            let mut builder = Optimizer::builder(ctx).group_with(
                config.clone(),
                options.training.clone(),
                lens.iter().map(|&n| TensorInit::Zeros(n)),
            );
            if let Some(bytes) = options.max_segment_bytes {
                builder = builder.max_segment_bytes(bytes);
            }
            let mut opt = builder.build()?;
            for (t, &len) in lens.iter().enumerate() {
                let seed = (k * lens.len() + t) as u32;
                let params = RandomFill::symmetric(2 * seed, 1.0);
                let grads = RandomFill::symmetric(2 * seed + 1, 1.0 / 64.0);
                opt.fill_random(TensorId(t), Role::Param, 0..len, &params)?;
                opt.fill_random(TensorId(t), Role::Grad, 0..len, &grads)?;
            }
            instances.push(opt);
        }
        // Warm up every instance: states become non-zero, memory and pipelines get touched.
        for k in 0..options.warmup.max(count) {
            instances[k % count].step()?;
        }
        ctx.wait()?;
        Ok(Self {
            ctx: ctx.clone(),
            config: config.clone(),
            training: options.training.clone(),
            workload: workload.clone(),
            instances,
            next: 0,
        })
    }

    /// Elements one step updates.
    pub fn elements(&self) -> u64 {
        self.workload.lens().iter().sum()
    }

    /// The fewest bytes one step must move per element: the update's, plus one more read of
    /// the gradients for the norm when clipping or loss scaling.
    pub fn bytes_per_element(&self) -> u64 {
        self.config.bytes_per_element() + if self.training.needs_norm() { 4 } else { 0 }
    }

    /// The fewest bytes one step must move.
    pub fn bytes_per_step(&self) -> u64 {
        self.bytes_per_element() * self.elements()
    }

    /// Times `steps` steps, rotating over the instances; seconds per step, and how.
    pub fn time(&mut self, steps: usize) -> Result<(Timing, Vec<f64>)> {
        let (instances, next) = (&mut self.instances, &mut self.next);
        let count = instances.len();
        time_passes(&self.ctx, steps, |encoder, timestamps| {
            instances[*next % count].encode_step(encoder, timestamps);
            *next += 1;
        })
    }
}

/// Measures `config` on `workload`. `copy_gbps` is the ceiling the fraction is taken of.
pub fn bench_optimizer(
    ctx: &GpuContext,
    config: &OptimizerConfig,
    workload: &Workload,
    options: &BenchOptions,
    copy_gbps: f64,
) -> Result<BenchResult> {
    let mut prepared = PreparedSteps::new(ctx, config, workload, options)?;
    let (_, mut times) = prepared.time(options.steps)?;
    let seconds = median(&mut times);
    let elements = prepared.elements();
    let gbps = prepared.bytes_per_step() as f64 / seconds / 1e9;
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
pub fn run(
    ctx: &GpuContext,
    configs: &[OptimizerConfig],
    workloads: &[Workload],
    options: &BenchOptions,
    mut progress: impl FnMut(&BenchResult),
) -> Result<BenchReport> {
    if options.steps == 0 {
        return Err(Error::InvalidConfig {
            optimizer: "benchmark",
            reason: "at least one timed step is needed".into(),
        });
    }
    let mut copies = vec![measure_copy(ctx, options)?];
    let mut results = Vec::new();
    for workload in workloads {
        for config in configs {
            if options.copy_per_result && !results.is_empty() {
                copies.push(measure_copy(ctx, options)?);
            }
            let ceiling = copies.last().expect("measured").gbps;
            let result = bench_optimizer(ctx, config, workload, options, ceiling)?;
            progress(&result);
            results.push(result);
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
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse() {
        assert_eq!(
            Workload::parse("2^24").unwrap(),
            Workload::Elements(1 << 24)
        );
        assert_eq!(
            Workload::parse("1_000_003").unwrap(),
            Workload::Elements(1_000_003)
        );
        assert_eq!(Workload::parse("GPT2").unwrap(), Workload::Gpt2Small);
        for bad in ["", "0", "3^4", "2^x", "2^99", "big"] {
            assert!(Workload::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Workload::Elements(1 << 20).label(), "2^20");
        assert_eq!(Workload::Gpt2Small.lens().iter().sum::<u64>(), 124_439_808);
    }
}
