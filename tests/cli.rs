//! The `wgpu-optim` binary as a newcomer meets it.

#![cfg(feature = "cli")]

use std::process::{Command, Output};

fn wgpu_optim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_default_run_prints_the_adapter_and_one_table_of_every_optimizer() {
    let out = wgpu_optim(&[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.starts_with("adapter "), "{stdout}");
    for field in [
        "vendor",
        "backend",
        "driver",
        "storage binding",
        "buffer",
        "timestamps",
    ] {
        assert!(stdout.contains(field), "no {field}:\n{stdout}");
    }
    assert!(
        stdout.contains("22 of 22 PyTorch fixture cases pass, 0 fail; 7 of 7 lr schedules pass"),
        "{stdout}"
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("optimizer"))
        .expect("a table");
    for column in ["max rel-L2", "GB/s", "x copy", "ns/elem", "B/elem"] {
        assert!(header.contains(column), "{header}");
    }
    for name in wgpu_optim::optim::OPTIMIZER_NAMES {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        let error: f64 = cells[2].parse().unwrap();
        assert!(error > 0.0 && error < 1e-5, "{row}");
        let gbps: f64 = cells[3].parse().unwrap();
        assert!(gbps > 0.0, "{row}");
    }
    // Piped: no progress bar escape codes anywhere.
    assert!(!stdout.contains('\u{1b}') && !text(&out.stderr).contains('\u{1b}'));
}

#[test]
fn an_unknown_optimizer_is_one_line_naming_the_valid_ones() {
    let out = wgpu_optim(&["bench", "--optimizer", "lino", "--sizes", "1024"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        line.contains("lino")
            && line.contains("adamw")
            && line.contains("lion")
            && line.contains("sgd"),
        "{line}"
    );
}

#[test]
fn an_adapter_substring_that_matches_nothing_lists_the_adapters() {
    let out = wgpu_optim(&["conformance", "--adapter", "no-such-gpu"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        line.contains("no-such-gpu") && line.contains("llvmpipe"),
        "{line}"
    );
}

#[test]
fn no_adapter_is_one_line_naming_the_package_to_install() {
    // No DX12 on this platform: no adapter at all for that backend.
    let out = wgpu_optim(&["--backend", "dx12"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("dx12") && lines[0].contains("mesa-vulkan-drivers"),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_command_and_option() {
    let top = text(&wgpu_optim(&["--help"]).stdout);
    for command in [
        "conformance",
        "bench",
        "report",
        "adapters",
        "bench-matrices",
        "lab",
        "--backend",
        "--adapter",
    ] {
        assert!(
            top.contains(command),
            "{command} missing from --help:\n{top}"
        );
    }
    let bench = text(&wgpu_optim(&["bench", "--help"]).stdout);
    for option in [
        "--optimizer",
        "--sizes",
        "--steps",
        "--warmup",
        "--json",
        "--backend",
        "--adapter",
    ] {
        assert!(bench.contains(option), "{option} missing:\n{bench}");
    }
    let report = text(&wgpu_optim(&["report", "--help"]).stdout);
    assert!(
        report.contains("--chart") && report.contains("--markdown"),
        "{report}"
    );
}

#[test]
fn bench_json_feeds_report() {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("small.json");
    let out = wgpu_optim(&[
        "bench",
        "--optimizer",
        "adamw",
        "sgd",
        "--sizes",
        "2^16",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in ["name", "vendor", "device_type", "backend", "driver"] {
        assert!(value["adapter"][key].is_string(), "adapter.{key}");
    }
    let results = value["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for key in [
        "optimizer",
        "elements",
        "median_ms",
        "gbps",
        "fraction_of_copy",
    ] {
        assert!(!results[0][key].is_null(), "{key}");
    }
    let chart = dir.join("chart");
    let out = wgpu_optim(&[
        "report",
        json.to_str().unwrap(),
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("| adamw | 2^16 | 28 |"));
    assert!(chart.with_extension("png").exists() && chart.with_extension("svg").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_segment_cap_splits_the_arenas() {
    let json = std::env::temp_dir().join(format!("wgpu-optim-seg-{}.json", std::process::id()));
    // 2^19 f32 elements: 2 MiB per buffer, so 1 MiB segments make two update dispatches,
    // plus the step-control kernel.
    let out = wgpu_optim(&[
        "bench",
        "--optimizer",
        "adam",
        "--sizes",
        "2^19",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--segment-mib",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    assert_eq!(value["max_segment_bytes"], 1 << 20);
    assert_eq!(value["results"][0]["dispatches_per_step"], 3);
    let out = wgpu_optim(&["bench", "--segment-mib", "0"]);
    assert!(!out.status.success());
}

/// The `error:` lines of a run, and the run's other stderr lines (Mesa's `XDG_RUNTIME_DIR`
/// complaint aside).
fn error_lines(out: &Output) -> Vec<String> {
    text(&out.stderr)
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Fails at once with one `error:` line (clap may add its "For more information" hint) and
/// prints nothing on stdout: nothing was measured. Returns the line.
fn fails_at_once(args: &[&str]) -> String {
    let start = std::time::Instant::now();
    let out = wgpu_optim(args);
    let elapsed = start.elapsed();
    assert!(!out.status.success(), "{args:?} succeeded");
    let lines = error_lines(&out);
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("error:") || l.starts_with("For more information")),
        "{args:?}: more than one line: {lines:?}"
    );
    assert_eq!(text(&out.stdout), "", "{args:?} printed results");
    assert!(elapsed.as_secs() < 60, "{args:?} took {elapsed:?} to fail");
    errors[0].clone()
}

#[test]
fn adapter_options_are_read_before_or_after_any_command() {
    // No NVIDIA adapter here: wherever --adapter goes, it is read, and fails.
    for args in [
        &["--adapter", "nvidia", "conformance"][..],
        &["conformance", "--adapter", "nvidia"],
        &["--adapter", "nvidia", "bench", "--sizes", "1024"],
        &["--adapter", "nvidia"],
    ] {
        let line = fails_at_once(args);
        assert!(
            line.contains("no adapter's name contains `nvidia`") && line.contains("llvmpipe"),
            "{args:?}: {line}"
        );
    }
    // --backend gl before the command: it runs on the GL adapter, and says so, or fails
    // naming gl; never on Vulkan.
    let out = wgpu_optim(&["--backend", "gl", "conformance"]);
    let stdout = text(&out.stdout);
    if out.status.success() {
        let adapter = stdout
            .lines()
            .find(|l| l.starts_with("adapter:"))
            .expect("the adapter it ran on");
        assert!(adapter.contains("(gl,"), "{adapter}");
    } else {
        let stderr = text(&out.stderr);
        assert!(!stdout.contains("(vulkan,"), "{stdout}");
        assert!(stderr.contains("gl"), "{stderr}");
    }
    // `adapters` takes --backend before or after it.
    for args in [
        &["--backend", "gl", "adapters", "--json"][..],
        &["adapters", "--json", "--backend", "gl"],
    ] {
        let out = wgpu_optim(args);
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            listed.iter().all(|a| a["backend"] == "gl"),
            "{args:?}: {listed:?}"
        );
    }
    // `report` opens no adapter: adapter options there are an error, not ignored.
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/bench/lavapipe-vulkan.json"
    );
    for args in [
        &["--adapter", "nvidia", "report", file][..],
        &["report", file, "--backend", "gl"],
    ] {
        let line = fails_at_once(args);
        assert!(
            line.contains("report opens no adapter")
                && (line.contains("--adapter nvidia") || line.contains("--backend gl")),
            "{line}"
        );
    }
}

#[test]
fn bench_checks_every_size_against_the_device_before_measuring() {
    // 2^36 elements: a terabyte of arenas. The small size first: nothing is measured before
    // the check fails, and it fails at once with what it needs and what there is.
    let line = fails_at_once(&[
        "bench",
        "--optimizer",
        "sgd",
        "adamw",
        "--sizes",
        "2^10",
        "2^36",
    ]);
    assert!(line.contains("bench sgd at 2^36 elements"), "{line}");
    assert!(
        line.contains("GB of device memory (params 274.9 GB, grads 274.9 GB, 1 state 274.9 GB")
            && line.contains("llvmpipe")
            && line.contains("available"),
        "{line}"
    );
    // 2^40: past the memory, and past the norm pass's partial-sum buffer's binding limit.
    let line = fails_at_once(&["bench", "--optimizer", "adam", "--sizes", "2^40"]);
    assert!(
        line.contains("bench adam at 2^40 elements needs 17.6 TB"),
        "{line}"
    );
    // GPT-2's 148 tensors in 1 MiB segments fit; a segment size past the binding limit is
    // refused rather than silently capped.
    let line = fails_at_once(&["bench", "--sizes", "1024", "--segment-mib", "1048576"]);
    assert!(
        line.contains("segments of 1 TiB") && line.contains("binds at most"),
        "{line}"
    );
}

#[test]
fn bench_json_to_a_path_that_cannot_be_written_fails_before_measuring() {
    let missing = std::env::temp_dir()
        .join(format!("wgpu-optim-no-such-dir-{}", std::process::id()))
        .join("results.json");
    let dir = std::env::temp_dir();
    for path in [missing.to_str().unwrap(), dir.to_str().unwrap()] {
        let line = fails_at_once(&[
            "bench",
            "--optimizer",
            "sgd",
            "--sizes",
            "2^16",
            "--steps",
            "2",
            "--json",
            path,
        ]);
        assert!(
            line.contains("cannot write the bench results to") && line.contains(path),
            "{line}"
        );
    }
    assert!(!missing.parent().unwrap().exists());
}

#[test]
fn numeric_options_reject_nonsense_in_one_line_before_any_work() {
    for (args, wanted) in [
        (
            &["bench", "--sizes", "-5"][..],
            "size `-5` must be a positive number of elements",
        ),
        (
            &["bench", "--sizes", "0"],
            "size `0` must be a positive number of elements",
        ),
        (
            &["bench", "--sizes", "1024", "-3"],
            "size `-3` must be a positive number of elements",
        ),
        (
            &["bench", "--sizes", "1.5"],
            "size `1.5` is not a whole number",
        ),
        (
            &["bench", "--sizes", "2^64"],
            "size `2^64` is more elements",
        ),
        (
            &["bench", "--steps", "0"],
            "'0' for '--steps <N>': must be at least 1",
        ),
        (
            &["bench", "--steps", "-3"],
            "'-3' for '--steps <N>': must not be negative",
        ),
        (
            &["bench", "--steps", "ten"],
            "'ten' for '--steps <N>': must be a whole number",
        ),
        (
            &["bench", "--warmup", "-1"],
            "'-1' for '--warmup <N>': must not be negative",
        ),
        (
            &["bench", "--max-grad-norm", "NaN"],
            "'NaN' for '--max-grad-norm <MAX_NORM>': must be a finite number > 0",
        ),
        (
            &["bench", "--max-grad-norm", "-1"],
            "'-1' for '--max-grad-norm <MAX_NORM>'",
        ),
        (
            &["bench", "--max-grad-norm", "0"],
            "'0' for '--max-grad-norm <MAX_NORM>'",
        ),
        (
            &["bench", "--max-grad-norm", "inf"],
            "'inf' for '--max-grad-norm <MAX_NORM>'",
        ),
        (
            &["bench", "--segment-mib", "-1"],
            "'-1' for '--segment-mib <MIB>': must not be negative",
        ),
        (
            &["bench", "--segment-mib", "0"],
            "'0' for '--segment-mib <MIB>': must be at least 1",
        ),
        (
            &["bench", "--segment-mib", "99999999999999999"],
            "'99999999999999999' for '--segment-mib <MIB>'",
        ),
    ] {
        let line = fails_at_once(args);
        assert!(line.contains(wanted), "{args:?}: {line}");
    }
}

#[test]
fn a_wgpu_backend_variable_that_names_no_backend_says_so() {
    for (value, args) in [
        ("vulcan", &["conformance"][..]),
        ("vulcan", &["adapters"]),
        ("vulkan,metl", &[]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env("WGPU_BACKEND", value)
            .output()
            .expect("the binary runs");
        assert!(!out.status.success());
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!("error: WGPU_BACKEND={value} names no backend"))
                && lines[0].contains("valid: vulkan, gl, metal, dx12 (comma-separated)"),
            "{}",
            lines[0]
        );
    }
    // --backend decides without the variable.
    let out = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(["--backend", "vulkan", "adapters", "--json"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("WGPU_BACKEND", "vulcan")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn report_errors_name_the_file_in_one_line() {
    let line = fails_at_once(&["report", "/no/such/result.json"]);
    assert!(
        line.contains("bench result file /no/such/result.json")
            && !line.contains("conformance fixture"),
        "{line}"
    );
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/bench/lavapipe-vulkan.json"
    );
    let line = fails_at_once(&["report", file, "--chart", "/no/such/dir/chart"]);
    assert!(
        line.contains("/no/such/dir/chart.png") && line.contains("No such file or directory"),
        "{line}"
    );
    let line = fails_at_once(&["report", file, "--markdown", "/no/such/dir/table.md"]);
    assert!(line.contains("/no/such/dir/table.md"), "{line}");
}

/// With no file, `conformance` runs every fixture the binary ships: torch.optim, the storage
/// formats and the optimizers beyond torch.optim's classic ten; every case passes.
#[test]
fn conformance_runs_every_shipped_fixture_by_default() {
    let out = wgpu_optim(&["conformance"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for name in ["torch-optim.json", "formats.json", "more-optimizers.json"] {
        assert!(
            stdout.contains(&format!("fixture: built-in {name}")),
            "{name} not run:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("cases: 14 pass, 0 fail, 0 unsupported"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cases: 25 pass, 0 fail, 0 unsupported"),
        "{stdout}"
    );
}

/// `bench-matrices`: the products of both kernels and the shaped optimizers' steps, measured
/// and written as JSON with real (positive, finite) figures; bad numbers are one line.
#[test]
fn bench_matrices_measures_both_kernels_and_the_shaped_steps() {
    let json = std::env::temp_dir().join(format!("wgpu-optim-mat-{}.json", std::process::id()));
    let out = wgpu_optim(&[
        "bench-matrices",
        "--sizes",
        "17",
        "64",
        "--width",
        "24",
        "--steps",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let matmul = report["matmul"].as_array().unwrap();
    assert_eq!(matmul.len(), 2);
    for m in matmul {
        for key in ["tiled_gflops", "naive_gflops", "tiled_ms", "naive_ms"] {
            let v = m[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{key}: {m}");
        }
    }
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6);
    for s in steps {
        assert!(s["fraction_of_copy"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["bytes_per_element"].as_f64().unwrap() >= 28.0, "{s}");
    }
    assert!(stdout.contains("tiled / naive"), "{stdout}");
    std::fs::remove_file(&json).ok();
    let line = fails_at_once(&["bench-matrices", "--sizes", "0"]);
    assert!(line.contains("--sizes"), "{line}");
}
