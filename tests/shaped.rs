//! The optimizers over shaped tensors (Adafactor, Muon) and the batched matrix products, on the
//! GPU against their float64 references: awkward shapes (vectors, 1×1, tall and wide
//! matrices, batches of matrices, tensors of one and of many workgroups), many steps, every
//! flag, Muon's scratch matrices poisoned with NaN first; and the errors.

mod common;

use common::{context, grad_scales, grads, params, read_buffer_bytes, rng, to_f64};
use wgpu_optim::Error;
use wgpu_optim::optim::muon::AdjustLr;
use wgpu_optim::optim::{Adafactor, Muon};
use wgpu_optim::shaped::matmul::{MatmulKernel, Product, ProductBatch, reference_product};
use wgpu_optim::shaped::{ShapedConfig, ShapedOptimizer, ShapedReference};

/// ‖a − b‖₂ / ‖b‖₂.
fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let err: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (err / norm.max(f64::MIN_POSITIVE)).sqrt()
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Steps a group on the GPU and on the reference with the same random gradients; checks every
/// tensor after every step: the parameters within `rtol` (relative L2), and how far they
/// moved from the start within `move_rtol` (so an update that is wrong but small still fails).
fn check(config: ShapedConfig, shapes: &[Vec<usize>], steps: usize, rtol: f64, move_rtol: f64) {
    let ctx = context();
    let mut r = rng(shapes.len() as u64 * 31 + steps as u64);
    let starts: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| params(&mut r, s.iter().product()))
        .collect();
    let scales: Vec<Vec<f32>> = starts
        .iter()
        .map(|p| grad_scales(&mut r, p.len()))
        .collect();
    let tensors: Vec<(&[usize], &[f32])> = shapes
        .iter()
        .zip(&starts)
        .map(|(s, p)| (s.as_slice(), p.as_slice()))
        .collect();
    let mut gpu = ShapedOptimizer::new(&ctx, config.clone(), &tensors).unwrap();
    // Every scratch value must be written before it is read.
    let poison = vec![f32::NAN; gpu.scratch().size() as usize / 4];
    ctx.queue
        .write_buffer(gpu.scratch(), 0, bytemuck::cast_slice(&poison));
    let mut reference = ShapedReference::new(
        config.clone(),
        shapes.to_vec(),
        starts.iter().map(|p| to_f64(p)).collect(),
    )
    .unwrap();
    for step in 0..steps {
        let g: Vec<Vec<f32>> = scales.iter().map(|s| grads(&mut r, s)).collect();
        gpu.step_with_grads(&g.iter().map(Vec::as_slice).collect::<Vec<_>>())
            .unwrap();
        reference
            .step(&g.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
            .unwrap();
        for (t, shape) in shapes.iter().enumerate() {
            let out = to_f64(&gpu.read_param(t).unwrap());
            let want = &reference.params[t];
            let err = rel_l2(&out, want);
            // Against how far the parameters moved, with the float32 rounding of the stored
            // parameters (half an ulp per element per step) allowed on top: an update that is
            // wrong but small next to the parameters still fails.
            let start = to_f64(&starts[t]);
            let moved: f64 = want
                .iter()
                .zip(&start)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = want.iter().map(|v| v * v).sum::<f64>().sqrt();
            let off: f64 = out
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            let allowed = move_rtol * moved + (step + 1) as f64 * f32::EPSILON as f64 * norm;
            assert!(
                err <= rtol && off <= allowed,
                "{} {shape:?} step {step}: rel-L2 {err:e} (allowed {rtol:e}), off by {off:e}, \
                 allowed {allowed:e} ({move_rtol:e} of the displacement {moved:e})",
                config.name()
            );
            for name in config.state_names(shape) {
                let state = to_f64(&gpu.read_state(t, name).unwrap());
                let want = reference.state(t, name).unwrap();
                let err = rel_l2(&state, want);
                assert!(
                    err <= move_rtol,
                    "{} {shape:?} step {step}: state {name} rel-L2 {err:e}",
                    config.name()
                );
            }
        }
    }
}

fn adafactor_shapes() -> Vec<Vec<usize>> {
    vec![
        // A scalar (torch: a 0-d tensor, its second moment kept whole).
        vec![],
        vec![1],
        vec![3],
        vec![5],
        vec![257],
        vec![65_537],
        vec![1, 1],
        vec![3, 5],
        vec![257, 3],
        vec![2, 3, 5],
        vec![4, 2, 3, 7],
        vec![300, 700],
        vec![1_000_003],
    ]
}

#[test]
fn adafactor_matches_its_reference_on_awkward_shapes() {
    check(
        Adafactor::default().into(),
        &adafactor_shapes(),
        6,
        1e-6,
        1e-5,
    );
}

#[test]
fn adafactor_with_every_option_matches_its_reference() {
    let config = Adafactor {
        lr: 0.3,
        beta2_decay: -0.5,
        eps1: 1e-3,
        eps2: 1e-2,
        d: 1.5,
        weight_decay: 0.1,
        maximize: true,
    };
    check(config.into(), &adafactor_shapes()[..12], 8, 1e-6, 1e-5);
}

fn muon_shapes() -> Vec<Vec<usize>> {
    vec![
        vec![1, 1],
        vec![1, 5],
        vec![5, 1],
        vec![3, 5],
        vec![65, 3],
        vec![70, 129],
        vec![257, 130],
        vec![1, 65_537],
    ]
}

#[test]
fn muon_matches_its_reference_on_awkward_shapes() {
    check(Muon::default().into(), &muon_shapes(), 5, 1e-5, 1e-3);
}

#[test]
fn muon_with_every_option_matches_its_reference() {
    for (nesterov, adjust, ns_steps) in [
        (false, Some(AdjustLr::MatchRmsAdamw), 3),
        (true, Some(AdjustLr::SpectralUnclamped), 0),
        (false, Some(AdjustLr::Original), 1),
    ] {
        let config = Muon {
            lr: 0.02,
            weight_decay: 0.05,
            momentum: 0.8,
            nesterov,
            ns_steps,
            adjust_lr_fn: adjust,
            ..Default::default()
        };
        check(config.into(), &muon_shapes()[..6], 4, 1e-5, 1e-3);
    }
}

#[test]
fn batched_products_match_the_reference_with_transposes_and_addends() {
    let ctx = context();
    let mut r = rng(5);
    // (m, n, k) of awkward sizes: single elements, tile edges, several tiles.
    let dims = [
        (1, 1, 1),
        (3, 5, 7),
        (64, 64, 16),
        (65, 63, 17),
        (130, 70, 129),
        (1, 200, 3),
        (2, 3, 4_000),
    ];
    let mut products = Vec::new();
    let mut at = 0u32;
    for (i, &(m, n, k)) in dims.iter().enumerate() {
        let (a, b, d) = (at, at + m * k, at + m * k + k * n);
        let out = d + m * n;
        at = out + m * n;
        products.push(Product {
            m,
            n,
            k,
            a,
            b,
            d,
            out,
            a_transposed: (i % 2) as u32,
            b_transposed: (i / 2 % 2) as u32,
            alpha: 0.75,
            beta: if i % 3 == 0 { 0.0 } else { -1.5 },
            _pad: 0,
        });
    }
    let values = params(&mut r, at as usize);
    for kernel in [MatmulKernel::Tiled, MatmulKernel::Naive] {
        let mats = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: at as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        // Outputs poisoned: the inputs are the random values, every output NaN.
        let mut poisoned = values.clone();
        for p in &products {
            poisoned[p.out as usize..(p.out + p.m * p.n) as usize].fill(f32::NAN);
        }
        ctx.queue
            .write_buffer(&mats, 0, bytemuck::cast_slice(&poisoned));
        let batch = ProductBatch::new(&ctx, &mats, &products, kernel).unwrap();
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            batch.record(&mut pass);
        }
        ctx.queue.submit([encoder.finish()]);
        let out = read_buffer(&ctx, &mats);
        let mut want = to_f64(&poisoned);
        // The same products of the magnitudes: the size of the terms each output sums, which
        // float32's rounding is relative to (a sum of random signs may cancel to near zero).
        let mut magnitude: Vec<f64> = want.iter().map(|v| v.abs()).collect();
        for p in &products {
            reference_product(&mut want, p);
            let abs = Product {
                alpha: p.alpha.abs(),
                beta: p.beta.abs(),
                ..*p
            };
            reference_product(&mut magnitude, &abs);
        }
        for (i, p) in products.iter().enumerate() {
            let range = p.out as usize..(p.out + p.m * p.n) as usize;
            let off: Vec<f64> = out[range.clone()]
                .iter()
                .zip(&want[range.clone()])
                .map(|(&o, w)| o as f64 - w)
                .collect();
            let err = norm(&off) / norm(&magnitude[range]);
            assert!(err < 1e-6, "{kernel:?} product {i} {p:?}: rel-L2 {err:e}");
        }
    }
}

fn read_buffer(ctx: &wgpu_optim::GpuContext, buffer: &wgpu::Buffer) -> Vec<f32> {
    bytemuck::cast_slice(&read_buffer_bytes(&ctx.device, &ctx.queue, buffer)).to_vec()
}

#[test]
fn bad_input_is_one_clear_error_and_changes_nothing() {
    let ctx = context();
    let vector = vec![0.5f32; 4];
    let err = ShapedOptimizer::new(&ctx, Muon::default(), &[(&[4], &vector)]).unwrap_err();
    assert!(err.to_string().contains("2-D"), "{err}");
    let err = ShapedOptimizer::new(&ctx, Adafactor::default(), &[(&[0, 4], &[])]).unwrap_err();
    assert!(matches!(err, Error::Empty(_)), "{err}");
    let err = ShapedOptimizer::new(&ctx, Adafactor::default(), &[(&[2, 3], &vector)]).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
    for bad in [
        ShapedConfig::from_hyper("adafactor", &serde_json::json!({"d": 0.5})),
        ShapedConfig::from_hyper("adafactor", &serde_json::json!({"beta2_decay": 0.1})),
        ShapedConfig::from_hyper("adafactor", &serde_json::json!({"lr": f64::NAN})),
        ShapedConfig::from_hyper("muon", &serde_json::json!({"ns_steps": 100})),
        ShapedConfig::from_hyper("muon", &serde_json::json!({"adjust_lr_fn": "other"})),
        ShapedConfig::from_hyper("muon", &serde_json::json!({"betas": 0.9})),
    ] {
        assert!(bad.is_err(), "{bad:?}");
    }

    let start = [0.25f32, -0.5, 1.0, 2.0, -1.0, 0.125];
    let mut opt = ShapedOptimizer::new(&ctx, Muon::default(), &[(&[2, 3], &start)]).unwrap();
    let err = opt.step_with_grads(&[&[1.0; 5]]).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
    let err = opt.step_with_grads(&[]).unwrap_err();
    assert!(matches!(err, Error::WrongCount { .. }), "{err}");
    let err = opt.read_state(0, "exp_avg").unwrap_err();
    assert!(err.to_string().contains("momentum_buffer"), "{err}");
    assert!(opt.read_param(1).is_err());
    assert!(opt.set_lr(-1.0).is_err());
    assert_eq!(opt.steps(), 0);
    assert_eq!(opt.read_param(0).unwrap(), start);
    assert_eq!(opt.config().lr(), Muon::default().lr);
}

/// A Gram product of a 1×140,000 matrix: one dot product of 140,000 terms. lavapipe leaves
/// every loop of an invocation after 65,535 iterations: the tiled kernel, one iteration per
/// 16 terms, must still sum every term, and the naive kernel must be refused there, not
/// return a partial sum.
#[test]
fn long_inner_dimensions_are_summed_whole_or_refused() {
    let ctx = context();
    let k = 140_000u32;
    let mut r = rng(9);
    let mut values = params(&mut r, k as usize + 1);
    values[k as usize] = f32::NAN;
    let mats = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (k as u64 + 1) * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    ctx.queue
        .write_buffer(&mats, 0, bytemuck::cast_slice(&values));
    let gram = Product {
        m: 1,
        n: 1,
        k,
        out: k,
        b_transposed: 1,
        alpha: 1.0,
        ..Default::default()
    };
    let batch = ProductBatch::new(&ctx, &mats, &[gram], MatmulKernel::Tiled).unwrap();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        batch.record(&mut pass);
    }
    ctx.queue.submit([encoder.finish()]);
    let got = read_buffer(&ctx, &mats)[k as usize] as f64;
    let want: f64 = values[..k as usize]
        .iter()
        .map(|&v| v as f64 * v as f64)
        .sum();
    assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
    let naive = ProductBatch::new(&ctx, &mats, &[gram], MatmulKernel::Naive);
    match ctx.loop_limit() {
        Some(limit) => {
            let err = naive.unwrap_err().to_string();
            assert!(err.contains(&limit.to_string()), "{err}");
        }
        None => assert!(naive.is_ok()),
    }
}

/// lavapipe ends loops after 65,535 iterations: a shape whose row pass would loop longer is
/// refused there with the reason, never stepped to a partial sum; elsewhere it steps.
#[test]
fn shapes_past_the_adapters_loop_limit_are_refused_where_loops_end_early() {
    let ctx = context();
    let values = vec![0.5f32; 70_000];
    let made = ShapedOptimizer::new(&ctx, Adafactor::default(), &[(&[1, 70_000], &values)]);
    match ctx.loop_limit() {
        Some(limit) => {
            let err = made.unwrap_err().to_string();
            assert!(
                err.contains("a row's columns") && err.contains(&limit.to_string()),
                "{err}"
            );
        }
        None => assert!(made.is_ok()),
    }
    // As a vector it has no such loop.
    assert!(ShapedOptimizer::new(&ctx, Adafactor::default(), &[(&[70_000], &values)]).is_ok());
}

/// Per-tensor gradient norms for logging, taken on the device, against the host's.
#[test]
fn gradient_norms_per_tensor_match_the_host() {
    let ctx = context();
    let shapes: Vec<Vec<usize>> = vec![vec![1, 1], vec![3, 5], vec![257, 3], vec![300, 700]];
    let mut r = rng(77);
    let starts: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| params(&mut r, s.iter().product()))
        .collect();
    let tensors: Vec<(&[usize], &[f32])> = shapes
        .iter()
        .zip(&starts)
        .map(|(s, p)| (s.as_slice(), p.as_slice()))
        .collect();
    for config in [
        ShapedConfig::from(Adafactor::default()),
        ShapedConfig::from(Muon::default()),
    ] {
        let mut opt = ShapedOptimizer::new(&ctx, config.clone(), &tensors).unwrap();
        let mut untouched = ShapedOptimizer::new(&ctx, config, &tensors).unwrap();
        for round in 0..2 {
            let g: Vec<Vec<f32>> = starts
                .iter()
                .map(|p| {
                    let scales = grad_scales(&mut r, p.len());
                    grads(&mut r, &scales)
                })
                .collect();
            for (t, g) in g.iter().enumerate() {
                opt.write_grad(t, g).unwrap();
                untouched.write_grad(t, g).unwrap();
            }
            let norms = opt.grad_norms().unwrap();
            for (t, g) in g.iter().enumerate() {
                let want = norm(&to_f64(g));
                assert!(
                    (norms[t] - want).abs() <= 1e-6 * want,
                    "round {round} tensor {t}: {} vs {want}",
                    norms[t]
                );
            }
            // Taking them changes nothing of the step that follows.
            opt.step().unwrap();
            untouched.step().unwrap();
            for t in 0..shapes.len() {
                assert_eq!(opt.read_param(t).unwrap(), untouched.read_param(t).unwrap());
            }
        }
    }
}
