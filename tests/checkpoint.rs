//! Checkpoints: in memory and in files, loading restores hyperparameters and options, an
//! optimizer built from a checkpoint alone continues bit for bit, and checkpoints are untrusted
//! input: whatever the bytes (truncated, mutated, lying about sizes, nonsense values), loading
//! is an error, never a panic, allocates no more than the input justifies, and changes nothing.
//!
//! `WGPU_OPTIM_PROPTEST_CASES` sets how many mutated checkpoints the fuzz test tries (256 by
//! default).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use rand::Rng;
use serde_json::{Value, json};
use wgpu_optim::engine::StepControl;
use wgpu_optim::optim::{Adam, AdamW, Sgd};
use wgpu_optim::{Error, GpuContext, GroupId, Optimizer, TensorId, TrainingOptions};

// ---------------------------------------------------------------------------------------------
// Allocation accounting: every allocation made by the current thread while tracking is on.

struct CountingAllocator;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            let _ = TOTAL.try_with(|t| t.set(t.get().saturating_add(size)));
        }
    });
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// What `f` allocated on this thread: the largest single allocation and the total, in bytes.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|t| t.set(0));
    TRACKING.with(|t| t.set(true));
    let value = f();
    TRACKING.with(|t| t.set(false));
    (value, LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// The optimizers.

const SOURCE_SIZES: [&[usize]; 2] = [&[5, 257, 1500], &[33, 4]];

/// Two groups: AdamW with clipping, a dynamic loss scale and a schedule, cut into several
/// segments; SGD with Nesterov momentum.
fn source(ctx: &GpuContext) -> Optimizer {
    let mut rng = rng(11);
    let params: Vec<Vec<Vec<f32>>> = SOURCE_SIZES
        .iter()
        .map(|g| g.iter().map(|&n| params(&mut rng, n)).collect())
        .collect();
    Optimizer::builder(ctx)
        .group_with(
            AdamW {
                lr: 1e-2,
                weight_decay: 0.1,
                ..Default::default()
            },
            training_options(),
            &params[0],
        )
        .group(
            Sgd {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            },
            &params[1],
        )
        .max_segment_bytes(4096)
        .build()
        .unwrap()
}

/// The source's shape with other values, hyperparameters and options (same states).
fn target(ctx: &GpuContext) -> Optimizer {
    let zeros: Vec<Vec<Vec<f32>>> = SOURCE_SIZES
        .iter()
        .map(|g| g.iter().map(|&n| vec![0.25; n]).collect())
        .collect();
    Optimizer::builder(ctx)
        .group(
            AdamW {
                lr: 0.5,
                beta1: 0.8,
                beta2: 0.99,
                ..Default::default()
            },
            &zeros[0],
        )
        .group_with(
            Sgd {
                lr: 0.1,
                momentum: 0.5,
                ..Default::default()
            },
            TrainingOptions {
                max_grad_norm: Some(3.0),
                ..Default::default()
            },
            &zeros[1],
        )
        .build()
        .unwrap()
}

/// One iteration: gradients from `seed`, the first group's times its current loss scale, an
/// infinity at iteration 3 (a skipped step).
fn step(opt: &mut Optimizer, k: usize) {
    let scale = opt.step_report(GroupId(0)).unwrap().loss_scale as f32;
    let mut rng = rng(1000 + k as u64);
    let mut grads = Vec::new();
    for (g, sizes) in SOURCE_SIZES.iter().enumerate() {
        for &n in sizes.iter() {
            let factor = if g == 0 { scale * 0.05 } else { 1.0 };
            grads.push(
                (0..n)
                    .map(|_| rng.random_range(-1.0f32..1.0) * factor)
                    .collect::<Vec<f32>>(),
            );
        }
    }
    if k == 3 {
        grads[1][7] = f32::INFINITY;
    }
    opt.step_with_grads(&grads.iter().map(Vec::as_slice).collect::<Vec<_>>())
        .unwrap();
}

/// Everything loading restores, exactly: every parameter and state as bits, and per group the
/// step report, configuration, options and iteration count (as text, NaN included).
#[derive(Debug, PartialEq)]
struct Snapshot {
    tensors: Vec<Vec<u32>>,
    groups: Vec<String>,
}

fn snapshot(opt: &Optimizer) -> Snapshot {
    let bits = |values: Vec<f32>| values.iter().map(|v| v.to_bits()).collect();
    let mut tensors = Vec::new();
    for t in 0..opt.num_tensors() {
        let t = TensorId(t);
        tensors.push(bits(opt.read_param(t).unwrap()));
        for name in opt.state_names(opt.group_of(t).unwrap()).unwrap() {
            tensors.push(bits(opt.read_state(t, name).unwrap()));
        }
    }
    let groups = (0..opt.num_groups())
        .map(|g| {
            let g = GroupId(g);
            format!(
                "{:?} {:?} {:?} {}",
                opt.step_report(g).unwrap(),
                opt.config(g).unwrap(),
                opt.training_options(g).unwrap(),
                opt.iterations(g).unwrap()
            )
        })
        .collect();
    Snapshot { tensors, groups }
}

/// A valid checkpoint of the source after a few steps (one of them skipped).
fn saved(ctx: &GpuContext) -> Vec<u8> {
    let mut opt = source(ctx);
    for k in 0..5 {
        step(&mut opt, k);
    }
    opt.save_checkpoint_bytes().unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// A checkpoint's parts, to lie with.

/// A safetensors file taken apart: the header (JSON) and the data after it.
#[derive(Clone, Debug)]
struct Parts {
    header: Value,
    data: Vec<u8>,
}

impl Parts {
    fn split(bytes: &[u8]) -> Self {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        Self {
            header: serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
            data: bytes[8 + n..].to_vec(),
        }
    }

    fn join(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend(&self.data);
        bytes
    }

    fn manifest(&self) -> Value {
        serde_json::from_str(self.header["__metadata__"]["wgpu-optim"].as_str().unwrap()).unwrap()
    }

    fn set_manifest(&mut self, manifest: &Value) {
        self.header["__metadata__"]["wgpu-optim"] = Value::String(manifest.to_string());
    }

    fn edit_manifest(&mut self, edit: impl FnOnce(&mut Value)) -> &mut Self {
        let mut manifest = self.manifest();
        edit(&mut manifest);
        self.set_manifest(&manifest);
        self
    }

    fn range(&self, name: &str) -> std::ops::Range<usize> {
        let offsets = &self.header[name]["data_offsets"];
        offsets[0].as_u64().unwrap() as usize..offsets[1].as_u64().unwrap() as usize
    }

    fn control(&self, group: usize) -> StepControl {
        bytemuck::pod_read_unaligned(&self.data[self.range(&format!("group{group}.control"))])
    }

    fn edit_control(&mut self, group: usize, edit: impl FnOnce(&mut StepControl)) -> &mut Self {
        let mut control = self.control(group);
        edit(&mut control);
        let range = self.range(&format!("group{group}.control"));
        self.data[range].copy_from_slice(bytemuck::bytes_of(&control));
        self
    }
}

/// Whether a load failed as a checkpoint must: one clear line.
fn check_error(err: &Error, label: &str) {
    assert!(
        matches!(err, Error::Checkpoint { .. }),
        "{label}: not a checkpoint error: {err}"
    );
    let text = err.to_string();
    assert!(
        !text.contains('\n') && text.len() < 600,
        "{label}: not one short line: {text:?}"
    );
}

/// Loads `bytes` into `target` and builds an optimizer from them: both must fail with a
/// checkpoint error whose text holds `needle`, and `target` must be as it was.
fn expect_rejected(
    ctx: &GpuContext,
    target: &mut Optimizer,
    before: &Snapshot,
    label: &str,
    bytes: &[u8],
    needle: &str,
) {
    let err = match target.load_checkpoint_bytes(bytes) {
        Ok(()) => panic!("{label}: loaded"),
        Err(err) => err,
    };
    check_error(&err, label);
    assert!(
        err.to_string().contains(needle),
        "{label}: {needle:?} not in: {err}"
    );
    assert!(err.to_string().contains("<memory>"), "{label}: {err}");
    assert_eq!(
        &snapshot(target),
        before,
        "{label}: changed by a failed load"
    );
    let err = match Optimizer::from_checkpoint(ctx, bytes) {
        Ok(_) => panic!("{label}: built"),
        Err(err) => err,
    };
    check_error(&err, label);
    assert!(
        err.to_string().contains(needle),
        "{label}: from_checkpoint: {needle:?} not in: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// What checkpoints do.

#[test]
fn bytes_and_files_hold_the_same_checkpoint() {
    let ctx = context();
    let mut opt = source(&ctx);
    for k in 0..3 {
        step(&mut opt, k);
    }
    let dir = temp_dir("ckpt-same");
    let file = dir.join("run.safetensors");
    opt.save_checkpoint(&file).unwrap();
    let bytes = opt.save_checkpoint_bytes().unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    let mut from_bytes = target(&ctx);
    from_bytes.load_checkpoint_bytes(&bytes).unwrap();
    let mut from_file = target(&ctx);
    from_file.load_checkpoint(&file).unwrap();
    let expected = snapshot(&opt);
    assert_eq!(snapshot(&from_bytes), expected);
    assert_eq!(snapshot(&from_file), expected);
    assert_eq!(
        snapshot(&Optimizer::from_checkpoint_file(&ctx, &file).unwrap()),
        expected
    );

    // Errors name the file, or `<memory>`.
    let missing = dir.join("missing.safetensors");
    let err = from_file.load_checkpoint(&missing).unwrap_err();
    check_error(&err, "missing file");
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
    let err = Optimizer::from_checkpoint_file(&ctx, &missing).unwrap_err();
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
    let err = from_bytes.load_checkpoint_bytes(&bytes[..100]).unwrap_err();
    assert!(
        err.to_string().starts_with("checkpoint <memory>: "),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loading_restores_hyperparameters_and_training_options() {
    let ctx = context();
    let mut opt = source(&ctx);
    for k in 0..5 {
        step(&mut opt, k);
    }
    let bytes = opt.save_checkpoint_bytes().unwrap();
    let mut other = target(&ctx);
    assert_ne!(
        other.config(GroupId(0)).unwrap(),
        opt.config(GroupId(0)).unwrap()
    );
    other.load_checkpoint_bytes(&bytes).unwrap();
    for g in 0..2 {
        let g = GroupId(g);
        // As torch's load_state_dict restores the param groups' settings.
        assert_eq!(other.config(g).unwrap(), opt.config(g).unwrap());
        assert_eq!(
            other.training_options(g).unwrap(),
            opt.training_options(g).unwrap()
        );
        assert_eq!(other.iterations(g).unwrap(), 5);
        assert_eq!(other.step_report(g).unwrap(), opt.step_report(g).unwrap());
    }
    assert_eq!(
        other.training_options(GroupId(0)).unwrap(),
        &training_options()
    );
    assert_eq!(
        other.training_options(GroupId(1)).unwrap(),
        &TrainingOptions::default()
    );
    let report = other.step_report(GroupId(0)).unwrap();
    assert_eq!((report.step, report.skipped_steps), (4, 1));
}

#[test]
fn an_optimizer_built_from_a_checkpoint_continues_bit_identically() {
    let ctx = context();
    let mut original = source(&ctx);
    for k in 0..5 {
        step(&mut original, k);
    }
    let bytes = original.save_checkpoint_bytes().unwrap();
    let dir = temp_dir("ckpt-build");
    let file = dir.join("run.safetensors");
    original.save_checkpoint(&file).unwrap();

    let mut resumed = Optimizer::from_checkpoint(&ctx, &bytes).unwrap();
    let mut from_file = Optimizer::from_checkpoint_file(&ctx, &file).unwrap();
    assert_eq!(snapshot(&resumed), snapshot(&original));
    assert_eq!(resumed.num_groups(), 2);
    assert_eq!(resumed.num_tensors(), 5);
    for g in 0..2 {
        let g = GroupId(g);
        // The same segments, so the clipping norm is summed in the same order.
        assert_eq!(
            resumed.num_segments(g).unwrap(),
            original.num_segments(g).unwrap()
        );
        assert_eq!(
            resumed.group_tensors(g).unwrap(),
            original.group_tensors(g).unwrap()
        );
    }
    assert!(original.num_segments(GroupId(0)).unwrap() > 1);
    // The same gradients from here on; the loss scale doubles at least once.
    for k in 5..13 {
        step(&mut original, k);
        step(&mut resumed, k);
        step(&mut from_file, k);
    }
    let expected = snapshot(&original);
    assert_eq!(snapshot(&resumed), expected);
    assert_eq!(snapshot(&from_file), expected);
    let report = resumed.step_report(GroupId(0)).unwrap();
    assert_eq!((report.step, report.skipped_steps), (12, 1));
    assert!(report.loss_scale > 512.0, "{report:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_of_other_optimizers_are_clear_errors() {
    let ctx = context();
    let bytes = saved(&ctx);
    let values = |n: usize| vec![0.5f32; n];
    let cases: Vec<(&str, Optimizer, &str)> = vec![
        (
            "one group",
            Optimizer::builder(&ctx)
                .group(AdamW::default(), [&values(5), &values(257), &values(1500)])
                .build()
                .unwrap(),
            "2 parameter groups in the file, this optimizer has 1",
        ),
        (
            "three groups",
            Optimizer::builder(&ctx)
                .group(AdamW::default(), [&values(5), &values(257), &values(1500)])
                .group(Sgd::default(), [&values(33), &values(4)])
                .group(Sgd::default(), [&values(1)])
                .build()
                .unwrap(),
            "2 parameter groups in the file, this optimizer has 3",
        ),
        (
            "other optimizer",
            Optimizer::builder(&ctx)
                .group(Adam::default(), [&values(5), &values(257), &values(1500)])
                .group(Sgd::default(), [&values(33), &values(4)])
                .build()
                .unwrap(),
            "group 0 is adamw in the file, adam here",
        ),
        (
            "other states",
            Optimizer::builder(&ctx)
                .group(
                    AdamW {
                        amsgrad: true,
                        ..Default::default()
                    },
                    [&values(5), &values(257), &values(1500)],
                )
                .group(Sgd::default(), [&values(33), &values(4)])
                .build()
                .unwrap(),
            "max_exp_avg_sq",
        ),
        (
            "other lengths",
            Optimizer::builder(&ctx)
                .group(AdamW::default(), [&values(5), &values(258), &values(1500)])
                .group(
                    Sgd {
                        momentum: 0.9,
                        ..Default::default()
                    },
                    [&values(33), &values(4)],
                )
                .build()
                .unwrap(),
            "group 0 has tensors of lengths [5, 257, 1500] in the file, [5, 258, 1500] here",
        ),
        (
            "other tensor count",
            Optimizer::builder(&ctx)
                .group(AdamW::default(), [&values(5), &values(257)])
                .group(
                    Sgd {
                        momentum: 0.9,
                        ..Default::default()
                    },
                    [&values(33), &values(4)],
                )
                .build()
                .unwrap(),
            "lengths [5, 257, 1500] in the file, [5, 257] here",
        ),
    ];
    for (label, mut opt, needle) in cases {
        let before = snapshot(&opt);
        let err = opt.load_checkpoint_bytes(&bytes).unwrap_err();
        check_error(&err, label);
        assert!(err.to_string().contains(needle), "{label}: {err}");
        assert_eq!(snapshot(&opt), before, "{label}");
    }
}

// ---------------------------------------------------------------------------------------------
// Untrusted input.

#[test]
fn truncated_checkpoints_are_errors_at_every_length() {
    let ctx = context();
    let bytes = saved(&ctx);
    let mut target = target(&ctx);
    let before = snapshot(&target);
    for len in 0..bytes.len() {
        let err = target.load_checkpoint_bytes(&bytes[..len]).unwrap_err();
        check_error(&err, &format!("truncated to {len}"));
        let err = Optimizer::from_checkpoint(&ctx, &bytes[..len]).unwrap_err();
        check_error(&err, &format!("truncated to {len}"));
        if len % 1024 == 0 {
            assert_eq!(snapshot(&target), before, "truncated to {len}");
        }
    }
    // One byte too many is no checkpoint either.
    let mut longer = bytes.clone();
    longer.push(0);
    let err = target.load_checkpoint_bytes(&longer).unwrap_err();
    check_error(&err, "one byte more");
    assert_eq!(snapshot(&target), before);
    target.load_checkpoint_bytes(&bytes).unwrap();
}

fn lie(parts: &Parts, edit: impl FnOnce(&mut Parts)) -> Vec<u8> {
    let mut parts = parts.clone();
    edit(&mut parts);
    parts.join()
}

fn lie_manifest(parts: &Parts, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    lie(parts, |p| {
        p.edit_manifest(edit);
    })
}

fn lie_control(parts: &Parts, edit: impl FnOnce(&mut StepControl)) -> Vec<u8> {
    lie(parts, |p| {
        p.edit_control(0, edit);
    })
}

/// Checkpoints that lie, each with what its error must say.
fn lies(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let parts = &Parts::split(bytes);
    let lie = |edit: &dyn Fn(&mut Parts)| lie(parts, edit);
    let manifest = |edit: &dyn Fn(&mut Value)| lie_manifest(parts, edit);
    let control = |edit: &dyn Fn(&mut StepControl)| lie_control(parts, edit);
    vec![
        // Sizes.
        (
            "a tensor of 2^60 elements in the metadata",
            manifest(&|m| m["groups"][0]["tensors"][1] = json!(1u64 << 60)),
            "tensor `tensor1.param` is F32 [257], expected F32 [1152921504606846976]",
        ),
        (
            "a tensor of u64::MAX elements in the metadata",
            manifest(&|m| m["groups"][0]["tensors"] = json!([u64::MAX])),
            "tensor 0 declares 18446744073709551615 elements, more than fit",
        ),
        (
            "tensor lengths that overflow",
            manifest(&|m| m["groups"][0]["tensors"] = json!([u64::MAX, u64::MAX])),
            "overflow",
        ),
        (
            "a tensor of 2^30 elements without data",
            manifest(&|m| m["groups"][1]["tensors"] = json!([33, 4, 1u64 << 30])),
            "tensor `tensor5.param` is missing",
        ),
        (
            "a shape of 2^60 in the header",
            lie(&|p| p.header["tensor1.param"]["shape"] = json!([1u64 << 60])),
            "not a complete safetensors file",
        ),
        (
            "a shape whose product overflows",
            lie(&|p| p.header["tensor1.param"]["shape"] = json!([1u64 << 40, 1u64 << 40])),
            "not a complete safetensors file",
        ),
        (
            "offsets past the end",
            lie(&|p| p.header["tensor0.param"]["data_offsets"] = json!([0, 1u64 << 62])),
            "not a complete safetensors file",
        ),
        (
            "another dtype, the same bytes",
            lie(&|p| {
                p.header["tensor0.param"]["dtype"] = json!("F16");
                p.header["tensor0.param"]["shape"] = json!([10]);
            }),
            "tensor `tensor0.param` is F16 [10], expected F32 [5]",
        ),
        (
            "another shape, the same bytes",
            lie(&|p| p.header["tensor0.param"]["shape"] = json!([1, 5])),
            "tensor `tensor0.param` is F32 [1, 5], expected F32 [5]",
        ),
        (
            "a control of floats",
            lie(&|p| {
                let n = p.header["group0.control"]["shape"][0].as_u64().unwrap();
                p.header["group0.control"]["dtype"] = json!("F32");
                p.header["group0.control"]["shape"] = json!([n / 4]);
            }),
            "tensor `group0.control` is F32",
        ),
        (
            "five thousand groups",
            manifest(&|m| {
                let group = m["groups"][1].clone();
                m["groups"] = Value::Array(vec![group; 5000]);
            }),
            "",
        ),
        (
            "a hundred thousand tensors",
            manifest(&|m| m["groups"][1]["tensors"] = json!(vec![1; 100_000])),
            "",
        ),
        (
            "a missing state",
            lie(&|p| {
                let info = p
                    .header
                    .as_object_mut()
                    .unwrap()
                    .remove("tensor4.momentum_buffer");
                p.header["tensor4.other"] = info.unwrap();
            }),
            "tensor `tensor4.momentum_buffer` is missing",
        ),
        (
            "a tensor more than declared",
            manifest(&|m| {
                let tensors = m["groups"][1]["tensors"].as_array_mut().unwrap();
                tensors.pop();
            }),
            "holds 15 tensors, but its metadata accounts for 13",
        ),
        (
            "no groups",
            manifest(&|m| m["groups"] = json!([])),
            "no parameter groups",
        ),
        (
            "a group without elements",
            manifest(&|m| m["groups"][1]["tensors"] = json!([0, 0])),
            "group 1 has no elements",
        ),
        (
            "segments of 17 bytes",
            manifest(&|m| m["segment_bytes"] = json!(17)),
            "segments of 17 bytes",
        ),
        // The metadata.
        (
            "another format",
            manifest(&|m| m["format"] = json!("wgpu-optim-checkpoint/9\nsecond line")),
            "format \"wgpu-optim-checkpoint/9\\nsecond line\"",
        ),
        (
            "no metadata",
            lie(&|p| {
                p.header.as_object_mut().unwrap().remove("__metadata__");
            }),
            "not a wgpu-optim checkpoint",
        ),
        (
            "metadata that is not JSON",
            lie(&|p| p.header["__metadata__"]["wgpu-optim"] = json!("{\"format\": ")),
            "unreadable metadata",
        ),
        (
            "a NaN learning rate (null in JSON)",
            manifest(&|m| m["groups"][0]["config"]["hyper"]["lr"] = Value::Null),
            "unreadable metadata",
        ),
        (
            "a negative learning rate",
            manifest(&|m| m["groups"][0]["config"]["hyper"]["lr"] = json!(-0.001)),
            "group 0: invalid adamw hyperparameter lr",
        ),
        (
            "a beta of 1.5",
            manifest(&|m| m["groups"][0]["config"]["hyper"]["beta2"] = json!(1.5)),
            "group 0: invalid adamw hyperparameter beta2",
        ),
        (
            "a negative weight decay",
            manifest(&|m| m["groups"][1]["config"]["hyper"]["weight_decay"] = json!(-1.0)),
            "group 1: invalid sgd hyperparameter weight_decay",
        ),
        (
            "a negative clipping norm",
            manifest(&|m| m["groups"][0]["options"]["max_grad_norm"] = json!(-1.0)),
            "group 0: invalid gradient clipping configuration",
        ),
        (
            "a zero growth interval",
            manifest(&|m| m["groups"][0]["options"]["grad_scaler"]["growth_interval"] = json!(0)),
            "growth_interval must be > 0",
        ),
        (
            "a schedule of unequal parts",
            manifest(&|m| {
                m["groups"][0]["options"]["schedule"]["milestones"] = json!([4, 8]);
            }),
            "group 0: invalid schedule",
        ),
        (
            "states another configuration keeps",
            manifest(&|m| m["groups"][0]["states"] = json!(["exp_avg"])),
            "group 0 lists states [\"exp_avg\"], but adamw with its hyperparameters keeps [exp_avg, exp_avg_sq]",
        ),
        (
            "amsgrad without its state",
            manifest(&|m| m["groups"][0]["config"]["hyper"]["amsgrad"] = json!(true)),
            "lists states",
        ),
        (
            "fewer iterations than steps",
            manifest(&|m| m["groups"][0]["iterations"] = json!(2)),
            "4 steps applied and 1 skipped in 2 iterations",
        ),
        // The step control.
        (
            "a NaN loss scale",
            control(&|c| c.loss_scale = f32::NAN),
            "group 0's step control: loss_scale NaN",
        ),
        (
            "a negative loss scale",
            control(&|c| c.loss_scale = -1024.0),
            "loss_scale -1024",
        ),
        (
            "an infinite loss scale",
            control(&|c| c.loss_scale = f32::INFINITY),
            "loss_scale inf",
        ),
        (
            "a zero loss scale",
            control(&|c| c.loss_scale = 0.0),
            "loss_scale 0",
        ),
        (
            "a growth tracker past the interval",
            control(&|c| c.growth_tracker = 3),
            "growth_tracker 3 past the scaler's growth_interval 3",
        ),
        (
            "a skip flag of 2",
            control(&|c| c.skip = 2),
            "flags must be 0 or 1",
        ),
        (
            "a found_inf flag of 7",
            control(&|c| c.found_inf = 7),
            "flags must be 0 or 1",
        ),
        (
            "a skip with finite gradients",
            control(&|c| {
                c.skip = 1;
                c.found_inf = 0;
            }),
            "a skipped step whose gradients were all finite",
        ),
        (
            "more steps than iterations",
            control(&|c| c.step = 1000),
            "1000 steps applied",
        ),
        (
            "u32::MAX skipped steps",
            control(&|c| c.skipped_steps = u32::MAX),
            "4294967295 skipped in 5 iterations",
        ),
        (
            "a negative norm",
            control(&|c| c.grad_norm = -1.0),
            "grad_norm -1",
        ),
        (
            "a negative multiplier",
            control(&|c| c.grad_multiplier = -0.5),
            "grad_multiplier -0.5",
        ),
    ]
}

#[test]
fn checkpoints_that_lie_are_clear_errors_and_change_nothing() {
    let ctx = context();
    let bytes = saved(&ctx);
    let mut target = target(&ctx);
    let before = snapshot(&target);
    for (label, lie, needle) in lies(&bytes) {
        expect_rejected(&ctx, &mut target, &before, label, &lie, needle);
    }
    // After all that, the real one loads.
    target.load_checkpoint_bytes(&bytes).unwrap();
    assert_eq!(
        snapshot(&target),
        snapshot(&Optimizer::from_checkpoint(&ctx, &bytes).unwrap())
    );
}

#[test]
fn checkpoints_allocate_no_more_than_their_bytes_justify() {
    // A device of its own: its counters show that nothing was allocated on it.
    let ctx = GpuContext::new(&Default::default()).unwrap();
    let bytes = saved(&ctx);
    let mut target = target(&ctx);
    let mut lies = lies(&bytes);
    // A small file that claims a 4 GiB tensor, with a header that says so too.
    let mut parts = Parts::split(&bytes);
    parts.edit_manifest(|m| m["groups"][1]["tensors"][1] = json!(1u64 << 30));
    parts.header["tensor4.param"]["shape"] = json!([1u64 << 30]);
    lies.push(("a 4 GiB tensor", parts.join(), ""));
    for _ in 0..3 {
        ctx.queue.submit([]);
        ctx.wait().unwrap();
    }
    let gpu_before = ctx.device.get_internal_counters().hal;
    for (label, lie, _) in &lies {
        for from_checkpoint in [false, true] {
            let (result, largest, total) = allocations(|| {
                if from_checkpoint {
                    Optimizer::from_checkpoint(&ctx, lie).map(drop)
                } else {
                    target.load_checkpoint_bytes(lie)
                }
            });
            assert!(result.is_err(), "{label}");
            let len = lie.len();
            assert!(
                largest <= 8 * len + (64 << 10),
                "{label} (from_checkpoint {from_checkpoint}): one allocation of {largest} bytes \
                 for {len} bytes of input"
            );
            assert!(
                total <= 32 * len + (1 << 20),
                "{label} (from_checkpoint {from_checkpoint}): {total} bytes allocated for {len} \
                 bytes of input"
            );
        }
    }
    let gpu_after = ctx.device.get_internal_counters().hal;
    assert_eq!(
        gpu_after.buffers.read(),
        gpu_before.buffers.read(),
        "GPU buffers allocated for checkpoints that were refused"
    );
    assert_eq!(
        gpu_after.buffer_memory.read(),
        gpu_before.buffer_memory.read()
    );
    assert!(gpu_before.buffers.read() > 0, "the counters count");
}

#[test]
fn from_checkpoint_refuses_tiny_segments() {
    let ctx = context();
    let bytes = saved(&ctx);
    let mut parts = Parts::split(&bytes);
    parts.edit_manifest(|m| m["segment_bytes"] = json!(512));
    let tiny = parts.join();
    let err = Optimizer::from_checkpoint(&ctx, &tiny).unwrap_err();
    check_error(&err, "512-byte segments");
    assert!(err.to_string().contains("segments of 512 bytes"), "{err}");
    // Loading into an optimizer that exists needs no segments of the file's size.
    let mut target = target(&ctx);
    target.load_checkpoint_bytes(&tiny).unwrap();
    assert_eq!(
        snapshot(&target),
        snapshot(&Optimizer::from_checkpoint(&ctx, &bytes).unwrap())
    );
}

// ---------------------------------------------------------------------------------------------
// Fuzzing and the crasher corpus.

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoints")
}

/// Every file of the corpus (inputs that once crashed or misbehaved, and lies kept as
/// examples) is refused, without a panic, and changes nothing.
#[test]
fn the_crasher_corpus_is_refused() {
    let ctx = context();
    let mut target = target(&ctx);
    let before = snapshot(&target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", corpus_dir().display());
    for file in &files {
        let label = file.file_name().unwrap().to_string_lossy();
        let err = target.load_checkpoint(file).unwrap_err();
        check_error(&err, &label);
        assert!(err.to_string().contains(&*label), "{err}");
        let err = Optimizer::from_checkpoint_file(&ctx, file).unwrap_err();
        check_error(&err, &label);
    }
    assert_eq!(snapshot(&target), before);
}

/// A small valid checkpoint (two groups, three tensors of a few elements, a skipped step):
/// the header is a good part of the file, where mutations hurt most.
fn small_checkpoint(ctx: &GpuContext) -> Vec<u8> {
    let mut source = Optimizer::builder(ctx)
        .group_with(
            AdamW::default(),
            training_options(),
            [&vec![0.5f32; 3], &vec![-1.0f32; 6]],
        )
        .group(
            Sgd {
                momentum: 0.9,
                ..Default::default()
            },
            [&vec![0.25f32; 2]],
        )
        .build()
        .unwrap();
    for k in 0..3 {
        let scale = source.step_report(GroupId(0)).unwrap().loss_scale as f32;
        let inf = if k == 1 { f32::INFINITY } else { 0.1 };
        source
            .step_with_grads(&[&[0.1 * scale; 3], &[inf * scale; 6], &[0.3; 2]])
            .unwrap();
    }
    source.save_checkpoint_bytes().unwrap()
}

/// The corpus's examples of lies, from [`small_checkpoint`].
fn corpus_lies(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let parts = &Parts::split(bytes);
    let mut huge_prefix = bytes.to_vec();
    huge_prefix[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    vec![
        ("truncated-header", bytes[..bytes.len() / 4].to_vec()),
        ("truncated-data", bytes[..bytes.len() - 5].to_vec()),
        ("header-length-u64-max", huge_prefix),
        (
            "tensor-of-2-60-elements",
            lie_manifest(parts, |m| m["groups"][0]["tensors"][0] = json!(1u64 << 60)),
        ),
        (
            "shape-of-2-60",
            lie(parts, |p| {
                p.header["tensor0.param"]["shape"] = json!([1u64 << 60]);
            }),
        ),
        (
            "offsets-past-the-end",
            lie(parts, |p| {
                p.header["tensor2.param"]["data_offsets"] = json!([0, u64::MAX]);
            }),
        ),
        (
            "hundred-groups",
            lie_manifest(parts, |m| {
                let group = m["groups"][1].clone();
                m["groups"] = Value::Array(vec![group; 100]);
            }),
        ),
        (
            "tensor-without-data",
            lie_manifest(parts, |m| {
                m["groups"][1]["tensors"] = json!([2, 1u64 << 30]);
            }),
        ),
        (
            "negative-learning-rate",
            lie_manifest(parts, |m| {
                m["groups"][1]["config"]["hyper"]["lr"] = json!(-1.0);
            }),
        ),
        (
            "nan-loss-scale",
            lie_control(parts, |c| c.loss_scale = f32::NAN),
        ),
        (
            "negative-loss-scale",
            lie_control(parts, |c| c.loss_scale = -2.0),
        ),
        (
            "growth-tracker-past-interval",
            lie_control(parts, |c| c.growth_tracker = 1000),
        ),
        ("skip-flag-of-2", lie_control(parts, |c| c.skip = 2)),
        (
            "more-steps-than-iterations",
            lie_control(parts, |c| c.step = u32::MAX),
        ),
    ]
}

/// Rewrites the corpus's examples of lies (`cargo test --release --test checkpoint --
/// --ignored write_corpus`). Crashers the fuzz test finds are kept beside them, as
/// `crash-*.safetensors`, by hand.
#[test]
#[ignore]
fn write_corpus() {
    let ctx = context();
    let bytes = small_checkpoint(&ctx);
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for (name, lie) in corpus_lies(&bytes) {
        std::fs::write(corpus_dir().join(format!("lie-{name}.safetensors")), lie).unwrap();
    }
}

/// How to damage a valid checkpoint.
#[derive(Clone, Debug)]
enum Mutation {
    /// Set bytes anywhere.
    Bytes(Vec<(Index, u8)>),
    /// Set bytes of the length prefix or the header (where the file's structure lies).
    HeaderBytes(Vec<(Index, u8)>),
    /// Cut the file short, or lengthen it.
    Resize(Index, bool),
    /// Replace, remove or duplicate a value of the safetensors header (offsets, dtypes,
    /// shapes), keeping the length prefix right.
    Header(Index, Edit),
    /// The same in the metadata (hyperparameters, options, lengths, iterations, ...).
    Manifest(Index, Edit),
    /// Set one 32-bit word of a group's step control.
    Control(Index, Index, u32),
}

#[derive(Clone, Debug)]
enum Edit {
    Replace(Value),
    Remove,
    Duplicate,
}

fn interesting_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(4)),
        Just(json!(1u64 << 32)),
        Just(json!(1u64 << 60)),
        Just(json!(u64::MAX)),
        Just(json!(-0.5)),
        Just(json!(1e308)),
        Just(json!(1e-320)),
        Just(json!(0.999)),
        Just(json!("F32")),
        Just(json!("U8")),
        Just(json!("F64")),
        Just(json!("adam")),
        Just(json!("exp_avg")),
        Just(json!("")),
        Just(Value::Null),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
        Just(json!([0, 1 << 20])),
        any::<u64>().prop_map(|v| json!(v)),
        any::<i64>().prop_map(|v| json!(v)),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| json!(v)),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => interesting_value().prop_map(Edit::Replace),
        1 => Just(Edit::Remove),
        1 => Just(Edit::Duplicate),
    ]
}

fn special_word() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(3),
        Just(u32::MAX),
        Just(f32::NAN.to_bits()),
        Just(f32::INFINITY.to_bits()),
        Just((-1.0f32).to_bits()),
        Just((-0.0f32).to_bits()),
        Just(1e-45f32.to_bits()),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that keep a header UTF-8 and JSON-like more often than random ones.
    let byte = || {
        prop_oneof![
            2 => any::<u8>(),
            2 => b'0'..=b'9',
            1 => prop::sample::select(b",:[]{}\"-.eE ".to_vec()),
        ]
    };
    let bytes = move || prop::collection::vec((any::<Index>(), byte()), 1..6);
    prop_oneof![
        2 => bytes().prop_map(Mutation::Bytes),
        3 => bytes().prop_map(Mutation::HeaderBytes),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, longer)| Mutation::Resize(i, longer)),
        3 => (any::<Index>(), edit()).prop_map(|(i, e)| Mutation::Header(i, e)),
        5 => (any::<Index>(), edit()).prop_map(|(i, e)| Mutation::Manifest(i, e)),
        3 => (any::<Index>(), any::<Index>(), special_word())
            .prop_map(|(g, w, v)| Mutation::Control(g, w, v)),
    ]
}

/// Every place in a JSON value: the paths to its members and elements, itself first.
fn places(value: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(path.clone());
    match value {
        Value::Object(map) => {
            for (key, member) in map {
                path.push(Step::Key(key.clone()));
                places(member, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Step::At(i));
                places(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    At(usize),
}

/// Applies `edit` at the place `pick` chooses.
fn edit_json(root: &mut Value, pick: Index, edit: &Edit) {
    let mut all = Vec::new();
    places(root, &mut Vec::new(), &mut all);
    let path = pick.get(&all).clone();
    let Some((last, parent_path)) = path.split_last() else {
        if let Edit::Replace(v) = edit {
            *root = v.clone();
        }
        return;
    };
    let mut parent = &mut *root;
    for step in parent_path {
        parent = match step {
            Step::Key(k) => &mut parent[k.as_str()],
            Step::At(i) => &mut parent[*i],
        };
    }
    match (edit, last, parent) {
        (Edit::Replace(v), Step::Key(k), p) => p[k.as_str()] = v.clone(),
        (Edit::Replace(v), Step::At(i), p) => p[*i] = v.clone(),
        (Edit::Remove, Step::Key(k), Value::Object(map)) => {
            map.remove(k);
        }
        (Edit::Remove, Step::At(i), Value::Array(items)) => {
            items.remove(*i);
        }
        (Edit::Duplicate, Step::At(i), Value::Array(items)) => {
            let item = items[*i].clone();
            items.insert(*i, item);
        }
        (Edit::Duplicate, Step::Key(k), Value::Object(map)) => {
            let member = map[k].clone();
            map.insert(format!("{k}2"), member);
        }
        _ => {}
    }
}

fn mutate(valid: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for m in mutations {
        match m {
            Mutation::Bytes(sets) => {
                for (at, value) in sets {
                    if !bytes.is_empty() {
                        let i = at.index(bytes.len());
                        bytes[i] = *value;
                    }
                }
            }
            Mutation::HeaderBytes(sets) => {
                let header_end = bytes
                    .get(..8)
                    .map(|n| u64::from_le_bytes(n.try_into().unwrap()))
                    .map_or(0, |n| (n as usize).saturating_add(8).min(bytes.len()));
                for (at, value) in sets {
                    if header_end > 0 {
                        let i = at.index(header_end);
                        bytes[i] = *value;
                    }
                }
            }
            Mutation::Resize(at, longer) => {
                if *longer {
                    let extra = at.index(64) + 1;
                    bytes.extend(std::iter::repeat_n(0x20, extra));
                } else if !bytes.is_empty() {
                    bytes.truncate(at.index(bytes.len()));
                }
            }
            Mutation::Header(pick, e) | Mutation::Manifest(pick, e) => {
                // Only a file that still parses can be edited structurally.
                let Some(mut parts) = try_split(&bytes) else {
                    continue;
                };
                if matches!(m, Mutation::Header(..)) {
                    edit_json(&mut parts.header, *pick, e);
                } else {
                    let Some(mut manifest) = parts.header["__metadata__"]["wgpu-optim"]
                        .as_str()
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    else {
                        continue;
                    };
                    edit_json(&mut manifest, *pick, e);
                    parts.set_manifest(&manifest);
                }
                bytes = parts.join();
            }
            Mutation::Control(group, word, value) => {
                let Some(mut parts) = try_split(&bytes) else {
                    continue;
                };
                let controls: Vec<String> = parts
                    .header
                    .as_object()
                    .map(|o| {
                        o.keys()
                            .filter(|k| k.ends_with(".control"))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if controls.is_empty() {
                    continue;
                }
                let name = group.get(&controls);
                let offsets = &parts.header[name]["data_offsets"];
                let (Some(start), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
                    continue;
                };
                let words = (end.saturating_sub(start) / 4) as usize;
                let at = start as usize + 4 * word.index(words.max(1));
                if words > 0 && at + 4 <= parts.data.len() {
                    parts.data[at..at + 4].copy_from_slice(&value.to_le_bytes());
                    bytes = parts.join();
                }
            }
        }
    }
    bytes
}

fn try_split(bytes: &[u8]) -> Option<Parts> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    Some(Parts {
        header,
        data: bytes[8 + n..].to_vec(),
    })
}

fn fuzz_cases() -> u32 {
    std::env::var("WGPU_OPTIM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The fixtures the fuzz test shares across its cases.
struct Fuzz {
    ctx: GpuContext,
    valid: Vec<u8>,
    target: Optimizer,
    /// The target's own checkpoint, to undo a mutated one that loaded.
    target_bytes: Vec<u8>,
    before: Snapshot,
}

fn fuzz_fixture() -> std::sync::MutexGuard<'static, Fuzz> {
    static FUZZ: std::sync::OnceLock<std::sync::Mutex<Fuzz>> = std::sync::OnceLock::new();
    FUZZ.get_or_init(|| {
        let ctx = context();
        let valid = small_checkpoint(&ctx);
        let target = Optimizer::builder(&ctx)
            .group(
                AdamW {
                    lr: 0.25,
                    ..Default::default()
                },
                [&vec![2.0f32; 3], &vec![3.0f32; 6]],
            )
            .group(
                Sgd {
                    momentum: 0.5,
                    ..Default::default()
                },
                [&vec![4.0f32; 2]],
            )
            .build()
            .unwrap();
        let target_bytes = target.save_checkpoint_bytes().unwrap();
        let before = snapshot(&target);
        std::sync::Mutex::new(Fuzz {
            ctx,
            valid,
            target,
            target_bytes,
            before,
        })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    /// Mutated checkpoints: a load either succeeds or fails with one clear line and changes
    /// nothing; building from them never panics either.
    #[test]
    fn mutated_checkpoints_never_panic_and_fail_without_changing_anything(
        mutations in prop::collection::vec(mutation(), 1..4)
    ) {
        let mut fuzz = fuzz_fixture();
        let bytes = mutate(&fuzz.valid, &mutations);
        let Fuzz { ctx, target, target_bytes, before, .. } = &mut *fuzz;
        match target.load_checkpoint_bytes(&bytes) {
            Err(err) => {
                prop_assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
                prop_assert!(!err.to_string().contains('\n'), "{err}");
                prop_assert!(snapshot(target) == *before, "changed by a failed load: {err}");
            }
            Ok(()) => {
                // A mutation the checks cannot see (a parameter's bits, say): undo it.
                target.load_checkpoint_bytes(target_bytes).unwrap();
                prop_assert!(snapshot(target) == *before);
            }
        }
        if let Err(err) = Optimizer::from_checkpoint(ctx, &bytes) {
            prop_assert!(!err.to_string().contains('\n'), "{err}");
        }
    }
}
