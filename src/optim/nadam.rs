//! NAdam, Adam with Nesterov momentum (Dozat, "Incorporating Nesterov Momentum into Adam",
//! ICLR 2016 workshop), with the momentum-decay schedule of `torch.optim.NAdam`:
//! mu_t = beta1 (1 - 0.96^(t psi) / 2), psi = `momentum_decay`.

use super::adam::{AdamFamily, AdamScalars, adam_family};
use super::{ReferenceTensor, StepCounter, UpdateRule, slots};
use crate::kernels::{ADAM_FAMILY_WGSL, Kernel, StateSlot};

hyperparameters! {
    /// `torch.optim.NAdam`'s arguments and defaults (`betas` as `beta1`, `beta2`).
    pub struct NAdam {
        pub lr: f64 = 2e-3 => non_negative,
        pub beta1: f64 = 0.9 => unit_interval,
        pub beta2: f64 = 0.999 => unit_interval,
        pub eps: f64 = 1e-8 => non_negative,
        /// Weight decay: an L2 penalty added to the gradient, or decoupled (`decoupled_weight_decay`).
        pub weight_decay: f64 = 0.0 => non_negative,
        /// psi in mu_t = beta1 (1 - 0.96^(t psi) / 2).
        pub momentum_decay: f64 = 4e-3 => non_negative,
        /// Apply the weight decay to the parameter (as AdamW does) instead of the gradient.
        pub decoupled_weight_decay: bool = false,
        pub maximize: bool = false,
    }
    name: "nadam"
}

/// NAdam's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "nadam",
    source: include_str!("../../shaders/nadam.wgsl"),
    pieces: &[ADAM_FAMILY_WGSL],
    states: &[StateSlot::always("exp_avg"), StateSlot::always("exp_avg_sq").unsigned()],
    flags: &["MAXIMIZE", "DECOUPLED"],
    scalars: &AdamScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl NAdam {
    fn family(&self) -> AdamFamily {
        adam_family!(self, self.decoupled_weight_decay)
    }

    /// The momentum coefficient mu_t.
    fn mu(&self, t: u64) -> f64 {
        self.beta1 * (1.0 - 0.5 * 0.96f64.powf(t as f64 * self.momentum_decay))
    }

    /// ((1 - mu_t) / (1 - prod mu_1..t), mu_{t+1} / (1 - prod mu_1..t+1)): the weights of the
    /// gradient and of the first moment in step t, per unit of learning rate.
    fn coefficients(&self, counter: &StepCounter) -> (f64, f64) {
        let mu = self.mu(counter.step);
        let mu_next = self.mu(counter.step + 1);
        (
            (1.0 - mu) / (1.0 - counter.mu_product),
            mu_next / (1.0 - counter.mu_product * mu_next),
        )
    }
}

impl UpdateRule for NAdam {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("MAXIMIZE", self.maximize),
            ("DECOUPLED", self.decoupled_weight_decay),
        ]
    }
    fn advance(&self, counter: &StepCounter) -> StepCounter {
        let step = counter.step + 1;
        StepCounter {
            step,
            mu_product: counter.mu_product * self.mu(step),
            ..*counter
        }
    }
    fn counter_at(&self, step: u64) -> StepCounter {
        // The running product, in the order the steps make it; once it underflows to 0 it
        // stays there.
        let mut counter = StepCounter::default();
        while counter.step < step {
            counter = self.advance(&counter);
            if counter.mu_product == 0.0 {
                return StepCounter { step, ..counter };
            }
        }
        counter
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        self.family().scalars(lr)
    }
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        let (grad_coef, exp_avg_coef) = self.coefficients(counter);
        let bias_correction2 = 1.0 - self.beta2.powf(counter.step as f64);
        // 1 / sqrt(1 - beta2^t): the kernel divides sqrt(v) by it, not v (v / (1 - beta2^t)
        // overflows float32 for gradients near 1e19 whose v still fits).
        [1.0 / bias_correction2.sqrt(), grad_coef, exp_avg_coef, 0.0]
    }
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        // mu_t tends to beta1 (to beta1 / 2 without momentum decay); its product to 0.
        let mu = if self.momentum_decay > 0.0 {
            self.beta1
        } else {
            0.5 * self.beta1
        };
        Some([1.0, 1.0 - mu, mu, 0.0])
    }
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [exp_avg, exp_avg_sq] = slots(states);
        let bias_correction2 = 1.0 - self.beta2.powf(counter.step as f64);
        let (grad_coef, exp_avg_coef) = self.coefficients(counter);
        let (grad_coef, exp_avg_coef) = (lr * grad_coef, lr * exp_avg_coef);
        let family = self.family();
        for i in 0..param.len() {
            let g =
                family.moments(lr, &mut param[i], grad[i], &mut exp_avg[i], &mut exp_avg_sq[i]);
            let denom = exp_avg_sq[i].sqrt() / bias_correction2.sqrt() + self.eps;
            param[i] -= grad_coef * g / denom;
            param[i] -= exp_avg_coef * exp_avg[i] / denom;
        }
    }
}
