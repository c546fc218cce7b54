//! RAdam, Adam with a rectified adaptive learning rate (Liu et al., "On the Variance of the
//! Adaptive Learning Rate and Beyond", ICLR 2020), as `torch.optim.RAdam`.

use super::adam::{AdamFamily, AdamScalars, adam_family};
use super::{ReferenceTensor, StepCounter, UpdateRule, slots};
use crate::kernels::{ADAM_FAMILY_WGSL, Kernel, StateSlot};

hyperparameters! {
    /// `torch.optim.RAdam`'s arguments and defaults (`betas` as `beta1`, `beta2`).
    pub struct RAdam {
        pub lr: f64 = 1e-3 => non_negative,
        pub beta1: f64 = 0.9 => unit_interval,
        pub beta2: f64 = 0.999 => unit_interval,
        pub eps: f64 = 1e-8 => non_negative,
        /// Weight decay: an L2 penalty added to the gradient, or decoupled (`decoupled_weight_decay`).
        pub weight_decay: f64 = 0.0 => non_negative,
        /// Apply the weight decay to the parameter (as AdamW does) instead of the gradient.
        pub decoupled_weight_decay: bool = false,
        pub maximize: bool = false,
    }
    name: "radam"
}

/// RAdam's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "radam",
    source: include_str!("../../shaders/radam.wgsl"),
    pieces: &[ADAM_FAMILY_WGSL],
    states: &[StateSlot::always("exp_avg"), StateSlot::always("exp_avg_sq").unsigned()],
    flags: &["MAXIMIZE", "DECOUPLED"],
    scalars: &AdamScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl RAdam {
    fn family(&self) -> AdamFamily {
        adam_family!(self, self.decoupled_weight_decay)
    }

    /// The variance rectification r_t of step t, or `None` while rho_t <= 5 (too few steps for
    /// the second moment to be trusted: the step is plain momentum SGD).
    fn rectification(&self, t: u64) -> Option<f64> {
        let t = t as f64;
        let beta2_t = self.beta2.powf(t);
        let rho_inf = 2.0 / (1.0 - self.beta2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * beta2_t / (1.0 - beta2_t);
        (rho_t > 5.0).then(|| {
            ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt()
        })
    }
}

impl UpdateRule for RAdam {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("MAXIMIZE", self.maximize),
            ("DECOUPLED", self.decoupled_weight_decay),
        ]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        self.family().scalars(lr)
    }
    /// [step size per unit of lr, 1 if rectified else 0]: r_t sqrt(1 - b2^t) / (1 - b1^t) once
    /// rho_t > 5, else 1 / (1 - b1^t).
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        let t = counter.step as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(t);
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        match self.rectification(counter.step) {
            Some(r) => [
                r * bias_correction2.sqrt() / bias_correction1,
                1.0,
                0.0,
                0.0,
            ],
            None => [1.0 / bias_correction1, 0.0, 0.0, 0.0],
        }
    }
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        // rho_t tends to rho_inf: rectified for ever if that exceeds 5 (beta2 > 2/3).
        let rectified = 2.0 / (1.0 - self.beta2) - 1.0 > 5.0;
        Some([1.0, if rectified { 1.0 } else { 0.0 }, 0.0, 0.0])
    }
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [exp_avg, exp_avg_sq] = slots(states);
        let t = counter.step as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(t);
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        let rect = self.rectification(counter.step);
        let family = self.family();
        for i in 0..param.len() {
            family.moments(lr, &mut param[i], grad[i], &mut exp_avg[i], &mut exp_avg_sq[i]);
            let corrected = exp_avg[i] / bias_correction1;
            param[i] -= match rect {
                Some(r) => {
                    let adaptive = bias_correction2.sqrt() / (exp_avg_sq[i].sqrt() + self.eps);
                    corrected * lr * adaptive * r
                }
                None => corrected * lr,
            };
        }
    }
}
