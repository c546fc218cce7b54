//! Per-tensor gradient norms of the fused engine's groups (`Optimizer::grad_norms`), on the
//! device, against the host's norms of the same stored gradients: tensors of awkward lengths in
//! one arena (the padding between them masked), tensors cut over many segments, 16-bit
//! gradients, and a caller's buffer of odd length (the scalar kernel).

mod common;

use common::{context, grad_scales, grads, params, rng};
use wgpu_optim::optim::AdamW;
use wgpu_optim::{ExternalTensor, GroupId, Optimizer, Storage, TensorId, TensorInit};

fn host_norms(opt: &Optimizer) -> Vec<f64> {
    (0..opt.num_tensors())
        .map(|t| {
            let g = opt.read_grad(TensorId(t)).unwrap();
            g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
        })
        .collect()
}

fn assert_close(gpu: &[f64], host: &[f64], what: &str) {
    assert_eq!(gpu.len(), host.len(), "{what}");
    for (t, (g, h)) in gpu.iter().zip(host).enumerate() {
        assert!(
            (g - h).abs() <= 1e-5 * h.max(f64::MIN_POSITIVE),
            "{what} tensor {t}: {g} vs {h}"
        );
    }
}

#[test]
fn gradient_norms_match_the_host_in_every_layout() {
    let ctx = context();
    let lens = [1usize, 3, 5, 257, 4_097, 65_537, 1_000_003];
    for (storage, segment_bytes) in [
        ("f32", None),
        ("f32", Some(64 << 10)),
        ("bf16", None),
        ("f16", Some(64 << 10)),
    ] {
        let mut r = rng(lens.len() as u64);
        let values: Vec<Vec<f32>> = lens.iter().map(|&n| params(&mut r, n)).collect();
        let mut builder = Optimizer::builder(&ctx).group_stored(
            AdamW::default(),
            Storage::parse(storage).unwrap(),
            Default::default(),
            &values,
        );
        if let Some(bytes) = segment_bytes {
            builder = builder.max_segment_bytes(bytes);
        }
        let mut opt = builder.build().unwrap();
        for round in 0..2 {
            for (t, v) in values.iter().enumerate() {
                let scales = grad_scales(&mut r, v.len());
                opt.write_grad(TensorId(t), &grads(&mut r, &scales))
                    .unwrap();
            }
            let what = format!("{storage} segments {segment_bytes:?} round {round}");
            assert_close(
                &opt.grad_norms(GroupId(0)).unwrap(),
                &host_norms(&opt),
                &what,
            );
            let grads_now: Vec<Vec<f32>> = (0..lens.len())
                .map(|t| opt.read_grad(TensorId(t)).unwrap())
                .collect();
            opt.step_with_grads(&grads_now.iter().map(Vec::as_slice).collect::<Vec<_>>())
                .unwrap();
        }
    }
}

#[test]
fn gradient_norms_of_a_callers_buffer_of_odd_length() {
    let ctx = context();
    let mut r = rng(3);
    let len = 1_001usize;
    let values = params(&mut r, len);
    let scales = grad_scales(&mut r, len);
    let g = grads(&mut r, &scales);
    let make = |data: &[f32]| {
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (data.len() * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        ctx.queue
            .write_buffer(&buffer, 0, bytemuck::cast_slice(data));
        buffer
    };
    let (param, grad) = (make(&values), make(&g));
    let own = params(&mut r, 70);
    let opt = Optimizer::builder(&ctx)
        .group(
            AdamW::default(),
            vec![
                TensorInit::from(ExternalTensor {
                    param,
                    param_offset: 0,
                    grad,
                    grad_offset: 0,
                    len: len as u64,
                }),
                TensorInit::Values(&own),
            ],
        )
        .build()
        .unwrap();
    let norms = opt.grad_norms(GroupId(0)).unwrap();
    let want: f64 = g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    assert!(
        (norms[0] - want).abs() <= 1e-5 * want,
        "{} vs {want}",
        norms[0]
    );
    // The arena tensor's gradient was never written: zero.
    assert_eq!(norms[1], 0.0);
    assert!(opt.grad_norms(GroupId(1)).is_err());
}
