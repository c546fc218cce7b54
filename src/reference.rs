//! The CPU reference: the same parameter group stepped in float64 by each optimizer's
//! `reference_step`, the plain transcription of its update rule. Tests and the `conformance`
//! command compare the GPU against it.

use crate::error::{Error, Result};
use crate::optim::{OptimizerConfig, StepCounter, UpdateRule};

/// One parameter group on the CPU, in float64.
#[derive(Clone, Debug)]
pub struct ReferenceGroup {
    pub config: OptimizerConfig,
    pub counter: StepCounter,
    /// One vector per tensor.
    pub params: Vec<Vec<f64>>,
    /// `states[tensor][slot]`: empty for the slots the configuration does not use.
    pub states: Vec<Vec<Vec<f64>>>,
}

impl ReferenceGroup {
    /// A group with these starting parameters and the optimizer's starting states.
    pub fn new(config: OptimizerConfig, params: Vec<Vec<f64>>) -> Result<Self> {
        config.validate()?;
        let init = config.initial_states();
        let states = params
            .iter()
            .map(|p| {
                init.iter()
                    .map(|slot| slot.map_or_else(Vec::new, |v| vec![v; p.len()]))
                    .collect()
            })
            .collect();
        Ok(Self {
            config,
            counter: StepCounter::default(),
            params,
            states,
        })
    }

    /// One step with one gradient per tensor, at the configuration's learning rate.
    pub fn step(&mut self, grads: &[Vec<f64>]) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::LengthMismatch {
                what: "the gradient list",
                tensor: grads.len(),
                expected: self.params.len() as u64,
                got: grads.len() as u64,
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
        let counter = self.config.advance(&self.counter);
        let lr = self.config.lr();
        for ((param, grad), states) in self.params.iter_mut().zip(grads).zip(&mut self.states) {
            self.config
                .reference_step(&counter, lr, param, grad, states);
        }
        self.counter = counter;
        Ok(())
    }

    /// A state of a tensor by PyTorch's name, if the configuration keeps it.
    pub fn state(&self, tensor: usize, name: &str) -> Option<&[f64]> {
        let slot = self
            .config
            .kernel()
            .state_slots
            .iter()
            .position(|s| *s == name)?;
        let state = &self.states[tensor][slot];
        (self.config.initial_states()[slot].is_some()).then_some(state.as_slice())
    }
}
