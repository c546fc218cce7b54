//! One parameter group on the GPU: its segments (one dispatch each), where each tensor lies in
//! them, and the pipelines and uniform its kernel uses.
//!
//! A segment binds a *view* (buffer, byte offset, length) for every role. Arena tensors share
//! segments cut from the group's own flat buffers; an external tensor (the caller's parameter
//! and gradient buffers, used in place) gets segments of its own whose parameter and gradient
//! views point into the caller's buffers and whose states are ours. Either way a step is one
//! dispatch per segment, and reads and writes go through the same views.

use std::ops::Range;

use super::arena::{ArenaLayout, Piece};
use super::control::{Control, TrainingOptions, initial_state};
use super::segment::{Segment, View};
use super::tensor_sums::{TENSOR_ALIGN, TensorSums};
use super::{ExternalTensor, GpuErrorScope, Role, TensorInit};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{Element, ScalarsVia, workgroups_for};
use crate::optim::{Hyperparameters, ModeSwap, OptimizerConfig, UpdateRule};
use crate::storage::{Format, Storage, q8};
use crate::transfer;

/// Where one tensor's elements lie: runs in segments.
pub(crate) struct TensorPlace {
    pub len: u64,
    /// The index of its first element among the group's elements (see
    /// [`Segment::first_index`]).
    pub position: u64,
    pub pieces: Vec<Piece>,
    /// Parameters and gradients live in the caller's buffers.
    pub external: bool,
}

/// How large a group's buffers may be.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupSizes {
    /// The largest segment buffer.
    pub segment_bytes: u64,
    /// Rows of the step-factor window ahead of the step.
    pub factor_window_rows: u64,
}

/// What a group is, apart from its tensors: its optimizer, training options and storage.
#[derive(Clone, Debug)]
pub(crate) struct GroupSpec {
    pub config: OptimizerConfig,
    pub options: TrainingOptions,
    pub storage: Storage,
}

/// One parameter group on the GPU.
pub(crate) struct Group {
    pub config: OptimizerConfig,
    /// How each role's values are stored.
    pub storage: Storage,
    /// Clipping, loss scaling and the schedule.
    pub options: TrainingOptions,
    /// `step` calls so far, skipped steps included: the schedule's clock. (The optimizer's
    /// own step count lives on the device, in the control.)
    pub iterations: u64,
    /// Whether the parameters hold the evaluation point (Schedule-Free's x) rather than the
    /// training point: [`encode_swap`](Self::encode_swap) switches; steps need training mode.
    pub eval_mode: bool,
    pub control: Control,
    /// Bound to the state slots the configuration does not use.
    placeholders: Vec<wgpu::Buffer>,
    /// How the kernel receives its per-step values.
    pub scalars_via: ScalarsVia,
    /// The per-step values' buffer, on devices without immediates.
    pub uniform: Option<wgpu::Buffer>,
    /// With q8 states, both quantization maps and their thresholds, as a uniform.
    qmaps: Option<wgpu::Buffer>,
    pub segments: Vec<Segment>,
    pub tensors: Vec<TensorPlace>,
    /// Compiled pipelines for the element types the segments use.
    pub pipelines: Vec<(Element, wgpu::ComputePipeline)>,
    /// With a rule that reduces per tensor (LAMB), its per-workgroup sums and tensor table.
    tensor_sums: Option<TensorSums>,
}

/// Usage every arena buffer gets: bound as storage, copied to and from.
const ARENA_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A new buffer of `elems` values of `format`, as a view (q8: the codes, then the absmax of
/// each block).
fn create_view(ctx: &GpuContext, label: &str, elems: u64, format: Format) -> View {
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        // Whole vec4s, which the kernels bind (`View::padded_binding`).
        size: format.buffer_bytes(elems.next_multiple_of(4)),
        usage: ARENA_USAGE,
        mapped_at_creation: false,
    });
    View {
        buffer,
        offset: 0,
        len: elems,
        format,
    }
}

/// Checks an external tensor's buffers against what binding them requires.
fn check_external(
    ctx: &GpuContext,
    tensor: usize,
    ext: &ExternalTensor,
    storage: &Storage,
) -> Result<()> {
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    for (role, buffer, offset, format) in [
        ("parameters", &ext.param, ext.param_offset, storage.param),
        ("gradients", &ext.grad, ext.grad_offset, storage.grad),
    ] {
        let bad = |problem: String| Error::BadBuffer {
            role,
            tensor,
            problem,
        };
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(bad(format!(
                "lacks BufferUsages::STORAGE (it has {:?})",
                buffer.usage()
            )));
        }
        if offset % align != 0 {
            return Err(bad(format!(
                "starts at byte {offset}, not a multiple of the device's \
                 min_storage_buffer_offset_alignment ({align})"
            )));
        }
        if format != Format::F32 && !ext.len.is_multiple_of(2) {
            return Err(bad(format!(
                "holds {} {} values: a 16-bit tensor bound in place needs an even length (an odd \
                 one ends inside a 4-byte word, where no storage binding can end)",
                ext.len,
                format.name()
            )));
        }
        let end = offset + ext.len * format.bytes();
        if end > buffer.size() {
            return Err(bad(format!(
                "holds {} bytes, fewer than the {} elements from byte {offset} need ({end})",
                buffer.size(),
                ext.len
            )));
        }
    }
    if ext.len == 0 {
        return Err(Error::Empty(format!(
            "external tensor {tensor} has no elements"
        )));
    }
    if ext.param == ext.grad {
        let (p, g) = (ext.param_offset, ext.grad_offset);
        let (p_bytes, g_bytes) = (
            ext.len * storage.param.bytes(),
            ext.len * storage.grad.bytes(),
        );
        if p < g + g_bytes && g < p + p_bytes {
            return Err(Error::BadBuffer {
                role: "gradients",
                tensor,
                problem: "overlaps the parameters in the same buffer".into(),
            });
        }
    }
    Ok(())
}

/// One new buffer of `elems` elements per state the configuration keeps, `None` for the
/// others; `label` names a buffer from its state's name.
fn state_views(
    ctx: &GpuContext,
    spec: &GroupSpec,
    elems: u64,
    label: &dyn Fn(&str) -> String,
) -> Vec<Option<View>> {
    spec.config
        .kernel()
        .state_names()
        .zip(spec.config.initial_states())
        .map(|(name, keep)| {
            keep.map(|_| create_view(ctx, &label(name), elems, spec.storage.state_format(name)))
        })
        .collect()
}

/// The arena's segments: new parameter, gradient and state buffers, one of each per segment of
/// `layout`.
fn arena_segments(ctx: &GpuContext, spec: &GroupSpec, layout: &ArenaLayout) -> Vec<Segment> {
    let kernel = spec.config.kernel();
    let storage = &spec.storage;
    layout
        .segments
        .iter()
        .enumerate()
        .map(|(s, range)| {
            let elems = range.end - range.start;
            let label = |role: &str| format!("{} {role} segment {s}", kernel.name);
            Segment {
                element: Element::Vec4,
                param: create_view(ctx, &label("param"), elems, storage.updated_param()),
                model_param: storage
                    .master_weights
                    .then(|| create_view(ctx, &label("model param"), elems, storage.param)),
                compensation: storage
                    .kahan()
                    .then(|| create_view(ctx, &label("compensation"), elems, storage.param)),
                grad: create_view(ctx, &label("grad"), elems, storage.grad),
                states: state_views(ctx, spec, elems, &label),
                bind_group: None,
                workgroups: (0, 0),
                external_tensor: None,
                first_index: range.start,
            }
        })
        .collect()
}

/// The kernel element an external tensor's segments use: whole vec4s where its length and
/// offsets allow 16-byte access; else vec4s with a masked tail where a role is packed (16-bit
/// or q8 values go four to an invocation); else one float32 per invocation.
fn external_element(ext: &ExternalTensor, storage: &Storage) -> Element {
    let aligned = ext.len.is_multiple_of(4)
        && ext.param_offset.is_multiple_of(16)
        && ext.grad_offset.is_multiple_of(16);
    if aligned {
        Element::Vec4
    } else if storage.packed() {
        Element::Vec4Tail
    } else {
        Element::F32
    }
}

/// Appends the segments of external tensor `ext` (`(index in the group, number in errors)`) to
/// `segments`: each within one binding, their boundaries keeping the binding offsets aligned,
/// the parameter and gradient views in the caller's buffers, the states new buffers of ours.
fn external_segments(
    ctx: &GpuContext,
    spec: &GroupSpec,
    ext: &ExternalTensor,
    (t, number): (usize, usize),
    segment_bytes: u64,
    segments: &mut Vec<Segment>,
    position: u64,
) -> TensorPlace {
    let element = external_element(ext, &spec.storage);
    // Pieces whose boundaries keep every role's binding offsets aligned.
    let align = (ctx.limits.min_storage_buffer_offset_alignment as u64).max(16);
    let mut piece_elems = (segment_bytes / align * align / 4).max(align / 4);
    if spec.storage.q8() {
        // Whole q8 blocks per piece (256 elements: a multiple of every alignment above).
        piece_elems = (piece_elems / q8::BLOCK * q8::BLOCK).max(q8::BLOCK);
    }
    if spec.config.kernel().tensor_sums {
        // Whole workgroups per piece: no workgroup holds two tensors.
        piece_elems = (piece_elems / TENSOR_ALIGN * TENSOR_ALIGN).max(TENSOR_ALIGN);
    }
    let storage = &spec.storage;
    let label = |role: &str| format!("{} {role} of external tensor {number}", spec.config.name());
    let caller_view = |buffer: &wgpu::Buffer, offset: u64, len: u64, format: Format| View {
        buffer: buffer.clone(),
        offset,
        len,
        format,
    };
    let mut pieces = Vec::new();
    for first in (0..ext.len).step_by(piece_elems as usize) {
        let len = (ext.len - first).min(piece_elems);
        pieces.push(Piece {
            segment: segments.len(),
            segment_offset: 0,
            tensor_offset: first,
            len,
        });
        segments.push(Segment {
            element,
            param: if storage.master_weights {
                // The master is ours; the caller's buffer is the model's copy.
                create_view(ctx, &label("master param"), len, Format::F32)
            } else {
                let offset = ext.param_offset + first * storage.param.bytes();
                caller_view(&ext.param, offset, len, storage.param)
            },
            model_param: storage.master_weights.then(|| {
                let offset = ext.param_offset + first * storage.param.bytes();
                caller_view(&ext.param, offset, len, storage.param)
            }),
            compensation: storage
                .kahan()
                .then(|| create_view(ctx, &label("compensation"), len, storage.param)),
            grad: caller_view(
                &ext.grad,
                ext.grad_offset + first * storage.grad.bytes(),
                len,
                storage.grad,
            ),
            states: state_views(ctx, spec, len, &label),
            bind_group: None,
            workgroups: (0, 0),
            external_tensor: Some(t),
            first_index: position + first,
        });
    }
    TensorPlace {
        len: ext.len,
        position,
        pieces,
        external: true,
    }
}

/// One pipeline per element type the segments use, with the configuration's flags.
fn compile_pipelines(
    ctx: &GpuContext,
    spec: &GroupSpec,
    segments: &[Segment],
    scalars_via: ScalarsVia,
) -> Vec<(Element, wgpu::ComputePipeline)> {
    let config = &spec.config;
    let mut elements: Vec<Element> = Vec::new();
    for segment in segments {
        if !elements.contains(&segment.element) {
            elements.push(segment.element);
        }
    }
    let mut flags = config.flags();
    flags.extend(spec.options.kernel_flags());
    elements
        .into_iter()
        .map(|e| {
            let pipeline = ctx.kernels.pipeline(
                &ctx.device,
                config.kernel(),
                "main",
                e,
                scalars_via,
                spec.storage,
                &flags,
            );
            (e, pipeline)
        })
        .collect()
}

impl Group {
    /// Allocates the group's arenas and state buffers, lays out its tensors and builds one bind
    /// group per segment. `first_tensor` numbers the group's tensors in errors.
    pub fn new(
        ctx: &GpuContext,
        spec: GroupSpec,
        inits: &[TensorInit],
        first_tensor: usize,
        sizes: GroupSizes,
        placeholders: &[wgpu::Buffer],
    ) -> Result<Self> {
        let GroupSizes {
            segment_bytes,
            factor_window_rows,
        } = sizes;
        spec.options.validate()?;
        for (t, init) in inits.iter().enumerate() {
            if let TensorInit::External(ext) = init {
                check_external(ctx, first_tensor + t, ext, &spec.storage)?;
            }
        }
        // Segments hold as many elements as the widest role's buffers allow.
        let widest = spec.storage.widest_bytes();
        // The arena: every tensor that is not external, flat, cut into segments.
        let arena_lens: Vec<u64> = inits
            .iter()
            .map(|i| match i {
                TensorInit::External(_) => 0,
                other => other.len(),
            })
            .collect();
        // Tensors start at whole q8 blocks, or whole workgroups for per-tensor sums.
        let align = if spec.config.kernel().tensor_sums {
            spec.storage.align_elems().max(TENSOR_ALIGN)
        } else {
            spec.storage.align_elems()
        };
        let layout = ArenaLayout::new(&arena_lens, segment_bytes / widest, align);
        let mut segments = arena_segments(ctx, &spec, &layout);
        // Then each external tensor's own segments, in the order of the tensors; their
        // elements are numbered after the arena's.
        let mut next_external = layout.segments.last().map_or(0, |s| s.end);
        let tensors: Vec<TensorPlace> = inits
            .iter()
            .enumerate()
            .map(|(t, init)| match init {
                TensorInit::External(ext) => {
                    let numbered = (t, first_tensor + t);
                    let position = next_external;
                    next_external += ext.len;
                    external_segments(
                        ctx,
                        &spec,
                        ext,
                        numbered,
                        segment_bytes,
                        &mut segments,
                        position,
                    )
                }
                other => TensorPlace {
                    len: other.len(),
                    position: layout.offsets[t],
                    pieces: layout.pieces(t, 0..other.len()),
                    external: false,
                },
            })
            .collect();
        let scalars_via = ctx.scalars_via();
        let uniform = (scalars_via == ScalarsVia::UniformBuffer).then(|| {
            let kernel = spec.config.kernel();
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{} uniform", kernel.name)),
                size: kernel.scalars.size as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let qmaps = spec.storage.q8().then(|| {
            let maps = q8::uniform_words(ctx.kernel_target().q8_lookups);
            let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("q8 maps"),
                size: (maps.len() * 4) as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue
                .write_buffer(&buffer, 0, bytemuck::cast_slice(maps));
            buffer
        });
        let pipelines = compile_pipelines(ctx, &spec, &segments, scalars_via);
        let max_per_dim = ctx.limits.max_compute_workgroups_per_dimension;
        for segment in &mut segments {
            segment.workgroups = workgroups_for(
                segment.param.len.div_ceil(segment.element.width()),
                max_per_dim,
            );
        }
        let tensor_sums = spec
            .config
            .kernel()
            .tensor_sums
            .then(|| TensorSums::new(ctx, &segments, &tensors))
            .transpose()?;
        let GroupSpec {
            config,
            options,
            storage,
        } = spec;
        let mut control = Control::new(ctx, &segments, &config, &storage, factor_window_rows);
        control.apply(ctx, &options);
        control.write_state(ctx, &initial_state(&options));
        let mut group = Self {
            config,
            storage,
            options,
            iterations: 0,
            eval_mode: false,
            control,
            placeholders: placeholders.to_vec(),
            scalars_via,
            uniform,
            qmaps,
            segments,
            tensors,
            pipelines,
            tensor_sums,
        };
        let all: Vec<usize> = (0..group.segments.len()).collect();
        group.bind_segments(ctx, first_tensor, &all)?;
        Ok(group)
    }

    /// (Re)creates the bind groups of segments `which`. A caller's buffer from another device is
    /// caught here, as an error, not a panic.
    fn bind_segments(
        &mut self,
        ctx: &GpuContext,
        first_tensor: usize,
        which: &[usize],
    ) -> Result<()> {
        let kernel = self.config.kernel();
        let bind_layout = ctx
            .kernels
            .layout(&ctx.device, kernel, self.scalars_via, &self.storage);
        for &s in which {
            let segment = &mut self.segments[s];
            // With stochastic rounding, the index of the segment's first element (a u32: the
            // hash takes indices modulo 2^32), and with per-tensor sums the number of its first
            // workgroup, in a small uniform the bind group keeps alive.
            let first_workgroup = self
                .tensor_sums
                .as_ref()
                .map_or(0, |sums| sums.first_workgroup[s]);
            let segment_info =
                (self.storage.stochastic() || self.tensor_sums.is_some()).then(|| {
                    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("segment info"),
                        size: 16,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    let words = [segment.first_index as u32, first_workgroup, 0, 0];
                    ctx.queue
                        .write_buffer(&buffer, 0, bytemuck::cast_slice(&words));
                    buffer
                });
            let mut entries = Vec::new();
            if let Some(info) = &segment_info {
                entries.push(wgpu::BindGroupEntry {
                    binding: crate::kernels::SEGMENT_INFO_BINDING,
                    resource: info.as_entire_binding(),
                });
            }
            if let Some(uniform) = &self.uniform {
                entries.push(wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                });
            }
            if let Some(qmaps) = &self.qmaps {
                entries.push(wgpu::BindGroupEntry {
                    binding: crate::kernels::QMAP_BINDING,
                    resource: qmaps.as_entire_binding(),
                });
            }
            // Our buffers are bound as whole vec4s; the caller's as they are.
            let param_is_callers =
                segment.external_tensor.is_some() && !self.storage.master_weights;
            entries.extend([
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: if param_is_callers {
                        segment.param.binding()
                    } else {
                        segment.param.padded_binding()
                    },
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: segment.grad.binding(),
                },
                wgpu::BindGroupEntry {
                    binding: crate::kernels::CONTROL_BINDING,
                    resource: self.control.buffer.as_entire_binding(),
                },
            ]);
            if let Some(compensation) = &segment.compensation {
                entries.push(wgpu::BindGroupEntry {
                    binding: crate::kernels::COMPENSATION_BINDING,
                    resource: compensation.padded_binding(),
                });
            }
            if let Some(model_param) = &segment.model_param {
                entries.push(wgpu::BindGroupEntry {
                    binding: crate::kernels::MODEL_COPY_BINDING,
                    resource: model_param.binding(),
                });
            }
            if let Some(sums) = &self.tensor_sums {
                entries.extend(sums.entries());
            }
            for (slot, state) in segment.states.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: crate::kernels::FIRST_STATE_BINDING + slot as u32,
                    resource: state.as_ref().map_or_else(
                        || self.placeholders[slot].as_entire_binding(),
                        View::padded_binding,
                    ),
                });
            }
            let scope = GpuErrorScope::push(&ctx.device);
            segment.bind_group = Some(ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&format!("{} segment {s}", kernel.name)),
                layout: &bind_layout,
                entries: &entries,
            }));
            scope
                .pop("a bind group")
                .map_err(|e| match (e, segment.external_tensor) {
                    (Error::Gpu(message), Some(t)) => Error::BadBuffer {
                        role: "parameters or gradients",
                        tensor: first_tensor + t,
                        problem: format!("cannot be bound: {message}"),
                    },
                    (other, _) => other,
                })?;
        }
        Ok(())
    }

    /// Points external tensor `t` (group-local; `number` names it in errors, `first_tensor` is
    /// the group's first [`TensorId`]) at other buffers of the caller's: the same length, the
    /// same kernel (vec4 or scalar, from the offsets), checked first; nothing changes on an
    /// error.
    pub fn rebind_external(
        &mut self,
        ctx: &GpuContext,
        (t, number): (usize, usize),
        first_tensor: usize,
        ext: &ExternalTensor,
    ) -> Result<()> {
        let place = &self.tensors[t];
        if !place.external {
            return Err(Error::BadBuffer {
                role: "parameters and gradients",
                tensor: number,
                problem: "belong to the optimizer's own arena: only a caller's tensor can be \
                          rebound"
                    .into(),
            });
        }
        if ext.len != place.len {
            return Err(Error::LengthMismatch {
                what: "the new buffers' tensor",
                tensor: number,
                expected: place.len,
                got: ext.len,
            });
        }
        check_external(ctx, number, ext, &self.storage)?;
        let element = external_element(ext, &self.storage);
        let pieces = place.pieces.clone();
        if pieces
            .iter()
            .any(|p| self.segments[p.segment].element != element)
        {
            return Err(Error::BadBuffer {
                role: "parameters or gradients",
                tensor: number,
                problem: format!(
                    "start at bytes {} and {}: the tensor was bound with {} offsets, and the \
                     kernel (whole vec4s or not) follows them; rebind at offsets of the same \
                     alignment (multiples of 16 for whole vec4s)",
                    ext.param_offset,
                    ext.grad_offset,
                    if element == Element::Vec4 {
                        "unaligned"
                    } else {
                        "16-byte-aligned"
                    }
                ),
            });
        }
        let storage = self.storage;
        let view = |buffer: &wgpu::Buffer, offset: u64, len: u64, format: Format| View {
            buffer: buffer.clone(),
            offset,
            len,
            format,
        };
        let mut old = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            let segment = &mut self.segments[piece.segment];
            old.push((
                segment.param.clone(),
                segment.model_param.clone(),
                segment.grad.clone(),
            ));
            let param = view(
                &ext.param,
                ext.param_offset + piece.tensor_offset * storage.param.bytes(),
                piece.len,
                storage.param,
            );
            if storage.master_weights {
                segment.model_param = Some(param);
            } else {
                segment.param = param;
            }
            segment.grad = view(
                &ext.grad,
                ext.grad_offset + piece.tensor_offset * storage.grad.bytes(),
                piece.len,
                storage.grad,
            );
        }
        // Only this tensor's segments: a framework rebinds every tensor each step.
        let touched: Vec<usize> = pieces.iter().map(|p| p.segment).collect();
        if let Err(e) = self.bind_segments(ctx, first_tensor, &touched) {
            for (piece, (param, model_param, grad)) in pieces.iter().zip(old) {
                let segment = &mut self.segments[piece.segment];
                (segment.param, segment.model_param, segment.grad) = (param, model_param, grad);
            }
            self.bind_segments(ctx, first_tensor, &touched)?;
            return Err(e);
        }
        self.control
            .rebind_norm(ctx, &self.segments, &self.storage, &touched);
        Ok(())
    }

    /// Takes a new configuration of the same optimizer and states: new pipelines (cached) and
    /// new step factors (new betas), from the next step on.
    pub fn reconfigure(&mut self, ctx: &GpuContext, config: OptimizerConfig) -> Result<()> {
        self.config = config;
        self.refresh_pipelines(ctx);
        self.control.config_changed();
        Ok(())
    }

    /// Uploads the initial parameters and sets every state to its starting value.
    pub fn initialize(&self, ctx: &GpuContext, inits: &[TensorInit]) -> Result<()> {
        for (t, init) in inits.iter().enumerate() {
            let len = init.len();
            match init {
                TensorInit::Values(values) => {
                    let spans = self.spans(Role::Param, t, 0..len)?;
                    transfer::write(ctx, &spans, values)?;
                    if self.storage.master_weights {
                        // The master starts as the stored parameters (rounded as stored).
                        let stored = transfer::read(ctx, &spans)?;
                        transfer::write(ctx, &self.spans(Role::Master, t, 0..len)?, &stored)?;
                    }
                }
                TensorInit::External(_) if self.storage.master_weights => {
                    let stored = transfer::read(ctx, &self.spans(Role::Param, t, 0..len)?)?;
                    transfer::write(ctx, &self.spans(Role::Master, t, 0..len)?, &stored)?;
                }
                _ => {}
            }
        }
        // Fresh buffers are zeroed by wgpu (q8: code 0 with absmax 0, which is 0); only non-zero
        // starting states need writing.
        for (slot, init) in self.config.initial_states().into_iter().enumerate() {
            if let Some(value) = init.filter(|v| *v != 0.0) {
                let name = self.config.kernel().states[slot].name;
                if self.storage.state_format(name) == Format::Q8 {
                    for (t, place) in self.tensors.iter().enumerate() {
                        let values = vec![value as f32; place.len as usize];
                        self.q8_write(ctx, slot, t, &values)?;
                    }
                    continue;
                }
                let spans: Vec<View> = self
                    .segments
                    .iter()
                    .filter_map(|s| s.states[slot].clone())
                    .collect();
                transfer::fill(ctx, &spans, value as f32)?;
            }
        }
        Ok(())
    }

    /// The state slot a name refers to, if this configuration keeps it.
    fn slot(&self, name: &str) -> Result<usize> {
        let kernel = self.config.kernel();
        kernel
            .state_names()
            .position(|s| s == name)
            .filter(|&slot| self.config.initial_states()[slot].is_some())
            .ok_or_else(|| Error::UnknownState {
                optimizer: self.config.name(),
                name: name.to_string(),
                available: self.state_names().join(", "),
            })
    }

    /// Where elements `range` of local tensor `tensor` lie for `role`.
    pub fn spans(&self, role: Role, tensor: usize, range: Range<u64>) -> Result<Vec<View>> {
        let slot = match role {
            Role::State(name) => Some(self.slot(name)?),
            Role::Master if !self.storage.master_weights => {
                return Err(Error::InvalidConfig {
                    optimizer: self.config.name(),
                    reason: "this group keeps no master weights (Role::Master)".into(),
                });
            }
            Role::Compensation if !self.storage.kahan() => {
                return Err(Error::InvalidConfig {
                    optimizer: self.config.name(),
                    reason: "this group keeps no Kahan compensation (Role::Compensation)".into(),
                });
            }
            _ => None,
        };
        let place = &self.tensors[tensor];
        Ok(place
            .pieces
            .iter()
            .filter_map(|p| {
                // Clip the piece to the requested range of the tensor.
                let start = p.tensor_offset.max(range.start);
                let end = (p.tensor_offset + p.len).min(range.end);
                (start < end).then(|| {
                    let first = p.segment_offset + start - p.tensor_offset;
                    self.segments[p.segment]
                        .view(role, slot)
                        .part(first, end - start)
                })
            })
            .collect())
    }

    /// The q8 state slot a role names: `Some` for a kept state stored as q8, `None` for every
    /// other role (whose values move through [`spans`](Self::spans)).
    pub fn q8_slot(&self, role: Role) -> Result<Option<usize>> {
        match role {
            Role::State(name) if self.storage.state_format(name) == Format::Q8 => {
                Ok(Some(self.slot(name)?))
            }
            _ => Ok(None),
        }
    }

    /// Where a tensor's q8 state lies, piece by piece: `(codes, absmax, tensor_offset, len)`,
    /// the codes (padded to the end of the last block within the segment) and the absmax of
    /// each block as raw words.
    fn q8_pieces(&self, slot: usize, tensor: usize) -> Vec<(View, View, u64, u64)> {
        self.tensors[tensor]
            .pieces
            .iter()
            .map(|p| {
                let state = self.segments[p.segment].states[slot]
                    .as_ref()
                    .expect("q8 slot kept");
                let first = p.segment_offset;
                debug_assert!(first.is_multiple_of(q8::BLOCK));
                let padded = p.len.next_multiple_of(q8::BLOCK).min(state.len - first);
                let codes = state.words(first, padded.div_ceil(4));
                let absmax_at = state.len.next_multiple_of(4) + 4 * (first / q8::BLOCK);
                let absmax = state.words(absmax_at, padded.div_ceil(q8::BLOCK));
                (codes, absmax, p.tensor_offset, p.len)
            })
            .collect()
    }

    /// A tensor's q8 state as stored: one code per element and one absmax per block.
    pub fn q8_read_raw(
        &self,
        ctx: &GpuContext,
        slot: usize,
        tensor: usize,
    ) -> Result<(Vec<u8>, Vec<f32>)> {
        let mut codes = Vec::new();
        let mut absmax = Vec::new();
        for (code_words, absmax_words, _, len) in self.q8_pieces(slot, tensor) {
            let words = transfer::read(ctx, &[code_words])?;
            codes.extend_from_slice(&bytemuck::cast_slice::<f32, u8>(&words)[..len as usize]);
            absmax.extend(transfer::read(ctx, &[absmax_words])?);
        }
        Ok((codes, absmax))
    }

    /// Elements `range` of a tensor's q8 state, dequantized (reads the blocks around them).
    pub fn q8_read(
        &self,
        ctx: &GpuContext,
        slot: usize,
        tensor: usize,
        range: Range<u64>,
    ) -> Result<Vec<f32>> {
        let map = self.config.kernel().states[slot].q8_map;
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for (code_words, absmax_words, tensor_offset, len) in self.q8_pieces(slot, tensor) {
            let start = range.start.max(tensor_offset);
            let end = range.end.min(tensor_offset + len);
            if start >= end {
                continue;
            }
            // The blocks that hold elements start..end of the piece.
            let first_block = (start - tensor_offset) / q8::BLOCK;
            let last_block = (end - tensor_offset).div_ceil(q8::BLOCK);
            let words_per_block = q8::BLOCK / 4;
            let block_words = code_words.words(
                4 * first_block * words_per_block,
                ((last_block * words_per_block).min(code_words.len))
                    - first_block * words_per_block,
            );
            let block_absmax = absmax_words.words(4 * first_block, last_block - first_block);
            let words = transfer::read(ctx, &[block_words])?;
            let codes: &[u8] = bytemuck::cast_slice(&words);
            let absmax = transfer::read(ctx, &[block_absmax])?;
            let base = tensor_offset + first_block * q8::BLOCK;
            out.extend((start..end).map(|j| {
                let k = (j - base) as usize;
                q8::dequantize(codes[k], absmax[k / q8::BLOCK as usize], map)
            }));
        }
        Ok(out)
    }

    /// Replaces a tensor's q8 state by its stored form: `codes` (one per element) and
    /// `absmax` (one per block). The padding after the tensor's last element gets the code of 0.
    pub fn q8_write_raw(
        &self,
        ctx: &GpuContext,
        slot: usize,
        tensor: usize,
        codes: &[u8],
        absmax: &[f32],
    ) -> Result<()> {
        let zero = self.config.kernel().states[slot].q8_map.zero_code();
        for (code_words, absmax_words, tensor_offset, len) in self.q8_pieces(slot, tensor) {
            let mut bytes = vec![zero; (code_words.len * 4) as usize];
            let at = tensor_offset as usize;
            bytes[..len as usize].copy_from_slice(&codes[at..at + len as usize]);
            let words: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|w| f32::from_bits(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            transfer::write(ctx, &[code_words], &words)?;
            let first_block = at / q8::BLOCK as usize;
            let blocks = absmax_words.len as usize;
            transfer::write(
                ctx,
                &[absmax_words],
                &absmax[first_block..first_block + blocks],
            )?;
        }
        Ok(())
    }

    /// Replaces a tensor's whole q8 state: quantized block by block.
    pub fn q8_write(
        &self,
        ctx: &GpuContext,
        slot: usize,
        tensor: usize,
        values: &[f32],
    ) -> Result<()> {
        let encoding = self.storage.q8_encoding(&self.config.kernel().states[slot]);
        let (codes, absmax) = q8::quantize(values, encoding);
        self.q8_write_raw(ctx, slot, tensor, &codes, &absmax)
    }

    /// Names of the states this group keeps.
    pub fn state_names(&self) -> Vec<&'static str> {
        self.config.state_names()
    }

    /// Recompiles (or fetches from the cache) the pipelines after a change of configuration or
    /// of training options (which set [`TRAINING_FLAGS`](crate::kernels::TRAINING_FLAGS)).
    pub fn refresh_pipelines(&mut self, ctx: &GpuContext) {
        let kernel = self.config.kernel();
        let mut flags = self.config.flags();
        flags.extend(self.options.kernel_flags());
        for (element, pipeline) in &mut self.pipelines {
            *pipeline = ctx.kernels.pipeline(
                &ctx.device,
                kernel,
                "main",
                *element,
                self.scalars_via,
                self.storage,
                &flags,
            );
        }
    }

    /// The learning rate of the next step: the schedule's for this iteration, else the base.
    pub fn next_lr(&self) -> f64 {
        let base = self.config.lr();
        self.options
            .schedule
            .as_ref()
            .map_or(base, |s| s.lr(base, self.iterations))
    }

    /// Records the swap of the parameters to evaluation mode (`to_eval`) or back: the
    /// optimizer's kernel with its `SWAP` flag on, once over every segment, the step control
    /// only read (no step is taken, the step count does not move).
    pub fn encode_swap(
        &mut self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        swap: &ModeSwap,
        to_eval: bool,
    ) {
        // The swap reads no gradient and is never skipped.
        let flags: Vec<(&'static str, bool)> = self
            .config
            .flags()
            .into_iter()
            .map(|(flag, on)| (flag, on || flag == "SWAP"))
            .chain(crate::kernels::TRAINING_FLAGS.iter().map(|f| (*f, false)))
            .collect();
        if let Some(uniform) = &self.uniform {
            ctx.queue.write_buffer(uniform, 0, &swap.scalars);
        }
        self.dispatch_variant(ctx, pass, &flags, &swap.scalars);
        self.eval_mode = to_eval;
    }

    /// Records the kernel's `main` with other flag values (a phase, the mode swap) over every
    /// segment, its pipelines fetched from the cache.
    fn dispatch_variant(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass,
        flags: &[(&'static str, bool)],
        scalars: &[u8],
    ) {
        for (element, _) in &self.pipelines {
            let pipeline = ctx.kernels.pipeline(
                &ctx.device,
                self.config.kernel(),
                "main",
                *element,
                self.scalars_via,
                self.storage,
                flags,
            );
            self.dispatch_segments(pass, &pipeline, *element, scalars);
        }
    }

    /// Records `pipeline` over every segment of element type `element`.
    fn dispatch_segments(
        &self,
        pass: &mut wgpu::ComputePass,
        pipeline: &wgpu::ComputePipeline,
        element: Element,
        scalars: &[u8],
    ) {
        pass.set_pipeline(pipeline);
        if self.uniform.is_none() {
            pass.set_immediates(0, scalars);
        }
        for segment in self.segments.iter().filter(|s| s.element == element) {
            let (x, y) = segment.workgroups;
            pass.set_bind_group(0, segment.bind_group.as_ref(), &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
    }

    /// Dispatches one step of this group records besides the control's: one per segment for
    /// the update and for each phase, and one to finalize per-tensor sums.
    pub fn update_dispatches(&self) -> usize {
        let kernel = self.config.kernel();
        self.segments.len() * (1 + kernel.phases.len()) + usize::from(kernel.tensor_sums)
    }

    /// Records one step of this group: the control's dispatches, then one update dispatch per
    /// segment at the next learning rate (after the rule's phases, if it has any).
    pub fn encode(&mut self, ctx: &GpuContext, pass: &mut wgpu::ComputePass) {
        let scalars = self.config.scalars(self.next_lr());
        let can_skip = self.options.can_skip();
        self.control.prepare_step(ctx, &self.config, can_skip);
        self.iterations += 1;
        self.control.encode(pass);
        self.control.step_recorded(can_skip);
        if let Some(uniform) = &self.uniform {
            // Lands before the next submit's commands: one step per submit on this path.
            ctx.queue.write_buffer(uniform, 0, &scalars);
        }
        let kernel = self.config.kernel();
        if !kernel.phases.is_empty() || kernel.tensor_sums {
            let mut flags = self.config.flags();
            flags.extend(self.options.kernel_flags());
            // Each phase over every segment, its flag on (and the others off).
            for phase in kernel.phases {
                let phase_flags: Vec<(&'static str, bool)> = flags
                    .iter()
                    .map(|&(flag, on)| {
                        (
                            flag,
                            if kernel.phases.contains(&flag) {
                                flag == *phase
                            } else {
                                on
                            },
                        )
                    })
                    .collect();
                self.dispatch_variant(ctx, pass, &phase_flags, &scalars);
            }
            if let Some(sums) = &self.tensor_sums {
                // Each tensor's sums from its workgroups' (any segment's bind group binds them).
                let element = self.pipelines[0].0;
                let pipeline = ctx.kernels.pipeline(
                    &ctx.device,
                    kernel,
                    "finalize_tensors",
                    element,
                    self.scalars_via,
                    self.storage,
                    &flags,
                );
                pass.set_pipeline(&pipeline);
                if self.uniform.is_none() {
                    pass.set_immediates(0, &scalars);
                }
                pass.set_bind_group(0, self.segments[0].bind_group.as_ref(), &[]);
                pass.dispatch_workgroups(sums.finalize_workgroups(), 1, 1);
            }
        }
        for (element, pipeline) in &self.pipelines {
            self.dispatch_segments(pass, pipeline, *element, &scalars);
        }
    }
}
