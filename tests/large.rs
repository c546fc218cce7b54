//! A real 600-million-element Adam state: 2.4 GB per buffer, four buffers, cut into segments at
//! the device's binding limit (128 MiB on lavapipe: 18 per role). Data is generated on the GPU;
//! sampled windows (both ends, every segment boundary, random places) are checked against the
//! float64 reference. Takes a few minutes on lavapipe: `.ci/run` runs it with `--ignored`.

mod common;

use common::*;
use rand::Rng;
use wgpu_optim::fill::RandomFill;
use wgpu_optim::optim::Adam;
use wgpu_optim::{GroupId, Optimizer, OptimizerConfig, ReferenceGroup, Role, TensorId, TensorInit};

const ELEMENTS: u64 = 600_000_000;
const STEPS: u32 = 3;

#[test]
#[ignore = "2.4 GB per buffer: minutes on lavapipe; .ci/run runs it"]
fn adam_on_600_million_elements() {
    let ctx = context();
    let config: OptimizerConfig = Adam {
        lr: 1e-3,
        ..Default::default()
    }
    .into();
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), [TensorInit::Zeros(ELEMENTS)])
        .build()
        .unwrap();
    let segments = opt.num_segments(GroupId(0)).unwrap() as u64;
    let segment_elems = ctx.max_binding_bytes() / 16 * 4;
    assert_eq!(segments, ELEMENTS.div_ceil(segment_elems));
    assert!(segments > 1);

    let param_fill = RandomFill {
        seed: 1,
        offset: 0.0,
        scale: 1.0,
    };
    let grad_fill = |step: u32| RandomFill {
        seed: 100 + step,
        offset: 0.0,
        scale: 0.25,
    };
    let t = TensorId(0);
    opt.fill_random(t, Role::Param, 0..ELEMENTS, &param_fill)
        .unwrap();
    for step in 0..STEPS {
        opt.fill_random(t, Role::Grad, 0..ELEMENTS, &grad_fill(step))
            .unwrap();
        opt.step().unwrap();
    }

    // Windows of 16 elements: both ends, across every segment boundary, and at random.
    let mut starts = vec![0, ELEMENTS - 16];
    starts.extend((1..segments).map(|s| s * segment_elems - 8));
    let mut rng = rng(600);
    starts.extend((0..32).map(|_| rng.random_range(0..ELEMENTS - 16)));
    for start in starts {
        let range = start..start + 16;
        let params = opt.read(t, Role::Param, range.clone()).unwrap();
        let exp_avg = opt.read(t, Role::State("exp_avg"), range.clone()).unwrap();
        let exp_avg_sq = opt
            .read(t, Role::State("exp_avg_sq"), range.clone())
            .unwrap();
        let mut reference = ReferenceGroup::new(
            config.clone(),
            vec![range.clone().map(|j| param_fill.value(j) as f64).collect()],
        )
        .unwrap();
        for step in 0..STEPS {
            let grads = range
                .clone()
                .map(|j| grad_fill(step).value(j) as f64)
                .collect();
            reference.step(&[grads]).unwrap();
        }
        let none = [0.0; 16];
        let what = format!("window at {start}");
        compare(
            &what,
            &params,
            &reference.params[0],
            &[1.0; 16],
            &none,
            1e-5,
        )
        .unwrap();
        let m = reference.state(0, "exp_avg").unwrap();
        compare(&what, &exp_avg, m, &[0.25; 16], &none, 1e-5).unwrap();
        let v = reference.state(0, "exp_avg_sq").unwrap();
        compare(&what, &exp_avg_sq, v, &[0.0625 * 3e-3; 16], &none, 1e-5).unwrap();
    }
    assert_eq!(opt.step_report(GroupId(0)).unwrap().step, STEPS as u64);
}
