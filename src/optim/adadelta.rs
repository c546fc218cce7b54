//! Adadelta (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012), as
//! `torch.optim.Adadelta`.

use super::{ReferenceTensor, StepCounter, UpdateRule, l2_descent_grad, slots, uniform_bytes};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch.optim.Adadelta`'s arguments and defaults.
    pub struct Adadelta {
        /// Scales the delta before it is applied (1 in the paper).
        pub lr: f64 = 1.0 => non_negative,
        /// Decay of the running averages; torch accepts [0, 1] (1: the averages never move).
        pub rho: f64 = 0.9 => closed_unit_interval,
        pub eps: f64 = 1e-6 => non_negative,
        /// L2 penalty, added to the gradient.
        pub weight_decay: f64 = 0.0 => non_negative,
        pub maximize: bool = false,
    }
    name: "adadelta"
}

shader_struct! {
    /// The uniform of `shaders/adadelta.wgsl`.
    pub struct AdadeltaScalars {
        pub lr: f32,
        pub rho: f32,
        pub one_minus_rho: f32,
        pub eps: f32,
        pub weight_decay: f32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// Adadelta's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "adadelta",
    source: include_str!("../../shaders/adadelta.wgsl"),
    pieces: &[],
    states: &[StateSlot::always("square_avg").unsigned(),
        StateSlot::always("acc_delta").unsigned(),
    ],
    flags: &["MAXIMIZE"],
    scalars: &AdadeltaScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl UpdateRule for Adadelta {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", self.maximize)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&AdadeltaScalars {
            lr: lr as f32,
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            ..Default::default()
        })
    }
    fn reference_step(&self, _counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [square_avg, acc_delta] = slots(states);
        for i in 0..param.len() {
            let g = l2_descent_grad(grad[i], param[i], self.maximize, self.weight_decay);
            square_avg[i] = self.rho * square_avg[i] + (1.0 - self.rho) * g * g;
            let delta = (acc_delta[i] + self.eps).sqrt() / (square_avg[i] + self.eps).sqrt() * g;
            acc_delta[i] = self.rho * acc_delta[i] + (1.0 - self.rho) * delta * delta;
            param[i] -= lr * delta;
        }
    }
}
