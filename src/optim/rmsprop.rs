//! RMSprop (Hinton, Srivastava & Swersky, "Neural Networks for Machine Learning", lecture 6e,
//! 2012; the centered variant from Graves, "Generating Sequences With Recurrent Neural Networks",
//! 2013), as `torch.optim.RMSprop`.

use serde::{Deserialize, Serialize};

use super::{StepCounter, UpdateRule, check, slots, uniform_bytes};
use crate::error::Result;
use crate::kernels::{Kernel, shader_struct};

/// `torch.optim.RMSprop`'s arguments and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmsProp {
    pub lr: f64,
    /// Smoothing constant of the squared-gradient average.
    pub alpha: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    /// Normalize by an estimate of the gradient's variance instead of its second moment.
    pub centered: bool,
    pub maximize: bool,
}

impl Default for RmsProp {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
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
    state_slots: &["square_avg", "grad_avg", "momentum_buffer"],
    flags: &["CENTERED", "MOMENTUM", "MAXIMIZE"],
    scalars: &RmspropScalars::LAYOUT,
};

impl UpdateRule for RmsProp {
    fn name(&self) -> &'static str {
        "rmsprop"
    }
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn validate(&self) -> Result<()> {
        check::non_negative("rmsprop", "lr", self.lr)?;
        // torch.optim.RMSprop only asks alpha >= 0 (above 1 the average is not one, but
        // torch accepts it).
        check::non_negative("rmsprop", "alpha", self.alpha)?;
        check::non_negative("rmsprop", "eps", self.eps)?;
        check::non_negative("rmsprop", "weight_decay", self.weight_decay)?;
        check::non_negative("rmsprop", "momentum", self.momentum)
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("CENTERED", self.centered),
            ("MOMENTUM", self.momentum > 0.0),
            ("MAXIMIZE", self.maximize),
        ]
    }
    fn initial_states(&self) -> Vec<Option<f64>> {
        vec![
            Some(0.0),
            self.centered.then_some(0.0),
            (self.momentum > 0.0).then_some(0.0),
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
    fn reference_step(
        &self,
        _counter: &StepCounter,
        lr: f64,
        param: &mut [f64],
        grad: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let [square_avg, grad_avg, buf] = slots(states);
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            if self.weight_decay != 0.0 {
                g += self.weight_decay * param[i];
            }
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
