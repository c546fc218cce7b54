//! L-BFGS on the GPU: its vectors as float32 device buffers (`shaders/vectors.wgsl`), dot
//! products and the other reductions taken on the device (the host reads back one number),
//! and [`GpuLbfgs`], torch's `LBFGS` running [`crate::optim::lbfgs::step`], the same statements
//! the float64 reference runs, on them.
//!
//! The objective is the user's closure, as in torch: it gets the point x and writes the
//! gradient there, either on the device (its buffers are [`DeviceVector::buffer`]) or through
//! the host ([`DeviceVectors::read`], [`DeviceVectors::write`]).

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{BindingKind, shader_struct, workgroups_for};
use crate::optim::lbfgs::{self, Lbfgs, LbfgsState, StepOutcome, VectorSpace};
use crate::transfer::View;

/// The vector operations' WGSL.
pub const SOURCE: &str = include_str!("../shaders/vectors.wgsl");
const BINDINGS: [BindingKind; 4] = [
    BindingKind::Uniform,
    BindingKind::Storage { read_only: false },
    BindingKind::Storage { read_only: false },
    BindingKind::Storage { read_only: false },
];
/// Elements per workgroup of a reduction's first pass (`CHUNK`).
const CHUNK: u64 = 4096;

shader_struct! {
    /// The uniform of `shaders/vectors.wgsl`.
    pub struct VectorParams {
        pub len: u32,
        pub partial_count: u32,
        pub alpha: f32,
        pub _pad: u32,
    }
}

/// One float32 vector on the device, of its space's length.
#[derive(Debug)]
pub struct DeviceVector {
    buffer: wgpu::Buffer,
}

impl DeviceVector {
    /// Its buffer (float32, the space's length; usable as storage and copy source and
    /// destination), for a closure that computes on the device.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

/// Vectors of one length on one device, with the operations L-BFGS makes.
#[derive(Debug)]
pub struct DeviceVectors {
    ctx: GpuContext,
    len: u64,
    partials: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// Which reduction (the shader's `MAX_ABS` and `SUM_ABS` flags).
#[derive(Clone, Copy, PartialEq)]
enum Reduction {
    Dot,
    MaxAbs,
    SumAbs,
}

impl DeviceVectors {
    /// Vectors of `len` elements on `ctx`'s device.
    pub fn new(ctx: &GpuContext, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::Empty("L-BFGS needs at least one parameter".into()));
        }
        let len = len as u64;
        let limit = ctx
            .limits
            .max_storage_buffer_binding_size
            .min((2u64 << 30) - 1)
            .min(ctx.limits.max_buffer_size);
        if len * 4 > limit {
            return Err(Error::InvalidConfig {
                optimizer: "lbfgs",
                reason: format!(
                    "{len} parameters take {} bytes, more than one binding holds on this \
                     device ({limit})",
                    len * 4
                ),
            });
        }
        let partials = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("L-BFGS partials"),
            size: (len.div_ceil(CHUNK) + 1) * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("L-BFGS readback"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            ctx: ctx.clone(),
            len,
            partials,
            readback,
        })
    }

    /// The vectors' length.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the vectors are empty (never: a space has at least one element).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A vector holding `values`.
    pub fn from_values(&mut self, values: &[f32]) -> Result<DeviceVector> {
        let mut v = self.zeros()?;
        self.write(&mut v, values)?;
        Ok(v)
    }

    /// Writes `values` into `v`.
    pub fn write(&mut self, v: &mut DeviceVector, values: &[f32]) -> Result<()> {
        self.check_len(values.len())?;
        crate::transfer::write(&self.ctx, &[View::whole(&v.buffer)], values)
    }

    /// `v`'s values.
    pub fn read(&self, v: &DeviceVector) -> Result<Vec<f32>> {
        crate::transfer::read(&self.ctx, &[View::whole(&v.buffer)])
    }

    fn check_len(&self, got: usize) -> Result<()> {
        if got as u64 == self.len {
            Ok(())
        } else {
            Err(Error::LengthMismatch {
                what: "L-BFGS vector data",
                tensor: 0,
                expected: self.len,
                got: got as u64,
            })
        }
    }

    fn pipeline(&self, entry: &'static str, reduction: Reduction) -> wgpu::ComputePipeline {
        let flags = [
            ("MAX_ABS", reduction == Reduction::MaxAbs),
            ("SUM_ABS", reduction == Reduction::SumAbs),
        ];
        self.ctx.kernels.entry_pipeline(
            &self.ctx.device,
            "vectors",
            &BINDINGS,
            entry,
            &flags,
            || SOURCE.to_string(),
        )
    }

    /// Runs `entry` over the vectors with `alpha` (x, then y bound; y is x when absent).
    fn run(
        &self,
        entries: &[&'static str],
        reduction: Reduction,
        alpha: f64,
        x: &wgpu::Buffer,
        y: Option<&wgpu::Buffer>,
    ) {
        let partial_count = self.len.div_ceil(CHUNK);
        let params = VectorParams {
            len: self.len as u32,
            partial_count: partial_count as u32,
            alpha: alpha as f32,
            _pad: 0,
        };
        let uniform = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("L-BFGS vector op"),
            size: std::mem::size_of::<VectorParams>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.ctx
            .queue
            .write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
        let layout = self
            .ctx
            .kernels
            .entry_layout(&self.ctx.device, "vectors", &BINDINGS);
        let bind_group = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("L-BFGS vector op"),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniform.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: x.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: y.unwrap_or(x).as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: self.partials.as_entire_binding(),
                    },
                ],
            });
        let max_dim = self.ctx.limits.max_compute_workgroups_per_dimension;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, &bind_group, &[]);
            for &entry in entries {
                pass.set_pipeline(&self.pipeline(entry, reduction));
                let (gx, gy) = match entry {
                    "reduce_chunks" => workgroups_for(
                        partial_count * crate::kernels::WORKGROUP_SIZE as u64,
                        max_dim,
                    ),
                    "reduce_partials" => (1, 1),
                    _ => workgroups_for(self.len, max_dim),
                };
                pass.dispatch_workgroups(gx, gy, 1);
            }
        }
        if !matches!(entries, ["axpy"] | ["scale"]) {
            encoder.copy_buffer_to_buffer(&self.partials, partial_count * 4, &self.readback, 0, 4);
        }
        self.ctx.queue.submit([encoder.finish()]);
    }

    /// A reduction's value, read back.
    fn reduce(
        &self,
        reduction: Reduction,
        x: &DeviceVector,
        y: Option<&DeviceVector>,
    ) -> Result<f64> {
        self.run(
            &["reduce_chunks", "reduce_partials"],
            reduction,
            0.0,
            &x.buffer,
            y.map(|y| &y.buffer),
        );
        let slice = self.readback.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        self.ctx.wait()?;
        let value = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("reading a reduction back: {e}")))?;
            bytemuck::pod_read_unaligned::<f32>(&view[..4])
        };
        self.readback.unmap();
        Ok(value as f64)
    }
}

impl VectorSpace for DeviceVectors {
    type Vector = DeviceVector;

    fn zeros(&mut self) -> Result<DeviceVector> {
        let buffer = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("L-BFGS vector"),
            size: self.len * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // New buffers are zero in wgpu; cleared anyway so that the intent is in the code.
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&buffer, 0, None);
        self.ctx.queue.submit([encoder.finish()]);
        Ok(DeviceVector { buffer })
    }

    fn copy(&mut self, dst: &mut DeviceVector, src: &DeviceVector) -> Result<()> {
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, self.len * 4);
        self.ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    fn dot(&mut self, a: &DeviceVector, b: &DeviceVector) -> Result<f64> {
        self.reduce(Reduction::Dot, a, Some(b))
    }

    fn axpy(&mut self, alpha: f64, x: &DeviceVector, y: &mut DeviceVector) -> Result<()> {
        self.run(&["axpy"], Reduction::Dot, alpha, &x.buffer, Some(&y.buffer));
        Ok(())
    }

    fn scale(&mut self, alpha: f64, x: &mut DeviceVector) -> Result<()> {
        self.run(&["scale"], Reduction::Dot, alpha, &x.buffer, None);
        Ok(())
    }

    fn max_abs(&mut self, x: &DeviceVector) -> Result<f64> {
        self.reduce(Reduction::MaxAbs, x, None)
    }

    fn sum_abs(&mut self, x: &DeviceVector) -> Result<f64> {
        self.reduce(Reduction::SumAbs, x, None)
    }
}

/// torch's `LBFGS` on one flat float32 parameter vector on the GPU.
///
/// ```no_run
/// use wgpu_optim::{ContextOptions, GpuContext, optim::lbfgs::Lbfgs, vectors::GpuLbfgs};
///
/// let ctx = GpuContext::new(&ContextOptions::default())?;
/// let mut opt = GpuLbfgs::new(&ctx, Lbfgs::default(), &[3.0, -1.0])?;
/// // f(x) = |x|², gradient 2x, through the host.
/// let loss = opt.step(&mut |space, x, grad| {
///     let x = space.read(x)?;
///     space.write(grad, &x.iter().map(|v| 2.0 * v).collect::<Vec<_>>())?;
///     Ok(x.iter().map(|v| (v * v) as f64).sum())
/// })?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Debug)]
pub struct GpuLbfgs {
    config: Lbfgs,
    space: DeviceVectors,
    state: LbfgsState<DeviceVector>,
    params: DeviceVector,
}

/// The objective as L-BFGS calls it on the device: given the vectors, the point x and the
/// gradient to write, the loss at x.
pub type DeviceClosure<'c> =
    dyn FnMut(&mut DeviceVectors, &DeviceVector, &mut DeviceVector) -> Result<f64> + 'c;

impl GpuLbfgs {
    /// L-BFGS from the starting point `params`; `config` checked first.
    pub fn new(ctx: &GpuContext, config: Lbfgs, params: &[f32]) -> Result<Self> {
        config.validate()?;
        let mut space = DeviceVectors::new(ctx, params.len())?;
        let params = space.from_values(params)?;
        Ok(Self {
            config,
            space,
            state: LbfgsState::new(),
            params,
        })
    }

    /// One `step(closure)`: what torch's returns (the loss at the point before the call) and
    /// how many evaluations it made.
    pub fn step(&mut self, closure: &mut DeviceClosure<'_>) -> Result<StepOutcome> {
        lbfgs::step(
            &self.config,
            &mut self.state,
            &mut self.space,
            &mut self.params,
            closure,
        )
    }

    /// The current parameters.
    pub fn read_params(&self) -> Result<Vec<f32>> {
        self.space.read(&self.params)
    }

    /// The parameters' buffer.
    pub fn params(&self) -> &DeviceVector {
        &self.params
    }

    /// The state (history length, iterations, evaluations so far).
    pub fn state(&self) -> &LbfgsState<DeviceVector> {
        &self.state
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Lbfgs {
        &self.config
    }
}
