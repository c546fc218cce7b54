//! Timing compute passes (GPU timestamps, else the wall clock) and the copy kernel's ceiling.

use std::time::Instant;

use super::{BenchOptions, CopyResult, Timing};
use crate::context::GpuContext;
use crate::error::Result;
use crate::fill::{self, RandomFill};
use crate::kernels::{BindingKind, Element, UtilityKernel, workgroups_for};
use crate::storage::{Format, GradAccess};
use crate::transfer::{self, View};

/// The copy kernel that measures the ceiling, in 32-bit words.
pub static COPY_KERNEL: UtilityKernel = UtilityKernel {
    name: "copy",
    source: include_str!("../../../shaders/copy.wgsl"),
    pieces: &["alias CopyWord = vec4<f32>;"],
    elementwise: false,
    uniform: None,
    grad: GradAccess::None,
    bindings: &[
        BindingKind::Storage { read_only: true },
        BindingKind::Storage { read_only: false },
    ],
};

/// [`COPY_KERNEL`] in 64-bit words, for a device whose optimizer kernels read them
/// ([`KernelTarget::wide_words`](crate::KernelTarget::wide_words)).
pub static COPY_WIDE_KERNEL: UtilityKernel = UtilityKernel {
    name: "copy_wide",
    pieces: &["alias CopyWord = vec2<u64>;"],
    ..COPY_KERNEL
};

/// Times `passes` compute passes, each recorded by `record` into its own submission; returns
/// seconds per pass.
pub(super) fn time_passes(
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
    let span = View::whole(buffer);
    // The words are moved, never computed on: their bits come back intact.
    let words: Vec<f32> = transfer::read(ctx, &[span])?;
    Ok(bytemuck::pod_collect_to_vec(&words))
}

pub(super) fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Measures the copy kernel: buffers of up to 1 GiB (within one binding), rotated over enough
/// pairs to exceed the caches.
pub fn measure_copy(ctx: &GpuContext, options: &BenchOptions) -> Result<CopyResult> {
    let bytes = ctx.max_binding_bytes().min(options.max_copy_bytes) / 16 * 16;
    let pairs = (options.min_working_set_bytes.div_ceil(2 * bytes)).clamp(1, 8) as usize;
    let kernel = if ctx.kernel_target().wide_words {
        &COPY_WIDE_KERNEL
    } else {
        &COPY_KERNEL
    };
    let (layout, pipeline) = ctx
        .kernels
        .utility(&ctx.device, kernel, Element::Vec4, Format::F32);
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
        let span = View::whole(src).part(0, bytes / 4);
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

#[cfg(test)]
mod tests {
    use super::*;

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
