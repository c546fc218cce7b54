//! L-BFGS on the GPU (float32 device vectors, device reductions) against the float64
//! reference running the same statements on the host: the vector operations at awkward
//! lengths with NaN and poisoned outputs, whole trajectories with and without the strong-Wolfe
//! line search on objectives of awkward sizes, and the errors.

mod common;

use common::{context, params, rng, to_f64};
use wgpu_optim::Error;
use wgpu_optim::optim::lbfgs::{
    self, HostVectors, Lbfgs, LbfgsState, LineSearch, Objective, VectorSpace,
};
use wgpu_optim::vectors::{DeviceVectors, GpuLbfgs};

#[test]
fn device_vector_operations_match_the_host_at_awkward_lengths() {
    let ctx = context();
    for len in [1usize, 3, 5, 257, 1024, 1025, 65_537, 1_000_003] {
        let mut r = rng(len as u64);
        let a = params(&mut r, len);
        let b = params(&mut r, len);
        let mut space = DeviceVectors::new(&ctx, len).unwrap();
        let mut host = HostVectors { len };
        let (da, mut db) = (
            space.from_values(&a).unwrap(),
            space.from_values(&b).unwrap(),
        );
        let (ha, mut hb) = (to_f64(&a), to_f64(&b));
        let close = |gpu: f64, host: f64, scale: f64, what: &str| {
            assert!(
                (gpu - host).abs() <= 1e-6 * scale,
                "len {len} {what}: {gpu} vs {host}"
            );
        };
        let magnitude: f64 = ha.iter().zip(&hb).map(|(x, y)| (x * y).abs()).sum();
        close(
            space.dot(&da, &db).unwrap(),
            host.dot(&ha, &hb).unwrap(),
            magnitude,
            "dot",
        );
        let sum_abs = host.sum_abs(&ha).unwrap();
        close(space.sum_abs(&da).unwrap(), sum_abs, sum_abs, "sum_abs");
        let max_abs = host.max_abs(&ha).unwrap();
        assert_eq!(space.max_abs(&da).unwrap(), max_abs, "len {len} max_abs");
        space.axpy(-0.75, &da, &mut db).unwrap();
        host.axpy(-0.75, &ha, &mut hb).unwrap();
        space.scale(1.5, &mut db).unwrap();
        host.scale(1.5, &mut hb).unwrap();
        let out = to_f64(&space.read(&db).unwrap());
        for (i, (g, h)) in out.iter().zip(&hb).enumerate() {
            assert!(
                (g - h).abs() <= 4e-7 * (h.abs() + 2.0),
                "len {len} [{i}]: {g} vs {h}"
            );
        }
        // A copy overwrites every element of a poisoned vector.
        let mut poisoned = space.from_values(&vec![f32::NAN; len]).unwrap();
        space.copy(&mut poisoned, &da).unwrap();
        assert_eq!(space.read(&poisoned).unwrap(), a);
        // One NaN anywhere makes the largest magnitude NaN, as torch's max does.
        let mut with_nan = a.clone();
        with_nan[len / 2] = f32::NAN;
        let dn = space.from_values(&with_nan).unwrap();
        assert!(space.max_abs(&dn).unwrap().is_nan(), "len {len}");
        assert!(space.sum_abs(&dn).unwrap().is_nan(), "len {len}");
    }
}

/// f(x) = Σ ½ dᵢ xᵢ² − bᵢ xᵢ with dᵢ log-spaced over [1, cond]: a quadratic of any size whose
/// gradient the host computes in float64.
fn diagonal_quadratic(len: usize, cond: f64) -> impl Fn(&[f64], &mut [f64]) -> f64 {
    let d: Vec<f64> = (0..len)
        .map(|i| cond.powf(i as f64 / (len.max(2) - 1) as f64))
        .collect();
    let b: Vec<f64> = (0..len)
        .map(|i| ((i * 7 % 13) as f64 - 6.0) / 6.0)
        .collect();
    move |x: &[f64], g: &mut [f64]| {
        let mut f = 0.0;
        for i in 0..x.len() {
            f += 0.5 * d[i] * x[i] * x[i] - b[i] * x[i];
            g[i] = d[i] * x[i] - b[i];
        }
        f
    }
}

/// Steps L-BFGS on the GPU and on the host reference, `calls` calls of `step`; returns the
/// worst relative L2 distance of the points and the largest relative difference of the
/// returned losses.
fn trajectories(
    config: &Lbfgs,
    objective: &dyn Fn(&[f64], &mut [f64]) -> f64,
    x0: &[f32],
    calls: usize,
) -> (f64, f64) {
    let ctx = context();
    let mut gpu = GpuLbfgs::new(&ctx, config.clone(), x0).unwrap();
    let mut host = HostVectors { len: x0.len() };
    let mut state = LbfgsState::new();
    let mut x = to_f64(x0);
    let (mut worst_x, mut worst_loss) = (0.0f64, 0.0f64);
    for _ in 0..calls {
        let got = gpu
            .step(&mut |space, x, grad| {
                let x = to_f64(&space.read(x)?);
                let mut g = vec![0.0; x.len()];
                let f = objective(&x, &mut g);
                space.write(grad, &g.iter().map(|&v| v as f32).collect::<Vec<_>>())?;
                Ok(f)
            })
            .unwrap();
        let want = lbfgs::step(config, &mut state, &mut host, &mut x, &mut |_, x, g| {
            Ok(objective(x, g))
        })
        .unwrap();
        let out = to_f64(&gpu.read_params().unwrap());
        let err: f64 = out
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt()
            / x.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert_eq!(
            got.evals,
            want.evals,
            "len {} evaluations of a call",
            x.len()
        );
        worst_x = worst_x.max(err);
        worst_loss = worst_loss.max((got.loss - want.loss).abs() / want.loss.abs().max(1e-30));
    }
    (worst_x, worst_loss)
}

#[test]
fn gpu_lbfgs_follows_the_reference_on_objectives_of_awkward_sizes() {
    for (len, line_search, history) in [
        (1usize, None, 5u64),
        (3, Some(LineSearch::StrongWolfe), 2),
        (5, None, 100),
        (257, Some(LineSearch::StrongWolfe), 10),
        // Long vectors without the line search: its Armijo and curvature tests compare losses
        // that differ by float32's rounding of the point once the steps are small, and a test
        // decided the other way in float32 than in float64 is float32's doing (the line search
        // is covered at the smaller sizes and on Rosenbrock).
        (65_537, None, 4),
        (1_000_003, None, 3),
    ] {
        let config = Lbfgs {
            max_iter: 4,
            max_eval: Some(6),
            history_size: history,
            line_search_fn: line_search,
            ..Default::default()
        };
        let objective = diagonal_quadratic(len, 100.0);
        // The first iteration's step is 1/Σ|g|, about 2/len here: started far from zero, a
        // long vector's first moves would be below float32's resolution of its values (a step
        // of 1e-6 on values near 1), and the float32 run would leave the float64 one for a
        // reason that is float32's, not the code's. Near zero, float32 resolves them.
        let mut r = rng(len as u64);
        let x0: Vec<f32> = params(&mut r, len).iter().map(|v| v * 1e-6).collect();
        let (err_x, err_loss) = trajectories(&config, &objective, &x0, 4);
        assert!(
            err_x < 1e-4 && err_loss < 1e-4,
            "len {len} {line_search:?}: points {err_x:e}, losses {err_loss:e}"
        );
    }
}

#[test]
fn gpu_lbfgs_follows_the_reference_on_rosenbrock() {
    let objective = Objective::Rosenbrock;
    for line_search in [None, Some(LineSearch::StrongWolfe)] {
        let config = Lbfgs {
            lr: 0.5,
            max_iter: 3,
            history_size: 6,
            line_search_fn: line_search,
            ..Default::default()
        };
        let x0: Vec<f32> = (0..12)
            .map(|i| if i % 2 == 0 { -1.2 } else { 1.0 })
            .collect();
        let (err_x, err_loss) =
            trajectories(&config, &|x, g| objective.value_and_grad(x, g), &x0, 6);
        assert!(
            err_x < 1e-5 && err_loss < 1e-5,
            "{line_search:?}: points {err_x:e}, losses {err_loss:e}"
        );
    }
}

#[test]
fn gpu_lbfgs_errors_are_clear_and_change_nothing() {
    let ctx = context();
    assert!(matches!(
        GpuLbfgs::new(&ctx, Lbfgs::default(), &[]),
        Err(Error::Empty(_))
    ));
    let bad = Lbfgs {
        history_size: 0,
        ..Default::default()
    };
    assert!(GpuLbfgs::new(&ctx, bad, &[1.0]).is_err());
    let mut opt = GpuLbfgs::new(&ctx, Lbfgs::default(), &[1.0, 2.0]).unwrap();
    // A closure writing a gradient of the wrong length fails the call, and x stays.
    let err = opt
        .step(&mut |space, _, grad| {
            space.write(grad, &[1.0])?;
            Ok(0.0)
        })
        .unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
    assert_eq!(opt.read_params().unwrap(), [1.0, 2.0]);
    // The user's own error comes back as it was.
    let err = opt
        .step(&mut |_, _, _| {
            Err(Error::InvalidConfig {
                optimizer: "objective",
                reason: "user's".into(),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("user's"), "{err}");
    assert_eq!(opt.read_params().unwrap(), [1.0, 2.0]);
}
