//! NAdam, Adam with Nesterov momentum (Dozat, "Incorporating Nesterov Momentum into Adam",
//! ICLR 2016 workshop), with the momentum-decay schedule of `torch.optim.NAdam`:
//! mu_t = beta1 (1 - 0.96^(t psi) / 2), psi = `momentum_decay`.

use serde::{Deserialize, Serialize};

use super::adam::{AdamScalars, validate_adam_like};
use super::{StepCounter, UpdateRule, check, slots};
use crate::error::Result;
use crate::kernels::{ADAM_FAMILY_WGSL, Kernel};

/// `torch.optim.NAdam`'s arguments and defaults (`betas` as `beta1`, `beta2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NAdam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// psi in mu_t = beta1 (1 - 0.96^(t psi) / 2).
    pub momentum_decay: f64,
    /// Apply the weight decay to the parameter (as AdamW does) instead of the gradient.
    pub decoupled_weight_decay: bool,
    pub maximize: bool,
}

impl Default for NAdam {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// NAdam's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "nadam",
    source: include_str!("../../shaders/nadam.wgsl"),
    pieces: &[ADAM_FAMILY_WGSL],
    state_slots: &["exp_avg", "exp_avg_sq"],
    flags: &["MAXIMIZE", "DECOUPLED"],
    scalars: &AdamScalars::LAYOUT,
};

impl NAdam {
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
    fn name(&self) -> &'static str {
        "nadam"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        validate_adam_like(
            "nadam",
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
        )?;
        check::non_negative("nadam", "momentum_decay", self.momentum_decay)
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("MAXIMIZE", self.maximize),
            ("DECOUPLED", self.decoupled_weight_decay),
        ]
    }
    fn initial_states(&self) -> Vec<Option<f64>> {
        vec![Some(0.0), Some(0.0)]
    }
    fn advance(&self, counter: &StepCounter) -> StepCounter {
        let step = counter.step + 1;
        StepCounter {
            step,
            mu_product: counter.mu_product * self.mu(step),
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
        AdamScalars::bytes(
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self.decoupled_weight_decay,
            lr,
        )
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
    fn reference_step(
        &self,
        counter: &StepCounter,
        lr: f64,
        param: &mut [f64],
        grad: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let [exp_avg, exp_avg_sq] = slots(states);
        let bias_correction2 = 1.0 - self.beta2.powf(counter.step as f64);
        let (grad_coef, exp_avg_coef) = self.coefficients(counter);
        let (grad_coef, exp_avg_coef) = (lr * grad_coef, lr * exp_avg_coef);
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            if self.decoupled_weight_decay {
                param[i] *= 1.0 - lr * self.weight_decay;
            } else if self.weight_decay != 0.0 {
                g += self.weight_decay * param[i];
            }
            exp_avg[i] = super::lerp(exp_avg[i], g, 1.0 - self.beta1);
            exp_avg_sq[i] = self.beta2 * exp_avg_sq[i] + (1.0 - self.beta2) * g * g;
            let denom = exp_avg_sq[i].sqrt() / bias_correction2.sqrt() + self.eps;
            param[i] -= grad_coef * g / denom;
            param[i] -= exp_avg_coef * exp_avg[i] / denom;
        }
    }
}
