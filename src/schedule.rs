//! Learning-rate schedules, as `torch.optim.lr_scheduler` computes them (closed forms, in
//! float64, to within 1e-9 of PyTorch). The rate of iteration `t` (from 0, one per
//! [`Optimizer::step`](crate::Optimizer::step), skipped steps included, as a scheduler stepped
//! once per iteration does) is `schedule.lr(base_lr, t)`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A learning-rate schedule. The JSON form (`{"kind": "cosine", "t_max": 25, "eta_min": 0.001}`)
/// is the conformance fixture's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// `StepLR`: base * gamma^floor(t / step_size).
    Step {
        /// Iterations between decays (> 0).
        step_size: u64,
        /// The factor applied at each decay (finite, >= 0).
        gamma: f64,
    },
    /// `MultiStepLR`: base * gamma^(milestones <= t), counting a repeated milestone as often as
    /// it is listed; any order.
    Multistep {
        /// The iterations at which the rate decays.
        milestones: Vec<u64>,
        /// The factor applied at each milestone (finite, >= 0).
        gamma: f64,
    },
    /// `ExponentialLR`: base * gamma^t.
    Exponential {
        /// The factor applied every iteration (finite, >= 0).
        gamma: f64,
    },
    /// Inverse time decay: base / (1 + k t).
    InverseTime {
        /// The decay rate per iteration (finite, >= 0).
        k: f64,
    },
    /// Harmonic decay in stages of `n` iterations: base / (floor(t / n) + 10).
    Harmonic {
        /// Iterations per stage (> 0).
        n: u64,
    },
    /// `CosineAnnealingLR`: eta_min + (base - eta_min) (1 + cos(pi t / t_max)) / 2.
    Cosine {
        /// Iterations from the base rate down to `eta_min` (half a period; > 0).
        t_max: u64,
        /// The lowest rate (finite, >= 0).
        eta_min: f64,
    },
    /// `CosineAnnealingWarmRestarts` (SGDR, Loshchilov & Hutter, ICLR 2017): cosine over
    /// periods of t_0, t_0 t_mult, t_0 t_mult^2, ...
    CosineWarmRestarts {
        /// Iterations of the first period (> 0).
        t_0: u64,
        /// How much longer each period is than the one before (> 0).
        t_mult: u64,
        /// The lowest rate (finite, >= 0).
        eta_min: f64,
    },
    /// `LinearLR`: base * (start + (end - start) min(t, total_iters) / total_iters); with
    /// start < end, a linear warm-up.
    Linear {
        /// The base rate's multiplier at iteration 0, in (0, 1].
        start_factor: f64,
        /// The multiplier from `total_iters` on, in [0, 1].
        end_factor: f64,
        /// Iterations over which the multiplier goes from start to end (> 0).
        total_iters: u64,
    },
    /// `SequentialLR`: `schedules[i]` from `milestones[i - 1]` on, restarted at its own t = 0
    /// (e.g. a linear warm-up, then a cosine).
    Sequential {
        /// The schedules, in the order they take over.
        schedules: Vec<Schedule>,
        /// The iterations at which the next schedule takes over: one fewer than `schedules`,
        /// increasing.
        milestones: Vec<u64>,
    },
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig {
        optimizer: "schedule",
        reason,
    }
}

fn finite_non_negative(name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(format!(
            "{name} must be finite and >= 0, got {value}"
        )))
    }
}

fn positive(name: &str, value: u64) -> Result<()> {
    if value > 0 {
        Ok(())
    } else {
        Err(invalid(format!("{name} must be > 0")))
    }
}

impl Schedule {
    /// PyTorch's argument checks (and a few it leaves to chance, like a zero period).
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Constant => Ok(()),
            Schedule::Step { step_size, gamma } => {
                positive("step_size", *step_size)?;
                finite_non_negative("gamma", *gamma)
            }
            // As torch's MultiStepLR: milestones in any order; a repeated one decays twice.
            Schedule::Multistep { gamma, .. } => finite_non_negative("gamma", *gamma),
            Schedule::Exponential { gamma } => finite_non_negative("gamma", *gamma),
            Schedule::InverseTime { k } => finite_non_negative("k", *k),
            Schedule::Harmonic { n } => positive("n", *n),
            Schedule::Cosine { t_max, eta_min } => {
                positive("t_max", *t_max)?;
                finite_non_negative("eta_min", *eta_min)
            }
            Schedule::CosineWarmRestarts {
                t_0,
                t_mult,
                eta_min,
            } => {
                positive("t_0", *t_0)?;
                positive("t_mult", *t_mult)?;
                finite_non_negative("eta_min", *eta_min)
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if !(*start_factor > 0.0 && *start_factor <= 1.0) {
                    return Err(invalid(format!(
                        "start_factor must be in (0, 1], got {start_factor}"
                    )));
                }
                if !(0.0..=1.0).contains(end_factor) {
                    return Err(invalid(format!(
                        "end_factor must be in [0, 1], got {end_factor}"
                    )));
                }
                positive("total_iters", *total_iters)
            }
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                if schedules.is_empty() || milestones.len() + 1 != schedules.len() {
                    return Err(invalid(format!(
                        "a sequence of {} schedules needs {} milestones, got {}",
                        schedules.len(),
                        schedules.len().saturating_sub(1),
                        milestones.len()
                    )));
                }
                if !milestones.windows(2).all(|w| w[0] < w[1]) {
                    return Err(invalid(format!(
                        "milestones must be increasing: {milestones:?}"
                    )));
                }
                schedules.iter().try_for_each(Schedule::validate)
            }
        }
    }

    /// The learning rate of iteration `t` (from 0) for a base rate `base`.
    pub fn lr(&self, base: f64, t: u64) -> f64 {
        let cosine = |eta_min: f64, t_cur: f64, period: f64| {
            eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t_cur / period).cos()) / 2.0
        };
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => base * gamma.powf((t / step_size) as f64),
            Schedule::Multistep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= t).count();
                base * gamma.powi(passed as i32)
            }
            Schedule::Exponential { gamma } => base * gamma.powf(t as f64),
            Schedule::InverseTime { k } => base / (1.0 + k * t as f64),
            Schedule::Harmonic { n } => base / ((t / n) as f64 + 10.0),
            Schedule::Cosine { t_max, eta_min } => cosine(*eta_min, t as f64, *t_max as f64),
            Schedule::CosineWarmRestarts {
                t_0,
                t_mult,
                eta_min,
            } => {
                // PyTorch's own integer bookkeeping: the period grows by t_mult at each restart.
                // With t_mult = 1 every period is t_0 (a remainder, not a loop of t / t_0
                // rounds); otherwise the periods grow geometrically, so the loop is short.
                let (mut t_cur, mut period) = if *t_mult == 1 {
                    (t % t_0, *t_0)
                } else {
                    (t, *t_0)
                };
                while t_cur >= period {
                    t_cur -= period;
                    period = period.saturating_mul(*t_mult);
                }
                cosine(*eta_min, t_cur as f64, period as f64)
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                let progress = t.min(*total_iters) as f64 / *total_iters as f64;
                base * (start_factor + (end_factor - start_factor) * progress)
            }
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let stage = milestones.iter().filter(|&&m| m <= t).count();
                let start = if stage == 0 { 0 } else { milestones[stage - 1] };
                schedules[stage].lr(base, t - start)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_restarts_each_stage_at_zero() {
        let schedule = Schedule::Sequential {
            schedules: vec![
                Schedule::Linear {
                    start_factor: 0.1,
                    end_factor: 1.0,
                    total_iters: 4,
                },
                Schedule::Cosine {
                    t_max: 10,
                    eta_min: 0.0,
                },
            ],
            milestones: vec![4],
        };
        schedule.validate().unwrap();
        let lrs: Vec<f64> = (0..16).map(|t| schedule.lr(1.0, t)).collect();
        assert!((lrs[0] - 0.1).abs() < 1e-15);
        assert!((lrs[2] - 0.55).abs() < 1e-15);
        assert_eq!(lrs[4], 1.0); // the cosine's t = 0
        assert!((lrs[9] - 0.5).abs() < 1e-15); // half way through the cosine
        assert!(lrs[14].abs() < 1e-15);
    }

    #[test]
    fn harmonic_decays_in_stages() {
        let s = Schedule::Harmonic { n: 3 };
        let lrs: Vec<f64> = (0..7).map(|t| s.lr(1.0, t)).collect();
        assert_eq!(
            lrs,
            [
                0.1,
                0.1,
                0.1,
                1.0 / 11.0,
                1.0 / 11.0,
                1.0 / 11.0,
                1.0 / 12.0
            ]
        );
    }

    #[test]
    fn multistep_milestones_in_any_order_and_repeated_decay_as_torch() {
        // torch.optim.lr_scheduler.MultiStepLR(milestones=[5, 2, 5], gamma=0.5): a Counter of
        // milestones, so 5 decays twice.
        let schedule = Schedule::Multistep {
            milestones: vec![5, 2, 5],
            gamma: 0.5,
        };
        schedule.validate().unwrap();
        let lrs: Vec<f64> = (0..7).map(|t| schedule.lr(1.0, t)).collect();
        assert_eq!(lrs, [1.0, 1.0, 0.5, 0.5, 0.5, 0.125, 0.125]);
    }

    #[test]
    fn warm_restarts_take_no_time_at_any_iteration_count() {
        let schedule = Schedule::CosineWarmRestarts {
            t_0: 1,
            t_mult: 1,
            eta_min: 0.0,
        };
        assert_eq!(schedule.lr(1.0, 1 << 62), 1.0);
        let growing = Schedule::CosineWarmRestarts {
            t_0: 1,
            t_mult: 2,
            eta_min: 0.0,
        };
        // Restarts at 1, 3, 7, ...: 2^62 - 1 starts a period.
        assert_eq!(growing.lr(1.0, (1 << 62) - 1), 1.0);
    }

    #[test]
    fn bad_schedules_are_rejected() {
        for bad in [
            Schedule::Step {
                step_size: 0,
                gamma: 0.5,
            },
            Schedule::Exponential { gamma: f64::NAN },
            Schedule::Cosine {
                t_max: 0,
                eta_min: 0.0,
            },
            Schedule::Linear {
                start_factor: 0.0,
                end_factor: 1.0,
                total_iters: 5,
            },
            Schedule::Sequential {
                schedules: vec![Schedule::Constant],
                milestones: vec![3],
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
