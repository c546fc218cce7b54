//! Checkpoints: an optimizer's whole state in one safetensors file (or the same bytes in
//! memory), from which a run resumes bit for bit as if it had never stopped.
//!
//! The file holds, per group, the step control (`group{g}.control`: the bytes of
//! [`StepControl`]: step count, loss scale, growth tracker, ...) and, per tensor, its
//! parameters (`tensor{t}.param`) and every optimizer state (`tensor{t}.exp_avg`, ...), float32.
//! Its metadata (`wgpu-optim` key, JSON) holds each group's hyperparameters, training options
//! (clipping, loss scaler, schedule), iteration count and tensor lengths, and the segment size
//! the arenas were cut with.
//!
//! A checkpoint is untrusted input. Loading first checks the bytes on their own (a complete
//! safetensors file; metadata that parses, valid hyperparameters and options, every declared
//! tensor present with the declared dtype and length, nothing else; a plausible step control),
//! then against the optimizer (groups, optimizers, states, tensor lengths), and writes nothing
//! unless all of it holds. Nothing is allocated before the bytes are known to hold the data it
//! is for: every size is checked with checked arithmetic against the input's length.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::control::{StepControl, TrainingOptions};
use super::{GroupId, Optimizer, Role, TensorId, TensorInit, check_usage};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::optim::{Hyperparameters, OptimizerConfig, UpdateRule};
use crate::storage::{Format, Storage, q8};

/// The metadata key and the version of the layout.
const METADATA_KEY: &str = "wgpu-optim";
const FORMAT: &str = "wgpu-optim-checkpoint/1";

/// What errors about in-memory checkpoints name instead of a path.
const MEMORY: &str = "<memory>";

/// The smallest segment size [`Optimizer::from_checkpoint`] accepts from a file: smaller ones
/// would make the number of GPU objects (several per segment) out of proportion to the data.
const MIN_CHECKPOINT_SEGMENT_BYTES: u64 = 1024;

/// The longest error reason; what a file says is quoted, escaped and cut to fit.
const MAX_REASON_CHARS: usize = 400;

/// What the metadata says of the whole optimizer.
#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    groups: Vec<GroupRecord>,
    /// The size of the arenas' segments, when some group's arena has more than one (the
    /// layout, and so the order in which a clipping norm is summed, depends on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segment_bytes: Option<u64>,
}

/// What the metadata says of one group.
#[derive(Serialize, Deserialize)]
struct GroupRecord {
    config: OptimizerConfig,
    /// How the group stored its values; each tensor is saved in its own format (with master
    /// weights, the float32 master stands for the parameters). Older files: float32.
    #[serde(default)]
    storage: Storage,
    options: TrainingOptions,
    iterations: u64,
    /// Length of each tensor of the group.
    tensors: Vec<u64>,
    /// The states every tensor of the group has in the file.
    states: Vec<String>,
}

/// A checkpoint whose bytes have been checked on their own: everything its metadata declares
/// is there, with the declared type and size.
struct Parsed<'a> {
    manifest: Manifest,
    /// One per group.
    controls: Vec<StepControl>,
    /// Per tensor, in [`TensorId`] order: the parameters, then each state of its group in the
    /// manifest's order, as the file's bytes (float32, little-endian).
    tensors: Vec<Vec<&'a [u8]>>,
}

/// A checkpoint being written: its tensors, by name, and its metadata.
struct Contents {
    blobs: Vec<(String, Blob)>,
    metadata: HashMap<String, String>,
}

/// One tensor of a checkpoint being written.
enum Blob {
    Control(StepControl),
    /// Values in a storage format, as its bytes.
    Stored(Format, Vec<u8>),
}

impl Blob {
    fn values(format: Format, values: &[f32]) -> Self {
        Blob::Stored(format, format.encode(values))
    }
}

/// The safetensors type of a storage format.
fn dtype(format: Format) -> Dtype {
    match format {
        Format::F32 => Dtype::F32,
        Format::Bf16 => Dtype::BF16,
        Format::F16 => Dtype::F16,
        Format::Q8 => Dtype::U8,
    }
}

/// The name of a q8 state's absmax (one float32 per block) beside its codes.
fn absmax_name(state: &str) -> String {
    format!("{state}.absmax")
}

/// The format a group saves its parameters in: the master's with master weights.
fn saved_param_format(storage: &Storage) -> Format {
    storage.updated_param()
}

/// The name of a tensor's Kahan compensation in the file.
const COMPENSATION: &str = "param_compensation";

fn control_name(group: usize) -> String {
    format!("group{group}.control")
}

fn tensor_name(tensor: usize, role: &str) -> String {
    format!("tensor{tensor}.{role}")
}

impl Optimizer {
    /// The whole optimizer state as the bytes of a checkpoint (a safetensors file; waits for the
    /// GPU): what [`save_checkpoint`](Self::save_checkpoint) writes. Parameters are saved too
    /// (caller-owned ones need `COPY_SRC`), so that loading restores everything a step reads.
    pub fn save_checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let Contents { blobs, metadata } = self.checkpoint_contents()?;
        safetensors::serialize(views(&blobs, MEMORY)?, Some(metadata))
            .map_err(|e| checkpoint_error(MEMORY, format!("building the file: {e}")))
    }

    /// Writes the whole optimizer state to `path` (waits for the GPU): the bytes of
    /// [`save_checkpoint_bytes`](Self::save_checkpoint_bytes), streamed to the file.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let origin = path.as_ref().display().to_string();
        let Contents { blobs, metadata } = self.checkpoint_contents()?;
        safetensors::serialize_to_file(views(&blobs, &origin)?, Some(metadata), path.as_ref())
            .map_err(|e| checkpoint_error(&origin, format!("writing: {e}")))
    }

    /// Restores the whole optimizer state from the bytes of a checkpoint, as
    /// [`load_checkpoint`](Self::load_checkpoint) does from a file.
    ///
    /// Like PyTorch's `Optimizer.load_state_dict`, which restores the param groups' settings
    /// along with the state, this **replaces every group's hyperparameters** (learning rate,
    /// betas, weight decay, ...) **and training options** (clipping, loss scaler, schedule,
    /// `skip_nonfinite`) with the saved ones, besides the step counts, iteration counts, loss
    /// scales, parameters and every state. Change them after loading to resume with others.
    ///
    /// The optimizer must have the same groups, optimizers, states and tensor lengths as the
    /// one saved. The bytes are untrusted: anything wrong with them (truncated, corrupted,
    /// another optimizer's, nonsense values) is an [`Error::Checkpoint`] naming `<memory>`,
    /// and then nothing is changed. (A caller-owned parameter buffer without `COPY_DST` is an
    /// [`Error::BadBuffer`], also before anything is written; only a failure of the device
    /// itself while writing can leave a load half done.)
    pub fn load_checkpoint_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.load_from(MEMORY, bytes)
    }

    /// Restores the whole optimizer state from `path` (a file that
    /// [`save_checkpoint`](Self::save_checkpoint) wrote).
    ///
    /// Like PyTorch's `Optimizer.load_state_dict`, this **replaces every group's
    /// hyperparameters and training options** with the saved ones, besides the step counts,
    /// iteration counts, loss scales, parameters and every state: see
    /// [`load_checkpoint_bytes`](Self::load_checkpoint_bytes). If the file cannot be read,
    /// is not a checkpoint, is damaged or does not fit this optimizer, the error
    /// ([`Error::Checkpoint`], naming the path) says why and nothing is changed.
    pub fn load_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let origin = path.as_ref().display().to_string();
        let bytes = std::fs::read(path.as_ref()).map_err(|e| checkpoint_error(&origin, e))?;
        self.load_from(&origin, &bytes)
    }

    /// Builds an optimizer from the bytes of a checkpoint alone: one group per saved group,
    /// with the saved hyperparameters and training options, and tensors of the saved lengths
    /// in the optimizer's own arenas (cut into segments of the saved size), then loads
    /// everything, so that stepping it continues exactly (bit for bit) where the saved one
    /// stood. Tensors that were caller-owned buffers come back as the optimizer's own (laid
    /// out in the arena, so a clipping norm over them may round differently).
    ///
    /// The bytes are untrusted: they are checked in full (every tensor the metadata declares
    /// must be there, with its data) before any GPU buffer is allocated. A checkpoint whose
    /// arenas were cut into segments smaller than 1 KiB is refused (too many GPU objects):
    /// build such an optimizer yourself and [`load_checkpoint_bytes`](Self::load_checkpoint_bytes)
    /// into it.
    pub fn from_checkpoint(ctx: &GpuContext, bytes: &[u8]) -> Result<Self> {
        Self::build_from(ctx, MEMORY, bytes)
    }

    /// [`from_checkpoint`](Self::from_checkpoint) with the bytes of a file.
    pub fn from_checkpoint_file(ctx: &GpuContext, path: impl AsRef<Path>) -> Result<Self> {
        let origin = path.as_ref().display().to_string();
        let bytes = std::fs::read(path.as_ref()).map_err(|e| checkpoint_error(&origin, e))?;
        Self::build_from(ctx, &origin, &bytes)
    }

    /// Reads everything back from the device: one blob per safetensors tensor, and the
    /// metadata.
    fn checkpoint_contents(&self) -> Result<Contents> {
        // A checkpoint holds the training point: a resume steps from it.
        self.check_train_mode("saving a checkpoint")?;
        let mut blobs = Vec::new();
        let mut groups = Vec::with_capacity(self.groups.len());
        let mut segment_bytes = None;
        for (g, group) in self.groups.iter().enumerate() {
            blobs.push((
                control_name(g),
                Blob::Control(self.read_control(GroupId(g))?),
            ));
            groups.push(GroupRecord {
                config: group.config.clone(),
                storage: group.storage,
                options: group.options.clone(),
                iterations: group.iterations,
                tensors: group.tensors.iter().map(|t| t.len).collect(),
                states: group.state_names().iter().map(|s| s.to_string()).collect(),
            });
            // Arena segments come first and all but the last have the layout's segment size.
            let arena: Vec<_> = group
                .segments
                .iter()
                .filter(|s| s.external_tensor.is_none())
                .collect();
            if arena.len() > 1 {
                segment_bytes =
                    segment_bytes.or(Some(arena[0].param.len * group.storage.widest_bytes()));
            }
        }
        for t in 0..self.tensors.len() {
            let tensor = TensorId(t);
            let (g, _) = self.locate(tensor)?;
            let storage = self.groups[g].storage;
            let param_role = if storage.master_weights {
                Role::Master
            } else {
                Role::Param
            };
            let param = self.read(tensor, param_role, 0..self.tensor_len(tensor)?)?;
            blobs.push((
                tensor_name(t, "param"),
                Blob::values(saved_param_format(&storage), &param),
            ));
            if storage.kahan() {
                let len = self.tensor_len(tensor)?;
                let compensation = self.read(tensor, Role::Compensation, 0..len)?;
                blobs.push((
                    tensor_name(t, COMPENSATION),
                    Blob::values(storage.param, &compensation),
                ));
            }
            for state in self.groups[g].state_names() {
                if let Some(slot) = self.groups[g].q8_slot(Role::State(state))? {
                    // Codes (U8) and absmax (F32) as stored: a resume is bit for bit.
                    let (_, local) = self.locate(tensor)?;
                    let (codes, absmax) = self.groups[g].q8_read_raw(&self.ctx, slot, local)?;
                    blobs.push((tensor_name(t, state), Blob::Stored(Format::Q8, codes)));
                    blobs.push((
                        tensor_name(t, &absmax_name(state)),
                        Blob::values(Format::F32, &absmax),
                    ));
                    continue;
                }
                blobs.push((
                    tensor_name(t, state),
                    Blob::values(
                        storage.state_format(state),
                        &self.read_state(tensor, state)?,
                    ),
                ));
            }
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            groups,
            segment_bytes,
        };
        let metadata = HashMap::from([(
            METADATA_KEY.to_string(),
            serde_json::to_string(&manifest).expect("the manifest serializes"),
        )]);
        Ok(Contents { blobs, metadata })
    }

    /// Loads a checkpoint's bytes into this optimizer; `origin` names them in errors.
    fn load_from(&mut self, origin: &str, bytes: &[u8]) -> Result<()> {
        let parsed = parse(bytes).map_err(|reason| checkpoint_error(origin, reason))?;
        self.check_fits(origin, &parsed.manifest)?;
        self.apply(&parsed)
    }

    /// Builds an optimizer of a checkpoint's shape and loads the checkpoint into it.
    fn build_from(ctx: &GpuContext, origin: &str, bytes: &[u8]) -> Result<Self> {
        // Every byte is checked before anything is allocated on the device.
        let parsed = parse(bytes).map_err(|reason| checkpoint_error(origin, reason))?;
        let mut builder = Optimizer::builder(ctx);
        if let Some(segment_bytes) = parsed.manifest.segment_bytes {
            if segment_bytes < MIN_CHECKPOINT_SEGMENT_BYTES {
                return Err(checkpoint_error(
                    origin,
                    format!(
                        "its arenas were cut into segments of {segment_bytes} bytes, fewer than \
                         the {MIN_CHECKPOINT_SEGMENT_BYTES} an optimizer built from a checkpoint \
                         may use: build one yourself and load the checkpoint into it"
                    ),
                ));
            }
            builder = builder.max_segment_bytes(segment_bytes);
        }
        for record in &parsed.manifest.groups {
            builder = builder.group_stored(
                record.config.clone(),
                record.storage,
                record.options.clone(),
                record.tensors.iter().map(|&len| TensorInit::Zeros(len)),
            );
        }
        let mut optimizer = builder.build()?;
        optimizer.check_fits(origin, &parsed.manifest)?;
        optimizer.apply(&parsed)?;
        Ok(optimizer)
    }

    /// The file's groups must be this optimizer's, in kind and size, and its parameters
    /// writable.
    fn check_fits(&self, origin: &str, manifest: &Manifest) -> Result<()> {
        let mismatch = |reason: String| checkpoint_error(origin, reason);
        if manifest.groups.len() != self.groups.len() {
            return Err(mismatch(format!(
                "{} parameter groups in the file, this optimizer has {}",
                manifest.groups.len(),
                self.groups.len()
            )));
        }
        for (g, (record, group)) in manifest.groups.iter().zip(&self.groups).enumerate() {
            if record.config.name() != group.config.name() {
                return Err(mismatch(format!(
                    "group {g} is {} in the file, {} here",
                    record.config.name(),
                    group.config.name()
                )));
            }
            let here = group.state_names();
            if record.states != here {
                return Err(mismatch(format!(
                    "group {g} keeps states [{}] in the file, [{}] here",
                    record.states.join(", "),
                    here.join(", ")
                )));
            }
            let lens: Vec<u64> = group.tensors.iter().map(|t| t.len).collect();
            if record.tensors != lens {
                return Err(mismatch(format!(
                    "group {g} has tensors of lengths {} in the file, {} here",
                    list(&record.tensors),
                    list(&lens)
                )));
            }
        }
        for t in 0..self.tensors.len() {
            let id = TensorId(t);
            let (g, local) = self.locate(id)?;
            let spans = self.groups[g].spans(Role::Param, local, 0..self.tensor_len(id)?)?;
            check_usage(&spans, id, Role::Param, wgpu::BufferUsages::COPY_DST)?;
        }
        Ok(())
    }

    /// Writes a checked checkpoint that fits this optimizer.
    fn apply(&mut self, parsed: &Parsed) -> Result<()> {
        for (g, (record, control)) in parsed
            .manifest
            .groups
            .iter()
            .zip(&parsed.controls)
            .enumerate()
        {
            let group = &mut self.groups[g];
            group.reconfigure(&self.ctx, record.config.clone())?;
            group.control.apply(&self.ctx, &record.options);
            group.control.write_state(&self.ctx, control);
            group.options = record.options.clone();
            group.refresh_pipelines(&self.ctx);
            group.iterations = record.iterations;
            // The file holds the training point.
            group.eval_mode = false;
        }
        let mut t = 0;
        for record in &parsed.manifest.groups {
            for _ in &record.tensors {
                // Kahan's compensation after the parameters (writing parameters resets it),
                // and only where this group keeps one too.
                let here = self.groups[self.locate(TensorId(t))?.0].storage.kahan();
                let compensation = record
                    .storage
                    .kahan()
                    .then_some((Role::Compensation, record.storage.param));
                let roles = std::iter::once((Role::Param, saved_param_format(&record.storage)))
                    .chain(compensation)
                    .chain(
                        record
                            .states
                            .iter()
                            .map(|s| (Role::State(s.as_str()), record.storage.state_format(s))),
                    );
                // Written in this optimizer's storage: a file of another format converts
                // (rounded to nearest even where this one is narrower, quantized where it is
                // q8). With master weights the parameters' values go to the master and their
                // rounding to the model's copy.
                let mut blobs = parsed.tensors[t].iter();
                for (role, format) in roles {
                    let data = blobs.next().expect("parse found every blob");
                    if role == Role::Compensation && !here {
                        continue;
                    }
                    if format == Format::Q8 {
                        let absmax = Format::F32.decode(blobs.next().expect("parse found it"));
                        let (g, local) = self.locate(TensorId(t))?;
                        let group = &self.groups[g];
                        let slot = group.q8_slot(role)?;
                        match slot {
                            Some(slot) => {
                                group.q8_write_raw(&self.ctx, slot, local, data, &absmax)?
                            }
                            None => {
                                let Role::State(name) = role else {
                                    unreachable!("only states are q8")
                                };
                                let kernel = group.config.kernel();
                                let map = kernel.states[kernel
                                    .state_names()
                                    .position(|s| s == name)
                                    .expect("check_fits matched the states")]
                                .q8_map;
                                let values = q8::dequantize_all(data, &absmax, map);
                                self.write(TensorId(t), role, 0, &values)?;
                            }
                        }
                        continue;
                    }
                    // Float32 data is used in place when it is aligned.
                    let values: Cow<[f32]> = match (format, bytemuck::try_cast_slice(data)) {
                        (Format::F32, Ok(values)) => Cow::Borrowed(values),
                        _ => Cow::Owned(format.decode(data)),
                    };
                    self.write(TensorId(t), role, 0, &values)?;
                }
                t += 1;
            }
        }
        Ok(())
    }
}

/// The safetensors views of the blobs.
fn views<'a>(blobs: &'a [(String, Blob)], origin: &str) -> Result<Vec<(&'a str, TensorView<'a>)>> {
    blobs
        .iter()
        .map(|(name, blob)| {
            let (dtype, bytes) = match blob {
                Blob::Control(control) => (Dtype::U8, bytemuck::bytes_of(control)),
                Blob::Stored(format, bytes) => (dtype(*format), bytes.as_slice()),
            };
            let len = bytes.len() / dtype.bitsize().div_ceil(8);
            TensorView::new(dtype, vec![len], bytes).map(|view| (name.as_str(), view))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| checkpoint_error(origin, format!("building the file: {e}")))
}

/// Checks a checkpoint's bytes on their own, without an optimizer: the reason is one line.
fn parse(bytes: &[u8]) -> std::result::Result<Parsed<'_>, String> {
    let (header_len, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a complete safetensors file: {e}"))?;
    // `read_metadata` checked that the header and the data add up to the input exactly.
    let data = header_len
        .checked_add(8)
        .and_then(|start| bytes.get(start..))
        .ok_or("not a complete safetensors file: the header runs past the end")?;
    let text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or("not a wgpu-optim checkpoint (no `wgpu-optim` metadata)")?;
    let manifest: Manifest =
        serde_json::from_str(text).map_err(|e| format!("unreadable metadata: {e}"))?;
    if manifest.format != FORMAT {
        return Err(format!(
            "format {}, expected `{FORMAT}`",
            quote(&manifest.format)
        ));
    }
    if manifest.groups.is_empty() {
        return Err("no parameter groups".into());
    }
    if let Some(segment_bytes) = manifest.segment_bytes
        && (segment_bytes < 16 || segment_bytes % 16 != 0)
    {
        return Err(format!(
            "segments of {segment_bytes} bytes (a positive multiple of 16 expected)"
        ));
    }

    let mut controls = Vec::new();
    for (g, record) in manifest.groups.iter().enumerate() {
        let context = |e: Error| format!("group {g}: {e}");
        record.config.validate().map_err(context)?;
        record.options.validate().map_err(context)?;
        record
            .storage
            .validate_for(&record.config)
            .map_err(context)?;
        let kept = record.config.state_names();
        if record.states != kept {
            return Err(format!(
                "group {g} lists states [{}], but {} with its hyperparameters keeps [{}]",
                record
                    .states
                    .iter()
                    .map(|s| quote(s))
                    .collect::<Vec<_>>()
                    .join(", "),
                record.config.name(),
                kept.join(", ")
            ));
        }
        let elements = record
            .tensors
            .iter()
            .try_fold(0u64, |sum, &len| sum.checked_add(len))
            .ok_or_else(|| format!("group {g}: its tensor lengths overflow"))?;
        if elements == 0 {
            return Err(format!("group {g} has no elements"));
        }
        let blob = tensor_data(&header, data, &control_name(g), Dtype::U8, CONTROL_BYTES)?;
        let control: StepControl = bytemuck::pod_read_unaligned(blob);
        check_control(&control, record).map_err(|e| format!("group {g}'s step control: {e}"))?;
        controls.push(control);
    }

    // Every tensor the metadata declares, found one by one: what is kept grows with what the
    // file holds, never with what it claims.
    let mut tensors = Vec::new();
    for record in &manifest.groups {
        for &len in &record.tensors {
            let t = tensors.len();
            let bytes = |format: Format| {
                usize::try_from(len)
                    .ok()
                    .and_then(|n| n.checked_mul(format.bytes() as usize))
                    .ok_or_else(|| format!("tensor {t} declares {len} elements, more than fit"))
            };
            let mut blobs = Vec::with_capacity(1 + record.states.len());
            let compensation = record
                .storage
                .kahan()
                .then_some((COMPENSATION, record.storage.param));
            let roles = std::iter::once(("param", saved_param_format(&record.storage)))
                .chain(compensation)
                .chain(
                    record
                        .states
                        .iter()
                        .map(|s| (s.as_str(), record.storage.state_format(s))),
                );
            for (role, format) in roles {
                blobs.push(tensor_data(
                    &header,
                    data,
                    &tensor_name(t, role),
                    dtype(format),
                    bytes(format)?,
                )?);
                if format == Format::Q8 {
                    let blocks = len.div_ceil(q8::BLOCK) as usize;
                    blobs.push(tensor_data(
                        &header,
                        data,
                        &tensor_name(t, &absmax_name(role)),
                        Dtype::F32,
                        blocks * 4,
                    )?);
                }
            }
            tensors.push(blobs);
        }
    }
    let declared = manifest.groups.len() + tensors.iter().map(Vec::len).sum::<usize>();
    let held = header.offset_keys().len();
    if held != declared {
        return Err(format!(
            "holds {held} tensors, but its metadata accounts for {declared}"
        ));
    }
    Ok(Parsed {
        manifest,
        controls,
        tensors,
    })
}

/// Bytes of a group's [`StepControl`] in the file.
const CONTROL_BYTES: usize = std::mem::size_of::<StepControl>();

/// The bytes of tensor `name`, which must be one-dimensional, of `dtype`, `bytes` long.
fn tensor_data<'a>(
    header: &Metadata,
    data: &'a [u8],
    name: &str,
    dtype: Dtype,
    bytes: usize,
) -> std::result::Result<&'a [u8], String> {
    let info = header
        .info(name)
        .ok_or_else(|| format!("tensor `{name}` is missing"))?;
    let width = dtype.bitsize() / 8;
    let expected = bytes / width;
    if info.dtype != dtype || info.shape.len() != 1 || info.shape[0] != expected {
        let shape = if info.shape.len() <= 4 {
            format!("{:?}", info.shape)
        } else {
            format!("[{} dimensions]", info.shape.len())
        };
        return Err(format!(
            "tensor `{name}` is {:?} {shape}, expected {dtype:?} [{expected}]",
            info.dtype
        ));
    }
    let (start, end) = info.data_offsets;
    match data.get(start..end) {
        Some(slice) if slice.len() == bytes => Ok(slice),
        _ => Err(format!(
            "tensor `{name}` lies at bytes {start}..{end} of {} bytes of data",
            data.len()
        )),
    }
}

/// A step control read from a file must be one the device could have written.
///
/// `factors`, `grad_multiplier` and `grad_norm` are recomputed by the next step before anything
/// reads them (they describe the last step); of those only signs that no step produces are
/// refused.
fn check_control(c: &StepControl, record: &GroupRecord) -> std::result::Result<(), String> {
    if !(c.loss_scale.is_finite() && c.loss_scale > 0.0) {
        return Err(format!(
            "loss_scale {} (must be finite and > 0)",
            c.loss_scale
        ));
    }
    if c.skip > 1 || c.found_inf > 1 {
        return Err(format!(
            "skip = {}, found_inf = {} (flags must be 0 or 1)",
            c.skip, c.found_inf
        ));
    }
    if c.skip == 1 && c.found_inf == 0 {
        return Err("a skipped step whose gradients were all finite".into());
    }
    if let Some(scaler) = &record.options.grad_scaler
        && c.growth_tracker >= scaler.growth_interval
    {
        return Err(format!(
            "growth_tracker {} past the scaler's growth_interval {}",
            c.growth_tracker, scaler.growth_interval
        ));
    }
    let counted = c.step as u64 + c.skipped_steps as u64;
    if counted > record.iterations {
        return Err(format!(
            "{} steps applied and {} skipped in {} iterations",
            c.step, c.skipped_steps, record.iterations
        ));
    }
    if c.grad_norm < 0.0 || c.grad_multiplier < 0.0 {
        return Err(format!(
            "grad_norm {}, grad_multiplier {} (neither can be negative)",
            c.grad_norm, c.grad_multiplier
        ));
    }
    Ok(())
}

/// A list of lengths, cut short when long.
fn list(values: &[u64]) -> String {
    if values.len() <= 8 {
        format!("{values:?}")
    } else {
        format!("{:?}... ({} tensors)", &values[..8], values.len())
    }
}

/// A string from a file, quoted and escaped (one line), cut short when long.
fn quote(text: &str) -> String {
    let quoted = format!("{text:?}");
    if quoted.chars().count() > 64 {
        format!("{}...\"", quoted.chars().take(60).collect::<String>())
    } else {
        quoted
    }
}

/// An [`Error::Checkpoint`] whose reason is one line of bounded length.
fn checkpoint_error(origin: &str, reason: impl ToString) -> Error {
    let mut line: String = reason
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() > MAX_REASON_CHARS {
        line = line.chars().take(MAX_REASON_CHARS).collect::<String>() + "...";
    }
    Error::Checkpoint {
        path: origin.to_string(),
        reason: line,
    }
}
