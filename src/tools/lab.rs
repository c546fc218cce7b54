//! The seeds' experiments (issue 12): the classic convergence claims of first- and second-order
//! methods, run on the GPU through the public engine and measured.
//!
//! Every iterate is computed in float32 on the device: by an [`Optimizer`] with an [`Sgd`]
//! configuration, or by [`GpuLbfgs`]. Between steps the host reads the parameters back,
//! evaluates the objective and its gradient in float64 and hands the gradient (or, for Newton's
//! method, the Newton direction) to [`Optimizer::step_with_grads`]; L-BFGS calls its closure,
//! which does the same, as often as its line search asks. What is measured is therefore the
//! library's own arithmetic:
//!
//! - gradient descent with η = 1/λmax on a quadratic ½(x − x*)ᵀA(x − x*) of condition number κ
//!   contracts the error by 1 − 1/κ per step (Nocedal & Wright, *Numerical Optimization*, 2nd
//!   ed., §3.3, Theorem 3.3 and the discussion after it);
//! - heavy-ball momentum (Polyak, "Some methods of speeding up the convergence of iteration
//!   methods", 1964) with the optimal α = (2/(√λ1 + √λn))², β = ((√λn − √λ1)/(√λn + √λ1))²
//!   (Goh, "Why Momentum Really Works", Distill 2017) contracts it by (√κ − 1)/(√κ + 1);
//! - Nesterov's accelerated gradient (Nesterov, "A method of solving a convex programming problem
//!   with convergence rate O(1/k²)", 1983) reaches f(x_k) − f* ≤ 2L‖x0 − x*‖²/(k + 1)² on any
//!   convex problem with L-Lipschitz gradient, where gradient descent only has L‖x0 − x*‖²/(2k);
//! - on f(x) = x² from x0 = 8.7, gradient descent multiplies x by 1 − 2α each step: α = 0.2
//!   converges, α = 0.9 oscillates while it converges, α = 1.05 diverges;
//! - Newton's method (Nocedal & Wright §3.3, Theorem 3.5) lands on a quadratic's minimum in one
//!   step and converges quadratically on Rosenbrock's function, where gradient descent crawls;
//! - L-BFGS (Liu & Nocedal 1989; torch's `LBFGS` with its strong-Wolfe line search, run on the
//!   device by [`GpuLbfgs`], see [`run_lbfgs`]) with a history longer than the run reaches
//!   float32's floor on a κ = 1e4 quadratic in a few times n evaluations, where heavy ball
//!   needs hundreds and gradient descent hundreds of thousands, and converges superlinearly on
//!   Rosenbrock's function.
//!
//! [`EXPERIMENTS`] lists them for `wgpu-optim lab`, which draws each one; the building blocks
//! ([`Quadratic`], [`Rosenbrock`], [`Method`], [`run`], [`run_lbfgs`], [`rate`]) are public for
//! the tests. Dimensions are small (20 to 50): the point is the rates, not the throughput.

use std::ops::Range;

use crate::context::GpuContext;
use crate::engine::{GroupId, Optimizer, TensorId};
use crate::error::{Error, Result};
use crate::optim::Sgd;
use crate::optim::lbfgs::{self, HostVectors, Lbfgs, LbfgsState, LineSearch};
use crate::vectors::{DeviceVector, DeviceVectors, GpuLbfgs};

/// A twice-differentiable objective, evaluated on the host in float64.
pub trait Objective {
    /// The number of variables.
    fn dim(&self) -> usize;
    /// f(x).
    fn value(&self, x: &[f64]) -> f64;
    /// ∇f(x).
    fn gradient(&self, x: &[f64]) -> Vec<f64>;
    /// ∇²f(x), row-major, `dim × dim`.
    fn hessian(&self, x: &[f64]) -> Vec<f64>;
    /// The minimum value f*.
    fn minimum(&self) -> f64;
    /// The distance from `x` to the nearest minimizer.
    fn distance(&self, x: &[f64]) -> f64;
}

/// SplitMix64 (Steele, Lea & Flood 2014): a deterministic stream for the rotations and the
/// minimizers, so that every run and every machine sees the same problems.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// f(x) = ½ (x − x*)ᵀ A (x − x*) with A = Q Λ Qᵀ: eigenvalues Λ chosen, Q a deterministic
/// rotation (so that no coordinate is an eigendirection and the optimizer cannot profit from
/// working elementwise), f* = 0.
#[derive(Clone, Debug)]
pub struct Quadratic {
    /// Λ, in the order of Q's columns.
    pub eigenvalues: Vec<f64>,
    /// Q, row-major: column i is the eigenvector of `eigenvalues[i]`.
    pub eigenvectors: Vec<f64>,
    /// x*. With a zero eigenvalue every x* + v, v in A's null space, is a minimizer too.
    pub minimizer: Vec<f64>,
    /// A = Q Λ Qᵀ, row-major.
    pub matrix: Vec<f64>,
}

impl Quadratic {
    /// The quadratic with these eigenvalues (all ≥ 0), rotated by the orthogonal matrix that
    /// `seed` picks (`None`: no rotation, A diagonal), with minimizer `minimizer`. The fields
    /// are derived from one another: build another quadratic rather than change one.
    ///
    /// # Panics
    ///
    /// If an eigenvalue is negative or not finite, or `minimizer` has another length.
    pub fn new(eigenvalues: Vec<f64>, seed: Option<u64>, minimizer: Vec<f64>) -> Self {
        let n = eigenvalues.len();
        assert_eq!(
            minimizer.len(),
            n,
            "one minimizer coordinate per eigenvalue"
        );
        assert!(
            eigenvalues.iter().all(|l| *l >= 0.0 && l.is_finite()),
            "a convex quadratic's eigenvalues are finite and >= 0"
        );
        let q = match seed {
            Some(seed) => rotation(n, seed),
            None => identity(n),
        };
        let mut matrix = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                matrix[i * n + j] = (0..n)
                    .map(|k| q[i * n + k] * eigenvalues[k] * q[j * n + k])
                    .sum();
            }
        }
        Self {
            eigenvalues,
            eigenvectors: q,
            minimizer,
            matrix,
        }
    }

    /// `n` eigenvalues log-spaced from `lambda_max / kappa` to `lambda_max` (condition number
    /// κ), rotated, with a minimizer of coordinates in [0.5, 1.5): nonzero, so that float32's
    /// rounding of the parameters is as large as it is in practice.
    ///
    /// # Panics
    ///
    /// If `n < 2` or `kappa < 1`.
    pub fn log_spaced(n: usize, kappa: f64, lambda_max: f64, seed: u64) -> Self {
        assert!(n >= 2 && kappa >= 1.0);
        let eigenvalues = (0..n)
            .map(|i| lambda_max * kappa.powf(-((n - 1 - i) as f64) / (n - 1) as f64))
            .collect();
        Self::new(eigenvalues, Some(seed), minimizer(n, seed))
    }

    /// The smallest nonzero eigenvalue, λ1.
    pub fn lambda_min(&self) -> f64 {
        self.eigenvalues
            .iter()
            .copied()
            .filter(|l| *l > 0.0)
            .fold(f64::INFINITY, f64::min)
    }

    /// The largest eigenvalue, λn (L, the gradient's Lipschitz constant).
    pub fn lambda_max(&self) -> f64 {
        self.eigenvalues.iter().copied().fold(0.0, f64::max)
    }

    /// κ = λn / λ1 (over the nonzero eigenvalues).
    pub fn condition_number(&self) -> f64 {
        self.lambda_max() / self.lambda_min()
    }

    /// The error x − x* in eigen-coordinates: component i along eigenvector i.
    pub fn eigen_error(&self, x: &[f64]) -> Vec<f64> {
        let n = self.dim();
        (0..n)
            .map(|k| {
                (0..n)
                    .map(|i| self.eigenvectors[i * n + k] * (x[i] - self.minimizer[i]))
                    .sum()
            })
            .collect()
    }

    /// The point x* + Q c: `c[i]` of error along eigenvector i.
    pub fn point_with_eigen_error(&self, c: &[f64]) -> Vec<f64> {
        let n = self.dim();
        (0..n)
            .map(|i| {
                self.minimizer[i]
                    + (0..n)
                        .map(|k| self.eigenvectors[i * n + k] * c[k])
                        .sum::<f64>()
            })
            .collect()
    }

    /// The index of the smallest nonzero eigenvalue: the slowest direction for gradient
    /// descent.
    pub fn slowest_direction(&self) -> usize {
        let min = self.lambda_min();
        self.eigenvalues.iter().position(|l| *l == min).unwrap_or(0)
    }
}

impl Objective for Quadratic {
    fn dim(&self) -> usize {
        self.eigenvalues.len()
    }

    fn value(&self, x: &[f64]) -> f64 {
        // In eigen-coordinates: a sum of nonnegative terms, exact to rounding even near x*.
        self.eigen_error(x)
            .iter()
            .zip(&self.eigenvalues)
            .map(|(c, l)| 0.5 * l * c * c)
            .sum()
    }

    fn gradient(&self, x: &[f64]) -> Vec<f64> {
        let e: Vec<f64> = x.iter().zip(&self.minimizer).map(|(a, b)| a - b).collect();
        mat_vec(&self.matrix, &e)
    }

    fn hessian(&self, _x: &[f64]) -> Vec<f64> {
        self.matrix.clone()
    }

    fn minimum(&self) -> f64 {
        0.0
    }

    fn distance(&self, x: &[f64]) -> f64 {
        // To the nearest minimizer: the error's part outside A's null space.
        self.eigen_error(x)
            .iter()
            .zip(&self.eigenvalues)
            .filter(|(_, l)| **l > 0.0)
            .map(|(c, _)| c * c)
            .sum::<f64>()
            .sqrt()
    }
}

/// Rosenbrock's function on independent pairs, f(x) = Σ_j [100 (x_{2j+1} − x_{2j}²)² +
/// (1 − x_{2j})²] (Nocedal & Wright, (2.22) and Exercise 2.1): its minimizer is all ones,
/// f* = 0, and its curved valley is the classic trap for gradient descent.
#[derive(Clone, Copy, Debug)]
pub struct Rosenbrock {
    /// The number of (x_{2j}, x_{2j+1}) pairs.
    pub pairs: usize,
}

impl Rosenbrock {
    /// The standard start (−1.2, 1), repeated for every pair.
    pub fn standard_start(&self) -> Vec<f64> {
        [-1.2, 1.0].repeat(self.pairs)
    }
}

impl Objective for Rosenbrock {
    fn dim(&self) -> usize {
        2 * self.pairs
    }

    fn value(&self, x: &[f64]) -> f64 {
        x.chunks_exact(2)
            .map(|p| 100.0 * (p[1] - p[0] * p[0]).powi(2) + (1.0 - p[0]).powi(2))
            .sum()
    }

    fn gradient(&self, x: &[f64]) -> Vec<f64> {
        x.chunks_exact(2)
            .flat_map(|p| {
                let valley = p[1] - p[0] * p[0];
                [-400.0 * p[0] * valley - 2.0 * (1.0 - p[0]), 200.0 * valley]
            })
            .collect()
    }

    fn hessian(&self, x: &[f64]) -> Vec<f64> {
        // Block diagonal: one 2×2 block per pair.
        let n = self.dim();
        let mut h = vec![0.0; n * n];
        for (j, p) in x.chunks_exact(2).enumerate() {
            let (a, b) = (2 * j, 2 * j + 1);
            h[a * n + a] = 1200.0 * p[0] * p[0] - 400.0 * p[1] + 2.0;
            h[a * n + b] = -400.0 * p[0];
            h[b * n + a] = -400.0 * p[0];
            h[b * n + b] = 200.0;
        }
        h
    }

    fn minimum(&self) -> f64 {
        0.0
    }

    fn distance(&self, x: &[f64]) -> f64 {
        x.iter().map(|v| (v - 1.0).powi(2)).sum::<f64>().sqrt()
    }
}

/// How the steps are taken. Every method is `torch.optim.SGD` on the GPU; they differ in its
/// configuration and in what the host hands it as the "gradient".
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// x_{k+1} = x_k − lr ∇f(x_k): SGD without momentum.
    GradientDescent {
        /// The step size η (α).
        lr: f64,
    },
    /// Polyak's heavy ball, x_{k+1} = x_k − α∇f(x_k) + β(x_k − x_{k−1}): SGD with momentum β
    /// and lr α. PyTorch's momentum buffer b_k = β b_{k−1} + ∇f(x_k) (b_0 = ∇f(x_0)) steps
    /// x_{k+1} = x_k − α b_k; since α b_{k−1} = x_{k−1} − x_k, that is x_k − α∇f(x_k) −
    /// βα b_{k−1} = x_k − α∇f(x_k) + β(x_k − x_{k−1}), Polyak's iteration with x_{−1} = x_0.
    HeavyBall {
        /// α.
        lr: f64,
        /// β.
        momentum: f64,
    },
    /// Nesterov's accelerated gradient for convex problems: SGD with `nesterov: true`, lr = 1/L
    /// and the momentum changed before step k = 1, 2, … to k/(k + 3).
    ///
    /// PyTorch's form (Sutskever et al. 2013) keeps Nesterov's look-ahead point y_k as the
    /// parameters: b_k = β b_{k−1} + ∇f(y_k), y_{k+1} = y_k − α(∇f(y_k) + β b_k). With β fixed
    /// this is exactly x_{k+1} = y_k − α∇f(y_k), y_{k+1} = x_{k+1} + β(x_{k+1} − x_k). Its one β
    /// per step serves both as the look-ahead's momentum (Nesterov's μ_{k+1} = k/(k + 3) in the
    /// (k − 1)/(k + 2) sequence) and as the buffer's decay (μ_k); the difference is a term of
    /// relative size 3/k², and the bound is measured on the GPU's own iterates y_k.
    Nesterov {
        /// α = 1/L.
        lr: f64,
    },
    /// Newton's method, x_{k+1} = x_k − ∇²f(x_k)⁻¹ ∇f(x_k): the host solves the Newton system
    /// in float64 (Gaussian elimination with partial pivoting, dense: these problems are small)
    /// and the GPU takes the step as SGD with lr 1 on that direction.
    Newton,
}

impl Method {
    /// A short name for legends and tables.
    pub fn label(&self) -> String {
        match self {
            Method::GradientDescent { lr } => format!("gradient descent, η = {}", short(*lr)),
            Method::HeavyBall { lr, momentum } => {
                format!("heavy ball, α = {}, β = {}", short(*lr), short(*momentum))
            }
            Method::Nesterov { lr } => format!("Nesterov, η = {}, μ_k = k/(k+3)", short(*lr)),
            Method::Newton => "Newton".into(),
        }
    }

    /// The SGD configuration of step `k` (1-based).
    fn config(&self, k: usize) -> Sgd {
        match *self {
            Method::GradientDescent { lr } => Sgd {
                lr,
                ..Default::default()
            },
            Method::HeavyBall { lr, momentum } => Sgd {
                lr,
                momentum,
                ..Default::default()
            },
            Method::Nesterov { lr } => Sgd {
                lr,
                momentum: nesterov_momentum(k),
                nesterov: true,
                ..Default::default()
            },
            Method::Newton => Sgd {
                lr: 1.0,
                ..Default::default()
            },
        }
    }
}

/// The momentum of Nesterov's step k (1-based): k/(k + 3).
pub fn nesterov_momentum(k: usize) -> f64 {
    k as f64 / (k as f64 + 3.0)
}

/// Goh's optimal heavy-ball parameters for eigenvalues in [λ1, λn]: (α, β).
pub fn optimal_heavy_ball(lambda_min: f64, lambda_max: f64) -> (f64, f64) {
    let (a, b) = (lambda_min.sqrt(), lambda_max.sqrt());
    ((2.0 / (a + b)).powi(2), ((b - a) / (b + a)).powi(2))
}

/// Gradient descent's contraction with η = 1/λmax: 1 − 1/κ.
pub fn gradient_descent_rate(kappa: f64) -> f64 {
    1.0 - 1.0 / kappa
}

/// Heavy ball's contraction with Goh's parameters: (√κ − 1)/(√κ + 1).
pub fn heavy_ball_rate(kappa: f64) -> f64 {
    (kappa.sqrt() - 1.0) / (kappa.sqrt() + 1.0)
}

/// One iterate as the GPU holds it, measured in float64.
#[derive(Clone, Debug)]
pub struct Point {
    /// k: the number of steps taken.
    pub iteration: usize,
    /// The gradient evaluations it took to reach x_k: k for the methods of [`run`] (one
    /// gradient per step, and for Newton one Hessian besides), the closure evaluations of the
    /// line searches for [`run_lbfgs`].
    pub evaluations: usize,
    /// f(x_k) − f*.
    pub gap: f64,
    /// The distance from x_k to the nearest minimizer.
    pub distance: f64,
    /// x_k itself (the parameters read back from the GPU): the 1-D experiments plot it, the
    /// tests project it onto eigenvectors.
    pub x: Vec<f64>,
}

/// One method's run on one objective.
#[derive(Clone, Debug)]
pub struct Series {
    /// The method's label.
    pub label: String,
    /// x_0, x_1, …: `points[k].iteration == k`.
    pub points: Vec<Point>,
}

impl Series {
    /// f(x_k) − f* for every k.
    pub fn gaps(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.gap).collect()
    }

    /// ‖x_k − x*‖ for every k.
    pub fn distances(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.distance).collect()
    }
}

/// Runs `steps` steps of `method` on `objective` from `x0`, on the GPU. The start is rounded
/// to float32 as the GPU holds it; point 0 is that rounded start.
pub fn run(
    ctx: &GpuContext,
    objective: &dyn Objective,
    x0: &[f64],
    method: Method,
    steps: usize,
) -> Result<Series> {
    let start: Vec<f32> = x0.iter().map(|v| *v as f32).collect();
    let mut optimizer = Optimizer::builder(ctx)
        .group(method.config(1), [&start])
        .build()?;
    let measure = |k: usize, x: Vec<f64>| Point {
        iteration: k,
        evaluations: k,
        gap: objective.value(&x) - objective.minimum(),
        distance: objective.distance(&x),
        x,
    };
    let mut x: Vec<f64> = start.iter().map(|v| *v as f64).collect();
    let mut points = vec![measure(0, x.clone())];
    for k in 1..=steps {
        if matches!(method, Method::Nesterov { .. }) {
            optimizer.set_config(GroupId(0), method.config(k))?;
        }
        let gradient = objective.gradient(&x);
        let direction = match method {
            Method::Newton => solve(objective.hessian(&x), gradient)?,
            _ => gradient,
        };
        let direction: Vec<f32> = direction.iter().map(|v| *v as f32).collect();
        optimizer.step_with_grads(&[&direction])?;
        x = optimizer
            .read_param(TensorId(0))?
            .iter()
            .map(|v| *v as f64)
            .collect();
        points.push(measure(k, x.clone()));
    }
    Ok(Series {
        label: method.label(),
        points,
    })
}

/// Closure evaluations per L-BFGS `step` call at most (torch's default `max_eval` for its
/// default `max_iter` of 20): the line search's budget is this less the call's first
/// evaluation.
pub const LBFGS_MAX_EVAL: u64 = 25;

/// The lab's L-BFGS: `torch.optim.LBFGS(lr=1, max_iter=1, max_eval=25, tolerance_grad=0,
/// tolerance_change=0, history_size=history, line_search_fn="strong_wolfe")`.
///
/// One iteration per `step` call, so that every iterate is seen. The tolerances are 0 so that
/// only the run's length stops it, or torch's own end of the road: a zero gradient, a
/// direction that is no descent direction, a line search that finds no decrease. (torch's
/// default `tolerance_change = 1e-9` on the change of the loss would stop it on the quadratic
/// near ‖x − x*‖ ~ 1e-4, long before float32's floor.)
pub fn lbfgs_config(history: usize) -> Lbfgs {
    Lbfgs {
        lr: 1.0,
        max_iter: 1,
        max_eval: Some(LBFGS_MAX_EVAL),
        tolerance_grad: 0.0,
        tolerance_change: 0.0,
        history_size: history as u64,
        line_search_fn: Some(LineSearch::StrongWolfe),
        maximize: false,
    }
}

/// Runs up to `iterations` iterations of L-BFGS ([`lbfgs_config`]) on `objective` from `x0`,
/// on the GPU ([`GpuLbfgs`]: its vectors, dot products and line search on the device). The
/// closure reads x back, evaluates f and ∇f in float64 on the host and writes the gradient as
/// float32. Point 0 is the start rounded to float32; the run ends early where one torch call
/// with `max_iter = iterations` would: when a call makes no line search (zero gradient, or no
/// descent direction) or its line search leaves x where it was.
///
/// [`Point::evaluations`] counts what one such call would make: every call's closure
/// evaluations, less the first evaluation of each call after the first, which recomputes f and
/// ∇f at the point the previous call's line search already evaluated and ended on (the same
/// float32 vector: x_init + t·d is formed by the same device operation both times).
pub fn run_lbfgs(
    ctx: &GpuContext,
    objective: &dyn Objective,
    x0: &[f64],
    history: usize,
    iterations: usize,
) -> Result<Series> {
    let start: Vec<f32> = x0.iter().map(|v| *v as f32).collect();
    let mut optimizer = GpuLbfgs::new(ctx, lbfgs_config(history), &start)?;
    let mut closure =
        |space: &mut DeviceVectors, x: &DeviceVector, grad: &mut DeviceVector| -> Result<f64> {
            let x: Vec<f64> = space.read(x)?.into_iter().map(f64::from).collect();
            let g: Vec<f32> = objective.gradient(&x).iter().map(|v| *v as f32).collect();
            space.write(grad, &g)?;
            Ok(objective.value(&x))
        };
    let measure = |k: usize, evaluations: usize, x: Vec<f64>| Point {
        iteration: k,
        evaluations,
        gap: objective.value(&x) - objective.minimum(),
        distance: objective.distance(&x),
        x,
    };
    let mut x: Vec<f64> = start.iter().map(|v| f64::from(*v)).collect();
    let mut points = vec![measure(0, 0, x.clone())];
    let mut evaluations = 0;
    for k in 1..=iterations {
        let outcome = optimizer.step(&mut closure)?;
        if outcome.evals <= 1 {
            break;
        }
        evaluations += if k == 1 {
            outcome.evals
        } else {
            outcome.evals - 1
        };
        let next: Vec<f64> = optimizer
            .read_params()?
            .into_iter()
            .map(f64::from)
            .collect();
        if next == x {
            break;
        }
        x = next;
        points.push(measure(k, evaluations, x.clone()));
    }
    Ok(Series {
        label: format!("L-BFGS, m = {history}"),
        points,
    })
}

/// The float64 reference of [`run_lbfgs`]: the same statements ([`lbfgs::step`]) on float64
/// vectors on the host ([`HostVectors`]), from the same float32-rounded start, stopped and
/// counted the same way. What differs from the GPU's run is float32 alone.
pub fn run_lbfgs_reference(
    objective: &dyn Objective,
    x0: &[f64],
    history: usize,
    iterations: usize,
) -> Result<Series> {
    let config = lbfgs_config(history);
    let mut state = LbfgsState::new();
    let mut space = HostVectors { len: x0.len() };
    let mut x: Vec<f64> = x0.iter().map(|v| f64::from(*v as f32)).collect();
    let mut closure = |_: &mut HostVectors, x: &Vec<f64>, grad: &mut Vec<f64>| -> Result<f64> {
        grad.copy_from_slice(&objective.gradient(x));
        Ok(objective.value(x))
    };
    let measure = |k: usize, evaluations: usize, x: Vec<f64>| Point {
        iteration: k,
        evaluations,
        gap: objective.value(&x) - objective.minimum(),
        distance: objective.distance(&x),
        x,
    };
    let mut points = vec![measure(0, 0, x.clone())];
    let mut evaluations = 0;
    for k in 1..=iterations {
        let before = x.clone();
        let outcome = lbfgs::step(&config, &mut state, &mut space, &mut x, &mut closure)?;
        if outcome.evals <= 1 {
            break;
        }
        evaluations += if k == 1 {
            outcome.evals
        } else {
            outcome.evals - 1
        };
        if x == before {
            break;
        }
        points.push(measure(k, evaluations, x.clone()));
    }
    Ok(Series {
        label: format!("L-BFGS, m = {history}, float64 on the host"),
        points,
    })
}

/// The mean contraction per step of `values` over `window`:
/// `(v[end] / v[start])^(1 / (end − start))`, the geometric mean of the per-step ratios.
///
/// # Panics
///
/// If the window is empty or reaches past `values`.
pub fn rate(values: &[f64], window: Range<usize>) -> f64 {
    assert!(window.end > window.start && window.end < values.len());
    (values[window.end] / values[window.start]).powf(1.0 / (window.end - window.start) as f64)
}

/// Where an error's asymptotic rate is measured: the second half of the iterations whose
/// error is still above `floor` (under it, float32 rounding takes over).
pub fn asymptotic_window(values: &[f64], floor: f64) -> Range<usize> {
    let last = values.iter().rposition(|v| *v > floor).unwrap_or(0).max(2);
    last / 2..last
}

/// The asymptotic rate of a decaying error: [`rate`] over [`asymptotic_window`].
pub fn asymptotic_rate(values: &[f64], floor: f64) -> f64 {
    rate(values, asymptotic_window(values, floor))
}

/// Heavy ball's asymptotic rate of ‖x_k − x*‖ with the polynomial factor taken out: the rate
/// of ‖x_k − x*‖/(k + 1) over [`asymptotic_window`].
///
/// With Goh's parameters every eigendirection's 2×2 iteration matrix has eigenvalues of
/// modulus √β = (√κ − 1)/(√κ + 1), and at λ1 and λn the two coincide (critical damping): the
/// matrix is a Jordan block and those errors decay as (a + b k) ρ^k, not ρ^k. Over a window
/// [k0, k1] the factor k alone multiplies the measured rate by (k1/k0)^(1/(k1 − k0)) (4 to 8% of
/// 1 − ρ in the lab's runs), which dividing by k + 1 removes.
pub fn heavy_ball_measured_rate(distances: &[f64], floor: f64) -> f64 {
    let scaled: Vec<f64> = distances
        .iter()
        .enumerate()
        .map(|(k, d)| d / (k + 1) as f64)
        .collect();
    rate(&scaled, asymptotic_window(distances, floor))
}

/// The level under which float32 rounding of x* dominates ‖x − x*‖, with a margin:
/// margin · 2⁻²⁴ · ‖x*‖ (each coordinate of x is rounded by up to 2⁻²⁴ of itself every step).
/// Rates are measured 100 times above it, so that rounding moves them by well under 1%.
pub fn float32_floor(minimizer: &[f64], margin: f64) -> f64 {
    margin * f32::EPSILON as f64 / 2.0 * norm(minimizer)
}

/// A measured number beside the one theory predicts, for the table `wgpu-optim lab` prints.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// What is compared, e.g. "gradient descent, κ = 100: rate of ‖x − x*‖".
    pub what: String,
    /// Theory's value.
    pub predicted: f64,
    /// The GPU's.
    pub measured: f64,
}

/// One curve of a panel.
#[derive(Clone, Debug)]
pub struct Line {
    /// The legend's text.
    pub label: String,
    /// (iteration, value) pairs.
    pub points: Vec<(f64, f64)>,
    /// A theoretical rate or bound (drawn thin and dashed), not a measurement.
    pub predicted: bool,
    /// Mark every point (for few iterations, where each one counts).
    pub markers: bool,
    /// Lines with the same colour index belong together (a measurement and its prediction).
    pub colour: usize,
}

/// The x axis of the panels whose every line is per iteration.
const ITERATIONS: &str = "iteration k";

/// One chart of an experiment.
#[derive(Clone, Debug)]
pub struct Panel {
    /// The panel's title.
    pub title: String,
    /// The x axis' description (" (log scale)" is appended on log axes).
    pub x_label: String,
    /// The y axis' description.
    pub y_label: String,
    /// Log-scale y (errors and gaps); linear for the 1-D iterates themselves.
    pub log_y: bool,
    /// Log-scale x as well (for O(1/k) and O(1/k²), straight lines on log-log axes).
    pub log_x: bool,
    /// Measured and predicted curves.
    pub lines: Vec<Line>,
}

/// One experiment: what `wgpu-optim lab` draws into `<name>.png` and summarizes in its table.
#[derive(Clone, Debug)]
pub struct Experiment {
    /// The file stem of its chart.
    pub name: &'static str,
    /// The chart's caption.
    pub title: String,
    /// Its panels, drawn side by side.
    pub panels: Vec<Panel>,
    /// Measured against predicted.
    pub comparisons: Vec<Comparison>,
}

/// An experiment's entry in [`EXPERIMENTS`].
pub struct LabEntry {
    /// The file stem of its chart.
    pub name: &'static str,
    /// Runs it on the GPU.
    pub run: fn(&GpuContext) -> Result<Experiment>,
}

/// Every experiment, in the order `wgpu-optim lab` runs them. Another one is a function
/// `fn(&GpuContext) -> Result<Experiment>` and a line here.
pub const EXPERIMENTS: &[LabEntry] = &[
    LabEntry {
        name: "gradient-descent",
        run: gradient_descent_experiment,
    },
    LabEntry {
        name: "heavy-ball",
        run: heavy_ball_experiment,
    },
    LabEntry {
        name: "nesterov",
        run: nesterov_experiment,
    },
    LabEntry {
        name: "step-sizes",
        run: step_size_experiment,
    },
    LabEntry {
        name: "newton",
        run: newton_experiment,
    },
    LabEntry {
        name: "lbfgs",
        run: lbfgs_experiment,
    },
];

/// The dimension of the experiments' quadratics.
pub const QUADRATIC_DIM: usize = 50;
/// λn of the experiments' quadratics: not 1, so that η = 1/λmax is not a no-op.
pub const LAMBDA_MAX: f64 = 4.0;

/// The start every quadratic experiment uses: an error of 1 along every eigenvector, so that
/// the slowest direction is present from the first step.
pub fn unit_eigen_start(problem: &Quadratic) -> Vec<f64> {
    problem.point_with_eigen_error(&vec![1.0; problem.dim()])
}

/// ‖x_k − x*‖ as a line; with markers when there are few iterations.
fn distance_line(series: &Series, colour: usize) -> Line {
    Line {
        label: series.label.clone(),
        points: series
            .points
            .iter()
            .map(|p| (p.iteration as f64, p.distance))
            .collect(),
        predicted: false,
        markers: series.points.len() <= 30,
        colour,
    }
}

/// value0 · rate^k over `steps`, as a dashed line.
fn rate_line(label: String, value0: f64, rate: f64, steps: usize, colour: usize) -> Line {
    Line {
        label,
        points: (0..=steps)
            .map(|k| (k as f64, value0 * rate.powi(k as i32)))
            .collect(),
        predicted: true,
        markers: false,
        colour,
    }
}

/// The condition numbers of the gradient-descent and heavy-ball experiments.
pub const CONDITION_NUMBERS: [f64; 2] = [100.0, 1e4];

fn gradient_descent_experiment(ctx: &GpuContext) -> Result<Experiment> {
    let steps = 600;
    let mut whole = Vec::new();
    let mut slowest_lines = Vec::new();
    let mut comparisons = Vec::new();
    for (colour, kappa) in CONDITION_NUMBERS.into_iter().enumerate() {
        let problem = Quadratic::log_spaced(QUADRATIC_DIM, kappa, LAMBDA_MAX, 1);
        let lr = 1.0 / problem.lambda_max();
        let series = run(
            ctx,
            &problem,
            &unit_eigen_start(&problem),
            Method::GradientDescent { lr },
            steps,
        )?;
        let predicted = gradient_descent_rate(kappa);
        let distances = series.distances();
        // The slowest eigendirection's error contracts by exactly 1 − 1/κ; the whole error's
        // rate tends to it once the faster directions have died out (for κ = 1e4 that takes
        // far longer than 600 steps: only the slowest direction's rate is compared there).
        let slow = problem.slowest_direction();
        let slowest: Vec<f64> = series
            .points
            .iter()
            .map(|p| problem.eigen_error(&p.x)[slow].abs())
            .collect();
        comparisons.push(Comparison {
            what: format!(
                "GD, κ = {}: rate of the error along the slowest eigenvector",
                short(kappa)
            ),
            predicted,
            measured: rate(&slowest, 0..steps),
        });
        if kappa <= 100.0 {
            comparisons.push(Comparison {
                what: format!(
                    "GD, κ = {}: rate of ‖x − x*‖, steps {}..{steps}",
                    short(kappa),
                    steps / 2
                ),
                predicted,
                measured: rate(&distances, steps / 2..steps),
            });
        }
        let label = format!("κ = {}: measured", short(kappa));
        whole.push(distance_line(
            &Series {
                label: label.clone(),
                ..series.clone()
            },
            colour,
        ));
        whole.push(rate_line(
            format!("‖x0 − x*‖ (1 − 1/κ)^k, κ = {}", short(kappa)),
            distances[0],
            predicted,
            steps,
            colour,
        ));
        slowest_lines.push(Line {
            label,
            points: slowest
                .iter()
                .enumerate()
                .map(|(k, v)| (k as f64, *v))
                .collect(),
            predicted: false,
            markers: false,
            colour,
        });
        slowest_lines.push(rate_line(
            format!("(1 − 1/κ)^k, κ = {}", short(kappa)),
            slowest[0],
            predicted,
            steps,
            colour,
        ));
    }
    Ok(Experiment {
        name: "gradient-descent",
        title: "Gradient descent, η = 1/λmax, on ½(x − x*)ᵀA(x − x*), n = 50, rotated".into(),
        panels: vec![
            Panel {
                title: "‖x_k − x*‖ under the bound ‖x0 − x*‖ (1 − 1/κ)^k".into(),
                x_label: ITERATIONS.into(),
                y_label: "‖x − x*‖ (log scale)".into(),
                log_y: true,
                log_x: false,
                lines: whole,
            },
            Panel {
                title: "Error along the slowest eigenvector: exactly (1 − 1/κ)^k".into(),
                x_label: ITERATIONS.into(),
                y_label: "|q1ᵀ(x − x*)| (log scale)".into(),
                log_y: true,
                log_x: false,
                lines: slowest_lines,
            },
        ],
        comparisons,
    })
}

fn heavy_ball_experiment(ctx: &GpuContext) -> Result<Experiment> {
    let mut panels = Vec::new();
    let mut comparisons = Vec::new();
    for (kappa, steps) in CONDITION_NUMBERS.into_iter().zip([120, 1000]) {
        let problem = Quadratic::log_spaced(QUADRATIC_DIM, kappa, LAMBDA_MAX, 2);
        let x0 = unit_eigen_start(&problem);
        let (alpha, beta) = optimal_heavy_ball(problem.lambda_min(), problem.lambda_max());
        let heavy = run(
            ctx,
            &problem,
            &x0,
            Method::HeavyBall {
                lr: alpha,
                momentum: beta,
            },
            steps,
        )?;
        let plain = run(
            ctx,
            &problem,
            &x0,
            Method::GradientDescent {
                lr: 1.0 / problem.lambda_max(),
            },
            steps,
        )?;
        let floor = float32_floor(&problem.minimizer, 100.0);
        let (hb_rate, gd_rate) = (heavy_ball_rate(kappa), gradient_descent_rate(kappa));
        let distances = heavy.distances();
        let window = asymptotic_window(&distances, floor);
        comparisons.push(Comparison {
            what: format!(
                "heavy ball, κ = {}: rate of ‖x − x*‖/(k+1), steps {}..{}",
                short(kappa),
                window.start,
                window.end
            ),
            predicted: hb_rate,
            measured: heavy_ball_measured_rate(&distances, floor),
        });
        comparisons.push(Comparison {
            what: format!(
                "heavy ball, κ = {}: rate of ‖x − x*‖ itself, same steps",
                short(kappa)
            ),
            predicted: hb_rate,
            measured: rate(&distances, window.clone()),
        });
        comparisons.push(Comparison {
            what: format!(
                "GD, κ = {}: rate of ‖x − x*‖, same steps (bound)",
                short(kappa)
            ),
            predicted: gd_rate,
            measured: rate(&plain.distances(), window.clone()),
        });
        // Theory's slope, drawn through the measured error where the rate is measured.
        let end = window.end;
        let through_end = distances[end] / hb_rate.powi(end as i32);
        panels.push(Panel {
            title: format!("κ = {}", short(kappa)),
            x_label: ITERATIONS.into(),
            y_label: "‖x − x*‖ (log scale)".into(),
            log_y: true,
            log_x: false,
            lines: vec![
                distance_line(&heavy, 0),
                rate_line(
                    format!("slope ((√κ−1)/(√κ+1))^k = {hb_rate:.4}^k"),
                    through_end,
                    hb_rate,
                    steps,
                    0,
                ),
                distance_line(&plain, 1),
                rate_line(
                    format!("‖x0 − x*‖ (1 − 1/κ)^k = {gd_rate:.4}^k"),
                    distances[0],
                    gd_rate,
                    steps,
                    1,
                ),
            ],
        });
    }
    Ok(Experiment {
        name: "heavy-ball",
        title: "Heavy ball with Goh's optimal α, β against gradient descent, n = 50".into(),
        panels,
        comparisons,
    })
}

/// The convex problem of the Nesterov experiment: n = 50, five zero eigenvalues (a whole
/// subspace of minimizers) and 45 log-spaced from 4e-6 to 4, so that the problem is convex but
/// not usefully strongly convex: only the O(1/k) and O(1/k²) bounds say anything.
pub fn nesterov_problem() -> Quadratic {
    let n = QUADRATIC_DIM;
    let zeros = 5;
    let eigenvalues = (0..n)
        .map(|i| {
            if i < zeros {
                0.0
            } else {
                let t = (n - 1 - i) as f64 / (n - 1 - zeros) as f64;
                LAMBDA_MAX * 1e-6f64.powf(t)
            }
        })
        .collect();
    Quadratic::new(eigenvalues, Some(3), minimizer(n, 3))
}

/// The textbook bound of Nesterov's method: 2L‖x0 − x*‖²/(k + 1)².
pub fn nesterov_bound(lipschitz: f64, distance0: f64, k: usize) -> f64 {
    2.0 * lipschitz * distance0 * distance0 / ((k + 1) as f64).powi(2)
}

/// Gradient descent's bound with η = 1/L: L‖x0 − x*‖²/(2k).
pub fn gradient_descent_bound(lipschitz: f64, distance0: f64, k: usize) -> f64 {
    lipschitz * distance0 * distance0 / (2.0 * k as f64)
}

fn nesterov_experiment(ctx: &GpuContext) -> Result<Experiment> {
    let steps = 1000;
    let problem = nesterov_problem();
    let x0 = unit_eigen_start(&problem);
    let l = problem.lambda_max();
    let nesterov = run(ctx, &problem, &x0, Method::Nesterov { lr: 1.0 / l }, steps)?;
    let plain = run(
        ctx,
        &problem,
        &x0,
        Method::GradientDescent { lr: 1.0 / l },
        steps,
    )?;
    let d0 = nesterov.points[0].distance;
    // The constant C in f(x_k) − f* ≤ C L‖x0 − x*‖²/(k + 1)²: 2 by the theorem.
    let constant = |s: &Series| {
        s.points
            .iter()
            .skip(1)
            .map(|p| p.gap * ((p.iteration + 1) as f64).powi(2) / (l * d0 * d0))
            .fold(0.0, f64::max)
    };
    let gap_line = |s: &Series, colour| Line {
        label: s.label.clone(),
        points: s
            .points
            .iter()
            .skip(1)
            .map(|p| (p.iteration as f64, p.gap))
            .collect(),
        predicted: false,
        markers: false,
        colour,
    };
    let bound_line = |label: &str, bound: &dyn Fn(usize) -> f64, colour| Line {
        label: label.into(),
        points: (1..=steps).map(|k| (k as f64, bound(k))).collect(),
        predicted: true,
        markers: false,
        colour,
    };
    Ok(Experiment {
        name: "nesterov",
        title: "Nesterov's O(1/k²) on a convex quadratic (eigenvalues 0 and 4e-6..4), n = 50"
            .into(),
        panels: vec![Panel {
            title: "f(x_k) − f*".into(),
            x_label: ITERATIONS.into(),
            y_label: "f(x) − f* (log scale)".into(),
            log_y: true,
            log_x: true,
            lines: vec![
                gap_line(&nesterov, 0),
                bound_line("2L‖x0 − x*‖²/(k+1)²", &|k| nesterov_bound(l, d0, k), 0),
                gap_line(&plain, 1),
                bound_line("L‖x0 − x*‖²/(2k)", &|k| gradient_descent_bound(l, d0, k), 1),
            ],
        }],
        comparisons: vec![
            Comparison {
                what: "Nesterov: max (k+1)²(f − f*)/(L‖x0 − x*‖²)".into(),
                predicted: 2.0,
                measured: constant(&nesterov),
            },
            Comparison {
                what: "GD: max (k+1)²(f − f*)/(L‖x0 − x*‖²) (unbounded)".into(),
                predicted: f64::INFINITY,
                measured: constant(&plain),
            },
        ],
    })
}

/// The 1-D experiment: f(x) = x² from 8.7.
pub fn parabola() -> Quadratic {
    // ½ · 2 · x²: eigenvalue 2, minimizer 0.
    Quadratic::new(vec![2.0], None, vec![0.0])
}

/// x0 of the 1-D experiment.
pub const PARABOLA_START: f64 = 8.7;

/// The step sizes of the 1-D experiment: converges, oscillates, diverges.
pub const PARABOLA_STEP_SIZES: [f64; 3] = [0.2, 0.9, 1.05];

fn step_size_experiment(ctx: &GpuContext) -> Result<Experiment> {
    let steps = 20;
    let mut iterates = Vec::new();
    let mut magnitudes = Vec::new();
    let mut comparisons = Vec::new();
    for (colour, alpha) in PARABOLA_STEP_SIZES.into_iter().enumerate() {
        let series = run(
            ctx,
            &parabola(),
            &[PARABOLA_START],
            Method::GradientDescent { lr: alpha },
            steps,
        )?;
        let xs: Vec<f64> = series.points.iter().map(|p| p.x[0]).collect();
        let factor = (1.0 - 2.0 * alpha).abs();
        let label = format!("α = {alpha}");
        iterates.push(Line {
            label: label.clone(),
            points: xs.iter().enumerate().map(|(k, x)| (k as f64, *x)).collect(),
            predicted: false,
            markers: true,
            colour,
        });
        let abs: Vec<f64> = xs.iter().map(|x| x.abs()).collect();
        magnitudes.push(Line {
            label,
            points: abs
                .iter()
                .enumerate()
                .map(|(k, x)| (k as f64, *x))
                .collect(),
            predicted: false,
            markers: true,
            colour,
        });
        magnitudes.push(rate_line(
            format!("8.7 · |1 − 2α|^k = 8.7 · {}^k", short(factor)),
            PARABOLA_START,
            factor,
            steps,
            colour,
        ));
        comparisons.push(Comparison {
            what: format!("x², α = {alpha}: |x_(k+1)| / |x_k|"),
            predicted: factor,
            measured: rate(&abs, 0..steps),
        });
    }
    Ok(Experiment {
        name: "step-sizes",
        title: "Gradient descent on f(x) = x² from x0 = 8.7: x_(k+1) = (1 − 2α) x_k".into(),
        panels: vec![
            Panel {
                title: "x_k".into(),
                x_label: ITERATIONS.into(),
                y_label: "x".into(),
                log_y: false,
                log_x: false,
                lines: iterates,
            },
            Panel {
                title: "|x_k| against |1 − 2α|^k".into(),
                x_label: ITERATIONS.into(),
                y_label: "|x| (log scale)".into(),
                log_y: true,
                log_x: false,
                lines: magnitudes,
            },
        ],
        comparisons,
    })
}

/// The quadratic of the Newton experiment: κ = 1e4, rotated.
pub fn newton_quadratic() -> Quadratic {
    Quadratic::log_spaced(QUADRATIC_DIM, 1e4, LAMBDA_MAX, 4)
}

/// Gradient descent's step on Rosenbrock's function: 1e-3, stable along the whole path from
/// (−1.2, 1) (the Hessian's largest eigenvalue there is about 1500, and 1e-3 < 2/1500).
pub const ROSENBROCK_LR: f64 = 1e-3;

/// The largest C with e_(k+1) ≤ C e_k² over the steps where Newton converges locally
/// (e_k < `local`) and e_(k+1) is still above `floor`; `None` if there is no such step.
pub fn quadratic_constant(distances: &[f64], local: f64, floor: f64) -> Option<f64> {
    distances
        .windows(2)
        .filter(|w| w[0] < local && w[1] > floor)
        .map(|w| w[1] / (w[0] * w[0]))
        .reduce(f64::max)
}

/// The first iteration whose error is at most `target`, if any.
pub fn first_below(distances: &[f64], target: f64) -> Option<usize> {
    distances.iter().position(|d| *d <= target)
}

fn newton_experiment(ctx: &GpuContext) -> Result<Experiment> {
    let mut panels = Vec::new();
    let mut comparisons = Vec::new();

    let quadratic = newton_quadratic();
    let x0 = unit_eigen_start(&quadratic);
    let gd_steps = 300;
    let newton = run(ctx, &quadratic, &x0, Method::Newton, 3)?;
    let plain = run(
        ctx,
        &quadratic,
        &x0,
        Method::GradientDescent {
            lr: 1.0 / quadratic.lambda_max(),
        },
        gd_steps,
    )?;
    let d0 = newton.points[0].distance;
    comparisons.push(Comparison {
        what: "Newton, quadratic κ = 1e4: ‖x1 − x*‖/‖x0 − x*‖ (float32: 2^-24 ‖x*‖/‖x0 − x*‖)"
            .into(),
        predicted: f32::EPSILON as f64 / 2.0 * norm(&quadratic.minimizer) / d0,
        measured: newton.points[1].distance / d0,
    });
    comparisons.push(Comparison {
        what: format!("GD, quadratic κ = 1e4: ‖x{gd_steps} − x*‖/‖x0 − x*‖ (bound)"),
        predicted: gradient_descent_rate(1e4).powi(gd_steps as i32),
        measured: plain.points[gd_steps].distance / d0,
    });
    panels.push(Panel {
        title: "Quadratic, κ = 1e4, n = 50".into(),
        x_label: ITERATIONS.into(),
        y_label: "‖x − x*‖ (log scale)".into(),
        log_y: true,
        log_x: false,
        lines: vec![distance_line(&newton, 0), distance_line(&plain, 1)],
    });

    let rosenbrock = Rosenbrock { pairs: 10 };
    let x0 = rosenbrock.standard_start();
    let newton = run(ctx, &rosenbrock, &x0, Method::Newton, 8)?;
    let gd_steps = 3000;
    let plain = run(
        ctx,
        &rosenbrock,
        &x0,
        Method::GradientDescent { lr: ROSENBROCK_LR },
        gd_steps,
    )?;
    // Ten times float32's rounding of x* = 1: an error above it is Newton's, not rounding's.
    let floor = float32_floor(&vec![1.0; rosenbrock.dim()], 10.0);
    let as_count = |k: Option<usize>| k.map_or(f64::INFINITY, |k| k as f64);
    comparisons.push(Comparison {
        what: "Newton, Rosenbrock: max e_(k+1)/e_k² once e_k < 1".into(),
        predicted: f64::NAN,
        measured: quadratic_constant(&newton.distances(), 1.0, floor).unwrap_or(f64::NAN),
    });
    comparisons.push(Comparison {
        what: "Newton, Rosenbrock: steps to ‖x − x*‖ ≤ 1e-6".into(),
        predicted: f64::NAN,
        measured: as_count(first_below(&newton.distances(), 1e-6)),
    });
    comparisons.push(Comparison {
        what: format!(
            "GD, Rosenbrock: ‖x{gd_steps} − x*‖ (from ‖x0 − x*‖ = {:.2})",
            newton.points[0].distance
        ),
        predicted: f64::NAN,
        measured: plain.points[gd_steps].distance,
    });
    let exact = newton
        .points
        .iter()
        .find(|p| p.distance == 0.0)
        .map_or(String::new(), |p| {
            format!(": Newton at x* exactly from k = {}", p.iteration)
        });
    panels.push(Panel {
        title: format!("Rosenbrock, 10 pairs from (−1.2, 1){exact}"),
        x_label: ITERATIONS.into(),
        y_label: "‖x − x*‖ (log scale)".into(),
        log_y: true,
        log_x: true,
        lines: vec![distance_line(&newton, 0), distance_line(&plain, 1)],
    });
    Ok(Experiment {
        name: "newton",
        title:
            "Newton's method (float64 solve on the host, step on the GPU) against gradient descent"
                .into(),
        panels,
        comparisons,
    })
}

/// The lab's short L-BFGS history (torch's default is 100).
pub const LBFGS_HISTORY: usize = 10;

/// torch's default L-BFGS history (`history_size = 100`): more pairs than the runs on
/// [`lbfgs_quadratic`] take iterations, so none is ever dropped.
pub const LBFGS_LONG_HISTORY: usize = 100;

/// The dimension of [`lbfgs_quadratic`]: small enough that L-BFGS with torch's default history
/// keeps every pair until it reaches float32's floor (each iteration takes two dot products
/// per pair on the device, each read back).
pub const LBFGS_DIM: usize = 20;

/// The quadratic of the L-BFGS experiment: κ = 1e4 as in the Newton experiment, n = 20,
/// rotated.
pub fn lbfgs_quadratic() -> Quadratic {
    Quadratic::log_spaced(LBFGS_DIM, 1e4, LAMBDA_MAX, 5)
}

/// (k, e_k/e_(k−1)) for every step k ≥ 1 whose new error e_k is still above `floor` (under
/// it, float32's rounding decides the ratio) and whose e_(k−1) is not zero.
pub fn successive_ratios(distances: &[f64], floor: f64) -> Vec<(usize, f64)> {
    distances
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] > floor && w[0] > 0.0)
        .map(|(k, w)| (k + 1, w[1] / w[0]))
        .collect()
}

/// The first point whose error is at most `target`: its (iteration, evaluations), if any.
pub fn first_reaching(series: &Series, target: f64) -> Option<(usize, usize)> {
    series
        .points
        .iter()
        .find(|p| p.distance <= target)
        .map(|p| (p.iteration, p.evaluations))
}

/// Gradient descent with η = 1/λmax on `problem` from `unit_eigen_start`: in exact arithmetic
/// the slowest direction's error is exactly (1 − 1/κ)^k and ‖x_k − x*‖ is at least that, so
/// reaching `relative` · ‖x0 − x*‖ takes at least this many steps.
pub fn gradient_descent_steps_at_least(problem: &Quadratic, relative: f64) -> f64 {
    let d0 = (problem.dim() as f64).sqrt();
    ((relative * d0).ln() / gradient_descent_rate(problem.condition_number()).ln()).ceil()
}

/// ‖x_k − x*‖ against the gradient evaluations that reached x_k.
fn evaluation_line(series: &Series, colour: usize) -> Line {
    Line {
        points: series
            .points
            .iter()
            .map(|p| (p.evaluations as f64, p.distance))
            .collect(),
        ..distance_line(series, colour)
    }
}

/// e_k/e_(k−1) against k, above `floor`.
fn ratio_line(series: &Series, floor: f64, colour: usize) -> Line {
    let ratios = successive_ratios(&series.distances(), floor);
    Line {
        label: series.label.clone(),
        markers: ratios.len() <= 60,
        points: ratios.into_iter().map(|(k, r)| (k as f64, r)).collect(),
        predicted: false,
        colour,
    }
}

/// The x axis of panels that compare methods by their cost: one evaluation per step for
/// gradient descent, heavy ball and Newton (with a Hessian), those of the line searches for
/// L-BFGS ([`Point::evaluations`]).
const EVALUATIONS: &str = "gradient evaluations";

fn lbfgs_experiment(ctx: &GpuContext) -> Result<Experiment> {
    let mut panels = Vec::new();
    let mut comparisons = Vec::new();
    let as_count = |k: Option<usize>| k.map_or(f64::INFINITY, |k| k as f64);

    let quadratic = lbfgs_quadratic();
    let n = quadratic.dim();
    let x0 = unit_eigen_start(&quadratic);
    let steps = 1000;
    let plain = run(
        ctx,
        &quadratic,
        &x0,
        Method::GradientDescent {
            lr: 1.0 / quadratic.lambda_max(),
        },
        steps,
    )?;
    let (alpha, beta) = optimal_heavy_ball(quadratic.lambda_min(), quadratic.lambda_max());
    let heavy = run(
        ctx,
        &quadratic,
        &x0,
        Method::HeavyBall {
            lr: alpha,
            momentum: beta,
        },
        steps,
    )?;
    let newton = run(ctx, &quadratic, &x0, Method::Newton, 2)?;
    let long = run_lbfgs(ctx, &quadratic, &x0, LBFGS_LONG_HISTORY, 150)?;
    let short_history = run_lbfgs(ctx, &quadratic, &x0, LBFGS_HISTORY, 150)?;
    // Short legends: the panels are narrow.
    let plain = Series {
        label: "GD, η = 1/λmax".into(),
        ..plain
    };
    let heavy = Series {
        label: "heavy ball, Goh's α, β".into(),
        ..heavy
    };
    let d0 = plain.points[0].distance;
    let what = |relative: f64, method: &str| {
        format!("quadratic: evaluations to ‖x − x*‖ ≤ {relative:e}‖x0 − x*‖, {method}")
    };
    for relative in [1e-3, 1e-5] {
        let target = relative * d0;
        comparisons.push(Comparison {
            what: what(
                relative,
                &format!("GD (predicted: at least; ∞: not in {steps})"),
            ),
            predicted: gradient_descent_steps_at_least(&quadratic, relative),
            measured: as_count(first_reaching(&plain, target).map(|p| p.1)),
        });
        comparisons.push(Comparison {
            what: what(relative, "heavy ball"),
            predicted: f64::NAN,
            measured: as_count(first_reaching(&heavy, target).map(|p| p.1)),
        });
        for series in [&short_history, &long] {
            let reached = first_reaching(series, target);
            let iterations = reached.map_or_else(
                || format!(" (∞: not in {} iterations)", series.points.len() - 1),
                |(k, _)| format!(" ({k} iterations)"),
            );
            comparisons.push(Comparison {
                what: what(relative, &format!("{}{iterations}", series.label)),
                predicted: f64::NAN,
                measured: as_count(reached.map(|p| p.1)),
            });
        }
        comparisons.push(Comparison {
            what: what(relative, "Newton"),
            predicted: 1.0,
            measured: as_count(first_reaching(&newton, target).map(|p| p.1)),
        });
    }
    // The same L-BFGS in float64 on the host: what float32 changes.
    let reference_short = run_lbfgs_reference(&quadratic, &x0, LBFGS_HISTORY, 150)?;
    let reference_long = run_lbfgs_reference(&quadratic, &x0, LBFGS_LONG_HISTORY, 150)?;
    // Both run 150 iterations unless torch's stopping rules end one early.
    let k = short_history.points.len().min(reference_short.points.len()) - 1;
    comparisons.push(Comparison {
        what: format!(
            "quadratic: ‖x{k} − x*‖/‖x0 − x*‖, {} (predicted: float64 reference)",
            short_history.label
        ),
        predicted: reference_short.points[k].distance / d0,
        measured: short_history.points[k].distance / d0,
    });
    comparisons.push(Comparison {
        what: format!(
            "quadratic: evaluations to ‖x − x*‖ ≤ 1e-5‖x0 − x*‖, {} (predicted: float64 reference)",
            long.label
        ),
        predicted: as_count(first_reaching(&reference_long, 1e-5 * d0).map(|p| p.1)),
        measured: as_count(first_reaching(&long, 1e-5 * d0).map(|p| p.1)),
    });
    // x* rounded to float32, coordinate by coordinate, is the float32 vector nearest x*.
    let rounded: Vec<f64> = quadratic
        .minimizer
        .iter()
        .map(|v| f64::from(*v as f32))
        .collect();
    let rounding = quadratic.distance(&rounded) / d0;
    for series in [&heavy, &short_history, &long] {
        let lowest = series.distances().into_iter().fold(f64::INFINITY, f64::min);
        comparisons.push(Comparison {
            what: format!(
                "quadratic: lowest ‖x − x*‖/‖x0 − x*‖, {} (bound: x* rounded to float32)",
                series.label
            ),
            predicted: rounding,
            measured: lowest / d0,
        });
    }
    panels.push(Panel {
        title: format!("Quadratic, κ = 1e4, n = {n}, rotated"),
        x_label: EVALUATIONS.into(),
        y_label: "‖x − x*‖ (log scale)".into(),
        log_y: true,
        log_x: true,
        lines: vec![
            evaluation_line(&plain, 1),
            evaluation_line(&heavy, 3),
            evaluation_line(&short_history, 4),
            evaluation_line(&long, 2),
            evaluation_line(&newton, 0),
        ],
    });

    let rosenbrock = Rosenbrock { pairs: 10 };
    let x0 = rosenbrock.standard_start();
    let lbfgs = run_lbfgs(ctx, &rosenbrock, &x0, LBFGS_HISTORY, 100)?;
    let newton = run(ctx, &rosenbrock, &x0, Method::Newton, 8)?;
    let gd_steps = 3000;
    let plain = Series {
        label: format!("GD, η = {ROSENBROCK_LR:e}"),
        ..run(
            ctx,
            &rosenbrock,
            &x0,
            Method::GradientDescent { lr: ROSENBROCK_LR },
            gd_steps,
        )?
    };
    let floor = float32_floor(&vec![1.0; rosenbrock.dim()], 10.0);
    for series in [&lbfgs, &newton] {
        let reached = first_reaching(series, 1e-5);
        comparisons.push(Comparison {
            what: format!(
                "Rosenbrock: iterations to ‖x − x*‖ ≤ 1e-5, {}{}",
                series.label,
                reached.map_or(String::new(), |(_, e)| format!(" ({e} evaluations)"))
            ),
            predicted: f64::NAN,
            measured: as_count(reached.map(|p| p.0)),
        });
    }
    let ratios = successive_ratios(&lbfgs.distances(), floor);
    for (k, ratio) in ratios.iter().skip(ratios.len().saturating_sub(4)) {
        comparisons.push(Comparison {
            what: format!(
                "Rosenbrock, {}: e_{k}/e_{} (superlinear: → 0)",
                lbfgs.label,
                k - 1
            ),
            predicted: f64::NAN,
            measured: *ratio,
        });
    }
    panels.push(Panel {
        title: "Rosenbrock, 10 pairs from (−1.2, 1)".into(),
        x_label: EVALUATIONS.into(),
        y_label: "‖x − x*‖ (log scale)".into(),
        log_y: true,
        log_x: true,
        lines: vec![
            evaluation_line(&plain, 1),
            evaluation_line(&lbfgs, 2),
            evaluation_line(&newton, 0),
        ],
    });
    panels.push(Panel {
        title: "Rosenbrock: e_k/e_(k−1), above float32's floor".into(),
        x_label: ITERATIONS.into(),
        y_label: "‖x_k − x*‖ / ‖x_(k−1) − x*‖ (log scale)".into(),
        log_y: true,
        log_x: false,
        lines: vec![ratio_line(&lbfgs, floor, 2), ratio_line(&newton, floor, 0)],
    });
    Ok(Experiment {
        name: "lbfgs",
        title: "L-BFGS (torch's LBFGS, strong Wolfe, on the GPU) against GD, heavy ball and Newton"
            .into(),
        panels,
        comparisons,
    })
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// Minimizer coordinates in [0.5, 1.5).
fn minimizer(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64(seed ^ 0xA5A5_5A5A);
    (0..n).map(|_| 1.0 + 0.5 * rng.symmetric()).collect()
}

fn identity(n: usize) -> Vec<f64> {
    let mut q = vec![0.0; n * n];
    for i in 0..n {
        q[i * n + i] = 1.0;
    }
    q
}

/// A dense orthogonal matrix: the product of `n` Householder reflections I − 2vvᵀ/‖v‖² with
/// pseudo-random v. Products of reflections are exactly orthogonal (to rounding), and n of
/// them leave no structure to exploit.
fn rotation(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64(seed);
    let mut q = identity(n);
    for _ in 0..n {
        let v: Vec<f64> = (0..n).map(|_| rng.symmetric()).collect();
        let norm2: f64 = v.iter().map(|a| a * a).sum();
        // Q ← (I − 2vvᵀ/‖v‖²) Q, column by column.
        for j in 0..n {
            let dot: f64 = (0..n).map(|i| v[i] * q[i * n + j]).sum();
            let scale = 2.0 * dot / norm2;
            for i in 0..n {
                q[i * n + j] -= scale * v[i];
            }
        }
    }
    q
}

fn mat_vec(m: &[f64], v: &[f64]) -> Vec<f64> {
    let n = v.len();
    (0..n)
        .map(|i| (0..n).map(|j| m[i * n + j] * v[j]).sum())
        .collect()
}

/// Solves M d = b (M row-major) by Gaussian elimination with partial pivoting, in float64.
fn solve(mut m: Vec<f64>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| m[i * n + col].abs().total_cmp(&m[j * n + col].abs()))
            .unwrap_or(col);
        if m[pivot * n + col] == 0.0 || !m[pivot * n + col].is_finite() {
            return Err(Error::InvalidConfig {
                optimizer: "newton",
                reason: format!("the Hessian is singular (column {col} has no pivot)"),
            });
        }
        if pivot != col {
            for j in 0..n {
                m.swap(pivot * n + j, col * n + j);
            }
            b.swap(pivot, col);
        }
        for row in col + 1..n {
            let factor = m[row * n + col] / m[col * n + col];
            if factor != 0.0 {
                for j in col..n {
                    m[row * n + j] -= factor * m[col * n + j];
                }
                b[row] -= factor * b[col];
            }
        }
    }
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|j| m[row * n + j] * b[j]).sum();
        b[row] = (b[row] - tail) / m[row * n + row];
    }
    Ok(b)
}

/// A number as a legend shows it: 100, 1e4, 0.25, 0.8187.
fn short(v: f64) -> String {
    if v >= 1e4 && (v.log10().fract()).abs() < 1e-9 {
        format!("1e{}", v.log10().round())
    } else if v == v.round() {
        format!("{v}")
    } else {
        format!("{}", (v * 1e4).round() / 1e4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_orthogonal_and_quadratic_has_its_eigenvalues() {
        let p = Quadratic::log_spaced(12, 100.0, 4.0, 7);
        let n = 12;
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..n)
                    .map(|k| p.eigenvectors[k * n + i] * p.eigenvectors[k * n + j])
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "QᵀQ[{i},{j}] = {dot}");
            }
            // A q_i = λ_i q_i.
            let q: Vec<f64> = (0..n).map(|k| p.eigenvectors[k * n + i]).collect();
            let aq = mat_vec(&p.matrix, &q);
            for k in 0..n {
                assert!((aq[k] - p.eigenvalues[i] * q[k]).abs() < 1e-12);
            }
        }
        assert!((p.condition_number() - 100.0).abs() < 1e-9);
        // Off-diagonal mass: the rotation really mixes coordinates.
        assert!(p.matrix[1].abs() > 1e-3);
    }

    #[test]
    fn gradients_and_hessians_match_finite_differences() {
        let objectives: [(&dyn Objective, Vec<f64>); 2] = [
            (&Rosenbrock { pairs: 2 }, vec![-1.2, 1.0, 0.3, -0.7]),
            (
                &Quadratic::log_spaced(4, 10.0, 2.0, 1),
                vec![0.1, -0.2, 0.3, 2.0],
            ),
        ];
        for (f, x) in objectives {
            let g = f.gradient(&x);
            let h = f.hessian(&x);
            let n = x.len();
            for i in 0..n {
                let step = 1e-6;
                let mut up = x.clone();
                let mut down = x.clone();
                up[i] += step;
                down[i] -= step;
                let fd = (f.value(&up) - f.value(&down)) / (2.0 * step);
                assert!(
                    (fd - g[i]).abs() < 1e-5 * (1.0 + g[i].abs()),
                    "∂{i}: {fd} vs {}",
                    g[i]
                );
                let (gu, gd) = (f.gradient(&up), f.gradient(&down));
                for j in 0..n {
                    let fd = (gu[j] - gd[j]) / (2.0 * step);
                    assert!((fd - h[j * n + i]).abs() < 1e-4 * (1.0 + fd.abs()));
                }
            }
        }
    }

    #[test]
    fn solve_inverts_and_refuses_singular() {
        let m = vec![0.0, 2.0, 1.0, 3.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let d = solve(m.clone(), vec![5.0, 5.0, 4.0]).unwrap();
        for (a, b) in mat_vec(&m, &d).iter().zip([5.0, 5.0, 4.0]) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!(solve(vec![1.0, 2.0, 2.0, 4.0], vec![1.0, 1.0]).is_err());
    }

    #[test]
    fn rates_and_parameters_are_the_textbook_ones() {
        let (alpha, beta) = optimal_heavy_ball(1.0, 100.0);
        assert!((alpha - 4.0 / 121.0).abs() < 1e-15);
        assert!((beta - (9.0f64 / 11.0).powi(2)).abs() < 1e-15);
        assert!((heavy_ball_rate(100.0) - 9.0 / 11.0).abs() < 1e-15);
        assert!((rate(&[8.0, 4.0, 2.0, 1.0], 0..3) - 0.5).abs() < 1e-15);
    }
}
