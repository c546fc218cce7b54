//! Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015) with L2 weight
//! decay and the AMSGrad variant (Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond",
//! ICLR 2018), as `torch.optim.Adam`. AdamW ([`super::adamw`]) runs the same kernel with
//! decoupled decay.

use serde::{Deserialize, Serialize};

use super::{StepCounter, UpdateRule, check, slots, uniform_bytes};
use crate::error::Result;
use crate::kernels::{ADAM_FAMILY_WGSL, Kernel, shader_struct};

/// `torch.optim.Adam`'s arguments and defaults (`betas` as `beta1`, `beta2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty, added to the gradient.
    pub weight_decay: f64,
    /// Normalize by the running maximum of the second moment.
    pub amsgrad: bool,
    pub maximize: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
        }
    }
}

shader_struct! {
    /// The uniform of the Adam family (`shaders/adam_family.wgsl`): Adam, AdamW, NAdam, RAdam.
    pub struct AdamScalars {
        pub one_minus_beta1: f32,
        pub beta2: f32,
        pub one_minus_beta2: f32,
        pub eps: f32,
        pub weight_decay: f32,
        /// Decoupled decay: lr * weight_decay (0 with L2 decay).
        pub decay: f32,
        pub lr: f32,
        pub beta1: f32,
    }
}

impl AdamScalars {
    /// The uniform of an Adam-family step at learning rate `lr`, as bytes: the weight decay
    /// goes to the gradient (L2) or, `decoupled`, to the parameter as lr * weight_decay.
    pub(crate) fn bytes(
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
        lr: f64,
    ) -> Vec<u8> {
        uniform_bytes(&AdamScalars {
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: eps as f32,
            weight_decay: if decoupled { 0.0 } else { weight_decay as f32 },
            decay: if decoupled {
                (lr * weight_decay) as f32
            } else {
                0.0
            },
            lr: lr as f32,
            beta1: beta1 as f32,
        })
    }
}

/// The Adam family's kernel: Adam, and AdamW with `DECOUPLED`.
pub static KERNEL: Kernel = Kernel {
    name: "adam",
    source: include_str!("../../shaders/adam.wgsl"),
    pieces: &[ADAM_FAMILY_WGSL],
    state_slots: &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    flags: &["AMSGRAD", "MAXIMIZE", "DECOUPLED"],
    scalars: &AdamScalars::LAYOUT,
};

/// The checks every Adam-like optimizer shares.
pub(crate) fn validate_adam_like(
    optimizer: &'static str,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
) -> Result<()> {
    check::non_negative(optimizer, "lr", lr)?;
    check::non_negative(optimizer, "eps", eps)?;
    check::unit_interval(optimizer, "beta1", beta1)?;
    check::unit_interval(optimizer, "beta2", beta2)?;
    check::non_negative(optimizer, "weight_decay", weight_decay)
}

impl Adam {
    /// Adam's uniform; `decoupled` makes it AdamW's.
    pub(crate) fn scalars_with(&self, decoupled: bool, lr: f64) -> Vec<u8> {
        AdamScalars::bytes(
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            decoupled,
            lr,
        )
    }

    /// [1 / (1 - beta1^t), 1 / sqrt(1 - beta2^t)]: the bias corrections of step t.
    pub(crate) fn bias_corrections(&self, counter: &StepCounter) -> [f64; 4] {
        let t = counter.step as f64;
        [
            1.0 / (1.0 - self.beta1.powf(t)),
            1.0 / (1.0 - self.beta2.powf(t)).sqrt(),
            0.0,
            0.0,
        ]
    }

    /// Adam's reference step; `decoupled` makes it AdamW's.
    pub(crate) fn reference_with(
        &self,
        decoupled: bool,
        counter: &StepCounter,
        lr: f64,
        param: &mut [f64],
        grad: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let [exp_avg, exp_avg_sq, max_exp_avg_sq] = slots(states);
        let t = counter.step as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(t);
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            if decoupled {
                param[i] *= 1.0 - lr * self.weight_decay;
            } else if self.weight_decay != 0.0 {
                g += self.weight_decay * param[i];
            }
            exp_avg[i] = super::lerp(exp_avg[i], g, 1.0 - self.beta1);
            exp_avg_sq[i] = self.beta2 * exp_avg_sq[i] + (1.0 - self.beta2) * g * g;
            let second_moment = if self.amsgrad {
                max_exp_avg_sq[i] = max_exp_avg_sq[i].max(exp_avg_sq[i]);
                max_exp_avg_sq[i]
            } else {
                exp_avg_sq[i]
            };
            let denom = second_moment.sqrt() / bias_correction2.sqrt() + self.eps;
            param[i] -= lr / bias_correction1 * exp_avg[i] / denom;
        }
    }
}

impl UpdateRule for Adam {
    fn name(&self) -> &'static str {
        "adam"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        validate_adam_like(
            "adam",
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
            ("DECOUPLED", false),
        ]
    }
    fn initial_states(&self) -> Vec<Option<f64>> {
        vec![Some(0.0), Some(0.0), self.amsgrad.then_some(0.0)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        self.scalars_with(false, lr)
    }
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        self.bias_corrections(counter)
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
        self.reference_with(false, counter, lr, param, grad, states)
    }
}
