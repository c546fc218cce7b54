//! Adamax, Adam under the infinity norm (Kingma & Ba, "Adam: A Method for Stochastic
//! Optimization", ICLR 2015, section 7.1), as `torch.optim.Adamax`.

use super::{ReferenceTensor, StepCounter, UpdateRule, l2_descent_grad, slots, uniform_bytes};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch.optim.Adamax`'s arguments and defaults (`betas` as `beta1`, `beta2`).
    pub struct Adamax {
        pub lr: f64 = 2e-3 => non_negative,
        pub beta1: f64 = 0.9 => unit_interval,
        pub beta2: f64 = 0.999 => unit_interval,
        pub eps: f64 = 1e-8 => non_negative,
        /// L2 penalty, added to the gradient.
        pub weight_decay: f64 = 0.0 => non_negative,
        pub maximize: bool = false,
    }
    name: "adamax"
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
    states: &[StateSlot::always("exp_avg"), StateSlot::always("exp_inf").unsigned()],
    flags: &["MAXIMIZE"],
    scalars: &AdamaxScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl UpdateRule for Adamax {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", self.maximize)]
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
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [exp_avg, exp_inf] = slots(states);
        let bias_correction = 1.0 - self.beta1.powf(counter.step as f64);
        for i in 0..param.len() {
            let g = l2_descent_grad(grad[i], param[i], self.maximize, self.weight_decay);
            exp_avg[i] = super::lerp(exp_avg[i], g, 1.0 - self.beta1);
            exp_inf[i] = (self.beta2 * exp_inf[i]).max(g.abs() + self.eps);
            param[i] -= lr / bias_correction * exp_avg[i] / exp_inf[i];
        }
    }
}
