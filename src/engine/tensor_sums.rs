//! Per-tensor sums for rules that reduce over each tensor of a group (LAMB's norms): every
//! workgroup of every segment writes the sums of its elements into its own slot, and a
//! `finalize_tensors` pass adds each tensor's slots. A workgroup never holds two tensors: tensors
//! with per-tensor sums start at whole workgroups (`TENSOR_ALIGN` elements in the arena; a
//! caller's tensor has segments of its own). Two dispatches and no atomics, however many tensors.

use super::group::TensorPlace;
use super::segment::Segment;
use crate::context::GpuContext;
use crate::kernels::WORKGROUP_SIZE;

/// Tensors of a group with per-tensor sums start at multiples of this many elements: one
/// workgroup of `vec4` invocations.
pub const TENSOR_ALIGN: u64 = 4 * WORKGROUP_SIZE as u64;

/// The workgroup size of `finalize_tensors` (one invocation per tensor).
pub const FINALIZE_WORKGROUP_SIZE: u32 = 64;

/// The buffers of a group's per-tensor sums.
#[derive(Debug)]
pub(crate) struct TensorSums {
    /// One `vec2<f32>` per workgroup of the group.
    pub partials: wgpu::Buffer,
    /// The tensor of each workgroup (`u32::MAX`: none).
    pub workgroup_tensor: wgpu::Buffer,
    /// Per tensor: the range of its workgroups' slots, and the value `finalize_tensors` leaves.
    pub table: wgpu::Buffer,
    /// The number of each segment's first workgroup.
    pub first_workgroup: Vec<u32>,
    /// The tensors of the group.
    pub tensors: u32,
}

impl TensorSums {
    /// Numbers the workgroups of `segments` one after the other and finds each one's tensor.
    ///
    /// On an adapter whose loops end early (llvmpipe: 65,535 iterations, see
    /// [`GpuContext::loop_limit`]), a tensor of more workgroups than that (67 million
    /// elements) is refused: `finalize_tensors` adds its sums in one loop.
    pub fn new(
        ctx: &GpuContext,
        segments: &[Segment],
        tensors: &[TensorPlace],
    ) -> crate::error::Result<Self> {
        let mut first_workgroup = Vec::with_capacity(segments.len());
        let mut owner: Vec<u32> = Vec::new();
        for (s, segment) in segments.iter().enumerate() {
            first_workgroup.push(owner.len() as u32);
            let (x, y) = segment.workgroups;
            let per_workgroup = WORKGROUP_SIZE as u64 * segment.element.width();
            // The pieces in this segment: (first element, end, tensor).
            let pieces: Vec<(u64, u64, u32)> = tensors
                .iter()
                .enumerate()
                .flat_map(|(t, place)| {
                    place
                        .pieces
                        .iter()
                        .filter(move |p| p.segment == s)
                        .map(move |p| (p.segment_offset, p.segment_offset + p.len, t as u32))
                })
                .collect();
            for k in 0..(x as u64 * y as u64) {
                let first = k * per_workgroup;
                let tensor = pieces
                    .iter()
                    .find(|(start, end, _)| (*start..*end).contains(&first))
                    .map_or(u32::MAX, |p| p.2);
                owner.push(tensor);
            }
        }
        let mut table: Vec<[u32; 4]> = vec![[u32::MAX, 0, 0, 0]; tensors.len()];
        for (w, &t) in owner.iter().enumerate() {
            if t != u32::MAX {
                let entry = &mut table[t as usize];
                entry[0] = entry[0].min(w as u32);
                entry[1] = entry[1].max(w as u32 + 1);
            }
        }
        for entry in &mut table {
            if entry[0] == u32::MAX {
                entry[0] = 0;
            }
        }
        if let Some(limit) = ctx.loop_limit()
            && let Some((t, entry)) = table
                .iter()
                .enumerate()
                .find(|(_, e)| (e[1].saturating_sub(e[0])) as u64 > limit)
        {
            return Err(crate::error::Error::InvalidConfig {
                optimizer: "per-tensor sums",
                reason: format!(
                    "tensor {t} spans {} workgroups of 1,024 elements, and this adapter ends \
                     the loop that adds them after {limit} iterations: split it",
                    entry[1] - entry[0]
                ),
            });
        }
        let buffer = |label: &str, contents: &[u8], usage: wgpu::BufferUsages| {
            let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (contents.len() as u64).max(16),
                usage: usage | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue.write_buffer(&buffer, 0, contents);
            buffer
        };
        let storage = wgpu::BufferUsages::STORAGE;
        Ok(Self {
            partials: buffer("tensor partial sums", &vec![0u8; owner.len() * 8], storage),
            workgroup_tensor: buffer("workgroup tensors", bytemuck::cast_slice(&owner), storage),
            table: buffer("tensor table", bytemuck::cast_slice(&table), storage),
            first_workgroup,
            tensors: tensors.len() as u32,
        })
    }

    /// The bind-group entries of the sums (the same for every segment).
    pub fn entries(&self) -> [wgpu::BindGroupEntry<'_>; 3] {
        [
            wgpu::BindGroupEntry {
                binding: crate::kernels::TENSOR_PARTIALS_BINDING,
                resource: self.partials.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: crate::kernels::WORKGROUP_TENSORS_BINDING,
                resource: self.workgroup_tensor.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: crate::kernels::TENSOR_TABLE_BINDING,
                resource: self.table.as_entire_binding(),
            },
        ]
    }

    /// Workgroups of the `finalize_tensors` dispatch.
    pub fn finalize_workgroups(&self) -> u32 {
        self.tensors.div_ceil(FINALIZE_WORKGROUP_SIZE)
    }
}
