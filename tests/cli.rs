//! The `wgpu-optim` binary as a newcomer meets it.

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
    let out = wgpu_optim(&["bench", "--optimizer", "lion", "--sizes", "1024"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        line.contains("lion") && line.contains("adamw") && line.contains("sgd"),
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
