//! The torch.optim fixture, replayed on the GPU and the CPU reference (the same file the
//! `conformance` command runs).

mod common;

use std::path::Path;

use common::context;
use wgpu_optim::tools::conformance::{self, BUILTIN_FIXTURE, Fixture, Status};

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
fn every_case_and_schedule_passes_on_the_gpu_and_on_the_cpu_reference() {
    let ctx = context();
    let fixture = Fixture::builtin();
    assert_eq!(fixture.cases.len(), 22);
    let report = conformance::run(&ctx, &fixture);
    for (case, result) in fixture.cases.iter().zip(&report.cases) {
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
    }
    // The cases of the training-loop features are among them.
    for feature in [
        "adamw_clip",
        "adam_grad_scale_skip",
        "sgd_momentum_lr_schedule",
    ] {
        assert!(
            report
                .cases
                .iter()
                .any(|c| c.name == feature && c.status == Status::Pass)
        );
    }
    // Every optimizer of the project is exercised by a fixture: torch.optim's classic ten by
    // this one, the others by more-optimizers.json.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/more-optimizers.json");
    let more = conformance::run(&ctx, &Fixture::load(&path).unwrap());
    let beyond = wgpu_optim::shaped::SHAPED_OPTIMIZER_NAMES
        .into_iter()
        .chain(["lbfgs"]);
    for name in wgpu_optim::optim::OPTIMIZER_NAMES.into_iter().chain(beyond) {
        assert!(
            report
                .cases
                .iter()
                .chain(&more.cases)
                .any(|c| c.optimizer == name && c.status == Status::Pass),
            "no passing case for {name}"
        );
    }
    assert_eq!(report.schedules.len(), 7);
    for s in &report.schedules {
        assert_eq!(s.status, Status::Pass, "{}: {:e}", s.name, s.max_rel_error);
        assert!(s.max_rel_error <= fixture.tolerance.lr_rel);
    }
    assert!(report.passed());
}

#[test]
fn a_skipped_step_changes_nothing_and_does_not_count() {
    // The fixture's loss-scaled Adam case, stopped right after its injected infinity.
    let ctx = context();
    let fixture = Fixture::builtin();
    let case = fixture
        .cases
        .iter()
        .find(|c| c.name == "adam_grad_scale_skip")
        .unwrap();
    let inject = case.inject_inf.unwrap();
    let params: Vec<Vec<f32>> = case
        .params
        .iter()
        .map(|p| p.iter().map(|&v| v as f32).collect())
        .collect();
    let mut opt = wgpu_optim::Optimizer::builder(&ctx)
        .group_with(case.config().unwrap(), case.options(), &params)
        .build()
        .unwrap();
    let group = wgpu_optim::GroupId(0);
    let tensors = params.len();
    let snapshot = |opt: &wgpu_optim::Optimizer| -> Vec<Vec<f32>> {
        let mut all = Vec::new();
        for t in 0..tensors {
            let t = wgpu_optim::TensorId(t);
            all.push(opt.read_param(t).unwrap());
            for name in ["exp_avg", "exp_avg_sq"] {
                all.push(opt.read_state(t, name).unwrap());
            }
        }
        all
    };
    let mut before = Vec::new();
    for k in 0..=inject.step {
        if k == inject.step {
            before = snapshot(&opt);
        }
        let grads: Vec<Vec<f32>> = case
            .grads_at(k)
            .iter()
            .map(|g| g.iter().map(|&v| v as f32).collect())
            .collect();
        opt.step_with_grads(&grads.iter().map(Vec::as_slice).collect::<Vec<_>>())
            .unwrap();
    }
    let report = opt.step_report(group).unwrap();
    assert!(report.skipped && report.found_inf, "{report:?}");
    assert_eq!(
        report.step, inject.step as u64,
        "the skipped step is not counted"
    );
    assert_eq!(report.skipped_steps, 1);
    assert_eq!(
        report.loss_scale,
        case.grad_scale.unwrap(),
        "a fixed scale stays"
    );
    let after = snapshot(&opt);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            b.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits()),
            "a skipped step wrote"
        );
    }
    assert_eq!(opt.iterations(group).unwrap(), inject.step as u64 + 1);
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
        ctx.scalars_via(),
        wgpu_optim::kernels::ScalarsVia::UniformBuffer
    );
    assert_eq!(
        context().scalars_via(),
        wgpu_optim::kernels::ScalarsVia::Immediates
    );
    every_case_passes(&ctx, &Fixture::builtin(), 22);
}

/// Every case of `fixture` passes on `ctx`, and there are `cases` of them.
fn every_case_passes(ctx: &wgpu_optim::GpuContext, fixture: &Fixture, cases: usize) {
    let report = conformance::run(ctx, fixture);
    assert!(report.passed(), "{:?}", report.cases);
    assert_eq!(
        report
            .cases
            .iter()
            .filter(|c| c.status == Status::Pass)
            .count(),
        cases
    );
}

/// The 14 cases of the formats fixture (seven with q8 states) on `ctx`.
fn every_formats_case_passes(ctx: &wgpu_optim::GpuContext) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/formats.json");
    every_case_passes(ctx, &Fixture::load(&path).unwrap(), 14);
}

#[test]
fn q8_block_maxima_without_subgroups_pass_too() {
    // Where the device has no subgroup operations, each invocation takes its own atomic max:
    // every formats case (seven with q8 states) passes that way too.
    let ctx = wgpu_optim::GpuContext::new(&wgpu_optim::ContextOptions {
        no_subgroups: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!ctx.has_subgroups());
    assert!(
        context().has_subgroups(),
        "lavapipe has subgroups: both paths are tested"
    );
    every_formats_case_passes(&ctx);
}

#[test]
fn q8_maps_in_workgroup_memory_and_32_bit_words_pass_too() {
    // A GPU's q8 kernels copy the maps into workgroup memory and hold a block in 64
    // invocations of a workgroup, and its kernels read 32-bit words (lavapipe's read the maps
    // from the uniform, hold a block in one subgroup, and read 64-bit words): every formats
    // case passes that way too.
    let ctx = wgpu_optim::GpuContext::new(&wgpu_optim::ContextOptions {
        q8_lookups: Some(wgpu_optim::Q8Lookups::Workgroup),
        wide_words: Some(false),
        q8_subgroup_blocks: Some(false),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        ctx.kernel_target().q8_lookups,
        wgpu_optim::Q8Lookups::Workgroup
    );
    assert_eq!(
        ctx.kernel_target().q8_blocks,
        wgpu_optim::Q8Blocks::Workgroup
    );
    assert!(matches!(
        context().kernel_target().q8_blocks,
        wgpu_optim::Q8Blocks::Subgroup { .. }
    ));
    assert!(!ctx.kernel_target().wide_words);
    assert!(
        context().kernel_target().wide_words,
        "lavapipe reads 64-bit words: both paths are tested"
    );
    assert_eq!(
        context().kernel_target().q8_lookups,
        wgpu_optim::Q8Lookups::Uniform,
        "lavapipe reads the uniform: both paths are tested"
    );
    every_formats_case_passes(&ctx);
}

#[test]
fn asgd_cases_check_the_averaged_parameters_too() {
    let ctx = context();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/more-optimizers.json");
    let fixture = Fixture::load(&path).unwrap();
    let case = fixture
        .cases
        .iter()
        .find(|c| c.optimizer == "asgd" && c.expected_ax.is_some())
        .unwrap()
        .clone();
    assert_eq!(case.run(&ctx, &fixture.tolerance).status, Status::Pass);
    // The parameters as given, the average 1e-4 off at the last step: a failure.
    let mut wrong = case.clone();
    let ax = wrong.expected_ax.as_mut().unwrap();
    let last = ax.len() - 1;
    for v in ax[last].iter_mut().flatten() {
        *v *= 1.0 + 1e-4;
    }
    let result = wrong.run(&ctx, &fixture.tolerance);
    assert_eq!(result.status, Status::Fail, "{result:?}");
    assert!(result.gpu_rel_l2.unwrap() > 5e-5 && result.cpu_rel_l2.unwrap() > 5e-5);
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
    // A side file (float32 errors of the same cases) is named by its format, not by the first
    // field a fixture would need.
    let side = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/more-optimizers-f32ref.json");
    let err = Fixture::load(&side).unwrap_err().to_string();
    assert!(
        err.contains("unknown format `optimizer-conformance/1 f32 side file`"),
        "{err}"
    );
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
    let err = wgpu_optim::OptimizerConfig::default_for("lino")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lino") && err.contains("adamw") && err.contains("lion"),
        "{err}"
    );
    let err =
        wgpu_optim::OptimizerConfig::from_hyper("adam", &serde_json::json!({"betas": [0.9, 0.99]}))
            .unwrap_err()
            .to_string();
    assert!(err.contains("betas"), "{err}");
}

/// The fixtures of the later issues (reduced-precision storage, more optimizers), shipped as
/// byte-identical copies of the shared ones: every case of both passes, on the GPU and in the
/// reference; none is left unsupported.
#[test]
fn every_case_of_the_later_fixtures_passes() {
    let ctx = context();
    for (name, count) in [("formats.json", 14), ("more-optimizers.json", 25)] {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data")
            .join(name);
        let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/conformance")
            .join(name);
        if let Ok(original) = std::fs::read(&shared) {
            assert!(
                original == std::fs::read(&shipped).unwrap(),
                "data/{name} differs from the shared one"
            );
        }
        let fixture = Fixture::load(&shipped).unwrap();
        let report = conformance::run(&ctx, &fixture);
        assert_eq!(report.cases.len(), count, "{name}");
        for case in &report.cases {
            assert_eq!(
                case.status,
                Status::Pass,
                "{name} {}: {:?}",
                case.name,
                case.note
            );
        }
        assert!(report.passed(), "{name}");
    }
}

/// A fixture case of an optimizer this engine does not know is reported `unsupported` with
/// the reason, and the run goes on.
#[test]
fn an_unknown_optimizer_is_unsupported_and_never_aborts() {
    let ctx = context();
    let mut fixture = Fixture::builtin();
    fixture.cases.truncate(2);
    fixture.cases[0].optimizer = "shampoo".into();
    let report = conformance::run(&ctx, &fixture);
    assert_eq!(report.cases[0].status, Status::Unsupported);
    assert!(
        report.cases[0]
            .note
            .as_ref()
            .is_some_and(|n| n.contains("shampoo")),
        "{:?}",
        report.cases[0].note
    );
    assert_eq!(report.cases[1].status, Status::Pass);
}

/// L-BFGS cases compare the returned losses too: one loss off by 1e-4 fails on both sides.
#[test]
fn lbfgs_cases_check_the_returned_losses() {
    let ctx = context();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/more-optimizers.json");
    let fixture = Fixture::load(&path).unwrap();
    let mut case = fixture
        .cases
        .iter()
        .find(|c| c.optimizer == "lbfgs")
        .unwrap()
        .clone();
    assert_eq!(case.run(&ctx, &fixture.tolerance).status, Status::Pass);
    let losses = case.losses.as_mut().unwrap();
    let last = losses.len() - 1;
    losses[last] *= 1.0 + 1e-3;
    let result = case.run(&ctx, &fixture.tolerance);
    assert_eq!(result.status, Status::Fail, "{result:?}");
    assert!(result.gpu_rel_l2.unwrap() > 1e-5 && result.cpu_rel_l2.unwrap() > 1e-5);
}

/// Reduced-precision storage (FORMAT-formats.md): every case (16-bit parameters, gradients
/// or states, master weights, and bitsandbytes' 8-bit blockwise states) passes on the GPU and
/// in the CPU reference.
#[test]
fn reduced_precision_cases_pass_on_the_gpu_and_the_reference() {
    let ctx = context();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/formats.json");
    let fixture = Fixture::load(&path).unwrap();
    let mut q8 = 0;
    for case in &fixture.cases {
        let result = case.run(&ctx, &fixture.tolerance);
        assert_eq!(result.status, Status::Pass, "{}: {result:?}", case.name);
        if case.storage().unwrap().states == wgpu_optim::Format::Q8 {
            q8 += 1;
        }
    }
    assert_eq!((fixture.cases.len(), q8), (14, 7));
}

#[test]
fn a_fixture_with_nothing_to_check_is_an_error() {
    let err = Fixture::parse(
        r#"{"format": "optimizer-conformance/1", "source": "test",
            "tolerance": {"rel_l2": 1e-5, "lr_rel": 1e-9}, "cases": [], "schedules": []}"#,
        "empty.json",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("empty.json") && err.contains("no cases"),
        "{err}"
    );
}

#[test]
fn non_finite_errors_are_reported_as_such_in_json_never_null() {
    // SGD with a step that overflows float32 (3e38 * 3e38) but not float64: the GPU's
    // parameters become infinite, the CPU reference is exact.
    let fixture = Fixture::parse(
        r#"{"format": "optimizer-conformance/1", "source": "test",
            "tolerance": {"rel_l2": 1e-5, "lr_rel": 1e-9},
            "cases": [{"name": "overflow", "optimizer": "sgd", "hyper": {"lr": 3e38},
                       "shapes": [[1]], "params": [[1.0]], "grads": [[[3e38]]],
                       "expected": [[[-9e76]]]}],
            "schedules": []}"#,
        "overflow.json",
    )
    .unwrap();
    let report = conformance::run(&context(), &fixture);
    let case = &report.cases[0];
    assert_eq!(case.status, Status::Fail);
    let json = serde_json::to_value(&report).unwrap();
    let row = &json["cases"][0];
    assert_eq!(row["gpu_rel_l2"], "inf", "{row}");
    assert!(row["cpu_rel_l2"].as_f64().unwrap() < 1e-15, "{row}");
    assert!(
        row["note"].as_str().unwrap().contains("GPU's error is inf"),
        "{row}"
    );
}

/// Cases of the same kinds as more-optimizers.json with other seeds, shapes and
/// hyperparameters (`tools/fixtures/more_optimizers_extra.py`, torch 2.15 in float64): a 0-d
/// tensor and 4-D batches for Adafactor with a schedule, maximize, Muon's other lr scalings and
/// step counts, L-BFGS with and without its line search. Every one passes on both sides.
#[test]
fn extra_cases_of_the_new_optimizers_pass() {
    let ctx = context();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/more-optimizers-extra.json");
    let fixture = Fixture::load(&path).unwrap();
    let report = conformance::run(&ctx, &fixture);
    assert_eq!(report.cases.len(), 7);
    for case in &report.cases {
        assert_eq!(case.status, Status::Pass, "{}: {:?}", case.name, case.note);
    }
}
