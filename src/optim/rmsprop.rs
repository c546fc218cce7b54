//! RMSprop (Hinton, Srivastava & Swersky, "Neural Networks for Machine Learning", lecture 6e,
//! 2012; the centered variant from Graves, "Generating Sequences With Recurrent Neural Networks",
//! 2013), as `torch.optim.RMSprop`.

use super::{ReferenceTensor, StepCounter, UpdateRule, l2_descent_grad, slots, uniform_bytes};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch.optim.RMSprop`'s arguments and defaults.
    pub struct RmsProp {
        pub lr: f64 = 1e-2 => non_negative,
        /// Smoothing constant of the squared-gradient average. torch only asks alpha >= 0
        /// (above 1 the average is not one, but torch accepts it).
        pub alpha: f64 = 0.99 => non_negative,
        pub eps: f64 = 1e-8 => non_negative,
        /// L2 penalty, added to the gradient.
        pub weight_decay: f64 = 0.0 => non_negative,
        /// Momentum factor (0: none, and no momentum buffer kept).
        pub momentum: f64 = 0.0 => non_negative,
        /// Normalize by an estimate of the gradient's variance instead of its second moment.
        pub centered: bool = false,
        pub maximize: bool = false,
    }
    name: "rmsprop"
}

shader_struct! {
    /// The uniform of `shaders/rmsprop.wgsl`.
    pub struct RmspropScalars {
        pub lr: f32,
        pub alpha: f32,
        pub one_minus_alpha: f32,
        pub eps: f32,
        pub weight_decay: f32,
        pub momentum: f32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

/// RMSprop's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "rmsprop",
    source: include_str!("../../shaders/rmsprop.wgsl"),
    pieces: &[],
    states: &[
        StateSlot::always("square_avg").nonnegative(),
        StateSlot::with_flag("grad_avg", "CENTERED"),
        StateSlot::with_flag("momentum_buffer", "MOMENTUM"),
    ],
    flags: &["CENTERED", "MOMENTUM", "MAXIMIZE"],
    scalars: &RmspropScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl UpdateRule for RmsProp {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("CENTERED", self.centered),
            ("MOMENTUM", self.momentum > 0.0),
            ("MAXIMIZE", self.maximize),
        ]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&RmspropScalars {
            lr: lr as f32,
            alpha: self.alpha as f32,
            one_minus_alpha: (1.0 - self.alpha) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            momentum: self.momentum as f32,
            ..Default::default()
        })
    }
    fn reference_step(&self, _counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [square_avg, grad_avg, buf] = slots(states);
        for i in 0..param.len() {
            let g = l2_descent_grad(grad[i], param[i], self.maximize, self.weight_decay);
            let (sq_old, ga_old) = (square_avg[i], grad_avg.get(i).copied().unwrap_or(0.0));
            square_avg[i] = self.alpha * sq_old + (1.0 - self.alpha) * g * g;
            let avg = if self.centered {
                grad_avg[i] = super::lerp(ga_old, g, 1.0 - self.alpha);
                // sq - ga^2 updated as a variance, as the kernel does (equal in exact
                // arithmetic; no cancellation of two equal squares), clamped at 0.
                let d = g - ga_old;
                let variance = self.alpha * (sq_old - ga_old * ga_old)
                    + self.alpha * (1.0 - self.alpha) * d * d;
                variance.max(0.0).sqrt() + self.eps
            } else {
                square_avg[i].sqrt() + self.eps
            };
            if self.momentum > 0.0 {
                buf[i] = self.momentum * buf[i] + g / avg;
                param[i] -= lr * buf[i];
            } else {
                param[i] -= lr * g / avg;
            }
        }
    }
}
