//! The torch.optim fixture, replayed on the GPU and the CPU reference (the same file the
//! `conformance` command runs).

mod common;

use std::path::Path;

use common::context;
use wgpu_optim::conformance::{self, BUILTIN_FIXTURE, Fixture, Status};

const SHARED_FIXTURE: &str = "../shared/conformance/torch-optim.json";

#[test]
fn the_shipped_fixture_is_the_shared_one_byte_for_byte() {
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/torch-optim.json"))
            .expect("data/torch-optim.json is in the repository");
    assert_eq!(shipped, BUILTIN_FIXTURE.as_bytes());
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHARED_FIXTURE);
    match std::fs::read(&shared) {
        Ok(original) => assert!(
            original == shipped,
            "data/torch-optim.json differs from {SHARED_FIXTURE}"
        ),
        // A clean checkout has only the repository; the copy above is what ships.
        Err(_) => eprintln!(
            "note: {SHARED_FIXTURE} is not beside this checkout; compared the shipped copy only"
        ),
    }
}

#[test]
fn every_case_passes_on_the_gpu_and_on_the_cpu_reference() {
    let ctx = context();
    let fixture = Fixture::builtin();
    assert_eq!(fixture.cases.len(), 22);
    let report = conformance::run(&ctx, &fixture);
    let mut passed = 0;
    for (case, result) in fixture.cases.iter().zip(&report.cases) {
        let later_issue =
            case.clip_grad_norm.is_some() || case.grad_scale.is_some() || case.inject_inf.is_some();
        if later_issue {
            assert_eq!(result.status, Status::Unsupported, "{}", case.name);
            assert!(result.gpu_rel_l2.is_none() && result.cpu_rel_l2.is_none());
            continue;
        }
        let gpu = result
            .gpu_rel_l2
            .unwrap_or_else(|| panic!("{}: {:?}", case.name, result.note));
        let cpu = result.cpu_rel_l2.unwrap();
        assert_eq!(
            result.status,
            Status::Pass,
            "{}: gpu {gpu:e} cpu {cpu:e}",
            case.name
        );
        assert!(
            gpu <= fixture.tolerance.rel_l2,
            "{}: gpu {gpu:e}",
            case.name
        );
        // float32 on the GPU lands near 1e-7; the float64 reference at rounding level.
        assert!(gpu > 0.0 && gpu < 1e-6, "{}: gpu {gpu:e}", case.name);
        assert!(cpu < 1e-13, "{}: cpu {cpu:e}", case.name);
        passed += 1;
    }
    assert_eq!(
        passed, 20,
        "every case without a later issue's features passes"
    );
    // Every optimizer of the project is exercised by the fixture.
    for name in wgpu_optim::optim::OPTIMIZER_NAMES {
        assert!(
            report
                .cases
                .iter()
                .any(|c| c.optimizer == name && c.status == Status::Pass),
            "no passing case for {name}"
        );
    }
    assert!(
        report
            .schedules
            .iter()
            .all(|s| s.status == Status::Unsupported)
    );
    assert!(report.passed());
}

#[test]
fn the_uniform_buffer_fallback_passes_too() {
    // Devices without immediates get the per-step values through a uniform buffer.
    let ctx = wgpu_optim::GpuContext::new(&wgpu_optim::ContextOptions {
        uniform_scalars: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        ctx.scalar_binding(),
        wgpu_optim::kernels::ScalarBinding::Uniform
    );
    assert_eq!(
        context().scalar_binding(),
        wgpu_optim::kernels::ScalarBinding::Immediates
    );
    let report = conformance::run(&ctx, &Fixture::builtin());
    assert!(report.passed());
    assert_eq!(
        report
            .cases
            .iter()
            .filter(|c| c.status == Status::Pass)
            .count(),
        20
    );
}

#[test]
fn a_wrong_expectation_fails() {
    let ctx = context();
    let mut fixture = Fixture::builtin();
    let case = &mut fixture.cases[0];
    // Nudge one expected value of the last step by 1e-3 of the parameters' norm.
    let norm: f64 = case.expected[11]
        .iter()
        .flatten()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt();
    case.expected[11][0][5] += 1e-3 * norm;
    let result = case.run(&ctx, &fixture.tolerance);
    assert_eq!(result.status, Status::Fail);
    assert!(result.gpu_rel_l2.unwrap() > 5e-4 && result.cpu_rel_l2.unwrap() > 5e-4);
}

#[test]
fn fixture_files_load_and_bad_ones_are_clear_errors() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/torch-optim.json");
    let loaded = Fixture::load(&path).unwrap();
    assert_eq!(loaded.cases.len(), Fixture::builtin().cases.len());

    let truncated = &BUILTIN_FIXTURE[..BUILTIN_FIXTURE.len() / 2];
    let err = Fixture::parse(truncated, "truncated.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated.json"), "{err}");

    let missing = Fixture::load(Path::new("/nonexistent/fixture.json"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("/nonexistent/fixture.json"), "{missing}");

    let mut value: serde_json::Value = serde_json::from_str(BUILTIN_FIXTURE).unwrap();
    value["cases"][0]["params"][0].as_array_mut().unwrap().pop();
    let err = Fixture::parse(&value.to_string(), "short.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sgd_plain") && err.contains("shapes"), "{err}");
}

#[test]
fn unknown_optimizers_and_hyperparameters_are_rejected() {
    let err = wgpu_optim::OptimizerConfig::default_for("lion")
        .unwrap_err()
        .to_string();
    assert!(err.contains("lion") && err.contains("adamw"), "{err}");
    let err =
        wgpu_optim::OptimizerConfig::from_hyper("adam", &serde_json::json!({"betas": [0.9, 0.99]}))
            .unwrap_err()
            .to_string();
    assert!(err.contains("betas"), "{err}");
}
