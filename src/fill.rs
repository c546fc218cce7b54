//! Pseudo-random data generated on the GPU (`shaders/fill.wgsl`), element by element from a
//! seed and the element's index, with a CPU mirror that gives the same bits. Large tests and
//! the benchmarks fill gigabytes this way without holding them on the host, and check sampled
//! elements against the CPU reference.

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{BindingKind, Element, UtilityKernel, shader_struct, workgroups_for};
use crate::storage::{Format, GradAccess};
use crate::transfer::View;

shader_struct! {
    /// The uniform of `shaders/fill.wgsl`.
    pub struct FillParams {
        /// The seed the kernel hashes with each element's index.
        pub seed: u32,
        /// The low word of the first element's index (the values do not depend on the layout).
        pub first_lo: u32,
        /// The high word of the first element's index.
        pub first_hi: u32,
        /// Elements to write.
        pub count: u32,
        /// Where the kernel writes the first element, in elements from the bound offset.
        pub start: u32,
        /// Added to each scaled random value.
        pub offset: f32,
        /// Multiplies each random value in [-1, 1).
        pub scale: f32,
        /// Padding to the WGSL struct's size.
        pub _pad0: u32,
    }
}

/// The fill kernel.
pub static FILL_KERNEL: UtilityKernel = UtilityKernel {
    name: "fill",
    source: include_str!("../shaders/fill.wgsl"),
    pieces: &[],
    elementwise: false,
    uniform: Some(&FillParams::LAYOUT),
    grad: GradAccess::None,
    bindings: &[
        BindingKind::Uniform,
        BindingKind::Storage { read_only: false },
    ],
};

/// `offset + scale * u` with `u` uniform in [-1, 1), a function of (seed, element index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomFill {
    /// Selects the sequence: the same seed gives the same value at each index.
    pub seed: u32,
    /// The centre of the values' range (finite).
    pub offset: f32,
    /// A power of two (or zero): then `scale * u` is exact and the GPU's value is the CPU's to
    /// the bit, whether or not its compiler fuses the multiply and add.
    pub scale: f32,
}

impl RandomFill {
    /// Uniform in [-scale, scale), `scale` a power of two.
    pub fn symmetric(seed: u32, scale: f32) -> Self {
        Self {
            seed,
            offset: 0.0,
            scale,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let power_of_two = self.scale == 0.0
            || (self.scale.is_finite() && self.scale.abs().to_bits() & 0x007f_ffff == 0);
        if !power_of_two || !self.offset.is_finite() {
            return Err(Error::InvalidConfig {
                optimizer: "random fill",
                reason: format!(
                    "scale must be a power of two (got {}) and offset finite (got {})",
                    self.scale, self.offset
                ),
            });
        }
        Ok(())
    }

    /// The value the GPU writes at element `index`.
    pub fn value(&self, index: u64) -> f32 {
        let h = pcg_hash((index as u32) ^ pcg_hash(((index >> 32) as u32) ^ pcg_hash(self.seed)));
        let u = (h >> 8) as f32 * (1.0 / 16_777_216.0) * 2.0 - 1.0;
        self.offset + self.scale * u
    }
}

/// PCG's output permutation, as in `shaders/fill.wgsl`.
fn pcg_hash(x: u32) -> u32 {
    let state = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Fills the spans, in order, with the values of elements `first_index..`.
pub(crate) fn fill(
    ctx: &GpuContext,
    spans: &[View],
    first_index: u64,
    fill: &RandomFill,
) -> Result<()> {
    fill.validate()?;
    if spans.iter().any(|s| s.format != Format::F32) {
        // 16-bit storage: the same values from the CPU mirror, rounded as stored (the kernel
        // writes float32 words), a chunk at a time.
        return crate::transfer::write_generated(ctx, spans, |k| fill.value(first_index + k));
    }
    let (layout, pipeline) =
        ctx.kernels
            .utility(&ctx.device, &FILL_KERNEL, Element::F32, Format::F32);
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    let max_per_dim = ctx.limits.max_compute_workgroups_per_dimension;
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let mut index = first_index;
    // One small uniform per span: all of them ride in one submit.
    let mut keep_alive = Vec::with_capacity(spans.len());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        for span in spans {
            // Bind from the aligned offset at or before the span.
            let base = span.offset / align * align;
            let params = FillParams {
                seed: fill.seed,
                first_lo: index as u32,
                first_hi: (index >> 32) as u32,
                count: span.len as u32,
                start: ((span.offset - base) / 4) as u32,
                offset: fill.offset,
                scale: fill.scale,
                _pad0: 0,
            };
            let uniform = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fill params"),
                size: std::mem::size_of::<FillParams>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue
                .write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
            let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fill"),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniform.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &span.buffer,
                            offset: base,
                            size: wgpu::BufferSize::new(span.offset - base + span.len * 4),
                        }),
                    },
                ],
            });
            let (x, y) = workgroups_for(span.len, max_per_dim);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
            index += span.len;
            keep_alive.push(uniform);
        }
    }
    ctx.queue.submit([encoder.finish()]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_uniform_in_the_range_and_never_all_zero() {
        let fill = RandomFill {
            seed: 7,
            offset: 1.0,
            scale: 0.5,
        };
        let values: Vec<f32> = (0..10_000).map(|i| fill.value(i)).collect();
        assert!(values.iter().all(|v| (0.5..1.5).contains(v)));
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        // Indices past 2^32 differ from their low words' values.
        assert_ne!(fill.value(5), fill.value(5 + (1 << 32)));
        assert_ne!(fill.value(5), RandomFill { seed: 8, ..fill }.value(5));
    }

    #[test]
    fn only_powers_of_two_scale_exactly() {
        assert!(RandomFill::symmetric(1, 0.25).validate().is_ok());
        assert!(RandomFill::symmetric(1, 0.0).validate().is_ok());
        assert!(RandomFill::symmetric(1, 0.3).validate().is_err());
        assert!(RandomFill::symmetric(1, f32::NAN).validate().is_err());
    }
}
