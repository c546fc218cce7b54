//! Optimizer instances filled with random data and warmed up, ready to be timed.

use super::timing::time_passes;
use super::{BenchOptions, Timing, Workload};
use crate::context::GpuContext;
use crate::engine::control::TrainingOptions;
use crate::engine::{Optimizer, Role, TensorId, TensorInit};
use crate::error::Result;
use crate::fill::RandomFill;
use crate::optim::{OptimizerConfig, UpdateRule};
use crate::storage::Storage;

/// Optimizer instances of one configuration and workload, filled with random data and warmed
/// up, ready to be timed (also what the criterion benches drive).
pub struct PreparedSteps {
    ctx: GpuContext,
    config: OptimizerConfig,
    storage: Storage,
    training: TrainingOptions,
    workload: Workload,
    pub(super) instances: Vec<Optimizer>,
    next: usize,
}

impl PreparedSteps {
    /// Builds enough instances of `config` on `workload` that their resident bytes reach
    /// `options.min_working_set_bytes` (at most 64), fills parameters and gradients with
    /// pseudo-random values on the GPU and runs the warm-up steps.
    pub fn new(
        ctx: &GpuContext,
        config: &OptimizerConfig,
        storage: &Storage,
        workload: &Workload,
        options: &BenchOptions,
    ) -> Result<Self> {
        let lens = workload.lens();
        let elements: u64 = lens.iter().sum();
        let resident =
            (storage.resident_bytes(&config.state_names()) * elements as f64).ceil() as u64;
        let count = options
            .min_working_set_bytes
            .div_ceil(resident)
            .clamp(1, 64) as usize;
        let mut instances = Vec::with_capacity(count);
        for k in 0..count {
            let mut builder = Optimizer::builder(ctx).group_stored(
                config.clone(),
                *storage,
                options.training.clone(),
                lens.iter().map(|&n| TensorInit::Zeros(n)),
            );
            if let Some(bytes) = options.max_segment_bytes {
                builder = builder.max_segment_bytes(bytes);
            }
            let mut opt = builder.build()?;
            for (t, &len) in lens.iter().enumerate() {
                let seed = (k * lens.len() + t) as u32;
                let params = RandomFill::symmetric(2 * seed, 1.0);
                let grads = RandomFill::symmetric(2 * seed + 1, 1.0 / 64.0);
                opt.fill_random(TensorId(t), Role::Param, 0..len, &params)?;
                opt.fill_random(TensorId(t), Role::Grad, 0..len, &grads)?;
            }
            instances.push(opt);
        }
        // Warm up every instance: states become non-zero, memory and pipelines get touched.
        for k in 0..options.warmup.max(count) {
            instances[k % count].step()?;
        }
        ctx.wait()?;
        Ok(Self {
            ctx: ctx.clone(),
            config: config.clone(),
            storage: *storage,
            training: options.training.clone(),
            workload: workload.clone(),
            instances,
            next: 0,
        })
    }

    /// Elements one step updates.
    pub fn elements(&self) -> u64 {
        self.workload.lens().iter().sum()
    }

    /// The fewest bytes one step must move per element in its storage: the update's, plus one
    /// more read of the gradients for the norm when clipping or loss scaling.
    pub fn bytes_per_element(&self) -> f64 {
        let norm = if self.training.needs_norm() {
            self.storage.grad.bytes() as f64
        } else {
            0.0
        };
        self.config.bytes_per_element(&self.storage) + norm
    }

    /// The fewest bytes one step must move.
    pub fn bytes_per_step(&self) -> f64 {
        self.bytes_per_element() * self.elements() as f64
    }

    /// Times `steps` steps, rotating over the instances; seconds per step, and how.
    pub fn time(&mut self, steps: usize) -> Result<(Timing, Vec<f64>)> {
        let (instances, next) = (&mut self.instances, &mut self.next);
        let count = instances.len();
        time_passes(&self.ctx, steps, |encoder, timestamps| {
            instances[*next % count]
                .encode_step(encoder, timestamps)
                .expect("bench instances are never put in evaluation mode");
            *next += 1;
        })
    }
}
