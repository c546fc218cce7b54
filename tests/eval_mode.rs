//! Evaluation mode (Schedule-Free AdamW's `eval()` and `train()`): the swap of the parameters
//! between the training point y and the average x, on the device, against the reference's swap,
//! in every kind of storage; and what a group in evaluation mode refuses.

mod common;

use common::*;
use wgpu_optim::optim::{AdamW, ScheduleFreeAdamW};
use wgpu_optim::{
    Format, GroupId, Optimizer, OptimizerConfig, ReferenceGroup, Role, Storage, TensorId,
    TrainingOptions, UpdateRule,
};

const SIZES: [usize; 5] = [1, 3, 257, 4_099, 65_537];

fn config() -> OptimizerConfig {
    ScheduleFreeAdamW {
        lr: 0.01,
        warmup_steps: 3,
        weight_decay: 0.01,
        ..Default::default()
    }
    .into()
}

/// The GPU group's parameters (the master with master weights), Kahan compensation and
/// states, copied into the reference, so that both go on from the same values.
fn sync(opt: &Optimizer, reference: &mut ReferenceGroup, storage: &Storage) {
    let names = opt.state_names(GroupId(0)).unwrap();
    let slots: Vec<usize> = names
        .iter()
        .map(|n| {
            reference
                .config
                .kernel()
                .state_names()
                .position(|s| s == *n)
                .unwrap()
        })
        .collect();
    for t in 0..SIZES.len() {
        let id = TensorId(t);
        let len = opt.tensor_len(id).unwrap();
        let role = if storage.master_weights {
            Role::Master
        } else {
            Role::Param
        };
        reference.params[t] = to_f64(&opt.read(id, role, 0..len).unwrap());
        if storage.kahan() {
            reference.compensation[t] = to_f64(&opt.read(id, Role::Compensation, 0..len).unwrap());
        }
        for (name, &slot) in names.iter().zip(&slots) {
            reference.states[t][slot] = to_f64(&opt.read_state(id, name).unwrap());
        }
    }
}

/// The GPU's parameters against the reference's: the same computation from the same values,
/// float32 against float64 arithmetic, then the storage's rounding (one unit apart where the
/// two straddle a rounding boundary).
fn compare(opt: &Optimizer, reference: &ReferenceGroup, storage: &Storage, what: &str) {
    let format = if storage.master_weights {
        Format::F32
    } else {
        storage.param
    };
    let role = if storage.master_weights {
        Role::Master
    } else {
        Role::Param
    };
    for (t, expected) in reference.params.iter().enumerate() {
        let id = TensorId(t);
        let gpu = opt.read(id, role, 0..expected.len() as u64).unwrap();
        let largest = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &c)) in gpu.iter().zip(expected).enumerate() {
            let bound = ulp(format, c) + 4.0 * ulp(Format::F32, largest);
            assert!(
                (g as f64 - c).abs() <= bound,
                "{} {what}: tensor {t}[{i}] gpu {g:e}, reference {c:e}",
                storage.label()
            );
        }
        if storage.master_weights {
            // The model's copy is the master rounded.
            let model = opt.read_param(id).unwrap();
            for (m, g) in model.iter().zip(&gpu) {
                assert_eq!(m.to_bits(), storage.param.round(*g).to_bits());
            }
        }
    }
}

#[test]
fn eval_and_train_move_the_parameters_as_the_reference_does_in_every_storage() {
    let ctx = context();
    for (s, label) in [
        "f32",
        "bf16",
        "bf16-sr5",
        "bf16-kahan",
        "bf16-master",
        "f16+bf16",
        "bf16+q8",
        "f32+q8,exp_avg_sq=f32",
    ]
    .into_iter()
    .enumerate()
    {
        let storage = Storage::parse(label).unwrap();
        let mut rng = rng(300 + s as u64);
        let params = stored_params(&mut rng, &SIZES, storage.param);
        let scales: Vec<Vec<f32>> = SIZES.iter().map(|&n| grad_scales(&mut rng, n)).collect();
        let mut opt = Optimizer::builder(&ctx)
            .group_stored(config(), storage, TrainingOptions::default(), &params)
            .max_segment_bytes(1028 * 4)
            .build()
            .unwrap();
        let mut reference =
            stored_reference(config(), TrainingOptions::default(), storage, &params);
        reference.positions = opt.rounding_positions(GroupId(0)).unwrap();
        let group = GroupId(0);
        for round in 0..2 {
            for _ in 0..4 {
                let grads: Vec<Vec<f32>> = scales.iter().map(|s| grads(&mut rng, s)).collect();
                let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
                opt.step_with_grads(&refs).unwrap();
                reference
                    .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
                    .unwrap();
            }
            if round == 0 && storage.is_f32() {
                // Before the first swap, the float32 trajectory itself (tests/storage.rs
                // follows the others' step by step).
                compare(&opt, &reference, &storage, "after the steps");
            }
            sync(&opt, &mut reference, &storage);
            let y = reference.params.clone();
            let states = reference.states.clone();
            opt.eval_mode(group).unwrap();
            // The swap reads the states and leaves them bit for bit (q8 blocks are not
            // quantized again: that would not be the identity).
            let mut after = reference.clone();
            sync(&opt, &mut after, &storage);
            assert!(after.states == states, "{label}: the swap changed a state");
            assert!(opt.is_eval_mode(group).unwrap());
            reference.swap_mode(true).unwrap();
            compare(&opt, &reference, &storage, "in evaluation mode");
            // x differs from y: the swap did something.
            let moved = reference.params[4]
                .iter()
                .zip(&y[4])
                .filter(|(x, y)| x != y)
                .count();
            // (Stored to nearest in 16 bits, most of a small move is rounded away, as in torch.)
            let expected = if storage.param == Format::F32 || storage.master_weights {
                SIZES[4] / 2
            } else {
                SIZES[4] / 50
            };
            assert!(moved > expected, "{label}: only {moved} moved");
            // Evaluation mode twice: nothing more happens.
            let before = opt.read_param(TensorId(4)).unwrap();
            opt.eval_mode(group).unwrap();
            assert_eq!(opt.read_param(TensorId(4)).unwrap(), before);
            sync(&opt, &mut reference, &storage);
            opt.train_mode(group).unwrap();
            assert!(!opt.is_eval_mode(group).unwrap());
            reference.swap_mode(false).unwrap();
            compare(&opt, &reference, &storage, "back in training mode");
            // Back at y, but for the two swaps' rounding.
            let back = opt
                .read(
                    TensorId(4),
                    if storage.master_weights {
                        Role::Master
                    } else {
                        Role::Param
                    },
                    0..SIZES[4] as u64,
                )
                .unwrap();
            let format = if storage.master_weights {
                Format::F32
            } else {
                storage.param
            };
            // (Each swap rounds at the scale of the values it mixes: y, z and x.)
            let largest = y[4].iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (b, y) in back.iter().zip(&y[4]) {
                assert!(
                    (*b as f64 - y).abs() <= 4.0 * ulp(format, largest),
                    "{label}: {b:e} is not y {y:e} again"
                );
            }
        }
    }
}

#[test]
fn evaluation_mode_refuses_steps_and_checkpoints_and_changes_nothing_then() {
    let ctx = context();
    let params = vec![vec![0.25f32, -0.5, 0.75, 1.0, -1.25]];
    let mut opt = Optimizer::builder(&ctx)
        .group(config(), &params)
        .build()
        .unwrap();
    let group = GroupId(0);
    // Before the first step there is no average: the parameters stay.
    opt.eval_mode(group).unwrap();
    assert_eq!(opt.read_param(TensorId(0)).unwrap(), params[0]);
    opt.train_mode(group).unwrap();
    let grads = [0.1f32, -0.2, 0.3, -0.4, 0.5];
    opt.step_with_grads(&[&grads]).unwrap();
    opt.step_with_grads(&[&grads]).unwrap();
    let y = opt.read_param(TensorId(0)).unwrap();
    let state = opt.read_state(TensorId(0), "exp_avg_sq").unwrap();
    opt.eval_mode(group).unwrap();
    let x = opt.read_param(TensorId(0)).unwrap();
    assert_ne!(x, y);
    opt.write_grad(TensorId(0), &[9.0; 5]).unwrap();
    for e in [
        opt.step().unwrap_err(),
        opt.step_with_grads(&[&[7.0; 5]]).unwrap_err(),
        opt.save_checkpoint_bytes().unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(
            e.contains("evaluation mode") && e.contains("train_mode"),
            "{e}"
        );
    }
    // Nothing moved: not the parameters, not the states, not the gradients step_with_grads
    // would have written.
    assert_eq!(opt.read_param(TensorId(0)).unwrap(), x);
    assert_eq!(opt.read_state(TensorId(0), "exp_avg_sq").unwrap(), state);
    assert_eq!(opt.read_grad(TensorId(0)).unwrap(), vec![9.0; 5]);
    assert_eq!(opt.step_report(group).unwrap().step, 2);
    opt.train_mode(group).unwrap();
    let saved = opt.save_checkpoint_bytes().unwrap();
    // Loading a checkpoint (the training point) leaves evaluation mode.
    opt.eval_mode(group).unwrap();
    opt.load_checkpoint_bytes(&saved).unwrap();
    assert!(!opt.is_eval_mode(group).unwrap());
    opt.step().unwrap();

    // An optimizer whose parameters are the same for training and evaluation has no such mode.
    let mut adamw = Optimizer::builder(&ctx)
        .group(AdamW::default(), &params)
        .build()
        .unwrap();
    let e = adamw.eval_mode(group).unwrap_err().to_string();
    assert!(e.contains("adamw has no evaluation mode"), "{e}");
    assert!(!adamw.is_eval_mode(group).unwrap());
}

#[test]
fn z_starts_as_the_parameters_of_the_first_step() {
    // schedulefree creates z at the first step from the parameters then: values written after
    // the group was built count, as do skipped steps before it.
    let ctx = context();
    let built = vec![vec![0.0f32; 300]];
    let mut rng = rng(5);
    let written = params(&mut rng, 300);
    let mut opt = Optimizer::builder(&ctx)
        .group(config(), &built)
        .build()
        .unwrap();
    opt.write_param(TensorId(0), &written).unwrap();
    let mut reference = ReferenceGroup::new(config(), vec![to_f64(&written)]).unwrap();
    let scales = grad_scales(&mut rng, 300);
    for _ in 0..3 {
        let g = grads(&mut rng, &scales);
        opt.step_with_grads(&[&g]).unwrap();
        reference.step(&[to_f64(&g)]).unwrap();
    }
    let z = opt.read_state(TensorId(0), "z").unwrap();
    let expected = reference.state(0, "z").unwrap();
    let largest = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (g, c) in z.iter().zip(expected) {
        assert!((*g as f64 - c).abs() <= 1e-5 * largest, "{g} {c}");
    }
    // Not the values it was built with (zeros): z would then lag far behind.
    assert!(largest > 0.5);
}
