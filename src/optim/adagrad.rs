//! Adagrad (Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and
//! Stochastic Optimization", JMLR 2011), as `torch.optim.Adagrad`.

use serde::{Deserialize, Serialize};

use super::{StepCounter, UpdateRule, check, slots, uniform_bytes};
use crate::error::Result;
use crate::kernels::{Kernel, shader_struct};

/// `torch.optim.Adagrad`'s arguments and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adagrad {
    pub lr: f64,
    /// The step size at step t is lr / (1 + (t - 1) * lr_decay).
    pub lr_decay: f64,
    pub weight_decay: f64,
    /// Starting value of the sum of squared gradients.
    pub initial_accumulator_value: f64,
    pub eps: f64,
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

shader_struct! {
    /// The uniform of `shaders/adagrad.wgsl`.
    pub struct AdagradScalars {
        pub lr: f32,
        pub lr_decay: f32,
        pub weight_decay: f32,
        pub eps: f32,
    }
}

/// Adagrad's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "adagrad",
    source: include_str!("../../shaders/adagrad.wgsl"),
    pieces: &[],
    state_slots: &["sum"],
    flags: &["MAXIMIZE"],
    scalars: &AdagradScalars::LAYOUT,
};

impl Adagrad {
    /// The decayed learning rate of step `step` (from 1).
    fn clr(&self, step: u64, lr: f64) -> f64 {
        lr / (1.0 + (step - 1) as f64 * self.lr_decay)
    }
}

impl UpdateRule for Adagrad {
    fn name(&self) -> &'static str {
        "adagrad"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        check::non_negative("adagrad", "lr", self.lr)?;
        check::non_negative("adagrad", "lr_decay", self.lr_decay)?;
        check::non_negative("adagrad", "weight_decay", self.weight_decay)?;
        check::non_negative(
            "adagrad",
            "initial_accumulator_value",
            self.initial_accumulator_value,
        )?;
        check::non_negative("adagrad", "eps", self.eps)
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", self.maximize)]
    }
    fn initial_states(&self) -> Vec<Option<f64>> {
        vec![Some(self.initial_accumulator_value)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        // The kernel decays the rate itself, from the device's step count: it grows without
        // bound, so there is no table to end.
        uniform_bytes(&AdagradScalars {
            lr: lr as f32,
            lr_decay: self.lr_decay as f32,
            weight_decay: self.weight_decay as f32,
            eps: self.eps as f32,
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
        let [sum] = slots(states);
        let clr = self.clr(counter.step, lr);
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            if self.weight_decay != 0.0 {
                g += self.weight_decay * param[i];
            }
            sum[i] += g * g;
            param[i] -= clr * g / (sum[i].sqrt() + self.eps);
        }
    }
}
