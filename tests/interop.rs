//! A caller who already has a wgpu device and parameter/gradient buffers hands them to the
//! optimizer, which updates them in place: no copies, and nothing outside the tensors touched.

mod common;

use common::*;
use wgpu_optim::engine::ExternalTensor;
use wgpu_optim::optim::{AdamW, Lamb, Sgd};
use wgpu_optim::{
    Format, GpuContext, Optimizer, OptimizerConfig, ReferenceGroup, TensorId, TensorInit,
};

/// The caller's own device, opened with plain wgpu (not through this crate).
fn callers_device() -> (wgpu::Device, wgpu::Queue) {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("an adapter (install mesa-vulkan-drivers for lavapipe)");
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap()
}

/// The optimizer these tests step: AdamW with a weight decay large enough to matter.
fn adamw() -> OptimizerConfig {
    AdamW {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    }
    .into()
}

/// A caller's buffer holding `values` at byte `offset`, NaN everywhere else.
fn poisoned_buffer(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    offset: u64,
    values: &[f32],
    tail: u64,
) -> wgpu::Buffer {
    let total = offset / 4 + values.len() as u64 + tail;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's tensor"),
        size: total * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut contents = vec![f32::NAN; total as usize];
    contents[(offset / 4) as usize..][..values.len()].copy_from_slice(values);
    queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&contents));
    buffer
}

/// The whole buffer, read the caller's way.
fn read_all(device: &wgpu::Device, queue: &wgpu::Queue, buffer: &wgpu::Buffer) -> Vec<f32> {
    bytemuck::cast_slice(&read_buffer_bytes(device, queue, buffer)).to_vec()
}

/// `values` as a caller keeps them in `format`: little-endian float32, f16 or bf16.
fn encode(format: Format, values: &[f32]) -> Vec<u8> {
    match format {
        Format::F32 => bytemuck::cast_slice(values).to_vec(),
        Format::F16 => values
            .iter()
            .flat_map(|v| wgpu_optim::half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|v| wgpu_optim::half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Every tensor's model parameters after `step` steps against the reference's: within a few
/// units in the last place of the parameters' format per step.
fn assert_follows_reference(
    label: &str,
    opt: &Optimizer,
    reference: &ReferenceGroup,
    format: Format,
    step: u64,
) {
    let unit = if format == Format::F32 {
        1e-5
    } else {
        4.0 * ulp(format, 1.0)
    };
    for (t, want) in reference.model_params().iter().enumerate() {
        let gpu = opt.read_param(TensorId(t)).unwrap();
        compare(
            &format!("{label} step {step} tensor {t} ({} values)", want.len()),
            &gpu,
            want,
            &vec![2.0; want.len()],
            &vec![0.0; want.len()],
            unit * step as f64,
        )
        .unwrap();
    }
}

/// The caller's tensors: for each of `params`, a parameter buffer holding it at byte
/// `param_offset` and a zero gradient at `grad_offset`, NaN around both, bound as external
/// tensors.
fn callers_tensors<'a>(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    params: &[Vec<f32>],
    param_offset: u64,
    grad_offset: u64,
) -> (Vec<wgpu::Buffer>, Vec<wgpu::Buffer>, Vec<TensorInit<'a>>) {
    let param_buffers: Vec<wgpu::Buffer> = params
        .iter()
        .map(|p| poisoned_buffer(device, queue, param_offset, p, 5))
        .collect();
    let grad_buffers: Vec<wgpu::Buffer> = params
        .iter()
        .map(|p| poisoned_buffer(device, queue, grad_offset, &vec![0.0; p.len()], 3))
        .collect();
    let inits = params
        .iter()
        .zip(param_buffers.iter().zip(&grad_buffers))
        .map(|(p, (param, grad))| {
            ExternalTensor {
                param: param.clone(),
                param_offset,
                grad: grad.clone(),
                grad_offset,
                len: p.len() as u64,
            }
            .into()
        })
        .collect();
    (param_buffers, grad_buffers, inits)
}

#[test]
fn callers_buffers_are_updated_in_place_and_nothing_around_them_is_touched() {
    let (device, queue) = callers_device();
    let ctx = GpuContext::from_device(device.clone(), queue.clone());
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    let mut rng = rng(11);
    // 1000: vec4 kernel; 1001: scalar kernel; with 1 KiB segments all are split in pieces.
    let lens = [1000usize, 1001, 4099];
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| params(&mut rng, n)).collect();
    let (param_buffers, grad_buffers, mut inits) =
        callers_tensors(&device, &queue, &params, 2 * align, align);
    // Plus one tensor in the optimizer's own arena, in the same group.
    let own = common::params(&mut rng, 77);
    inits.push(TensorInit::Values(&own));
    let config = adamw();
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), inits)
        .max_segment_bytes(1024)
        .build()
        .unwrap();
    assert!(opt.is_external(TensorId(0)).unwrap() && !opt.is_external(TensorId(3)).unwrap());
    // 256-element segments: 4 + 4 + 17 pieces for the external tensors, 1 for the arena.
    assert_eq!(
        opt.num_segments(wgpu_optim::GroupId(0)).unwrap(),
        4 + 4 + 17 + 1
    );

    let mut all_params = params.clone();
    all_params.push(own.clone());
    let mut reference =
        ReferenceGroup::new(config, all_params.iter().map(|p| to_f64(p)).collect()).unwrap();
    for _ in 0..5 {
        let grads: Vec<Vec<f32>> = all_params
            .iter()
            .map(|p| grads(&mut rng, &vec![1.0; p.len()]))
            .collect();
        // The caller writes gradients straight into their own buffers ...
        for (buffer, g) in grad_buffers.iter().zip(&grads) {
            queue.write_buffer(buffer, align, bytemuck::cast_slice(g));
        }
        // ... and the arena tensor's through the optimizer.
        opt.write_grad(TensorId(3), &grads[3]).unwrap();
        opt.step().unwrap();
        reference
            .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
            .unwrap();
    }
    for (t, buffer) in param_buffers.iter().enumerate() {
        let contents = read_all(&device, &queue, buffer);
        let start = (2 * align / 4) as usize;
        let (front, rest) = contents.split_at(start);
        let (tensor, back) = rest.split_at(lens[t]);
        assert!(
            front.iter().chain(back).all(|v| v.is_nan()),
            "tensor {t}: poison around it overwritten"
        );
        let scale = vec![2.0; lens[t]];
        compare(
            &format!("external tensor {t}"),
            tensor,
            &reference.params[t],
            &scale,
            &vec![0.0; lens[t]],
            1e-5,
        )
        .unwrap();
        assert_eq!(opt.read_param(TensorId(t)).unwrap(), tensor);
        let m = opt.read_state(TensorId(t), "exp_avg").unwrap();
        compare(
            &format!("external tensor {t} exp_avg"),
            &m,
            reference.state(t, "exp_avg").unwrap(),
            &vec![1.0; lens[t]],
            &vec![0.0; lens[t]],
            1e-5,
        )
        .unwrap();
    }
    let gpu = opt.read_param(TensorId(3)).unwrap();
    compare(
        "arena tensor",
        &gpu,
        &reference.params[3],
        &vec![2.0; 77],
        &vec![0.0; 77],
        1e-5,
    )
    .unwrap();
}

#[test]
fn the_first_step_overwrites_a_poisoned_momentum_buffer() {
    // PyTorch starts SGD's momentum buffer as the first gradient: whatever the buffer held
    // before must not leak in, in the scalar kernel as in the vec4 one.
    let (device, queue) = callers_device();
    let ctx = GpuContext::from_device(device.clone(), queue.clone());
    let values = vec![1.0f32; 7];
    let param = poisoned_buffer(&device, &queue, 0, &values, 0);
    let grad = poisoned_buffer(&device, &queue, 0, &[0.5; 7], 0);
    let config = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    };
    let mut opt = Optimizer::builder(&ctx)
        .group(
            config,
            [TensorInit::External(ExternalTensor::new(&param, &grad, 7))],
        )
        .build()
        .unwrap();
    opt.write_state(TensorId(0), "momentum_buffer", &[f32::NAN; 7])
        .unwrap();
    opt.step().unwrap();
    assert_eq!(opt.read_param(TensorId(0)).unwrap(), vec![0.95; 7]);
    assert_eq!(
        opt.read_state(TensorId(0), "momentum_buffer").unwrap(),
        vec![0.5; 7]
    );
}

/// LAMB's trust ratio is a norm over each whole tensor: caller's tensors cut into several
/// segments (one with the scalar kernel), and arena tensors sharing segments, each get their own
/// norms (a workgroup's sums never mix two tensors), as the reference takes them.
#[test]
fn per_tensor_norms_follow_each_tensor_across_segments_and_callers_buffers() {
    let (device, queue) = callers_device();
    let ctx = GpuContext::from_device(device.clone(), queue.clone());
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    let mut rng = rng(12);
    // 1000: vec4 kernel; 1001: scalar kernel; 5000: five pieces of 1,024 elements.
    let lens = [1000usize, 1001, 5000];
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| params(&mut rng, n)).collect();
    let (_, grad_buffers, mut inits) = callers_tensors(&device, &queue, &params, align, 0);
    // Arena tensors of different sizes and scales: the trust ratio differs for each.
    let own: Vec<Vec<f32>> = [(3usize, 1.0f32), (2049, 0.01), (700, 5.0)]
        .iter()
        .map(|&(n, scale)| {
            common::params(&mut rng, n)
                .iter()
                .map(|v| v * scale)
                .collect()
        })
        .collect();
    inits.extend(own.iter().map(|p| TensorInit::Values(p)));
    let config: OptimizerConfig = Lamb {
        lr: 0.01,
        weight_decay: 0.01,
        clamp_value: 3.0,
        debias: true,
        ..Default::default()
    }
    .into();
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), inits)
        .max_segment_bytes(4096)
        .build()
        .unwrap();
    let mut all_params = params.clone();
    all_params.extend(own.iter().cloned());
    let mut reference =
        ReferenceGroup::new(config, all_params.iter().map(|p| to_f64(p)).collect()).unwrap();
    for _ in 0..5 {
        let grads: Vec<Vec<f32>> = all_params
            .iter()
            .map(|p| grads(&mut rng, &vec![1.0; p.len()]))
            .collect();
        for (buffer, g) in grad_buffers.iter().zip(&grads) {
            queue.write_buffer(buffer, 0, bytemuck::cast_slice(g));
        }
        for (t, grad) in grads.iter().enumerate().skip(lens.len()) {
            opt.write_grad(TensorId(t), grad).unwrap();
        }
        opt.step().unwrap();
        reference
            .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
            .unwrap();
    }
    for (t, expected) in reference.params.iter().enumerate() {
        let gpu = opt.read_param(TensorId(t)).unwrap();
        let largest = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        compare(
            &format!("tensor {t}"),
            &gpu,
            expected,
            &vec![largest; gpu.len()],
            &vec![0.0; gpu.len()],
            1e-5,
        )
        .unwrap();
    }
    // The arena's tensors moved by their own ratios: lr times a different multiple of the
    // direction's size each (a mixed-up norm would move them alike).
    let moved = |t: usize| {
        let after = opt.read_param(TensorId(t)).unwrap();
        all_params[t]
            .iter()
            .zip(&after)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / after.len() as f64
    };
    assert!(moved(4) < 0.5 * moved(5), "{} {}", moved(4), moved(5));
}

/// The layout a framework's allocator produces (burn's, through cubecl: many tensors as
/// slices of one shared page, each starting at an offset aligned to the device's storage
/// offset alignment, the gradients slices of another page): every tensor bound in place at its
/// offset, updated as the reference updates it, the bytes between the slices untouched.
#[test]
fn tensors_that_are_slices_of_one_shared_buffer() {
    let (device, queue) = callers_device();
    let ctx = GpuContext::from_device(device.clone(), queue.clone());
    let align = (ctx.limits.min_storage_buffer_offset_alignment as u64).max(16);
    let mut rng = rng(21);
    let lens = [1000usize, 1001, 3, 4099];
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| params(&mut rng, n)).collect();
    // Slices one after the other, each start rounded up to the alignment; NaN in the gaps.
    let mut offsets = Vec::new();
    let mut end = 0u64;
    for &n in &lens {
        let start = end.next_multiple_of(align);
        offsets.push(start);
        end = start + 4 * n as u64;
    }
    let page = |values: &[Vec<f32>]| {
        let mut contents = vec![f32::NAN; (end / 4) as usize + 7];
        for (v, &o) in values.iter().zip(&offsets) {
            contents[(o / 4) as usize..][..v.len()].copy_from_slice(v);
        }
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("shared page"),
            size: contents.len() as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&contents));
        (buffer, contents)
    };
    let zeros: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n]).collect();
    let (param_page, _) = page(&params);
    let (grad_page, _) = page(&zeros);
    let inits: Vec<TensorInit> = lens
        .iter()
        .zip(&offsets)
        .map(|(&n, &offset)| {
            ExternalTensor {
                param: param_page.clone(),
                param_offset: offset,
                grad: grad_page.clone(),
                grad_offset: offset,
                len: n as u64,
            }
            .into()
        })
        .collect();
    let config = adamw();
    let mut opt = Optimizer::builder(&ctx)
        .group(config.clone(), inits)
        .build()
        .unwrap();
    let mut reference =
        ReferenceGroup::new(config, params.iter().map(|p| to_f64(p)).collect()).unwrap();
    for _ in 0..4 {
        let grads: Vec<Vec<f32>> = params
            .iter()
            .map(|p| grads(&mut rng, &vec![1.0; p.len()]))
            .collect();
        for (g, &o) in grads.iter().zip(&offsets) {
            queue.write_buffer(&grad_page, o, bytemuck::cast_slice(g));
        }
        opt.step().unwrap();
        reference
            .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
            .unwrap();
    }
    let contents = read_all(&device, &queue, &param_page);
    let mut inside = vec![false; contents.len()];
    for (t, (&n, &o)) in lens.iter().zip(&offsets).enumerate() {
        let start = (o / 4) as usize;
        inside[start..start + n].iter_mut().for_each(|b| *b = true);
        compare(
            &format!("slice {t}"),
            &contents[start..start + n],
            &reference.params[t],
            &vec![2.0; n],
            &vec![0.0; n],
            1e-5,
        )
        .unwrap();
    }
    assert!(
        contents
            .iter()
            .zip(&inside)
            .all(|(v, &tensor)| tensor || v.is_nan()),
        "a gap between the slices was written"
    );
}

/// What a framework does between steps (burn makes new gradient buffers after every backward
/// pass, and may move parameters): the caller's tensors are rebound to other buffers, at other
/// offsets, and the trajectory goes on as the reference's, with clipping (its norm pass reads
/// the new gradients too). A rebinding that cannot be done is one error and changes nothing.
#[test]
fn callers_tensors_rebound_to_new_buffers_between_steps() {
    let (device, queue) = callers_device();
    let ctx = GpuContext::from_device(device.clone(), queue.clone());
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    let mut rng = rng(31);
    let lens = [1000usize, 1001];
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| params(&mut rng, n)).collect();
    let (_, _, inits) = callers_tensors(&device, &queue, &params, align, 2 * align);
    let own = common::params(&mut rng, 77);
    let mut inits = inits;
    inits.push(TensorInit::Values(&own));
    let config = adamw();
    let options = wgpu_optim::TrainingOptions {
        max_grad_norm: Some(5.0),
        ..Default::default()
    };
    let mut opt = Optimizer::builder(&ctx)
        .group_with(config.clone(), options.clone(), inits)
        .max_segment_bytes(1024)
        .build()
        .unwrap();
    let mut all = params.clone();
    all.push(own.clone());
    let mut reference =
        ReferenceGroup::with_options(config, options, all.iter().map(|p| to_f64(p)).collect())
            .unwrap();
    for step in 0..4 {
        // New buffers every step, at offsets that change (each class of alignment kept).
        let current: Vec<Vec<f32>> = (0..2)
            .map(|t| opt.read_param(TensorId(t)).unwrap())
            .collect();
        let grads: Vec<Vec<f32>> = all
            .iter()
            .map(|p| grads(&mut rng, &vec![1.0; p.len()]))
            .collect();
        let shift = (step as u64 % 2 + 1) * 16 * align.div_ceil(16);
        for t in 0..2 {
            let param = poisoned_buffer(&device, &queue, shift, &current[t], 3);
            let grad = poisoned_buffer(&device, &queue, 2 * shift, &grads[t], 5);
            opt.rebind_external(
                TensorId(t),
                ExternalTensor {
                    param,
                    param_offset: shift,
                    grad,
                    grad_offset: 2 * shift,
                    len: lens[t] as u64,
                },
            )
            .unwrap();
        }
        opt.write_grad(TensorId(2), &grads[2]).unwrap();
        opt.step().unwrap();
        reference
            .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
            .unwrap();
        for (t, want) in reference.params.iter().enumerate() {
            let gpu = opt.read_param(TensorId(t)).unwrap();
            compare(
                &format!("step {step} tensor {t}"),
                &gpu,
                want,
                &vec![2.0; want.len()],
                &vec![0.0; want.len()],
                1e-5,
            )
            .unwrap();
        }
    }
    // Refused, and nothing changes: a wrong length, an arena tensor, a buffer without STORAGE.
    let before: Vec<Vec<f32>> = (0..3)
        .map(|t| opt.read_param(TensorId(t)).unwrap())
        .collect();
    let buffer = |n: usize| poisoned_buffer(&device, &queue, 0, &vec![0.5; n], 64);
    let ext = |n: usize, offset: u64| ExternalTensor {
        param: buffer(n + 64),
        param_offset: offset,
        grad: buffer(n + 64),
        grad_offset: offset,
        len: n as u64,
    };
    let tries = [(0, ext(999, 0)), (2, ext(77, 0))];
    for (t, e) in tries {
        let err = opt.rebind_external(TensorId(t), e).unwrap_err();
        assert!(
            matches!(
                err,
                wgpu_optim::Error::LengthMismatch { .. } | wgpu_optim::Error::BadBuffer { .. }
            ),
            "tensor {t}: {err}"
        );
    }
    let no_storage = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4096 * 4,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let err = opt
        .rebind_external(
            TensorId(0),
            ExternalTensor {
                param: no_storage.clone(),
                param_offset: 0,
                grad: no_storage,
                grad_offset: 0,
                len: 1000,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("STORAGE"), "{err}");
    let after: Vec<Vec<f32>> = (0..3)
        .map(|t| opt.read_param(TensorId(t)).unwrap())
        .collect();
    assert_eq!(before, after);
    // The last buffers are still bound: one more step follows the reference.
    let grads: Vec<Vec<f32>> = all.iter().map(|p| vec![0.01; p.len()]).collect();
    for (t, g) in grads.iter().enumerate() {
        opt.write_grad(TensorId(t), g).unwrap();
    }
    opt.step().unwrap();
    reference
        .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
        .unwrap();
    let gpu = opt.read_param(TensorId(1)).unwrap();
    compare(
        "after the refusals",
        &gpu,
        &reference.params[1],
        &vec![2.0; 1001],
        &vec![0.0; 1001],
        1e-5,
    )
    .unwrap();
}

/// burn's pattern exactly (seen when training a burn model with this optimizer): parameters
/// and gradients are slices of the *same* pages of one allocator, in the model's format, and
/// each backward pass leaves its gradients at new offsets; every tensor is rebound each step.
/// One buffer bound both as the parameters (written) and the gradients (read) in one dispatch
/// must be accepted (wgpu refuses a buffer bound read-only and read-write at once), and every
/// storage follows its reference: float32, 16-bit parameters and gradients with master
/// weights, and q8 states.
#[test]
fn parameters_and_gradients_in_one_shared_page_rebound_every_step() {
    use wgpu_optim::{Storage, TrainingOptions};
    // Every feature the adapter has, as burn asks for them (subgroups, immediates, f16).
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() - wgpu::Features::MAPPABLE_PRIMARY_BUFFERS,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let ctx = GpuContext::from_device(device.clone(), queue.clone());
    let align = (ctx.limits.min_storage_buffer_offset_alignment as u64).max(16);
    let lens = [8192usize, 128, 1280, 4, 260];
    for label in ["f32", "f32+q8", "f16-master+q8", "bf16+q8", "f16-master"] {
        let storage = Storage::parse(label).unwrap();
        let bytes = storage.param.bytes();
        let mut rng = rng(41);
        let params = stored_params(&mut rng, &lens, storage.param);
        // The page: a slot for each tensor's parameters, then room for gradients, which land
        // at a different place each step.
        let mut offsets = Vec::new();
        let mut end = 0u64;
        for &n in &lens {
            let start = end.next_multiple_of(align);
            offsets.push(start);
            end = start + bytes * n as u64;
        }
        let grads_start = end.next_multiple_of(align);
        let grads_room: u64 = lens
            .iter()
            .map(|&n| (bytes * n as u64).next_multiple_of(align))
            .sum::<u64>()
            + 4 * align;
        let page = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("burn-like page"),
            size: grads_start + grads_room,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut poison = vec![0xffu8; (grads_start + grads_room) as usize];
        for (p, &o) in params.iter().zip(&offsets) {
            let e = encode(storage.param, p);
            poison[o as usize..][..e.len()].copy_from_slice(&e);
        }
        queue.write_buffer(&page, 0, &poison);
        let grad_at = |step: u64, t: usize| {
            let mut at = grads_start + (step % 3) * align;
            for &n in &lens[..t] {
                at += (bytes * n as u64).next_multiple_of(align);
            }
            at
        };
        let ext = |t: usize, step: u64| ExternalTensor {
            param: page.clone(),
            param_offset: offsets[t],
            grad: page.clone(),
            grad_offset: grad_at(step, t),
            len: lens[t] as u64,
        };
        let config = adamw();
        let mut opt = Optimizer::builder(&ctx)
            .group_stored(
                config.clone(),
                storage,
                TrainingOptions::default(),
                (0..lens.len()).map(|t| ext(t, 0)),
            )
            .build()
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut reference = stored_reference(config, TrainingOptions::default(), storage, &params);
        for step in 1..=5u64 {
            // Real gradients have whole blocks of zeros (units a ReLU switched off): tensor 1
            // entirely, and tensor 2's second q8 block.
            let grads: Vec<Vec<f32>> = params
                .iter()
                .enumerate()
                .map(|(t, p)| {
                    grads(&mut rng, &vec![1.0; p.len()])
                        .iter()
                        .enumerate()
                        .map(|(i, g)| match (t, i) {
                            (1, _) | (2, 256..512) => 0.0,
                            _ => storage.grad.round(*g),
                        })
                        .collect()
                })
                .collect();
            for (t, g) in grads.iter().enumerate() {
                queue.write_buffer(&page, grad_at(step, t), &encode(storage.grad, g));
                opt.rebind_external(TensorId(t), ext(t, step))
                    .unwrap_or_else(|e| panic!("{label} step {step}: {e}"));
            }
            opt.step().unwrap();
            reference
                .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
                .unwrap();
            assert_follows_reference(label, &opt, &reference, storage.param, step);
        }
    }
}

/// A caller's tensors of lengths that are not multiples of 4 (a 10-class bias, a 257-value
/// vector), in one shared page, in storages that move four values per invocation (q8 states,
/// 16-bit parameters or gradients, bf16 states, master weights, stochastic rounding, Kahan
/// summation), with clipping (the norm pass reads the same gradients) and, on one step,
/// gradients accumulated on the device: every tensor follows the reference, and not one byte
/// of the page outside the tensors changes. 16-bit tensors need an even length; an odd one is
/// refused, naming the tensor.
#[test]
fn callers_tensors_of_any_length_in_storages_that_pack_four_values() {
    use wgpu_optim::{Error, Storage, TrainingOptions};
    let (device, queue) = callers_device();
    let ctx = GpuContext::from_device(device.clone(), queue.clone());
    let align = (ctx.limits.min_storage_buffer_offset_alignment as u64).max(16);
    let options = TrainingOptions {
        max_grad_norm: Some(1.0),
        ..Default::default()
    };
    // SGD, whose step follows the clipped gradient's scale (the clipping norm sums every lane
    // of the last vec4: a lane past the tensor that read anything but 0 would change it), and
    // LAMB, whose per-tensor sums do the same for its trust ratio.
    let sgd: OptimizerConfig = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    }
    .into();
    let lamb: OptimizerConfig = Lamb {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    }
    .into();
    let runs = [
        ("f32+q8", adamw()),
        ("f32+q8,nonzero", adamw()),
        ("f32+bf16", adamw()),
        ("f32/bf16", adamw()),
        ("bf16", adamw()),
        ("f16+f16", adamw()),
        ("f16-master+q8", adamw()),
        ("bf16+q8,nonzero", adamw()),
        ("bf16-sr", adamw()),
        ("bf16-kahan+q8", adamw()),
        ("f32/bf16", sgd.clone()),
        ("f32/f16+q8", sgd.clone()),
        ("bf16", sgd),
        ("f32+q8", lamb.clone()),
        ("bf16", lamb.clone()),
        ("f16-master+bf16", lamb),
    ];
    for (label, config) in runs {
        let storage = Storage::parse(label).unwrap();
        let label = format!("{} {label}", config.rule().name());
        let sixteen = storage.param != Format::F32 || storage.grad != Format::F32;
        let lens: &[usize] = if sixteen {
            &[2, 6, 10, 258, 1_002]
        } else {
            &[1, 3, 5, 6, 10, 257, 1_001]
        };
        let mut rng = rng(59);
        let params = stored_params(&mut rng, lens, storage.param);
        // The page: each tensor's parameters, then each one's gradients, at aligned offsets;
        // 0xff bytes (NaN in every format) everywhere else.
        let mut end = 0u64;
        let mut place = |bytes: u64| {
            let start = end.next_multiple_of(align);
            end = start + bytes;
            start
        };
        let param_at: Vec<u64> = lens
            .iter()
            .map(|&n| place(n as u64 * storage.param.bytes()))
            .collect();
        let grad_at: Vec<u64> = lens
            .iter()
            .map(|&n| place(n as u64 * storage.grad.bytes()))
            .collect();
        let size = end.next_multiple_of(align) + align;
        let page = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("page"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut contents = vec![0xffu8; size as usize];
        for (p, &at) in params.iter().zip(&param_at) {
            let e = encode(storage.param, p);
            contents[at as usize..][..e.len()].copy_from_slice(&e);
        }
        queue.write_buffer(&page, 0, &contents);
        let ext = |t: usize| ExternalTensor {
            param: page.clone(),
            param_offset: param_at[t],
            grad: page.clone(),
            grad_offset: grad_at[t],
            len: lens[t] as u64,
        };
        let mut opt = Optimizer::builder(&ctx)
            .group_stored(
                config.clone(),
                storage,
                options.clone(),
                (0..lens.len()).map(ext),
            )
            .build()
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut reference = stored_reference(config, options.clone(), storage, &params);
        for step in 1..=4u64 {
            let grads: Vec<Vec<f32>> = params
                .iter()
                .map(|p| {
                    grads(&mut rng, &vec![1.0; p.len()])
                        .iter()
                        .map(|g| storage.grad.round(*g))
                        .collect()
                })
                .collect();
            let grads = if step == 3 {
                // Two micro-batches added on the device, each sum stored in the format.
                opt.zero_grads().unwrap();
                let halves: Vec<Vec<f32>> = grads
                    .iter()
                    .map(|g| g.iter().map(|v| v * 0.5 + 0.125).collect())
                    .collect();
                for _ in 0..2 {
                    let refs: Vec<&[f32]> = halves.iter().map(Vec::as_slice).collect();
                    opt.accumulate_grads(&refs).unwrap();
                }
                let summed: Vec<Vec<f32>> = halves
                    .iter()
                    .map(|h| {
                        h.iter()
                            .map(|v| {
                                let once = storage.grad.round(*v);
                                storage.grad.round(once + v)
                            })
                            .collect()
                    })
                    .collect();
                for (t, want) in summed.iter().enumerate() {
                    assert_eq!(
                        &opt.read_grad(TensorId(t)).unwrap(),
                        want,
                        "{label} tensor {t}: accumulated gradients"
                    );
                }
                summed
            } else {
                for (t, g) in grads.iter().enumerate() {
                    queue.write_buffer(&page, grad_at[t], &encode(storage.grad, g));
                }
                grads
            };
            opt.step().unwrap();
            reference
                .step(&grads.iter().map(|g| to_f64(g)).collect::<Vec<_>>())
                .unwrap();
            assert_follows_reference(&label, &opt, &reference, storage.param, step);
        }
        // Nothing outside the tensors was written.
        let after = read_buffer_bytes(&device, &queue, &page);
        let mut inside = vec![false; size as usize];
        for (t, &n) in lens.iter().enumerate() {
            let p = (param_at[t] as usize, n * storage.param.bytes() as usize);
            let g = (grad_at[t] as usize, n * storage.grad.bytes() as usize);
            for (at, bytes) in [p, g] {
                inside[at..at + bytes].fill(true);
            }
        }
        for (k, (&byte, &inside)) in after.iter().zip(&inside).enumerate() {
            assert!(
                inside || byte == 0xff,
                "{label}: byte {k} outside every tensor changed to {byte:#x}"
            );
        }
    }

    // An odd number of 16-bit values ends inside a word: refused, nothing built.
    let page = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("odd"),
        size: 4 * align,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let Err(err) = Optimizer::builder(&ctx)
        .group_stored(
            adamw(),
            Storage::parse("bf16").unwrap(),
            TrainingOptions::default(),
            [ExternalTensor {
                param: page.clone(),
                param_offset: 0,
                grad: page.clone(),
                grad_offset: 2 * align,
                len: 5,
            }],
        )
        .build()
    else {
        panic!("an odd bf16 length is refused");
    };
    assert!(
        matches!(err, Error::BadBuffer { tensor: 0, .. }) && err.to_string().contains("even"),
        "{err}"
    );
}
