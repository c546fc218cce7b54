//! The CPU reference: the same parameter group stepped in float64 by each optimizer's
//! `reference_step`, the plain transcription of its update rule, with PyTorch's training-loop
//! semantics around it (`clip_grad_norm_`, `GradScaler`, `lr_scheduler`). Tests and the
//! `conformance` command compare the GPU against it.

use crate::engine::control::{StepReport, TrainingOptions};
use crate::error::{Error, Result};
use crate::optim::{Hyperparameters, OptimizerConfig, ReferenceTensor, StepCounter, UpdateRule};
use crate::storage::{Format, Rounding, Storage, q8, stochastic_bits};

/// `value` as stored in `format` and loaded again (16-bit: through float32, rounded to nearest
/// even); float32 storage keeps the float64 value, as the reference computes in float64.
fn stored(format: Format, value: f64) -> f64 {
    match format {
        Format::F32 => value,
        other => other.round(value as f32) as f64,
    }
}

/// A tensor's states as stored and loaded again, each in its format: each value rounded, or
/// (q8) each block of 256 quantized with its slot's encoding from the values' float32
/// roundings.
fn store_states(config: &OptimizerConfig, storage: &Storage, states: &mut [Vec<f64>]) {
    for (state, slot) in states.iter_mut().zip(config.kernel().states) {
        let format = storage.state_format(slot.name);
        if format == Format::Q8 {
            q8::round_trip(state, storage.q8_encoding(slot));
        } else {
            for v in state.iter_mut() {
                *v = stored(format, *v);
            }
        }
    }
}

/// The parameters a store leaves, in the storage's way: rounded to nearest even, stochastically
/// (the random bits of step `step` at the tensor's first index `position`), with Kahan
/// summation (from the parameters `before` the store and the compensation), or (float32 and
/// master weights) as computed.
fn store_params(
    storage: &Storage,
    param: &mut [f64],
    before: &[f64],
    compensation: &mut [f64],
    (step, position): (u64, u64),
) {
    if storage.kahan() {
        // In float32, as the kernel's store: the update plus what was lost before, stored
        // rounded, and what this rounding lost kept for the next step.
        let format = storage.param;
        for ((v, old), c) in param.iter_mut().zip(before).zip(compensation.iter_mut()) {
            let p = *old as f32;
            let y = (*v as f32 - p) + *c as f32;
            let stored = format.round(p + y);
            *c = format.round(y - (stored - p)) as f64;
            *v = stored as f64;
        }
    } else if let Rounding::Stochastic { seed } = storage.rounding {
        // The step computes in float32; the random bits decide from its bits.
        for (k, v) in param.iter_mut().enumerate() {
            let random = stochastic_bits(seed, step as u32, position + k as u64);
            *v = storage.param.round_stochastic(*v as f32, random) as f64;
        }
    } else if !storage.master_weights {
        for v in param.iter_mut() {
            *v = stored(storage.param, *v);
        }
    }
}

/// One parameter group on the CPU, in float64.
#[derive(Clone, Debug)]
pub struct ReferenceGroup {
    /// The optimizer and its hyperparameters; each step reads its learning rate (the schedule's
    /// base rate).
    pub config: OptimizerConfig,
    /// Clipping, loss scaling, schedule and non-finite skipping, as on the GPU.
    pub options: TrainingOptions,
    /// How the GPU group stores its values: gradients arrive rounded to their format, and
    /// after each step the states and (without master weights) the parameters are rounded to
    /// theirs.
    pub storage: Storage,
    /// Applied steps (skipped ones not counted), and NAdam's momentum product.
    pub counter: StepCounter,
    /// Calls to `step`, skipped ones included: the schedule's clock.
    pub iterations: u64,
    /// The loss scale the next gradients carry (1 without a scaler).
    pub loss_scale: f64,
    /// Good steps since the loss scale last changed (`GradScaler`'s growth tracker).
    pub growth_tracker: u32,
    /// What the last step found, as [`StepReport`] says it for the GPU.
    pub last: StepReport,
    /// One vector per tensor: the parameters the step updates (the master, with master
    /// weights; see [`model_params`](Self::model_params)).
    pub params: Vec<Vec<f64>>,
    /// The index of each tensor's first element in the GPU group, for stochastic rounding
    /// (see `Optimizer::rounding_positions`; by default the tensors one after the other).
    pub positions: Vec<u64>,
    /// With Kahan summation, what rounding each stored parameter lost (one vector per tensor).
    pub compensation: Vec<Vec<f64>>,
    /// `states[tensor][slot]`: empty for the slots the configuration does not use.
    pub states: Vec<Vec<Vec<f64>>>,
}

impl ReferenceGroup {
    /// A group with these starting parameters and the optimizer's starting states.
    pub fn new(config: OptimizerConfig, params: Vec<Vec<f64>>) -> Result<Self> {
        Self::with_options(config, TrainingOptions::default(), params)
    }

    /// The same, with clipping, loss scaling or a schedule.
    pub fn with_options(
        config: OptimizerConfig,
        options: TrainingOptions,
        params: Vec<Vec<f64>>,
    ) -> Result<Self> {
        Self::with_storage(config, options, Storage::F32, params)
    }

    /// The same, for a group stored in reduced precision: the starting parameters and states
    /// are rounded as the GPU stores them.
    pub fn with_storage(
        config: OptimizerConfig,
        options: TrainingOptions,
        storage: Storage,
        mut params: Vec<Vec<f64>>,
    ) -> Result<Self> {
        config.validate()?;
        options.validate()?;
        storage.validate_for(&config)?;
        for v in params.iter_mut().flatten() {
            *v = stored(storage.param, *v);
        }
        let init = config.initial_states();
        let states = params
            .iter()
            .map(|p| {
                let mut states: Vec<Vec<f64>> = init
                    .iter()
                    .map(|slot| slot.map_or_else(Vec::new, |v| vec![v; p.len()]))
                    .collect();
                store_states(&config, &storage, &mut states);
                states
            })
            .collect();
        let loss_scale = options.grad_scaler.as_ref().map_or(1.0, |s| s.init_scale);
        Ok(Self {
            config,
            options,
            storage,
            counter: StepCounter::default(),
            iterations: 0,
            loss_scale,
            growth_tracker: 0,
            last: StepReport {
                step: 0,
                skipped: false,
                found_inf: false,
                grad_norm: 0.0,
                loss_scale,
                growth_tracker: 0,
                skipped_steps: 0,
            },
            positions: params
                .iter()
                .scan(0u64, |next, p| {
                    let at = *next;
                    *next += p.len() as u64;
                    Some(at)
                })
                .collect(),
            compensation: params.iter().map(|p| vec![0.0; p.len()]).collect(),
            params,
            states,
        })
    }

    /// One iteration with one gradient per tensor (as they arrive: times the loss scale).
    pub fn step(&mut self, grads: &[Vec<f64>]) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::WrongCount {
                call: "ReferenceGroup::step",
                item: "gradient",
                expected: self.params.len(),
                got: grads.len(),
            });
        }
        for (t, (p, g)) in self.params.iter().zip(grads).enumerate() {
            if p.len() != g.len() {
                return Err(Error::LengthMismatch {
                    what: "gradient",
                    tensor: t,
                    expected: p.len() as u64,
                    got: g.len() as u64,
                });
            }
        }
        let base = self.config.lr();
        let lr = self
            .options
            .schedule
            .as_ref()
            .map_or(base, |s| s.lr(base, self.iterations));
        self.iterations += 1;

        // GradScaler.unscale_, then clip_grad_norm_ on the unscaled gradients.
        let scaler = self.options.grad_scaler.clone();
        let scale = if scaler.is_some() {
            self.loss_scale
        } else {
            1.0
        };
        let grad_format = self.storage.grad;
        let mut grads: Vec<Vec<f64>> = grads
            .iter()
            .map(|g| g.iter().map(|v| stored(grad_format, *v) / scale).collect())
            .collect();
        if self.options.needs_norm() {
            let found_inf = grads.iter().flatten().any(|v| !v.is_finite());
            // As torch: the norm of gradients holding an inf or a NaN is not finite.
            let norm = if found_inf {
                f64::INFINITY
            } else {
                grads.iter().flatten().map(|v| v * v).sum::<f64>().sqrt()
            };
            self.last.found_inf = found_inf;
            self.last.grad_norm = norm;
            if found_inf && self.options.can_skip() {
                // GradScaler.step (or skip_nonfinite) skips optimizer.step; a scaler's
                // update() backs the scale off.
                if let Some(scaler) = &scaler {
                    self.loss_scale *= scaler.backoff_factor;
                    self.growth_tracker = 0;
                }
                self.last.skipped = true;
                self.last.skipped_steps += 1;
                self.last.loss_scale = self.loss_scale;
                self.last.growth_tracker = self.growth_tracker;
                return Ok(());
            }
            if let Some(max_norm) = self.options.max_grad_norm {
                let coef = (max_norm / (norm + 1e-6)).min(1.0);
                for v in grads.iter_mut().flatten() {
                    *v *= coef;
                }
            }
        }
        self.last.skipped = false;

        let counter = self.config.advance(&self.counter);
        let tensors = self.params.iter_mut().zip(&grads).zip(&mut self.states);
        let extra = self.positions.iter().zip(&mut self.compensation);
        for (((param, grad), states), (&position, compensation)) in tensors.zip(extra) {
            let before: Vec<f64> = if self.storage.kahan() {
                param.clone()
            } else {
                Vec::new()
            };
            let tensor = ReferenceTensor {
                param,
                grad,
                states,
            };
            self.config.reference_step(&counter, lr, tensor);
            store_states(&self.config, &self.storage, states);
            let tensor = ReferenceTensor {
                param,
                grad,
                states,
            };
            self.config.reference_finish(&counter, lr, tensor);
            store_params(
                &self.storage,
                param,
                &before,
                compensation,
                (counter.step, position),
            );
        }
        self.counter = counter;
        self.last.step = counter.step;

        if let Some(scaler) = &scaler {
            self.growth_tracker += 1;
            if self.growth_tracker == scaler.growth_interval {
                let grown = self.loss_scale * scaler.growth_factor;
                if grown.is_finite() {
                    self.loss_scale = grown;
                }
                self.growth_tracker = 0;
            }
        }
        self.last.loss_scale = self.loss_scale;
        self.last.growth_tracker = self.growth_tracker;
        Ok(())
    }

    /// The parameters the model reads: with master weights the master rounded to the
    /// parameters' format, else [`params`](Self::params) themselves.
    pub fn model_params(&self) -> Vec<Vec<f64>> {
        let format = if self.storage.master_weights {
            self.storage.param
        } else {
            Format::F32
        };
        self.params
            .iter()
            .map(|p| p.iter().map(|v| stored(format, *v)).collect())
            .collect()
    }

    /// Swaps the parameters to evaluation mode (`to_eval`) or back, as
    /// [`Optimizer::eval_mode`](crate::Optimizer::eval_mode) does: `p = lerp(p, state, w)`,
    /// stored as a step stores them; nothing before the first step. An optimizer without an
    /// evaluation mode is an error.
    pub fn swap_mode(&mut self, to_eval: bool) -> Result<()> {
        let swap = self.config.swap_for(to_eval)?;
        if self.counter.step == 0 {
            return Ok(());
        }
        let slot = self
            .config
            .kernel()
            .state_names()
            .position(|s| s == swap.state)
            .expect("the swap's state is one of the kernel's");
        let tensors = self.params.iter_mut().zip(&self.states);
        let extra = self.positions.iter().zip(&mut self.compensation);
        for ((param, states), (&position, compensation)) in tensors.zip(extra) {
            let before = param.clone();
            for (p, z) in param.iter_mut().zip(&states[slot]) {
                *p = crate::optim::lerp(*p, *z, swap.weight);
            }
            store_params(
                &self.storage,
                param,
                &before,
                compensation,
                (self.counter.step, position),
            );
        }
        Ok(())
    }

    /// A state of a tensor by PyTorch's name, if the configuration keeps it.
    pub fn state(&self, tensor: usize, name: &str) -> Option<&[f64]> {
        let slot = self.config.kernel().state_names().position(|s| s == name)?;
        let state = &self.states[tensor][slot];
        (self.config.initial_states()[slot].is_some()).then_some(state.as_slice())
    }
}
