//! The seeds' claims (issue 12), asserted on the GPU: every iterate below is computed by the
//! engine (`Optimizer` with an `Sgd` configuration, float32 on the device), or by L-BFGS on the
//! device (`GpuLbfgs`: its vectors, dot products and line search there); the host only
//! evaluates objectives, gradients and errors in float64 between steps
//! (`wgpu_optim::tools::lab::run`, `run_lbfgs`). Every expected number is computed from theory
//! (κ, λ, α, β) or is a bound with a stated margin over what was measured, none is a recorded
//! trajectory.
//!
//! Tolerances account for float32: the parameters are rounded to 2⁻²⁴ of themselves every
//! step, so rates are measured only while the error is at least 100 times that rounding
//! (`float32_floor`) and over many steps, where rounding moves a per-step rate by far less than
//! the tolerances below.

mod common;

use common::context;
use wgpu_optim::optim::lbfgs::Lbfgs;
use wgpu_optim::tools::lab::{
    EXPERIMENTS, LBFGS_HISTORY, LBFGS_LONG_HISTORY, Method, Objective, QUADRATIC_DIM, Quadratic,
    Rosenbrock, Series, asymptotic_window, first_reaching, float32_floor, heavy_ball_measured_rate,
    lbfgs_config, nesterov_problem, rate, run, run_lbfgs, run_lbfgs_reference, successive_ratios,
    unit_eigen_start,
};
use wgpu_optim::vectors::GpuLbfgs;

const LAMBDA_MAX: f64 = 4.0;

/// Nocedal & Wright §3.3: with η = 1/λmax every eigendirection's error is multiplied by
/// 1 − ηλ_i ∈ [0, 1 − 1/κ], so ‖e_k‖ ≤ (1 − 1/κ)^k ‖e_0‖, with equality along the slowest
/// eigenvector.
#[test]
fn gradient_descent_contracts_by_one_minus_one_over_kappa() {
    let ctx = context();
    for (kappa, steps) in [(100.0, 500), (1e4, 400)] {
        let problem = Quadratic::log_spaced(QUADRATIC_DIM, kappa, LAMBDA_MAX, 11);
        let bound = 1.0 - 1.0 / kappa;
        let lr = 1.0 / problem.lambda_max();
        let series = run(
            &ctx,
            &problem,
            &unit_eigen_start(&problem),
            Method::GradientDescent { lr },
            steps,
        )
        .unwrap();
        let e = series.distances();

        // The slowest eigendirection: its error's mean per-step ratio is 1 − 1/κ within 1% of
        // 1/κ (κ = 1e4: within 1e-6). Float32 noise in that component is ~1e-6 absolute over
        // the run, against a component that stays above 0.6 (κ = 100: above 6e-3).
        let slow = problem.slowest_direction();
        let slowest: Vec<f64> = series
            .points
            .iter()
            .map(|p| problem.eigen_error(&p.x)[slow].abs())
            .collect();
        let measured = rate(&slowest, 0..steps);
        assert!(
            (measured - bound).abs() <= 0.01 / kappa,
            "κ = {kappa}: slowest direction contracts by {measured}, theory {bound}"
        );

        // Every step obeys the bound, up to float32's rounding of the new iterate.
        let rounding = 2.0 * f32::EPSILON as f64 * (problem.minimizer.len() as f64).sqrt();
        for k in 0..steps {
            assert!(
                e[k + 1] <= bound * e[k] + rounding,
                "κ = {kappa}, step {k}: ‖e‖ went from {} to {}, more than 1 − 1/κ = {bound}",
                e[k],
                e[k + 1]
            );
        }
        // …and the bound is tight: ‖e_K‖ cannot beat (1 − 1/κ)^K by more than the slowest
        // direction's initial share of the error.
        let lower = bound.powi(steps as i32) * slowest[0];
        assert!(
            e[steps] >= 0.99 * lower,
            "κ = {kappa}: ‖e_K‖ = {} beats the slowest direction's (1 − 1/κ)^K · {} = {lower}",
            e[steps],
            slowest[0]
        );
        if kappa == 100.0 {
            // Once the faster directions have faded, the whole error's rate is 1 − 1/κ: within
            // 10% of 1/κ over the second half (neighbouring eigenvalues, 10% above λ1, still
            // weigh in; they make the rate faster, never slower, than the bound).
            let whole = rate(&e, steps / 2..steps);
            let speed = (1.0 - whole) * kappa;
            assert!(
                (0.999..1.10).contains(&speed),
                "κ = 100: ‖e‖ contracts by {whole}, 1 − r = {speed}/κ, theory 1/κ"
            );
        }
    }
}

/// Polyak 1964; Goh, "Why Momentum Really Works" (Distill 2017): with α = (2/(√λ1 + √λn))²
/// and β = ((√λn − √λ1)/(√λn + √λ1))², every eigendirection's error obeys
/// c_{k+1} = (1 + β − αλ) c_k − β c_{k−1}, whose characteristic roots all have modulus
/// √β = (√κ − 1)/(√κ + 1).
#[test]
fn heavy_ball_reaches_the_sqrt_kappa_rate() {
    let ctx = context();
    for (kappa, steps) in [(100.0, 100), (1e4, 900)] {
        let problem = Quadratic::log_spaced(QUADRATIC_DIM, kappa, LAMBDA_MAX, 12);
        let (l1, ln) = (problem.lambda_min(), problem.lambda_max());
        let alpha = (2.0 / (l1.sqrt() + ln.sqrt())).powi(2);
        let beta = ((ln.sqrt() - l1.sqrt()) / (ln.sqrt() + l1.sqrt())).powi(2);
        let predicted = (kappa.sqrt() - 1.0) / (kappa.sqrt() + 1.0);
        let x0 = unit_eigen_start(&problem);
        let heavy = run(
            &ctx,
            &problem,
            &x0,
            Method::HeavyBall {
                lr: alpha,
                momentum: beta,
            },
            steps,
        )
        .unwrap();
        let plain = run(
            &ctx,
            &problem,
            &x0,
            Method::GradientDescent { lr: 1.0 / ln },
            steps,
        )
        .unwrap();
        let e = heavy.distances();
        let floor = float32_floor(&problem.minimizer, 100.0);
        let window = asymptotic_window(&e, floor);
        assert!(
            window.end >= steps / 2,
            "κ = {kappa}: heavy ball's error fell under float32's floor {floor} after only {} steps",
            window.end
        );

        // The asymptotic rate of ‖e_k‖ (with the (k + 1) factor of the critically damped
        // extreme directions taken out, see `heavy_ball_measured_rate`): within 5% of
        // ln((√κ − 1)/(√κ + 1)).
        let measured = heavy_ball_measured_rate(&e, floor);
        assert!(
            (measured.ln() / predicted.ln() - 1.0).abs() <= 0.05,
            "κ = {kappa}: heavy ball contracts by {measured} over steps {window:?}, theory {predicted}"
        );

        // Exactly, per direction: Q_k = c_{k+1}² − t c_{k+1} c_k + β c_k² (t = 1 + β − αλ)
        // satisfies Q_{k+1} = β Q_k for the recursion above, so √Q shrinks by √β per step, in
        // every eigendirection. Measured over the steps where the components are well above
        // float32's rounding: within 0.2% of ln √β on an interior eigenvalue (where Q is
        // positive definite), within 1% on every one (at λ1 and λn Q is a square,
        // (c_{k+1} − (t/2) c_k)², whose cancellation float32 feels more).
        let span = window.end / 2;
        let energy_rate = |i: usize| {
            let t = 1.0 + beta - alpha * problem.eigenvalues[i];
            let c: Vec<f64> = heavy
                .points
                .iter()
                .map(|p| problem.eigen_error(&p.x)[i])
                .collect();
            let energy: Vec<f64> = c
                .windows(2)
                .map(|w| {
                    (w[1] * w[1] - t * w[1] * w[0] + beta * w[0] * w[0])
                        .max(0.0)
                        .sqrt()
                })
                .collect();
            rate(&energy, 0..span)
        };
        for i in 0..QUADRATIC_DIM {
            let tolerance = if i == QUADRATIC_DIM / 2 { 2e-3 } else { 1e-2 };
            let measured = energy_rate(i);
            assert!(
                (measured.ln() / predicted.ln() - 1.0).abs() <= tolerance,
                "κ = {kappa}: the λ = {} direction's energy shrinks by {measured} per step, \
                 theory √β = {predicted}",
                problem.eigenvalues[i]
            );
        }

        // Far better than gradient descent on the same problem: at the end of the window the
        // error is 1000 times smaller, and its rate at least 10 times faster (in ln; theory: 20
        // times for κ = 100, 200 for κ = 1e4).
        let g = plain.distances();
        let end = window.end;
        assert!(
            e[end] <= 1e-3 * g[end],
            "κ = {kappa}, step {end}: heavy ball ‖e‖ = {}, gradient descent {}",
            e[end],
            g[end]
        );
        let gd = rate(&g, window.clone());
        assert!(
            measured.ln() / gd.ln() >= 10.0,
            "κ = {kappa}: heavy ball {measured} is not 10 times faster than gradient descent {gd}"
        );
    }
}

/// Nesterov 1983 (in Beck & Teboulle's form of the bound, SIAM J. Imaging Sci. 2009, Thm 4.4):
/// f(x_k) − f* ≤ 2L‖x0 − x*‖²/(k + 1)² on a convex problem with L-Lipschitz gradient, where
/// gradient descent only guarantees L‖x0 − x*‖²/(2k) — and, on this spectrum, needs it.
#[test]
fn nesterov_gap_shrinks_as_one_over_k_squared() {
    let ctx = context();
    let steps = 400;
    let problem = nesterov_problem();
    assert!(
        problem.eigenvalues.contains(&0.0),
        "the problem is convex, not strongly convex"
    );
    let l = problem.lambda_max();
    let x0 = unit_eigen_start(&problem);
    let nesterov = run(&ctx, &problem, &x0, Method::Nesterov { lr: 1.0 / l }, steps).unwrap();
    let plain = run(
        &ctx,
        &problem,
        &x0,
        Method::GradientDescent { lr: 1.0 / l },
        steps,
    )
    .unwrap();
    let d0 = problem.distance(&x0);
    let scaled = |s: &Series| -> Vec<f64> {
        s.points
            .iter()
            .map(|p| p.gap * ((p.iteration + 1) as f64).powi(2) / (l * d0 * d0))
            .collect()
    };
    // k²(f(x_k) − f*) stays under the textbook constant 2 L‖x0 − x*‖² at every k.
    let nesterov_scaled = scaled(&nesterov);
    for (k, c) in nesterov_scaled.iter().enumerate().skip(1) {
        assert!(
            *c <= 2.0,
            "step {k}: (k+1)²(f − f*) = {c} L‖x0 − x*‖², over the bound 2"
        );
    }
    // Gradient descent obeys its own O(1/k) bound…
    for p in plain.points.iter().skip(1) {
        let bound = l * d0 * d0 / (2.0 * p.iteration as f64);
        assert!(
            p.gap <= bound,
            "gradient descent, step {}: f − f* = {} over L‖x0 − x*‖²/(2k) = {bound}",
            p.iteration,
            p.gap
        );
    }
    // …but not Nesterov's: on this spectrum its k²(f − f*) grows past 2, so the bound above
    // is not one that any convergent method meets.
    let gd_max = scaled(&plain).into_iter().fold(0.0, f64::max);
    assert!(
        gd_max > 2.0,
        "gradient descent's (k+1)²(f − f*)/(L‖x0 − x*‖²) stays at {gd_max}: the problem does \
         not separate O(1/k) from O(1/k²)"
    );
    // And the momentum keeps paying: at the end Nesterov's gap is 10 times smaller.
    assert!(nesterov.points[steps].gap * 10.0 <= plain.points[steps].gap);
}

/// f(x) = x² from 8.7: x_{k+1} = x_k − α·2x_k = (1 − 2α) x_k.
#[test]
fn step_size_decides_between_convergence_oscillation_and_divergence() {
    let ctx = context();
    let parabola = wgpu_optim::tools::lab::parabola();
    for alpha in [0.2, 0.9, 1.05] {
        let steps = if alpha == 0.2 { 40 } else { 20 };
        let series = run(
            &ctx,
            &parabola,
            &[8.7],
            Method::GradientDescent { lr: alpha },
            steps,
        )
        .unwrap();
        let x: Vec<f64> = series.points.iter().map(|p| p.x[0]).collect();
        let factor = 1.0 - 2.0 * alpha;
        for k in 0..steps {
            // Each step multiplies by exactly 1 − 2α, to float32's rounding.
            let ratio = x[k + 1] / x[k];
            assert!(
                (ratio - factor).abs() <= 1e-6,
                "α = {alpha}, step {k}: x went from {} to {} (×{ratio}), theory ×{factor}",
                x[k],
                x[k + 1]
            );
            let (before, after) = (x[k].abs(), x[k + 1].abs());
            match alpha {
                0.2 => assert!(
                    after < before && x[k + 1] > 0.0,
                    "α = 0.2 converges monotonically"
                ),
                0.9 => assert!(
                    after < before && x[k + 1].signum() == -x[k].signum(),
                    "α = 0.9 oscillates while it converges"
                ),
                _ => assert!(after > before, "α = 1.05 diverges"),
            }
        }
        if alpha == 0.2 {
            assert!(x[steps].abs() < 1e-6, "α = 0.2 ends at {}", x[steps]);
        }
    }
}

/// Nocedal & Wright §3.3: on a quadratic, x − ∇²f⁻¹∇f is the minimizer.
#[test]
fn newton_lands_on_the_quadratic_minimum_in_one_step() {
    let ctx = context();
    let problem = Quadratic::log_spaced(QUADRATIC_DIM, 1e4, LAMBDA_MAX, 13);
    let x0 = unit_eigen_start(&problem);
    let newton = run(&ctx, &problem, &x0, Method::Newton, 1).unwrap();
    let plain = run(
        &ctx,
        &problem,
        &x0,
        Method::GradientDescent {
            lr: 1.0 / problem.lambda_max(),
        },
        1,
    )
    .unwrap();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let e0 = newton.points[0].distance;
    // float32 precision: the step x0 − d rounds the result (2⁻²⁴ of ‖x*‖) and d (2⁻²⁴ of
    // ‖x0 − x*‖), plus the rounding of x* itself.
    let precision = f32::EPSILON as f64 * (norm(&problem.minimizer) + e0);
    assert!(
        newton.points[1].distance <= precision,
        "one Newton step leaves ‖x − x*‖ = {} (float32 precision {precision})",
        newton.points[1].distance
    );
    assert!(
        plain.points[1].distance >= 0.5 * e0,
        "one gradient step already reaches {}",
        plain.points[1].distance
    );
}

/// Nocedal & Wright Theorem 3.5: near a minimizer with a positive definite Hessian, Newton's
/// method converges quadratically. On Rosenbrock from (−1.2, 1) it gets there in a few steps;
/// gradient descent with a stable fixed step crawls along the valley.
#[test]
fn newton_converges_quadratically_on_rosenbrock_where_gradient_descent_crawls() {
    let ctx = context();
    let rosenbrock = Rosenbrock { pairs: 10 };
    let x0 = rosenbrock.standard_start();
    let newton = run(&ctx, &rosenbrock, &x0, Method::Newton, 8).unwrap();
    let e = newton.distances();
    // Ten times float32's rounding of x* = 1 (all coordinates): above it an error is the
    // method's.
    let floor = float32_floor(&vec![1.0; rosenbrock.dim()], 10.0);
    let converged = e.iter().position(|d| *d <= floor);
    assert!(
        converged.is_some_and(|k| k <= 7),
        "Newton does not reach ‖x − x*‖ ≤ {floor} in 7 steps: {e:?}"
    );
    // The error squares: once it is below 1, e_{k+1} ≤ e_k² (the theorem's constant,
    // L‖∇²f(x*)⁻¹‖ ≈ 2400/0.4, is far looser than what is seen).
    let local: Vec<(f64, f64)> = e
        .windows(2)
        .filter(|w| w[0] < 1.0 && w[1] > floor)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        !local.is_empty(),
        "no step inside the quadratic region above float32's floor: {e:?}"
    );
    for (before, after) in local {
        assert!(
            after <= before * before,
            "e = {before} went to {after}, not below its square: {e:?}"
        );
    }
    let steps = 1000;
    let plain = run(
        &ctx,
        &rosenbrock,
        &x0,
        Method::GradientDescent {
            lr: wgpu_optim::tools::lab::ROSENBROCK_LR,
        },
        steps,
    )
    .unwrap();
    assert!(
        plain.points[steps].distance > 1.0,
        "gradient descent after {steps} steps: ‖x − x*‖ = {}",
        plain.points[steps].distance
    );
    assert!(
        plain
            .points
            .iter()
            .all(|p| p.gap.is_finite() && p.gap <= plain.points[0].gap),
        "gradient descent with η = {} is unstable here",
        wgpu_optim::tools::lab::ROSENBROCK_LR
    );
}

/// What the strong-Wolfe line search guarantees each L-BFGS iterate (Nocedal & Wright, (3.7)
/// with c1 = 1e-4, c2 = 0.9, torch's constants), checked on the float32 iterates themselves
/// with f and ∇f in float64 and s_k = x_(k+1) − x_k the step actually taken:
/// - f(x_(k+1)) ≤ f(x_k), exactly: the line search returns a point it evaluated (a lower one,
///   or t = 0 where the run ends), and the GPU moves x to the very float32 vector it evaluated;
/// - sufficient decrease, f(x_(k+1)) ≤ f(x_k) + c1 ∇f(x_k)ᵀs_k, up to 1e-3 of the slack (the
///   line search tested t·∇f(x_k)ᵀd with a float32 dot product on the device);
/// - the strong curvature condition |∇f(x_(k+1))ᵀs_k| ≤ c2 |∇f(x_k)ᵀs_k|, while f − f* is
///   above `resolved` (near float32's floor the line search may end on a bracket it cannot
///   split any more, which that condition does not bind).
fn assert_strong_wolfe(name: &str, objective: &dyn Objective, series: &Series, resolved: f64) {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
    for w in series.points.windows(2) {
        let (before, after) = (&w[0], &w[1]);
        let k = after.iteration;
        assert!(
            after.gap <= before.gap,
            "{name}, iteration {k}: f − f* rose from {} to {}",
            before.gap,
            after.gap
        );
        let step: Vec<f64> = after.x.iter().zip(&before.x).map(|(a, b)| a - b).collect();
        let slope = dot(&objective.gradient(&before.x), &step);
        assert!(slope < 0.0, "{name}, iteration {k}: ∇fᵀs = {slope} ≥ 0");
        let decrease = after.gap - before.gap;
        assert!(
            decrease <= 1e-4 * slope * (1.0 - 1e-3),
            "{name}, iteration {k}: f fell by {decrease}, not the c1 ∇fᵀs = {} of sufficient \
             decrease",
            1e-4 * slope
        );
        if before.gap > resolved {
            let curvature = dot(&objective.gradient(&after.x), &step).abs() / slope.abs();
            assert!(
                curvature <= 0.9 * (1.0 + 1e-3),
                "{name}, iteration {k}: |∇f(x_(k+1))ᵀs| = {curvature} |∇f(x_k)ᵀs|, over c2 = 0.9"
            );
        }
    }
}

/// Quasi-Newton methods on a quadratic (Nocedal & Wright §6.1 and §7.2): BFGS with exact line
/// searches ends in n steps, like conjugate gradients; L-BFGS keeps only `history_size` pairs,
/// and torch's line search takes t = 1 whenever it satisfies the Wolfe conditions, so the n
/// steps are not exact. Measured here on a κ = 1e4 quadratic, n = 20, with torch's default
/// history (100 pairs, more than the run takes iterations): 68 iterations, 69 evaluations to
/// reach 1e-6 of the initial error, where heavy ball with Goh's optimal parameters needs 867
/// to reach 1e-5 and gradient descent would need over 100 000. Float32 bounds how near x* any
/// iterate can be (x* rounded to float32 is the nearest float32 vector); L-BFGS gets within
/// 1.9 times that distance.
#[test]
fn lbfgs_reaches_float32s_floor_on_an_ill_conditioned_quadratic_where_gd_and_heavy_ball_crawl() {
    let ctx = context();
    let n = 20;
    let kappa = 1e4;
    let problem = Quadratic::log_spaced(n, kappa, LAMBDA_MAX, 21);
    let x0 = unit_eigen_start(&problem);
    let lbfgs = run_lbfgs(&ctx, &problem, &x0, LBFGS_LONG_HISTORY, 150).unwrap();
    assert!(
        lbfgs.points.len() <= LBFGS_LONG_HISTORY,
        "pairs were dropped"
    );
    let d0 = lbfgs.points[0].distance;
    let rounded: Vec<f64> = problem
        .minimizer
        .iter()
        .map(|v| f64::from(*v as f32))
        .collect();
    let floor = problem.distance(&rounded);

    // 1e-6 of the initial error (about 20 times float32's floor) within 4n evaluations.
    let (iterations, evaluations) = first_reaching(&lbfgs, 1e-6 * d0).unwrap_or_else(|| {
        panic!(
            "L-BFGS never reaches 1e-6 ‖x0 − x*‖: {:?}",
            lbfgs.distances()
        )
    });
    assert!(
        evaluations <= 4 * n && iterations <= evaluations,
        "L-BFGS takes {iterations} iterations, {evaluations} evaluations to 1e-6 ‖x0 − x*‖"
    );
    let lowest = lbfgs.distances().into_iter().fold(f64::INFINITY, f64::min);
    assert!(
        lowest <= 4.0 * floor,
        "L-BFGS gets to ‖x − x*‖ = {lowest}, float32's floor is {floor}"
    );
    assert_strong_wolfe(
        "quadratic",
        &problem,
        &lbfgs,
        100.0 * problem.value(&rounded),
    );
    // The float64 reference of the same statements on the host gets there as fast (measured:
    // 69 evaluations each to 1e-5): float32 on the device costs nothing until its floor.
    let reference = run_lbfgs_reference(&problem, &x0, LBFGS_LONG_HISTORY, 150).unwrap();
    let (gpu, host) = (
        first_reaching(&lbfgs, 1e-5 * d0).unwrap().1,
        first_reaching(&reference, 1e-5 * d0).unwrap().1,
    );
    assert!(
        gpu.abs_diff(host) * 5 <= host,
        "1e-5 ‖x0 − x*‖ in {gpu} evaluations on the GPU, {host} in float64 on the host"
    );

    // Heavy ball (one evaluation a step) needs more than ten times as many to reach only 1e-5,
    // and does not reach 1e-6 in 1000; gradient descent is still above 0.1 ‖x0 − x*‖ there (its
    // slowest direction alone keeps (1 − 1/κ)^1000 = 0.90 of its start).
    let steps = 1000;
    let (l1, ln) = (problem.lambda_min(), problem.lambda_max());
    let heavy = run(
        &ctx,
        &problem,
        &x0,
        Method::HeavyBall {
            lr: (2.0 / (l1.sqrt() + ln.sqrt())).powi(2),
            momentum: ((ln.sqrt() - l1.sqrt()) / (ln.sqrt() + l1.sqrt())).powi(2),
        },
        steps,
    )
    .unwrap();
    let lbfgs_1e5 = first_reaching(&lbfgs, 1e-5 * d0).unwrap().1;
    let heavy_1e5 = first_reaching(&heavy, 1e-5 * d0).map_or(usize::MAX, |p| p.1);
    assert!(
        heavy_1e5 >= 10 * lbfgs_1e5,
        "heavy ball reaches 1e-5 ‖x0 − x*‖ in {heavy_1e5} evaluations, L-BFGS in {lbfgs_1e5}"
    );
    assert!(first_reaching(&heavy, 1e-6 * d0).is_none());
    let plain = run(
        &ctx,
        &problem,
        &x0,
        Method::GradientDescent { lr: 1.0 / ln },
        steps,
    )
    .unwrap();
    assert!(
        plain.points[steps].distance >= 0.1 * d0,
        "gradient descent reaches {} in {steps} steps",
        plain.points[steps].distance
    );
}

/// On Rosenbrock from (−1.2, 1) L-BFGS with 10 pairs and the strong-Wolfe line search crawls
/// along the valley for some 30 iterations, then converges superlinearly: the ratio of
/// successive errors falls towards 0 (BFGS's superlinear convergence, Nocedal & Wright Theorem
/// 6.6; for L-BFGS theory promises only R-linear convergence, Liu & Nocedal 1989, Theorem 7.1,
/// and here the ratios fall anyway: 0.29, 0.24, 0.45, 0.020 over the last steps above float32's
/// floor, where a linearly convergent method's would settle on a constant). It lands on
/// x* = (1, …, 1), exactly in float32.
#[test]
fn lbfgs_converges_superlinearly_on_rosenbrock() {
    let ctx = context();
    let rosenbrock = Rosenbrock { pairs: 10 };
    let x0 = rosenbrock.standard_start();
    let lbfgs = run_lbfgs(&ctx, &rosenbrock, &x0, LBFGS_HISTORY, 100).unwrap();
    let e = lbfgs.distances();
    // Measured: 36 iterations, 47 evaluations.
    let (iterations, evaluations) = first_reaching(&lbfgs, 1e-5)
        .unwrap_or_else(|| panic!("L-BFGS does not reach ‖x − x*‖ ≤ 1e-5: {e:?}"));
    assert!(
        iterations <= 45 && evaluations <= 60,
        "L-BFGS takes {iterations} iterations, {evaluations} evaluations to 1e-5: {e:?}"
    );
    let last = lbfgs.points.last().unwrap();
    assert!(
        last.distance <= 1e-5,
        "L-BFGS ends at ‖x − x*‖ = {}",
        last.distance
    );

    // Superlinear: over the steps from e_(k−1) ≤ 0.1 while e_k stays above ten times float32's
    // rounding of x*, every ratio is under 1/2, and the last is under 0.05 and under a fifth
    // of the first.
    let floor = float32_floor(&vec![1.0; rosenbrock.dim()], 10.0);
    let local: Vec<(usize, f64)> = successive_ratios(&e, floor)
        .into_iter()
        .filter(|(k, _)| e[k - 1] <= 0.1)
        .collect();
    assert!(local.len() >= 3, "too few steps near x*: {e:?}");
    let first = local[0].1;
    let final_ratio = local[local.len() - 1].1;
    assert!(
        local.iter().all(|(_, r)| *r < 0.5),
        "a ratio near x* is not under 1/2: {local:?}"
    );
    assert!(
        final_ratio < 0.05 && final_ratio < first / 5.0,
        "the ratios do not fall towards 0: {local:?}"
    );
    let resolved = 100.0 * rosenbrock.value(&[1.0 + f64::from(f32::EPSILON); 20]);
    assert_strong_wolfe("Rosenbrock", &rosenbrock, &lbfgs, resolved);
}

/// `run_lbfgs` takes one iteration per torch `step` call so that it sees every iterate, and
/// counts the evaluations one call with `max_iter = K` would make. That call makes the same
/// iterates: the same x, bit for bit, after K iterations, and the evaluation count on the
/// x axis of the lab's charts.
#[test]
fn one_lbfgs_step_call_per_iteration_is_one_call_of_k_iterations() {
    let ctx = context();
    let rosenbrock = Rosenbrock { pairs: 10 };
    let x0 = rosenbrock.standard_start();
    let series = run_lbfgs(&ctx, &rosenbrock, &x0, LBFGS_HISTORY, 30).unwrap();
    let k = series.points.len() - 1;
    assert_eq!(k, 30, "the run stopped early");
    let start: Vec<f32> = x0.iter().map(|v| *v as f32).collect();
    let config = Lbfgs {
        max_iter: k as u64,
        max_eval: Some(100 * k as u64),
        ..lbfgs_config(LBFGS_HISTORY)
    };
    let mut once = GpuLbfgs::new(&ctx, config, &start).unwrap();
    let outcome = once
        .step(&mut |space, x, grad| {
            let x: Vec<f64> = space.read(x)?.into_iter().map(f64::from).collect();
            let g: Vec<f32> = rosenbrock.gradient(&x).iter().map(|v| *v as f32).collect();
            space.write(grad, &g)?;
            Ok(rosenbrock.value(&x))
        })
        .unwrap();
    let x: Vec<f64> = once
        .read_params()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    assert_eq!(
        x, series.points[k].x,
        "one call of {k} iterations ends elsewhere"
    );
    assert_eq!(once.state().n_iter(), k as u64);
    assert_eq!(outcome.evals, series.points[k].evaluations);
}

/// What `wgpu-optim lab` draws: every experiment runs, and what it reports agrees with what
/// it predicts where theory gives a number.
#[test]
fn every_lab_experiment_runs_and_agrees_with_its_predictions() {
    let ctx = context();
    for entry in EXPERIMENTS {
        let experiment = (entry.run)(&ctx).unwrap();
        assert_eq!(experiment.name, entry.name);
        assert!(!experiment.panels.is_empty() && !experiment.comparisons.is_empty());
        for panel in &experiment.panels {
            for line in &panel.lines {
                assert!(
                    line.points.len() >= 2,
                    "{}: {} has no curve",
                    entry.name,
                    line.label
                );
            }
        }
        for c in &experiment.comparisons {
            assert!(
                !c.measured.is_nan() || c.predicted.is_nan(),
                "{}: {}",
                entry.name,
                c.what
            );
        }
    }
}

/// `wgpu-optim lab` as the README runs it: a chart per experiment (PNG small enough for the
/// README, SVG beside it) and the table of measured against predicted rates.
#[cfg(feature = "cli")]
#[test]
fn the_lab_command_draws_every_experiment_and_prints_the_table() {
    let out_dir = std::env::temp_dir().join(format!("wgpu-optim-lab-{}", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(["lab", "--out"])
        .arg(&out_dir)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("predicted") && stdout.contains("measured"),
        "{stdout}"
    );
    for entry in EXPERIMENTS {
        for extension in ["png", "svg"] {
            let path = out_dir.join(format!("{}.{extension}", entry.name));
            let bytes = std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .len();
            assert!(bytes > 1000, "{} is nearly empty", path.display());
            if extension == "png" {
                assert!(bytes < 150 * 1024, "{} has {bytes} bytes", path.display());
            }
        }
    }
    std::fs::remove_dir_all(&out_dir).unwrap();
}
