//! Lion, "EvoLved Sign Momentum" (Chen et al., "Symbolic Discovery of Optimization
//! Algorithms", NeurIPS 2023, Algorithm 2), as `lion_pytorch.Lion` (lion-pytorch 0.2.5): the
//! sign of an interpolation of momentum and gradient, one state per element.

use super::{ReferenceTensor, StepCounter, UpdateRule, slots, uniform_bytes};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `lion_pytorch.Lion`'s arguments and defaults (`betas` as `beta1`, `beta2`). It has no
    /// `maximize`.
    pub struct Lion {
        pub lr: f64 = 1e-4 => non_negative,
        /// The interpolation between momentum and gradient whose sign is the update.
        pub beta1: f64 = 0.9 => unit_interval,
        /// The momentum's decay.
        pub beta2: f64 = 0.99 => unit_interval,
        /// Decay of the parameters, scaled by the learning rate: each step multiplies them by
        /// 1 - lr * weight_decay.
        pub weight_decay: f64 = 0.0 => non_negative,
        /// Divide `weight_decay` by the constructor's learning rate (`lr` here), so that the
        /// decay per step is `weight_decay` itself at that rate (and follows a schedule).
        pub decoupled_weight_decay: bool = false,
    }
    name: "lion"
}

shader_struct! {
    /// The uniform of `shaders/lion.wgsl`.
    pub struct LionScalars {
        pub lr: f32,
        /// 1 - lr * lambda, the parameters' decay this step.
        pub decay: f32,
        pub beta1: f32,
        pub one_minus_beta1: f32,
        pub beta2: f32,
        pub one_minus_beta2: f32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

/// Lion's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "lion",
    source: include_str!("../../shaders/lion.wgsl"),
    pieces: &[],
    states: &[StateSlot::always("exp_avg")],
    // step.wgsl declares MAXIMIZE for every kernel; the reference has no `maximize`: it stays off.
    flags: &["MAXIMIZE"],
    scalars: &LionScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl Lion {
    /// The parameters' decay factor at learning rate `lr`: 1 - lr * lambda, lambda the weight
    /// decay, or with `decoupled_weight_decay` the weight decay over the constructor's rate.
    fn decay(&self, lr: f64) -> f64 {
        let lambda = if self.decoupled_weight_decay {
            if self.lr == 0.0 {
                0.0
            } else {
                self.weight_decay / self.lr
            }
        } else {
            self.weight_decay
        };
        1.0 - lr * lambda
    }
}

impl UpdateRule for Lion {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", false)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&LionScalars {
            lr: lr as f32,
            decay: self.decay(lr) as f32,
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            ..Default::default()
        })
    }
    fn reference_step(&self, _counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [exp_avg] = slots(states);
        let decay = self.decay(lr);
        for i in 0..param.len() {
            let c = self.beta1 * exp_avg[i] + (1.0 - self.beta1) * grad[i];
            param[i] = param[i] * decay - lr * super::sign(c);
            exp_avg[i] = self.beta2 * exp_avg[i] + (1.0 - self.beta2) * grad[i];
        }
    }
}
