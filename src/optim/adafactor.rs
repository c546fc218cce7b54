//! Adafactor (Shazeer and Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
//! Cost", ICML 2018), as `torch.optim.Adafactor` (torch 2.15): the second moment of a matrix
//! kept as its row and column means (m + n values instead of m·n), the update's RMS clipped to
//! `d`, the step size relative to the parameters' RMS.
//!
//! Not an elementwise rule: its step needs each tensor's shape, row and column sums and two
//! norms per tensor. It runs through [`ShapedOptimizer`](crate::shaped::ShapedOptimizer)
//! (`shaders/adafactor.wgsl`); [`Adafactor::reference_step`] is the float64 reference.

use super::lerp;
use crate::error::{Error, Result};

hyperparameters! {
    /// `torch.optim.Adafactor`'s arguments and defaults, `eps` split into `eps1` and `eps2`.
    pub struct Adafactor {
        pub lr: f64 = 1e-2 => non_negative,
        /// The second moment's decay: step t weighs the new squares by t^beta2_decay (<= 0).
        pub beta2_decay: f64 = -0.8 => finite,
        /// Floor of the second-moment estimate (squared) and of the row means' mean. torch's
        /// default, None, means the parameter dtype's machine epsilon: float32's, 2^-23.
        pub eps1: f64 = f32::EPSILON as f64 => non_negative,
        /// Floor of the parameters' RMS in the step size.
        pub eps2: f64 = 1e-3 => non_negative,
        /// The update's RMS is clipped to this (>= 1).
        pub d: f64 = 1.0 => finite,
        /// Decoupled decay, scaled by the learning rate: θ ← θ·(1 − lr·weight_decay).
        pub weight_decay: f64 = 0.0 => non_negative,
        pub maximize: bool = false,
    }
    name: "adafactor"
}

/// How a tensor's second moment is kept: factored over its last two dimensions (the leading
/// ones a batch), or whole for a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Factoring {
    /// Matrices in the tensor (the product of the leading dimensions); 1 for a vector.
    pub batch: usize,
    /// Rows of each matrix (`shape[-2]`); 1 for a vector.
    pub rows: usize,
    /// Columns of each matrix (`shape[-1]`); the length for a vector.
    pub cols: usize,
    /// Whether the tensor has two dimensions or more (row and column factors), or is a vector
    /// (or a scalar) with an elementwise second moment.
    pub factored: bool,
}

impl Factoring {
    /// The factoring torch uses for a tensor of `shape`.
    pub fn of(shape: &[usize]) -> Self {
        let numel = shape.iter().product::<usize>();
        match shape {
            [.., rows, cols] => Self {
                batch: shape[..shape.len() - 2].iter().product(),
                rows: *rows,
                cols: *cols,
                factored: true,
            },
            _ => Self {
                batch: 1,
                rows: 1,
                cols: numel,
                factored: false,
            },
        }
    }

    /// Length of the row-factor state (batch·rows), of the column-factor state (batch·cols);
    /// a vector keeps one state as long as itself in the "column" place and no rows.
    pub fn state_lens(&self) -> (usize, usize) {
        if self.factored {
            (self.batch * self.rows, self.batch * self.cols)
        } else {
            (0, self.cols)
        }
    }
}

/// One tensor's Adafactor state: the row and column means of g² (`row_var`, `col_var`), or
/// for a vector its elementwise running mean of g² (`variance`, kept in `col`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdafactorState {
    /// `row_var`: batch·rows values (empty for a vector).
    pub row: Vec<f64>,
    /// `col_var`: batch·cols values, or a vector's `variance`.
    pub col: Vec<f64>,
}

impl AdafactorState {
    /// Zeros, as torch starts.
    pub fn new(shape: &[usize]) -> Self {
        let (rows, cols) = Factoring::of(shape).state_lens();
        Self {
            row: vec![0.0; rows],
            col: vec![0.0; cols],
        }
    }
}

impl Adafactor {
    /// torch's checks beyond each value's own (`beta2_decay` <= 0, `d` >= 1).
    pub fn validate(&self) -> Result<()> {
        use super::Hyperparameters;
        self.check_each()?;
        let invalid = |reason: String| {
            Err(Error::InvalidConfig {
                optimizer: "adafactor",
                reason,
            })
        };
        if self.beta2_decay > 0.0 {
            return invalid(format!(
                "beta2_decay should be <= 0 but is: {}",
                self.beta2_decay
            ));
        }
        if self.d < 1.0 {
            return invalid(format!(
                "Clipping threshold d should be >= 1 but is: {}",
                self.d
            ));
        }
        Ok(())
    }

    /// The per-step scalars of step `step` (from 1): the new squares' weight t^beta2_decay and
    /// the relative step size ρ = min(lr, 1/√t).
    pub fn step_scalars(&self, step: u64, lr: f64) -> (f64, f64) {
        let t = step as f64;
        (t.powf(self.beta2_decay), lr.min(1.0 / t.sqrt()))
    }

    /// One step of one tensor of `shape` in float64, statement by statement as torch's
    /// `_single_tensor_adafactor`.
    pub fn reference_step(
        &self,
        step: u64,
        lr: f64,
        shape: &[usize],
        param: &mut [f64],
        grad: &[f64],
        state: &mut AdafactorState,
    ) {
        let f = Factoring::of(shape);
        let n = param.len() as f64;
        let (w, rho) = self.step_scalars(step, lr);
        let sign = if self.maximize { -1.0 } else { 1.0 };
        let rms_param = (param.iter().map(|p| p * p).sum::<f64>() / n).sqrt();
        let alpha = self.eps2.max(rms_param) * rho;
        if self.weight_decay != 0.0 {
            param
                .iter_mut()
                .for_each(|p| *p *= 1.0 - lr * self.weight_decay);
        }
        let g = |i: usize| sign * grad[i];
        // The second-moment estimate of element i.
        let mut estimate: Vec<f64> = Vec::with_capacity(param.len());
        if f.factored {
            let (m, k) = (f.rows, f.cols);
            for b in 0..f.batch {
                for r in 0..m {
                    let s: f64 = (0..k).map(|c| g((b * m + r) * k + c).powi(2)).sum();
                    let row = &mut state.row[b * m + r];
                    *row = lerp(*row, s / k as f64, w);
                }
                for c in 0..k {
                    let s: f64 = (0..m).map(|r| g((b * m + r) * k + c).powi(2)).sum();
                    let col = &mut state.col[b * k + c];
                    *col = lerp(*col, s / m as f64, w);
                }
            }
            for b in 0..f.batch {
                let row_mean = state.row[b * m..(b + 1) * m].iter().sum::<f64>() / m as f64;
                let floor = row_mean.max(self.eps1);
                for r in 0..m {
                    for c in 0..k {
                        estimate.push(state.row[b * m + r] * state.col[b * k + c] / floor);
                    }
                }
            }
        } else {
            for (i, v) in state.col.iter_mut().enumerate() {
                *v = lerp(*v, g(i) * g(i), w);
                estimate.push(*v);
            }
        }
        let update: Vec<f64> = estimate
            .iter()
            .enumerate()
            .map(|(i, v)| g(i) / v.max(self.eps1 * self.eps1).sqrt())
            .collect();
        let rms_update = (update.iter().map(|u| u * u).sum::<f64>() / n).sqrt();
        let denom = (rms_update / self.d).max(1.0);
        for (p, u) in param.iter_mut().zip(&update) {
            *p -= alpha / denom * u;
        }
    }
}
