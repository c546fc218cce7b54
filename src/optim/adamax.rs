//! Adamax, Adam under the infinity norm (Kingma & Ba, "Adam: A Method for Stochastic
//! Optimization", ICLR 2015, section 7.1), as `torch.optim.Adamax`.

use serde::{Deserialize, Serialize};

use super::adam::validate_adam_like;
use super::{StepCounter, UpdateRule, slots, uniform_bytes};
use crate::error::Result;
use crate::kernels::{Kernel, shader_struct};

/// `torch.optim.Adamax`'s arguments and defaults (`betas` as `beta1`, `beta2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adamax {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub maximize: bool,
}

impl Default for Adamax {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

shader_struct! {
    /// The uniform of `shaders/adamax.wgsl`.
    pub struct AdamaxScalars {
        pub one_minus_beta1: f32,
        pub beta2: f32,
        pub eps: f32,
        pub weight_decay: f32,
        pub lr: f32,
        pub beta1: f32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// Adamax's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "adamax",
    source: include_str!("../../shaders/adamax.wgsl"),
    pieces: &[],
    state_slots: &["exp_avg", "exp_inf"],
    flags: &["MAXIMIZE"],
    scalars: &AdamaxScalars::LAYOUT,
};

impl UpdateRule for Adamax {
    fn name(&self) -> &'static str {
        "adamax"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        validate_adam_like(
            "adamax",
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
        vec![("MAXIMIZE", self.maximize)]
    }
    fn initial_states(&self) -> Vec<Option<f64>> {
        vec![Some(0.0), Some(0.0)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&AdamaxScalars {
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            lr: lr as f32,
            beta1: self.beta1 as f32,
            ..Default::default()
        })
    }
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        [
            1.0 / (1.0 - self.beta1.powf(counter.step as f64)),
            0.0,
            0.0,
            0.0,
        ]
    }
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        Some([1.0, 0.0, 0.0, 0.0])
    }
    fn reference_step(
        &self,
        counter: &StepCounter,
        lr: f64,
        param: &mut [f64],
        grad: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let [exp_avg, exp_inf] = slots(states);
        let bias_correction = 1.0 - self.beta1.powf(counter.step as f64);
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            if self.weight_decay != 0.0 {
                g += self.weight_decay * param[i];
            }
            exp_avg[i] = super::lerp(exp_avg[i], g, 1.0 - self.beta1);
            exp_inf[i] = (self.beta2 * exp_inf[i]).max(g.abs() + self.eps);
            param[i] -= lr / bias_correction * exp_avg[i] / exp_inf[i];
        }
    }
}
