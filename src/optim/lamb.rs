//! LAMB, layer-wise adaptive moments (You et al., "Large Batch Optimization for Deep Learning:
//! Training BERT in 76 minutes", ICLR 2020), as `torch_optimizer.Lamb` (torch-optimizer
//! 0.3.0): Adam's step direction, scaled per tensor by the trust ratio ‖θ‖ / ‖r‖.
//!
//! The per-tensor norms make it three passes and a reduction (the kernel's phases): the moments;
//! the norms of θ and of r = m / (√v + eps) + wd·θ from the moments as stored, one sum per
//! workgroup; each tensor's trust ratio from its workgroups' sums (`finalize_tensors`); the
//! update θ -= lr·bc·trust·r.

use super::{ReferenceTensor, StepCounter, UpdateRule, slots, uniform_bytes};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `torch_optimizer.Lamb`'s arguments and defaults (`betas` as `beta1`, `beta2`; its
    /// signature's eps, 1e-6). It has no `maximize`.
    pub struct Lamb {
        pub lr: f64 = 1e-3 => non_negative,
        pub beta1: f64 = 0.9 => unit_interval,
        pub beta2: f64 = 0.999 => unit_interval,
        pub eps: f64 = 1e-6 => non_negative,
        /// Added to the Adam step (times the parameters) before its norm is taken.
        pub weight_decay: f64 = 0.0 => non_negative,
        /// The parameters' norm in the trust ratio is at most this.
        pub clamp_value: f64 = 10.0 => non_negative,
        /// Trust ratio 1: Adam with decoupled decay and no bias correction.
        pub adam: bool = false,
        /// Scale the step by √(1 - β2^t) / (1 - β1^t) (after the trust ratio).
        pub debias: bool = false,
    }
    name: "lamb"
}

shader_struct! {
    /// The uniform of `shaders/lamb.wgsl`.
    pub struct LambScalars {
        pub lr: f32,
        pub beta1: f32,
        pub one_minus_beta1: f32,
        pub beta2: f32,
        pub one_minus_beta2: f32,
        pub eps: f32,
        pub weight_decay: f32,
        pub clamp_value: f32,
        /// 1 for `adam` (trust ratio 1).
        pub adam: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// LAMB's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "lamb",
    source: include_str!("../../shaders/lamb.wgsl"),
    pieces: &[],
    states: &[
        StateSlot::always("exp_avg"),
        StateSlot::always("exp_avg_sq").unsigned(),
    ],
    // step.wgsl declares MAXIMIZE for every kernel; torch-optimizer's Lamb has none: it stays
    // off. MOMENTS and NORMS are the phases.
    flags: &["MAXIMIZE", "MOMENTS", "NORMS"],
    scalars: &LambScalars::LAYOUT,
    phases: &["MOMENTS", "NORMS"],
    tensor_sums: true,
};

impl Lamb {
    /// The step's scale after the trust ratio: √(1 - β2^t) / (1 - β1^t) with `debias`, else 1.
    fn bias_correction(&self, step: u64) -> f64 {
        if self.debias {
            let t = step as f64;
            (1.0 - self.beta2.powf(t)).sqrt() / (1.0 - self.beta1.powf(t))
        } else {
            1.0
        }
    }
}

impl UpdateRule for Lamb {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", false), ("MOMENTS", false), ("NORMS", false)]
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        uniform_bytes(&LambScalars {
            lr: lr as f32,
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            clamp_value: self.clamp_value as f32,
            adam: u32::from(self.adam),
            ..Default::default()
        })
    }
    /// Three passes: the moments (the gradient, the states read and written), the norms (the
    /// parameter and the states read), the update (the states read, the parameter read and
    /// written).
    fn bytes_per_element(&self, storage: &crate::Storage) -> f64 {
        let states = self.kept_state_names();
        let parameter_read = if storage.master_weights {
            4.0
        } else {
            storage.param.bytes() as f64
        };
        storage.bytes_per_element(&states) + parameter_read + 2.0 * storage.state_bytes(&states)
    }
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        [self.bias_correction(counter.step), 0.0, 0.0, 0.0]
    }
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        Some([1.0, 0.0, 0.0, 0.0])
    }
    /// The moments (torch-optimizer's `mul_(beta).add_(...)` form).
    fn reference_step(&self, _counter: &StepCounter, _lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { grad, states, .. } = tensor;
        let [exp_avg, exp_avg_sq] = slots(states);
        for i in 0..grad.len() {
            let g = grad[i];
            exp_avg[i] = self.beta1 * exp_avg[i] + (1.0 - self.beta1) * g;
            exp_avg_sq[i] = self.beta2 * exp_avg_sq[i] + (1.0 - self.beta2) * g * g;
        }
    }
    /// The trust ratio and the update, from the moments as stored.
    fn reference_finish(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, states, .. } = tensor;
        let [exp_avg, exp_avg_sq] = slots(states);
        let step: Vec<f64> = (0..param.len())
            .map(|i| exp_avg[i] / (exp_avg_sq[i].sqrt() + self.eps) + self.weight_decay * param[i])
            .collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let weight_norm = norm(param).min(self.clamp_value);
        let adam_norm = norm(&step);
        let trust = if self.adam || weight_norm == 0.0 || adam_norm == 0.0 {
            1.0
        } else {
            weight_norm / adam_norm
        };
        let scale = lr * self.bias_correction(counter.step) * trust;
        for (p, r) in param.iter_mut().zip(&step) {
            *p -= scale * r;
        }
    }
}
