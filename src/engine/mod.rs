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

mod accumulate;
pub(crate) mod arena;
mod builder;
mod checkpoint;
pub(crate) mod control;
pub(crate) mod grad_norms;
mod group;
mod init;
pub(crate) mod scope;
mod segment;
mod tensor;
mod tensor_sums;

use std::ops::Range;

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::fill::{self, RandomFill};
use crate::optim::{Hyperparameters, OptimizerConfig, UpdateRule};
use crate::storage::HostValue;
use crate::transfer::{self, View};
pub(crate) use accumulate::ACCUMULATE_KERNEL;
pub use builder::OptimizerBuilder;
/// The step control a checkpoint stores for each group (its bytes are the record's).
pub use control::StepControl;
pub use control::{GradScaler, StepReport, TrainingOptions};
use group::Group;
use scope::GpuErrorScope;
pub use tensor::{ExternalTensor, GroupId, Role, TensorId, TensorInit};

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
        OptimizerBuilder::new(ctx)
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

    /// Points a caller's tensor ([`ExternalTensor`]) at other buffers, for frameworks that
    /// allocate new ones between steps (new gradients after each backward pass): the same
    /// length, offsets of the same alignment class (16-byte multiples or not), checked as at
    /// build time; the states stay. Rebuilds that tensor's bind groups only (one per segment it
    /// spans, and its norm pass's), so rebinding every tensor each step costs one bind group per
    /// segment. On an error nothing changes.
    pub fn rebind_external(&mut self, tensor: TensorId, ext: ExternalTensor) -> Result<()> {
        let (g, local) = self.locate(tensor)?;
        let first_tensor = tensor.0 - local;
        self.groups[g].rebind_external(&self.ctx, (local, tensor.0), first_tensor, &ext)
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
        let words = transfer::read(&self.ctx, &[View::whole(buffer)])?;
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
        g.refresh_pipelines(&self.ctx);
        Ok(())
    }

    /// The index of each tensor's first element among its group's elements, in the group's
    /// tensor order: what stochastic rounding hashes with the seed and the step (element `k`
    /// of a tensor is `position + k`). The float64 reference takes them
    /// ([`ReferenceGroup::positions`](crate::ReferenceGroup::positions)) to round the same way.
    pub fn rounding_positions(&self, group: GroupId) -> Result<Vec<u64>> {
        Ok(self
            .group(group)?
            .tensors
            .iter()
            .map(|t| t.position)
            .collect())
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
                    config.state_names().join(", "),
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
        self.encode_step(&mut encoder, None)?;
        self.ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Swaps a group's parameters to the point its optimizer evaluates at (Schedule-Free's
    /// average x, as `optimizer.eval()` in schedulefree), on the device. Steps are refused until
    /// [`train_mode`](Self::train_mode); already in evaluation mode, nothing happens. Before the
    /// first step the parameters stay as they are. An optimizer without an evaluation mode is an
    /// error.
    pub fn eval_mode(&mut self, group: GroupId) -> Result<()> {
        self.swap_mode(group, true)
    }

    /// Swaps a group's parameters back to the training point (schedulefree's `train()`).
    pub fn train_mode(&mut self, group: GroupId) -> Result<()> {
        self.swap_mode(group, false)
    }

    /// Whether a group is in evaluation mode.
    pub fn is_eval_mode(&self, group: GroupId) -> Result<bool> {
        Ok(self.group(group)?.eval_mode)
    }

    fn swap_mode(&mut self, group: GroupId, to_eval: bool) -> Result<()> {
        let current = self.group(group)?;
        let swap = current.config.swap_for(to_eval)?;
        if current.eval_mode == to_eval {
            return Ok(());
        }
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("mode swap"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("mode swap"),
                timestamp_writes: None,
            });
            self.groups[group.0].encode_swap(&self.ctx, &mut pass, &swap, to_eval);
        }
        self.ctx.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// An error if a group is in evaluation mode (its parameters are not the training point).
    pub(crate) fn check_train_mode(&self, what: &str) -> Result<()> {
        match self.groups.iter().position(|g| g.eval_mode) {
            Some(g) => Err(Error::InvalidConfig {
                optimizer: self.groups[g].config.name(),
                reason: format!(
                    "group {g} is in evaluation mode: call train_mode before {what} (its \
                     parameters hold the evaluation point, not the training point)"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Records one optimizer step into the caller's encoder (after their backward pass, say),
    /// as one compute pass, optionally bracketed by GPU timestamps. The step counts as applied
    /// from here on; it runs when the caller submits the encoder.
    ///
    /// With immediates (every native backend) the per-step values travel inside the command
    /// buffer, so any number of steps may be recorded before a submit. On a device without
    /// them ([`ScalarsVia::UniformBuffer`](crate::kernels::ScalarsVia)) they are written with
    /// `Queue::write_buffer`, which lands at the next submit: submit after each step there.
    ///
    /// A group in evaluation mode ([`eval_mode`](Self::eval_mode)) is an error, and nothing is
    /// recorded.
    pub fn encode_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.check_train_mode("a step")?;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("optimizer step"),
            timestamp_writes,
        });
        for group in &mut self.groups {
            group.encode(&self.ctx, &mut pass);
        }
        Ok(())
    }

    /// Dispatches one step records, however many tensors: per group, one per segment, one to
    /// finalize the step, and with clipping or loss scaling one more per segment for the norm.
    pub fn dispatches_per_step(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.update_dispatches() + g.control.dispatches())
            .sum()
    }

    /// Uploads one gradient per tensor (in [`TensorId`] order), then steps. Every length is
    /// checked before anything is written.
    pub fn step_with_grads(&mut self, grads: &[&[f32]]) -> Result<()> {
        self.check_train_mode("a step")?;
        self.check_grads("step_with_grads", grads)?;
        for (t, grad) in grads.iter().enumerate() {
            self.write(TensorId(t), Role::Grad, 0, grad)?;
        }
        self.step()
    }

    /// [`step_with_grads`](Self::step_with_grads) with gradients of another host type (the
    /// `half` crate's `bf16` or `f16`, as a training framework holds them): widened exactly,
    /// then stored in the gradients' format.
    pub fn step_with_grads_as<T: HostValue>(&mut self, grads: &[&[T]]) -> Result<()> {
        let widened: Vec<Vec<f32>> = grads
            .iter()
            .map(|g| g.iter().map(|v| v.to_f32()).collect())
            .collect();
        let refs: Vec<&[f32]> = widened.iter().map(Vec::as_slice).collect();
        self.step_with_grads(&refs)
    }

    /// [`write`](Self::write) with values of another host type (`half::bf16`, `half::f16`).
    pub fn write_as<T: HostValue>(
        &mut self,
        tensor: TensorId,
        role: Role,
        offset: u64,
        data: &[T],
    ) -> Result<()> {
        let widened: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        self.write(tensor, role, offset, &widened)
    }

    /// [`read`](Self::read) as values of another host type, each rounded to it (exact when
    /// the role is stored in that format).
    pub fn read_as<T: HostValue>(
        &self,
        tensor: TensorId,
        role: Role,
        range: Range<u64>,
    ) -> Result<Vec<T>> {
        Ok(self
            .read(tensor, role, range)?
            .into_iter()
            .map(T::from_f32)
            .collect())
    }

    /// Blocks until the GPU has finished every step queued so far.
    pub fn wait(&self) -> Result<()> {
        self.ctx.wait()
    }

    /// Writes `data` into a tensor's buffer of the given role, from element `offset`.
    pub fn write(&mut self, tensor: TensorId, role: Role, offset: u64, data: &[f32]) -> Result<()> {
        let what = match role {
            Role::Param | Role::Master | Role::Compensation => "parameter data",
            Role::Grad => "gradient",
            Role::State(_) => "state data",
        };
        self.check_len(tensor, what, offset, data.len())?;
        let (g, local) = self.locate(tensor)?;
        let range = offset..offset + data.len() as u64;
        if let Some(slot) = self.groups[g].q8_slot(role)? {
            let len = self.tensor_len(tensor)?;
            if range != (0..len) {
                return Err(Error::InvalidConfig {
                    optimizer: self.groups[g].config.name(),
                    reason: format!(
                        "a q8 state is written whole (its blocks of 256 share an absmax): \
                         {} values from {offset}, not {len} from 0",
                        data.len()
                    ),
                });
            }
            return self.groups[g].q8_write(&self.ctx, slot, local, data);
        }
        let spans = self.groups[g].spans(role, local, range.clone())?;
        check_usage(&spans, tensor, role, wgpu::BufferUsages::COPY_DST)?;
        transfer::write(&self.ctx, &spans, data)?;
        if role == Role::Param && self.groups[g].storage.master_weights {
            // New parameters: the master takes the values as given, the model's copy their
            // rounding.
            let master = self.groups[g].spans(Role::Master, local, range.clone())?;
            transfer::write(&self.ctx, &master, data)?;
        }
        if role == Role::Param && self.groups[g].storage.kahan() {
            // New parameters start with nothing lost to rounding.
            let compensation = self.groups[g].spans(Role::Compensation, local, range)?;
            transfer::fill(&self.ctx, &compensation, 0.0)?;
        }
        Ok(())
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
        if let Some(slot) = self.groups[g].q8_slot(role)? {
            return self.groups[g].q8_read(&self.ctx, slot, local, range);
        }
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
        if let Some(slot) = self.groups[g].q8_slot(role)? {
            // Quantized on the host, from the same values the fill kernel computes.
            fill.validate()?;
            let len = self.tensor_len(tensor)?;
            let mut values = self.groups[g].q8_read(&self.ctx, slot, local, 0..len)?;
            for j in range {
                values[j as usize] = fill.value(j);
            }
            return self.groups[g].q8_write(&self.ctx, slot, local, &values);
        }
        let spans = self.groups[g].spans(role, local, range.clone())?;
        fill::fill(&self.ctx, &spans, range.start, fill)?;
        if role == Role::Param && self.groups[g].storage.master_weights {
            let master = self.groups[g].spans(Role::Master, local, range.clone())?;
            fill::fill(&self.ctx, &master, range.start, fill)?;
        }
        Ok(())
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

    /// One gradient per tensor, each of the tensor's whole length (`call` names the method in
    /// the error).
    fn check_grads(&self, call: &'static str, grads: &[&[f32]]) -> Result<()> {
        if grads.len() != self.tensors.len() {
            return Err(Error::WrongCount {
                call,
                item: "gradient",
                expected: self.tensors.len(),
                got: grads.len(),
            });
        }
        for (t, grad) in grads.iter().enumerate() {
            self.check_full(TensorId(t), "gradient", grad.len())?;
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
    spans: &[View],
    tensor: TensorId,
    role: Role,
    usage: wgpu::BufferUsages,
) -> Result<()> {
    match spans.iter().find(|s| !s.buffer.usage().contains(usage)) {
        None => Ok(()),
        Some(span) => Err(Error::BadBuffer {
            role: match role {
                Role::Param | Role::Master | Role::Compensation => "parameters",
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
