//! Per-tensor gradient norms of a group, for logging (`shaders/grad_norms.wgsl`): one
//! dispatch per segment (each workgroup sums up to 4,096 values of one tensor into a slot of
//! its own; a tensor's slots are consecutive) and one finalize over the tensors, then one number
//! per tensor read back. Padding between a tensor and the next in an arena is masked out.

use super::{GroupId, Optimizer};
use crate::error::{Error, Result};
use crate::kernels::{BindingKind, COMMON_WGSL, Element, shader_struct, workgroups_for};
use crate::storage::{Format, GradAccess, Storage};

/// Values (of the segment's element type) one workgroup sums.
const CHUNK_VALUES: u64 = 4096;

shader_struct! {
    /// One workgroup's chunk, as the WGSL `NormChunk`.
    pub struct NormChunk {
        pub slot: u32,
        pub first: u32,
        pub end: u32,
        pub _pad: u32,
    }
}

shader_struct! {
    /// A segment's chunks, as the WGSL `NormRange`.
    pub struct NormRange {
        pub first: u32,
        pub count: u32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

const SUM_BINDINGS: [BindingKind; 4] = [
    BindingKind::Storage { read_only: true },
    BindingKind::Storage { read_only: true },
    BindingKind::Storage { read_only: false },
    BindingKind::Uniform,
];
const FINALIZE_BINDINGS: [BindingKind; 3] = [
    BindingKind::Storage { read_only: true },
    BindingKind::Storage { read_only: true },
    BindingKind::Storage { read_only: false },
];

/// The summing kernel's WGSL for one element type and gradient format.
pub fn sum_source(element: Element, grad: Format) -> String {
    let storage = Storage {
        grad,
        ..Storage::F32
    };
    let (lanes, masked) = match element {
        Element::Vec4 | Element::Vec4Tail => (
            4,
            "fn masked_squares(g: V, e: u32, end: u32) -> f32 {\n\
             \x20   let lane = vec4<u32>(e) + vec4<u32>(0u, 1u, 2u, 3u);\n\
             \x20   let kept = select(V(0.0), g, lane < vec4<u32>(end));\n\
             \x20   return dot(kept, kept);\n}\n",
        ),
        Element::F32 => (
            1,
            "fn masked_squares(g: V, e: u32, end: u32) -> f32 {\n    return g * g;\n}\n",
        ),
    };
    format!(
        "{}{COMMON_WGSL}\n{}{}\nconst LANES: u32 = {lanes}u;\n{masked}\n{}",
        element.prelude(),
        storage.wgsl_conversions(),
        storage.wgsl_raw_grad(GradAccess::Read, element),
        include_str!("../../shaders/grad_norms.wgsl")
    )
}

/// The finalize kernel's WGSL.
pub const FINALIZE_SOURCE: &str = include_str!("../../shaders/grad_norms_finalize.wgsl");

/// A pipeline's cache name for each element type and gradient format.
fn sum_kernel_name(element: Element, grad: Format) -> &'static str {
    match (element, grad) {
        (Element::Vec4, Format::F32) => "grad_norms vec4 f32",
        (Element::Vec4, Format::Bf16) => "grad_norms vec4 bf16",
        (Element::Vec4, _) => "grad_norms vec4 f16",
        (Element::Vec4Tail, Format::F32) => "grad_norms vec4-tail f32",
        (Element::Vec4Tail, Format::Bf16) => "grad_norms vec4-tail bf16",
        (Element::Vec4Tail, _) => "grad_norms vec4-tail f16",
        (Element::F32, Format::F32) => "grad_norms f32 f32",
        (Element::F32, Format::Bf16) => "grad_norms f32 bf16",
        (Element::F32, _) => "grad_norms f32 f16",
    }
}

impl Optimizer {
    /// The L2 norm of each tensor's gradient in `group` (in the group's tensor order), as the
    /// gradients stand now (written for the next step, or the last step's): for logging.
    /// Summed on the device, in float32; one number per tensor read back (waits for the GPU).
    pub fn grad_norms(&self, group: GroupId) -> Result<Vec<f64>> {
        let g = self.group(group)?;
        let ctx = &self.ctx;
        // Chunks, a tensor's slots consecutive; listed by segment for the dispatches.
        let mut by_segment: Vec<Vec<NormChunk>> = vec![Vec::new(); g.segments.len()];
        let mut slots: Vec<[u32; 2]> = Vec::with_capacity(g.tensors.len());
        let mut slot = 0u32;
        for tensor in &g.tensors {
            let first_slot = slot;
            for piece in &tensor.pieces {
                let width = g.segments[piece.segment].element.width();
                let chunk = CHUNK_VALUES * width;
                let mut first = piece.segment_offset;
                let end = piece.segment_offset + piece.len;
                while first < end {
                    by_segment[piece.segment].push(NormChunk {
                        slot,
                        first: first as u32,
                        end: end.min(first + chunk) as u32,
                        _pad: 0,
                    });
                    slot += 1;
                    first += chunk;
                }
            }
            if let Some(limit) = ctx.loop_limit()
                && (slot - first_slot) as u64 > limit
            {
                return Err(Error::InvalidConfig {
                    optimizer: "gradient norms",
                    reason: format!(
                        "a tensor of {} chunks is more than this adapter's loops reach ({limit})",
                        slot - first_slot
                    ),
                });
            }
            slots.push([first_slot, slot]);
        }
        let chunks: Vec<NormChunk> = by_segment.iter().flatten().copied().collect();
        let buffer = |label: &str, bytes: &[u8], usage: wgpu::BufferUsages| {
            let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (bytes.len() as u64).max(16),
                usage: usage | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue.write_buffer(&b, 0, bytes);
            b
        };
        let storage = wgpu::BufferUsages::STORAGE;
        let chunk_buffer = buffer("norm chunks", bytemuck::cast_slice(&chunks), storage);
        let partials = buffer(
            "norm partials",
            &vec![0u8; slot as usize * 4],
            storage | wgpu::BufferUsages::COPY_SRC,
        );
        let slot_buffer = buffer("norm slots", bytemuck::cast_slice(&slots), storage);
        let sums = buffer(
            "tensor norms",
            &vec![0u8; g.tensors.len() * 4],
            storage | wgpu::BufferUsages::COPY_SRC,
        );
        let max_dim = ctx.limits.max_compute_workgroups_per_dimension;
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let mut keep = Vec::new();
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let mut first = 0u32;
            for (segment, list) in g.segments.iter().zip(&by_segment) {
                if list.is_empty() {
                    continue;
                }
                let range = NormRange {
                    first,
                    count: list.len() as u32,
                    ..Default::default()
                };
                first += list.len() as u32;
                let uniform = buffer(
                    "norm range",
                    bytemuck::bytes_of(&range),
                    wgpu::BufferUsages::UNIFORM,
                );
                let (element, format) = (segment.element, g.storage.grad);
                debug_assert!(
                    element != Element::F32 || format == Format::F32,
                    "16-bit gradients are read four at a time: vec4 segments only"
                );
                let name = sum_kernel_name(element, format);
                let pipeline = ctx.kernels.entry_pipeline(
                    &ctx.device,
                    name,
                    &SUM_BINDINGS,
                    "main",
                    &[],
                    || sum_source(element, format),
                );
                let layout = ctx.kernels.entry_layout(&ctx.device, name, &SUM_BINDINGS);
                let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("gradient norms"),
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: segment.grad.binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: chunk_buffer.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: partials.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 3,
                            resource: uniform.as_entire_binding(),
                        },
                    ],
                });
                let (x, y) = workgroups_for(list.len() as u64 * 256, max_dim);
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(x, y, 1);
                keep.push(uniform);
            }
            let pipeline = ctx.kernels.entry_pipeline(
                &ctx.device,
                "grad_norms finalize",
                &FINALIZE_BINDINGS,
                "main",
                &[],
                || FINALIZE_SOURCE.to_string(),
            );
            let layout =
                ctx.kernels
                    .entry_layout(&ctx.device, "grad_norms finalize", &FINALIZE_BINDINGS);
            let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("gradient norms finalize"),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: partials.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &slot_buffer,
                            offset: 0,
                            size: wgpu::BufferSize::new(slots.len() as u64 * 8),
                        }),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: sums.as_entire_binding(),
                    },
                ],
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups((g.tensors.len() as u32).div_ceil(64), 1, 1);
        }
        ctx.queue.submit([encoder.finish()]);
        let view = crate::transfer::View::whole(&sums).part(0, g.tensors.len() as u64);
        let squares = crate::transfer::read(ctx, &[view])?;
        Ok(squares.iter().map(|&s| (s as f64).sqrt()).collect())
    }
}
