//! `report`: two real result files made on this machine (lavapipe's Vulkan and llvmpipe's GL
//! backends, `data/bench/`) merged into a markdown table and a chart.

#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};

use wgpu_optim::optim::OPTIMIZER_NAMES;
use wgpu_optim::tools::report::{self, BenchFile};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/bench")
        .join(name)
}

fn real_files() -> Vec<BenchFile> {
    ["lavapipe-vulkan.json", "llvmpipe-gl.json"]
        .iter()
        .map(|f| BenchFile::load(&data(f)).unwrap())
        .collect()
}

#[test]
fn the_markdown_lists_every_adapter_and_every_measurement() {
    let files = real_files();
    let table = report::markdown(&files);
    assert!(
        table.contains("(vulkan)") && table.contains("(gl)"),
        "{table}"
    );
    for name in OPTIMIZER_NAMES {
        for size in ["2^20", "2^24"] {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| {name} | {size} |")))
                .unwrap_or_else(|| panic!("no row for {name} {size}:\n{table}"));
            // One "GB/s (fraction)" cell per adapter, taken from the files.
            assert_eq!(
                row.matches(" (0.").count() + row.matches(" (1.").count(),
                2,
                "{row}"
            );
            let gbps = files[0]
                .results
                .iter()
                .find(|r| r.optimizer == name && r.workload == size)
                .unwrap()
                .gbps;
            assert!(row.contains(&format!("{gbps:.1} (")), "{row}");
        }
    }
}

#[test]
fn the_chart_is_written_as_png_and_svg() {
    let files = real_files();
    assert_eq!(report::chart_workload(&files).as_deref(), Some("2^24"));
    let dir = std::env::temp_dir().join(format!("wgpu-optim-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (png, svg) = report::write_chart(&files, &dir.join("chart")).unwrap();
    let png_bytes = std::fs::read(&png).unwrap();
    assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png_bytes.len() > 20_000,
        "a chart, not a blank image: {} bytes",
        png_bytes.len()
    );
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    for name in OPTIMIZER_NAMES {
        assert!(
            svg_text.lines().any(|l| l.trim() == name),
            "no label {name}"
        );
    }
    assert!(svg_text.contains("(gl)") && svg_text.contains("copy kernel"));
    // Both adapters sit within 2x of each other: a linear axis.
    assert!(!svg_text.contains("log scale"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rates_far_apart_get_a_log_axis() {
    let mut files = real_files();
    let mut fast = files[0].clone();
    fast.adapter.name = "a much faster adapter".into();
    for r in &mut fast.results {
        r.gbps *= 1000.0;
    }
    files.push(fast);
    let dir = std::env::temp_dir().join(format!("wgpu-optim-report-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, svg) = report::write_chart(&files, &dir.join("chart")).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().contains("log scale"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_that_is_not_a_bench_result_is_a_clear_error() {
    let err = BenchFile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/torch-optim.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("torch-optim.json") && err.contains("bench --json"),
        "{err}"
    );
}

#[test]
fn a_result_file_that_cannot_be_read_is_named_as_one() {
    let err = BenchFile::load(Path::new("/no/such/result.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("bench result file /no/such/result.json: ") && !err.contains("fixture"),
        "{err}"
    );
}

#[test]
fn a_chart_that_cannot_be_written_is_one_line_naming_it() {
    let stem = std::env::temp_dir()
        .join(format!("wgpu-optim-no-such-dir-{}", std::process::id()))
        .join("chart");
    let err = report::write_chart(&real_files(), &stem)
        .unwrap_err()
        .to_string();
    let png = stem.with_extension("png");
    assert!(
        err.starts_with(&format!("chart {}: ", png.display()))
            && err.contains("No such file or directory")
            && !err.contains("IoError")
            && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(
        report::chart_paths(&stem),
        (png, stem.with_extension("svg"))
    );
}
