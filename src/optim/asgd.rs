//! Averaged SGD (Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging",
//! SIAM J. Control Optim. 1992), as `torch.optim.ASGD`: SGD with a decaying step size and a
//! running average of the iterates, `ax`, which is the answer to read (`read_state(.., "ax")`).

use super::{ReferenceTensor, StepCounter, UpdateRule, l2_descent_grad, slots, uniform_bytes};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch.optim.ASGD`'s arguments and defaults.
    pub struct Asgd {
        pub lr: f64 = 1e-2 => non_negative,
        /// The step size's decay: eta = lr / (1 + lambd * lr * (t - 1))^alpha at step t.
        pub lambd: f64 = 1e-4 => non_negative,
        /// The power of the step size's decay.
        pub alpha: f64 = 0.75 => non_negative,
        /// The step after which averaging starts: ax averages the iterates from step
        /// t0 + 2 on (before, it is the last iterate).
        pub t0: f64 = 1e6 => finite,
        /// L2 penalty, added to the gradient.
        pub weight_decay: f64 = 0.0 => non_negative,
        pub maximize: bool = false,
    }
    name: "asgd"
}

shader_struct! {
    /// The uniform of `shaders/asgd.wgsl`.
    pub struct AsgdScalars {
        pub lr: f32,
        pub lambd: f32,
        pub alpha: f32,
        pub t0: f32,
        pub weight_decay: f32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// ASGD's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "asgd",
    source: include_str!("../../shaders/asgd.wgsl"),
    pieces: &[],
    states: &[StateSlot::always("ax")],
    flags: &["MAXIMIZE"],
    scalars: &AsgdScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl Asgd {
    /// The step size and the averaging weight of step `step` (from 1), as torch computes them
    /// at the end of the step before: eta = lr / (1 + lambd * lr * (t - 1))^alpha and
    /// mu = 1 / max(1, t - 1 - t0). (torch takes that `lr` from the step before; here it is
    /// this step's, which differs only under a schedule.)
    fn eta_mu(&self, step: u64, lr: f64) -> (f64, f64) {
        let before = (step - 1) as f64;
        let eta = lr / (1.0 + self.lambd * lr * before).powf(self.alpha);
        let mu = 1.0 / (before - self.t0).max(1.0);
        (eta, mu)
    }
}

impl UpdateRule for Asgd {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", self.maximize)]
    }
    /// Before averaging starts (step t0 + 2; torch's default t0 is a million) `ax` is written,
    /// not read: the parameter read and written, the gradient read, `ax` written.
    fn bytes_per_element(&self, storage: &crate::Storage) -> f64 {
        storage.bytes_per_element(&["ax"]) - storage.state_bytes(&["ax"])
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&AsgdScalars {
            lr: lr as f32,
            lambd: self.lambd as f32,
            alpha: self.alpha as f32,
            t0: self.t0 as f32,
            weight_decay: self.weight_decay as f32,
            ..Default::default()
        })
    }
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [ax] = slots(states);
        let (eta, mu) = self.eta_mu(counter.step, lr);
        for i in 0..param.len() {
            let g = l2_descent_grad(grad[i], param[i], self.maximize, self.weight_decay);
            param[i] = param[i] * (1.0 - self.lambd * eta) - eta * g;
            ax[i] = if mu == 1.0 {
                param[i]
            } else {
                ax[i] + mu * (param[i] - ax[i])
            };
        }
    }
}
