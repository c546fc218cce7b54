//! What a measurement allocates, checked against the device's limits and memory before anything
//! is allocated.

use super::{BenchOptions, Workload};
use crate::context::GpuContext;
use crate::engine::arena::ALIGN_ELEMS;
use crate::engine::control::{
    ControlSettings, FACTOR_WINDOW_ROWS, NORM_ELEMENTS_PER_THREAD, PARTIAL_BYTES, StepControl,
};
use crate::error::{Error, Result};
use crate::kernels::{MAX_STATE_SLOTS, ScalarsVia, WORKGROUP_SIZE};
use crate::optim::{Hyperparameters, OptimizerConfig, UpdateRule};

/// What the benchmark's up-front checks need to know of a device: its limits and, where it can
/// be learned, its free memory.
#[derive(Clone, Debug)]
pub struct DeviceFacts {
    /// What the messages call it: "CPU adapter `llvmpipe (...)` (vulkan)", "adapter `...`".
    pub kind: String,
    /// The most bytes one storage binding may cover ([`GpuContext::max_binding_bytes`]).
    pub binding_bytes: u64,
    /// The largest buffer the device creates, in bytes (its limit).
    pub max_buffer_size: u64,
    /// The most workgroups one dispatch dimension may count (its limit).
    pub max_workgroups_per_dimension: u32,
    /// Where a storage binding may start inside a buffer, in bytes (its limit).
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
            uniform_scalars: ctx.scalars_via() == ScalarsVia::UniformBuffer,
            available_bytes: available.map(|a| a.bytes),
        }
    }
}

/// An upper bound on one group's step-factor buffer: a header row, then the next step's row
/// and a window of [`FACTOR_WINDOW_ROWS`] more (fewer once the factors converge), 16 bytes each.
const FACTOR_BYTES_BOUND: u64 = (FACTOR_WINDOW_ROWS + 2) * 16;

/// What one measurement of a configuration on a workload allocates on the device, counted as
/// [`measure_copy`](super::measure_copy) and [`PreparedSteps::new`](super::PreparedSteps::new) allocate it.
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

/// Workgroups [`workgroups_for`](crate::kernels::workgroups_for) dispatches for `elements` (x times y), without its assertion.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::bench::bench_config;

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
}
