//! Checkpoints: an optimizer's whole state in one safetensors file, from which a run resumes
//! bit for bit as if it had never stopped.
//!
//! The file holds, per group, the step control (`group{g}.control`: the 32 bytes of
//! [`StepControl`]: step count, loss scale, growth tracker, ...) and, per tensor, its
//! parameters (`tensor{t}.param`) and every optimizer state (`tensor{t}.exp_avg`, ...), float32.
//! Its metadata (`wgpu-optim` key, JSON) holds each group's hyperparameters, training options
//! (clipping, loss scaler, schedule), iteration count and tensor lengths.
//!
//! Loading checks everything against the optimizer first (format, groups, optimizers, states,
//! tensor lengths, every tensor's dtype and size) and writes nothing unless all of it matches.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::control::{StepControl, TrainingOptions};
use super::group::check_factor_table;
use super::{GroupId, Optimizer, Role, TensorId, check_usage};
use crate::error::{Error, Result};
use crate::optim::{OptimizerConfig, UpdateRule, step_factor_table};

/// The metadata key and the version of the layout.
const METADATA_KEY: &str = "wgpu-optim";
const FORMAT: &str = "wgpu-optim-checkpoint/1";

/// What the metadata says of the whole optimizer.
#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    groups: Vec<GroupRecord>,
}

/// What the metadata says of one group.
#[derive(Serialize, Deserialize)]
struct GroupRecord {
    config: OptimizerConfig,
    options: TrainingOptions,
    iterations: u64,
    /// Length of each tensor of the group.
    tensors: Vec<u64>,
    /// The states every tensor of the group has in the file.
    states: Vec<String>,
}

fn control_name(group: usize) -> String {
    format!("group{group}.control")
}

fn tensor_name(tensor: usize, role: &str) -> String {
    format!("tensor{tensor}.{role}")
}

impl Optimizer {
    /// Writes the whole optimizer state to `path` (waits for the GPU). Parameters are saved too
    /// (caller-owned ones need `COPY_SRC`), so that loading restores everything a step reads.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut blobs: Vec<(String, Dtype, usize, Vec<u8>)> = Vec::new();
        let mut groups = Vec::with_capacity(self.groups.len());
        for (g, group) in self.groups.iter().enumerate() {
            let control = self.read_control(GroupId(g))?;
            blobs.push((
                control_name(g),
                Dtype::U8,
                std::mem::size_of::<StepControl>(),
                bytemuck::bytes_of(&control).to_vec(),
            ));
            groups.push(GroupRecord {
                config: group.config.clone(),
                options: group.options.clone(),
                iterations: group.iterations,
                tensors: group.tensors.iter().map(|t| t.len).collect(),
                states: group.state_names().iter().map(|s| s.to_string()).collect(),
            });
        }
        for t in 0..self.tensors.len() {
            let tensor = TensorId(t);
            let len = self.tensor_len(tensor)?;
            let (g, _) = self.locate(tensor)?;
            let roles = std::iter::once("param").chain(self.groups[g].state_names());
            for role in roles {
                let values = match role {
                    "param" => self.read_param(tensor)?,
                    state => self.read_state(tensor, state)?,
                };
                blobs.push((
                    tensor_name(t, role),
                    Dtype::F32,
                    len as usize,
                    bytemuck::cast_slice(&values).to_vec(),
                ));
            }
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            groups,
        };
        let metadata = HashMap::from([(
            METADATA_KEY.to_string(),
            serde_json::to_string(&manifest).expect("the manifest serializes"),
        )]);
        let views = blobs
            .iter()
            .map(|(name, dtype, len, bytes)| {
                TensorView::new(*dtype, vec![*len], bytes).map(|view| (name.clone(), view))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| checkpoint_error(path, format!("building the file: {e}")))?;
        safetensors::serialize_to_file(views, Some(metadata), path)
            .map_err(|e| checkpoint_error(path, format!("writing: {e}")))
    }

    /// Restores the whole optimizer state from `path`: hyperparameters, training options,
    /// step counts, loss scales, parameters and every state. The optimizer must have the same
    /// groups, optimizers, states and tensor lengths as the one saved; if anything differs, or
    /// the file is truncated or not a checkpoint, nothing is changed.
    pub fn load_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| checkpoint_error(path, e.to_string()))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| checkpoint_error(path, format!("not a complete safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| checkpoint_error(path, e.to_string()))?;
        let manifest: Manifest = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| {
                checkpoint_error(path, "not a wgpu-optim checkpoint (no metadata)".into())
            })
            .and_then(|text| {
                serde_json::from_str(text)
                    .map_err(|e| checkpoint_error(path, format!("unreadable metadata: {e}")))
            })?;
        self.check_manifest(path, &manifest)?;
        let tensor = |name: &str, dtype: Dtype, len: usize| -> Result<&[u8]> {
            let view = file
                .tensor(name)
                .map_err(|_| checkpoint_error(path, format!("tensor `{name}` is missing")))?;
            if view.dtype() != dtype || view.shape() != [len] {
                return Err(checkpoint_error(
                    path,
                    format!(
                        "tensor `{name}` is {:?} {:?}, expected {dtype:?} [{len}]",
                        view.dtype(),
                        view.shape()
                    ),
                ));
            }
            Ok(view.data())
        };
        // Everything is checked before anything is written.
        let mut controls = Vec::with_capacity(manifest.groups.len());
        for g in 0..manifest.groups.len() {
            let data = tensor(
                &control_name(g),
                Dtype::U8,
                std::mem::size_of::<StepControl>(),
            )?;
            controls.push(bytemuck::pod_read_unaligned::<StepControl>(data));
        }
        let mut contents: Vec<(TensorId, Role, &[u8])> = Vec::new();
        let mut t = 0;
        for record in &manifest.groups {
            for &len in &record.tensors {
                let id = TensorId(t);
                contents.push((
                    id,
                    Role::Param,
                    tensor(&tensor_name(t, "param"), Dtype::F32, len as usize)?,
                ));
                for state in &record.states {
                    let data = tensor(&tensor_name(t, state), Dtype::F32, len as usize)?;
                    contents.push((id, Role::State(state), data));
                }
                let (g, local) = self.locate(id)?;
                let spans = self.groups[g].spans(Role::Param, local, 0..len)?;
                check_usage(&spans, id, Role::Param, wgpu::BufferUsages::COPY_DST)?;
                t += 1;
            }
        }

        for (g, (record, control)) in manifest.groups.iter().zip(controls).enumerate() {
            let group = &mut self.groups[g];
            group.reconfigure(&self.ctx, record.config.clone())?;
            group.control.apply(&self.ctx, &record.options);
            group.control.write_state(&self.ctx, &control);
            group.options = record.options.clone();
            group.iterations = record.iterations;
        }
        for (id, role, data) in contents {
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(data);
            self.write(id, role, 0, &values)?;
        }
        Ok(())
    }

    /// The file's groups must be this optimizer's, in kind and size, and its settings valid.
    fn check_manifest(&self, path: &Path, manifest: &Manifest) -> Result<()> {
        let mismatch = |reason: String| checkpoint_error(path, reason);
        if manifest.format != FORMAT {
            return Err(mismatch(format!(
                "format `{}`, expected `{FORMAT}`",
                manifest.format
            )));
        }
        if manifest.groups.len() != self.groups.len() {
            return Err(mismatch(format!(
                "{} parameter groups, this optimizer has {}",
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
            let here: Vec<String> = group.state_names().iter().map(|s| s.to_string()).collect();
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
                    "group {g} has tensors of lengths {:?} in the file, {lens:?} here",
                    record.tensors
                )));
            }
            record.config.validate()?;
            record.options.validate()?;
            check_factor_table(
                &self.ctx,
                &record.config,
                &step_factor_table(&record.config)?,
            )?;
        }
        Ok(())
    }
}

fn checkpoint_error(path: &Path, reason: String) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason,
    }
}
