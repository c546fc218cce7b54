//! AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
//! Regularization", ICLR 2019), as `torch.optim.AdamW`: the parameter shrinks by
//! `lr * weight_decay` of itself before the Adam step, instead of the decay entering the gradient.

use serde::{Deserialize, Serialize};

use super::adam::{Adam, KERNEL, validate_adam_like};
use super::{StepCounter, UpdateRule};
use crate::error::Result;
use crate::kernels::Kernel;

/// `torch.optim.AdamW`'s arguments and defaults (`betas` as `beta1`, `beta2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl AdamW {
    /// The same hyperparameters read as Adam's (whose code runs them with `decoupled`).
    fn as_adam(&self) -> Adam {
        Adam {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
        }
    }
}

impl UpdateRule for AdamW {
    fn name(&self) -> &'static str {
        "adamw"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        validate_adam_like(
            "adamw",
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
        )
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("AMSGRAD", self.amsgrad),
            ("MAXIMIZE", self.maximize),
            ("DECOUPLED", true),
        ]
    }
    fn initial_states(&self) -> Vec<Option<f64>> {
        self.as_adam().initial_states()
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        self.as_adam().scalars_with(true, lr)
    }
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        self.as_adam().bias_corrections(counter)
    }
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        Some([1.0, 1.0, 0.0, 0.0])
    }
    fn reference_step(
        &self,
        counter: &StepCounter,
        lr: f64,
        param: &mut [f64],
        grad: &[f64],
        states: &mut [Vec<f64>],
    ) {
        self.as_adam()
            .reference_with(true, counter, lr, param, grad, states)
    }
}
