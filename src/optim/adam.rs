//! Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015) with L2 weight
//! decay and the AMSGrad variant (Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond",
//! ICLR 2018), as `torch.optim.Adam`. AdamW ([`super::adamw`]) is the same configuration with
//! decoupled decay, run by the same kernel.
//!
//! Also the start every Adam-family rule shares (Adam, AdamW, NAdam, RAdam): `AdamFamily`
//! writes their uniform and computes their decay and moments in float64, as
//! `shaders/adam_family.wgsl` does on the device.

use super::{ReferenceTensor, L2, StepCounter, UpdateRule, WeightDecay, l2_descent_grad, slots, uniform_bytes};
use crate::kernels::{ADAM_FAMILY_WGSL, Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch.optim.Adam`'s arguments and defaults (`betas` as `beta1`, `beta2`); with
    /// [`Decoupled`](super::Decoupled) weight decay, `torch.optim.AdamW`'s.
    pub struct AdamConfig<W: WeightDecay> {
        pub lr: f64 = 1e-3 => non_negative,
        pub beta1: f64 = 0.9 => unit_interval,
        pub beta2: f64 = 0.999 => unit_interval,
        pub eps: f64 = 1e-8 => non_negative,
        /// Adam: the L2 penalty, added to the gradient (default 0). AdamW: decoupled, the
        /// parameter shrinks by `lr * weight_decay` of itself (default 0.01).
        pub weight_decay: f64 = if W::DECOUPLED { 1e-2 } else { 0.0 } => non_negative,
        /// Normalize by the running maximum of the second moment.
        pub amsgrad: bool = false,
        pub maximize: bool = false,
    }
    name: if W::DECOUPLED { "adamw" } else { "adam" }
}

/// `torch.optim.Adam`.
pub type Adam = AdamConfig<L2>;

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

/// What the Adam-family rules share: the hyperparameters that `shaders/adam_family.wgsl`
/// reads, its uniform, and its decay and moments in float64.
pub(crate) struct AdamFamily {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Weight decay applied to the parameter (AdamW's) rather than added to the gradient.
    pub decoupled: bool,
    pub maximize: bool,
}

/// The [`AdamFamily`] of a configuration with the Adam family's field names (`beta1`, `beta2`,
/// `eps`, `weight_decay`, `maximize`), its decay decoupled when `decoupled`.
macro_rules! adam_family {
    ($config:expr, $decoupled:expr) => {
        $crate::optim::adam::AdamFamily {
            beta1: $config.beta1,
            beta2: $config.beta2,
            eps: $config.eps,
            weight_decay: $config.weight_decay,
            decoupled: $decoupled,
            maximize: $config.maximize,
        }
    };
}
pub(crate) use adam_family;

impl AdamFamily {
    /// The uniform of a step at learning rate `lr`, as bytes.
    pub(crate) fn scalars(&self, lr: f64) -> Vec<u8> {
        let (l2, decoupled) = if self.decoupled {
            (0.0, lr * self.weight_decay)
        } else {
            (self.weight_decay, 0.0)
        };
        uniform_bytes(&AdamScalars {
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            weight_decay: l2 as f32,
            decay: decoupled as f32,
            lr: lr as f32,
            beta1: self.beta1 as f32,
        })
    }

    /// The shared start of one element's step, as `adam_moments` in WGSL: decays the parameter
    /// (decoupled) or the gradient (L2), updates the two moments, and returns the gradient the
    /// rule goes on with.
    pub(crate) fn moments(
        &self,
        lr: f64,
        param: &mut f64,
        grad: f64,
        exp_avg: &mut f64,
        exp_avg_sq: &mut f64,
    ) -> f64 {
        let g = if self.decoupled {
            *param *= 1.0 - lr * self.weight_decay;
            l2_descent_grad(grad, *param, self.maximize, 0.0)
        } else {
            l2_descent_grad(grad, *param, self.maximize, self.weight_decay)
        };
        *exp_avg = super::lerp(*exp_avg, g, 1.0 - self.beta1);
        *exp_avg_sq = self.beta2 * *exp_avg_sq + (1.0 - self.beta2) * g * g;
        g
    }
}

/// The kernel of Adam, and of AdamW with `DECOUPLED`.
pub static KERNEL: Kernel = Kernel {
    name: "adam",
    source: include_str!("../../shaders/adam.wgsl"),
    pieces: &[ADAM_FAMILY_WGSL],
    states: &[
        StateSlot::always("exp_avg"),
        StateSlot::always("exp_avg_sq").unsigned(),
        StateSlot::with_flag("max_exp_avg_sq", "AMSGRAD").unsigned(),
    ],
    flags: &["AMSGRAD", "MAXIMIZE", "DECOUPLED"],
    scalars: &AdamScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl<W: WeightDecay> AdamConfig<W> {
    fn family(&self) -> AdamFamily {
        adam_family!(self, W::DECOUPLED)
    }
}

impl<W: WeightDecay> UpdateRule for AdamConfig<W> {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("AMSGRAD", self.amsgrad),
            ("MAXIMIZE", self.maximize),
            ("DECOUPLED", W::DECOUPLED),
        ]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        self.family().scalars(lr)
    }
    /// [1 / (1 - beta1^t), 1 / sqrt(1 - beta2^t)]: the bias corrections of step t.
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        let t = counter.step as f64;
        [
            1.0 / (1.0 - self.beta1.powf(t)),
            1.0 / (1.0 - self.beta2.powf(t)).sqrt(),
            0.0,
            0.0,
        ]
    }
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        Some([1.0, 1.0, 0.0, 0.0])
    }
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [exp_avg, exp_avg_sq, max_exp_avg_sq] = slots(states);
        let family = self.family();
        let t = counter.step as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(t);
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        for i in 0..param.len() {
            family.moments(lr, &mut param[i], grad[i], &mut exp_avg[i], &mut exp_avg_sq[i]);
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
