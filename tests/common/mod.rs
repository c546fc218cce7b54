//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::OnceLock;

use rand::rngs::SmallRng as StdRng;
use rand::{Rng, SeedableRng};
use wgpu_optim::{
    ContextOptions, Format, GpuContext, Optimizer, OptimizerConfig, ReferenceGroup, Storage,
    TrainingOptions,
};

/// The sizes every optimizer is checked at: tails of every length modulo 4, workgroup
/// boundaries (256), and sizes past one dispatch dimension's worth of small workgroups.
pub const AWKWARD_SIZES: [usize; 9] = [1, 3, 4, 5, 255, 256, 257, 65_537, 1_000_003];

/// One device for the whole test binary: opening lavapipe costs ~100 ms per device.
/// With no adapter at all this fails, naming the package to install; it never skips.
pub fn context() -> GpuContext {
    static CONTEXT: OnceLock<GpuContext> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            GpuContext::new(&ContextOptions::default()).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// A device whose q8 kernels look their maps up as `lookups` says (the default context takes
/// what suits the adapter: the uniform on lavapipe).
pub fn context_with_q8_lookups(lookups: wgpu_optim::Q8Lookups) -> GpuContext {
    GpuContext::new(&ContextOptions {
        q8_lookups: Some(lookups),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A device whose limits are lowered to `binding_bytes` per storage binding and buffer, so
/// that small vectors cross many segment boundaries.
pub fn context_with_binding_limit(binding_bytes: u32) -> GpuContext {
    let probe = context();
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: binding_bytes as u64,
        max_buffer_size: binding_bytes as u64,
        ..probe.limits.clone()
    };
    GpuContext::new(&ContextOptions {
        limits: Some(limits),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Parameters in [-2, 2), never exactly zero.
pub fn params(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v: f32 = rng.random_range(-2.0..2.0);
            if v == 0.0 { 0.5 } else { v }
        })
        .collect()
}

/// [`params`] for each of `sizes`, rounded to `format` (what a group in that format stores).
pub fn stored_params(rng: &mut StdRng, sizes: &[usize], format: Format) -> Vec<Vec<f32>> {
    sizes
        .iter()
        .map(|&n| params(rng, n).iter().map(|v| format.round(*v)).collect())
        .collect()
}

/// A magnitude per element, log-uniform over [1e-2, 10): gradients of very different sizes
/// side by side, as in a real model.
pub fn grad_scales(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| 10f32.powf(rng.random_range(-2.0..1.0)))
        .collect()
}

/// One step's gradients: roughly normal values times each element's scale, about 1 in 100
/// exactly zero (as in PyTorch's own fixtures).
pub fn grads(rng: &mut StdRng, scales: &[f32]) -> Vec<f32> {
    scales
        .iter()
        .map(|&s| {
            if rng.random_range(0..100) == 0 {
                0.0
            } else {
                // Sum of three uniforms: bell-shaped, unbounded enough, cheap.
                let n: f32 = (0..3).map(|_| rng.random_range(-1.0f32..1.0)).sum();
                s * n
            }
        })
        .collect()
}

pub fn to_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

/// The float64 reference of a group stored as `storage`, starting from `params`.
pub fn stored_reference(
    config: impl Into<OptimizerConfig>,
    options: TrainingOptions,
    storage: Storage,
    params: &[Vec<f32>],
) -> ReferenceGroup {
    ReferenceGroup::with_storage(
        config.into(),
        options,
        storage,
        params.iter().map(|p| to_f64(p)).collect(),
    )
    .unwrap()
}

/// Element-wise comparison of a float32 GPU result with the float64 reference:
/// |gpu - ref| <= rtol * scale + 2 * slack, where, per element, `scale` is the size of the terms
/// that made the value (so values that cancel towards zero are judged against the size of what
/// cancelled) and `slack` how far the reference itself moves when its inputs are perturbed by
/// a little more than float32 rounding (non-zero only where the update is ill-conditioned, e.g.
/// Adam's first step g / |g| when the gradient cancels against the weight decay). Returns the
/// worst ratio error / bound, or a message naming the first offending element.
pub fn compare(
    what: &str,
    gpu: &[f32],
    reference: &[f64],
    scale: &[f64],
    slack: &[f64],
    rtol: f64,
) -> Result<f64, String> {
    assert_eq!(gpu.len(), reference.len(), "{what}: lengths differ");
    let mut worst = 0.0f64;
    for (i, (((&g, &r), &s), &k)) in gpu.iter().zip(reference).zip(scale).zip(slack).enumerate() {
        if !g.is_finite() {
            return Err(format!("{what}[{i}] = {g} (reference {r})"));
        }
        let bound = (rtol * s + 2.0 * k).max(f64::MIN_POSITIVE);
        let ratio = (g as f64 - r).abs() / bound;
        if ratio > 1.0 {
            return Err(format!(
                "{what}[{i}] = {g:e}, reference {r:e}: off by {:e}, allowed {bound:e}",
                (g as f64 - r).abs()
            ));
        }
        worst = worst.max(ratio);
    }
    Ok(worst)
}

/// One step with the same gradients on the GPU and on the reference.
pub fn step_both(opt: &mut Optimizer, reference: &mut ReferenceGroup, grads: &[Vec<f32>]) {
    opt.step_with_grads(&grads.iter().map(Vec::as_slice).collect::<Vec<_>>())
        .unwrap();
    reference
        .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
        .unwrap();
}

/// Clipping, a dynamic loss scaler that grows every 3 good steps, and a warm-up-then-cosine
/// schedule: every training-loop feature at once, for the training and checkpoint tests.
pub fn training_options() -> wgpu_optim::TrainingOptions {
    wgpu_optim::TrainingOptions {
        max_grad_norm: Some(1.0),
        grad_scaler: Some(wgpu_optim::GradScaler {
            init_scale: 1024.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 3,
        }),
        schedule: Some(wgpu_optim::Schedule::Sequential {
            schedules: vec![
                wgpu_optim::Schedule::Linear {
                    start_factor: 0.25,
                    end_factor: 1.0,
                    total_iters: 4,
                },
                wgpu_optim::Schedule::Cosine {
                    t_max: 10,
                    eta_min: 1e-4,
                },
            ],
            milestones: vec![4],
        }),
        ..Default::default()
    }
}

/// Bits of significand (the implicit one included).
pub fn significand_bits(format: Format) -> i32 {
    match format {
        Format::F32 => 24,
        Format::Bf16 => 8,
        Format::F16 => 11,
        // A q8 value's precision depends on its block; `check_q8` bounds it by code steps.
        Format::Q8 => 8,
    }
}

/// The unit in the last place of `format` at magnitude `x`, as a relative bound's scale.
pub fn ulp(format: Format, x: f64) -> f64 {
    let bits = significand_bits(format);
    let x = x.abs().max(match format {
        Format::F16 => 6.1e-5,
        _ => 1.2e-38,
    });
    2f64.powi(x.log2().floor() as i32 - (bits - 1))
}

/// Every byte of a buffer (which needs `COPY_SRC`), read back through a staging buffer the
/// caller's way, waiting for the device.
pub fn read_buffer_bytes(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    buffer: &wgpu::Buffer,
) -> Vec<u8> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test read-back"),
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    queue.submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    staging.get_mapped_range(..).unwrap().to_vec()
}

/// An optimizer of one group, one tensor starting at `params`, kept in `storage`, with the
/// default training options.
pub fn one_tensor(
    ctx: &GpuContext,
    config: impl Into<OptimizerConfig>,
    storage: Storage,
    params: &[f32],
) -> Optimizer {
    Optimizer::builder(ctx)
        .group_stored(config, storage, TrainingOptions::default(), [params])
        .build()
        .unwrap()
}
