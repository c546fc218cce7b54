//! Stochastic gradient descent with momentum (Polyak 1964), dampening and Nesterov momentum
//! (Sutskever et al., "On the importance of initialization and momentum in deep learning",
//! ICML 2013), as `torch.optim.SGD`.

use serde::{Deserialize, Serialize};

use super::{StepCounter, UpdateRule, check, slots, uniform_bytes};
use crate::error::{Error, Result};
use crate::kernels::{Kernel, shader_struct};

/// `torch.optim.SGD`'s arguments and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// L2 penalty, added to the gradient.
    pub weight_decay: f64,
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

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
    state_slots: &["momentum_buffer"],
    flags: &["MOMENTUM", "NESTEROV", "MAXIMIZE", "DECOUPLED"],
    scalars: &SgdScalars::LAYOUT,
};

/// The momentum options SGD and SGDW share, checked alike.
pub(crate) fn validate_momentum(
    optimizer: &'static str,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
) -> Result<()> {
    check::non_negative(optimizer, "momentum", momentum)?;
    // torch.optim.SGD checks nothing of dampening: any finite value.
    check::finite(optimizer, "dampening", dampening)?;
    if nesterov && (momentum <= 0.0 || dampening != 0.0) {
        return Err(Error::InvalidConfig {
            optimizer,
            reason: format!(
                "nesterov momentum requires momentum > 0 and zero dampening \
                 (got momentum {momentum}, dampening {dampening})"
            ),
        });
    }
    Ok(())
}

/// The momentum buffer update shared by SGD and SGDW, on the already-decayed direction `d`.
/// Returns the direction to step along.
pub(crate) fn momentum_direction(
    d: f64,
    buf: &mut f64,
    first_step: bool,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
) -> f64 {
    *buf = if first_step {
        d
    } else {
        momentum * *buf + (1.0 - dampening) * d
    };
    if nesterov { d + momentum * *buf } else { *buf }
}

impl UpdateRule for Sgd {
    fn name(&self) -> &'static str {
        "sgd"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        check::non_negative("sgd", "lr", self.lr)?;
        check::non_negative("sgd", "weight_decay", self.weight_decay)?;
        validate_momentum("sgd", self.momentum, self.dampening, self.nesterov)
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("MOMENTUM", self.momentum != 0.0),
            ("NESTEROV", self.nesterov),
            ("MAXIMIZE", self.maximize),
            ("DECOUPLED", false),
        ]
    }
    fn initial_states(&self) -> Vec<Option<f64>> {
        vec![(self.momentum != 0.0).then_some(0.0)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&SgdScalars {
            lr: lr as f32,
            momentum: self.momentum as f32,
            dampening_keep: (1.0 - self.dampening) as f32,
            weight_decay: self.weight_decay as f32,
            decay: 0.0,
            ..Default::default()
        })
    }
    fn reference_step(
        &self,
        counter: &StepCounter,
        lr: f64,
        param: &mut [f64],
        grad: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let [buf] = slots(states);
        for i in 0..param.len() {
            let mut d = if self.maximize { -grad[i] } else { grad[i] };
            if self.weight_decay != 0.0 {
                d += self.weight_decay * param[i];
            }
            if self.momentum != 0.0 {
                d = momentum_direction(
                    d,
                    &mut buf[i],
                    counter.step == 1,
                    self.momentum,
                    self.dampening,
                    self.nesterov,
                );
            }
            param[i] -= lr * d;
        }
    }
}
