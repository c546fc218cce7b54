//! Stochastic gradient descent with momentum (Polyak 1964), dampening and Nesterov momentum
//! (Sutskever et al., "On the importance of initialization and momentum in deep learning",
//! ICML 2013), as `torch.optim.SGD`. SGDW ([`super::sgdw`]) is the same configuration with
//! decoupled weight decay, run by the same kernel.

use super::{ReferenceTensor, Hyperparameters, L2, StepCounter, UpdateRule, WeightDecay, l2_descent_grad, slots, uniform_bytes};
use crate::error::{Error, Result};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch.optim.SGD`'s arguments and defaults; with [`Decoupled`](super::Decoupled) weight decay, SGDW's (the same
    /// names).
    pub struct SgdConfig<W: WeightDecay> {
        pub lr: f64 = 1e-3 => non_negative,
        /// Momentum factor (0: none, and no momentum buffer kept).
        pub momentum: f64 = 0.0 => non_negative,
        /// Any finite value: torch.optim.SGD checks nothing of it.
        pub dampening: f64 = 0.0 => finite,
        /// Nesterov momentum (needs momentum > 0 and zero dampening).
        pub nesterov: bool = false,
        /// SGD: the L2 penalty, added to the gradient. SGDW: decoupled, the parameter shrinks
        /// by `lr * weight_decay` of itself.
        pub weight_decay: f64 = 0.0 => non_negative,
        pub maximize: bool = false,
    }
    name: if W::DECOUPLED { "sgdw" } else { "sgd" }
}

/// `torch.optim.SGD`.
pub type Sgd = SgdConfig<L2>;

shader_struct! {
    /// The uniform of `shaders/sgd.wgsl`, shared with SGDW.
    pub struct SgdScalars {
        pub lr: f32,
        pub momentum: f32,
        pub dampening_keep: f32,
        pub weight_decay: f32,
        pub decay: f32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// The SGD family's kernel: SGD, and SGDW with `DECOUPLED`.
pub static KERNEL: Kernel = Kernel {
    name: "sgd",
    source: include_str!("../../shaders/sgd.wgsl"),
    pieces: &[],
    states: &[StateSlot::with_flag("momentum_buffer", "MOMENTUM")],
    flags: &["MOMENTUM", "NESTEROV", "MAXIMIZE", "DECOUPLED"],
    scalars: &SgdScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl<W: WeightDecay> UpdateRule for SgdConfig<W> {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn check_together(&self) -> Result<()> {
        let (momentum, dampening) = (self.momentum, self.dampening);
        if self.nesterov && (momentum <= 0.0 || dampening != 0.0) {
            return Err(Error::InvalidConfig {
                optimizer: self.name(),
                reason: format!(
                    "nesterov momentum requires momentum > 0 and zero dampening \
                     (got momentum {momentum}, dampening {dampening})"
                ),
            });
        }
        Ok(())
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("MOMENTUM", self.momentum != 0.0),
            ("NESTEROV", self.nesterov),
            ("MAXIMIZE", self.maximize),
            ("DECOUPLED", W::DECOUPLED),
        ]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        let (l2, decoupled) = if W::DECOUPLED {
            (0.0, lr * self.weight_decay)
        } else {
            (self.weight_decay, 0.0)
        };
        uniform_bytes(&SgdScalars {
            lr: lr as f32,
            momentum: self.momentum as f32,
            dampening_keep: (1.0 - self.dampening) as f32,
            weight_decay: l2 as f32,
            decay: decoupled as f32,
            ..Default::default()
        })
    }
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [buf] = slots(states);
        for i in 0..param.len() {
            // SGD descends along g + wd * p; SGDW's momentum accumulates lr * g.
            let mut d = if W::DECOUPLED {
                lr * l2_descent_grad(grad[i], param[i], self.maximize, 0.0)
            } else {
                l2_descent_grad(grad[i], param[i], self.maximize, self.weight_decay)
            };
            if self.momentum != 0.0 {
                buf[i] = if counter.step == 1 {
                    d
                } else {
                    self.momentum * buf[i] + (1.0 - self.dampening) * d
                };
                d = if self.nesterov {
                    d + self.momentum * buf[i]
                } else {
                    buf[i]
                };
            }
            param[i] = if W::DECOUPLED {
                param[i] - d - lr * self.weight_decay * param[i]
            } else {
                param[i] - lr * d
            };
        }
    }
}
