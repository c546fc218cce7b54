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
use crate::engine::arena::ALIGN_ELEMS;
use crate::engine::control::{
    ControlSettings, FACTOR_WINDOW_ROWS, NORM_ELEMENTS_PER_THREAD, PARTIAL_BYTES, StepControl,
    TrainingOptions,
};
use crate::engine::{Optimizer, Role, TensorId, TensorInit};
use crate::error::{Error, Result};
use crate::fill::{self, RandomFill};
use crate::kernels::{
    BindingKind, Element, MAX_STATE_SLOTS, ScalarBinding, UtilityKernel, WORKGROUP_SIZE,
    workgroups_for,
};
use crate::optim::{Hyperparameters, OptimizerConfig, UpdateRule};
use crate::transfer::{self, Span};

/// The copy kernel that measures the ceiling.
pub static COPY_KERNEL: UtilityKernel = UtilityKernel {
    name: "copy",
    source: include_str!("../../shaders/copy.wgsl"),
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
    /// Parses `16777216`, `2^24` or `gpt2`. Zero, negative and fractional sizes are errors
    /// that say so.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidConfig {
            optimizer: "benchmark",
            reason: format!("size `{text}` {reason}"),
        };
        let not_a_size = || bad("is not a number of elements, 2^k, or gpt2");
        if text.eq_ignore_ascii_case("gpt2") {
            return Ok(Workload::Gpt2Small);
        }
        let elements: u64 = match text.split_once('^') {
            Some(("2", k)) => {
                let k: u32 = k.parse().map_err(|_| not_a_size())?;
                1u64.checked_shl(k)
                    .ok_or_else(|| bad("is more elements than 64 bits count (at most 2^63)"))?
            }
            Some(_) => return Err(not_a_size()),
            None => {
                let digits = text.replace('_', "");
                match digits.parse::<i128>() {
                    Ok(n) if n <= 0 => {
                        return Err(bad("must be a positive number of elements"));
                    }
                    Ok(n) => {
                        u64::try_from(n).map_err(|_| bad("is more elements than 64 bits count"))?
                    }
                    Err(_) => match digits.parse::<f64>() {
                        Ok(x) if x.is_finite() && x > 0.0 => {
                            return Err(bad("is not a whole number of elements"));
                        }
                        Ok(_) => return Err(bad("must be a positive number of elements")),
                        Err(_) => return Err(not_a_size()),
                    },
                }
            }
        };
        Ok(Workload::Elements(elements))
    }

    /// How errors name it: "2^31 elements", "gpt2 (124439808 elements)".
    fn describe(&self) -> String {
        match self {
            Workload::Gpt2Small => format!("gpt2 ({} elements)", self.lens().iter().sum::<u64>()),
            other => format!("{} elements", other.label()),
        }
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
    // A query set holds at most wgpu::QUERY_SET_MAX_QUERIES timestamps: time in batches of
    // passes, each batch's timestamps resolved and read back before the set is reused.
    let batch = passes.min(TIMED_PASSES_PER_QUERY_SET) as u32;
    let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("step timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count: 2 * batch,
    });
    let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("timestamps"),
        size: 2 * batch as u64 * 8,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let period_ns = ctx.queue.get_timestamp_period() as f64;
    let mut times = Vec::with_capacity(passes);
    while times.len() < passes {
        let n = (passes - times.len()).min(batch as usize) as u32;
        for p in 0..n {
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
        encoder.resolve_query_set(&queries, 0..2 * n, &resolve, 0);
        ctx.queue.submit([encoder.finish()]);
        let ticks = read_u64s(ctx, &resolve)?;
        times.extend(
            ticks
                .chunks_exact(2)
                .take(n as usize)
                .map(|t| t[1].saturating_sub(t[0]) as f64 * period_ns * 1e-9),
        );
    }
    Ok((Timing::GpuTimestamps, times))
}

/// Passes timed per query set: two timestamps each, within `wgpu::QUERY_SET_MAX_QUERIES`.
const TIMED_PASSES_PER_QUERY_SET: usize = wgpu::QUERY_SET_MAX_QUERIES as usize / 2;

fn read_u64s(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Result<Vec<u64>> {
    let span = Span {
        buffer,
        offset: 0,
        len: buffer.size() / 4,
    };
    // The words are moved, never computed on: their bits come back intact.
    let words: Vec<f32> = transfer::read(ctx, &[span])?;
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

/// What the benchmark's up-front checks need to know of a device: its limits and, where it can
/// be learned, its free memory.
#[derive(Clone, Debug)]
pub struct DeviceFacts {
    /// What the messages call it: "CPU adapter `llvmpipe (...)` (vulkan)", "adapter `...`".
    pub kind: String,
    /// The most bytes one storage binding may cover ([`GpuContext::max_binding_bytes`]).
    pub binding_bytes: u64,
    pub max_buffer_size: u64,
    pub max_workgroups_per_dimension: u32,
    pub min_storage_buffer_offset_alignment: u64,
    /// The optimizer kernels take their per-step values from a uniform buffer (one per
    /// instance) instead of immediates.
    pub uniform_scalars: bool,
    /// Free device memory in bytes, if known ([`GpuContext::available_memory`]).
    pub available_bytes: Option<u64>,
}

impl DeviceFacts {
    /// The facts of `ctx`'s device.
    pub fn of(ctx: &GpuContext) -> Self {
        let available = ctx.available_memory();
        let kind = available.as_ref().map_or("adapter", |a| a.what.as_str());
        Self {
            kind: format!("{kind} `{}` ({})", ctx.info.name, ctx.info.backend.to_str()),
            binding_bytes: ctx.max_binding_bytes(),
            max_buffer_size: ctx.limits.max_buffer_size,
            max_workgroups_per_dimension: ctx.limits.max_compute_workgroups_per_dimension,
            min_storage_buffer_offset_alignment: ctx.limits.min_storage_buffer_offset_alignment
                as u64,
            uniform_scalars: ctx.scalar_binding() == ScalarBinding::Uniform,
            available_bytes: available.map(|a| a.bytes),
        }
    }
}

/// An upper bound on one group's step-factor buffer: a header row, then the next step's row
/// and a window of [`FACTOR_WINDOW_ROWS`] more (fewer once the factors converge), 16 bytes each.
const FACTOR_BYTES_BOUND: u64 = (FACTOR_WINDOW_ROWS + 2) * 16;

/// What one measurement of a configuration on a workload allocates on the device, counted as
/// [`measure_copy`] and [`PreparedSteps::new`] allocate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// What is measured: "bench adamw at 2^31 elements".
    pub label: String,
    /// The first device limit the work exceeds: it cannot run on this device at all.
    pub exceeds: Option<String>,
    /// Optimizer instances rotated over (enough to exceed the caches).
    pub instances: u64,
    /// Bytes of one instance's parameter arena; its gradient arena and each state's are as
    /// large.
    pub arena_bytes: u128,
    /// States the configuration keeps.
    pub states: u64,
    /// One instance's other buffers: step control, step factors, norm partials, placeholders.
    pub control_bytes: u128,
    /// The copy kernel's source and destination buffers.
    pub copy_bytes: u128,
}

impl Footprint {
    /// Every byte, all instances and the copy kernel's buffers together.
    pub fn total(&self) -> u128 {
        self.instances as u128 * (self.arena_bytes * (2 + self.states as u128) + self.control_bytes)
            + self.copy_bytes
    }

    /// "(params 8.6 GB, grads 8.6 GB, 2 states 17.2 GB, control 1.1 MB, copy kernel 268.4 MB)"
    fn parts(&self) -> String {
        let states = match self.states {
            0 => String::new(),
            1 => format!(", 1 state {}", decimal_bytes(self.arena_bytes)),
            n => format!(
                ", {n} states {}",
                decimal_bytes(self.arena_bytes * n as u128)
            ),
        };
        let instance = format!(
            "params {}, grads {}{states}, control {}",
            decimal_bytes(self.arena_bytes),
            decimal_bytes(self.arena_bytes),
            decimal_bytes(self.control_bytes)
        );
        let copy = decimal_bytes(self.copy_bytes);
        if self.instances == 1 {
            format!("({instance}, copy kernel {copy})")
        } else {
            format!(
                "({} instances rotated to exceed the caches, each {instance}; copy kernel {copy})",
                self.instances
            )
        }
    }
}

/// Bytes in decimal units, as memory sizes are sold: "34.4 GB".
fn decimal_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["kB", "MB", "GB", "TB", "PB", "EB", "ZB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Bytes in binary units, as the adapters' limits are listed: "128 MiB".
fn binary_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Workgroups [`workgroups_for`] dispatches for `elements` (x times y), without its assertion.
fn workgroup_count(elements: u128, max_per_dimension: u32) -> u128 {
    let groups = elements.div_ceil(WORKGROUP_SIZE as u128).max(1);
    let x = groups.min(max_per_dimension as u128);
    x * groups.div_ceil(x)
}

/// The segment size the arenas are cut into: the device's binding limit, or less if asked.
fn segment_bytes(facts: &DeviceFacts, options: &BenchOptions) -> Result<u64> {
    let binding = facts.binding_bytes;
    match options.max_segment_bytes {
        None => Ok(binding),
        Some(bytes) if bytes > binding => Err(Error::InvalidConfig {
            optimizer: "benchmark",
            reason: format!(
                "segments of {} were asked for, but this {} binds at most {} at once \
                 (ask for at most {} MiB)",
                binary_bytes(bytes as u128),
                facts.kind,
                binary_bytes(binding as u128),
                binding >> 20
            ),
        }),
        Some(bytes) if bytes < 16 => Err(Error::InvalidConfig {
            optimizer: "benchmark",
            reason: format!("segments of {bytes} bytes cannot hold one vec4"),
        }),
        Some(bytes) => Ok(bytes),
    }
}

/// What measuring `config` on `workload` allocates, and the first device limit it exceeds if
/// any. Memory is checked by [`check_fits`].
pub fn footprint(
    config: &OptimizerConfig,
    workload: &Workload,
    options: &BenchOptions,
    facts: &DeviceFacts,
) -> Result<Footprint> {
    let label = format!("bench {} at {}", config.name(), workload.describe());
    // The first device limit the work exceeds, if any.
    let mut exceeds: Option<String> = None;
    let mut check = |fits: bool, reason: &dyn Fn() -> String| {
        if !fits && exceeds.is_none() {
            exceeds = Some(reason());
        }
    };
    let max_dim = facts.max_workgroups_per_dimension;
    let max_groups = max_dim as u128 * max_dim as u128;
    let lens = workload.lens();
    let elements: u128 = lens.iter().map(|&n| n as u128).sum();
    let states = config.initial_states().iter().flatten().count() as u64;

    // PreparedSteps::new: instances until the resident bytes reach the working set.
    let resident = (2 + states as u128) * 4 * elements;
    let instances = (options.min_working_set_bytes as u128)
        .div_ceil(resident.max(1))
        .clamp(1, 64) as u64;

    // The arenas (engine::arena): tensors padded to vec4s, cut into segments.
    let segment_elems = (segment_bytes(facts, options)? / 4 / ALIGN_ELEMS * ALIGN_ELEMS) as u128;
    let total: u128 = lens
        .iter()
        .map(|&n| (n as u128).next_multiple_of(ALIGN_ELEMS as u128))
        .sum();
    let segments = total.div_ceil(segment_elems);
    let largest = segment_elems.min(total);
    let last = total - (segments - 1) * segment_elems;
    check(largest * 4 <= facts.max_buffer_size as u128, &|| {
        format!(
            "its segments take buffers of {}, more than the adapter's largest ({})",
            binary_bytes(largest * 4),
            binary_bytes(facts.max_buffer_size as u128)
        )
    });
    check(largest <= u32::MAX as u128, &|| {
        format!(
            "its segments of {largest} elements are past the kernels' 32-bit element indices \
             (at most {} per segment: cap the segments with max_segment_bytes, --segment-mib)",
            u32::MAX
        )
    });
    // The fill kernel dispatches one thread per element, the update one per vec4, the norm
    // pass one per 16 vec4s: the fill's dispatch is the largest.
    let fill_groups = workgroup_count(largest, max_dim);
    check(fill_groups <= max_groups, &|| {
        format!(
            "filling a segment of {largest} elements takes {fill_groups} workgroups, more than \
             the adapter dispatches at once ({max_dim} x {max_dim})"
        )
    });
    // The norm pass: one partial sum per workgroup per segment, each segment's run aligned,
    // all in one buffer that the finalize kernel binds whole.
    let align = (facts.min_storage_buffer_offset_alignment / PARTIAL_BYTES).max(1) as u128;
    let partials_of = |elems: u128| {
        let threads = (elems / ALIGN_ELEMS as u128).div_ceil(NORM_ELEMENTS_PER_THREAD as u128);
        workgroup_count(threads, max_dim).next_multiple_of(align)
    };
    let partial_count = ((segments - 1) * partials_of(segment_elems) + partials_of(last)).max(1);
    let partial_bytes = partial_count * PARTIAL_BYTES as u128;
    check(partial_bytes <= facts.binding_bytes as u128, &|| {
        format!(
            "the norm pass's partial sums over its {segments} segments take one buffer of {}, \
             more than the adapter binds at once ({})",
            binary_bytes(partial_bytes),
            binary_bytes(facts.binding_bytes as u128)
        )
    });
    let control_bytes = partial_bytes
        + (std::mem::size_of::<StepControl>() + std::mem::size_of::<ControlSettings>()) as u128
        + 16 // the non-finite flag
        + FACTOR_BYTES_BOUND as u128
        + 16 * MAX_STATE_SLOTS as u128 // placeholders for unused state slots
        + if facts.uniform_scalars {
            config.kernel().scalars.size as u128
        } else {
            0
        };

    // measure_copy: up to 8 pairs of buffers of one binding each.
    let copy = (facts.binding_bytes.min(options.max_copy_bytes) / 16 * 16) as u128;
    let pairs = (options.min_working_set_bytes as u128)
        .div_ceil(2 * copy.max(1))
        .clamp(1, 8);
    Ok(Footprint {
        label,
        exceeds,
        instances,
        arena_bytes: total * 4,
        states,
        control_bytes,
        copy_bytes: 2 * pairs * copy,
    })
}

/// Checks every configuration on every workload against the device's limits and, where it is
/// known, its free memory, before anything is allocated: the first that does not fit is an
/// [`Error::DoesNotFit`] that says what it needs and what there is (its memory first: the
/// plainer reason when both fail).
pub fn check_fits(
    facts: &DeviceFacts,
    configs: &[OptimizerConfig],
    workloads: &[Workload],
    options: &BenchOptions,
) -> Result<()> {
    segment_bytes(facts, options)?;
    for workload in workloads {
        for config in configs {
            let need = footprint(config, workload, options, facts)?;
            if let Some(available) = facts.available_bytes
                && need.total() > available as u128
            {
                return Err(Error::DoesNotFit(format!(
                    "{} needs {} of device memory {}; this {} has {} available",
                    need.label,
                    decimal_bytes(need.total()),
                    need.parts(),
                    facts.kind,
                    decimal_bytes(available as u128)
                )));
            }
            if let Some(limit) = need.exceeds {
                return Err(Error::DoesNotFit(format!(
                    "{} cannot run on this {}: {limit}",
                    need.label, facts.kind
                )));
            }
        }
    }
    Ok(())
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
#[cfg(feature = "cli")]
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
    // Everything that will be measured must fit, before the first measurement.
    check_fits(&DeviceFacts::of(ctx), configs, workloads, options)?;
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
        for bad in [
            "", "0", "-5", "1.5", "NaN", "3^4", "2^x", "2^99", "2^-1", "big",
        ] {
            assert!(Workload::parse(bad).is_err(), "{bad}");
        }
        for (text, reason) in [
            ("-5", "size `-5` must be a positive number of elements"),
            ("0", "size `0` must be a positive number of elements"),
            ("1.5", "size `1.5` is not a whole number of elements"),
            ("2^64", "size `2^64` is more elements than 64 bits count"),
        ] {
            let err = Workload::parse(text).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
        assert_eq!(Workload::Elements(1 << 20).label(), "2^20");
        assert_eq!(Workload::Gpt2Small.lens().iter().sum::<u64>(), 124_439_808);
    }

    /// lavapipe's limits, and some memory.
    fn facts(available_bytes: Option<u64>) -> DeviceFacts {
        DeviceFacts {
            kind: "CPU adapter `test`".into(),
            binding_bytes: 128 << 20,
            max_buffer_size: 2 << 30,
            max_workgroups_per_dimension: 65535,
            min_storage_buffer_offset_alignment: 32,
            uniform_scalars: false,
            available_bytes,
        }
    }

    fn config(name: &str) -> OptimizerConfig {
        bench_config(name).unwrap()
    }

    #[test]
    fn footprints_count_every_buffer_the_bench_allocates() {
        let options = BenchOptions::default();
        let f = footprint(
            &config("adamw"),
            &Workload::Elements(1 << 31),
            &options,
            &facts(None),
        )
        .unwrap();
        // 64 segments of 2^25 elements; each norm dispatch 2^25 / 4 / 16 / 256 = 2048
        // workgroups, one partial sum each.
        let partials = 64 * 2048 * PARTIAL_BYTES as u128;
        let control = partials
            + (std::mem::size_of::<StepControl>() + std::mem::size_of::<ControlSettings>()) as u128
            + 16
            + FACTOR_BYTES_BOUND as u128
            + 16 * MAX_STATE_SLOTS as u128;
        assert_eq!(
            f,
            Footprint {
                label: "bench adamw at 2^31 elements".into(),
                exceeds: None,
                instances: 1,
                arena_bytes: 1 << 33,
                states: 2,
                control_bytes: control,
                copy_bytes: 2 * (128 << 20),
            }
        );
        assert_eq!(f.total(), 4 * (1 << 33) + control + (256 << 20));
        // Small workloads rotate over instances until 256 MiB are resident (at most 64).
        let f = footprint(
            &config("sgd"),
            &Workload::Elements(1 << 20),
            &options,
            &facts(None),
        );
        assert_eq!(f.unwrap().instances, 22);
        let f = footprint(
            &config("sgd"),
            &Workload::Elements(1 << 10),
            &options,
            &facts(None),
        );
        assert_eq!(f.unwrap().instances, 64);
        // GPT-2's tensors are all multiples of 4: no padding.
        let f = footprint(
            &config("adam"),
            &Workload::Gpt2Small,
            &options,
            &facts(None),
        )
        .unwrap();
        assert_eq!(f.arena_bytes, 124_439_808 * 4);
        assert_eq!(f.label, "bench adam at gpt2 (124439808 elements)");
    }

    #[test]
    fn what_does_not_fit_is_one_line_saying_what_it_needs_and_what_there_is() {
        let options = BenchOptions::default();
        let adamw = [config("adamw")];
        let sizes = [Workload::Elements(1 << 16), Workload::Elements(1 << 31)];
        let err = check_fits(&facts(Some(21_300_000_000)), &adamw, &sizes, &options)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "bench adamw at 2^31 elements needs 34.6 GB of device memory (params 8.6 GB, grads \
             8.6 GB, 2 states 17.2 GB, control 2.1 MB, copy kernel 268.4 MB); this CPU adapter \
             `test` has 21.3 GB available"
        );
        // Enough memory, or none known: the limits alone.
        assert!(check_fits(&facts(Some(40 << 30)), &adamw, &sizes, &options).is_ok());
        assert!(check_fits(&facts(None), &adamw, &sizes, &options).is_ok());
        // 2^40 elements: the norm pass's partial sums outgrow one binding.
        let huge = [Workload::Elements(1 << 40)];
        let err = check_fits(&facts(None), &adamw, &huge, &options)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bench adamw at 2^40 elements cannot run on this CPU adapter `test`: the norm pass's partial sums"),
            "{err}"
        );
        // Memory comes first where it is known: the plainer reason.
        let err = check_fits(&facts(Some(1 << 30)), &adamw, &huge, &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 17.6 TB of device memory"), "{err}");
        // A binding of 64 GiB would make segments past the kernels' u32 indices.
        let wide = DeviceFacts {
            binding_bytes: 64 << 30,
            max_buffer_size: 64 << 30,
            ..facts(None)
        };
        let err = check_fits(&wide, &adamw, &[Workload::Elements(1 << 35)], &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("32-bit element indices"), "{err}");
        // A segment cap past the binding limit is refused, not silently lowered.
        let capped = BenchOptions {
            max_segment_bytes: Some(1 << 30),
            ..BenchOptions::default()
        };
        let err = check_fits(&facts(None), &adamw, &sizes[..1], &capped)
            .unwrap_err()
            .to_string();
        assert!(err.contains("segments of 1 GiB were asked for"), "{err}");
    }

    #[test]
    fn byte_counts_read_as_memory_sizes() {
        assert_eq!(decimal_bytes(999), "999 B");
        assert_eq!(decimal_bytes(34_359_738_368), "34.4 GB");
        assert_eq!(decimal_bytes(999_990_000), "1.0 GB");
        assert_eq!(binary_bytes(128 << 20), "128 MiB");
        assert_eq!(binary_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn more_timed_steps_than_one_query_set_holds() {
        let ctx = GpuContext::new(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
        let options = BenchOptions {
            steps: TIMED_PASSES_PER_QUERY_SET + 3,
            warmup: 0,
            min_working_set_bytes: 1 << 16,
            max_copy_bytes: 1 << 16,
            ..BenchOptions::quick()
        };
        let copy = measure_copy(&ctx, &options).unwrap();
        assert!(copy.gbps > 0.0, "{copy:?}");
    }
}
