//! Muon, "MomentUm Orthogonalized by Newton-Schulz" (Jordan et al. 2024,
//! <https://kellerjordan.github.io/posts/muon/>), as `torch.optim.Muon` (torch 2.15) with the
//! Newton–Schulz iteration in the working dtype (torch casts to bfloat16 first; see
//! FORMAT-more-optimizers.md): momentum per matrix, then the update replaced by an approximate
//! orthogonalization of it (U S' Vᵀ with S' near 1) by five quintic Newton–Schulz iterations.
//!
//! Not an elementwise rule: each 2-D tensor's step is a chain of matrix products. It runs
//! through [`ShapedOptimizer`](crate::shaped::ShapedOptimizer) (`shaders/muon.wgsl` and the
//! batched matrix products of `shaders/matmul.wgsl`); [`Muon::reference_step`] is the float64
//! reference.

use serde::{Deserialize, Serialize};

use super::lerp;
use crate::error::{Error, Result};

/// How Muon scales the learning rate of an m×n matrix (torch's `adjust_lr_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustLr {
    /// lr·√max(1, m/n): Keller Jordan's original scaling (also torch's `None`).
    Original,
    /// lr·0.2·√max(m, n): the update's RMS matches AdamW's (Moonshot AI, "Muon is Scalable
    /// for LLM Training", 2025).
    MatchRmsAdamw,
    /// lr·√(m/n).
    SpectralUnclamped,
}

hyperparameters! {
    /// `torch.optim.Muon`'s arguments and defaults, `ns_coefficients` split into `ns_a`, `ns_b`,
    /// `ns_c`.
    pub struct Muon {
        pub lr: f64 = 1e-3 => non_negative,
        /// Decoupled decay with the unadjusted rate: θ ← θ·(1 − lr·weight_decay).
        pub weight_decay: f64 = 0.1 => non_negative,
        /// The momentum's decay: B ← lerp(B, g, 1 − momentum).
        pub momentum: f64 = 0.95 => non_negative,
        /// Orthogonalize lerp(g, B, momentum) instead of B.
        pub nesterov: bool = true,
        /// The quintic iteration's coefficients: X ← a·X + (b·A + c·A²)·X with A = XXᵀ.
        pub ns_a: f64 = 3.4445 => finite,
        /// See `ns_a`.
        pub ns_b: f64 = -4.775 => finite,
        /// See `ns_a`.
        pub ns_c: f64 = 2.0315 => finite,
        /// Floor of the Frobenius norm the update is divided by first.
        pub eps: f64 = 1e-7 => non_negative,
        /// Newton–Schulz iterations (torch: fewer than 100).
        pub ns_steps: u32 = 5,
        /// The learning-rate scaling by shape; `None` is torch's `None` (as `Original`).
        pub adjust_lr_fn: Option<AdjustLr> = None,
    }
    name: "muon"
}

/// A row-major matrix product `a (m×k) · b (k×n)`, in float64.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for l in 0..k {
            let a_il = a[i * k + l];
            for j in 0..n {
                out[i * n + j] += a_il * b[l * n + j];
            }
        }
    }
    out
}

/// The transpose of a row-major `rows×cols` matrix.
pub(crate) fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

impl Muon {
    /// torch's checks (`ns_steps` < 100) after each value's own.
    pub fn validate(&self) -> Result<()> {
        use super::Hyperparameters;
        self.check_each()?;
        if self.ns_steps >= 100 {
            return Err(Error::InvalidConfig {
                optimizer: "muon",
                reason: format!(
                    "ns_steps must be less than 100 for computational efficiency (got {})",
                    self.ns_steps
                ),
            });
        }
        Ok(())
    }

    /// The checks of a tensor's shape: torch's Muon takes 2-D tensors only.
    pub fn check_shape(shape: &[usize]) -> Result<(usize, usize)> {
        match shape {
            [m, n] if *m > 0 && *n > 0 => Ok((*m, *n)),
            _ => Err(Error::InvalidConfig {
                optimizer: "muon",
                reason: format!(
                    "Muon only supports non-empty 2-D parameters, but a tensor has shape {shape:?}"
                ),
            }),
        }
    }

    /// The learning rate of an m×n matrix (`_adjust_lr`).
    pub fn adjusted_lr(&self, lr: f64, rows: usize, cols: usize) -> f64 {
        let (a, b) = (rows as f64, cols as f64);
        let ratio = match self.adjust_lr_fn {
            None | Some(AdjustLr::Original) => (a / b).max(1.0).sqrt(),
            Some(AdjustLr::MatchRmsAdamw) => 0.2 * a.max(b).sqrt(),
            Some(AdjustLr::SpectralUnclamped) => (a / b).sqrt(),
        };
        lr * ratio
    }

    /// The Newton–Schulz orthogonalization of a `rows×cols` matrix, in float64
    /// (`_zeropower_via_newtonschulz` without the bfloat16 cast).
    pub fn newton_schulz(&self, update: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let tall = rows > cols;
        let (p, q) = if tall { (cols, rows) } else { (rows, cols) };
        let mut x = if tall {
            transpose(update, rows, cols)
        } else {
            update.to_vec()
        };
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = 1.0 / norm.max(self.eps);
        x.iter_mut().for_each(|v| *v *= scale);
        for _ in 0..self.ns_steps {
            let gram = matmul(&x, &transpose(&x, p, q), p, q, p);
            let gram2 = matmul(&gram, &gram, p, p, p);
            let poly: Vec<f64> = gram
                .iter()
                .zip(&gram2)
                .map(|(a, a2)| self.ns_b * a + self.ns_c * a2)
                .collect();
            let px = matmul(&poly, &x, p, p, q);
            x = x
                .iter()
                .zip(&px)
                .map(|(x, px)| self.ns_a * x + px)
                .collect();
        }
        if tall { transpose(&x, p, q) } else { x }
    }

    /// One step of one `rows×cols` matrix in float64, as torch's `_single_tensor_muon`;
    /// `momentum_buffer` starts at zero.
    pub fn reference_step(
        &self,
        lr: f64,
        (rows, cols): (usize, usize),
        param: &mut [f64],
        grad: &[f64],
        momentum_buffer: &mut [f64],
    ) {
        for (b, g) in momentum_buffer.iter_mut().zip(grad) {
            *b = lerp(*b, *g, 1.0 - self.momentum);
        }
        let update: Vec<f64> = if self.nesterov {
            grad.iter()
                .zip(momentum_buffer.iter())
                .map(|(g, b)| lerp(*g, *b, self.momentum))
                .collect()
        } else {
            momentum_buffer.to_vec()
        };
        let ortho = self.newton_schulz(&update, rows, cols);
        let adjusted = self.adjusted_lr(lr, rows, cols);
        for (p, o) in param.iter_mut().zip(&ortho) {
            *p = *p * (1.0 - lr * self.weight_decay) - adjusted * o;
        }
    }
}
