//! The training step around the update, on the device: clipping by the global norm, loss
//! scaling with whole-step skips and a dynamic scale, schedules, and checkpoints that resume
//! bit for bit.

mod common;

use common::*;
use wgpu_optim::optim::{Adam, AdamW, NAdam, RAdam, Sgd};
use wgpu_optim::{
    Error, GradScaler, GroupId, Optimizer, OptimizerConfig, ReferenceGroup, Schedule, StepReport,
    TensorId, TrainingOptions,
};

const STEPS: usize = 14;
/// Iterations whose gradients get an infinity (two in a row, then one more).
const INF_AT: [usize; 3] = [4, 5, 9];

fn rel_l2(gpu: &[f32], reference: &[f64]) -> f64 {
    let (mut err, mut norm) = (0.0, 0.0);
    for (g, r) in gpu.iter().zip(reference) {
        err += (*g as f64 - r).powi(2);
        norm += r * r;
    }
    (err / norm).sqrt()
}

/// Runs `config` with clipping, a dynamic scaler and a schedule on the GPU and the reference,
/// gradients multiplied by the current loss scale, infinities in the iterations `inf_at`.
fn check(config: OptimizerConfig, seed: u64, inf_at: &[usize]) {
    let ctx = context();
    let label = format!("{config:?}");
    let mut rng = rng(seed);
    let sizes = [1usize, 5, 257, 4099];
    let params: Vec<Vec<f32>> = sizes.iter().map(|&n| params(&mut rng, n)).collect();
    let options = training_options();
    let mut opt = Optimizer::builder(&ctx)
        .group_with(config.clone(), options.clone(), &params)
        .max_segment_bytes(4096)
        .build()
        .unwrap();
    let mut reference = ReferenceGroup::with_options(
        config.clone(),
        options,
        params.iter().map(|p| to_f64(p)).collect(),
    )
    .unwrap();
    let group = GroupId(0);
    let mut scales = Vec::new();
    for k in 0..STEPS {
        // The unscaled gradients' norm is about 1.3: clipping to 1 bites.
        let scale = reference.loss_scale as f32;
        let mut grads: Vec<Vec<f32>> = params
            .iter()
            .map(|p| {
                grads(&mut rng, &vec![0.02; p.len()])
                    .iter()
                    .map(|g| g * scale)
                    .collect()
            })
            .collect();
        if inf_at.contains(&k) {
            grads[k % sizes.len()][0] = f32::INFINITY;
        }
        step_both(&mut opt, &mut reference, &grads);

        let gpu = opt.step_report(group).unwrap();
        let expected = reference.last;
        let what = format!("{label} iteration {k}");
        assert_eq!(gpu.step, expected.step, "{what}");
        assert_eq!(gpu.skipped, inf_at.contains(&k), "{what}");
        assert_eq!(
            (gpu.skipped, gpu.found_inf),
            (expected.skipped, expected.found_inf),
            "{what}"
        );
        assert_eq!(gpu.loss_scale, expected.loss_scale, "{what}");
        scales.push(gpu.loss_scale);
        assert_eq!(gpu.growth_tracker, expected.growth_tracker, "{what}");
        assert_eq!(gpu.skipped_steps, expected.skipped_steps, "{what}");
        if !gpu.found_inf {
            let norm_error = (gpu.grad_norm - expected.grad_norm).abs() / expected.grad_norm;
            assert!(
                norm_error < 1e-5,
                "{what}: norm {} vs {}",
                gpu.grad_norm,
                expected.grad_norm
            );
        }
        for t in 0..sizes.len() {
            let p = opt.read_param(TensorId(t)).unwrap();
            let err = rel_l2(&p, &reference.params[t]);
            assert!(err < 1e-5, "{what} tensor {t}: rel-L2 {err:e}");
        }
    }
    assert_eq!(opt.iterations(group).unwrap(), STEPS as u64);
    let report = opt.step_report(group).unwrap();
    assert_eq!(report.step, (STEPS - inf_at.len()) as u64);
    // Good steps grew the scale in threes, skips backed it off.
    assert!(
        scales.windows(2).any(|w| w[1] > w[0]) && scales.windows(2).any(|w| w[1] < w[0]),
        "{scales:?}"
    );
}

#[test]
fn adamw_with_clipping_loss_scaling_and_a_schedule_matches_the_reference() {
    check(
        AdamW {
            lr: 0.01,
            weight_decay: 0.1,
            amsgrad: true,
            ..Default::default()
        }
        .into(),
        1,
        &INF_AT,
    );
}

#[test]
fn sgd_momentum_skips_leave_the_first_step_to_the_first_applied_step() {
    // The first two iterations are skipped: SGD's first applied step, the third iteration,
    // must still start its momentum buffer from its own gradient.
    check(
        Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        }
        .into(),
        2,
        &[0, 1, 5, 9],
    );
}

#[test]
fn nadam_and_radam_follow_the_device_step_count_through_skips() {
    // Their step factors (momentum products, rectification) are looked up by the device's
    // step count, which skipped steps do not advance.
    check(
        NAdam {
            lr: 0.01,
            ..Default::default()
        }
        .into(),
        3,
        &INF_AT,
    );
    check(
        RAdam {
            lr: 0.01,
            ..Default::default()
        }
        .into(),
        4,
        &INF_AT,
    );
}

#[test]
fn the_norm_is_reported_without_clipping_it() {
    let ctx = context();
    let grads: Vec<f32> = vec![3.0, 4.0, 0.0, 0.0, 12.0];
    let mut opt = Optimizer::builder(&ctx)
        .group_with(
            Adam::default(),
            TrainingOptions {
                max_grad_norm: Some(1e9),
                ..Default::default()
            },
            [&vec![0.0f32; 5]],
        )
        .build()
        .unwrap();
    opt.step_with_grads(&[&grads]).unwrap();
    let report: StepReport = opt.step_report(GroupId(0)).unwrap();
    assert_eq!(report.grad_norm, 13.0);
    assert!(!report.skipped && report.step == 1 && report.loss_scale == 1.0);
}

#[test]
fn a_resumed_run_is_bit_identical_to_one_that_never_stopped() {
    let ctx = context();
    let mut rng = rng(99);
    let sizes = [[3usize, 1000], [17, 5]];
    let configs: [OptimizerConfig; 2] = [
        AdamW {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        }
        .into(),
        Sgd {
            lr: 0.05,
            momentum: 0.9,
            ..Default::default()
        }
        .into(),
    ];
    let params: Vec<Vec<Vec<f32>>> = sizes
        .iter()
        .map(|g| g.iter().map(|&n| params(&mut rng, n)).collect())
        .collect();
    let build = |params: &[Vec<Vec<f32>>]| {
        Optimizer::builder(&ctx)
            .group_with(configs[0].clone(), training_options(), &params[0])
            .group(configs[1].clone(), &params[1])
            .build()
            .unwrap()
    };
    let all_grads: Vec<Vec<Vec<f32>>> = (0..STEPS)
        .map(|k| {
            let mut g: Vec<Vec<f32>> = sizes
                .iter()
                .flatten()
                .map(|&n| grads(&mut rng, &vec![8.0; n]))
                .collect();
            if INF_AT.contains(&k) {
                g[1][7] = f32::NAN;
            }
            g
        })
        .collect();
    let step = |opt: &mut Optimizer, k: usize| {
        opt.step_with_grads(&all_grads[k].iter().map(Vec::as_slice).collect::<Vec<_>>())
            .unwrap();
    };
    let snapshot = |opt: &Optimizer| -> Vec<Vec<u32>> {
        let mut all = Vec::new();
        for t in 0..opt.num_tensors() {
            let t = TensorId(t);
            all.push(
                opt.read_param(t)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            );
            let names = opt.state_names(opt.group_of(t).unwrap()).unwrap();
            for name in names {
                all.push(
                    opt.read_state(t, name)
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect(),
                );
            }
        }
        all
    };
    let dir = std::env::temp_dir().join(format!("wgpu-optim-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.safetensors");

    let mut straight = build(&params);
    for k in 0..STEPS {
        step(&mut straight, k);
        if k == 6 {
            straight.save_checkpoint(&file).unwrap();
        }
    }

    // Another optimizer of the same shape, other parameters and hyperparameters: the
    // checkpoint brings back everything.
    let zeros: Vec<Vec<Vec<f32>>> = sizes
        .iter()
        .map(|g| g.iter().map(|&n| vec![0.0; n]).collect())
        .collect();
    let mut resumed = Optimizer::builder(&ctx)
        .group(
            AdamW {
                lr: 0.5,
                ..Default::default()
            },
            &zeros[0],
        )
        .group(
            Sgd {
                lr: 0.5,
                momentum: 0.1,
                ..Default::default()
            },
            &zeros[1],
        )
        .build()
        .unwrap();
    resumed.load_checkpoint(&file).unwrap();
    assert_eq!(resumed.iterations(GroupId(0)).unwrap(), 7);
    assert_eq!(
        resumed.training_options(GroupId(0)).unwrap(),
        &training_options()
    );
    for k in 7..STEPS {
        step(&mut resumed, k);
    }
    assert_eq!(snapshot(&resumed), snapshot(&straight));
    for g in 0..2 {
        assert_eq!(
            resumed.step_report(GroupId(g)).unwrap(),
            straight.step_report(GroupId(g)).unwrap()
        );
    }
    assert_eq!(resumed.config(GroupId(1)).unwrap(), &configs[1]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_or_mismatched_checkpoints_are_clear_errors_and_change_nothing() {
    let ctx = context();
    let dir = std::env::temp_dir().join(format!("wgpu-optim-bad-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let values = vec![0.5f32; 100];
    let mut saved = Optimizer::builder(&ctx)
        .group(Adam::default(), [&values])
        .build()
        .unwrap();
    saved.step_with_grads(&[&vec![0.1; 100]]).unwrap();
    let good = dir.join("good.safetensors");
    saved.save_checkpoint(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let other_values = vec![0.25f32; 100];
    let mut target = Optimizer::builder(&ctx)
        .group(Adam::default(), [&other_values])
        .build()
        .unwrap();
    let expect_error = |target: &mut Optimizer, path: &std::path::Path, needle: &str| {
        let err = target.load_checkpoint(path).unwrap_err();
        assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
        assert_eq!(
            target.read_param(TensorId(0)).unwrap(),
            other_values,
            "changed by a bad load"
        );
        assert_eq!(target.step_report(GroupId(0)).unwrap().step, 0);
    };

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 40]).unwrap();
    expect_error(&mut target, &truncated, "not a complete safetensors file");
    std::fs::write(&truncated, &bytes[..5]).unwrap();
    expect_error(&mut target, &truncated, "not a complete safetensors file");
    expect_error(
        &mut target,
        &dir.join("missing.safetensors"),
        "missing.safetensors",
    );

    let longer = vec![0.25f32; 101];
    let mut other_shape = Optimizer::builder(&ctx)
        .group(Adam::default(), [&longer])
        .build()
        .unwrap();
    let err = other_shape.load_checkpoint(&good).unwrap_err().to_string();
    assert!(err.contains("[100]") && err.contains("[101]"), "{err}");
    let mut other_kind = Optimizer::builder(&ctx)
        .group(Sgd::default(), [&other_values])
        .build()
        .unwrap();
    let err = other_kind.load_checkpoint(&good).unwrap_err().to_string();
    assert!(err.contains("adam") && err.contains("sgd"), "{err}");
    let mut amsgrad = Optimizer::builder(&ctx)
        .group(
            Adam {
                amsgrad: true,
                ..Default::default()
            },
            [&other_values],
        )
        .build()
        .unwrap();
    let err = amsgrad.load_checkpoint(&good).unwrap_err().to_string();
    assert!(err.contains("max_exp_avg_sq"), "{err}");

    // A plain safetensors file that is not a checkpoint.
    let plain = dir.join("plain.safetensors");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0, 0, 0, 0])
            .unwrap();
    safetensors::serialize_to_file([("x", view)], None, &plain).unwrap();
    expect_error(&mut target, &plain, "not a wgpu-optim checkpoint");

    target.load_checkpoint(&good).unwrap();
    assert_eq!(
        target.read_param(TensorId(0)).unwrap(),
        saved.read_param(TensorId(0)).unwrap()
    );
    assert_eq!(target.step_report(GroupId(0)).unwrap().step, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_training_options_are_rejected_and_change_nothing() {
    let ctx = context();
    let values = vec![1.0f32; 8];
    for bad in [
        TrainingOptions {
            max_grad_norm: Some(0.0),
            ..Default::default()
        },
        TrainingOptions {
            max_grad_norm: Some(f64::NAN),
            ..Default::default()
        },
        TrainingOptions {
            grad_scaler: Some(GradScaler {
                init_scale: 0.0,
                ..Default::default()
            }),
            ..Default::default()
        },
        TrainingOptions {
            grad_scaler: Some(GradScaler {
                backoff_factor: 1.5,
                ..Default::default()
            }),
            ..Default::default()
        },
        TrainingOptions {
            grad_scaler: Some(GradScaler {
                growth_interval: 0,
                ..Default::default()
            }),
            ..Default::default()
        },
        TrainingOptions {
            schedule: Some(Schedule::Step {
                step_size: 0,
                gamma: 0.5,
            }),
            ..Default::default()
        },
    ] {
        let label = format!("{bad:?}");
        assert!(
            Optimizer::builder(&ctx)
                .group_with(Adam::default(), bad.clone(), [&values])
                .build()
                .is_err(),
            "{label}"
        );
        let mut opt = Optimizer::builder(&ctx)
            .group(Adam::default(), [&values])
            .build()
            .unwrap();
        assert!(
            matches!(
                opt.set_training_options(GroupId(0), bad),
                Err(Error::InvalidConfig { .. })
            ),
            "{label}"
        );
        assert_eq!(
            opt.training_options(GroupId(0)).unwrap(),
            &TrainingOptions::default()
        );
    }
}
