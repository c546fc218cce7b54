//! The optimizers over shaped tensors and their matrix products, measured (`wgpu-optim
//! bench-matrices`): the tiled product against the naive one in GFLOP/s, the two alternating
//! in one run; Adafactor's and Muon's steps on real shapes, in bytes per parameter and as a
//! fraction of the same adapter's copy kernel, measured in the same run; L-BFGS's vector
//! operations per element.
//!
//! Times are the host's clock around submit-and-wait (medians); every input is random, never
//! zeros, and the products' outputs are poisoned before the first timing.

use std::time::Instant;

use serde::Serialize;

use super::{BenchOptions, CopyResult, measure_copy, timing::median};
use crate::context::GpuContext;
use crate::error::Result;
use crate::fill::RandomFill;
use crate::optim::lbfgs::VectorSpace;
use crate::optim::{Adafactor, Muon};
use crate::shaped::matmul::{MatmulKernel, Product, ProductBatch};
use crate::shaped::{ShapedConfig, ShapedOptimizer};
use crate::vectors::DeviceVectors;

/// One square product size, both kernels.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulResult {
    /// n: the product is (n×n)·(n×n).
    pub n: u32,
    /// Products per timed batch (batched as Muon batches its matrices).
    pub batch: u32,
    /// Median milliseconds of one batch, tiled kernel.
    pub tiled_ms: f64,
    /// Median milliseconds of one batch, naive kernel.
    pub naive_ms: f64,
    /// Tiled GFLOP/s (2n³ per product).
    pub tiled_gflops: f64,
    /// Naive GFLOP/s.
    pub naive_gflops: f64,
}

/// One optimizer step over a group of matrices.
#[derive(Clone, Debug, Serialize)]
pub struct ShapedStepResult {
    /// `adafactor` or `muon`.
    pub optimizer: String,
    /// The group, as `shape x count, ...`.
    pub workload: String,
    /// Parameters in the group.
    pub elements: u64,
    /// Median milliseconds per step.
    pub median_ms: f64,
    /// Bytes a step moves at least, per parameter.
    pub bytes_per_element: f64,
    /// Those bytes per second, 1e9.
    pub gbps: f64,
    /// `gbps` over the copy kernel's, measured in the same run.
    pub fraction_of_copy: f64,
    /// Muon: the Newton–Schulz products' floating-point operations per second, 1e9.
    pub gflops: Option<f64>,
}

/// Everything `bench-matrices` measured.
#[derive(Clone, Debug, Serialize)]
pub struct MatricesReport {
    /// The adapter.
    pub adapter: String,
    /// The copy ceiling.
    pub copy: CopyResult,
    /// Tiled against naive.
    pub matmul: Vec<MatmulResult>,
    /// Adafactor and Muon steps.
    pub steps: Vec<ShapedStepResult>,
    /// L-BFGS's dot product on a vector of this many elements: milliseconds and GB/s.
    pub lbfgs_dot: Option<(u64, f64, f64)>,
}

fn time(ctx: &GpuContext, mut run: impl FnMut()) -> Result<f64> {
    let start = Instant::now();
    run();
    ctx.wait()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn random_buffer(ctx: &GpuContext, elements: u64, seed: u32) -> Result<wgpu::Buffer> {
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench matrices"),
        size: elements * 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let view = crate::transfer::View::whole(&buffer);
    crate::fill::fill(ctx, &[view], 0, &RandomFill::symmetric(seed, 1.0))?;
    Ok(buffer)
}

/// The tiled and the naive kernel on `batch` products (n×n)·(n×n), alternating, `steps`
/// timings of each.
pub fn bench_matmul(ctx: &GpuContext, n: u32, batch: u32, steps: usize) -> Result<MatmulResult> {
    let per = (n * n) as u64;
    // A and B shared by the batch, one output each: inputs random, outputs overwritten.
    let mats = random_buffer(ctx, per * (2 + batch as u64), n)?;
    let products: Vec<Product> = (0..batch)
        .map(|i| Product {
            m: n,
            n,
            k: n,
            a: 0,
            b: n * n,
            out: (2 + i) * n * n,
            alpha: 1.0,
            ..Default::default()
        })
        .collect();
    let tiled = ProductBatch::new(ctx, &mats, &products, MatmulKernel::Tiled)?;
    let naive = ProductBatch::new(ctx, &mats, &products, MatmulKernel::Naive)?;
    let run = |batch: &ProductBatch| {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            batch.record(&mut pass);
        }
        ctx.queue.submit([encoder.finish()]);
    };
    // Warm-up, compiling both.
    time(ctx, || run(&tiled))?;
    time(ctx, || run(&naive))?;
    let (mut t, mut v) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        t.push(time(ctx, || run(&tiled))?);
        v.push(time(ctx, || run(&naive))?);
    }
    let (tiled_ms, naive_ms) = (median(&mut t), median(&mut v));
    let flops = tiled.flops();
    Ok(MatmulResult {
        n,
        batch,
        tiled_ms,
        naive_ms,
        tiled_gflops: flops / tiled_ms / 1e6,
        naive_gflops: flops / naive_ms / 1e6,
    })
}

/// `config`'s step over `count` matrices of `shape`, median of `steps` after `warmup`.
pub fn bench_shaped_step(
    ctx: &GpuContext,
    config: ShapedConfig,
    shape: &[usize],
    count: usize,
    steps: usize,
    warmup: usize,
    copy: &CopyResult,
) -> Result<ShapedStepResult> {
    let numel: usize = shape.iter().product();
    let values: Vec<f32> = (0..numel as u64)
        .map(|i| RandomFill::symmetric(7, 0.5).value(i))
        .collect();
    let grads: Vec<f32> = (0..numel as u64)
        .map(|i| RandomFill::symmetric(8, 0.125).value(i))
        .collect();
    let tensors: Vec<(&[usize], &[f32])> = (0..count).map(|_| (shape, values.as_slice())).collect();
    let mut opt = ShapedOptimizer::new(ctx, config.clone(), &tensors)?;
    for t in 0..count {
        opt.write_grad(t, &grads)?;
    }
    for _ in 0..warmup.max(1) {
        opt.step()?;
    }
    opt.wait()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        times.push(time(ctx, || {
            opt.step().expect("checked at construction");
        })?);
    }
    let median_ms = median(&mut times);
    let elements = (numel * count) as u64;
    let bytes = opt.bytes_per_step();
    let gbps = bytes / median_ms / 1e6;
    let gflops = match &config {
        ShapedConfig::Muon(m) => {
            let (rows, cols) = (shape[0] as f64, shape[1] as f64);
            let (p, q) = (rows.min(cols), rows.max(cols));
            // Per iteration: XXᵀ (2p²q), A·A (2p³), T·X (2p²q).
            let per_matrix = m.ns_steps as f64 * (4.0 * p * p * q + 2.0 * p * p * p);
            Some(per_matrix * count as f64 / median_ms / 1e6)
        }
        ShapedConfig::Adafactor(_) => None,
    };
    Ok(ShapedStepResult {
        optimizer: config.name().into(),
        workload: format!("{shape:?} x {count}"),
        elements,
        median_ms,
        bytes_per_element: bytes / elements as f64,
        gbps,
        fraction_of_copy: gbps / copy.gbps,
        gflops,
    })
}

/// L-BFGS's dot product on the device (two passes and a 4-byte read back) over `len`
/// elements: median milliseconds and GB/s of the 8 bytes per element it reads.
pub fn bench_lbfgs_dot(ctx: &GpuContext, len: usize, steps: usize) -> Result<(f64, f64)> {
    let mut space = DeviceVectors::new(ctx, len)?;
    let values: Vec<f32> = (0..len as u64)
        .map(|i| RandomFill::symmetric(3, 1.0).value(i))
        .collect();
    let a = space.from_values(&values)?;
    let b = space.from_values(&values)?;
    space.dot(&a, &b)?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let start = Instant::now();
        space.dot(&a, &b)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(&mut times);
    Ok((ms, 8.0 * len as f64 / ms / 1e6))
}

/// The whole `bench-matrices` run: the copy ceiling, the products at `sizes`, Adafactor and
/// Muon on one transformer block's matrices of width `width` (width×width ×4 for attention,
/// width×4·width and 4·width×width for the MLP: GPT-2 small's at 768), L-BFGS's dot product.
pub fn run(ctx: &GpuContext, sizes: &[u32], width: usize, steps: usize) -> Result<MatricesReport> {
    let options = BenchOptions::quick();
    let copy = measure_copy(ctx, &options)?;
    let mut matmul = Vec::new();
    for &n in sizes {
        matmul.push(bench_matmul(ctx, n, 4, steps)?);
    }
    let mut results = Vec::new();
    let (square, wide, tall) = ([width, width], [width, 4 * width], [4 * width, width]);
    let layer: [(&[usize], usize); 3] = [(&square, 4), (&wide, 1), (&tall, 1)];
    for config in [
        ShapedConfig::from(Adafactor::default()),
        ShapedConfig::from(Muon::default()),
    ] {
        for (shape, count) in layer {
            results.push(bench_shaped_step(
                ctx,
                config.clone(),
                shape,
                count,
                steps,
                2,
                &copy,
            )?);
        }
    }
    let lbfgs_len = 1 << 22;
    let (ms, gbps) = bench_lbfgs_dot(ctx, lbfgs_len, steps)?;
    Ok(MatricesReport {
        adapter: ctx.summary().name,
        copy,
        matmul,
        steps: results,
        lbfgs_dot: Some((lbfgs_len as u64, ms, gbps)),
    })
}

impl MatricesReport {
    /// The report as markdown tables.
    pub fn table(&self) -> String {
        let mut out = format!(
            "adapter: {}; copy kernel {:.2} GB/s\n\n| n (×4 products) | tiled ms | naive ms | tiled GFLOP/s | naive GFLOP/s | tiled / naive |\n|---:|---:|---:|---:|---:|---:|\n",
            self.adapter, self.copy.gbps
        );
        for m in &self.matmul {
            out += &format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x |\n",
                m.n,
                m.tiled_ms,
                m.naive_ms,
                m.tiled_gflops,
                m.naive_gflops,
                m.naive_ms / m.tiled_ms
            );
        }
        out += "\n| optimizer | matrices | elements | ms/step | B/elem | GB/s | x copy | NS GFLOP/s |\n|---|---|---:|---:|---:|---:|---:|---:|\n";
        for s in &self.steps {
            out += &format!(
                "| {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.2} | {} |\n",
                s.optimizer,
                s.workload,
                s.elements,
                s.median_ms,
                s.bytes_per_element,
                s.gbps,
                s.fraction_of_copy,
                s.gflops.map_or("-".into(), |g| format!("{g:.2}"))
            );
        }
        if let Some((len, ms, gbps)) = self.lbfgs_dot {
            out += &format!(
                "\nL-BFGS dot product on the device, {len} elements: {ms:.2} ms ({gbps:.2} GB/s of its 8 bytes per element, read back included)\n"
            );
        }
        out
    }
}
