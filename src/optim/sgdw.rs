//! SGDW: SGD with momentum and decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight
//! Decay Regularization", ICLR 2019, Algorithm 1). The momentum accumulates learning-rate-scaled
//! gradients and the decay is applied to the parameter itself:
//!
//! ```text
//! m_t = momentum * m_{t-1} + lr * g_t          (m_1 = lr * g_1)
//! p_t = p_{t-1} - m_t - lr * weight_decay * p_{t-1}
//! ```
//!
//! PyTorch has no SGDW; the fixture's `sgdw` cases follow this formula in float64. Dampening,
//! Nesterov and maximize behave as in SGD.

use serde::{Deserialize, Serialize};

use super::sgd::{KERNEL, SgdScalars, momentum_direction, validate_momentum};
use super::{StepCounter, UpdateRule, check, slots, uniform_bytes};
use crate::error::Result;
use crate::kernels::Kernel;

/// SGDW's hyperparameters (SGD's names; `weight_decay` is decoupled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sgdw {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// Decoupled weight decay: the parameter shrinks by `lr * weight_decay` of itself.
    pub weight_decay: f64,
    pub maximize: bool,
}

impl Default for Sgdw {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl UpdateRule for Sgdw {
    fn name(&self) -> &'static str {
        "sgdw"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        check::non_negative("sgdw", "lr", self.lr)?;
        check::non_negative("sgdw", "weight_decay", self.weight_decay)?;
        validate_momentum("sgdw", self.momentum, self.dampening, self.nesterov)
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("MOMENTUM", self.momentum != 0.0),
            ("NESTEROV", self.nesterov),
            ("MAXIMIZE", self.maximize),
            ("DECOUPLED", true),
        ]
    }
    fn initial_states(&self) -> Vec<Option<f64>> {
        vec![(self.momentum != 0.0).then_some(0.0)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&SgdScalars {
            lr: lr as f32,
            momentum: self.momentum as f32,
            dampening_keep: (1.0 - self.dampening) as f32,
            weight_decay: 0.0,
            decay: (lr * self.weight_decay) as f32,
            ..Default::default()
        })
    }
    fn reference_step(
        &self,
        counter: &StepCounter,
        lr: f64,
        param: &mut [f64],
        grad: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let [buf] = slots(states);
        for i in 0..param.len() {
            let g = if self.maximize { -grad[i] } else { grad[i] };
            let mut d = lr * g;
            if self.momentum != 0.0 {
                d = momentum_direction(
                    d,
                    &mut buf[i],
                    counter.step == 1,
                    self.momentum,
                    self.dampening,
                    self.nesterov,
                );
            }
            param[i] = param[i] - d - lr * self.weight_decay * param[i];
        }
    }
}
