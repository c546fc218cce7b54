//! Adagrad (Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and
//! Stochastic Optimization", JMLR 2011), as `torch.optim.Adagrad`.

use super::{ReferenceTensor, StepCounter, UpdateRule, l2_descent_grad, slots, uniform_bytes};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch.optim.Adagrad`'s arguments and defaults.
    pub struct Adagrad {
        pub lr: f64 = 1e-2 => non_negative,
        /// The step size at step t is lr / (1 + (t - 1) * lr_decay).
        pub lr_decay: f64 = 0.0 => non_negative,
        /// L2 penalty, added to the gradient.
        pub weight_decay: f64 = 0.0 => non_negative,
        /// Starting value of the sum of squared gradients.
        pub initial_accumulator_value: f64 = 0.0 => non_negative,
        pub eps: f64 = 1e-10 => non_negative,
        pub maximize: bool = false,
    }
    name: "adagrad"
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
    states: &[StateSlot::always("sum").nonnegative()],
    flags: &["MAXIMIZE"],
    scalars: &AdagradScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl Adagrad {
    /// The decayed learning rate of step `step` (from 1).
    fn clr(&self, step: u64, lr: f64) -> f64 {
        lr / (1.0 + (step - 1) as f64 * self.lr_decay)
    }
}

impl UpdateRule for Adagrad {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", self.maximize)]
    }
    fn initial_value(&self, _sum: &str) -> f64 {
        self.initial_accumulator_value
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
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [sum] = slots(states);
        let clr = self.clr(counter.step, lr);
        for i in 0..param.len() {
            let g = l2_descent_grad(grad[i], param[i], self.maximize, self.weight_decay);
            sum[i] += g * g;
            param[i] -= clr * g / (sum[i].sqrt() + self.eps);
        }
    }
}
