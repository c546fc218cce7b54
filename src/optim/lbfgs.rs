//! L-BFGS, limited-memory BFGS (Nocedal, "Updating Quasi-Newton Matrices with Limited
//! Storage", Mathematics of Computation 35, 1980; Liu & Nocedal, "On the Limited Memory BFGS
//! Method for Large Scale Optimization", Mathematical Programming 45, 1989), as
//! `torch.optim.LBFGS` (torch 2.15.0), with its optional strong-Wolfe line search (which torch
//! ported from `lswolfe.lua` of torch7's `optim`, itself after minFunc).
//!
//! It is no elementwise [`UpdateRule`](super::UpdateRule), so it is declared outside the
//! `optimizers!` list: one [`step`] calls the objective (torch's closure) several times, takes
//! dot products over the whole vector, and keeps a history of up to `history_size` pairs of
//! vectors (gradient changes y and steps s) from which the two-loop recursion builds the next
//! direction.
//!
//! The vectors are generic ([`VectorSpace`]): [`HostVectors`] holds them on the host in float64
//! (the reference here, checked against torch in the tests), and the GPU implementation in
//! another file runs these same statements on device vectors, with device dot products and
//! reductions. Every scalar (the step t, the directional derivative gtd, ys, H_diag, ρ, the
//! losses) is a float64 on the host in both, so the branches (curvature test, Wolfe conditions,
//! stopping rules) are this file's code whatever holds the vectors.
//!
//! Reading it against torch's `torch/optim/lbfgs.py`:
//!
//! | torch | here |
//! | --- | --- |
//! | `LBFGS.step` | [`step`] |
//! | `_strong_wolfe` | `strong_wolfe` |
//! | `_cubic_interpolate` | `cubic_interpolate` |
//! | `_directional_evaluate` (the line search's `obj_func`) | `Evaluator::directional` |
//! | closure + `_gather_flat_grad` | `Evaluator::evaluate` |
//! | `self.state[self._params[0]]` | [`LbfgsState`] |
//! | `flat_grad`, `d`, `y`, `s`, `q`, `r`, ... (tensors) | `S::Vector`s, reused where possible |
//!
//! What torch does that one might not expect, all followed here:
//! - The line search is called without `tolerance_change`: it always uses its own default,
//!   1e-9, whatever the hyperparameter says.
//! - Its evaluation budget is `max_ls = max_eval - (evaluations so far in this call)`, and it
//!   evaluates once before looking at it: with `max_eval` reached (`max_iter = max_eval = 1`),
//!   a call still makes two evaluations.
//! - A `break` on the directional derivative (`gtd > -tolerance_change`) comes after the new
//!   direction d and the new initial step t were computed, and they are stored: the next call
//!   forms s = d·t from a step that was never taken.
//! - Without a line search, the last iteration of a call moves x without evaluating the
//!   objective there; the next call's first evaluation does.
//! - The state (history, d, t, H_diag, the previous gradient and loss, the iteration count)
//!   persists across calls; the first iteration ever (the global count at 1) starts from
//!   steepest descent with step min(1, 1/‖g‖₁)·lr.
//! - The curvature test `ys > 1e-10` is absolute, not relative to the vectors' size.
//! - The history drops its oldest pair when its length *equals* `history_size`.
//! - `maximize` negates the loss and the gradient as torch reads them, but the value returned
//!   is the closure's own first loss, not negated.
//! - A line search that spends its budget while still bracketing falls back to the bracket
//!   [0, t] and returns its lower end, which can be t = 0: x does not move, and the call stops
//!   on max |d·t| <= tolerance_change.
//!
//! Where this departs from torch, torch fails or does nothing: `max_iter`, `max_eval` and
//! `history_size` of 0 are refused (torch then only evaluates, its line search raises on the
//! negative budget, and its history pops from an empty list, respectively); a `history_size`
//! raised between calls is followed (torch's `al` keeps its first length and raises); and a
//! failing closure leaves a defined state (see [`step`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::Hyperparameters;
use crate::error::{Error, Result};

/// `line_search_fn`: the one line search torch offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineSearch {
    /// `"strong_wolfe"`: bracketing and cubic-interpolation zoom until the strong Wolfe
    /// conditions hold (Nocedal & Wright, "Numerical Optimization", Algorithms 3.5 and 3.6).
    #[serde(rename = "strong_wolfe")]
    StrongWolfe,
}

hyperparameters! {
    /// `torch.optim.LBFGS`'s arguments and defaults.
    pub struct Lbfgs {
        pub lr: f64 = 1.0 => non_negative,
        /// Most iterations per [`step`] call.
        pub max_iter: u64 = 20,
        /// Most objective evaluations per [`step`] call: checked after each iteration, and
        /// the line search evaluates once before it checks its budget, so a call may make one
        /// more. `None` is torch's `max_iter * 5 // 4`.
        pub max_eval: Option<u64> = None,
        /// A call stops when the largest |gradient element| is at most this.
        pub tolerance_grad: f64 = 1e-7 => finite,
        /// A call stops when the directional derivative, the largest |step element| or the
        /// change of the loss falls below this (not passed to the line search).
        pub tolerance_change: f64 = 1e-9 => finite,
        /// How many (y, s) pairs the history keeps.
        pub history_size: u64 = 100,
        /// `None` for a fixed step of `lr`, or the strong-Wolfe line search.
        pub line_search_fn: Option<LineSearch> = None,
        pub maximize: bool = false,
    }
    name: "lbfgs"
}

impl Lbfgs {
    /// The hyperparameters of a JSON object in torch's argument names (missing keys take the
    /// defaults), validated. Unknown keys and a `line_search_fn` other than `null` or
    /// `"strong_wolfe"` are an [`Error::InvalidConfig`].
    pub fn from_hyper(hyper: &serde_json::Value) -> Result<Self> {
        let config: Self =
            serde_json::from_value(hyper.clone()).map_err(|e| Error::InvalidConfig {
                optimizer: "lbfgs",
                reason: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// torch's check (`lr` >= 0), finite tolerances, and what torch leaves unchecked but
    /// cannot run without: at least one iteration, one evaluation and one history pair.
    /// [`Error::InvalidHyperparameter`] for a number out of its range, [`Error::InvalidConfig`]
    /// for the counts.
    pub fn validate(&self) -> Result<()> {
        self.check_each()?;
        let invalid = |reason: String| {
            Err(Error::InvalidConfig {
                optimizer: "lbfgs",
                reason,
            })
        };
        if self.max_iter < 1 {
            return invalid(format!("max_iter must be >= 1, got {}", self.max_iter));
        }
        if self.history_size < 1 {
            return invalid(format!(
                "history_size must be >= 1, got {}",
                self.history_size
            ));
        }
        // torch's line search fails (an unbound local) with a negative budget, which
        // max_eval = 0 gives on the first iteration.
        if self.resolved_max_eval() < 1 {
            return invalid(format!(
                "max_eval must be >= 1, got {}",
                self.resolved_max_eval()
            ));
        }
        Ok(())
    }

    /// `max_eval`, or torch's default `max_iter * 5 // 4` when it is `None`.
    pub fn resolved_max_eval(&self) -> u64 {
        self.max_eval
            .unwrap_or_else(|| self.max_iter.saturating_mul(5) / 4)
    }
}

/// The vector operations L-BFGS makes: on the host in float64 (the reference) or on the
/// device in float32.
pub trait VectorSpace {
    /// One vector of the problem's length.
    type Vector;
    /// A new vector of the problem's length, every element zero.
    fn zeros(&mut self) -> Result<Self::Vector>;
    /// dst = src
    fn copy(&mut self, dst: &mut Self::Vector, src: &Self::Vector) -> Result<()>;
    /// The dot product a·b.
    fn dot(&mut self, a: &Self::Vector, b: &Self::Vector) -> Result<f64>;
    /// y += alpha * x
    fn axpy(&mut self, alpha: f64, x: &Self::Vector, y: &mut Self::Vector) -> Result<()>;
    /// x *= alpha
    fn scale(&mut self, alpha: f64, x: &mut Self::Vector) -> Result<()>;
    /// max |x_i|  (NaN if any element is NaN)
    fn max_abs(&mut self, x: &Self::Vector) -> Result<f64>;
    /// sum |x_i|
    fn sum_abs(&mut self, x: &Self::Vector) -> Result<f64>;
}

/// The objective as [`step`] calls it, torch's closure: given the space, x and a gradient
/// vector, it writes ∇f(x) into **every** element of the gradient (the vector is reused and
/// holds old values) and returns f(x). Its error ends the step (see [`step`]).
pub type Closure<'c, S> = dyn FnMut(&mut S, &VectorOf<S>, &mut VectorOf<S>) -> Result<f64> + 'c;

/// The vector type of space `S`.
pub type VectorOf<S> = <S as VectorSpace>::Vector;

/// torch's L-BFGS state (`optimizer.state[params[0]]`), which persists across [`step`] calls,
/// plus vectors kept for reuse. Only [`step`] changes it.
#[derive(Clone, Debug)]
pub struct LbfgsState<V> {
    /// `func_evals`: closure evaluations over all calls.
    func_evals: u64,
    /// `n_iter`: iterations over all calls. The iteration that makes it 1 starts from steepest
    /// descent.
    n_iter: u64,
    /// `d`: the last direction.
    d: Option<V>,
    /// `t`: the last step length along `d` (the line search's, or the initial guess when a
    /// call stopped on the directional derivative).
    t: Option<f64>,
    /// `old_dirs`: the gradient changes y, oldest first.
    old_dirs: VecDeque<V>,
    /// `old_stps`: the steps s, oldest first.
    old_stps: VecDeque<V>,
    /// `ro`: 1 / (y·s) of each pair.
    ro: VecDeque<f64>,
    /// `H_diag`: the initial inverse Hessian's scale, (y·s) / (y·y) of the newest pair.
    h_diag: f64,
    /// `prev_flat_grad`: the gradient at the start of the last iteration.
    prev_flat_grad: Option<V>,
    /// `prev_loss`: the loss at the start of the last iteration.
    prev_loss: Option<f64>,
    /// `al`: the two-loop recursion's first-loop coefficients (scratch that torch keeps in the
    /// state).
    al: Vec<f64>,
    /// Vectors no value uses any more, reused before new ones are made (not torch's).
    spare: Vec<V>,
    /// A copy of x before a line search (torch's `x_init = self._clone_param()`), kept for
    /// reuse.
    x_init: Option<V>,
}

impl<V> Default for LbfgsState<V> {
    fn default() -> Self {
        Self {
            func_evals: 0,
            n_iter: 0,
            d: None,
            t: None,
            old_dirs: VecDeque::new(),
            old_stps: VecDeque::new(),
            ro: VecDeque::new(),
            h_diag: 1.0,
            prev_flat_grad: None,
            prev_loss: None,
            al: Vec::new(),
            spare: Vec::new(),
            x_init: None,
        }
    }
}

impl<V> LbfgsState<V> {
    /// The state before the first call.
    pub fn new() -> Self {
        Self::default()
    }

    /// torch's `func_evals`: the closure evaluations of every call so far.
    pub fn func_evals(&self) -> u64 {
        self.func_evals
    }

    /// torch's `n_iter`: the iterations of every call so far.
    pub fn n_iter(&self) -> u64 {
        self.n_iter
    }

    /// torch's `d`, the last direction (`None` before the first iteration).
    pub fn direction(&self) -> Option<&V> {
        self.d.as_ref()
    }

    /// torch's `t`, the last step length along [`direction`](Self::direction).
    pub fn step_size(&self) -> Option<f64> {
        self.t
    }

    /// torch's `H_diag`.
    pub fn h_diag(&self) -> f64 {
        self.h_diag
    }

    /// The number of (y, s) pairs in the history.
    pub fn history_len(&self) -> usize {
        self.old_dirs.len()
    }

    /// torch's `prev_loss` (negated with `maximize`, as torch keeps it).
    pub fn prev_loss(&self) -> Option<f64> {
        self.prev_loss
    }

    /// A vector to write into: a spare one, or a new one.
    fn take<S: VectorSpace<Vector = V>>(&mut self, space: &mut S) -> Result<V> {
        match self.spare.pop() {
            Some(v) => Ok(v),
            None => space.zeros(),
        }
    }

    /// `old_dirs = []; old_stps = []; ro = []`, keeping the vectors for reuse.
    fn clear_history(&mut self) {
        self.spare.extend(self.old_dirs.drain(..));
        self.spare.extend(self.old_stps.drain(..));
        self.ro.clear();
    }

    /// Back to the state before the first call, keeping `func_evals` and the vectors for
    /// reuse (after a failed evaluation).
    fn restart(&mut self) {
        self.clear_history();
        self.spare.extend(self.d.take());
        self.spare.extend(self.prev_flat_grad.take());
        self.n_iter = 0;
        self.t = None;
        self.h_diag = 1.0;
        self.prev_loss = None;
    }
}

/// What one [`step`] call did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// The loss of the call's first evaluation, at x from before the call, as the closure
    /// returned it (what torch's `step` returns, not negated with `maximize`).
    pub loss: f64,
    /// The closure evaluations this call made.
    pub evals: usize,
}

/// The line search's sufficient-decrease constant (torch's `c1`).
const C1: f64 = 1e-4;
/// The line search's curvature constant (torch's `c2`).
const C2: f64 = 0.9;
/// The line search's `tolerance_change`: its default, since `step` never passes one.
const LINE_SEARCH_TOLERANCE_CHANGE: f64 = 1e-9;
/// The curvature a (y, s) pair needs to enter the history: y·s above this, absolutely.
const MIN_CURVATURE: f64 = 1e-10;

/// One `optimizer.step(closure)` of `torch.optim.LBFGS`: up to `max_iter` iterations from x,
/// moving x in place, and the state updated for the next call.
///
/// `config` is validated first; its error changes nothing. An error of the closure (or of the
/// space) is returned as it came, and leaves: x at the last point L-BFGS moved to (a line
/// search's trial point is undone, unlike torch, which leaves it there), and the state
/// restarted as before the first call (history, direction and iteration count cleared;
/// `func_evals` keeps counting), so that the next call starts from steepest descent. torch
/// leaves a mix of old and updated state instead.
pub fn step<S: VectorSpace>(
    config: &Lbfgs,
    state: &mut LbfgsState<S::Vector>,
    space: &mut S,
    x: &mut S::Vector,
    closure: &mut Closure<'_, S>,
) -> Result<StepOutcome> {
    config.validate()?;
    let outcome = lbfgs_step(config, state, space, x, closure);
    if outcome.is_err() {
        state.restart();
    }
    outcome
}

/// [`step`] once the configuration is valid: `LBFGS.step`, statement by statement.
fn lbfgs_step<S: VectorSpace>(
    config: &Lbfgs,
    state: &mut LbfgsState<S::Vector>,
    space: &mut S,
    x: &mut S::Vector,
    closure: &mut Closure<'_, S>,
) -> Result<StepOutcome> {
    let lr = config.lr;
    let max_iter = config.max_iter;
    let max_eval = config.resolved_max_eval();
    let tolerance_grad = config.tolerance_grad;
    let tolerance_change = config.tolerance_change;
    let line_search_fn = config.line_search_fn;
    let history_size = config.history_size;
    let mut evaluator = Evaluator {
        closure,
        maximize: config.maximize,
    };

    // evaluate initial f(x) and df/dx
    let mut flat_grad = state.take(space)?;
    let (orig_loss, mut loss) = evaluator.evaluate(space, x, &mut flat_grad)?;
    let mut current_evals: u64 = 1;
    state.func_evals += 1;

    let mut opt_cond = space.max_abs(&flat_grad)? <= tolerance_grad;

    // optimal condition
    if opt_cond {
        state.spare.push(flat_grad);
        return Ok(StepOutcome {
            loss: orig_loss,
            evals: 1,
        });
    }

    // optimize for a max of max_iter iterations
    let mut n_iter = 0;
    while n_iter < max_iter {
        // keep track of nb of iterations
        n_iter += 1;
        state.n_iter += 1;

        // compute gradient descent direction
        if state.n_iter == 1 {
            // d = -g
            let mut d = match state.d.take() {
                Some(d) => d,
                None => state.take(space)?,
            };
            space.copy(&mut d, &flat_grad)?;
            space.scale(-1.0, &mut d)?;
            state.d = Some(d);
            state.clear_history();
            state.h_diag = 1.0;
        } else {
            lbfgs_direction(state, space, &flat_grad, history_size)?;
        }

        // prev_flat_grad = g (a copy), prev_loss = loss
        let mut prev_flat_grad = match state.prev_flat_grad.take() {
            Some(prev) => prev,
            None => state.take(space)?,
        };
        space.copy(&mut prev_flat_grad, &flat_grad)?;
        state.prev_flat_grad = Some(prev_flat_grad);
        state.prev_loss = Some(loss);
        let prev_loss = loss;

        // compute step length: reset initial guess for step size
        let mut t = if state.n_iter == 1 {
            py_min(1.0, 1.0 / space.sum_abs(&flat_grad)?) * lr
        } else {
            lr
        };
        state.t = Some(t);

        // directional derivative
        let gtd = space.dot(&flat_grad, state.d.as_ref().expect("d is set above"))?;

        // directional derivative is below tolerance (d and t stay stored)
        if gtd > -tolerance_change {
            break;
        }

        // optional line search: user function
        let mut ls_func_evals = 0;
        match line_search_fn {
            Some(LineSearch::StrongWolfe) => {
                // x_init = self._clone_param()
                let mut x_init = match state.x_init.take() {
                    Some(v) => v,
                    None => state.take(space)?,
                };
                space.copy(&mut x_init, x)?;
                let d = state.d.as_ref().expect("d is set above");
                // The budget cannot go below zero: the first iteration starts with one
                // evaluation and max_eval >= 1, and a later one only while
                // current_evals < max_eval.
                let max_ls = max_eval - current_evals;
                let mut obj_func = |space: &mut S, t: f64, g_out: &mut S::Vector| {
                    evaluator.directional(space, x, &x_init, t, d, g_out)
                };
                let search = strong_wolfe(
                    space,
                    &mut obj_func,
                    t,
                    d,
                    loss,
                    flat_grad,
                    gtd,
                    max_ls,
                    &mut state.spare,
                );
                state.x_init = Some(x_init);
                let (new_loss, new_grad, new_t, evals) = search?;
                loss = new_loss;
                flat_grad = new_grad;
                t = new_t;
                ls_func_evals = evals;
                state.t = Some(t);
                space.axpy(t, d, x)?;
                opt_cond = space.max_abs(&flat_grad)? <= tolerance_grad;
            }
            None => {
                // no line search, simply move with fixed-step
                let d = state.d.as_ref().expect("d is set above");
                space.axpy(t, d, x)?;
                if n_iter != max_iter {
                    // re-evaluate function only if not in last iteration
                    (_, loss) = evaluator.evaluate(space, x, &mut flat_grad)?;
                    opt_cond = space.max_abs(&flat_grad)? <= tolerance_grad;
                    ls_func_evals = 1;
                }
            }
        }

        // update func eval
        current_evals += ls_func_evals;
        state.func_evals += ls_func_evals;

        // check conditions
        if n_iter == max_iter {
            break;
        }
        if current_evals >= max_eval {
            break;
        }
        // optimal condition
        if opt_cond {
            break;
        }
        // lack of progress: max |d·t| <= tolerance_change, where max_i |d_i·t| is
        // max_i |d_i| · |t| exactly (rounding is monotonic and symmetric)
        let d = state.d.as_ref().expect("d is set above");
        if space.max_abs(d)? * t.abs() <= tolerance_change {
            break;
        }
        if (loss - prev_loss).abs() < tolerance_change {
            break;
        }
    }

    state.spare.push(flat_grad);
    Ok(StepOutcome {
        loss: orig_loss,
        evals: usize::try_from(current_evals).unwrap_or(usize::MAX),
    })
}

/// The L-BFGS branch of "compute gradient descent direction" (global iteration > 1): the
/// history update from y = g - prev_g and s = d·t, then the two-loop recursion on -g, whose
/// result becomes the new d.
fn lbfgs_direction<S: VectorSpace>(
    state: &mut LbfgsState<S::Vector>,
    space: &mut S,
    flat_grad: &S::Vector,
    history_size: u64,
) -> Result<()> {
    // After a first iteration, d, t and prev_flat_grad are always stored (a failed call
    // restarts the count).
    let t = state.t.expect("t is stored after the first iteration");

    // do lbfgs update (update memory)
    // y = flat_grad - prev_flat_grad
    let mut y = state.take(space)?;
    space.copy(&mut y, flat_grad)?;
    let prev_flat_grad = state
        .prev_flat_grad
        .as_ref()
        .expect("prev_flat_grad is stored after the first iteration");
    space.axpy(-1.0, prev_flat_grad, &mut y)?;
    // s = d * t
    let mut s = state.take(space)?;
    let d = state
        .d
        .as_ref()
        .expect("d is stored after the first iteration");
    space.copy(&mut s, d)?;
    space.scale(t, &mut s)?;
    let ys = space.dot(&y, &s)?;
    if ys > MIN_CURVATURE {
        // updating memory
        if state.old_dirs.len() as u64 == history_size {
            // shift history by one (limited-memory)
            state.spare.extend(state.old_dirs.pop_front());
            state.spare.extend(state.old_stps.pop_front());
            state.ro.pop_front();
        }
        // update scale of initial Hessian approximation: H_diag = ys / y.dot(y)
        let yy = space.dot(&y, &y)?;
        // store new direction/step
        state.old_dirs.push_back(y);
        state.old_stps.push_back(s);
        state.ro.push_back(1.0 / ys);
        state.h_diag = ys / yy;
    } else {
        state.spare.push(y);
        state.spare.push(s);
    }

    // compute the approximate (L-BFGS) inverse Hessian multiplied by the gradient
    let num_old = state.old_dirs.len();
    if state.al.len() < num_old {
        state.al.resize(num_old, 0.0);
    }

    // iteration in L-BFGS loop collapsed to use just one buffer: q = -flat_grad
    let mut q = state.take(space)?;
    space.copy(&mut q, flat_grad)?;
    space.scale(-1.0, &mut q)?;
    for i in (0..num_old).rev() {
        state.al[i] = space.dot(&state.old_stps[i], &q)? * state.ro[i];
        space.axpy(-state.al[i], &state.old_dirs[i], &mut q)?;
    }

    // multiply by initial Hessian; r/d is the final direction
    space.scale(state.h_diag, &mut q)?;
    let mut r = q;
    for i in 0..num_old {
        let be_i = space.dot(&state.old_dirs[i], &r)? * state.ro[i];
        space.axpy(state.al[i] - be_i, &state.old_stps[i], &mut r)?;
    }
    // d = r; the old d's values live on only in s
    if let Some(old_d) = state.d.replace(r) {
        state.spare.push(old_d);
    }
    Ok(())
}

/// The closure as torch calls it, with `maximize` applied as torch applies it.
struct Evaluator<'a, 'c, S: VectorSpace> {
    closure: &'a mut Closure<'c, S>,
    maximize: bool,
}

impl<S: VectorSpace> Evaluator<'_, '_, S> {
    /// The closure at x, its gradient into `grad` (torch's `closure()` then
    /// `_gather_flat_grad()`, which negates the gradient with `maximize`). Returns the loss
    /// as the closure gave it (torch's `orig_loss`) and as L-BFGS minimizes it (negated with
    /// `maximize`).
    fn evaluate(
        &mut self,
        space: &mut S,
        x: &S::Vector,
        grad: &mut S::Vector,
    ) -> Result<(f64, f64)> {
        let loss = (self.closure)(space, x, grad)?;
        if self.maximize {
            space.scale(-1.0, grad)?;
            Ok((loss, -loss))
        } else {
            Ok((loss, loss))
        }
    }

    /// `_directional_evaluate`: x += t·d (`_add_grad`), the closure there, then x back to
    /// `x_init` (`_set_param`; also when the closure fails). Returns the loss L-BFGS
    /// minimizes.
    fn directional(
        &mut self,
        space: &mut S,
        x: &mut S::Vector,
        x_init: &S::Vector,
        t: f64,
        d: &S::Vector,
        grad: &mut S::Vector,
    ) -> Result<f64> {
        space.axpy(t, d, x)?;
        let evaluated = self.evaluate(space, x, grad);
        let restored = space.copy(x, x_init);
        let (_, loss) = evaluated?;
        restored?;
        Ok(loss)
    }
}

/// Python's `max(a, b)`: `a` unless `b > a` (so a NaN first argument stays).
fn py_max(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

/// Python's `min(a, b)`: `a` unless `b < a` (so a NaN first argument stays).
fn py_min(a: f64, b: f64) -> f64 {
    if b < a { b } else { a }
}

/// torch's `_cubic_interpolate` (from `polyinterp.lua`): the minimizer of the cubic through
/// (x1, f1) and (x2, f2) with slopes g1 and g2, clamped to `bounds` (by default the interval
/// between x1 and x2); their midpoint when the cubic has no real minimizer.
fn cubic_interpolate(
    (x1, f1, g1): (f64, f64, f64),
    (x2, f2, g2): (f64, f64, f64),
    bounds: Option<(f64, f64)>,
) -> f64 {
    // Compute bounds of interpolation area
    let (xmin_bound, xmax_bound) = match bounds {
        Some(bounds) => bounds,
        None if x1 <= x2 => (x1, x2),
        None => (x2, x1),
    };
    // Most common case: cubic interpolation of 2 points with function and derivative values
    // for both.
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos = if x1 <= x2 {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        py_min(py_max(min_pos, xmin_bound), xmax_bound)
    } else {
        (xmin_bound + xmax_bound) / 2.0
    }
}

/// The line search's `obj_func(x, t, d)`: f and its gradient (into the vector given) at
/// x + t·d, with x and d bound by the caller.
type ObjFunc<'a, S> = dyn FnMut(&mut S, f64, &mut VectorOf<S>) -> Result<f64> + 'a;

/// torch's `_strong_wolfe` (from `lswolfe.lua`) with c1 = 1e-4, c2 = 0.9 and
/// tolerance_change = 1e-9, as `LBFGS.step` calls it: from x (held by `obj_func`), find t
/// along `d` satisfying the strong Wolfe conditions, in at most `max_ls + 1` evaluations of
/// `obj_func` (which evaluates at x + t·d and restores x). `f`, `g` and `gtd` are the loss,
/// gradient and directional derivative at t = 0. Returns the loss, the gradient and t of the
/// point chosen, and the evaluations made.
///
/// torch clones a gradient wherever it keeps one (`g_prev = g_new.clone()`, ...). No gradient
/// is changed once evaluated, so here the copies share one vector, named by its index in
/// `grads`, and each evaluation writes into a vector that no name holds any more.
#[allow(clippy::too_many_arguments)] // torch's signature, argument for argument
fn strong_wolfe<S: VectorSpace>(
    space: &mut S,
    obj_func: &mut ObjFunc<'_, S>,
    mut t: f64,
    d: &S::Vector,
    f: f64,
    g: S::Vector,
    gtd: f64,
    max_ls: u64,
    spare: &mut Vec<S::Vector>,
) -> Result<(f64, S::Vector, f64, u64)> {
    let d_norm = space.max_abs(d)?;
    // g = g.clone(): grads[G]
    const G: usize = 0;
    let mut grads = vec![g];
    // evaluate objective and gradient using initial step
    let mut g_new = free_slot(space, &mut grads, spare, &[G])?;
    let mut f_new = obj_func(space, t, &mut grads[g_new])?;
    let mut ls_func_evals: u64 = 1;
    let mut gtd_new = space.dot(&grads[g_new], d)?;

    // bracket an interval containing a point satisfying the Wolfe criteria
    let (mut t_prev, mut f_prev, mut g_prev, mut gtd_prev) = (0.0, f, G, gtd);
    let mut done = false;
    let mut ls_iter: u64 = 0;
    // Python lists of one or two entries: torch indexes them as it does.
    let mut bracket: Vec<f64> = Vec::new();
    let mut bracket_f: Vec<f64> = Vec::new();
    let mut bracket_g: Vec<usize> = Vec::new();
    let mut bracket_gtd: Vec<f64> = Vec::new();
    while ls_iter < max_ls {
        // check conditions
        if f_new > (f + C1 * t * gtd) || (ls_iter > 1 && f_new >= f_prev) {
            bracket = vec![t_prev, t];
            bracket_f = vec![f_prev, f_new];
            bracket_g = vec![g_prev, g_new];
            bracket_gtd = vec![gtd_prev, gtd_new];
            break;
        }

        if gtd_new.abs() <= -C2 * gtd {
            bracket = vec![t];
            bracket_f = vec![f_new];
            bracket_g = vec![g_new];
            done = true;
            break;
        }

        if gtd_new >= 0.0 {
            bracket = vec![t_prev, t];
            bracket_f = vec![f_prev, f_new];
            bracket_g = vec![g_prev, g_new];
            bracket_gtd = vec![gtd_prev, gtd_new];
            break;
        }

        // interpolate
        let min_step = t + 0.01 * (t - t_prev);
        let max_step = t * 10.0;
        let tmp = t;
        t = cubic_interpolate(
            (t_prev, f_prev, gtd_prev),
            (t, f_new, gtd_new),
            Some((min_step, max_step)),
        );

        // next step
        t_prev = tmp;
        f_prev = f_new;
        g_prev = g_new;
        gtd_prev = gtd_new;
        g_new = free_slot(space, &mut grads, spare, &[G, g_prev])?;
        f_new = obj_func(space, t, &mut grads[g_new])?;
        ls_func_evals += 1;
        gtd_new = space.dot(&grads[g_new], d)?;
        ls_iter += 1;
    }

    // reached max number of iterations?
    if ls_iter == max_ls {
        bracket = vec![0.0, t];
        bracket_f = vec![f, f_new];
        bracket_g = vec![G, g_new];
    }

    // zoom phase: we now have a point satisfying the criteria, or a bracket around it. We
    // refine the bracket until we find the exact point satisfying the criteria
    let mut insuf_progress = false;
    // find high and low points in bracket
    let (mut low_pos, mut high_pos) = if bracket_f[0] <= bracket_f[bracket_f.len() - 1] {
        (0, 1)
    } else {
        (1, 0)
    };
    while !done && ls_iter < max_ls {
        // line-search bracket is so small
        if (bracket[1] - bracket[0]).abs() * d_norm < LINE_SEARCH_TOLERANCE_CHANGE {
            break;
        }

        // compute new trial value
        t = cubic_interpolate(
            (bracket[0], bracket_f[0], bracket_gtd[0]),
            (bracket[1], bracket_f[1], bracket_gtd[1]),
            None,
        );

        // test that we are making sufficient progress: in case `t` is so close to boundary,
        // we mark that we are making insufficient progress, and if
        //   + we have made insufficient progress in the last step, or
        //   + `t` is at one of the boundary,
        // we will move `t` to a position which is `0.1 * len(bracket)` away from the nearest
        // boundary point.
        let bracket_max = py_max(bracket[0], bracket[1]);
        let bracket_min = py_min(bracket[0], bracket[1]);
        let eps = 0.1 * (bracket_max - bracket_min);
        if py_min(bracket_max - t, t - bracket_min) < eps {
            // interpolation close to boundary
            if insuf_progress || t >= bracket_max || t <= bracket_min {
                // evaluate at 0.1 away from boundary
                if (t - bracket_max).abs() < (t - bracket_min).abs() {
                    t = bracket_max - eps;
                } else {
                    t = bracket_min + eps;
                }
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }

        // Evaluate new point
        g_new = free_slot(space, &mut grads, spare, &bracket_g)?;
        f_new = obj_func(space, t, &mut grads[g_new])?;
        ls_func_evals += 1;
        gtd_new = space.dot(&grads[g_new], d)?;
        ls_iter += 1;

        if f_new > (f + C1 * t * gtd) || f_new >= bracket_f[low_pos] {
            // Armijo condition not satisfied or not lower than lowest point
            bracket[high_pos] = t;
            bracket_f[high_pos] = f_new;
            bracket_g[high_pos] = g_new;
            bracket_gtd[high_pos] = gtd_new;
            (low_pos, high_pos) = if bracket_f[0] <= bracket_f[1] {
                (0, 1)
            } else {
                (1, 0)
            };
        } else {
            if gtd_new.abs() <= -C2 * gtd {
                // Wolfe conditions satisfied
                done = true;
            } else if gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0.0 {
                // old high becomes new low
                bracket[high_pos] = bracket[low_pos];
                bracket_f[high_pos] = bracket_f[low_pos];
                bracket_g[high_pos] = bracket_g[low_pos];
                bracket_gtd[high_pos] = bracket_gtd[low_pos];
            }

            // new point becomes new low
            bracket[low_pos] = t;
            bracket_f[low_pos] = f_new;
            bracket_g[low_pos] = g_new;
            bracket_gtd[low_pos] = gtd_new;
        }
    }

    // return stuff
    let t = bracket[low_pos];
    let f_new = bracket_f[low_pos];
    let g_new = grads.swap_remove(bracket_g[low_pos]);
    spare.extend(grads);
    Ok((f_new, g_new, t, ls_func_evals))
}

/// The index in `grads` of a vector that none of the indices in `live` names: one already
/// there, or a spare one appended (or a new one when there is no spare).
fn free_slot<S: VectorSpace>(
    space: &mut S,
    grads: &mut Vec<S::Vector>,
    spare: &mut Vec<S::Vector>,
    live: &[usize],
) -> Result<usize> {
    if let Some(free) = (0..grads.len()).find(|i| !live.contains(i)) {
        return Ok(free);
    }
    grads.push(match spare.pop() {
        Some(v) => v,
        None => space.zeros()?,
    });
    Ok(grads.len() - 1)
}

/// The float64 reference: vectors of `len` float64 on the host, in plain loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostVectors {
    /// The problem's length.
    pub len: usize,
}

impl HostVectors {
    /// An error unless `v` has the problem's length.
    fn check(&self, v: &[f64]) -> Result<()> {
        if v.len() == self.len {
            Ok(())
        } else {
            Err(Error::LengthMismatch {
                what: "L-BFGS vector",
                tensor: 0,
                expected: self.len as u64,
                got: v.len() as u64,
            })
        }
    }
}

impl VectorSpace for HostVectors {
    type Vector = Vec<f64>;

    fn zeros(&mut self) -> Result<Vec<f64>> {
        Ok(vec![0.0; self.len])
    }

    fn copy(&mut self, dst: &mut Vec<f64>, src: &Vec<f64>) -> Result<()> {
        self.check(dst)?;
        self.check(src)?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn dot(&mut self, a: &Vec<f64>, b: &Vec<f64>) -> Result<f64> {
        self.check(a)?;
        self.check(b)?;
        let mut sum = 0.0;
        for (a, b) in a.iter().zip(b) {
            sum += a * b;
        }
        Ok(sum)
    }

    fn axpy(&mut self, alpha: f64, x: &Vec<f64>, y: &mut Vec<f64>) -> Result<()> {
        self.check(x)?;
        self.check(y)?;
        for (y, x) in y.iter_mut().zip(x) {
            *y += alpha * x;
        }
        Ok(())
    }

    fn scale(&mut self, alpha: f64, x: &mut Vec<f64>) -> Result<()> {
        self.check(x)?;
        for x in x.iter_mut() {
            *x *= alpha;
        }
        Ok(())
    }

    fn max_abs(&mut self, x: &Vec<f64>) -> Result<f64> {
        self.check(x)?;
        let mut max = 0.0;
        for x in x {
            let a = x.abs();
            if a.is_nan() {
                return Ok(f64::NAN);
            }
            if a > max {
                max = a;
            }
        }
        Ok(max)
    }

    fn sum_abs(&mut self, x: &Vec<f64>) -> Result<f64> {
        self.check(x)?;
        let mut sum = 0.0;
        for x in x {
            sum += x.abs();
        }
        Ok(sum)
    }
}

/// The objectives of the conformance fixture's `lbfgs` cases (`objective`), in float64.
#[derive(Clone, Debug, PartialEq)]
pub enum Objective {
    /// f(x) = ½·xᵀ(Ax) − bᵀx, gradient Ax − b (A square, as long as b).
    Quadratic {
        /// The matrix, by rows.
        a: Vec<Vec<f64>>,
        /// The linear term.
        b: Vec<f64>,
    },
    /// The pairwise (extended) Rosenbrock function over an even length n:
    /// f(x) = Σ_{j<n/2} [100·(x_{2j+1} − x_{2j}²)² + (1 − x_{2j})²]. Not SciPy's chained
    /// `rosen`.
    Rosenbrock,
}

impl Objective {
    /// The fixture's `{"kind": "quadratic", "a": [[...]], "b": [...]}` or
    /// `{"kind": "rosenbrock"}`. An unknown kind, a missing or non-numeric entry, or a matrix
    /// that is not square and as long as b is an [`Error::Fixture`].
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let bad = |reason: String| Error::Fixture {
            path: "lbfgs objective".to_string(),
            reason,
        };
        let numbers = |v: &serde_json::Value, what: &str| -> Result<Vec<f64>> {
            v.as_array()
                .ok_or_else(|| bad(format!("`{what}` must be an array of numbers")))?
                .iter()
                .map(|n| {
                    n.as_f64()
                        .ok_or_else(|| bad(format!("`{what}` holds a non-number: {n}")))
                })
                .collect()
        };
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| bad("no string `kind`".to_string()))?;
        match kind {
            "rosenbrock" => Ok(Objective::Rosenbrock),
            "quadratic" => {
                let field = |name: &str| {
                    value
                        .get(name)
                        .ok_or_else(|| bad(format!("quadratic without `{name}`")))
                };
                let b = numbers(field("b")?, "b")?;
                let a = field("a")?
                    .as_array()
                    .ok_or_else(|| bad("`a` must be an array of rows".to_string()))?
                    .iter()
                    .map(|row| numbers(row, "a"))
                    .collect::<Result<Vec<_>>>()?;
                if a.len() != b.len() || a.iter().any(|row| row.len() != b.len()) {
                    return Err(bad(format!(
                        "`a` must be {n} x {n} for `b` of length {n}",
                        n = b.len()
                    )));
                }
                Ok(Objective::Quadratic { a, b })
            }
            other => Err(bad(format!(
                "unknown objective kind `{other}` (known: quadratic, rosenbrock)"
            ))),
        }
    }

    /// An error unless the objective is defined on vectors of length `n` (b's length for a
    /// quadratic, an even length for Rosenbrock).
    pub fn check_len(&self, n: usize) -> Result<()> {
        let ok = match self {
            Objective::Quadratic { b, .. } => b.len() == n,
            Objective::Rosenbrock => n.is_multiple_of(2),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Fixture {
                path: "lbfgs objective".to_string(),
                reason: format!("not defined on vectors of length {n}"),
            })
        }
    }

    /// f(x), with ∇f(x) written into `grad`.
    ///
    /// # Panics
    ///
    /// If `x` and `grad` differ in length, or [`check_len`](Self::check_len) refuses it.
    pub fn value_and_grad(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        assert_eq!(x.len(), grad.len(), "x and grad differ in length");
        if let Err(e) = self.check_len(x.len()) {
            panic!("{e}");
        }
        match self {
            Objective::Quadratic { a, b } => {
                // grad = Ax - b; f = ½ x·(Ax) - b·x
                let mut x_ax = 0.0;
                let mut b_x = 0.0;
                for (i, row) in a.iter().enumerate() {
                    let mut ax_i = 0.0;
                    for (a_ij, x_j) in row.iter().zip(x) {
                        ax_i += a_ij * x_j;
                    }
                    x_ax += x[i] * ax_i;
                    b_x += b[i] * x[i];
                    grad[i] = ax_i - b[i];
                }
                0.5 * x_ax - b_x
            }
            Objective::Rosenbrock => {
                let mut f = 0.0;
                for j in 0..x.len() / 2 {
                    let (u, v) = (x[2 * j], x[2 * j + 1]);
                    let r = v - u * u;
                    f += 100.0 * r * r + (1.0 - u) * (1.0 - u);
                    grad[2 * j] = -400.0 * u * r - 2.0 * (1.0 - u);
                    grad[2 * j + 1] = 200.0 * r;
                }
                f
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURE: &str = include_str!("../../data/more-optimizers.json");

    /// ‖a − b‖₂ / ‖b‖₂.
    fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let diff: f64 = a.iter().zip(b).map(|(a, b)| (a - b) * (a - b)).sum();
        let norm: f64 = b.iter().map(|b| b * b).sum();
        (diff / norm).sqrt()
    }

    fn numbers(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_f64().unwrap())
            .collect()
    }

    /// What `calls` calls of [`step`] on the host give from `x0`: x after each call, the
    /// returned losses and the evaluation counts, and the final state.
    struct Run {
        xs: Vec<Vec<f64>>,
        losses: Vec<f64>,
        evals: Vec<usize>,
        state: LbfgsState<Vec<f64>>,
    }

    fn run(config: &Lbfgs, objective: &Objective, x0: &[f64], calls: usize) -> Run {
        let mut space = HostVectors { len: x0.len() };
        let mut state = LbfgsState::new();
        let mut x = x0.to_vec();
        let mut closure = |_: &mut HostVectors, x: &Vec<f64>, g: &mut Vec<f64>| -> Result<f64> {
            Ok(objective.value_and_grad(x, g))
        };
        let (mut xs, mut losses, mut evals) = (vec![], vec![], vec![]);
        for _ in 0..calls {
            let outcome = step(config, &mut state, &mut space, &mut x, &mut closure).unwrap();
            xs.push(x.clone());
            losses.push(outcome.loss);
            evals.push(outcome.evals);
        }
        Run {
            xs,
            losses,
            evals,
            state,
        }
    }

    #[test]
    fn the_float64_reference_matches_every_lbfgs_case_of_the_fixture() {
        let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
        let default_tolerance = fixture["tolerance"]["rel_l2"].as_f64().unwrap();
        let mut cases = 0;
        for case in fixture["cases"].as_array().unwrap() {
            if case["optimizer"] != "lbfgs" {
                continue;
            }
            cases += 1;
            let name = case["name"].as_str().unwrap();
            let config = Lbfgs::from_hyper(&case["hyper"]).unwrap();
            let objective = Objective::from_json(&case["objective"]).unwrap();
            let x0 = numbers(&case["params"][0]);
            objective.check_len(x0.len()).unwrap();
            let expected = case["expected"].as_array().unwrap();
            let calls = expected.len();
            assert_eq!(calls, 6, "{name}");
            let got = run(&config, &objective, &x0, calls);

            let worst_x = (0..calls)
                .map(|k| rel_l2(&got.xs[k], &numbers(&expected[k][0])))
                .fold(0.0, f64::max);
            let losses_err = rel_l2(&got.losses, &numbers(&case["losses"]));
            let tolerance = case["tolerance"]["rel_l2"]
                .as_f64()
                .unwrap_or(default_tolerance);
            eprintln!("{name}: worst x rel_l2 {worst_x:.3e}, losses rel_l2 {losses_err:.3e}");
            assert!(
                worst_x <= tolerance,
                "{name}: x {worst_x:e} > {tolerance:e}"
            );
            assert!(losses_err <= tolerance, "{name}: losses {losses_err:e}");
            // In float64 the same statements land within rounding of torch's.
            assert!(worst_x < 1e-12, "{name}: x {worst_x:e}");
            assert!(losses_err < 1e-12, "{name}: losses {losses_err:e}");
            let evals: Vec<usize> = case["evals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(got.evals, evals, "{name}");
            assert_eq!(
                got.state.func_evals(),
                evals.iter().sum::<usize>() as u64,
                "{name}"
            );
        }
        assert_eq!(cases, 4);
    }

    /// torch 2.15.0's `LBFGS` in float64 on the pairwise Rosenbrock function of length 4 from
    /// (-1.2, 1, -0.5, 0.8), five calls: x after each call, the returned losses, the
    /// evaluations of each call, and the state's `t` after each call.
    struct TorchRun {
        hyper: &'static str,
        xs: [[f64; 4]; 5],
        losses: [f64; 5],
        evals: [usize; 5],
        n_iter: [u64; 5],
        t: [f64; 5],
        /// The relative error allowed in x, the losses and t: ten times the most that a
        /// one-ulp change of one element of x0 changes them in torch's own run (at least
        /// 1e-13). The iterations amplify rounding, the line search's the most.
        tolerance: f64,
    }

    const X0: [f64; 4] = [-1.2, 1.0, -0.5, 0.8];

    /// max_iter = max_eval = 1 with the line search: its budget is 0, and it still evaluates
    /// once (two evaluations per call).
    const MAX_LS_ZERO: TorchRun = TorchRun {
        hyper: r#"{"lr": 1, "max_iter": 1, "max_eval": 1, "line_search_fn": "strong_wolfe"}"#,
        xs: [
            [
                -0.7858624663849404,
                1.1690357280061467,
                -0.7055320783711103,
                0.5887053399923166,
            ],
            [
                -0.9448337385235835,
                1.0740454501169656,
                -0.7048491164177704,
                0.5928502908583886,
            ],
            [
                -1.0413800208116641,
                1.0258009018206264,
                -0.7478726909155273,
                0.5586566527121415,
            ],
            [
                -1.0114180593545454,
                1.0367952183475426,
                -0.7427677083035096,
                0.5599171486568147,
            ],
            [
                -1.0127057803389483,
                1.0344358776514901,
                -0.7420980942487932,
                0.5582005892266428,
            ],
        ],
        losses: [
            56.7,
            37.335330032418824,
            10.899444563234546,
            7.56656834266846,
            7.108911062289237,
        ],
        evals: [2, 2, 2, 2, 2],
        n_iter: [1, 2, 3, 4, 5],
        t: [0.001920860545524395, 1.0, 1.0, 1.0, 1.0],
        tolerance: 1e-13,
    };

    /// `maximize` of −f: the closure returns −f and its gradient; the returned losses are the
    /// closure's (−f), not negated back.
    const MAXIMIZE: TorchRun = TorchRun {
        hyper: r#"{"lr": 1, "max_iter": 4, "max_eval": 6, "history_size": 2,
                   "line_search_fn": "strong_wolfe", "maximize": true}"#,
        xs: [
            [
                -1.012325800202808,
                1.0370155349904087,
                -0.7411962224288745,
                0.5615200965319201,
            ],
            [
                -0.9787412932313964,
                0.9455211255118209,
                -0.6966780927535565,
                0.4620161195226125,
            ],
            [
                -0.6842645666719339,
                0.4562423014939977,
                -0.23966971017450409,
                0.07593780440511305,
            ],
            [
                -0.2897605830043419,
                0.0823990475648593,
                0.18950039596708668,
                -0.018069247469062674,
            ],
            [
                0.2453149588764098,
                0.024211047800739387,
                0.49142786091129065,
                0.21051137848032575,
            ],
        ],
        losses: [
            -56.7,
            -7.110890741445455,
            -6.864038269277591,
            -4.422080918450437,
            -2.61201623507709,
        ],
        evals: [5, 5, 6, 7, 6],
        n_iter: [4, 8, 12, 16, 20],
        t: [1.0, 1.0, 0.3985956511582702, 0.24437734420939078, 1.0],
        tolerance: 3e-11,
    };

    /// `max_eval` left to torch's default (4 * 5 // 4 = 5), no line search, one history pair.
    const DEFAULT_MAX_EVAL: TorchRun = TorchRun {
        hyper: r#"{"lr": 0.05, "max_iter": 4, "history_size": 1}"#,
        xs: [
            [
                -1.1589347932200071,
                1.019375750734404,
                -0.5528820644755698,
                0.75566955283441,
            ],
            [
                -1.1390210123240492,
                1.0354140661034255,
                -0.6410754498099471,
                0.7337489575107419,
            ],
            [
                -1.1229058076611178,
                1.0514052017743365,
                -0.7252567507537678,
                0.7522777789327255,
            ],
            [
                -1.1101026312012416,
                1.0658629984972177,
                -0.7951409079411136,
                0.7930479451163139,
            ],
            [
                -1.1000368283827646,
                1.0785178560749238,
                -0.8533669250327759,
                0.844889233185385,
            ],
        ],
        losses: [
            56.7,
            37.803301959828914,
            24.54869764827578,
            16.99306130803572,
            13.031746765578378,
        ],
        evals: [4, 4, 4, 4, 4],
        n_iter: [4, 8, 12, 16, 20],
        t: [0.05, 0.05, 0.05, 0.05, 0.05],
        tolerance: 1e-13,
    };

    /// tolerance_change = 5: from the fourth call on, every call stops on gtd > -5 in its
    /// first iteration, without moving x, but stores the new d and t.
    const GTD_BREAK: TorchRun = TorchRun {
        hyper: r#"{"lr": 1, "max_iter": 3, "max_eval": 5, "tolerance_change": 5.0,
                   "history_size": 3}"#,
        xs: [
            [
                -0.7858624663849404,
                1.1690357280061467,
                -0.7055320783711103,
                0.5887053399923166,
            ],
            [
                -0.9448337385235835,
                1.0740454501169656,
                -0.7048491164177704,
                0.5928502908583886,
            ],
            [
                -1.0413800208116641,
                1.0258009018206264,
                -0.7478726909155273,
                0.5586566527121415,
            ],
            [
                -1.0413800208116641,
                1.0258009018206264,
                -0.7478726909155273,
                0.5586566527121415,
            ],
            [
                -1.0413800208116641,
                1.0258009018206264,
                -0.7478726909155273,
                0.5586566527121415,
            ],
        ],
        losses: [
            56.7,
            37.335330032418824,
            10.899444563234546,
            7.56656834266846,
            7.56656834266846,
        ],
        evals: [2, 2, 2, 1, 1],
        n_iter: [1, 2, 3, 4, 5],
        t: [0.001920860545524395, 1.0, 1.0, 1.0, 1.0],
        tolerance: 1e-13,
    };

    /// A long step (lr = 10) with one history pair: the line search extrapolates, zooms, and
    /// twice runs out of budget in its bracketing phase and falls back to [0, t], choosing
    /// t = 0 (the state's `t` after calls 3 and 4).
    const FALLBACK: TorchRun = TorchRun {
        hyper: r#"{"lr": 10, "max_iter": 4, "max_eval": 6, "history_size": 1,
                   "line_search_fn": "strong_wolfe"}"#,
        xs: [
            [
                -1.0351991936112348,
                1.0369624916031777,
                -0.7307344701303372,
                0.5772595012776427,
            ],
            [
                -0.8539555329625099,
                0.712024193423575,
                -0.5233474758790944,
                0.22768427161238372,
            ],
            [
                -0.7463301644518824,
                0.5388124938552601,
                -0.3769763135783521,
                0.06317770771852498,
            ],
            [
                -0.4118674645648264,
                0.2682407334557025,
                0.10942932079288324,
                -0.024339579601520993,
            ],
            [
                -0.3846347167939702,
                0.1443989847524521,
                0.19031692139523917,
                0.02188899128778584,
            ],
        ],
        losses: [
            56.7,
            7.445085566880593,
            6.000898011185285,
            5.6018917444815655,
            3.8906719625040815,
        ],
        evals: [6, 7, 7, 7, 7],
        n_iter: [2, 5, 7, 9, 11],
        t: [1.7251117117441321, 100.0, 0.0, 0.0, 0.8983880323111759],
        tolerance: 5e-11,
    };

    /// The same with two history pairs: the zoom's trial points come close to the bracket's
    /// ends and are moved 0.1 of its length inside.
    const NEAR_BOUNDARY: TorchRun = TorchRun {
        hyper: r#"{"lr": 10, "max_iter": 4, "max_eval": 6, "history_size": 2,
                   "line_search_fn": "strong_wolfe"}"#,
        xs: [
            [
                -1.0351991936112348,
                1.0369624916031777,
                -0.7307344701303372,
                0.5772595012776427,
            ],
            [
                -0.6983451328892052,
                0.47099277620522395,
                -0.2968246333672613,
                0.019281400889113107,
            ],
            [
                -0.694391435648739,
                0.46960122576765234,
                -0.2525771539107757,
                0.07268358885928025,
            ],
            [
                -0.5097329723859861,
                0.29374068653555335,
                -0.02875072430727846,
                -0.04651143807050674,
            ],
            [
                -0.03580722983319787,
                -0.05896334749056239,
                0.44590401247960354,
                0.2691861018548856,
            ],
        ],
        losses: [
            56.7,
            7.445085566880593,
            5.067663333879489,
            4.4636333886360795,
            3.676719769078102,
        ],
        evals: [6, 7, 7, 6, 7],
        n_iter: [2, 6, 8, 10, 13],
        t: [
            1.7251117117441321,
            4.945364853241999,
            0.0,
            0.5900298749226991,
            0.0,
        ],
        tolerance: 1e-9,
    };

    /// torch's `d` after the fourth call of [`GTD_BREAK`] (a call that stopped on gtd).
    const GTD_BREAK_D4: [f64; 4] = [
        0.029961961457118675,
        0.010994316526916133,
        0.005104982612017745,
        0.0012604959446732556,
    ];

    /// Runs `torch`'s calls on the host (the closure returns `sign`·f and its gradient) and
    /// checks every call against torch, within the run's tolerance.
    fn check_against_torch(torch: &TorchRun, sign: f64) -> LbfgsState<Vec<f64>> {
        let config = Lbfgs::from_hyper(&serde_json::from_str(torch.hyper).unwrap()).unwrap();
        let mut space = HostVectors { len: 4 };
        let mut state = LbfgsState::new();
        let mut x = X0.to_vec();
        let mut closure = |_: &mut HostVectors, x: &Vec<f64>, g: &mut Vec<f64>| -> Result<f64> {
            let f = Objective::Rosenbrock.value_and_grad(x, g);
            g.iter_mut().for_each(|g| *g *= sign);
            Ok(sign * f)
        };
        let mut worst: f64 = 0.0;
        for k in 0..5 {
            let outcome = step(&config, &mut state, &mut space, &mut x, &mut closure).unwrap();
            let x_err = rel_l2(&x, &torch.xs[k]);
            let loss_err = (outcome.loss - torch.losses[k]).abs() / torch.losses[k].abs();
            let t = state.step_size().unwrap();
            // t is 0 exactly where torch's line search chose its bracket's 0.
            let t_err = if torch.t[k] == 0.0 {
                assert_eq!(t, 0.0, "call {k}");
                0.0
            } else {
                (t - torch.t[k]).abs() / torch.t[k]
            };
            worst = worst.max(x_err).max(loss_err).max(t_err);
            let tolerance = torch.tolerance;
            assert!(x_err < tolerance, "call {k}: x {x:?}: rel_l2 {x_err:e}");
            assert!(loss_err < tolerance, "call {k}: loss {}", outcome.loss);
            assert!(t_err < tolerance, "call {k}: t {t} (torch {})", torch.t[k]);
            assert_eq!(outcome.evals, torch.evals[k], "call {k}");
            assert_eq!(state.n_iter(), torch.n_iter[k], "call {k}");
        }
        eprintln!("{}: worst relative error {worst:.3e}", torch.hyper);
        state
    }

    #[test]
    fn a_line_search_without_budget_still_evaluates_once() {
        check_against_torch(&MAX_LS_ZERO, 1.0);
    }

    #[test]
    fn the_line_searchs_zoom_and_its_fallback_follow_torch() {
        check_against_torch(&FALLBACK, 1.0);
        check_against_torch(&NEAR_BOUNDARY, 1.0);
    }

    #[test]
    fn maximize_negates_loss_and_gradient_inside_but_returns_the_closures_loss() {
        let state = check_against_torch(&MAXIMIZE, -1.0);
        // torch keeps the loss it minimizes: f, not the closure's -f.
        assert!(state.prev_loss().unwrap() > 0.0);
        assert_eq!(state.history_len(), 2);

        // Negation is exact: maximizing -f is minimizing f to the last bit, with the
        // returned losses negated.
        let maximize = Lbfgs::from_hyper(&serde_json::from_str(MAXIMIZE.hyper).unwrap()).unwrap();
        let minimize = Lbfgs {
            maximize: false,
            ..maximize.clone()
        };
        let mut space = HostVectors { len: 4 };
        let (mut up, mut down) = (LbfgsState::new(), LbfgsState::new());
        let (mut x_up, mut x_down) = (X0.to_vec(), X0.to_vec());
        let mut f = |_: &mut HostVectors, x: &Vec<f64>, g: &mut Vec<f64>| -> Result<f64> {
            Ok(Objective::Rosenbrock.value_and_grad(x, g))
        };
        let mut minus_f = |_: &mut HostVectors, x: &Vec<f64>, g: &mut Vec<f64>| -> Result<f64> {
            let value = Objective::Rosenbrock.value_and_grad(x, g);
            g.iter_mut().for_each(|g| *g = -*g);
            Ok(-value)
        };
        for _ in 0..5 {
            let a = step(&maximize, &mut up, &mut space, &mut x_up, &mut minus_f).unwrap();
            let b = step(&minimize, &mut down, &mut space, &mut x_down, &mut f).unwrap();
            assert_eq!(x_up, x_down);
            assert_eq!((a.loss, a.evals), (-b.loss, b.evals));
            assert_eq!(up.prev_loss(), down.prev_loss());
        }
    }

    #[test]
    fn max_eval_defaults_to_five_quarters_of_max_iter() {
        let config = Lbfgs {
            max_iter: 4,
            ..Lbfgs::default()
        };
        assert_eq!(config.resolved_max_eval(), 5);
        assert_eq!(Lbfgs::default().resolved_max_eval(), 25);
        let state = check_against_torch(&DEFAULT_MAX_EVAL, 1.0);
        assert_eq!(state.history_len(), 1);
    }

    #[test]
    fn a_break_on_the_directional_derivative_stores_d_and_t() {
        let state = check_against_torch(&GTD_BREAK, 1.0);
        // The fifth call stopped the same way, with the same (y = 0) history: its d is the
        // fourth call's, which torch stored.
        let d = state.direction().unwrap();
        let err = rel_l2(d, &GTD_BREAK_D4);
        assert!(err < 1e-12, "d {d:?}: rel_l2 {err:e}");
        assert_eq!(state.func_evals(), 8);
    }

    #[test]
    fn a_zero_gradient_returns_at_once_and_changes_nothing() {
        let config = Lbfgs::default();
        let mut space = HostVectors { len: 2 };
        let mut state = LbfgsState::new();
        // The Rosenbrock minimum (1, 1): f = 0, gradient 0.
        let mut x = vec![1.0, 1.0];
        let mut closure = |_: &mut HostVectors, x: &Vec<f64>, g: &mut Vec<f64>| -> Result<f64> {
            Ok(Objective::Rosenbrock.value_and_grad(x, g))
        };
        let outcome = step(&config, &mut state, &mut space, &mut x, &mut closure).unwrap();
        assert_eq!(
            outcome,
            StepOutcome {
                loss: 0.0,
                evals: 1
            }
        );
        assert_eq!(x, [1.0, 1.0]);
        assert_eq!((state.n_iter(), state.func_evals()), (0, 1));
        assert!(state.direction().is_none());
    }

    #[test]
    fn config_errors_are_refused_before_anything_runs() {
        let negative_lr = Lbfgs::from_hyper(&serde_json::json!({"lr": -1.0})).unwrap_err();
        assert!(
            matches!(
                negative_lr,
                Error::InvalidHyperparameter {
                    optimizer: "lbfgs",
                    name: "lr",
                    ..
                }
            ),
            "{negative_lr}"
        );
        let armijo =
            Lbfgs::from_hyper(&serde_json::json!({"line_search_fn": "armijo"})).unwrap_err();
        assert!(
            matches!(
                armijo,
                Error::InvalidConfig {
                    optimizer: "lbfgs",
                    ..
                }
            ),
            "{armijo}"
        );
        let message = armijo.to_string();
        assert!(
            message.contains("armijo") && message.contains("strong_wolfe"),
            "{message}"
        );
        let null = Lbfgs::from_hyper(&serde_json::json!({"line_search_fn": null})).unwrap();
        assert_eq!(null.line_search_fn, None);
        let wolfe =
            Lbfgs::from_hyper(&serde_json::json!({"line_search_fn": "strong_wolfe"})).unwrap();
        assert_eq!(wolfe.line_search_fn, Some(LineSearch::StrongWolfe));
        for bad in [
            serde_json::json!({"max_iter": 0}),
            serde_json::json!({"history_size": 0}),
            serde_json::json!({"max_eval": 0}),
            serde_json::json!({"momentum": 0.9}),
        ] {
            let err = Lbfgs::from_hyper(&bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        optimizer: "lbfgs",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        let nan = Lbfgs {
            tolerance_grad: f64::NAN,
            ..Lbfgs::default()
        };
        assert!(matches!(
            nan.validate(),
            Err(Error::InvalidHyperparameter {
                name: "tolerance_grad",
                ..
            })
        ));
        let infinite = Lbfgs {
            tolerance_change: f64::INFINITY,
            ..Lbfgs::default()
        };
        assert!(infinite.validate().is_err());
        assert_eq!(Lbfgs::default().name(), "lbfgs");
        assert_eq!(
            Lbfgs::from_hyper(&serde_json::json!({})).unwrap(),
            Lbfgs::default()
        );

        // step refuses the config without calling the closure.
        let mut space = HostVectors { len: 2 };
        let mut state = LbfgsState::new();
        let mut x = vec![0.0, 0.0];
        let mut calls = 0;
        let mut closure = |_: &mut HostVectors, _: &Vec<f64>, _: &mut Vec<f64>| -> Result<f64> {
            calls += 1;
            Ok(0.0)
        };
        let config = Lbfgs {
            lr: -1.0,
            ..Lbfgs::default()
        };
        assert!(step(&config, &mut state, &mut space, &mut x, &mut closure).is_err());
        assert_eq!(calls, 0);
        assert_eq!(state.func_evals(), 0);
    }

    #[test]
    fn a_closure_error_propagates_undoes_the_trial_point_and_restarts_the_state() {
        let config = Lbfgs::from_hyper(&serde_json::from_str(MAXIMIZE.hyper).unwrap()).unwrap();
        let config = Lbfgs {
            maximize: false,
            ..config
        };
        let mut space = HostVectors { len: 4 };
        let mut state = LbfgsState::new();
        let mut x = X0.to_vec();
        // A first call that works, so that there is a history to lose.
        let mut closure = |_: &mut HostVectors, x: &Vec<f64>, g: &mut Vec<f64>| -> Result<f64> {
            Ok(Objective::Rosenbrock.value_and_grad(x, g))
        };
        step(&config, &mut state, &mut space, &mut x, &mut closure).unwrap();
        assert_eq!(state.n_iter(), 4);
        let x_after_first = x.clone();
        let evals_after_first = state.func_evals();

        // The second call fails at its second evaluation, the first line search's first trial.
        let mut calls = 0;
        let mut seen = Vec::new();
        let mut failing = |_: &mut HostVectors, x: &Vec<f64>, g: &mut Vec<f64>| -> Result<f64> {
            calls += 1;
            seen.push(x.clone());
            if calls == 2 {
                return Err(Error::Wait("objective lost".to_string()));
            }
            Ok(Objective::Rosenbrock.value_and_grad(x, g))
        };
        let err = step(&config, &mut state, &mut space, &mut x, &mut failing).unwrap_err();
        assert!(
            matches!(&err, Error::Wait(m) if m == "objective lost"),
            "{err}"
        );
        assert_eq!(calls, 2);
        // The failing evaluation was at a trial point, which is undone.
        assert_ne!(seen[1], x_after_first);
        assert_eq!(x, x_after_first);
        assert_eq!(state.n_iter(), 0);
        assert_eq!(state.history_len(), 0);
        assert!(state.direction().is_none() && state.step_size().is_none());
        assert_eq!(state.func_evals(), evals_after_first + 1);

        // The next call starts again from steepest descent, as a fresh state would from here.
        let outcome = step(&config, &mut state, &mut space, &mut x, &mut closure).unwrap();
        let mut fresh_state = LbfgsState::new();
        let mut fresh_x = x_after_first.clone();
        let fresh = step(
            &config,
            &mut fresh_state,
            &mut space,
            &mut fresh_x,
            &mut closure,
        )
        .unwrap();
        assert_eq!(outcome.loss, fresh.loss);
        assert_eq!(outcome.evals, fresh.evals);
        assert_eq!(x, fresh_x);
        assert_eq!(state.n_iter(), fresh_state.n_iter());

        // A failure of the very first evaluation leaves x as it was.
        let mut first_fails =
            |_: &mut HostVectors, _: &Vec<f64>, _: &mut Vec<f64>| -> Result<f64> {
                Err(Error::Wait("no objective".to_string()))
            };
        let before = x.clone();
        assert!(step(&config, &mut state, &mut space, &mut x, &mut first_fails).is_err());
        assert_eq!(x, before);
        assert_eq!(state.n_iter(), 0);
    }

    #[test]
    fn cubic_interpolation_finds_a_cubics_minimizer_and_falls_back_to_the_midpoint() {
        // f(t) = t^3 - 3t, whose minimizer on [0, 2] is t = 1.
        let f = |t: f64| t * t * t - 3.0 * t;
        let g = |t: f64| 3.0 * t * t - 3.0;
        let t = cubic_interpolate((0.0, f(0.0), g(0.0)), (2.0, f(2.0), g(2.0)), None);
        assert!((t - 1.0).abs() < 1e-15, "{t}");
        // Same points in the other order.
        let t = cubic_interpolate((2.0, f(2.0), g(2.0)), (0.0, f(0.0), g(0.0)), None);
        assert!((t - 1.0).abs() < 1e-15, "{t}");
        // Clamped to the bounds.
        let t = cubic_interpolate(
            (0.0, f(0.0), g(0.0)),
            (2.0, f(2.0), g(2.0)),
            Some((1.5, 3.0)),
        );
        assert_eq!(t, 1.5);
        // No real minimizer (d1² < g1·g2): the bounds' midpoint.
        let t = cubic_interpolate((0.0, 0.0, 3.0), (1.0, 2.0, 3.0), Some((0.0, 4.0)));
        assert_eq!(t, 2.0);
    }

    #[test]
    fn objectives_give_their_values_and_gradients() {
        let quadratic = Objective::from_json(&serde_json::json!({
            "kind": "quadratic", "a": [[2.0, 1.0], [1.0, 3.0]], "b": [1.0, -1.0]
        }))
        .unwrap();
        let mut g = [0.0; 2];
        // Ax = (2 + 2, 1 + 6) = (4, 7); f = ½(4 + 14) - (1 - 2) = 10.
        assert_eq!(quadratic.value_and_grad(&[1.0, 2.0], &mut g), 10.0);
        assert_eq!(g, [3.0, 8.0]);
        let mut g = [0.0; 4];
        let f = Objective::Rosenbrock.value_and_grad(&[0.0, 1.0, 1.0, 1.0], &mut g);
        assert_eq!(f, 101.0);
        assert_eq!(g, [-2.0, 200.0, 0.0, 0.0]);
        assert!(Objective::Rosenbrock.check_len(3).is_err());
        assert!(quadratic.check_len(3).is_err());
        let unknown = Objective::from_json(&serde_json::json!({"kind": "beale"})).unwrap_err();
        assert!(unknown.to_string().contains("beale"), "{unknown}");
        let ragged =
            serde_json::json!({"kind": "quadratic", "a": [[1.0], [1.0, 2.0]], "b": [1.0, 2.0]});
        assert!(Objective::from_json(&ragged).is_err());
    }
}
