//! A framework that already owns a wgpu device and its parameter and gradient buffers hands
//! them to the optimizer, which updates them in place: no copies, and the step is recorded in
//! the framework's own command encoder, right after its (here: simulated) backward pass.
//!
//! `cargo run --release --example interop`

use wgpu_optim::engine::ExternalTensor;
use wgpu_optim::optim::AdamW;
use wgpu_optim::{GpuContext, Optimizer, TensorId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The framework's device, opened with plain wgpu. It asks for immediates, which lets the
    // optimizer record steps without any per-step buffer write.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & wgpu::Features::IMMEDIATES,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    println!("adapter: {}", adapter.get_info().name);

    // The framework's tensors: a 256x256 weight and a bias, each with its gradient buffer.
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let tensor = |label: &str, values: &[f32]| {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (values.len() * 4) as u64,
            usage,
            mapped_at_creation: false,
        });
        queue.write_buffer(&buffer, 0, bytemuck::cast_slice(values));
        buffer
    };
    let weight = tensor("weight", &vec![0.5; 256 * 256]);
    let weight_grad = tensor("weight.grad", &vec![0.0; 256 * 256]);
    let bias = tensor("bias", &[0.0; 256]);
    let bias_grad = tensor("bias.grad", &[0.0; 256]);

    // The optimizer on the same device, over the framework's buffers.
    let ctx = GpuContext::from_device(device.clone(), queue.clone());
    let mut opt = Optimizer::builder(&ctx)
        .group(
            AdamW {
                lr: 1e-2,
                weight_decay: 0.01,
                ..Default::default()
            },
            [
                ExternalTensor::new(&weight, &weight_grad, 256 * 256),
                ExternalTensor::new(&bias, &bias_grad, 256),
            ],
        )
        .build()?;

    for step in 0..10 {
        let mut encoder = device.create_command_encoder(&Default::default());
        // The framework's backward pass would write the gradients here, on the GPU.
        encoder.clear_buffer(&bias_grad, 0, None);
        queue.write_buffer(
            &weight_grad,
            0,
            bytemuck::cast_slice(&vec![0.1f32 * (step + 1) as f32; 256 * 256]),
        );
        // The optimizer step joins the same command buffer: one submit, no host round trip.
        opt.encode_step(&mut encoder, None)?;
        queue.submit([encoder.finish()]);
    }

    let w = opt.read_param(TensorId(0))?;
    let b = opt.read_param(TensorId(1))?;
    println!(
        "after 10 steps: weight[0] = {:.6}, bias[0] = {:.6}",
        w[0], b[0]
    );
    // AdamW moves each weight by about lr per step against a gradient of constant sign, and
    // decays it by lr * wd; the bias had zero gradients and zero value: it stays put.
    assert!((0.39..0.41).contains(&w[0]), "{}", w[0]);
    assert_eq!(b[0], 0.0);
    Ok(())
}
