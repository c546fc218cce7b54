//! Schedule-Free AdamW (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
//! Scheduled", NeurIPS 2024), as `schedulefree.AdamWScheduleFree` (schedulefree 1.4.1): no
//! learning-rate schedule; the parameters hold the gradient point y while training, and an
//! average x of the iterates z, which [`Optimizer::eval_mode`](crate::Optimizer::eval_mode)
//! swaps in for evaluation (and [`train_mode`](crate::Optimizer::train_mode) back).
//!
//! Per step t (from 1), with sched = t / warmup_steps during the warm-up and 1 after:
//!   v = b2 v + (1 - b2) g^2;   u = g / (sqrt(v / (1 - b2^t)) + eps) + wd y
//!   y = lerp(y, z, c);   y = y + lr sched (b1 (1 - c) - 1) u;   z = z - lr sched u
//! where z starts as the parameters at the first step (whatever they were set to before it),
//! and c = w_t / (w_1 + ... + w_t), w_t = t^r (lr sched_t)^weight_lr_power. With a learning
//! rate that does not rise (the optimizer's point: no schedule), `lr` cancels from c, which is
//! then a function of t alone: a step factor the host tabulates in float64.

use super::{
    Hyperparameters, ModeSwap, ReferenceTensor, StepCounter, UpdateRule, slots, uniform_bytes,
};
use crate::error::{Error, Result};
use crate::kernels::{Kernel, StateSlot, shader_struct};

hyperparameters! {
    /// `schedulefree.AdamWScheduleFree`'s arguments and defaults (`betas` as `beta1`,
    /// `beta2`).
    pub struct ScheduleFreeAdamW {
        pub lr: f64 = 0.0025 => non_negative,
        /// The interpolation between z and the average x where the gradient is taken (not a
        /// momentum: there is no first-moment buffer); in (0, 1).
        pub beta1: f64 = 0.9 => unit_interval,
        pub beta2: f64 = 0.999 => unit_interval,
        pub eps: f64 = 1e-8 => non_negative,
        /// Decoupled weight decay, on y, scaled by the learning rate.
        pub weight_decay: f64 = 0.0 => non_negative,
        /// Steps over which the learning rate rises linearly to `lr`.
        pub warmup_steps: u64 = 0,
        /// The averaging weights' power of the step number.
        pub r: f64 = 0.0 => finite,
        /// The averaging weights' power of the (largest so far) learning rate.
        pub weight_lr_power: f64 = 2.0 => finite,
    }
    name: "schedulefree_adamw"
}

shader_struct! {
    /// The uniform of `shaders/schedulefree_adamw.wgsl`.
    pub struct ScheduleFreeAdamWScalars {
        pub lr: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub one_minus_beta2: f32,
        pub eps: f32,
        pub weight_decay: f32,
        /// The weight of a swap between training and evaluation mode (`SWAP` on), and one
        /// minus it.
        pub swap_weight: f32,
        pub one_minus_swap_weight: f32,
    }
}

/// Schedule-Free AdamW's kernel.
pub static KERNEL: Kernel = Kernel {
    name: "schedulefree_adamw",
    source: include_str!("../../shaders/schedulefree_adamw.wgsl"),
    pieces: &[],
    states: &[
        StateSlot::always("z"),
        StateSlot::always("exp_avg_sq").unsigned(),
    ],
    // step.wgsl declares MAXIMIZE for every kernel; the reference has no `maximize`: it stays off.
    flags: &["MAXIMIZE", "SWAP"],
    scalars: &ScheduleFreeAdamWScalars::LAYOUT,
    phases: &[],
    tensor_sums: false,
};

impl ScheduleFreeAdamW {
    /// The warm-up's fraction of `lr` at step `step` (from 1).
    fn sched(&self, step: u64) -> f64 {
        if step <= self.warmup_steps {
            step as f64 / self.warmup_steps as f64
        } else {
            1.0
        }
    }

    /// The averaging weight of step `step` over `lr^weight_lr_power` (which cancels in c).
    fn weight(&self, step: u64) -> f64 {
        (step as f64).powf(self.r) * self.sched(step).powf(self.weight_lr_power)
    }

    /// The uniform with every rule value and the swap weight `swap_weight`.
    fn uniform(&self, lr: f64, swap_weight: f64) -> Vec<u8> {
        uniform_bytes(&ScheduleFreeAdamWScalars {
            lr: lr as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            swap_weight: swap_weight as f32,
            one_minus_swap_weight: (1.0 - swap_weight) as f32,
        })
    }
}

impl UpdateRule for ScheduleFreeAdamW {
    fn kernel(&self) -> &'static Kernel {
        &KERNEL
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        vec![("MAXIMIZE", false), ("SWAP", false)]
    }
    fn check_together(&self) -> Result<()> {
        if self.beta1 <= 0.0 {
            return Err(Error::InvalidConfig {
                optimizer: self.name(),
                reason: format!(
                    "beta1 must be in (0, 1): evaluation mode interpolates with weight \
                     1 - 1/beta1 (got {})",
                    self.beta1
                ),
            });
        }
        Ok(())
    }
    fn mode_swap(&self, to_eval: bool) -> Option<ModeSwap> {
        // x = lerp(y, z, 1 - 1/b1) and back, y = lerp(x, z, 1 - b1), as schedulefree's
        // `eval()` and `train()`.
        let weight = if to_eval {
            1.0 - 1.0 / self.beta1
        } else {
            1.0 - self.beta1
        };
        Some(ModeSwap {
            state: "z",
            weight,
            scalars: self.uniform(self.lr, weight),
        })
    }
    fn advance(&self, counter: &StepCounter) -> StepCounter {
        let step = counter.step + 1;
        StepCounter {
            step,
            weight_sum: counter.weight_sum + self.weight(step),
            ..*counter
        }
    }
    fn counter_at(&self, step: u64) -> StepCounter {
        let mut counter = StepCounter::default();
        while counter.step < step {
            counter = self.advance(&counter);
        }
        counter
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        self.uniform(lr, 0.0)
    }
    /// c, the warm-up's fraction of lr, and 1 / (1 - b2^t).
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        let c = if counter.weight_sum == 0.0 {
            0.0
        } else {
            self.weight(counter.step) / counter.weight_sum
        };
        [
            c,
            self.sched(counter.step),
            1.0 / (1.0 - self.beta2.powf(counter.step as f64)),
            0.0,
        ]
    }
    /// c falls as 1/t (with r = 0) and never settles in float32: the window slides.
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        Some([0.0, 1.0, 1.0, 0.0])
    }
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        let ReferenceTensor { param, grad, states } = tensor;
        let [z, exp_avg_sq] = slots(states);
        let [c, sched, inverse_bias_correction2, _] = self.step_factors(counter);
        let lr = lr * sched;
        if counter.step == 1 {
            // z starts as the parameters at the first step, as schedulefree creates it then.
            z.copy_from_slice(param);
        }
        for i in 0..param.len() {
            let g = grad[i];
            exp_avg_sq[i] = self.beta2 * exp_avg_sq[i] + (1.0 - self.beta2) * g * g;
            let denom = (exp_avg_sq[i] * inverse_bias_correction2).sqrt() + self.eps;
            let u = g / denom + self.weight_decay * param[i];
            let y = super::lerp(param[i], z[i], c);
            param[i] = y + lr * (self.beta1 * (1.0 - c) - 1.0) * u;
            z[i] -= lr * u;
        }
    }
}
