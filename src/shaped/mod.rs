//! Optimizers whose step needs each tensor's shape: [`Adafactor`] (row and column means of the
//! squared gradient of every matrix) and [`Muon`] (a chain of matrix products per matrix).
//! They are not elementwise, so they run outside the fused elementwise engine, on a group of
//! shaped tensors held in a few buffers:
//!
//! - every tensor's elements end to end in one parameter, one gradient and one state buffer;
//! - a tensor table (`TensorEntry`) saying where each tensor and its states lie;
//! - per-tensor sums in O(1) dispatches: each pass over elements runs one workgroup per chunk of
//!   4,096 elements of one tensor, each workgroup leaves one partial sum, and one invocation per
//!   tensor adds its partials (`finalize_x`, `finalize_y` in `shaders/shaped.wgsl`);
//! - Muon's matrix products batched over the group's matrices ([`matmul`]).
//!
//! [`ShapedReference`] is the float64 reference of the same steps.

pub mod matmul;

use serde::{Deserialize, Serialize};

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{BindingKind, StructLayout, shader_struct, workgroups_for};
use crate::optim::adafactor::{AdafactorState, Factoring};
use crate::optim::{Adafactor, Hyperparameters, Muon};
use crate::transfer::View;
use matmul::{MatmulKernel, Product, ProductBatch};

/// Elements one workgroup of a pass over elements handles (`CHUNK` in `shaped.wgsl`).
const CHUNK: u64 = 4096;
/// Rows (or columns, or tensors) one workgroup of the other passes handles.
const THREADS: u64 = 256;

/// An optimizer over shaped tensors, with its hyperparameters (serialized as
/// `{"optimizer": name, "hyper": {...}}`, as [`OptimizerConfig`](crate::OptimizerConfig)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", content = "hyper", deny_unknown_fields)]
pub enum ShapedConfig {
    /// `torch.optim.Adafactor`.
    #[serde(rename = "adafactor")]
    Adafactor(Adafactor),
    /// `torch.optim.Muon` (2-D tensors only).
    #[serde(rename = "muon")]
    Muon(Muon),
}

/// The names of the optimizers over shaped tensors.
pub const SHAPED_OPTIMIZER_NAMES: [&str; 2] = ["adafactor", "muon"];

impl From<Adafactor> for ShapedConfig {
    fn from(c: Adafactor) -> Self {
        Self::Adafactor(c)
    }
}

impl From<Muon> for ShapedConfig {
    fn from(c: Muon) -> Self {
        Self::Muon(c)
    }
}

impl ShapedConfig {
    /// The optimizer called `name` with the hyperparameters of a JSON object (PyTorch's names,
    /// tuples split as the fixtures do); missing keys take the defaults.
    pub fn from_hyper(name: &str, hyper: &serde_json::Value) -> Result<Self> {
        let value = serde_json::json!({"optimizer": name, "hyper": hyper});
        let config: Self = serde_json::from_value(value).map_err(|e| Error::InvalidConfig {
            optimizer: "optimizer",
            reason: format!("{name}: {e}"),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The hyperparameters, as every optimizer has them.
    pub fn hyper(&self) -> &dyn Hyperparameters {
        match self {
            Self::Adafactor(c) => c,
            Self::Muon(c) => c,
        }
    }

    /// The name (`"muon"`).
    pub fn name(&self) -> &'static str {
        self.hyper().name()
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        self.hyper().lr()
    }

    /// Replaces the learning rate.
    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Self::Adafactor(c) => c.set_lr(lr),
            Self::Muon(c) => c.set_lr(lr),
        }
    }

    /// torch's checks of the hyperparameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Adafactor(c) => c.validate(),
            Self::Muon(c) => c.validate(),
        }
    }

    /// Whether the optimizer takes a tensor of this shape (Muon: 2-D only; none: empty).
    pub fn check_shape(&self, shape: &[usize]) -> Result<()> {
        if shape.contains(&0) {
            return Err(Error::Empty(format!(
                "{}: a tensor of shape {shape:?} has no elements",
                self.name()
            )));
        }
        if let Self::Muon(_) = self {
            Muon::check_shape(shape)?;
        }
        Ok(())
    }

    /// The states it keeps for a tensor, by torch's names.
    pub fn state_names(&self, shape: &[usize]) -> Vec<&'static str> {
        match self {
            Self::Adafactor(_) if Factoring::of(shape).factored => vec!["row_var", "col_var"],
            Self::Adafactor(_) => vec!["variance"],
            Self::Muon(_) => vec!["momentum_buffer"],
        }
    }

    /// Bytes one step moves per parameter at least, for a tensor of `shape` in float32: read
    /// and write the parameter, read the gradient (Adafactor reads it four times: rows,
    /// columns, the update's norm, the update; and the parameter twice), read and write the
    /// states, plus Muon's Newton–Schulz products (counted as their operands once each).
    pub fn bytes_per_element(&self, shape: &[usize]) -> f64 {
        let numel = shape.iter().product::<usize>() as f64;
        match self {
            Self::Adafactor(_) => {
                let f = Factoring::of(shape);
                let (rows, cols) = f.state_lens();
                let states = 8.0 * (rows + cols) as f64 / numel;
                if f.factored {
                    // Parameters read twice and written once, gradients read four times.
                    4.0 * (3.0 + 4.0) + states
                } else {
                    // Parameters 3, gradients read twice, the second moment read and written
                    // (update_sumsq) and read again (update).
                    4.0 * (3.0 + 2.0) + 4.0 * 3.0
                }
            }
            Self::Muon(m) => {
                let (rows, cols) = (shape[0] as f64, shape[1] as f64);
                let (p, q) = (rows.min(cols), rows.max(cols));
                // Per iteration: A = XXᵀ reads X, writes A; T reads A, writes T; X' reads T
                // and X twice, writes X'.
                let per_iteration = (p * q * 4.0 + p * p * 4.0) / (p * q) * 4.0;
                4.0 * (3.0 + 2.0 + 4.0) + m.ns_steps as f64 * per_iteration
            }
        }
    }
}

shader_struct! {
    /// One tensor of a shaped group, as `shaped.wgsl`'s `TensorEntry`.
    pub struct TensorEntry {
        /// First element in the parameters, the gradients and the elementwise states.
        pub offset: u32,
        /// Elements.
        pub numel: u32,
        /// Matrices (product of the leading dimensions); 1 for a vector.
        pub batch: u32,
        /// Rows of each matrix; 1 for a vector.
        pub rows: u32,
        /// Columns of each matrix; the length of a vector.
        pub cols: u32,
        /// Adafactor: first row factor in the state buffer.
        pub row_state: u32,
        /// Adafactor: first column factor (a vector's second moment).
        pub col_state: u32,
        /// Adafactor: first per-matrix row mean.
        pub row_mean_state: u32,
        /// First workgroup of a pass over elements (and first partial sum).
        pub first_chunk: u32,
        /// First workgroup of the row pass.
        pub first_row_group: u32,
        /// First workgroup of the column pass.
        pub first_column_group: u32,
        /// Muon: first element of its matrix X in the scratch buffer.
        pub scratch: u32,
        /// Muon: 1 when X is the transpose (more rows than columns).
        pub transposed: u32,
        /// 1 for a tensor of two dimensions or more.
        pub factored: u32,
        /// Padding to the WGSL struct's size.
        pub _pad0: u32,
        /// Padding to the WGSL struct's size.
        pub _pad1: u32,
    }
}

shader_struct! {
    /// The uniform of `shaders/adafactor.wgsl`.
    pub struct AdafactorScalars {
        pub tensor_count: u32,
        pub chunks: u32,
        pub row_work: u32,
        pub row_groups: u32,
        pub column_work: u32,
        pub column_groups: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        /// t^beta2_decay: the new squares' weight.
        pub weight: f32,
        /// min(lr, 1/√t).
        pub rho: f32,
        /// 1 − lr·weight_decay.
        pub decay: f32,
        pub eps1: f32,
        pub eps1_squared: f32,
        pub eps2: f32,
        pub d: f32,
        pub _pad2: u32,
    }
}

shader_struct! {
    /// The uniform of `shaders/muon.wgsl`.
    pub struct MuonScalars {
        pub tensor_count: u32,
        pub chunks: u32,
        pub row_work: u32,
        pub row_groups: u32,
        pub column_work: u32,
        pub column_groups: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub momentum: f32,
        pub one_minus_momentum: f32,
        /// 1 − lr·weight_decay.
        pub decay: f32,
        pub eps: f32,
        /// 1 when the iteration's result is in the second copy of X (odd `ns_steps`).
        pub result_copy: u32,
        pub _pad2: u32,
        pub _pad3: u32,
        pub _pad4: u32,
    }
}

/// The shaped kernels' bindings (`shaped.wgsl`).
const BINDINGS: [BindingKind; 9] = [
    BindingKind::Uniform,
    BindingKind::Storage { read_only: false },
    BindingKind::Storage { read_only: true },
    BindingKind::Storage { read_only: false },
    BindingKind::Storage { read_only: false },
    BindingKind::Storage { read_only: true },
    BindingKind::Storage { read_only: true },
    BindingKind::Storage { read_only: false },
    BindingKind::Storage { read_only: false },
];

/// A kernel over shaped tensors: its source (after `shaped.wgsl`) and uniform.
pub struct ShapedKernel {
    /// Its name, which keys the pipeline cache.
    pub name: &'static str,
    /// Its entry points' WGSL.
    pub source: &'static str,
    /// Its uniform struct.
    pub scalars: &'static StructLayout,
}

/// Adafactor's kernel.
pub static ADAFACTOR_KERNEL: ShapedKernel = ShapedKernel {
    name: "adafactor",
    source: include_str!("../../shaders/adafactor.wgsl"),
    scalars: &AdafactorScalars::LAYOUT,
};

/// Muon's kernel.
pub static MUON_KERNEL: ShapedKernel = ShapedKernel {
    name: "muon",
    source: include_str!("../../shaders/muon.wgsl"),
    scalars: &MuonScalars::LAYOUT,
};

impl ShapedKernel {
    /// The complete WGSL: the uniform struct, the shared piece, the kernel.
    pub fn assemble(&self) -> String {
        format!(
            "{}alias Scalars = {};\n{}\n{}",
            self.scalars.wgsl(),
            self.scalars.name,
            include_str!("../../shaders/shaped.wgsl"),
            self.source
        )
    }
}

/// Where each tensor lies, and how much work each kind of pass has.
#[derive(Clone, Debug)]
struct Layout {
    entries: Vec<TensorEntry>,
    /// Workgroup → tensor: element chunks, then row groups, then column groups.
    work: Vec<u32>,
    chunks: u32,
    row_groups: u32,
    column_groups: u32,
    elements: u64,
    state_elements: u64,
    scratch_elements: u64,
}

impl Layout {
    fn new(config: &ShapedConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        let mut entries = Vec::with_capacity(shapes.len());
        let (mut offset, mut state, mut scratch) = (0u64, 0u64, 0u64);
        let (mut chunks, mut row_groups, mut column_groups) = (0u64, 0u64, 0u64);
        let (mut chunk_work, mut row_work, mut column_work) = (Vec::new(), Vec::new(), Vec::new());
        for (t, shape) in shapes.iter().enumerate() {
            config.check_shape(shape)?;
            let numel = shape.iter().product::<usize>() as u64;
            let f = Factoring::of(shape);
            let mut entry = TensorEntry {
                offset: offset as u32,
                numel: numel as u32,
                batch: f.batch as u32,
                rows: f.rows as u32,
                cols: f.cols as u32,
                factored: f.factored as u32,
                first_chunk: chunks as u32,
                first_row_group: row_groups as u32,
                first_column_group: column_groups as u32,
                ..Default::default()
            };
            let tensor_chunks = numel.div_ceil(CHUNK);
            chunk_work.extend(std::iter::repeat_n(t as u32, tensor_chunks as usize));
            chunks += tensor_chunks;
            match config {
                ShapedConfig::Adafactor(_) => {
                    let (rows, cols) = f.state_lens();
                    entry.row_state = state as u32;
                    entry.col_state = (state + rows as u64) as u32;
                    entry.row_mean_state = (state + (rows + cols) as u64) as u32;
                    state += (rows + cols) as u64 + if f.factored { f.batch as u64 } else { 0 };
                    if f.factored {
                        let groups = (rows as u64).div_ceil(THREADS);
                        row_work.extend(std::iter::repeat_n(t as u32, groups as usize));
                        row_groups += groups;
                        let groups = (cols as u64).div_ceil(THREADS);
                        column_work.extend(std::iter::repeat_n(t as u32, groups as usize));
                        column_groups += groups;
                    }
                }
                ShapedConfig::Muon(_) => {
                    let (m, n) = (f.rows as u64, f.cols as u64);
                    let p = m.min(n);
                    entry.transposed = (m > n) as u32;
                    entry.scratch = scratch as u32;
                    scratch += 2 * numel + 2 * p * p;
                    state += numel;
                }
            }
            entries.push(entry);
            offset += numel;
        }
        let limit = u32::MAX as u64;
        if offset > limit || state > limit || scratch > limit {
            return Err(Error::InvalidConfig {
                optimizer: config.name(),
                reason: format!(
                    "a group of shaped tensors holds at most {limit} elements in each buffer \
                     ({offset} parameters, {state} state and {scratch} scratch values asked)"
                ),
            });
        }
        let column_start = (chunks + row_groups) as u32;
        let mut work = chunk_work;
        work.extend(row_work);
        work.extend(column_work);
        debug_assert_eq!(work.len() as u32, column_start + column_groups as u32);
        Ok(Self {
            entries,
            work,
            chunks: chunks as u32,
            row_groups: row_groups as u32,
            column_groups: column_groups as u32,
            elements: offset,
            state_elements: state,
            scratch_elements: scratch,
        })
    }

    /// On an adapter that leaves loops after `limit` iterations (llvmpipe), the loops whose
    /// length is a tensor's shape: finalize (a tensor's chunks), Adafactor's row pass (a
    /// row's columns), column pass (a column's rows) and row means (every row of a tensor,
    /// and its matrices). Muon's products check their own.
    fn check_loops(&self, config: &ShapedConfig, limit: u64) -> Result<()> {
        for (t, e) in self.entries.iter().enumerate() {
            let mut loops = vec![(
                "its chunks of 4,096 elements",
                (e.numel as u64).div_ceil(CHUNK),
            )];
            if let (ShapedConfig::Adafactor(_), 1) = (config, e.factored) {
                loops.extend([
                    ("a row's columns", e.cols as u64),
                    ("a column's rows", e.rows as u64),
                    (
                        "its rows and matrices",
                        e.batch as u64 * (e.rows as u64 + 1),
                    ),
                ]);
            }
            if let Some((what, n)) = loops.into_iter().find(|&(_, n)| n > limit) {
                return Err(Error::InvalidConfig {
                    optimizer: config.name(),
                    reason: format!(
                        "tensor {t} ({} × {} × {}) needs a loop over {what} of {n} \
                         iterations, and this adapter ends every loop after {limit}",
                        e.batch, e.rows, e.cols
                    ),
                });
            }
        }
        Ok(())
    }

    fn row_work(&self) -> u32 {
        self.chunks
    }

    fn column_work(&self) -> u32 {
        self.chunks + self.row_groups
    }
}

/// A group of shaped tensors stepped on the GPU by Adafactor or Muon.
///
/// ```no_run
/// use wgpu_optim::{ContextOptions, GpuContext, optim::Muon, shaped::ShapedOptimizer};
///
/// let ctx = GpuContext::new(&ContextOptions::default())?;
/// let weights = vec![0.01f32; 64 * 32];
/// let mut opt = ShapedOptimizer::new(&ctx, Muon::default(), &[(&[64, 32], &weights)])?;
/// opt.step_with_grads(&[&vec![0.1; 64 * 32]])?;
/// let updated = opt.read_param(0)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Debug)]
pub struct ShapedOptimizer {
    ctx: GpuContext,
    config: ShapedConfig,
    shapes: Vec<Vec<usize>>,
    layout: Layout,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    state: wgpu::Buffer,
    scratch: wgpu::Buffer,
    uniform: wgpu::Buffer,
    sums: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    /// The kernel's entry points, by name.
    pipelines: Vec<(&'static str, wgpu::ComputePipeline)>,
    /// Muon: the three products of an iteration, from each copy of X (index: parity).
    products: Vec<[ProductBatch; 3]>,
    // Kept alive with the bind group.
    _tables: [wgpu::Buffer; 2],
    step: u64,
}

fn storage_buffer(
    ctx: &GpuContext,
    label: &str,
    elements: u64,
    element_bytes: u64,
) -> Result<wgpu::Buffer> {
    let size = (elements * element_bytes).max(16);
    let limit = ctx
        .limits
        .max_storage_buffer_binding_size
        .min((2u64 << 30) - 1)
        .min(ctx.limits.max_buffer_size);
    if size > limit {
        return Err(Error::InvalidConfig {
            optimizer: "shaped group",
            reason: format!(
                "its {label} take {size} bytes, more than one binding holds on this device \
                 ({limit}): split the group"
            ),
        });
    }
    Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    }))
}

impl ShapedOptimizer {
    /// A group of `tensors`, each its shape and starting values (row-major), stepped by
    /// `config`. Every check (hyperparameters, shapes, lengths, sizes) comes before any GPU
    /// work.
    pub fn new(
        ctx: &GpuContext,
        config: impl Into<ShapedConfig>,
        tensors: &[(&[usize], &[f32])],
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        if tensors.is_empty() {
            return Err(Error::Empty(format!(
                "{}: a group needs a tensor",
                config.name()
            )));
        }
        let shapes: Vec<Vec<usize>> = tensors.iter().map(|(s, _)| s.to_vec()).collect();
        let layout = Layout::new(&config, &shapes)?;
        for (t, (shape, values)) in tensors.iter().enumerate() {
            let numel = shape.iter().product::<usize>();
            if values.len() != numel {
                return Err(Error::LengthMismatch {
                    what: "parameter data",
                    tensor: t,
                    expected: numel as u64,
                    got: values.len() as u64,
                });
            }
        }
        if let Some(limit) = ctx.loop_limit() {
            layout.check_loops(&config, limit)?;
        }
        let max_dim = ctx.limits.max_compute_workgroups_per_dimension;
        if layout.chunks as u64 > max_dim as u64 * max_dim as u64 {
            return Err(Error::InvalidConfig {
                optimizer: config.name(),
                reason: format!("{} elements are too many for one dispatch", layout.elements),
            });
        }
        let params = storage_buffer(ctx, "parameters", layout.elements, 4)?;
        let grads = storage_buffer(ctx, "gradients", layout.elements, 4)?;
        let state = storage_buffer(ctx, "states", layout.state_elements, 4)?;
        let scratch = storage_buffer(ctx, "Newton–Schulz matrices", layout.scratch_elements, 4)?;
        let table = storage_buffer(ctx, "tensor table", layout.entries.len() as u64, 64)?;
        let work = storage_buffer(ctx, "work table", layout.work.len() as u64, 4)?;
        let partials = storage_buffer(ctx, "partial sums", layout.chunks as u64, 4)?;
        let sums = storage_buffer(ctx, "tensor sums", layout.entries.len() as u64, 16)?;
        let uniform = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("shaped scalars"),
            size: 64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue
            .write_buffer(&table, 0, bytemuck::cast_slice(&layout.entries));
        ctx.queue
            .write_buffer(&work, 0, bytemuck::cast_slice(&layout.work));
        let values: Vec<f32> = tensors
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        crate::transfer::write(
            ctx,
            &[View::whole(&params).part(0, layout.elements)],
            &values,
        )?;
        // Every state starts at zero (wgpu zeroes new buffers; written anyway, explicitly).
        crate::transfer::fill(
            ctx,
            &[View::whole(&state).part(0, layout.state_elements)],
            0.0,
        )?;
        let (kernel, flags, entry_points): (_, Vec<(&'static str, bool)>, &[&'static str]) =
            match &config {
                ShapedConfig::Adafactor(c) => (
                    &ADAFACTOR_KERNEL,
                    vec![("MAXIMIZE", c.maximize)],
                    &[
                        "param_sumsq",
                        "finalize_x",
                        "finalize_y",
                        "rows",
                        "columns",
                        "row_means",
                        "update_sumsq",
                        "update",
                        "grad_sumsq",
                    ],
                ),
                ShapedConfig::Muon(c) => (
                    &MUON_KERNEL,
                    vec![("NESTEROV", c.nesterov)],
                    &[
                        "momentum",
                        "finalize_x",
                        "normalize",
                        "update",
                        "grad_sumsq",
                    ],
                ),
            };
        let pipelines = entry_points
            .iter()
            .map(|&entry| {
                let pipeline = ctx.kernels.entry_pipeline(
                    &ctx.device,
                    kernel.name,
                    &BINDINGS,
                    entry,
                    &flags,
                    || kernel.assemble(),
                );
                (entry, pipeline)
            })
            .collect();
        let bind_layout = ctx
            .kernels
            .entry_layout(&ctx.device, kernel.name, &BINDINGS);
        let buffers = [
            &uniform, &params, &grads, &state, &scratch, &table, &work, &partials, &sums,
        ];
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(binding, buffer)| wgpu::BindGroupEntry {
                binding: binding as u32,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name),
            layout: &bind_layout,
            entries: &entries,
        });
        let products = match &config {
            ShapedConfig::Muon(c) if c.ns_steps > 0 => (0..2)
                .map(|parity| newton_schulz_products(ctx, c, &layout, &scratch, parity))
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        Ok(Self {
            ctx: ctx.clone(),
            config,
            shapes,
            layout,
            params,
            grads,
            state,
            scratch,
            uniform,
            sums,
            bind_group,
            pipelines,
            products,
            _tables: [table, work],
            step: 0,
        })
    }

    /// The optimizer and its hyperparameters.
    pub fn config(&self) -> &ShapedConfig {
        &self.config
    }

    /// Tensors in the group.
    pub fn num_tensors(&self) -> usize {
        self.shapes.len()
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Sets the learning rate of the following steps (checked as the constructor checks it).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let mut config = self.config.clone();
        config.set_lr(lr);
        config.validate()?;
        self.config = config;
        Ok(())
    }

    fn tensor(&self, tensor: usize) -> Result<&TensorEntry> {
        self.layout.entries.get(tensor).ok_or(Error::UnknownHandle {
            what: "tensor",
            index: tensor,
            count: self.shapes.len(),
        })
    }

    /// Writes tensor `tensor`'s gradient for the next step.
    pub fn write_grad(&self, tensor: usize, values: &[f32]) -> Result<()> {
        let entry = self.tensor(tensor)?;
        if values.len() != entry.numel as usize {
            return Err(Error::LengthMismatch {
                what: "gradient",
                tensor,
                expected: entry.numel as u64,
                got: values.len() as u64,
            });
        }
        let view = View::whole(&self.grads).part(entry.offset as u64, entry.numel as u64);
        crate::transfer::write(&self.ctx, &[view], values)
    }

    /// Writes every tensor's gradient (all checked first), then steps.
    pub fn step_with_grads(&mut self, grads: &[&[f32]]) -> Result<()> {
        if grads.len() != self.shapes.len() {
            return Err(Error::WrongCount {
                call: "step_with_grads",
                item: "gradient",
                expected: self.shapes.len(),
                got: grads.len(),
            });
        }
        for (t, g) in grads.iter().enumerate() {
            let numel = self.layout.entries[t].numel as usize;
            if g.len() != numel {
                return Err(Error::LengthMismatch {
                    what: "gradient",
                    tensor: t,
                    expected: numel as u64,
                    got: g.len() as u64,
                });
            }
        }
        for (t, g) in grads.iter().enumerate() {
            self.write_grad(t, g)?;
        }
        self.step()
    }

    /// Tensor `tensor`'s parameters.
    pub fn read_param(&self, tensor: usize) -> Result<Vec<f32>> {
        let entry = self.tensor(tensor)?;
        let view = View::whole(&self.params).part(entry.offset as u64, entry.numel as u64);
        crate::transfer::read(&self.ctx, &[view])
    }

    /// One of tensor `tensor`'s states by torch's name: Adafactor's `row_var`, `col_var`
    /// (a matrix) or `variance` (a vector), Muon's `momentum_buffer`.
    pub fn read_state(&self, tensor: usize, name: &str) -> Result<Vec<f32>> {
        let entry = *self.tensor(tensor)?;
        let names = self.config.state_names(&self.shapes[tensor]);
        let (start, len) = match (name, &self.config) {
            ("momentum_buffer", ShapedConfig::Muon(_)) => (entry.offset, entry.numel),
            ("row_var", ShapedConfig::Adafactor(_)) if entry.factored == 1 => {
                (entry.row_state, entry.batch * entry.rows)
            }
            ("col_var", ShapedConfig::Adafactor(_)) if entry.factored == 1 => {
                (entry.col_state, entry.batch * entry.cols)
            }
            ("variance", ShapedConfig::Adafactor(_)) if entry.factored == 0 => {
                (entry.col_state, entry.numel)
            }
            _ => {
                return Err(Error::UnknownState {
                    optimizer: self.config.name(),
                    name: name.to_string(),
                    available: names.join(", "),
                });
            }
        };
        let view = View::whole(&self.state).part(start as u64, len as u64);
        crate::transfer::read(&self.ctx, &[view])
    }

    fn pipeline(&self, entry: &str) -> &wgpu::ComputePipeline {
        &self
            .pipelines
            .iter()
            .find(|(name, _)| *name == entry)
            .expect("every entry point is compiled")
            .1
    }

    fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, entry: &str, workgroups: u32) {
        if workgroups == 0 {
            return;
        }
        let (x, y) = workgroups_for(
            workgroups as u64 * crate::kernels::WORKGROUP_SIZE as u64,
            self.ctx.limits.max_compute_workgroups_per_dimension,
        );
        pass.set_pipeline(self.pipeline(entry));
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// One step with the gradients written since the last one.
    pub fn step(&mut self) -> Result<()> {
        let t = self.step + 1;
        let lr = self.config.lr();
        let l = &self.layout;
        let tensors = l.entries.len() as u32;
        let tensor_groups = (tensors as u64).div_ceil(THREADS) as u32;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        match &self.config {
            ShapedConfig::Adafactor(c) => {
                let (weight, rho) = c.step_scalars(t, lr);
                let scalars = AdafactorScalars {
                    tensor_count: tensors,
                    chunks: l.chunks,
                    row_work: l.row_work(),
                    row_groups: l.row_groups,
                    column_work: l.column_work(),
                    column_groups: l.column_groups,
                    weight: weight as f32,
                    rho: rho as f32,
                    decay: (1.0 - lr * c.weight_decay) as f32,
                    eps1: c.eps1 as f32,
                    eps1_squared: (c.eps1 * c.eps1) as f32,
                    eps2: c.eps2 as f32,
                    d: c.d as f32,
                    ..Default::default()
                };
                self.ctx
                    .queue
                    .write_buffer(&self.uniform, 0, bytemuck::bytes_of(&scalars));
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.dispatch(&mut pass, "param_sumsq", l.chunks);
                self.dispatch(&mut pass, "finalize_x", tensor_groups);
                self.dispatch(&mut pass, "rows", l.row_groups);
                self.dispatch(&mut pass, "columns", l.column_groups);
                self.dispatch(&mut pass, "row_means", tensor_groups);
                self.dispatch(&mut pass, "update_sumsq", l.chunks);
                self.dispatch(&mut pass, "finalize_y", tensor_groups);
                self.dispatch(&mut pass, "update", l.chunks);
            }
            ShapedConfig::Muon(c) => {
                let scalars = MuonScalars {
                    tensor_count: tensors,
                    chunks: l.chunks,
                    row_work: l.row_work(),
                    row_groups: l.row_groups,
                    column_work: l.column_work(),
                    column_groups: l.column_groups,
                    momentum: c.momentum as f32,
                    one_minus_momentum: (1.0 - c.momentum) as f32,
                    decay: (1.0 - lr * c.weight_decay) as f32,
                    eps: c.eps as f32,
                    result_copy: c.ns_steps % 2,
                    ..Default::default()
                };
                self.ctx
                    .queue
                    .write_buffer(&self.uniform, 0, bytemuck::bytes_of(&scalars));
                let rates: Vec<[f32; 4]> = self
                    .shapes
                    .iter()
                    .map(|s| [0.0, 0.0, c.adjusted_lr(lr, s[0], s[1]) as f32, 0.0])
                    .collect();
                self.ctx
                    .queue
                    .write_buffer(&self.sums, 0, bytemuck::cast_slice(&rates));
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.dispatch(&mut pass, "momentum", l.chunks);
                self.dispatch(&mut pass, "finalize_x", tensor_groups);
                self.dispatch(&mut pass, "normalize", l.chunks);
                for iteration in 0..c.ns_steps as usize {
                    for batch in &self.products[iteration % 2] {
                        batch.record(&mut pass);
                    }
                }
                self.dispatch(&mut pass, "update", l.chunks);
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.step = t;
        Ok(())
    }

    /// Each tensor's gradient norm ‖g‖₂ (of the gradients written for the next step), for
    /// logging: summed on the device in two dispatches however many tensors, one number per
    /// tensor read back.
    pub fn grad_norms(&self) -> Result<Vec<f64>> {
        let l = &self.layout;
        let header = [
            l.entries.len() as u32,
            l.chunks,
            l.row_work(),
            l.row_groups,
            l.column_work(),
            l.column_groups,
        ];
        // The uniform's header only: the step's own values are rewritten by every step.
        self.ctx
            .queue
            .write_buffer(&self.uniform, 0, bytemuck::cast_slice(&header));
        let tensor_groups = (l.entries.len() as u64).div_ceil(THREADS) as u32;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.dispatch(&mut pass, "grad_sumsq", l.chunks);
            self.dispatch(&mut pass, "finalize_x", tensor_groups);
        }
        self.ctx.queue.submit([encoder.finish()]);
        let sums = crate::transfer::read(
            &self.ctx,
            &[View::whole(&self.sums).part(0, 4 * l.entries.len() as u64)],
        )?;
        Ok(sums.chunks(4).map(|s| (s[0] as f64).sqrt()).collect())
    }

    /// Waits for the submitted steps.
    pub fn wait(&self) -> Result<()> {
        self.ctx.wait()
    }

    /// Bytes one step moves at least, over the whole group (see
    /// [`ShapedConfig::bytes_per_element`]).
    pub fn bytes_per_step(&self) -> f64 {
        self.shapes
            .iter()
            .map(|s| self.config.bytes_per_element(s) * s.iter().product::<usize>() as f64)
            .sum()
    }

    /// The scratch buffer of Muon's matrices (for tests of its layout).
    #[doc(hidden)]
    pub fn scratch(&self) -> &wgpu::Buffer {
        &self.scratch
    }
}

/// The three products of one Newton–Schulz iteration for every matrix of the group, reading X
/// from copy `parity` and writing the other: A = XXᵀ; T = c·A·A + b·A; X' = T·X + a·X.
fn newton_schulz_products(
    ctx: &GpuContext,
    muon: &Muon,
    layout: &Layout,
    scratch: &wgpu::Buffer,
    parity: u32,
) -> Result<[ProductBatch; 3]> {
    let mut gram = Vec::new();
    let mut poly = Vec::new();
    let mut apply = Vec::new();
    for entry in &layout.entries {
        let (m, n) = (entry.rows, entry.cols);
        let (p, q) = (m.min(n), m.max(n));
        let x = [entry.scratch, entry.scratch + entry.numel];
        let (from, to) = (x[parity as usize], x[1 - parity as usize]);
        let a = entry.scratch + 2 * entry.numel;
        let t = a + p * p;
        gram.push(Product {
            m: p,
            n: p,
            k: q,
            a: from,
            b: from,
            out: a,
            b_transposed: 1,
            alpha: 1.0,
            ..Default::default()
        });
        poly.push(Product {
            m: p,
            n: p,
            k: p,
            a,
            b: a,
            d: a,
            out: t,
            alpha: muon.ns_c as f32,
            beta: muon.ns_b as f32,
            ..Default::default()
        });
        apply.push(Product {
            m: p,
            n: q,
            k: p,
            a: t,
            b: from,
            d: from,
            out: to,
            alpha: 1.0,
            beta: muon.ns_a as f32,
            ..Default::default()
        });
    }
    Ok([
        ProductBatch::new(ctx, scratch, &gram, MatmulKernel::Tiled)?,
        ProductBatch::new(ctx, scratch, &poly, MatmulKernel::Tiled)?,
        ProductBatch::new(ctx, scratch, &apply, MatmulKernel::Tiled)?,
    ])
}

/// The same group stepped in float64 on the CPU.
#[derive(Clone, Debug)]
pub struct ShapedReference {
    /// The optimizer (its learning rate may be changed between steps).
    pub config: ShapedConfig,
    /// Each tensor's shape.
    pub shapes: Vec<Vec<usize>>,
    /// Each tensor's parameters.
    pub params: Vec<Vec<f64>>,
    adafactor: Vec<AdafactorState>,
    momentum: Vec<Vec<f64>>,
    step: u64,
}

impl ShapedReference {
    /// A group of tensors of `shapes` starting from `params`, checked as the GPU's.
    pub fn new(
        config: impl Into<ShapedConfig>,
        shapes: Vec<Vec<usize>>,
        params: Vec<Vec<f64>>,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        for (t, (shape, p)) in shapes.iter().zip(&params).enumerate() {
            config.check_shape(shape)?;
            let numel = shape.iter().product::<usize>();
            if p.len() != numel {
                return Err(Error::LengthMismatch {
                    what: "parameter data",
                    tensor: t,
                    expected: numel as u64,
                    got: p.len() as u64,
                });
            }
        }
        Ok(Self {
            adafactor: shapes.iter().map(|s| AdafactorState::new(s)).collect(),
            momentum: params.iter().map(|p| vec![0.0; p.len()]).collect(),
            config,
            shapes,
            params,
            step: 0,
        })
    }

    /// One step with these gradients.
    pub fn step(&mut self, grads: &[Vec<f64>]) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::WrongCount {
                call: "step",
                item: "gradient",
                expected: self.params.len(),
                got: grads.len(),
            });
        }
        for (t, (g, p)) in grads.iter().zip(&self.params).enumerate() {
            if g.len() != p.len() {
                return Err(Error::LengthMismatch {
                    what: "gradient",
                    tensor: t,
                    expected: p.len() as u64,
                    got: g.len() as u64,
                });
            }
        }
        self.step += 1;
        let lr = self.config.lr();
        for (t, grad) in grads.iter().enumerate() {
            let shape = &self.shapes[t];
            match &self.config {
                ShapedConfig::Adafactor(c) => c.reference_step(
                    self.step,
                    lr,
                    shape,
                    &mut self.params[t],
                    grad,
                    &mut self.adafactor[t],
                ),
                ShapedConfig::Muon(c) => c.reference_step(
                    lr,
                    (shape[0], shape[1]),
                    &mut self.params[t],
                    grad,
                    &mut self.momentum[t],
                ),
            }
        }
        Ok(())
    }

    /// One of tensor `tensor`'s states, by torch's name.
    pub fn state(&self, tensor: usize, name: &str) -> Option<&[f64]> {
        let factored = Factoring::of(self.shapes.get(tensor)?).factored;
        match (&self.config, name) {
            (ShapedConfig::Muon(_), "momentum_buffer") => Some(&self.momentum[tensor]),
            (ShapedConfig::Adafactor(_), "row_var") if factored => {
                Some(&self.adafactor[tensor].row)
            }
            (ShapedConfig::Adafactor(_), "col_var") if factored => {
                Some(&self.adafactor[tensor].col)
            }
            (ShapedConfig::Adafactor(_), "variance") if !factored => {
                Some(&self.adafactor[tensor].col)
            }
            _ => None,
        }
    }
}
