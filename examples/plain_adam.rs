//! The baseline the benchmarks are judged against: a plain one-kernel WGSL Adam (constants
//! baked in, one dispatch over four 64 MiB buffers, no segments, groups or flags), timed by the
//! wall clock around submit-and-wait, median of 10 steps at 2^24 elements.
//!
//! `cargo run --release --example plain_adam`, then compare with
//! `cargo run --release -- bench --optimizer adam --sizes 2^24`.

use std::time::Instant;

const SHADER: &str = "
@group(0) @binding(0) var<storage, read_write> p: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> v: array<vec4<f32>>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= arrayLength(&p)) { return; }
    let gi = g[i];
    let mi = 0.9 * m[i] + 0.1 * gi;
    let vi = 0.999 * v[i] + 0.001 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] - 0.001 * mi / (sqrt(vi) + 1e-8);
}";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    let n: u64 = 1 << 24;
    let buffers: Vec<wgpu::Buffer> = (0..4u64)
        .map(|k| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: n * 4,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            // Non-zero inputs; m and v start at small positive values.
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 2_654_435_761 + k) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&values));
            buffer
        })
        .collect();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("plain adam"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("plain adam"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(k, b)| wgpu::BindGroupEntry {
            binding: k as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut times = Vec::new();
    for step in 0..12 {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups((n / 4 / 256) as u32, 1, 1);
        }
        let start = Instant::now();
        queue.submit([encoder.finish()]);
        device.poll(wgpu::PollType::wait_indefinitely())?;
        if step >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let t = times[times.len() / 2];
    println!(
        "{}: plain one-kernel Adam, 2^24 elements: {:.1} ms, {:.2} GB/s (28 B/element)",
        adapter.get_info().name,
        t * 1e3,
        28.0 * n as f64 / t / 1e9
    );
    Ok(())
}
