//! Scale: lowered device limits that force many segments, random data generated on the GPU,
//! GPT-2's 148 tensors in a fixed number of dispatches, and steps that allocate nothing.

mod common;

use common::*;
use wgpu_optim::fill::RandomFill;
use wgpu_optim::optim::{AdamW, RmsProp, Sgd};
use wgpu_optim::{GroupId, Optimizer, OptimizerConfig, ReferenceGroup, Role, TensorId, TensorInit};

/// GPT-2 small's parameter shapes, as `torch_baseline.py` lists them: 148 tensors.
fn gpt2_lens() -> Vec<u64> {
    wgpu_optim::tools::bench::gpt2_small_shapes()
        .iter()
        .map(|s| s.iter().product())
        .collect()
}

#[test]
fn gpu_random_fill_matches_its_cpu_mirror_bit_for_bit() {
    let ctx = context();
    let lens: Vec<u64> = AWKWARD_SIZES.iter().map(|&n| n as u64).collect();
    let inits: Vec<TensorInit> = lens.iter().map(|&n| TensorInit::Zeros(n)).collect();
    let mut opt = Optimizer::builder(&ctx)
        .group(AdamW::default(), inits)
        .max_segment_bytes(4096)
        .build()
        .unwrap();
    for (t, &len) in lens.iter().enumerate() {
        let fill = RandomFill {
            seed: t as u32,
            offset: 0.5,
            scale: 0.25,
        };
        opt.fill_random(TensorId(t), Role::Param, 0..len, &fill)
            .unwrap();
        // A sub-range of the gradient: element j still gets value(j).
        let sub = len / 3..len;
        opt.fill_random(TensorId(t), Role::Grad, sub.clone(), &fill)
            .unwrap();
        let params = opt.read_param(TensorId(t)).unwrap();
        for (j, v) in params.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                fill.value(j as u64).to_bits(),
                "tensor {t} element {j}"
            );
        }
        let grads = opt.read_grad(TensorId(t)).unwrap();
        for (j, v) in grads.iter().enumerate() {
            let expected = if sub.contains(&(j as u64)) {
                fill.value(j as u64)
            } else {
                0.0
            };
            assert_eq!(v.to_bits(), expected.to_bits(), "tensor {t} grad {j}");
        }
    }
    assert!(
        opt.fill_random(
            TensorId(0),
            Role::Param,
            0..1,
            &RandomFill::symmetric(1, 0.3)
        )
        .is_err()
    );
}

#[test]
fn lowered_device_limits_split_every_role_into_many_segments() {
    // 64 KiB per binding and per buffer: the awkward sizes cross dozens of segment buffers.
    const LIMIT: u64 = 64 << 10;
    let ctx = context_with_binding_limit(LIMIT as u32);
    assert_eq!(ctx.max_binding_bytes(), LIMIT);
    let configs: [OptimizerConfig; 3] = [
        // beta2 = 0.99: its bias-correction table (about 2,000 rows) fits a 64 KiB binding.
        AdamW {
            lr: 0.01,
            beta2: 0.99,
            weight_decay: 0.1,
            amsgrad: true,
            ..Default::default()
        }
        .into(),
        Sgd {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        }
        .into(),
        RmsProp {
            lr: 0.01,
            centered: true,
            momentum: 0.5,
            ..Default::default()
        }
        .into(),
    ];
    let mut rng = rng(21);
    let sizes = &AWKWARD_SIZES;
    for config in configs {
        let params: Vec<Vec<f32>> = sizes.iter().map(|&n| params(&mut rng, n)).collect();
        let mut opt = Optimizer::builder(&ctx)
            .group(config.clone(), &params)
            .build()
            .unwrap();
        let total: u64 = sizes.iter().map(|&n| (n as u64).next_multiple_of(4)).sum();
        assert_eq!(
            opt.num_segments(GroupId(0)).unwrap() as u64,
            (total * 4).div_ceil(LIMIT)
        );
        assert!(opt.num_segments(GroupId(0)).unwrap() > 60);
        let mut reference =
            ReferenceGroup::new(config.clone(), params.iter().map(|p| to_f64(p)).collect())
                .unwrap();
        for _ in 0..5 {
            let grads: Vec<Vec<f32>> = params
                .iter()
                .map(|p| grads(&mut rng, &vec![1.0; p.len()]))
                .collect();
            step_both(&mut opt, &mut reference, &grads);
        }
        for (t, expected) in reference.params.iter().enumerate() {
            let gpu = opt.read_param(TensorId(t)).unwrap();
            let scale = vec![2.0; gpu.len()];
            compare(
                &format!("{config:?} tensor {t}"),
                &gpu,
                expected,
                &scale,
                &vec![0.0; gpu.len()],
                1e-5,
            )
            .unwrap();
        }
    }
}

#[test]
fn a_device_that_binds_little_slides_a_shorter_factor_window() {
    // 4 KiB bindings hold 255 rows of step factors; AdamW's converge after ~21,000 steps.
    let ctx = context_with_binding_limit(4096);
    let config: OptimizerConfig = AdamW {
        beta2: 0.9999,
        ..Default::default()
    }
    .into();
    let mut rng = rng(31);
    let params = vec![params(&mut rng, 16)];
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), &params)
        .build()
        .unwrap();
    let mut reference = ReferenceGroup::new(config, vec![to_f64(&params[0])]).unwrap();
    for _ in 0..600 {
        let grads = vec![grads(&mut rng, &[1.0; 16])];
        step_both(&mut opt, &mut reference, &grads);
    }
    compare(
        "AdamW after 600 steps through a 255-row window",
        &opt.read_param(TensorId(0)).unwrap(),
        &reference.params[0],
        &[2.0; 16],
        &[0.0; 16],
        1e-5,
    )
    .unwrap();
}

#[test]
fn gpt2_small_steps_in_as_many_dispatches_as_one_tensor_of_its_size() {
    let ctx = context();
    let lens = gpt2_lens();
    assert_eq!(lens.len(), 148);
    let total: u64 = lens.iter().sum();
    assert_eq!(total, 124_439_808);
    let config = AdamW {
        lr: 1e-3,
        weight_decay: 0.01,
        ..Default::default()
    };
    let inits: Vec<TensorInit> = lens.iter().map(|&n| TensorInit::Zeros(n)).collect();
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), inits)
        .build()
        .unwrap();
    let segment = ctx.max_binding_bytes() / 16 * 16;
    let padded: u64 = lens.iter().map(|n| n.next_multiple_of(4)).sum();
    assert_eq!(
        opt.dispatches_per_step() as u64,
        (padded * 4).div_ceil(segment) + 1 // and one dispatch to finalize the step
    );
    let single = Optimizer::builder(&ctx)
        .group(config.clone(), [TensorInit::Zeros(padded)])
        .build()
        .unwrap();
    assert_eq!(opt.dispatches_per_step(), single.dispatches_per_step());
    drop(single);

    // One step on real data, generated on the GPU; sampled elements of every tensor checked.
    let param_fill = |t: usize| RandomFill {
        seed: 2 * t as u32,
        offset: 0.0,
        scale: 1.0,
    };
    let grad_fill = |t: usize| RandomFill {
        seed: 2 * t as u32 + 1,
        offset: 0.0,
        scale: 0.125,
    };
    for (t, &len) in lens.iter().enumerate() {
        opt.fill_random(TensorId(t), Role::Param, 0..len, &param_fill(t))
            .unwrap();
        opt.fill_random(TensorId(t), Role::Grad, 0..len, &grad_fill(t))
            .unwrap();
    }
    opt.step().unwrap();
    for (t, &len) in lens.iter().enumerate() {
        let picks = [0, len / 2, len - 1];
        for &j in &picks {
            let gpu = opt.read(TensorId(t), Role::Param, j..j + 1).unwrap()[0];
            let mut reference = ReferenceGroup::new(
                config.clone().into(),
                vec![vec![param_fill(t).value(j) as f64]],
            )
            .unwrap();
            reference
                .step(&[vec![grad_fill(t).value(j) as f64]])
                .unwrap();
            let expected = reference.params[0][0];
            assert!(
                (gpu as f64 - expected).abs() <= 1e-6 * (1.0 + expected.abs()),
                "tensor {t}[{j}]: {gpu} vs {expected}"
            );
        }
    }
}

#[test]
fn parameter_groups_with_their_own_decay_step_in_one_submission() {
    // GPT-2 as it is trained: matrices decay, biases and norms do not, each group its own arena.
    let ctx = context();
    let lens = gpt2_lens();
    let (matrices, vectors): (Vec<u64>, Vec<u64>) = lens.iter().partition(|&&n| n > 3072);
    let decayed = AdamW {
        lr: 6e-4,
        weight_decay: 0.1,
        ..Default::default()
    };
    let plain = AdamW {
        lr: 6e-4,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = Optimizer::builder(&ctx)
        .group(decayed, matrices.iter().map(|&n| TensorInit::Zeros(n)))
        .group(plain, vectors.iter().map(|&n| TensorInit::Zeros(n)))
        .build()
        .unwrap();
    assert_eq!(opt.num_tensors(), 148);
    assert_eq!(opt.group_tensors(GroupId(1)).unwrap().len(), vectors.len());
    // Per group: one update dispatch per segment and one to finalize the step.
    let per_group: usize = (0..2)
        .map(|g| opt.num_segments(GroupId(g)).unwrap() + 1)
        .sum();
    assert_eq!(opt.dispatches_per_step(), per_group);
    // The same parameter value and gradient in both groups: only the decay tells them apart.
    let first_vector = TensorId(matrices.len());
    for t in [TensorId(0), first_vector] {
        opt.write(t, Role::Param, 0, &[1.0]).unwrap();
        opt.write(t, Role::Grad, 0, &[0.5]).unwrap();
    }
    opt.step().unwrap();
    let decayed_value = opt.read(TensorId(0), Role::Param, 0..1).unwrap()[0];
    let plain_value = opt.read(first_vector, Role::Param, 0..1).unwrap()[0];
    // Adam's first step moves by lr exactly; AdamW's decay takes lr * wd of the parameter.
    assert!((plain_value - (1.0 - 6e-4)).abs() < 1e-6, "{plain_value}");
    assert!(
        (decayed_value - (1.0 - 6e-4 * 0.1 - 6e-4)).abs() < 1e-6,
        "{decayed_value}"
    );
}

#[test]
fn steps_allocate_nothing_and_queue_without_waiting() {
    // A device of its own: the counters are per device, and other tests allocate on the shared one.
    let ctx = wgpu_optim::GpuContext::new(&Default::default()).unwrap();
    let sizes = [1000u64, 4096, 7];
    let inits: Vec<TensorInit> = sizes.iter().map(|&n| TensorInit::Zeros(n)).collect();
    // Clipping and loss scaling too: their norm and finalize passes run on the device.
    let options = wgpu_optim::TrainingOptions {
        max_grad_norm: Some(1.0),
        grad_scaler: Some(wgpu_optim::GradScaler::default()),
        schedule: Some(wgpu_optim::Schedule::Exponential { gamma: 0.99 }),
        ..Default::default()
    };
    let mut opt = Optimizer::builder(&ctx)
        .group_with(AdamW::default(), options, inits.clone())
        .group(
            Sgd {
                momentum: 0.9,
                ..Default::default()
            },
            inits,
        )
        .max_segment_bytes(4096)
        .build()
        .unwrap();
    opt.step().unwrap();
    // Let wgpu reap everything earlier work left behind (staging, uploads) before counting.
    for _ in 0..3 {
        ctx.queue.submit([]);
        ctx.wait().unwrap();
    }
    let before = ctx.device.get_internal_counters().hal;
    // Twenty steps queued back to back, nothing reaped in between: a staging buffer per step
    // (what `Queue::write_buffer` would cost) would still be alive here.
    for _ in 0..20 {
        opt.step().unwrap();
    }
    let after = ctx.device.get_internal_counters().hal;
    assert_eq!(
        after.buffers.read(),
        before.buffers.read(),
        "buffers created by steps"
    );
    assert_eq!(after.buffer_memory.read(), before.buffer_memory.read());
    assert_eq!(
        after.bind_groups.read(),
        before.bind_groups.read(),
        "bind groups created by steps"
    );
    assert_eq!(
        after.compute_pipelines.read(),
        before.compute_pipelines.read()
    );
    assert!(
        before.buffers.read() > 0,
        "the counters count (wgpu's `counters` feature)"
    );
    ctx.wait().unwrap();
    assert_eq!(opt.step_report(GroupId(0)).unwrap().step, 21);
}
