//! Adadelta (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012), as
//! `torch.optim.Adadelta`.

use serde::{Deserialize, Serialize};

use super::{StepCounter, UpdateRule, check, slots, uniform_bytes};
use crate::error::Result;
use crate::kernels::{Kernel, shader_struct};

/// `torch.optim.Adadelta`'s arguments and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adadelta {
    /// Scales the delta before it is applied (1 in the paper).
    pub lr: f64,
    /// Decay of the running averages.
    pub rho: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub maximize: bool,
}

impl Default for Adadelta {
    fn default() -> Self {
        Self {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

shader_struct! {
    /// The uniform of `shaders/adadelta.wgsl`.
    pub struct AdadeltaScalars {
        pub lr: f32,
        pub rho: f32,
        pub one_minus_rho: f32,
        pub eps: f32,
        pub weight_decay: f32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// Adadelta's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "adadelta",
    source: include_str!("../../shaders/adadelta.wgsl"),
    pieces: &[],
    state_slots: &["square_avg", "acc_delta"],
    flags: &["MAXIMIZE"],
    scalars: &AdadeltaScalars::LAYOUT,
};

impl UpdateRule for Adadelta {
    fn name(&self) -> &'static str {
        "adadelta"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        check::non_negative("adadelta", "lr", self.lr)?;
        // torch.optim.Adadelta accepts rho in [0, 1] (1: the averages never move).
        check::closed_unit_interval("adadelta", "rho", self.rho)?;
        check::non_negative("adadelta", "eps", self.eps)?;
        check::non_negative("adadelta", "weight_decay", self.weight_decay)
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
        vec![Some(0.0), Some(0.0)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&AdadeltaScalars {
            lr: lr as f32,
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            ..Default::default()
        })
    }
    fn reference_step(
        &self,
        _counter: &StepCounter,
        lr: f64,
        param: &mut [f64],
        grad: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let [square_avg, acc_delta] = slots(states);
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            if self.weight_decay != 0.0 {
                g += self.weight_decay * param[i];
            }
            square_avg[i] = self.rho * square_avg[i] + (1.0 - self.rho) * g * g;
            let delta = (acc_delta[i] + self.eps).sqrt() / (square_avg[i] + self.eps).sqrt() * g;
            acc_delta[i] = self.rho * acc_delta[i] + (1.0 - self.rho) * delta * delta;
            param[i] -= lr * delta;
        }
    }
}
