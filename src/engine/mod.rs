//! The engine: parameter groups in flat GPU arenas, one fused kernel dispatch per segment and
//! group per step, and the host-side bookkeeping (step counters, per-step uniforms).
//!
//! ```text
//! group 0 (AdamW, lr 1e-3) ── param arena ─┬─ segment 0 buffer ─┐
//!                          ── grad arena   ├─ segment 0 buffer ─┼─ bind group 0 ── dispatch
//!                          ── exp_avg      ├─ ...               │
//!                          ── exp_avg_sq   └─ ...              ─┘
//! group 1 (AdamW, no decay) ...
//! ```
//!
//! Everything that a step needs is built once, in [`OptimizerBuilder::build`]: buffers, bind
//! groups, pipelines. A step only writes each group's small uniform (learning rate, bias
//! corrections, step number) and records the dispatches into one command encoder, submitted once;
//! it does not wait for the GPU.

pub mod arena;
mod checkpoint;
pub mod control;
mod group;
mod segment;
mod transfer;

use std::ops::Range;

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::fill::{self, RandomFill};
use crate::kernels::MAX_STATE_SLOTS;
use crate::optim::{OptimizerConfig, UpdateRule};
use control::{StepControl, StepReport, TrainingOptions};
use group::Group;
pub(crate) use transfer::{Span, read as read_spans};

/// A tensor of an [`Optimizer`], numbered in the order tensors were added, across groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// A parameter group of an [`Optimizer`], numbered in the order groups were added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub usize);

/// A tensor whose parameters and gradients stay in the caller's own buffers (for example those
/// of another wgpu-based framework), updated in place without copies. The optimizer keeps only
/// the states. Both buffers need `BufferUsages::STORAGE` (plus `COPY_SRC` to read them back and
/// `COPY_DST` to write them through the optimizer), and offsets aligned to the device's
/// `min_storage_buffer_offset_alignment`. Lengths that are multiples of 4 at 16-byte offsets get
/// the `vec4` kernel; others the scalar one.
///
/// The buffers must belong to the optimizer's device. A buffer of another device of the same
/// `wgpu::Instance` is reported as [`Error::BadBuffer`]; one of another instance cannot be told
/// apart by wgpu (its ids are per instance), so keep one instance per process.
#[derive(Clone, Debug)]
pub struct ExternalTensor {
    pub param: wgpu::Buffer,
    /// Byte offset of the first parameter in `param`.
    pub param_offset: u64,
    pub grad: wgpu::Buffer,
    /// Byte offset of the first gradient in `grad`.
    pub grad_offset: u64,
    /// Elements (f32).
    pub len: u64,
}

impl ExternalTensor {
    /// `len` elements at the start of each buffer.
    pub fn new(param: &wgpu::Buffer, grad: &wgpu::Buffer, len: u64) -> Self {
        Self {
            param: param.clone(),
            param_offset: 0,
            grad: grad.clone(),
            grad_offset: 0,
            len,
        }
    }
}

/// The initial contents of a parameter tensor.
#[derive(Clone, Debug)]
pub enum TensorInit<'a> {
    /// These values, copied into the optimizer's arena.
    Values(&'a [f32]),
    /// This many zeros (fill them later with [`Optimizer::write_param`]).
    Zeros(u64),
    /// The caller's buffers, used in place.
    External(ExternalTensor),
}

impl TensorInit<'_> {
    fn len(&self) -> u64 {
        match self {
            TensorInit::Values(v) => v.len() as u64,
            TensorInit::Zeros(n) => *n,
            TensorInit::External(e) => e.len,
        }
    }
}

impl From<ExternalTensor> for TensorInit<'_> {
    fn from(tensor: ExternalTensor) -> Self {
        TensorInit::External(tensor)
    }
}

impl<'a> From<&'a [f32]> for TensorInit<'a> {
    fn from(values: &'a [f32]) -> Self {
        TensorInit::Values(values)
    }
}

impl<'a> From<&'a Vec<f32>> for TensorInit<'a> {
    fn from(values: &'a Vec<f32>) -> Self {
        TensorInit::Values(values)
    }
}

/// Which buffer of a tensor to read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    Param,
    Grad,
    /// An optimizer state by PyTorch's name (`"exp_avg"`, `"momentum_buffer"`, ...).
    State(&'a str),
}

/// Collects parameter groups, then allocates everything at once.
pub struct OptimizerBuilder<'a> {
    ctx: GpuContext,
    groups: Vec<(OptimizerConfig, TrainingOptions, Vec<TensorInit<'a>>)>,
    max_segment_bytes: Option<u64>,
    factor_window_rows: u64,
}

impl<'a> OptimizerBuilder<'a> {
    /// Adds a parameter group: an optimizer configuration and its tensors.
    pub fn group<I, T>(self, config: impl Into<OptimizerConfig>, tensors: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<TensorInit<'a>>,
    {
        self.group_with(config, TrainingOptions::default(), tensors)
    }

    /// Adds a parameter group with gradient clipping, loss scaling or a schedule.
    pub fn group_with<I, T>(
        mut self,
        config: impl Into<OptimizerConfig>,
        options: TrainingOptions,
        tensors: I,
    ) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<TensorInit<'a>>,
    {
        self.groups.push((
            config.into(),
            options,
            tensors.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Caps the size of one segment buffer (default: the device's binding limit). Smaller
    /// segments mean more dispatches per step; tests use tiny ones to cross many boundaries.
    pub fn max_segment_bytes(mut self, bytes: u64) -> Self {
        self.max_segment_bytes = Some(bytes);
        self
    }

    /// Rows of step factors each group keeps ahead of its step (default
    /// [`FACTOR_WINDOW_ROWS`](control::FACTOR_WINDOW_ROWS)); the window slides every this many
    /// steps until the factors converge. Tests use tiny windows to slide it often.
    pub fn factor_window_rows(mut self, rows: u64) -> Self {
        self.factor_window_rows = rows.max(1);
        self
    }

    /// Validates every group, then allocates and fills the arenas and builds the pipelines and
    /// bind groups. On error nothing is left allocated.
    pub fn build(self) -> Result<Optimizer> {
        if self.groups.is_empty() {
            return Err(Error::Empty(
                "an optimizer needs at least one parameter group".into(),
            ));
        }
        for (g, (config, options, tensors)) in self.groups.iter().enumerate() {
            config.validate()?;
            options.validate()?;
            if tensors.iter().map(TensorInit::len).sum::<u64>() == 0 {
                return Err(Error::Empty(format!("parameter group {g} has no elements")));
            }
        }
        let binding_bytes = self.ctx.max_binding_bytes();
        let segment_bytes = self
            .max_segment_bytes
            .map_or(binding_bytes, |b| b.min(binding_bytes));
        if segment_bytes < 16 {
            return Err(Error::InvalidConfig {
                optimizer: "optimizer",
                reason: format!("segments of {segment_bytes} bytes cannot hold one vec4"),
            });
        }
        let ctx = self.ctx;
        let scope = GpuErrorScope::push(&ctx.device);
        let placeholders: Vec<wgpu::Buffer> = (0..MAX_STATE_SLOTS)
            .map(|slot| {
                ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("unused state slot {slot}")),
                    size: 16,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let mut groups = Vec::with_capacity(self.groups.len());
        let mut tensors = Vec::new();
        for (g, (config, options, inits)) in self.groups.iter().enumerate() {
            groups.push(Group::new(
                &ctx,
                config.clone(),
                options.clone(),
                inits,
                tensors.len(),
                group::GroupSizes {
                    segment_bytes,
                    factor_window_rows: self.factor_window_rows,
                },
                &placeholders,
            )?);
            tensors.extend((0..inits.len()).map(|local| (g, local)));
        }
        scope.pop("the optimizer's buffers")?;
        let optimizer = Optimizer {
            ctx,
            groups,
            tensors,
        };
        for (g, (_, _, inits)) in self.groups.iter().enumerate() {
            optimizer.groups[g].initialize(&optimizer.ctx, inits)?;
        }
        Ok(optimizer)
    }
}

/// Catches wgpu's validation and out-of-memory errors around a block of calls, so that they
/// become an [`Error`] instead of wgpu's default panic.
///
/// Fields drop in declaration order, which pops the inner (validation) scope first, as the
/// scope stack requires when an early return drops the guard unpopped.
struct GpuErrorScope {
    validation: wgpu::ErrorScopeGuard,
    memory: wgpu::ErrorScopeGuard,
}

impl GpuErrorScope {
    fn push(device: &wgpu::Device) -> Self {
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        Self { validation, memory }
    }

    fn pop(self, what: &str) -> Result<()> {
        let validation = pollster::block_on(self.validation.pop());
        let memory = pollster::block_on(self.memory.pop());
        if memory.is_some() {
            return Err(Error::OutOfMemory { what: what.into() });
        }
        match validation {
            Some(e) => Err(Error::Gpu(error_chain(&e))),
            None => Ok(()),
        }
    }
}

/// An error and its causes on one line ("a: b: c"); wgpu keeps the useful part in the causes.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parameter groups on the GPU and the optimizer states that go with them.
pub struct Optimizer {
    ctx: GpuContext,
    groups: Vec<Group>,
    /// `(group, index within the group)` of every tensor, by [`TensorId`].
    tensors: Vec<(usize, usize)>,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for g in &self.groups {
            list.entry(&format_args!(
                "{} (lr {}): {} tensors, {} segments, {} iterations",
                g.config.name(),
                g.config.lr(),
                g.tensors.len(),
                g.segments.len(),
                g.iterations
            ));
        }
        list.finish()
    }
}

impl Optimizer {
    /// Starts an optimizer on `ctx`; add groups to the builder, then `build()`.
    pub fn builder<'a>(ctx: &GpuContext) -> OptimizerBuilder<'a> {
        OptimizerBuilder {
            ctx: ctx.clone(),
            groups: Vec::new(),
            max_segment_bytes: None,
            factor_window_rows: control::FACTOR_WINDOW_ROWS,
        }
    }

    /// The device this optimizer runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Number of tensors, across groups.
    pub fn num_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Number of parameter groups.
    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    /// The tensors of a group, as a range of ids.
    pub fn group_tensors(&self, group: GroupId) -> Result<Range<usize>> {
        self.group(group)?;
        let start = self.tensors.iter().position(|&(g, _)| g == group.0);
        let count = self.groups[group.0].tensors.len();
        Ok(start.map_or(0..0, |s| s..s + count))
    }

    /// The group a tensor belongs to.
    pub fn group_of(&self, tensor: TensorId) -> Result<GroupId> {
        self.locate(tensor).map(|(g, _)| GroupId(g))
    }

    /// Elements in a tensor.
    pub fn tensor_len(&self, tensor: TensorId) -> Result<u64> {
        let (g, local) = self.locate(tensor)?;
        Ok(self.groups[g].tensors[local].len)
    }

    /// Whether a tensor's parameters and gradients are the caller's buffers.
    pub fn is_external(&self, tensor: TensorId) -> Result<bool> {
        let (g, local) = self.locate(tensor)?;
        Ok(self.groups[g].tensors[local].external)
    }

    /// Segments (and so dispatches per step) of a group.
    pub fn num_segments(&self, group: GroupId) -> Result<usize> {
        Ok(self.group(group)?.segments.len())
    }

    /// A group's configuration.
    pub fn config(&self, group: GroupId) -> Result<&OptimizerConfig> {
        Ok(&self.group(group)?.config)
    }

    /// The group's step control, read back from the device (waits for the GPU): steps
    /// applied, whether the last was skipped, the last gradient norm, the loss scale.
    pub fn step_report(&self, group: GroupId) -> Result<StepReport> {
        Ok(self.read_control(group)?.into())
    }

    fn read_control(&self, group: GroupId) -> Result<StepControl> {
        let buffer = &self.group(group)?.control.buffer;
        let words = transfer::read(
            &self.ctx,
            &[Span {
                buffer,
                offset: 0,
                len: buffer.size() / 4,
            }],
        )?;
        Ok(bytemuck::pod_read_unaligned(bytemuck::cast_slice(&words)))
    }

    /// The buffer of a group's [`StepControl`] on the device (`shaders/control.wgsl`), for
    /// callers' own kernels: e.g. to multiply a loss by `loss_scale` without a host round trip.
    pub fn control_buffer(&self, group: GroupId) -> Result<&wgpu::Buffer> {
        Ok(&self.group(group)?.control.buffer)
    }

    /// Iterations (calls to `step`, skipped steps included) a group has seen: its schedule's
    /// clock.
    pub fn iterations(&self, group: GroupId) -> Result<u64> {
        Ok(self.group(group)?.iterations)
    }

    /// A group's clipping, loss scaling and schedule.
    pub fn training_options(&self, group: GroupId) -> Result<&TrainingOptions> {
        Ok(&self.group(group)?.options)
    }

    /// Replaces a group's clipping, loss scaling and schedule. A new or changed grad scaler
    /// starts from its `init_scale`; the step count and states are kept.
    pub fn set_training_options(&mut self, group: GroupId, options: TrainingOptions) -> Result<()> {
        self.group(group)?;
        options.validate()?;
        let g = &mut self.groups[group.0];
        if options.grad_scaler != g.options.grad_scaler {
            let mut state = self.read_control(group)?;
            let g = &mut self.groups[group.0];
            state.loss_scale = options
                .grad_scaler
                .as_ref()
                .map_or(1.0, |s| s.init_scale as f32);
            state.growth_tracker = 0;
            g.control.write_state(&self.ctx, &state);
        }
        let g = &mut self.groups[group.0];
        g.control.apply(&self.ctx, &options);
        g.options = options;
        Ok(())
    }

    /// Names of the optimizer states a group keeps, in binding order.
    pub fn state_names(&self, group: GroupId) -> Result<Vec<&'static str>> {
        Ok(self.group(group)?.state_names())
    }

    /// Sets a group's learning rate for the following steps.
    pub fn set_lr(&mut self, group: GroupId, lr: f64) -> Result<()> {
        let mut config = self.group(group)?.config.clone();
        config.set_lr(lr);
        config.validate()?;
        self.groups[group.0].config = config;
        Ok(())
    }

    /// Replaces a group's hyperparameters. The optimizer and the states it keeps must stay the
    /// same (switching e.g. `amsgrad` on would need a buffer the group does not have); flags
    /// that change the kernel pick another cached pipeline.
    pub fn set_config(&mut self, group: GroupId, config: impl Into<OptimizerConfig>) -> Result<()> {
        let config = config.into();
        let current = &self.group(group)?.config;
        config.validate()?;
        let keeps = |c: &OptimizerConfig| -> Vec<bool> {
            c.initial_states().iter().map(Option::is_some).collect()
        };
        if config.name() != current.name() || keeps(&config) != keeps(current) {
            return Err(Error::InvalidConfig {
                optimizer: current.name(),
                reason: format!(
                    "group {} was built as {} keeping states [{}]; it cannot become {} keeping [{}]",
                    group.0,
                    current.name(),
                    self.groups[group.0].state_names().join(", "),
                    config.name(),
                    config
                        .kernel()
                        .state_slots
                        .iter()
                        .zip(config.initial_states())
                        .filter(|(_, s)| s.is_some())
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            });
        }
        self.groups[group.0].reconfigure(&self.ctx, config)
    }

    /// Applies one optimizer step to every group, using the gradients now in the gradient
    /// arenas. Queues the work and returns without waiting for the GPU.
    pub fn step(&mut self) -> Result<()> {
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("optimizer step"),
            });
        self.encode_step(&mut encoder, None);
        self.ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Records one optimizer step into the caller's encoder (after their backward pass, say),
    /// as one compute pass, optionally bracketed by GPU timestamps. The step counts as applied
    /// from here on; it runs when the caller submits the encoder.
    ///
    /// With immediates (every native backend) the per-step values travel inside the command
    /// buffer, so any number of steps may be recorded before a submit. On a device without
    /// them ([`ScalarBinding::Uniform`](crate::kernels::ScalarBinding)) they are written with
    /// `Queue::write_buffer`, which lands at the next submit: submit after each step there.
    pub fn encode_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("optimizer step"),
            timestamp_writes,
        });
        for group in &mut self.groups {
            group.encode(&self.ctx, &mut pass);
        }
    }

    /// Dispatches one step records, however many tensors: per group, one per segment, one to
    /// finalize the step, and with clipping or loss scaling one more per segment for the norm.
    pub fn dispatches_per_step(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.segments.len() + g.control.dispatches())
            .sum()
    }

    /// Uploads one gradient per tensor (in [`TensorId`] order), then steps. Every length is
    /// checked before anything is written.
    pub fn step_with_grads(&mut self, grads: &[&[f32]]) -> Result<()> {
        if grads.len() != self.tensors.len() {
            return Err(Error::WrongCount {
                call: "step_with_grads",
                item: "gradient",
                expected: self.tensors.len(),
                got: grads.len(),
            });
        }
        for (t, grad) in grads.iter().enumerate() {
            self.check_full(TensorId(t), "gradient", grad.len())?;
        }
        for (t, grad) in grads.iter().enumerate() {
            self.write(TensorId(t), Role::Grad, 0, grad)?;
        }
        self.step()
    }

    /// Blocks until the GPU has finished every step queued so far.
    pub fn wait(&self) -> Result<()> {
        self.ctx.wait()
    }

    /// Writes `data` into a tensor's buffer of the given role, from element `offset`.
    pub fn write(&mut self, tensor: TensorId, role: Role, offset: u64, data: &[f32]) -> Result<()> {
        let what = match role {
            Role::Param => "parameter data",
            Role::Grad => "gradient",
            Role::State(_) => "state data",
        };
        self.check_len(tensor, what, offset, data.len())?;
        let (g, local) = self.locate(tensor)?;
        let spans = self.groups[g].spans(role, local, offset..offset + data.len() as u64)?;
        check_usage(&spans, tensor, role, wgpu::BufferUsages::COPY_DST)?;
        transfer::write(&self.ctx, &spans, data)
    }

    /// Writes a whole tensor's parameters.
    pub fn write_param(&mut self, tensor: TensorId, data: &[f32]) -> Result<()> {
        self.check_full(tensor, "parameter data", data.len())?;
        self.write(tensor, Role::Param, 0, data)
    }

    /// Writes a whole tensor's gradient.
    pub fn write_grad(&mut self, tensor: TensorId, data: &[f32]) -> Result<()> {
        self.check_full(tensor, "gradient", data.len())?;
        self.write(tensor, Role::Grad, 0, data)
    }

    /// Reads elements `range` of a tensor's buffer of the given role (waits for the GPU).
    pub fn read(&self, tensor: TensorId, role: Role, range: Range<u64>) -> Result<Vec<f32>> {
        self.check_range(tensor, "the range to read", &range)?;
        let (g, local) = self.locate(tensor)?;
        let spans = self.groups[g].spans(role, local, range)?;
        check_usage(&spans, tensor, role, wgpu::BufferUsages::COPY_SRC)?;
        transfer::read(&self.ctx, &spans)
    }

    /// A tensor's parameters (waits for the GPU).
    pub fn read_param(&self, tensor: TensorId) -> Result<Vec<f32>> {
        self.read(tensor, Role::Param, 0..self.tensor_len(tensor)?)
    }

    /// A tensor's current gradient (waits for the GPU).
    pub fn read_grad(&self, tensor: TensorId) -> Result<Vec<f32>> {
        self.read(tensor, Role::Grad, 0..self.tensor_len(tensor)?)
    }

    /// One optimizer state of a tensor, by PyTorch's name (waits for the GPU).
    pub fn read_state(&self, tensor: TensorId, name: &str) -> Result<Vec<f32>> {
        self.read(tensor, Role::State(name), 0..self.tensor_len(tensor)?)
    }

    /// Fills elements `range` of a tensor's buffer of the given role with pseudo-random values
    /// computed on the GPU: element `j` of the tensor gets `fill.value(j)`, whatever the layout.
    /// Queued; returns without waiting.
    pub fn fill_random(
        &mut self,
        tensor: TensorId,
        role: Role,
        range: Range<u64>,
        fill: &RandomFill,
    ) -> Result<()> {
        self.check_range(tensor, "the range to fill", &range)?;
        let (g, local) = self.locate(tensor)?;
        let spans = self.groups[g].spans(role, local, range.clone())?;
        fill::fill(&self.ctx, &spans, range.start, fill)
    }

    /// Replaces one optimizer state of a tensor.
    pub fn write_state(&mut self, tensor: TensorId, name: &str, data: &[f32]) -> Result<()> {
        self.check_full(tensor, "state data", data.len())?;
        self.write(tensor, Role::State(name), 0, data)
    }

    fn group(&self, group: GroupId) -> Result<&Group> {
        self.groups.get(group.0).ok_or(Error::UnknownHandle {
            what: "group",
            index: group.0,
            count: self.groups.len(),
        })
    }

    fn locate(&self, tensor: TensorId) -> Result<(usize, usize)> {
        self.tensors
            .get(tensor.0)
            .copied()
            .ok_or(Error::UnknownHandle {
                what: "tensor",
                index: tensor.0,
                count: self.tensors.len(),
            })
    }

    /// `len` elements from `offset` must fit in the tensor.
    fn check_len(
        &self,
        tensor: TensorId,
        what: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<()> {
        let expected = self.tensor_len(tensor)?;
        if offset + len as u64 > expected {
            return Err(Error::LengthMismatch {
                what,
                tensor: tensor.0,
                expected,
                got: offset + len as u64,
            });
        }
        Ok(())
    }

    /// `len` must be the tensor's whole length.
    /// `range` lies within the tensor (and is not reversed).
    fn check_range(&self, tensor: TensorId, what: &'static str, range: &Range<u64>) -> Result<()> {
        let len = self.tensor_len(tensor)?;
        if range.start > range.end || range.end > len {
            return Err(Error::LengthMismatch {
                what,
                tensor: tensor.0,
                expected: len,
                got: range.end,
            });
        }
        Ok(())
    }

    fn check_full(&self, tensor: TensorId, what: &'static str, len: usize) -> Result<()> {
        let expected = self.tensor_len(tensor)?;
        if len as u64 != expected {
            return Err(Error::LengthMismatch {
                what,
                tensor: tensor.0,
                expected,
                got: len as u64,
            });
        }
        Ok(())
    }
}

/// Reading needs `COPY_SRC` and writing `COPY_DST` on every buffer involved; only a caller's
/// buffers can lack them.
fn check_usage(
    spans: &[transfer::Span],
    tensor: TensorId,
    role: Role,
    usage: wgpu::BufferUsages,
) -> Result<()> {
    match spans.iter().find(|s| !s.buffer.usage().contains(usage)) {
        None => Ok(()),
        Some(span) => Err(Error::BadBuffer {
            role: match role {
                Role::Param => "parameters",
                Role::Grad => "gradients",
                Role::State(_) => "state",
            },
            tensor: tensor.0,
            problem: format!(
                "lacks BufferUsages::{usage:?} (it has {:?})",
                span.buffer.usage()
            ),
        }),
    }
}
