//! What a framework that allocates new gradient buffers every backward pass (burn) pays each
//! step to point the optimizer at them: `rebind_external` for each of GPT-2 small's 148
//! tensors (each capped at 65,536 elements: the cost is per bind group, not per byte), the
//! median of 5 rounds.
//!
//! `cargo run --release --example rebind_timing`

use std::time::Instant;

use wgpu_optim::engine::ExternalTensor;
use wgpu_optim::optim::AdamW;
use wgpu_optim::{ContextOptions, GpuContext, Optimizer, TensorId, TensorInit};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = GpuContext::new(&ContextOptions::default())?;
    let lens: Vec<u64> = wgpu_optim::tools::bench::gpt2_small_shapes()
        .iter()
        .map(|s| s.iter().product::<u64>().min(1 << 16))
        .collect();
    let buffer = |n: u64| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("caller's tensor"),
            size: n * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let params: Vec<wgpu::Buffer> = lens.iter().map(|&n| buffer(n)).collect();
    let inits: Vec<TensorInit> = lens
        .iter()
        .zip(&params)
        .map(|(&n, p)| ExternalTensor::new(p, &buffer(n), n).into())
        .collect();
    let mut opt = Optimizer::builder(&ctx)
        .group(AdamW::default(), inits)
        .build()?;
    let mut times = Vec::new();
    for _ in 0..5 {
        // A backward pass's new gradients.
        let grads: Vec<wgpu::Buffer> = lens.iter().map(|&n| buffer(n)).collect();
        let start = Instant::now();
        for (t, (&n, (param, grad))) in lens.iter().zip(params.iter().zip(&grads)).enumerate() {
            opt.rebind_external(TensorId(t), ExternalTensor::new(param, grad, n))?;
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}: rebinding {} tensors takes {:.2} ms (median of 5; fastest {:.2})",
        ctx.info.name,
        lens.len(),
        times[2],
        times[0]
    );
    Ok(())
}
