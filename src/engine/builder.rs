//! Building an [`Optimizer`]: collect the groups, check everything, then allocate at once.

use super::control::{self, TrainingOptions};
use super::group::{self, Group, GroupSpec};
use super::scope::GpuErrorScope;
use super::{Optimizer, TensorInit};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::MAX_STATE_SLOTS;
use crate::optim::{OptimizerConfig, UpdateRule};
use crate::storage::Storage;

/// Collects parameter groups, then allocates everything at once.
pub struct OptimizerBuilder<'a> {
    ctx: GpuContext,
    groups: Vec<(GroupSpec, Vec<TensorInit<'a>>)>,
    max_segment_bytes: Option<u64>,
    factor_window_rows: u64,
}

impl<'a> OptimizerBuilder<'a> {
    pub(crate) fn new(ctx: &GpuContext) -> Self {
        Self {
            ctx: ctx.clone(),
            groups: Vec::new(),
            max_segment_bytes: None,
            factor_window_rows: control::FACTOR_WINDOW_ROWS,
        }
    }

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
        self,
        config: impl Into<OptimizerConfig>,
        options: TrainingOptions,
        tensors: I,
    ) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<TensorInit<'a>>,
    {
        self.group_stored(config, Storage::F32, options, tensors)
    }

    /// Adds a parameter group whose values are stored in reduced precision (16-bit parameters,
    /// gradients or states, float32 master weights): see [`Storage`]. The math is float32.
    pub fn group_stored<I, T>(
        mut self,
        config: impl Into<OptimizerConfig>,
        storage: Storage,
        options: TrainingOptions,
        tensors: I,
    ) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<TensorInit<'a>>,
    {
        let spec = GroupSpec {
            config: config.into(),
            options,
            storage,
        };
        self.groups
            .push((spec, tensors.into_iter().map(Into::into).collect()));
        self
    }

    /// Caps the size of one segment buffer (default: the device's binding limit). Smaller
    /// segments mean more dispatches per step; tests use tiny ones to cross many boundaries.
    pub fn max_segment_bytes(mut self, bytes: u64) -> Self {
        self.max_segment_bytes = Some(bytes);
        self
    }

    /// Rows of step factors each group keeps ahead of its step (default
    /// 65,536); the window slides every this many
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
        for (g, (spec, tensors)) in self.groups.iter().enumerate() {
            spec.config.validate()?;
            spec.options.validate()?;
            spec.storage.validate_for(&spec.config)?;
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
        for (g, (spec, inits)) in self.groups.iter().enumerate() {
            groups.push(Group::new(
                &ctx,
                spec.clone(),
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
        for (g, (_, inits)) in self.groups.iter().enumerate() {
            optimizer.groups[g].initialize(&optimizer.ctx, inits)?;
        }
        Ok(optimizer)
    }
}
