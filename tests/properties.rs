//! Property tests: random hyperparameters across the ranges torch.optim accepts, for each of
//! the ten optimizers; random tensor counts (1-8) and lengths (1-10,000); a gradient magnitude
//! per tensor from 1e-20 to 1e20; 1-6 steps. The GPU (float32) is compared with the float64
//! reference after every step, element by element.
//!
//! Cases: `DEFAULT_CASES` per optimizer (400 in all, well under a minute on lavapipe), from a
//! fixed proptest seed so that every run checks the same cases;
//! `WGPU_OPTIM_PROPTEST_CASES=N` runs N per optimizer from a fresh seed, and every run prints
//! its seed (`PROPTEST_RNG_SEED=seed` replays it). A failure prints the shrunk case (the
//! hyperparameters as torch argument names, each tensor's length and log10 gradient magnitude,
//! the step count and the data seed). Nothing is written to disk (`failure_persistence: None`).
//!
//! The tolerance, per element of the parameters after every step:
//!
//! ```text
//! |gpu - reference| <= RTOL * scale + 2 * slack
//! ```
//!
//! - `scale` is the largest magnitude the element took so far, in the reference and in the same
//!   optimizer run on magnitudes (|p|, and gradients whose effective sign adds to the weight
//!   decay, so nothing cancels): the size of the terms float32 rounds, even where they cancel
//!   towards a small result. `RTOL` = 1e-5 is about 170 float32 units in the last place
//!   (2^-24 = 6e-8) of that size: a step rounds a dozen or two operations, each by at most half
//!   a unit, and at most 6 steps accumulate; errors that are not amplified stay well inside.
//! - `slack` is what float32 storage can do to an ill-conditioned update (Adam's first step
//!   g / |g| where the gradient cancels against the weight decay; a centered RMSprop variance
//!   whose stored averages cancel; eps-dominated denominators): four more float64 runs, in each
//!   of which every gradient and, after each step, every parameter and state is multiplied by
//!   (1 + d) with d = +-1e-6 (all the same sign, or signs alternating by element) -- about 17
//!   units in the last place of float32, where storing in float32 moves each value by at most
//!   half a unit. `slack` is the largest distance of those runs from the reference; zero where
//!   the update is well conditioned. (It does not cover a cancellation inside one step between
//!   values that are not stored, such as a centered RMSprop with alpha = 0, whose variance
//!   g^2 - g^2 is exactly 0 in float64 and in float32 evaluated as written.)
//!
//! Only the parameters are compared: they are what the optimizer promises. How an
//! implementation stores its states (gradient squares near 1e40 do not fit in float32) is its
//! own business, as long as the parameters follow.
//!
//! Nothing here is loosened for the extremes: the gradient's magnitude enters the reference
//! exactly. One kind of case cannot be followed by any float32 optimizer, torch's included: one
//! whose reference stores a value outside float32's normal range (the square of a 1e20
//! gradient is 1e40; that of a 1e-20 one, 1e-40, is subnormal and flushed to zero by many GPUs,
//! which matters where eps = 0). A case that misses its bound after such a value appeared is
//! rejected (proptest then draws another, and gives up after too many), never passed; a miss
//! in any other case fails. `data/adversarial.json` holds such cases with torch's own float32
//! error beside ours.

mod common;

use common::{context, rng, to_f64};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError};
use rand::Rng;
use serde_json::{Value, json};
use wgpu_optim::{Optimizer, OptimizerConfig, ReferenceGroup, TensorId};

/// Cases per optimizer unless `WGPU_OPTIM_PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 40;

/// The proptest seed of the default run.
const FIXED_SEED: u64 = 20_261_123;

/// See the module documentation.
const RTOL: f64 = 1e-5;
/// The relative perturbation of the slack runs.
const PERTURBATION: f64 = 1e-6;

fn config() -> Config {
    let requested = std::env::var("WGPU_OPTIM_PROPTEST_CASES").ok();
    let explore = requested.is_some();
    let cases = requested.map_or(DEFAULT_CASES, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("WGPU_OPTIM_PROPTEST_CASES={v}: not a number"))
    });
    // Reproducible by default (CI runs the same cases every time); `WGPU_OPTIM_PROPTEST_CASES`
    // explores with a fresh seed; `PROPTEST_RNG_SEED=N` replays the run that printed seed N.
    let seed = match std::env::var("PROPTEST_RNG_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PROPTEST_RNG_SEED={v}: not a number")),
        Err(_) if explore => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(FIXED_SEED, |d| d.as_nanos() as u64),
        Err(_) => FIXED_SEED,
    };
    eprintln!("proptest seed {seed} ({cases} cases): PROPTEST_RNG_SEED={seed} replays them");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        // Nothing written under tests/ or anywhere else: the printed case reproduces a failure.
        failure_persistence: None,
        // Each shrinking step is a GPU run; a few dozen find the boundary of a failure.
        max_shrink_iters: 64,
        ..Config::default()
    }
}

/// One generated case: an optimizer with all its hyperparameters, the tensors and the steps.
#[derive(Clone, Debug)]
struct Case {
    optimizer: &'static str,
    hyper: Value,
    /// (length, log10 of the gradient magnitude) per tensor.
    tensors: Vec<(usize, f64)>,
    steps: usize,
    /// Seeds the parameters and the gradients.
    seed: u64,
}

/// 10^e for e uniform in [lo, hi).
fn log_uniform(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
    (lo..hi).prop_map(|e| 10f64.powf(e))
}

/// Learning rates log-uniform over [10^lo, 10^hi), and 0 (torch accepts it: nothing moves).
fn lr(lo: f64, hi: f64) -> BoxedStrategy<f64> {
    prop_oneof![9 => log_uniform(lo, hi), 1 => Just(0.0)].boxed()
}

fn weight_decay() -> BoxedStrategy<f64> {
    prop_oneof![Just(0.0), log_uniform(-6.0, 0.0)].boxed()
}

/// eps >= 0, from 1e-16 up, and exactly 0 (torch accepts it everywhere).
fn eps() -> BoxedStrategy<f64> {
    prop_oneof![1 => Just(0.0), 4 => log_uniform(-16.0, -3.0)].boxed()
}

/// A decay rate in [0, 1): anywhere, the usual values, and very near 1.
fn rate(usual: f64) -> BoxedStrategy<f64> {
    prop_oneof![
        0.0..1.0f64,
        Just(0.0),
        Just(usual),
        Just(0.99),
        Just(0.9999),
        Just(0.999999)
    ]
    .boxed()
}

fn beta1() -> BoxedStrategy<f64> {
    prop_oneof![0.0..1.0f64, Just(0.0), Just(0.9), Just(0.99999)].boxed()
}

fn beta2() -> BoxedStrategy<f64> {
    prop_oneof![0.0..1.0f64, Just(0.999), Just(0.9999), Just(0.999999)].boxed()
}

fn momentum() -> BoxedStrategy<f64> {
    prop_oneof![Just(0.0), 0.0..1.0f64, Just(0.9), Just(0.99)].boxed()
}

/// SGD's and SGDW's: Nesterov needs momentum > 0 and no dampening.
fn sgd_hyper() -> BoxedStrategy<Value> {
    (
        lr(-8.0, 0.0),
        momentum(),
        prop_oneof![Just(0.0), 0.0..1.0f64],
        any::<bool>(),
        weight_decay(),
        any::<bool>(),
    )
        .prop_map(
            |(lr, momentum, dampening, nesterov, weight_decay, maximize)| {
                let nesterov = nesterov && momentum > 0.0;
                json!({
                    "lr": lr,
                    "momentum": momentum,
                    "dampening": if nesterov { 0.0 } else { dampening },
                    "nesterov": nesterov,
                    "weight_decay": weight_decay,
                    "maximize": maximize,
                })
            },
        )
        .boxed()
}

fn hyper(optimizer: &'static str) -> BoxedStrategy<Value> {
    match optimizer {
        "sgd" | "sgdw" => sgd_hyper(),
        "adagrad" => (
            lr(-8.0, 0.0),
            prop_oneof![Just(0.0), log_uniform(-4.0, 0.0)],
            weight_decay(),
            prop_oneof![Just(0.0), log_uniform(-4.0, 1.0)],
            eps(),
            any::<bool>(),
        )
            .prop_map(|(lr, lr_decay, wd, init, eps, maximize)| {
                json!({"lr": lr, "lr_decay": lr_decay, "weight_decay": wd,
                       "initial_accumulator_value": init, "eps": eps, "maximize": maximize})
            })
            .boxed(),
        "rmsprop" => (
            lr(-8.0, 0.0),
            rate(0.99),
            eps(),
            weight_decay(),
            momentum(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(lr, alpha, eps, wd, momentum, centered, maximize)| {
                // A centered variance of one sample (alpha = 0) is exactly 0: 0/0 without eps.
                let eps = if centered && alpha == 0.0 && eps == 0.0 {
                    1e-8
                } else {
                    eps
                };
                json!({"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": wd,
                       "momentum": momentum, "centered": centered, "maximize": maximize})
            })
            .boxed(),
        "adadelta" => (
            lr(-3.0, 1.0),
            rate(0.9),
            eps(),
            weight_decay(),
            any::<bool>(),
        )
            .prop_map(|(lr, rho, eps, wd, maximize)| {
                json!({"lr": lr, "rho": rho, "eps": eps, "weight_decay": wd, "maximize": maximize})
            })
            .boxed(),
        "adam" | "adamw" => (
            lr(-8.0, 0.0),
            beta1(),
            beta2(),
            eps(),
            weight_decay(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(lr, beta1, beta2, eps, wd, amsgrad, maximize)| {
                json!({"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                       "weight_decay": wd, "amsgrad": amsgrad, "maximize": maximize})
            })
            .boxed(),
        "nadam" => (
            (lr(-8.0, 0.0), beta1(), beta2(), eps(), weight_decay()),
            prop_oneof![
                Just(0.0),
                Just(1e-4),
                Just(4e-3),
                Just(1.0),
                log_uniform(-4.0, 0.0)
            ],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |((lr, beta1, beta2, eps, wd), momentum_decay, decoupled, maximize)| {
                    json!({"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                       "weight_decay": wd, "momentum_decay": momentum_decay,
                       "decoupled_weight_decay": decoupled, "maximize": maximize})
                },
            )
            .boxed(),
        "radam" => (
            (lr(-8.0, 0.0), beta1(), beta2(), eps(), weight_decay()),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|((lr, beta1, beta2, eps, wd), decoupled, maximize)| {
                json!({"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                       "weight_decay": wd, "decoupled_weight_decay": decoupled,
                       "maximize": maximize})
            })
            .boxed(),
        "adamax" => (
            lr(-8.0, 0.0),
            beta1(),
            beta2(),
            eps(),
            weight_decay(),
            any::<bool>(),
        )
            .prop_map(|(lr, beta1, beta2, eps, wd, maximize)| {
                json!({"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                       "weight_decay": wd, "maximize": maximize})
            })
            .boxed(),
        other => panic!("no strategy for {other}"),
    }
}

/// Lengths log-uniform over 1..=10,000 (shrinking towards 1).
fn length() -> impl Strategy<Value = usize> {
    (0.0..4.0f64).prop_map(|e| (10f64.powf(e).round() as usize).clamp(1, 10_000))
}

fn case(optimizer: &'static str) -> impl Strategy<Value = Case> {
    (
        hyper(optimizer),
        prop::collection::vec((length(), -20.0..20.0f64), 1..=8),
        1..=6usize,
        any::<u64>(),
    )
        .prop_map(move |(hyper, tensors, steps, seed)| Case {
            optimizer,
            hyper,
            tensors,
            steps,
            seed,
        })
}

fn maximizes(hyper: &Value) -> bool {
    hyper["maximize"].as_bool().unwrap_or(false)
}

/// Zero gradients only where the update has an eps to divide by: with eps = 0 torch's own
/// update is 0/0 there.
fn zeros_allowed(hyper: &Value) -> bool {
    hyper.get("eps").is_none_or(|e| e.as_f64() != Some(0.0))
}

/// Per element, +1 or -1: the alternating signs of two of the slack runs.
fn alternating(tensor: usize, index: usize) -> f64 {
    if (tensor * 7 + index).is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

/// The four slack runs' relative perturbation of element `index` of `tensor`.
fn perturbation(run: usize, tensor: usize, index: usize) -> f64 {
    match run {
        0 => PERTURBATION,
        1 => -PERTURBATION,
        2 => PERTURBATION * alternating(tensor, index),
        _ => -PERTURBATION * alternating(tensor, index),
    }
}

/// One step of a slack run: perturbed gradients, then perturbed parameters and states.
fn perturbed_step(group: &mut ReferenceGroup, run: usize, grads: &[Vec<f32>]) {
    let grads: Vec<Vec<f64>> = grads
        .iter()
        .enumerate()
        .map(|(t, g)| {
            g.iter()
                .enumerate()
                .map(|(i, &v)| v as f64 * (1.0 + perturbation(run, t, i)))
                .collect()
        })
        .collect();
    group.step(&grads).unwrap();
    for (t, (param, states)) in group.params.iter_mut().zip(&mut group.states).enumerate() {
        for values in std::iter::once(param).chain(states.iter_mut()) {
            for (i, v) in values.iter_mut().enumerate() {
                *v *= 1.0 + perturbation(run, t, i);
            }
        }
    }
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

/// Whether a value the reference stores (a parameter or a state) has left float32's normal
/// range: above its largest finite value, or a non-zero below its smallest normal one (where
/// precision is lost, and many GPUs flush to zero).
fn leaves_float32(reference: &ReferenceGroup) -> bool {
    reference
        .params
        .iter()
        .chain(reference.states.iter().flatten())
        .flatten()
        .any(|&v| v != 0.0 && !(f32::MIN_POSITIVE as f64..=f32::MAX as f64).contains(&v.abs()))
}

/// Runs a case on the GPU and the references, comparing the parameters after every step.
fn check(case: &Case) -> Result<(), TestCaseError> {
    let config = OptimizerConfig::from_hyper(case.optimizer, &case.hyper)
        .map_err(|e| fail(format!("config rejected: {e}")))?;
    let mut rng = rng(case.seed);
    let params: Vec<Vec<f32>> = case
        .tensors
        .iter()
        .map(|&(n, _)| common::params(&mut rng, n))
        .collect();
    let ctx = context();
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), &params)
        .build()
        .map_err(|e| fail(format!("the GPU optimizer was not built: {e}")))?;
    let reference = |values: Vec<Vec<f64>>| ReferenceGroup::new(config.clone(), values).unwrap();
    let mut exact = reference(params.iter().map(|p| to_f64(p)).collect());
    let mut magnitudes = reference(
        params
            .iter()
            .map(|p| p.iter().map(|v| v.abs() as f64).collect())
            .collect(),
    );
    let mut slack_runs: Vec<ReferenceGroup> = (0..4).map(|_| exact.clone()).collect();
    let sign = if maximizes(&case.hyper) { -1.0 } else { 1.0 };
    let zeros = zeros_allowed(&case.hyper);
    let mut scale: Vec<Vec<f64>> = params
        .iter()
        .map(|p| p.iter().map(|v| v.abs() as f64).collect())
        .collect();
    let mut beyond_float32 = false;
    for step in 1..=case.steps {
        let grads: Vec<Vec<f32>> = case
            .tensors
            .iter()
            .map(|&(n, log_magnitude)| {
                let magnitude = 10f64.powf(log_magnitude);
                (0..n)
                    .map(|_| {
                        if zeros && rng.random_range(0..50) == 0 {
                            return 0.0;
                        }
                        // Bell-shaped in [-3, 3) times the magnitude, never exactly zero.
                        let n: f64 = (0..3).map(|_| rng.random_range(-1.0..1.0)).sum();
                        let g = (magnitude * n) as f32;
                        if g == 0.0 { magnitude as f32 } else { g }
                    })
                    .collect()
            })
            .collect();
        opt.step_with_grads(&grads.iter().map(Vec::as_slice).collect::<Vec<_>>())
            .map_err(|e| fail(format!("step {step}: {e}")))?;
        exact
            .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
            .unwrap();
        magnitudes
            .step(
                &grads
                    .iter()
                    .map(|g| g.iter().map(|&v| sign * (v as f64).abs()).collect())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        for (run, group) in slack_runs.iter_mut().enumerate() {
            perturbed_step(group, run, &grads);
        }
        if exact.params.iter().flatten().any(|v| !v.is_finite()) {
            // Outside what the float64 reference (and torch) can compute: not a case.
            return Err(TestCaseError::reject("the float64 reference is not finite"));
        }
        beyond_float32 = beyond_float32 || leaves_float32(&exact);
        for (t, scale) in scale.iter_mut().enumerate() {
            for (i, s) in scale.iter_mut().enumerate() {
                *s = s
                    .max(exact.params[t][i].abs())
                    .max(magnitudes.params[t][i].abs());
            }
        }
        for (t, expected) in exact.params.iter().enumerate() {
            let gpu = opt
                .read_param(TensorId(t))
                .map_err(|e| fail(format!("step {step}: {e}")))?;
            let slack: Vec<f64> = expected
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    slack_runs
                        .iter()
                        .map(|run| (run.params[t][i] - r).abs())
                        .fold(0.0, f64::max)
                })
                .collect();
            let verdict = common::compare(
                &format!("step {step} tensor {t} (length {})", expected.len()),
                &gpu,
                expected,
                &scale[t],
                &slack,
                RTOL,
            );
            if let Err(message) = verdict {
                if beyond_float32 {
                    // A state (a square of a 1e20 gradient, or of a 1e-20 one) that float32
                    // cannot hold: no float32 optimizer, torch's included, can follow this
                    // trajectory; counted as rejected, never passed. Any other miss fails.
                    return Err(TestCaseError::reject(format!(
                        "beyond float32 storage: {message}"
                    )));
                }
                return Err(fail(message));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sgd(case in case("sgd")) { check(&case)?; }

    #[test]
    fn sgdw(case in case("sgdw")) { check(&case)?; }

    #[test]
    fn adagrad(case in case("adagrad")) { check(&case)?; }

    #[test]
    fn rmsprop(case in case("rmsprop")) { check(&case)?; }

    #[test]
    fn adadelta(case in case("adadelta")) { check(&case)?; }

    #[test]
    fn adam(case in case("adam")) { check(&case)?; }

    #[test]
    fn adamw(case in case("adamw")) { check(&case)?; }

    #[test]
    fn nadam(case in case("nadam")) { check(&case)?; }

    #[test]
    fn radam(case in case("radam")) { check(&case)?; }

    #[test]
    fn adamax(case in case("adamax")) { check(&case)?; }
}
