//! What happens around the update, on the device, every step: the global gradient norm (for
//! clipping), the non-finite check and the loss scale (for mixed precision), and the step
//! count. One small control buffer per group holds their state; the host writes it only when
//! the options change and reads it only when asked, never inside a step.
//!
//! Per step and group, in one compute pass:
//! 1. `norm.wgsl`, one dispatch per segment (only with clipping or loss scaling): partial sums
//!    of squares and a non-finite flag. It reads the gradients once more: 4 extra bytes per
//!    element.
//! 2. `finalize.wgsl`, one workgroup: norm, clip coefficient, skip or advance, loss-scale update.
//!    It also copies the step's row of the step-factor window into the control.
//! 3. the optimizer kernel, one dispatch per segment, reading the control as a uniform: returns
//!    at once on a skipped step, else multiplies each gradient by the control's multiplier and
//!    uses its step factors.

use serde::{Deserialize, Serialize};

use super::segment::Segment;
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{
    BindingKind, CONTROL_WGSL, Element, REDUCE_WGSL, UtilityKernel, shader_struct, workgroups_for,
};
use crate::optim::{FactorRows, OptimizerConfig, StepCounter, UpdateRule, step_factor_rows};
use crate::schedule::Schedule;
use crate::storage::{Format, GradAccess, Storage};

/// Rows of step factors a window holds ahead of the device's step (1 MiB): the host slides it
/// forward every this many steps until the factors converge.
pub const FACTOR_WINDOW_ROWS: u64 = 1 << 16;

shader_struct! {
    /// A group's step control on the device (`shaders/control.wgsl`).
    pub struct StepControl {
        /// This step's row of the step-factor window (bias corrections and the like, computed
        /// by the host in float64), copied in by the finalize kernel for the update to use.
        pub factors: [f32; 4],
        /// Optimizer steps applied so far, this one included; a skipped step does not count.
        pub step: u32,
        /// 1 when this step is skipped whole: the update kernel then returns at once.
        pub skip: u32,
        /// The update multiplies every gradient by this: 1 / loss scale, times the clipping
        /// coefficient.
        pub grad_multiplier: f32,
        /// The global L2 norm of the unscaled gradients, when the group computes it.
        pub grad_norm: f32,
        /// The loss scale the next step's gradients are expected to carry.
        pub loss_scale: f32,
        /// Good steps since the loss scale last changed.
        pub growth_tracker: u32,
        /// 1 when this step's gradients held an inf or a NaN.
        pub found_inf: u32,
        /// Steps skipped so far.
        pub skipped_steps: u32,
    }
}

shader_struct! {
    /// The finalize kernel's settings (`shaders/finalize.wgsl`), written when options change.
    pub struct ControlSettings {
        /// Partial sums of squares the kernel adds up (0 when the group computes no norm).
        pub partial_count: u32,
        /// 1 to clip the gradients by the global norm.
        pub clip: u32,
        /// 1 to unscale the gradients, skip non-finite steps and adapt the loss scale (a
        /// [`GradScaler`]).
        pub scaler: u32,
        /// Good steps in a row after which the kernel grows the loss scale.
        pub growth_interval: u32,
        /// The clipping threshold on the global norm.
        pub max_norm: f32,
        /// The kernel multiplies the loss scale by this after `growth_interval` good steps.
        pub growth_factor: f32,
        /// The kernel multiplies the loss scale by this on a non-finite step.
        pub backoff_factor: f32,
        /// 1 to skip non-finite steps without a scaler.
        pub skip_nonfinite: u32,
    }
}

/// Elements each invocation of the norm kernel adds up (`NORM_ELEMENTS_PER_THREAD` in
/// `shaders/norm.wgsl`).
pub const NORM_ELEMENTS_PER_THREAD: u64 = 16;

/// The per-segment reduction.
pub static NORM_KERNEL: UtilityKernel = UtilityKernel {
    name: "norm",
    source: include_str!("../../shaders/norm.wgsl"),
    pieces: &[REDUCE_WGSL],
    elementwise: true,
    uniform: None,
    grad: GradAccess::Read,
    bindings: &[
        BindingKind::Storage { read_only: true },
        BindingKind::Storage { read_only: false },
        BindingKind::Storage { read_only: false },
    ],
};

/// The once-per-step control update.
pub static FINALIZE_KERNEL: UtilityKernel = UtilityKernel {
    name: "finalize",
    source: include_str!("../../shaders/finalize.wgsl"),
    pieces: &[CONTROL_WGSL, REDUCE_WGSL],
    elementwise: false,
    uniform: Some(&ControlSettings::LAYOUT),
    grad: GradAccess::None,
    bindings: &[
        BindingKind::Uniform,
        BindingKind::Storage { read_only: true },
        BindingKind::Storage { read_only: false },
        BindingKind::Storage { read_only: false },
        BindingKind::Storage { read_only: true },
    ],
};

/// Dynamic loss scaling, as `torch.amp.GradScaler` does it: gradients arrive multiplied by the
/// current scale; a step whose gradients hold an inf or a NaN is skipped whole and the scale
/// shrinks by `backoff_factor`; after `growth_interval` good steps in a row it grows by
/// `growth_factor`. A static scale: `growth_factor` = `backoff_factor` = 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradScaler {
    /// The scale of the first step's gradients (finite, > 0; PyTorch's default 65536).
    pub init_scale: f64,
    /// What the scale is multiplied by after `growth_interval` good steps (>= 1; default 2).
    pub growth_factor: f64,
    /// What the scale is multiplied by on a skipped step, in (0, 1] (default 0.5).
    pub backoff_factor: f64,
    /// Good steps in a row before the scale grows (> 0; default 2000).
    pub growth_interval: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

impl GradScaler {
    /// A fixed scale: divide by it, skip non-finite steps, never change it.
    pub fn fixed(scale: f64) -> Self {
        Self {
            init_scale: scale,
            growth_factor: 1.0,
            backoff_factor: 1.0,
            growth_interval: 1,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Error::InvalidConfig {
            optimizer: "grad scaler",
            reason,
        };
        if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            return Err(bad(format!(
                "init_scale must be finite and > 0, got {}",
                self.init_scale
            )));
        }
        if !(self.growth_factor.is_finite() && self.growth_factor >= 1.0) {
            return Err(bad(format!(
                "growth_factor must be >= 1, got {}",
                self.growth_factor
            )));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor <= 1.0) {
            return Err(bad(format!(
                "backoff_factor must be in (0, 1], got {}",
                self.backoff_factor
            )));
        }
        if self.growth_interval == 0 {
            return Err(bad("growth_interval must be > 0".into()));
        }
        Ok(())
    }
}

/// What a training loop needs around a group's update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingOptions {
    /// Clip by the global L2 norm over all the group's gradients, as
    /// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: gradients times
    /// min(1, max_norm / (norm + 1e-6)).
    pub max_grad_norm: Option<f64>,
    /// Loss scaling: unscale the gradients, skip non-finite steps, adapt the scale.
    pub grad_scaler: Option<GradScaler>,
    /// The learning rate of each iteration, from the group's base rate.
    pub schedule: Option<Schedule>,
    /// Without loss scaling: skip a step whose gradients hold an inf or a NaN, whole
    /// (parameters, states and step count unchanged), and report it (optax's
    /// `apply_if_finite`). A grad scaler always does this.
    pub skip_nonfinite: bool,
}

impl TrainingOptions {
    /// Checks every option.
    pub fn validate(&self) -> Result<()> {
        if let Some(max) = self.max_grad_norm
            && !(max.is_finite() && max > 0.0)
        {
            return Err(Error::InvalidConfig {
                optimizer: "gradient clipping",
                reason: format!("max_grad_norm must be finite and > 0, got {max}"),
            });
        }
        if let Some(scaler) = &self.grad_scaler {
            scaler.validate()?;
        }
        if let Some(schedule) = &self.schedule {
            schedule.validate()?;
        }
        Ok(())
    }

    /// Whether steps need the norm pass over the gradients.
    pub fn needs_norm(&self) -> bool {
        self.max_grad_norm.is_some() || self.grad_scaler.is_some() || self.skip_nonfinite
    }

    /// Whether a step can be skipped (non-finite gradients under a scaler or `skip_nonfinite`).
    pub fn can_skip(&self) -> bool {
        self.grad_scaler.is_some() || self.skip_nonfinite
    }

    /// The values of the kernels' [`TRAINING_FLAGS`](crate::kernels::TRAINING_FLAGS): whether
    /// the gradient is multiplied (clipping, loss scaling) and whether a step may be skipped.
    pub fn kernel_flags(&self) -> [(&'static str, bool); 2] {
        [
            ("GRAD_MULTIPLIER", self.needs_norm()),
            ("SKIPPABLE", self.can_skip()),
        ]
    }
}

/// A group's step control as read back after a step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Optimizer steps applied so far (skipped ones not counted).
    pub step: u64,
    /// Whether the last step was skipped.
    pub skipped: bool,
    /// Whether the last step's gradients held an inf or a NaN (with clipping or a scaler).
    pub found_inf: bool,
    /// The last step's global L2 gradient norm, unscaled and before clipping (with clipping or
    /// a scaler; 0 otherwise).
    pub grad_norm: f64,
    /// The loss scale the next step's gradients should carry (1 without a scaler).
    pub loss_scale: f64,
    /// Good steps since the scale last changed.
    pub growth_tracker: u32,
    /// Steps skipped so far.
    pub skipped_steps: u64,
}

impl From<StepControl> for StepReport {
    fn from(c: StepControl) -> Self {
        Self {
            step: c.step as u64,
            skipped: c.skip != 0,
            found_inf: c.found_inf != 0,
            grad_norm: c.grad_norm as f64,
            loss_scale: c.loss_scale as f64,
            growth_tracker: c.growth_tracker,
            skipped_steps: c.skipped_steps as u64,
        }
    }
}

/// One group's control buffers, bind groups and pipelines.
pub(crate) struct Control {
    /// The [`StepControl`].
    pub buffer: wgpu::Buffer,
    /// The step-factor window (`array<vec4<f32>>`, header row first).
    factors: wgpu::Buffer,
    /// What the window holds, and what the host knows of the device's step.
    window: FactorWindow,
    settings: wgpu::Buffer,
    partials: wgpu::Buffer,
    flags: wgpu::Buffer,
    partial_count: u32,
    /// Each segment's slice of the partial sums: (first, count, workgroups).
    norm_slices: Vec<NormSlice>,
    /// One norm dispatch per segment: bind group, workgroups, element type.
    norm: Vec<(wgpu::BindGroup, (u32, u32), Element)>,
    norm_pipelines: Vec<(Element, wgpu::ComputePipeline)>,
    finalize: (wgpu::BindGroup, wgpu::ComputePipeline),
    /// Whether steps run the norm pass.
    pub norm_enabled: bool,
}

impl Control {
    /// The norm pass's bind groups of segments `which` again, after their gradient views
    /// changed (a caller's tensor rebound to other buffers): same slices and kernels, new
    /// gradients.
    pub fn rebind_norm(
        &mut self,
        ctx: &GpuContext,
        segments: &[Segment],
        storage: &Storage,
        which: &[usize],
    ) {
        for &s in which {
            let (mut norm, _) = norm_bind_groups(
                ctx,
                &segments[s..=s],
                storage,
                &self.norm_slices[s..=s],
                &self.partials,
                &self.flags,
            );
            self.norm[s] = norm.remove(0);
        }
    }

    /// Allocates a group's control: its step starts at 0, its loss scale at the scaler's, its
    /// factor window at step 1.
    pub fn new(
        ctx: &GpuContext,
        segments: &[Segment],
        config: &OptimizerConfig,
        storage: &Storage,
        window_rows: u64,
    ) -> Self {
        let device = &ctx.device;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step control"),
            size: std::mem::size_of::<StepControl>() as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // The window is one binding: a device that binds little gets a shorter one, which
        // slides more often.
        let max_rows = (ctx.max_binding_bytes() / 16).saturating_sub(1).max(2);
        let mut window = FactorWindow {
            ahead: window_rows.min(max_rows / 2),
            max_rows,
            ..Default::default()
        };
        let factors = factor_buffer(ctx, &window.slide(config, 0));
        let settings = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("control settings"),
            size: std::mem::size_of::<ControlSettings>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let flags = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("non-finite flag"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        // Each segment's partial sums (a (q, e) pair of f32 each) start at an aligned offset
        // (they are bound as slices); the gaps stay zero and add nothing.
        let align = (ctx.limits.min_storage_buffer_offset_alignment as u64 / PARTIAL_BYTES).max(1);
        let max_per_dim = ctx.limits.max_compute_workgroups_per_dimension;
        let mut slices = Vec::with_capacity(segments.len());
        let mut next = 0u64;
        for segment in segments {
            let elements = segment.grad.len.div_ceil(segment.element.width());
            let threads = elements.div_ceil(NORM_ELEMENTS_PER_THREAD);
            let workgroups = workgroups_for(threads, max_per_dim);
            // One partial sum per workgroup.
            let count = workgroups.0 as u64 * workgroups.1 as u64;
            slices.push((next, count, workgroups));
            next = (next + count).next_multiple_of(align);
        }
        let partial_count = next.max(1);
        let partials = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("norm partials"),
            size: partial_count * PARTIAL_BYTES,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let (norm, norm_pipelines) =
            norm_bind_groups(ctx, segments, storage, &slices, &partials, &flags);
        let finalize = finalize_bind_group(ctx, &settings, &partials, &flags, &buffer, &factors);
        Self {
            buffer,
            factors,
            window,
            settings,
            partials,
            flags,
            partial_count: partial_count as u32,
            norm_slices: slices,
            norm,
            norm_pipelines,
            finalize,
            norm_enabled: false,
        }
    }

    /// Writes the finalize kernel's settings for `options` (not inside a step: when the
    /// options change).
    pub fn apply(&mut self, ctx: &GpuContext, options: &TrainingOptions) {
        self.norm_enabled = options.needs_norm();
        let scaler = options
            .grad_scaler
            .clone()
            .unwrap_or_else(|| GradScaler::fixed(1.0));
        let settings = ControlSettings {
            partial_count: if self.norm_enabled {
                self.partial_count
            } else {
                0
            },
            clip: options.max_grad_norm.is_some() as u32,
            scaler: options.grad_scaler.is_some() as u32,
            growth_interval: scaler.growth_interval,
            max_norm: options.max_grad_norm.unwrap_or(0.0) as f32,
            growth_factor: scaler.growth_factor as f32,
            backoff_factor: scaler.backoff_factor as f32,
            skip_nonfinite: options.skip_nonfinite as u32,
        };
        ctx.queue
            .write_buffer(&self.settings, 0, bytemuck::bytes_of(&settings));
    }

    /// Overwrites the whole control state (a new group, a new scaler, a checkpoint). The
    /// factor window follows the new step at the next step.
    pub fn write_state(&mut self, ctx: &GpuContext, state: &StepControl) {
        ctx.queue
            .write_buffer(&self.buffer, 0, bytemuck::bytes_of(state));
        self.window.known_step(state.step as u64);
    }

    /// New hyperparameters: the factor window is rebuilt (at the next step).
    pub fn config_changed(&mut self) {
        self.window.stale = true;
    }

    /// Before recording a step: makes sure the factor window holds a row for every step the
    /// device can be at when that step runs. A window that must move gets a new buffer (steps
    /// already recorded but not yet submitted keep reading the old one), once every
    /// [`FACTOR_WINDOW_ROWS`] steps at most, and never once the factors have converged.
    pub fn prepare_step(&mut self, ctx: &GpuContext, config: &OptimizerConfig, can_skip: bool) {
        let next = self.window.step_max + 1;
        if !self.window.stale
            && (self.window.converged || next <= self.window.base + self.window.rows)
        {
            return;
        }
        if can_skip && !self.window.stale {
            // Skipped steps do not count: read how far the device really got (the steps
            // submitted so far; later ones only add), to keep the window small.
            if let Ok(words) =
                crate::transfer::read(ctx, &[crate::transfer::View::whole(&self.buffer)])
            {
                let state: StepControl = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&words));
                self.window.step_min = self.window.step_min.max(state.step as u64);
            }
        }
        let table = self.window.slide(config, next);
        self.factors = factor_buffer(ctx, &table);
        self.finalize = finalize_bind_group(
            ctx,
            &self.settings,
            &self.partials,
            &self.flags,
            &self.buffer,
            &self.factors,
        );
    }

    /// After recording a step: the device's step advances by one, or, if the step can be
    /// skipped, perhaps not.
    pub fn step_recorded(&mut self, can_skip: bool) {
        self.window.step_max += 1;
        if !can_skip {
            self.window.step_min += 1;
        }
    }

    /// Records the norm pass (if enabled) and the finalize dispatch.
    pub fn encode(&self, pass: &mut wgpu::ComputePass) {
        if self.norm_enabled {
            for (element, pipeline) in &self.norm_pipelines {
                pass.set_pipeline(pipeline);
                for (bind_group, (x, y), _) in self.norm.iter().filter(|n| n.2 == *element) {
                    pass.set_bind_group(0, bind_group, &[]);
                    pass.dispatch_workgroups(*x, *y, 1);
                }
            }
        }
        pass.set_pipeline(&self.finalize.1);
        pass.set_bind_group(0, &self.finalize.0, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Dispatches a step records for this control.
    pub fn dispatches(&self) -> usize {
        1 + if self.norm_enabled {
            self.norm.len()
        } else {
            0
        }
    }
}

/// Bytes of one partial sum of squares of the norm pass: a (q, e) pair of f32
/// (`shaders/reduce.wgsl`).
pub const PARTIAL_BYTES: u64 = 8;

/// Which steps' factors the device's window holds, and the bounds the host knows on the
/// device's step count (which skipped steps do not advance, so the host cannot know it
/// exactly without reading it back).
#[derive(Clone, Debug, Default)]
struct FactorWindow {
    /// The window holds the factors of steps `base + 1 ..= base + rows`.
    base: u64,
    rows: u64,
    /// The last row holds for every later step.
    converged: bool,
    /// The window must be rebuilt (new hyperparameters or a new step count).
    stale: bool,
    /// The device's step is at least this...
    step_min: u64,
    /// ...and at most this, once the recorded steps have run.
    step_max: u64,
    /// The rule's counter at `base` (NAdam's running product), to slide on from.
    counter: StepCounter,
    /// Rows to hold past the next step ([`FACTOR_WINDOW_ROWS`] but in tests).
    ahead: u64,
    /// The most rows the device can bind.
    max_rows: u64,
}

impl FactorWindow {
    /// The device's step is `step` exactly.
    fn known_step(&mut self, step: u64) {
        self.step_min = step;
        self.step_max = step;
        self.stale = true;
    }

    /// Moves the window to start right after `step_min` and cover at least step `next` plus
    /// `ahead` more; returns the buffer's contents (header row first).
    fn slide(&mut self, config: &OptimizerConfig, next: u64) -> Vec<[f32; 4]> {
        let base = self.step_min;
        // Slide the cached counter forward a window's worth; a new step count (a checkpoint) or
        // new hyperparameters compute it afresh.
        if self.stale || base < self.base || base - self.base > self.ahead {
            self.counter = config.counter_at(base);
        } else {
            for _ in self.base..base {
                self.counter = config.advance(&self.counter);
            }
        }
        // Past `max_rows` (a caller recording more steps into one encoder than the device can
        // bind rows for, with every step skippable) the last rows would be reused: no real
        // device binds so little (128 MiB holds 8 million rows).
        let wanted = (next.max(base + 1) - base + self.ahead).min(self.max_rows);
        let FactorRows { rows, converged } =
            step_factor_rows(config, &self.counter, wanted as usize);
        self.base = base;
        self.rows = rows.len() as u64;
        self.converged = converged;
        self.stale = false;
        let header = [base as u32, rows.len() as u32, converged as u32, 0].map(f32::from_bits);
        std::iter::once(header).chain(rows).collect()
    }
}

fn factor_buffer(ctx: &GpuContext, table: &[[f32; 4]]) -> wgpu::Buffer {
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("step factor window"),
        size: (table.len() * 16) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue
        .write_buffer(&buffer, 0, bytemuck::cast_slice(table));
    buffer
}

/// The finalize kernel's bind group and pipeline.
fn finalize_bind_group(
    ctx: &GpuContext,
    settings: &wgpu::Buffer,
    partials: &wgpu::Buffer,
    flags: &wgpu::Buffer,
    control: &wgpu::Buffer,
    factors: &wgpu::Buffer,
) -> (wgpu::BindGroup, wgpu::ComputePipeline) {
    let (layout, pipeline) =
        ctx.kernels
            .utility(&ctx.device, &FINALIZE_KERNEL, Element::F32, Format::F32);
    let entries: Vec<wgpu::BindGroupEntry> = [settings, partials, flags, control, factors]
        .iter()
        .enumerate()
        .map(|(binding, buffer)| wgpu::BindGroupEntry {
            binding: binding as u32,
            resource: buffer.as_entire_binding(),
        })
        .collect();
    let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("finalize"),
        layout: &layout,
        entries: &entries,
    });
    (bind_group, pipeline)
}

/// The control state of a fresh group.
pub(crate) fn initial_state(options: &TrainingOptions) -> StepControl {
    StepControl {
        grad_multiplier: 1.0,
        loss_scale: options
            .grad_scaler
            .as_ref()
            .map_or(1.0, |s| s.init_scale as f32),
        ..Default::default()
    }
}

/// A segment's slice of the norm's partial sums: first pair, pairs, workgroups.
type NormSlice = (u64, u64, (u32, u32));

/// A norm bind group per segment (its gradients, its slice of the partials, the flag) and the
/// pipelines of the element types the segments use.
#[allow(clippy::type_complexity)]
fn norm_bind_groups(
    ctx: &GpuContext,
    segments: &[Segment],
    storage: &Storage,
    slices: &[NormSlice],
    partials: &wgpu::Buffer,
    flags: &wgpu::Buffer,
) -> (
    Vec<(wgpu::BindGroup, (u32, u32), Element)>,
    Vec<(Element, wgpu::ComputePipeline)>,
) {
    let device = &ctx.device;
    let mut norm_pipelines: Vec<(Element, wgpu::ComputePipeline)> = Vec::new();
    let norm = segments
        .iter()
        .zip(slices)
        .map(|(segment, &(offset, count, workgroups))| {
            let (layout, pipeline) =
                ctx.kernels
                    .utility(device, &NORM_KERNEL, segment.element, storage.grad);
            if !norm_pipelines.iter().any(|(e, _)| *e == segment.element) {
                norm_pipelines.push((segment.element, pipeline));
            }
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("norm"),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: segment.grad.binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: partials,
                            offset: offset * PARTIAL_BYTES,
                            size: wgpu::BufferSize::new(count * PARTIAL_BYTES),
                        }),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: flags.as_entire_binding(),
                    },
                ],
            });
            (bind_group, workgroups, segment.element)
        })
        .collect();
    (norm, norm_pipelines)
}
