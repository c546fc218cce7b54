//! The GPU against the float64 CPU reference on random data: every optimizer, every flag
//! combination, every awkward size at once (one parameter group of nine tensors), ten steps,
//! parameters and every state compared element by element after the first and the last step.

mod common;

use common::*;
use wgpu_optim::optim::*;
use wgpu_optim::{GroupId, Optimizer, OptimizerConfig, ReferenceGroup, TensorId};

const STEPS: usize = 10;

/// Largest error allowed, relative to the largest magnitude the reference value took.
const RTOL: f64 = 1e-5;

fn bools() -> [bool; 2] {
    [false, true]
}

/// Runs `config` on the GPU and on the reference and compares them. Odd `seed`s use tiny
/// segments (1,028 elements, not a power of two) so that tensors straddle segment buffers.
fn check(config: OptimizerConfig, seed: u64) {
    let ctx = context();
    let label = format!("{config:?}");
    let mut rng = rng(seed);
    let params: Vec<Vec<f32>> = AWKWARD_SIZES.iter().map(|&n| params(&mut rng, n)).collect();
    let scales: Vec<Vec<f32>> = AWKWARD_SIZES
        .iter()
        .map(|&n| grad_scales(&mut rng, n))
        .collect();
    let mut builder = Optimizer::builder(&ctx).group(config.clone(), &params);
    if seed % 2 == 1 {
        builder = builder.max_segment_bytes(1028 * 4);
    }
    let mut opt = builder.build().unwrap_or_else(|e| panic!("{label}: {e}"));
    let mut reference =
        ReferenceGroup::new(config.clone(), params.iter().map(|p| to_f64(p)).collect()).unwrap();
    // The same optimizer on magnitudes, where no term cancels another: |p|, and gradients whose
    // sign makes the effective gradient +|g| (after `maximize`) so that it adds to the weight
    // decay term. Its values bound the size of what float32 rounding acts on.
    let mut magnitudes =
        ReferenceGroup::new(config.clone(), params.iter().map(|p| abs64(p)).collect()).unwrap();
    let sign = if maximizes(&config) { -1.0 } else { 1.0 };
    // The same optimizer with every gradient scaled by 1 + 1e-6 and by 1 - 1e-6: where these
    // disagree with the reference, the result is that sensitive to rounding.
    let mut perturbed = [PERTURBATION, -PERTURBATION].map(|_| reference.clone());
    let states = opt.state_names(GroupId(0)).unwrap();

    // Poison what the first step must overwrite without reading: SGD's momentum buffer starts
    // as the first gradient itself.
    if matches!(config, OptimizerConfig::Sgd(_) | OptimizerConfig::Sgdw(_)) {
        for (t, &n) in AWKWARD_SIZES.iter().enumerate() {
            if states.contains(&"momentum_buffer") {
                opt.write_state(TensorId(t), "momentum_buffer", &vec![f32::NAN; n])
                    .unwrap();
            }
        }
    }

    // Per tensor, per role (parameters, then each state): the largest |reference| so far.
    let mut scale: Vec<Vec<Vec<f64>>> = params
        .iter()
        .map(|p| {
            let magnitude: Vec<f64> = p.iter().map(|v| v.abs() as f64).collect();
            let mut roles = vec![magnitude.clone()];
            // Schedule-Free's z starts as the parameters: their size is in its first value.
            roles.extend(states.iter().map(|s| {
                if *s == "z" {
                    magnitude.clone()
                } else {
                    vec![0.0; p.len()]
                }
            }));
            roles
        })
        .collect();
    let mut before_last_step = Vec::new();
    let mut worst = 0.0f64;
    for step in 1..=STEPS {
        let grads: Vec<Vec<f32>> = scales.iter().map(|s| grads(&mut rng, s)).collect();
        let grad_refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        if step == STEPS {
            before_last_step = reference.params.clone();
        }
        opt.step_with_grads(&grad_refs).unwrap();
        reference
            .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
            .unwrap();
        for (run, delta) in perturbed.iter_mut().zip([PERTURBATION, -PERTURBATION]) {
            let scaled: Vec<Vec<f64>> = grads
                .iter()
                .map(|g| g.iter().map(|&v| v as f64 * (1.0 + delta)).collect())
                .collect();
            run.step(&scaled).unwrap();
        }
        magnitudes
            .step(
                &grads
                    .iter()
                    .map(|g| abs64(g).iter().map(|v| sign * v).collect())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        for (t, roles) in scale.iter_mut().enumerate() {
            for run in [&reference, &magnitudes] {
                let values = std::iter::once(run.params[t].as_slice())
                    .chain(states.iter().map(|s| run.state(t, s).unwrap()));
                for (role_scale, value) in roles.iter_mut().zip(values) {
                    for (s, v) in role_scale.iter_mut().zip(value) {
                        *s = s.max(v.abs());
                    }
                }
            }
        }
        if step != 1 && step != STEPS {
            continue;
        }
        for (t, tensor_scale) in scale.iter().enumerate() {
            let gpu = opt.read_param(TensorId(t)).unwrap();
            let what = format!("{label} step {step} tensor {t} param");
            let slack = sensitivity(
                &reference.params[t],
                perturbed.each_ref().map(|r| r.params[t].as_slice()),
            );
            worst = worst.max(
                compare(
                    &what,
                    &gpu,
                    &reference.params[t],
                    &tensor_scale[0],
                    &slack,
                    RTOL,
                )
                .unwrap_or_else(|e| panic!("{e}")),
            );
            for (k, name) in states.iter().enumerate() {
                let gpu = opt.read_state(TensorId(t), name).unwrap();
                let what = format!("{label} step {step} tensor {t} {name}");
                let expected = reference.state(t, name).unwrap();
                let slack = sensitivity(
                    expected,
                    perturbed.each_ref().map(|r| r.state(t, name).unwrap()),
                );
                worst = worst.max(
                    compare(&what, &gpu, expected, &tensor_scale[k + 1], &slack, RTOL)
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
        }
    }
    // The comparison is sharp enough to see one step: the result is not within tolerance of
    // the reference one step earlier.
    let largest = AWKWARD_SIZES.len() - 1;
    let gpu = opt.read_param(TensorId(largest)).unwrap();
    let slack = sensitivity(
        &reference.params[largest],
        perturbed.each_ref().map(|r| r.params[largest].as_slice()),
    );
    assert!(
        compare(
            "lagged",
            &gpu,
            &before_last_step[largest],
            &scale[largest][0],
            &slack,
            RTOL
        )
        .is_err(),
        "{label}: the check cannot tell step {STEPS} from step {}",
        STEPS - 1
    );
    assert_eq!(opt.step_report(GroupId(0)).unwrap().step, STEPS as u64);
    eprintln!("{label}: worst error {:.3} of the tolerance", worst);
}

/// Relative size of the gradient perturbation that measures each element's sensitivity.
const PERTURBATION: f64 = 1e-6;

/// Per element, how far the perturbed references land from the reference.
fn sensitivity(reference: &[f64], perturbed: [&[f64]; 2]) -> Vec<f64> {
    reference
        .iter()
        .zip(perturbed[0].iter().zip(perturbed[1]))
        .map(|(r, (a, b))| (r - a).abs().max((r - b).abs()))
        .collect()
}

fn abs64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v.abs() as f64).collect()
}

fn maximizes(config: &OptimizerConfig) -> bool {
    match config {
        OptimizerConfig::Sgd(c) => c.maximize,
        OptimizerConfig::Sgdw(c) => c.maximize,
        OptimizerConfig::Adagrad(c) => c.maximize,
        OptimizerConfig::RmsProp(c) => c.maximize,
        OptimizerConfig::Adadelta(c) => c.maximize,
        OptimizerConfig::Adam(c) => c.maximize,
        OptimizerConfig::AdamW(c) => c.maximize,
        OptimizerConfig::NAdam(c) => c.maximize,
        OptimizerConfig::RAdam(c) => c.maximize,
        OptimizerConfig::Adamax(c) => c.maximize,
        OptimizerConfig::Lion(_) => false,
        OptimizerConfig::Rprop(c) => c.maximize,
        OptimizerConfig::Asgd(c) => c.maximize,
        OptimizerConfig::ScheduleFreeAdamW(_) => false,
        OptimizerConfig::Lamb(_) => false,
    }
}

fn check_all(configs: Vec<OptimizerConfig>, seed: u64) {
    assert!(!configs.is_empty());
    for (i, config) in configs.into_iter().enumerate() {
        check(config, seed * 1000 + i as u64);
    }
}

fn sgd_like<T: Into<OptimizerConfig>>(
    make: impl Fn(f64, f64, bool, f64, bool) -> T,
) -> Vec<OptimizerConfig> {
    let mut configs = Vec::new();
    for momentum in [0.0, 0.9] {
        for dampening in [0.0, 0.3] {
            for nesterov in bools() {
                if nesterov && (momentum == 0.0 || dampening != 0.0) {
                    continue; // rejected by validation, tested in errors.rs
                }
                for weight_decay in [0.0, 0.01] {
                    for maximize in bools() {
                        configs.push(
                            make(momentum, dampening, nesterov, weight_decay, maximize).into(),
                        );
                    }
                }
            }
        }
    }
    configs
}

#[test]
fn sgd_every_flag_combination() {
    let configs = sgd_like(
        |momentum, dampening, nesterov, weight_decay, maximize| Sgd {
            lr: 0.05,
            momentum,
            dampening,
            nesterov,
            weight_decay,
            maximize,
            ..Default::default()
        },
    );
    assert_eq!(configs.len(), 20);
    check_all(configs, 1);
}

#[test]
fn sgdw_every_flag_combination() {
    let configs = sgd_like(
        |momentum, dampening, nesterov, weight_decay, maximize| Sgdw {
            lr: 0.05,
            momentum,
            dampening,
            nesterov,
            weight_decay: weight_decay * 10.0,
            maximize,
            ..Default::default()
        },
    );
    check_all(configs, 2);
}

#[test]
fn adagrad_every_flag_combination() {
    let mut configs = Vec::new();
    for lr_decay in [0.0, 0.01] {
        for weight_decay in [0.0, 0.01] {
            for initial_accumulator_value in [0.0, 0.1] {
                for maximize in bools() {
                    configs.push(
                        Adagrad {
                            lr: 0.1,
                            lr_decay,
                            weight_decay,
                            initial_accumulator_value,
                            maximize,
                            ..Default::default()
                        }
                        .into(),
                    );
                }
            }
        }
    }
    check_all(configs, 3);
}

#[test]
fn rmsprop_every_flag_combination() {
    let mut configs = Vec::new();
    for centered in bools() {
        for momentum in [0.0, 0.5] {
            for weight_decay in [0.0, 0.01] {
                for maximize in bools() {
                    configs.push(
                        RmsProp {
                            lr: 0.01,
                            alpha: 0.9,
                            centered,
                            momentum,
                            weight_decay,
                            maximize,
                            ..Default::default()
                        }
                        .into(),
                    );
                }
            }
        }
    }
    check_all(configs, 4);
}

#[test]
fn adadelta_every_flag_combination() {
    let mut configs = Vec::new();
    for weight_decay in [0.0, 0.01] {
        for maximize in bools() {
            configs.push(
                Adadelta {
                    weight_decay,
                    maximize,
                    ..Default::default()
                }
                .into(),
            );
        }
    }
    check_all(configs, 5);
}

#[test]
fn adam_every_flag_combination() {
    let mut configs = Vec::new();
    for amsgrad in bools() {
        for weight_decay in [0.0, 0.05] {
            for maximize in bools() {
                configs.push(
                    Adam {
                        lr: 0.01,
                        amsgrad,
                        weight_decay,
                        maximize,
                        ..Default::default()
                    }
                    .into(),
                );
            }
        }
    }
    check_all(configs, 6);
}

#[test]
fn adamw_every_flag_combination() {
    let mut configs = Vec::new();
    for amsgrad in bools() {
        for weight_decay in [0.0, 0.1] {
            for maximize in bools() {
                configs.push(
                    AdamW {
                        lr: 0.01,
                        beta1: 0.8,
                        beta2: 0.99,
                        amsgrad,
                        weight_decay,
                        maximize,
                        ..Default::default()
                    }
                    .into(),
                );
            }
        }
    }
    check_all(configs, 7);
}

#[test]
fn nadam_every_flag_combination() {
    let mut configs = Vec::new();
    for decoupled_weight_decay in bools() {
        for weight_decay in [0.0, 0.05] {
            for maximize in bools() {
                configs.push(
                    NAdam {
                        lr: 0.01,
                        decoupled_weight_decay,
                        weight_decay,
                        maximize,
                        ..Default::default()
                    }
                    .into(),
                );
            }
        }
    }
    check_all(configs, 8);
}

#[test]
fn radam_every_flag_combination() {
    // With beta2 = 0.999 the variance is untractable (rho_t <= 5) for the first 5 steps and
    // rectified after: ten steps take both branches.
    let mut configs = Vec::new();
    for decoupled_weight_decay in bools() {
        for weight_decay in [0.0, 0.05] {
            for maximize in bools() {
                configs.push(
                    RAdam {
                        lr: 0.01,
                        decoupled_weight_decay,
                        weight_decay,
                        maximize,
                        ..Default::default()
                    }
                    .into(),
                );
            }
        }
    }
    check_all(configs, 9);
}

#[test]
fn adamax_every_flag_combination() {
    let mut configs = Vec::new();
    for weight_decay in [0.0, 0.05] {
        for maximize in bools() {
            configs.push(
                Adamax {
                    lr: 0.01,
                    weight_decay,
                    maximize,
                    ..Default::default()
                }
                .into(),
            );
        }
    }
    check_all(configs, 10);
}

#[test]
fn lion_every_flag_combination() {
    let mut configs = Vec::new();
    for decoupled_weight_decay in bools() {
        for weight_decay in [0.0, 0.1] {
            configs.push(
                Lion {
                    lr: 0.01,
                    decoupled_weight_decay,
                    weight_decay,
                    ..Default::default()
                }
                .into(),
            );
        }
    }
    check_all(configs, 11);
}

#[test]
fn rprop_every_flag_combination() {
    let mut configs = Vec::new();
    // torch's step sizes, and narrow ones that both bounds clamp.
    for (step_size_min, step_size_max) in [(1e-6, 50.0), (5e-3, 2e-2)] {
        for maximize in bools() {
            configs.push(
                Rprop {
                    lr: 0.01,
                    step_size_min,
                    step_size_max,
                    maximize,
                    ..Default::default()
                }
                .into(),
            );
        }
    }
    check_all(configs, 12);
}

#[test]
fn asgd_every_flag_combination() {
    let mut configs = Vec::new();
    // Averaging from the start, from step 5 on, and (torch's default t0) never.
    for t0 in [0.0, 3.0, 1e6] {
        for (weight_decay, maximize) in [(0.0, false), (0.01, true)] {
            configs.push(
                Asgd {
                    lr: 0.05,
                    lambd: 0.5,
                    t0,
                    weight_decay,
                    maximize,
                    ..Default::default()
                }
                .into(),
            );
        }
    }
    check_all(configs, 13);
}

#[test]
fn schedulefree_adamw_every_flag_combination() {
    let mut configs = Vec::new();
    // No warm-up and a warm-up past the last step; constant weights and weights growing with
    // the step and the rate.
    for (warmup_steps, r, weight_lr_power) in [(0, 0.0, 2.0), (20, 1.0, 1.0)] {
        for weight_decay in [0.0, 0.05] {
            configs.push(
                ScheduleFreeAdamW {
                    lr: 0.01,
                    warmup_steps,
                    r,
                    weight_lr_power,
                    weight_decay,
                    ..Default::default()
                }
                .into(),
            );
        }
    }
    check_all(configs, 14);
}

#[test]
fn lamb_every_flag_combination() {
    let mut configs = Vec::new();
    for (adam, debias) in [(false, false), (false, true), (true, true)] {
        // torch-optimizer's clamp, and one that binds for every tensor here.
        for (weight_decay, clamp_value) in [(0.0, 10.0), (0.01, 0.5)] {
            configs.push(
                Lamb {
                    lr: 0.01,
                    adam,
                    debias,
                    weight_decay,
                    clamp_value,
                    ..Default::default()
                }
                .into(),
            );
        }
    }
    check_all(configs, 15);
}

/// Several groups with their own optimizer, learning rate and weight decay, stepped together.
#[test]
fn groups_with_their_own_hyperparameters_step_together() {
    let ctx = context();
    let mut rng = rng(77);
    let sizes = [[5usize, 1027], [64, 3], [257, 1]];
    let configs: [OptimizerConfig; 3] = [
        AdamW {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        }
        .into(),
        AdamW {
            lr: 0.003,
            weight_decay: 0.0,
            ..Default::default()
        }
        .into(),
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        }
        .into(),
    ];
    let params: Vec<Vec<Vec<f32>>> = sizes
        .iter()
        .map(|g| g.iter().map(|&n| params(&mut rng, n)).collect())
        .collect();
    let mut builder = Optimizer::builder(&ctx);
    for (config, p) in configs.iter().zip(&params) {
        builder = builder.group(config.clone(), p);
    }
    let mut opt = builder.build().unwrap();
    let mut references: Vec<ReferenceGroup> = configs
        .iter()
        .zip(&params)
        .map(|(c, p)| {
            ReferenceGroup::new(c.clone(), p.iter().map(|t| to_f64(t)).collect()).unwrap()
        })
        .collect();
    for step in 0..STEPS {
        // A per-group learning rate change half way, as a scheduler would do.
        if step == STEPS / 2 {
            opt.set_lr(GroupId(1), 0.02).unwrap();
            references[1].config.set_lr(0.02);
        }
        let grads: Vec<Vec<Vec<f32>>> = params
            .iter()
            .map(|g| {
                g.iter()
                    .map(|t| grads(&mut rng, &vec![1.0; t.len()]))
                    .collect()
            })
            .collect();
        let flat: Vec<&[f32]> = grads.iter().flatten().map(Vec::as_slice).collect();
        opt.step_with_grads(&flat).unwrap();
        for (r, g) in references.iter_mut().zip(&grads) {
            r.step(&g.iter().map(|t| to_f64(t)).collect::<Vec<_>>())
                .unwrap();
        }
    }
    let mut t = 0;
    for (g, reference) in references.iter().enumerate() {
        assert_eq!(opt.group_tensors(GroupId(g)).unwrap(), t..t + 2);
        for expected in &reference.params {
            let gpu = opt.read_param(TensorId(t)).unwrap();
            let scale: Vec<f64> = expected.iter().map(|v| v.abs().max(1.0)).collect();
            let slack = vec![0.0; expected.len()];
            compare(
                &format!("group {g} tensor {t}"),
                &gpu,
                expected,
                &scale,
                &slack,
                RTOL,
            )
            .unwrap();
            t += 1;
        }
    }
}
