//! Pseudo-random data generated on the GPU (`shaders/fill.wgsl`), element by element from a
//! seed and the element's index, with a CPU mirror that gives the same bits. Large tests and
//! the benchmarks fill gigabytes this way without holding them on the host, and check sampled
//! elements against the CPU reference. The same kernel draws standard normal values (Box–Muller)
//! for the `torch.nn.init` initialisers ([`crate::init`]), and stores 16-bit values rounded to
//! nearest even.

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{BindingKind, Element, UtilityKernel, shader_struct, workgroups_for};
use crate::storage::{CONVERSIONS_WGSL, Format, GradAccess};
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
        /// Multiplies each random value (uniform in [-1, 1), or standard normal).
        pub scale: f32,
        /// What the random values are: [`UNIFORM`] or [`NORMAL`].
        pub distribution: u32,
    }
}

/// [`FillParams::distribution`]: uniform in [-1, 1), 24 random bits.
pub const UNIFORM: u32 = 0;

/// [`FillParams::distribution`]: standard normal (Box–Muller from two hashes of the index).
pub const NORMAL: u32 = 1;

/// The fill kernel's source, before the storage pieces.
const FILL_WGSL: &str = include_str!("../shaders/fill.wgsl");

/// PCG's output permutation (O'Neill 2014), as in `pcg_hash` below; the 16-bit kernels take it
/// from the storage conversions instead.
const PCG_HASH_WGSL: &str = "
fn pcg_hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}
";

/// Float32 storage: one element per invocation.
const STORE_F32_WGSL: &str = "
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
fn unit_count() -> u32 { return f.count; }
fn store_unit(i: u32) { dst[f.start + i] = fill_value(i); }
";

/// 16-bit storage: one word (two values, the first in the low half) per invocation. A word
/// that the run covers only in part (a tensor's last value before its padding) keeps its
/// other half: the invocation reads it first, and no other touches that word.
const STORE_PACKED_WGSL: &str = "
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
fn unit_count() -> u32 { return (f.start + f.count + 1u) / 2u - f.start / 2u; }
fn store_unit(i: u32) {
    let word = f.start / 2u + i;
    let first = 2u * word;
    let end = f.start + f.count;
    var halves = vec2<u32>(0u);
    if (first < f.start || first + 2u > end) {
        let old = dst[word];
        halves = vec2<u32>(old & 0xffffu, old >> 16u);
    }
    if (first >= f.start) {
        halves.x = half_bits(fill_value(first - f.start));
    }
    if (first + 1u < end) {
        halves.y = half_bits(fill_value(first + 1u - f.start));
    }
    dst[word] = halves.x | (halves.y << 16u);
}
";

/// bfloat16 bits of a float32, to nearest even (`bf16_bits` of the storage conversions).
const BF16_HALF_BITS_WGSL: &str =
    "fn half_bits(v: f32) -> u32 { return bf16_bits(vec4<f32>(v)).x; }\n";

/// binary16 bits of a float32, to nearest even (`f16_bits` of the storage conversions).
const F16_HALF_BITS_WGSL: &str = "fn half_bits(v: f32) -> u32 { return f16_bits(v); }\n";

/// The bindings of every fill kernel: its [`FillParams`], then the run to fill.
const FILL_BINDINGS: &[BindingKind] = &[
    BindingKind::Uniform,
    BindingKind::Storage { read_only: false },
];

/// The fill kernel, for float32 runs.
pub static FILL_KERNEL: UtilityKernel = UtilityKernel {
    name: "fill",
    source: FILL_WGSL,
    pieces: &[PCG_HASH_WGSL, STORE_F32_WGSL],
    elementwise: false,
    uniform: Some(&FillParams::LAYOUT),
    grad: GradAccess::None,
    bindings: FILL_BINDINGS,
};

/// The fill kernel, for bfloat16 runs (values rounded to nearest even).
pub static FILL_BF16_KERNEL: UtilityKernel = UtilityKernel {
    name: "fill bf16",
    source: FILL_WGSL,
    pieces: &[CONVERSIONS_WGSL, BF16_HALF_BITS_WGSL, STORE_PACKED_WGSL],
    elementwise: false,
    uniform: Some(&FillParams::LAYOUT),
    grad: GradAccess::None,
    bindings: FILL_BINDINGS,
};

/// The fill kernel, for binary16 runs (values rounded to nearest even).
pub static FILL_F16_KERNEL: UtilityKernel = UtilityKernel {
    name: "fill f16",
    source: FILL_WGSL,
    pieces: &[CONVERSIONS_WGSL, F16_HALF_BITS_WGSL, STORE_PACKED_WGSL],
    elementwise: false,
    uniform: Some(&FillParams::LAYOUT),
    grad: GradAccess::None,
    bindings: FILL_BINDINGS,
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
        self.spec().value(index)
    }

    fn spec(&self) -> FillSpec {
        FillSpec {
            seed: self.seed,
            offset: self.offset,
            scale: self.scale,
            distribution: UNIFORM,
        }
    }
}

/// What the fill kernel writes: `offset + scale * x` with `x` drawn from `distribution`
/// ([`UNIFORM`] or [`NORMAL`]) for each element index and the seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct FillSpec {
    pub seed: u32,
    pub offset: f32,
    pub scale: f32,
    pub distribution: u32,
}

impl FillSpec {
    /// The value the kernel writes at element `index` (as a float32): the same bits for the
    /// uniform distribution; for the normal one, the same operations in the same order, so
    /// within a few ulps (a device's compiler may fuse a multiply and an add, and WGSL's
    /// division and square root may be off by 2.5 ulp).
    pub(crate) fn value(&self, index: u64) -> f32 {
        let key = pcg_hash(self.seed);
        let h = element_hash(index, key);
        if self.distribution == UNIFORM {
            let u = (h >> 8) as f32 * (1.0 / 16_777_216.0) * 2.0 - 1.0;
            return self.offset + self.scale * u;
        }
        let h2 = element_hash(index, key.wrapping_add(SECOND_STREAM));
        let radius = (-2.0 * ln_of_unit(h >> 8)).sqrt();
        self.offset + self.scale * (radius * cos_of_turn(h2 >> 8))
    }
}

/// The key of the normal distribution's second hash (`SECOND_STREAM` in `shaders/fill.wgsl`).
const SECOND_STREAM: u32 = 0x9e37_79b9;

/// The hash of element `index` under `key`, as `element_hash` in `shaders/fill.wgsl`.
fn element_hash(index: u64, key: u32) -> u32 {
    pcg_hash((index as u32) ^ pcg_hash(((index >> 32) as u32) ^ key))
}

/// `ln((k + 1) / 2^24)` for `k < 2^24`, operation for operation as `ln_of_unit` in
/// `shaders/fill.wgsl` (which explains the series).
fn ln_of_unit(k: u32) -> f32 {
    let x = (k + 1) as f32;
    let bits = x.to_bits();
    let mut e = (bits >> 23) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0
        + s2 * (0.333_333_34
            + s2 * (0.2 + s2 * (0.142_857_15 + s2 * (0.111_111_11 + s2 * 0.090_909_09))));
    (e - 24) as f32 * std::f32::consts::LN_2 + 2.0 * s * series
}

/// `cos(2 pi k / 2^24)` for `k < 2^24`, operation for operation as `cos_of_turn` in
/// `shaders/fill.wgsl`.
fn cos_of_turn(k: u32) -> f32 {
    let mut quadrant = k >> 22;
    let mut rest = (k & 0x3f_ffff) as i32;
    if rest >= 0x20_0000 {
        rest -= 0x40_0000;
        quadrant += 1;
    }
    let a = rest as f32 * 3.745_070_4e-7;
    let a2 = a * a;
    let sin_a = a + a
        * a2
        * (-0.166_666_67 + a2 * (0.008_333_334 + a2 * (-0.000_198_412_7 + a2 * 2.755_731_9e-6)));
    let cos_a = 1.0
        + a2 * (-0.5
            + a2 * (0.041_666_668
                + a2 * (-0.001_388_888_9 + a2 * (2.480_158_8e-5 + a2 * -2.755_732e-7))));
    match quadrant & 3 {
        0 => cos_a,
        1 => -sin_a,
        2 => -cos_a,
        _ => sin_a,
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
        // 16-bit storage: the same values from the CPU mirror, rounded as stored, a chunk at a
        // time (as it always has; the device fill below gives the same bits, but needs no
        // COPY_DST and moves nothing through the host: `fill_spans`).
        return crate::transfer::write_generated(ctx, spans, |k| fill.value(first_index + k));
    }
    fill_spans(ctx, spans, first_index, &fill.spec())
}

/// Fills the spans (float32, bfloat16 or binary16; not q8), in order, with the values of
/// elements `first_index..` on the device: 16-bit values rounded to nearest even, the other
/// half of a word that a span covers in part left as it was. One submit; queued. Every span
/// must lie within one binding (as a segment's views do) and, when 16-bit, end within its
/// buffer once rounded up to a 4-byte word.
pub(crate) fn fill_spans(
    ctx: &GpuContext,
    spans: &[View],
    first_index: u64,
    spec: &FillSpec,
) -> Result<()> {
    if let Some(span) = spans.iter().find(|s| bound_end(s) > s.buffer.size()) {
        return Err(Error::Gpu(format!(
            "a fill of {} {} values from byte {} would bind past its buffer's {} bytes",
            span.len,
            span.format.name(),
            span.offset,
            span.buffer.size()
        )));
    }
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    let max_per_dim = ctx.limits.max_compute_workgroups_per_dimension;
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let mut index = first_index;
    // One small uniform per span: all of them ride in one submit.
    let mut keep_alive = Vec::with_capacity(spans.len());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for span in spans {
            let kernel = match span.format {
                Format::F32 => &FILL_KERNEL,
                Format::Bf16 => &FILL_BF16_KERNEL,
                Format::F16 => &FILL_F16_KERNEL,
                Format::Q8 => unreachable!("q8 states are quantized by block on the host"),
            };
            let (layout, pipeline) =
                ctx.kernels
                    .utility(&ctx.device, kernel, Element::F32, Format::F32);
            let bytes = span.format.bytes();
            // Bind from the aligned offset at or before the span, to the word after it.
            let base = span.offset / align * align;
            let end = bound_end(span);
            let params = FillParams {
                seed: spec.seed,
                first_lo: index as u32,
                first_hi: (index >> 32) as u32,
                count: span.len as u32,
                start: ((span.offset - base) / bytes) as u32,
                offset: spec.offset,
                scale: spec.scale,
                distribution: spec.distribution,
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
                label: Some(kernel.name),
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
                            size: wgpu::BufferSize::new(end - base),
                        }),
                    },
                ],
            });
            // Invocations: one per value, or one per word of two 16-bit values.
            let units = match span.format {
                Format::F32 => span.len,
                _ => {
                    let start = params.start as u64;
                    (start + span.len).div_ceil(2) - start / 2
                }
            };
            let (x, y) = workgroups_for(units, max_per_dim);
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
            index += span.len;
            keep_alive.push(uniform);
        }
    }
    ctx.queue.submit([encoder.finish()]);
    Ok(())
}

/// The end of a fill's binding of `span`: its last byte, rounded up to a whole word.
fn bound_end(span: &View) -> u64 {
    (span.offset + span.len * span.format.bytes()).next_multiple_of(4)
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
    fn uniform_values_are_the_original_hash_chain() {
        // What `RandomFill::value` has always computed (the large tests' data depend on it).
        let fill = RandomFill {
            seed: 1234,
            offset: -0.5,
            scale: 0.25,
        };
        for index in [0u64, 1, 255, 1 << 20, (1 << 32) + 7, u64::MAX] {
            let h =
                pcg_hash((index as u32) ^ pcg_hash(((index >> 32) as u32) ^ pcg_hash(fill.seed)));
            let u = (h >> 8) as f32 * (1.0 / 16_777_216.0) * 2.0 - 1.0;
            assert_eq!(fill.value(index).to_bits(), (-0.5 + 0.25 * u).to_bits());
        }
    }

    #[test]
    fn the_normal_draws_building_blocks_are_accurate() {
        // Every u1 = (k + 1) / 2^24 a logarithm may see, against float64.
        for k in (0..1u32 << 24).step_by(97).chain((1 << 24) - 300..1 << 24) {
            let exact = (((k + 1) as f64) / 16_777_216.0).ln();
            let got = ln_of_unit(k) as f64;
            assert!(
                (got - exact).abs() <= 3e-7 * exact.abs().max(1e-7),
                "ln at {k}: {got} vs {exact}"
            );
        }
        assert_eq!(ln_of_unit((1 << 24) - 1), 0.0);
        for k in (0..1u32 << 24)
            .step_by(89)
            .chain([0, 1 << 21, 1 << 22, 3 << 22])
        {
            let exact = (std::f64::consts::TAU * k as f64 / 16_777_216.0).cos();
            let got = cos_of_turn(k) as f64;
            assert!((got - exact).abs() <= 2e-7, "cos at {k}: {got} vs {exact}");
        }
        assert_eq!(cos_of_turn(0), 1.0);
        assert_eq!(cos_of_turn(1 << 23), -1.0);
    }

    #[test]
    fn only_powers_of_two_scale_exactly() {
        assert!(RandomFill::symmetric(1, 0.25).validate().is_ok());
        assert!(RandomFill::symmetric(1, 0.0).validate().is_ok());
        assert!(RandomFill::symmetric(1, 0.3).validate().is_err());
        assert!(RandomFill::symmetric(1, f32::NAN).validate().is_err());
    }
}
