//! Inputs that torch.optim accepts and a float32 engine can get wrong: loss-scaled gradients
//! whose squares overflow, gradients of every magnitude, betas arbitrarily close to 1, long
//! horizons where a rounded decay factor drifts, beta1 = 0, and non-finite gradients without a
//! loss scaler.

mod common;

use common::*;
use wgpu_optim::optim::*;
use wgpu_optim::tools::conformance::rel_l2;
use wgpu_optim::{
    GradScaler, GroupId, Optimizer, OptimizerConfig, ReferenceGroup, TensorId, TrainingOptions,
};

const SIZES: [usize; 4] = [1, 5, 257, 4099];

/// Relative L2 distance of the GPU parameters from the reference's, all tensors together.
fn param_error(opt: &Optimizer, reference: &ReferenceGroup) -> f64 {
    let gpu: Vec<Vec<f64>> = (0..reference.params.len())
        .map(|t| to_f64(&opt.read_param(TensorId(t)).unwrap()))
        .collect();
    rel_l2(
        gpu.iter().map(Vec::as_slice),
        reference.params.iter().map(Vec::as_slice),
    )
}

fn random_grads(rng: &mut rand::rngs::SmallRng, magnitude: f32) -> Vec<Vec<f32>> {
    SIZES
        .iter()
        .map(|&n| {
            grads(rng, &vec![1.0; n])
                .into_iter()
                .map(|g| g * magnitude)
                .collect()
        })
        .collect()
}

fn start_params(seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rng(seed);
    SIZES.iter().map(|&n| params(&mut rng, n)).collect()
}

#[test]
fn clipping_with_loss_scaling_unscales_before_the_norm_and_keeps_training() {
    let ctx = context();
    let scale = 65536.0;
    let options = TrainingOptions {
        max_grad_norm: Some(1.0),
        grad_scaler: Some(GradScaler::fixed(scale)),
        ..Default::default()
    };
    let params = start_params(1);
    let config: OptimizerConfig = Adam::default().into();
    let mut opt = Optimizer::builder(&ctx)
        .group_with(config.clone(), options.clone(), &params)
        .build()
        .unwrap();
    let mut reference =
        ReferenceGroup::with_options(config, options, params.iter().map(|p| to_f64(p)).collect())
            .unwrap();
    let mut rng = rng(2);
    for step in 0..5 {
        // True gradients near 1e15: loss-scaled, 6.5e19, whose squares overflow float32.
        let scaled = random_grads(&mut rng, 1e15 * scale as f32);
        step_both(&mut opt, &mut reference, &scaled);
        let report = opt.step_report(GroupId(0)).unwrap();
        assert!(!report.skipped, "step {step}");
        let expected = reference.last.grad_norm;
        assert!(
            (report.grad_norm - expected).abs() <= 1e-6 * expected,
            "step {step}: norm {} against {expected}",
            report.grad_norm
        );
        let error = param_error(&opt, &reference);
        assert!(error <= 1e-6, "step {step}: parameters off by {error:e}");
    }
    // Training went on: the parameters moved.
    let moved = rel_l2(
        reference.params.iter().map(Vec::as_slice),
        params
            .iter()
            .map(|p| to_f64(p))
            .collect::<Vec<_>>()
            .iter()
            .map(Vec::as_slice),
    );
    assert!(moved > 1e-4, "the parameters hardly moved ({moved:e})");
}

#[test]
fn the_gradient_norm_is_accurate_from_1e_minus_20_to_1e20_with_or_without_a_scaler() {
    let ctx = context();
    let params = start_params(3);
    for scaler in [None, Some(GradScaler::fixed(1024.0))] {
        let options = TrainingOptions {
            max_grad_norm: Some(1e30),
            grad_scaler: scaler.clone(),
            ..Default::default()
        };
        let mut opt = Optimizer::builder(&ctx)
            .group_with(Sgd::default(), options.clone(), &params)
            .build()
            .unwrap();
        let mut rng = rng(4);
        let loss_scale = scaler.as_ref().map_or(1.0, |s| s.init_scale) as f32;
        // One magnitude for all, then every tensor at a magnitude of its own.
        let mut cases: Vec<Vec<f32>> = [1e-20f32, 1e-12, 1.0, 1e12, 1e20, 1e30]
            .iter()
            .map(|&m| vec![m; SIZES.len()])
            .collect();
        cases.push(vec![1e20, 1e-20, 1.0, 1e-10]);
        cases.push(vec![1e-20, 1e-30, 1e-25, 1e-20]);
        for magnitudes in cases {
            let grads: Vec<Vec<f32>> = SIZES
                .iter()
                .zip(&magnitudes)
                .map(|(&n, &m)| {
                    grads(&mut rng, &vec![1.0; n])
                        .into_iter()
                        .map(|g| g * m * loss_scale)
                        .collect()
                })
                .collect();
            // Exact norm of what the GPU received, unscaled, in float64.
            let expected = grads
                .iter()
                .flatten()
                .map(|&g| (g as f64 / loss_scale as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            opt.step_with_grads(&grads.iter().map(Vec::as_slice).collect::<Vec<_>>())
                .unwrap();
            let report = opt.step_report(GroupId(0)).unwrap();
            assert!(
                report.grad_norm.is_finite()
                    && (report.grad_norm - expected).abs() <= 1e-6 * expected,
                "magnitudes {magnitudes:?}, scaler {scaler:?}: norm {:e} against {expected:e}",
                report.grad_norm
            );
        }
    }
}

/// Steps the GPU (with a tiny factor window, so that it slides many times) and the reference
/// side by side, `inf_at` iterations carrying an infinity, some steps recorded several to one
/// encoder; the parameters must agree at every check.
fn follow_reference(
    config: OptimizerConfig,
    options: TrainingOptions,
    steps: usize,
    inf_at: &[usize],
) {
    let ctx = context();
    let label = format!("{config:?} {options:?}");
    let params = start_params(5);
    let mut opt = Optimizer::builder(&ctx)
        .group_with(config.clone(), options.clone(), &params)
        .factor_window_rows(8)
        .build()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let mut reference = ReferenceGroup::with_options(
        config,
        options.clone(),
        params.iter().map(|p| to_f64(p)).collect(),
    )
    .unwrap();
    let mut rng = rng(6);
    let loss_scale = options.grad_scaler.as_ref().map_or(1.0, |s| s.init_scale) as f32;
    let mut step = 0;
    while step < steps {
        // Every third round, 12 steps recorded into one encoder before one submit (more than
        // the window holds), each with the same gradients.
        let batch = if step % 3 == 0 {
            12.min(steps - step)
        } else {
            1
        };
        let mut grads = random_grads(&mut rng, loss_scale);
        if inf_at.contains(&step) {
            grads[2][7] = f32::INFINITY;
        }
        for (t, g) in grads.iter().enumerate() {
            opt.write_grad(TensorId(t), g).unwrap();
        }
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for _ in 0..batch {
            opt.encode_step(&mut encoder, None).unwrap();
            reference
                .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
                .unwrap();
        }
        ctx.queue.submit([encoder.finish()]);
        step += batch;
        let error = param_error(&opt, &reference);
        assert!(
            error <= 1e-5,
            "{label}, step {step}: parameters off by {error:e}"
        );
    }
    let report = opt.step_report(GroupId(0)).unwrap();
    assert_eq!(report.step, reference.last.step, "{label}");
    assert_eq!(
        report.skipped_steps, reference.last.skipped_steps,
        "{label}"
    );
}

#[test]
fn betas_as_close_to_1_as_torch_accepts_run_with_float64_step_factors() {
    let configs: Vec<OptimizerConfig> = vec![
        Adam {
            beta2: 0.999999,
            lr: 1e-2,
            ..Default::default()
        }
        .into(),
        AdamW {
            beta1: 0.999999,
            beta2: 0.9999999999,
            amsgrad: true,
            lr: 1e-2,
            ..Default::default()
        }
        .into(),
        NAdam {
            momentum_decay: 1e-4,
            lr: 1e-2,
            ..Default::default()
        }
        .into(),
        NAdam {
            beta2: 0.999999,
            momentum_decay: 0.0,
            decoupled_weight_decay: true,
            weight_decay: 0.1,
            ..Default::default()
        }
        .into(),
        RAdam {
            beta2: 0.999999,
            lr: 1e-2,
            ..Default::default()
        }
        .into(),
        Adamax {
            beta1: 0.999999,
            ..Default::default()
        }
        .into(),
    ];
    for config in configs {
        follow_reference(config.clone(), TrainingOptions::default(), 120, &[]);
        // Skippable steps: the host cannot know the device's step without reading it.
        follow_reference(
            config,
            TrainingOptions {
                grad_scaler: Some(GradScaler {
                    init_scale: 1024.0,
                    growth_interval: 5,
                    ..Default::default()
                }),
                ..Default::default()
            },
            120,
            &[3, 4, 40, 41, 42, 90],
        );
    }
}

#[test]
fn optimizers_that_torch_accepts_are_not_refused() {
    // These were refused by a fixed-length table of step factors.
    for (name, hyper) in [
        ("adam", r#"{"beta2": 0.999999}"#),
        ("adamw", r#"{"beta1": 0.9999999, "beta2": 0.99999999}"#),
        ("nadam", r#"{"momentum_decay": 1e-4}"#),
        ("nadam", r#"{"momentum_decay": 1e-9, "beta2": 0.9999999}"#),
        ("radam", r#"{"beta2": 0.9999999}"#),
        ("adamax", r#"{"beta1": 0.99999999}"#),
    ] {
        let config =
            OptimizerConfig::from_hyper(name, &serde_json::from_str(hyper).unwrap()).unwrap();
        let mut opt = Optimizer::builder(&context())
            .group(config, [vec![1.0f32, -2.0, 3.0]].iter())
            .build()
            .unwrap_or_else(|e| panic!("{name} {hyper}: {e}"));
        opt.step_with_grads(&[&[0.5, 0.25, -1.0]]).unwrap();
        let p = opt.read_param(TensorId(0)).unwrap();
        assert!(p.iter().all(|v| v.is_finite()), "{name} {hyper}: {p:?}");
        assert_ne!(p, [1.0, -2.0, 3.0], "{name} {hyper}");
    }
}

/// Long horizons: the GPU within 1e-5 of the float64 reference after every `check` steps.
fn long_horizon(config: OptimizerConfig, steps: usize) {
    let ctx = context();
    let label = format!("{config:?}");
    let params = start_params(7);
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), &params)
        .build()
        .unwrap();
    let mut reference =
        ReferenceGroup::new(config, params.iter().map(|p| to_f64(p)).collect()).unwrap();
    let mut rng = rng(8);
    let mut worst = 0.0f64;
    for step in 1..=steps {
        let grads = random_grads(&mut rng, 1.0);
        step_both(&mut opt, &mut reference, &grads);
        if step % 250 == 0 || step == steps {
            let error = param_error(&opt, &reference);
            worst = worst.max(error);
            assert!(
                error <= 1e-5,
                "{label}, step {step}: parameters off by {error:e}"
            );
        }
    }
    eprintln!("{label}: worst {worst:e} over {steps} steps");
}

#[test]
fn decoupled_decay_does_not_drift_over_thousands_of_steps() {
    for wd in [0.01, 0.5] {
        long_horizon(
            AdamW {
                beta2: 0.9999,
                weight_decay: wd,
                ..Default::default()
            }
            .into(),
            3000,
        );
    }
    long_horizon(
        NAdam {
            decoupled_weight_decay: true,
            weight_decay: 0.1,
            ..Default::default()
        }
        .into(),
        500,
    );
    long_horizon(
        Sgdw {
            momentum: 0.99,
            weight_decay: 0.1,
            lr: 1e-2,
            ..Default::default()
        }
        .into(),
        1000,
    );
}

#[test]
fn beta1_zero_keeps_the_gradient_itself_as_the_first_moment() {
    let ctx = context();
    // beta1 = 0 for the Adam family's first moment, alpha = 0 for centered RMSprop's mean.
    let mut configs: Vec<(OptimizerConfig, &str)> = ["adam", "adamw", "nadam", "radam", "adamax"]
        .iter()
        .map(|name| {
            let config =
                OptimizerConfig::from_hyper(name, &serde_json::json!({ "beta1": 0.0 })).unwrap();
            (config, "exp_avg")
        })
        .collect();
    configs.push((
        RmsProp {
            alpha: 0.0,
            centered: true,
            ..Default::default()
        }
        .into(),
        "grad_avg",
    ));
    for (config, state) in configs {
        let params = start_params(9);
        let mut opt = Optimizer::builder(&ctx)
            .group(config.clone(), &params)
            .build()
            .unwrap();
        let mut rng = rng(10);
        for _ in 0..3 {
            let grads = random_grads(&mut rng, 3.0);
            opt.step_with_grads(&grads.iter().map(Vec::as_slice).collect::<Vec<_>>())
                .unwrap();
            for (t, g) in grads.iter().enumerate() {
                let m = opt.read_state(TensorId(t), state).unwrap();
                assert!(
                    m.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{config:?}: {state} differs from the gradient"
                );
            }
        }
    }
}

#[test]
fn skip_nonfinite_skips_a_step_whole_and_reports_it() {
    let ctx = context();
    let params = start_params(11);
    let options = TrainingOptions {
        skip_nonfinite: true,
        ..Default::default()
    };
    let config: OptimizerConfig = Adam::default().into();
    let mut opt = Optimizer::builder(&ctx)
        .group_with(config.clone(), options.clone(), &params)
        .build()
        .unwrap();
    let mut reference =
        ReferenceGroup::with_options(config, options, params.iter().map(|p| to_f64(p)).collect())
            .unwrap();
    let mut rng = rng(12);
    step_both(&mut opt, &mut reference, &random_grads(&mut rng, 1.0));
    // Every parameter and state, to compare bit for bit.
    let snapshot = |opt: &Optimizer| -> Vec<Vec<f32>> {
        (0..SIZES.len())
            .flat_map(|t| {
                let t = TensorId(t);
                [
                    opt.read_param(t).unwrap(),
                    opt.read_state(t, "exp_avg").unwrap(),
                    opt.read_state(t, "exp_avg_sq").unwrap(),
                ]
            })
            .collect()
    };
    let before = snapshot(&opt);
    for bad in [f32::INFINITY, f32::NAN, f32::NEG_INFINITY] {
        let mut grads = random_grads(&mut rng, 1.0);
        grads[3][4098] = bad;
        step_both(&mut opt, &mut reference, &grads);
        let report = opt.step_report(GroupId(0)).unwrap();
        assert!(report.skipped && report.found_inf, "{bad}: {report:?}");
        assert_eq!(report.step, 1, "{bad}: the skipped step was counted");
        let after = snapshot(&opt);
        assert!(
            before
                .iter()
                .flatten()
                .zip(after.iter().flatten())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{bad}: a skipped step changed something"
        );
    }
    step_both(&mut opt, &mut reference, &random_grads(&mut rng, 1.0));
    let report = opt.step_report(GroupId(0)).unwrap();
    assert!(!report.skipped && report.step == 2 && report.skipped_steps == 3);
    assert_eq!(reference.last.skipped_steps, 3);
    assert!(param_error(&opt, &reference) <= 1e-6);
}

#[test]
fn a_wrong_number_of_gradients_says_what_was_expected_and_what_came() {
    let ctx = context();
    let mut opt = Optimizer::builder(&ctx)
        .group(Sgd::default(), [vec![1.0f32; 2], vec![1.0; 3]].iter())
        .build()
        .unwrap();
    let message = opt.step_with_grads(&[&[1.0, 2.0]]).unwrap_err().to_string();
    assert_eq!(
        message,
        "step_with_grads takes one gradient per tensor: this optimizer has 2 tensors, 1 gradient came"
    );
}
