//! Rprop, resilient backpropagation (Riedmiller & Braun, "A Direct Adaptive Method for Faster
//! Backpropagation Learning: The RPROP Algorithm", ICNN 1993), as `torch.optim.Rprop`: each
//! element keeps its own step size, grown while its gradient keeps its sign and shrunk when
//! the sign flips; the update uses only the gradient's sign.

use super::{Hyperparameters, ReferenceTensor, StepCounter, UpdateRule, slots, uniform_bytes};
use crate::error::{Error, Result};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch.optim.Rprop`'s arguments and defaults (`etas` as `etaminus`, `etaplus`;
    /// `step_sizes` as `step_size_min`, `step_size_max`).
    pub struct Rprop {
        /// The step size every element starts with.
        pub lr: f64 = 1e-2 => non_negative,
        /// The factor a step size shrinks by when its gradient changes sign (0 < etaminus < 1).
        pub etaminus: f64 = 0.5 => non_negative,
        /// The factor a step size grows by while its gradient keeps its sign (etaplus > 1).
        pub etaplus: f64 = 1.2 => non_negative,
        /// The smallest step size.
        pub step_size_min: f64 = 1e-6 => non_negative,
        /// The largest step size.
        pub step_size_max: f64 = 50.0 => non_negative,
        pub maximize: bool = false,
    }
    name: "rprop"
}

shader_struct! {
    /// The uniform of `shaders/rprop.wgsl`.
    pub struct RpropScalars {
        pub etaminus: f32,
        pub etaplus: f32,
        pub step_size_min: f32,
        pub step_size_max: f32,
    }
}

/// Rprop's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "rprop",
    source: include_str!("../../shaders/rprop.wgsl"),
    pieces: &[],
    states: &[
        StateSlot::always("prev"),
        StateSlot::always("step_size").unsigned(),
    ],
    flags: &["MAXIMIZE"],
    scalars: &RpropScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl UpdateRule for Rprop {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", self.maximize)]
    }
    fn check_together(&self) -> Result<()> {
        // torch's check: 0 < etaminus < 1 < etaplus.
        if !(0.0 < self.etaminus && self.etaminus < 1.0 && 1.0 < self.etaplus) {
            return Err(Error::InvalidConfig {
                optimizer: self.name(),
                reason: format!(
                    "etas need 0 < etaminus < 1 < etaplus (got etaminus {}, etaplus {})",
                    self.etaminus, self.etaplus
                ),
            });
        }
        if self.step_size_min > self.step_size_max {
            return Err(Error::InvalidConfig {
                optimizer: self.name(),
                reason: format!(
                    "step_size_min {} exceeds step_size_max {}",
                    self.step_size_min, self.step_size_max
                ),
            });
        }
        Ok(())
    }
    /// Every step size starts at `lr` (the rate at construction: a schedule does not move
    /// them, as in torch); `prev` at 0.
    fn initial_value(&self, state: &str) -> f64 {
        if state == "step_size" { self.lr } else { 0.0 }
    }
    fn scalars(&self, _lr: f64) -> Vec<u8> {
        uniform_bytes(&RpropScalars {
            etaminus: self.etaminus as f32,
            etaplus: self.etaplus as f32,
            step_size_min: self.step_size_min as f32,
            step_size_max: self.step_size_max as f32,
        })
    }
    fn reference_step(&self, _counter: &StepCounter, _lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [prev, step_size] = slots(states);
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            let product = g * prev[i];
            let factor = if product > 0.0 {
                self.etaplus
            } else if product < 0.0 {
                self.etaminus
            } else {
                1.0
            };
            step_size[i] = (step_size[i] * factor).clamp(self.step_size_min, self.step_size_max);
            if product < 0.0 {
                // A flipped sign: no move this step, and no sign to compare with next step.
                g = 0.0;
            }
            param[i] -= super::sign(g) * step_size[i];
            prev[i] = g;
        }
    }
}
