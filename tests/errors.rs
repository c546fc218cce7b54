//! Bad input gets one clear error and changes nothing.

mod common;

use common::*;
use wgpu_optim::engine::ExternalTensor;
use wgpu_optim::optim::*;
use wgpu_optim::{
    ContextOptions, Error, GpuContext, GroupId, Optimizer, OptimizerConfig, ReferenceGroup, Role,
    TensorId,
};

/// Asserts that building an optimizer with `config` fails on hyperparameter `name`.
fn rejects(config: impl Into<OptimizerConfig>, name: &str) {
    let config = config.into();
    let label = format!("{config:?}");
    let values = vec![1.0f32; 8];
    let err = match Optimizer::builder(&context())
        .group(config, [&values])
        .build()
    {
        Ok(_) => panic!("{label} was accepted"),
        Err(e) => e,
    };
    match &err {
        Error::InvalidHyperparameter { name: n, .. } => assert_eq!(*n, name, "{label}: {err}"),
        Error::InvalidConfig { reason, .. } => assert!(reason.contains(name), "{label}: {err}"),
        other => panic!("{label}: unexpected error {other}"),
    }
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn negative_nan_and_infinite_learning_rates_are_rejected() {
    for name in OPTIMIZER_NAMES {
        for lr in [-1e-3, f64::NAN, f64::INFINITY] {
            let mut config = OptimizerConfig::default_for(name).unwrap();
            config.set_lr(lr);
            rejects(config, "lr");
        }
    }
}

#[test]
fn negative_and_nan_eps_and_weight_decay_are_rejected() {
    for bad in [-1e-8, f64::NAN] {
        rejects(
            Adam {
                eps: bad,
                ..Default::default()
            },
            "eps",
        );
        rejects(
            AdamW {
                eps: bad,
                ..Default::default()
            },
            "eps",
        );
        rejects(
            NAdam {
                eps: bad,
                ..Default::default()
            },
            "eps",
        );
        rejects(
            RAdam {
                eps: bad,
                ..Default::default()
            },
            "eps",
        );
        rejects(
            Adamax {
                eps: bad,
                ..Default::default()
            },
            "eps",
        );
        rejects(
            Adagrad {
                eps: bad,
                ..Default::default()
            },
            "eps",
        );
        rejects(
            RmsProp {
                eps: bad,
                ..Default::default()
            },
            "eps",
        );
        rejects(
            Adadelta {
                eps: bad,
                ..Default::default()
            },
            "eps",
        );
        rejects(
            Sgd {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            Sgdw {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            Adam {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            AdamW {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            Adagrad {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            RmsProp {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            Adadelta {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            NAdam {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            RAdam {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            Adamax {
                weight_decay: bad,
                ..Default::default()
            },
            "weight_decay",
        );
        rejects(
            Sgd {
                momentum: bad,
                ..Default::default()
            },
            "momentum",
        );
        rejects(
            RmsProp {
                momentum: bad,
                ..Default::default()
            },
            "momentum",
        );
        rejects(
            Adagrad {
                lr_decay: bad,
                ..Default::default()
            },
            "lr_decay",
        );
        rejects(
            Adagrad {
                initial_accumulator_value: bad,
                ..Default::default()
            },
            "initial_accumulator_value",
        );
        rejects(
            NAdam {
                momentum_decay: bad,
                ..Default::default()
            },
            "momentum_decay",
        );
    }
}

#[test]
fn betas_rho_and_alpha_outside_the_unit_interval_are_rejected() {
    for bad in [1.0, 1.5, -0.1, f64::NAN] {
        rejects(
            Adam {
                beta1: bad,
                ..Default::default()
            },
            "beta1",
        );
        rejects(
            Adam {
                beta2: bad,
                ..Default::default()
            },
            "beta2",
        );
        rejects(
            AdamW {
                beta1: bad,
                ..Default::default()
            },
            "beta1",
        );
        rejects(
            AdamW {
                beta2: bad,
                ..Default::default()
            },
            "beta2",
        );
        rejects(
            NAdam {
                beta2: bad,
                ..Default::default()
            },
            "beta2",
        );
        rejects(
            RAdam {
                beta1: bad,
                ..Default::default()
            },
            "beta1",
        );
        rejects(
            Adamax {
                beta2: bad,
                ..Default::default()
            },
            "beta2",
        );
    }
    // As torch: Adadelta's rho may be 1, RMSprop's alpha anything >= 0, SGD's dampening
    // anything finite; below, above or not a number is refused.
    for bad in [1.5, -0.1, f64::NAN] {
        rejects(
            Adadelta {
                rho: bad,
                ..Default::default()
            },
            "rho",
        );
    }
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        rejects(
            RmsProp {
                alpha: bad,
                ..Default::default()
            },
            "alpha",
        );
        rejects(
            Sgd {
                dampening: if bad < 0.0 { f64::NEG_INFINITY } else { bad },
                momentum: 0.9,
                ..Default::default()
            },
            "dampening",
        );
    }
}

#[test]
fn edges_torch_accepts_are_accepted_and_step() {
    let ctx = common::context();
    let configs: Vec<OptimizerConfig> = vec![
        Adadelta {
            rho: 1.0,
            ..Default::default()
        }
        .into(),
        RmsProp {
            alpha: 1.0,
            ..Default::default()
        }
        .into(),
        RmsProp {
            alpha: 1.5,
            centered: true,
            ..Default::default()
        }
        .into(),
        Sgd {
            momentum: 0.9,
            dampening: -0.5,
            ..Default::default()
        }
        .into(),
        Sgd {
            momentum: 0.9,
            dampening: 2.0,
            ..Default::default()
        }
        .into(),
    ];
    for config in configs {
        let params = vec![vec![1.0f32, -2.0, 0.5]];
        let mut opt = Optimizer::builder(&ctx)
            .group(config.clone(), &params)
            .build()
            .unwrap_or_else(|e| panic!("{config:?}: {e}"));
        let mut reference =
            ReferenceGroup::new(config.clone(), vec![vec![1.0, -2.0, 0.5]]).unwrap();
        for step in 0..3 {
            let grads = vec![vec![0.25f32 * (step as f32 + 1.0), -0.5, 0.125]];
            common::step_both(&mut opt, &mut reference, &grads);
        }
        let gpu = opt.read_param(TensorId(0)).unwrap();
        for (g, r) in gpu.iter().zip(&reference.params[0]) {
            assert!(
                (*g as f64 - r).abs() <= 1e-5 * r.abs().max(1.0),
                "{config:?}: {gpu:?} against {:?}",
                reference.params[0]
            );
        }
    }
}

#[test]
fn nesterov_needs_momentum_and_no_dampening() {
    rejects(
        Sgd {
            nesterov: true,
            momentum: 0.0,
            ..Default::default()
        },
        "nesterov",
    );
    rejects(
        Sgd {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..Default::default()
        },
        "nesterov",
    );
    rejects(
        Sgdw {
            nesterov: true,
            momentum: 0.0,
            ..Default::default()
        },
        "nesterov",
    );
}

#[test]
fn empty_optimizers_and_groups_are_rejected() {
    let ctx = context();
    assert!(matches!(
        Optimizer::builder(&ctx).build(),
        Err(Error::Empty(_))
    ));
    let none: [&Vec<f32>; 0] = [];
    assert!(matches!(
        Optimizer::builder(&ctx)
            .group(Adam::default(), none)
            .build(),
        Err(Error::Empty(_))
    ));
    let empty = Vec::<f32>::new();
    assert!(matches!(
        Optimizer::builder(&ctx)
            .group(Adam::default(), [&empty])
            .build(),
        Err(Error::Empty(_))
    ));
}

/// An optimizer of three tensors with a first step applied.
fn three_tensors() -> (Optimizer, Vec<Vec<f32>>, Vec<Vec<f32>>, ReferenceGroup) {
    let ctx = context();
    let mut rng = rng(5);
    let params: Vec<Vec<f32>> = [7usize, 1, 300]
        .iter()
        .map(|&n| params(&mut rng, n))
        .collect();
    let config = AdamW {
        lr: 0.01,
        ..Default::default()
    };
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), &params)
        .build()
        .unwrap();
    let mut reference =
        ReferenceGroup::new(config.into(), params.iter().map(|p| to_f64(p)).collect()).unwrap();
    let grads: Vec<Vec<f32>> = params
        .iter()
        .map(|p| grads(&mut rng, &vec![1.0; p.len()]))
        .collect();
    step_both(&mut opt, &mut reference, &grads);
    let after: Vec<Vec<f32>> = (0..3)
        .map(|t| opt.read_param(TensorId(t)).unwrap())
        .collect();
    (opt, after, grads, reference)
}

fn assert_unchanged(opt: &Optimizer, params: &[Vec<f32>], grads: &[Vec<f32>], steps: u64) {
    for t in 0..params.len() {
        assert_eq!(
            opt.read_param(TensorId(t)).unwrap(),
            params[t],
            "tensor {t} params changed"
        );
        assert_eq!(
            opt.read_grad(TensorId(t)).unwrap(),
            grads[t],
            "tensor {t} grads changed"
        );
    }
    assert_eq!(opt.step_report(GroupId(0)).unwrap().step, steps);
}

#[test]
fn a_gradient_of_the_wrong_length_changes_nothing() {
    let (mut opt, params, grads, _) = three_tensors();
    // The first gradient is fine, the second too short: nothing may be written, not even the first.
    let err = opt
        .step_with_grads(&[&[9.0; 7], &[], &[9.0; 300]])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                tensor: 1,
                expected: 1,
                got: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("tensor 1"), "{err}");
    assert_unchanged(&opt, &params, &grads, 1);
    let err = opt.step_with_grads(&[&[9.0; 7], &[9.0]]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongCount {
                expected: 3,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_unchanged(&opt, &params, &grads, 1);
    assert!(opt.write_grad(TensorId(2), &vec![9.0; 301]).is_err());
    assert!(opt.write_param(TensorId(0), &[9.0; 6]).is_err());
    assert!(opt.write_state(TensorId(0), "exp_avg", &[9.0; 8]).is_err());
    assert!(
        opt.write(TensorId(2), Role::Grad, 299, &[9.0, 9.0])
            .is_err()
    );
    assert!(opt.read(TensorId(2), Role::Param, 10..301).is_err());
    assert_unchanged(&opt, &params, &grads, 1);
}

#[test]
fn bad_hyperparameter_updates_change_nothing() {
    let (mut opt, params, grads, mut reference) = three_tensors();
    assert!(matches!(
        opt.set_lr(GroupId(0), -0.5),
        Err(Error::InvalidHyperparameter { name: "lr", .. })
    ));
    assert!(opt.set_lr(GroupId(0), f64::NAN).is_err());
    assert!(
        opt.set_config(
            GroupId(0),
            AdamW {
                beta1: 1.0,
                ..Default::default()
            }
        )
        .is_err()
    );
    // Another optimizer, or one needing another state, cannot replace the group's.
    let err = opt.set_config(GroupId(0), Adam::default()).unwrap_err();
    assert!(err.to_string().contains("adamw"), "{err}");
    let err = opt
        .set_config(
            GroupId(0),
            AdamW {
                amsgrad: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("max_exp_avg_sq"), "{err}");
    assert!(opt.set_lr(GroupId(3), 0.1).is_err());
    assert_unchanged(&opt, &params, &grads, 1);
    assert_eq!(opt.config(GroupId(0)).unwrap().lr(), 0.01);

    // The next step uses the old hyperparameters.
    opt.step().unwrap();
    reference
        .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
        .unwrap();
    for t in 0..3 {
        let gpu = opt.read_param(TensorId(t)).unwrap();
        let scale = vec![1.0; gpu.len()];
        compare(
            "after rejected updates",
            &gpu,
            &reference.params[t],
            &scale,
            &vec![0.0; gpu.len()],
            1e-6,
        )
        .unwrap();
    }
}

#[test]
fn unknown_tensors_groups_and_states_are_clear_errors() {
    let (opt, ..) = three_tensors();
    let err = opt.read_param(TensorId(3)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownHandle {
                what: "tensor",
                index: 3,
                count: 3
            }
        ),
        "{err}"
    );
    assert!(opt.config(GroupId(1)).is_err());
    let err = opt
        .read_state(TensorId(0), "momentum_buffer")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("momentum_buffer") && err.contains("exp_avg, exp_avg_sq"),
        "{err}"
    );
    // A state the kernel has a slot for but this configuration does not keep.
    let err = opt.read_state(TensorId(0), "max_exp_avg_sq").unwrap_err();
    assert!(matches!(err, Error::UnknownState { .. }), "{err}");
}

fn storage(ctx: &GpuContext, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's buffer"),
        size: bytes,
        usage,
        mapped_at_creation: false,
    })
}

const FULL: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

fn build_external(ctx: &GpuContext, tensor: ExternalTensor) -> Result<Optimizer, Error> {
    let arena = vec![1.0f32; 16];
    Optimizer::builder(ctx)
        .group(
            Adam::default(),
            [wgpu_optim::TensorInit::Values(&arena), tensor.into()],
        )
        .build()
}

#[test]
fn caller_buffers_without_storage_usage_are_rejected() {
    let ctx = context();
    let good = storage(&ctx, 256, FULL);
    let no_storage = storage(
        &ctx,
        256,
        wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    );
    let err = build_external(&ctx, ExternalTensor::new(&no_storage, &good, 64)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadBuffer {
                role: "parameters",
                tensor: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("STORAGE"), "{err}");
    let err = build_external(&ctx, ExternalTensor::new(&good, &no_storage, 64)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadBuffer {
                role: "gradients",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn caller_buffers_too_small_misaligned_or_aliased_are_rejected() {
    let ctx = context();
    let param = storage(&ctx, 256, FULL);
    let grad = storage(&ctx, 256, FULL);
    let err = build_external(&ctx, ExternalTensor::new(&param, &grad, 65)).unwrap_err();
    assert!(err.to_string().contains("256 bytes"), "{err}");
    let mut misaligned = ExternalTensor::new(&param, &grad, 8);
    misaligned.param_offset = 4;
    let err = build_external(&ctx, misaligned).unwrap_err();
    assert!(
        err.to_string()
            .contains("min_storage_buffer_offset_alignment"),
        "{err}"
    );
    let err = build_external(&ctx, ExternalTensor::new(&param, &param, 8)).unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
}

#[test]
fn caller_buffers_from_another_device_are_rejected() {
    let ctx = context();
    let other = GpuContext::new(&ContextOptions::default()).unwrap();
    let foreign = storage(&other, 256, FULL);
    let ours = storage(&ctx, 256, FULL);
    let err = build_external(&ctx, ExternalTensor::new(&foreign, &ours, 64)).unwrap_err();
    assert!(matches!(err, Error::BadBuffer { tensor: 1, .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("device"), "{err}");
}

#[test]
fn reading_a_caller_buffer_without_copy_usage_is_a_clear_error() {
    let ctx = context();
    let param = storage(&ctx, 256, wgpu::BufferUsages::STORAGE);
    let grad = storage(&ctx, 256, wgpu::BufferUsages::STORAGE);
    let mut opt = build_external(&ctx, ExternalTensor::new(&param, &grad, 64)).unwrap();
    let err = opt.read_param(TensorId(1)).unwrap_err();
    assert!(err.to_string().contains("COPY_SRC"), "{err}");
    let err = opt.write_grad(TensorId(1), &[0.5; 64]).unwrap_err();
    assert!(err.to_string().contains("COPY_DST"), "{err}");
    // The optimizer still steps, and its own states read back.
    opt.step().unwrap();
    assert_eq!(
        opt.read_state(TensorId(1), "exp_avg").unwrap(),
        vec![0.0; 64]
    );
}

#[test]
fn no_adapter_names_the_package_to_install() {
    let err = GpuContext::new(&ContextOptions {
        backends: Some(wgpu::Backends::empty()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("mesa-vulkan-drivers"), "{err}");
    let err = GpuContext::new(&ContextOptions {
        adapter_name: Some("no such adapter".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no such adapter") && err.contains("llvmpipe"),
        "{err}"
    );
}
