//! Gradient accumulation on the device, for micro-batching: a micro-batch's gradients are
//! added into the gradient buffers by a kernel (in the gradients' own format), and the
//! buffers are zeroed by the device, so that a training loop never reads gradients back.

use super::{Optimizer, Role, TensorId, check_usage};
// (Caller buffers were checked for STORAGE usage when the optimizer was built.)
use crate::error::Result;
use crate::kernels::{BindingKind, UtilityKernel, workgroups_for};
use crate::storage::GradAccess;

/// Adds a micro-batch (float32) into one segment's gradients.
pub static ACCUMULATE_KERNEL: UtilityKernel = UtilityKernel {
    name: "accumulate",
    source: include_str!("../../shaders/accumulate.wgsl"),
    pieces: &[],
    elementwise: true,
    uniform: None,
    grad: GradAccess::ReadWrite,
    bindings: &[
        BindingKind::Storage { read_only: true },
        BindingKind::Storage { read_only: false },
    ],
};

impl Optimizer {
    /// Adds one micro-batch's gradients, one per tensor (in [`TensorId`] order), to the
    /// gradients already on the device: `grad = grad + micro_batch`, computed in float32 and
    /// stored in the gradients' format. Start a batch with [`zero_grads`](Self::zero_grads)
    /// and end it with [`step`](Self::step). Every length is checked before anything is
    /// written; queued, it returns without waiting (one staging buffer per call, as large as
    /// the largest segment).
    pub fn accumulate_grads(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.check_grads("accumulate_grads", grads)?;
        let ctx = &self.ctx;
        let largest = self
            .groups
            .iter()
            .flat_map(|g| &g.segments)
            .map(|s| s.grad.len.next_multiple_of(4))
            .max()
            .unwrap_or(0);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("micro-batch gradients"),
            size: largest.max(4) * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let max_per_dim = ctx.limits.max_compute_workgroups_per_dimension;
        let mut first_tensor = 0;
        for group in &self.groups {
            // Each segment's share of the micro-batch, zeros in the padding between tensors and
            // in the rest of a last vec4 (a `Vec4Tail` segment's gradients end inside one).
            let mut incoming: Vec<Vec<f32>> = group
                .segments
                .iter()
                .map(|s| vec![0.0; s.grad.len.next_multiple_of(s.element.width()) as usize])
                .collect();
            for (local, place) in group.tensors.iter().enumerate() {
                let data = grads[first_tensor + local];
                for p in &place.pieces {
                    let (from, to) = (p.tensor_offset as usize, p.segment_offset as usize);
                    incoming[p.segment][to..to + p.len as usize]
                        .copy_from_slice(&data[from..from + p.len as usize]);
                }
            }
            first_tensor += group.tensors.len();
            for (segment, values) in group.segments.iter().zip(&incoming) {
                let (layout, pipeline) = ctx.kernels.utility(
                    &ctx.device,
                    &ACCUMULATE_KERNEL,
                    segment.element,
                    segment.grad.format,
                );
                ctx.queue
                    .write_buffer(&staging, 0, bytemuck::cast_slice(values));
                let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("accumulate"),
                    layout: &layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &staging,
                                offset: 0,
                                size: wgpu::BufferSize::new(values.len() as u64 * 4),
                            }),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: segment.grad.binding(),
                        },
                    ],
                });
                let mut encoder = ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    let (x, y) = workgroups_for(
                        segment.grad.len.div_ceil(segment.element.width()),
                        max_per_dim,
                    );
                    pass.dispatch_workgroups(x, y, 1);
                }
                // The staging buffer is written again for the next segment: that write lands
                // after this submit's dispatch (queue order).
                ctx.queue.submit([encoder.finish()]);
            }
        }
        Ok(())
    }

    /// Sets every gradient to zero, on the device (queued).
    pub fn zero_grads(&mut self) -> Result<()> {
        for t in 0..self.tensors.len() {
            let id = TensorId(t);
            let (g, local) = self.locate(id)?;
            let spans = self.groups[g].spans(Role::Grad, local, 0..self.tensor_len(id)?)?;
            check_usage(&spans, id, Role::Grad, wgpu::BufferUsages::COPY_DST)?;
        }
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        for segment in self.groups.iter().flat_map(|g| &g.segments) {
            let view = &segment.grad;
            encoder.clear_buffer(&view.buffer, view.offset, Some(view.bytes()));
        }
        self.ctx.queue.submit([encoder.finish()]);
        Ok(())
    }
}
