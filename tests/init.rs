//! `torch.nn.init`'s initialisers filled on the device: every initialiser on matrices and
//! convolution kernels of awkward shapes, both fan modes and torch's gains, checked against
//! the formulas statistically (mean, variance, range, the normal's mass within 1 and 2 standard
//! deviations) and against the CPU mirror element by element; bare buffers, the optimizer's own
//! tensors, a caller's tensors at offsets inside larger buffers, 16-bit parameters and master
//! weights; and errors that change nothing.

mod common;

use common::*;
use wgpu_optim::engine::ExternalTensor;
use wgpu_optim::init::{self, fill_buffer};
use wgpu_optim::optim::AdamW;
use wgpu_optim::{
    ContextOptions, Distribution, FanMode, Format, GpuContext, Init, Nonlinearity, Optimizer, Role,
    Storage, TensorId, TensorInit,
};

const TANH: f64 = 5.0 / 3.0;
const SELU: f64 = 0.75;

fn kaiming_uniform(mode: FanMode, nonlinearity: Nonlinearity) -> Init {
    Init::KaimingUniform { mode, nonlinearity }
}

fn kaiming_normal(mode: FanMode, nonlinearity: Nonlinearity) -> Init {
    Init::KaimingNormal { mode, nonlinearity }
}

fn leaky(negative_slope: f64) -> Nonlinearity {
    Nonlinearity::LeakyRelu { negative_slope }
}

/// A storage buffer of `len` float32 values, all `poison`.
fn poisoned(ctx: &GpuContext, len: u64, poison: f32) -> wgpu::Buffer {
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("poisoned"),
        size: len * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue.write_buffer(
        &buffer,
        0,
        bytemuck::cast_slice(&vec![poison; len as usize]),
    );
    buffer
}

/// Every word of the buffer, as bits (waits for the GPU).
fn read_bits(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Vec<u32> {
    bytemuck::cast_slice(&read_buffer_bytes(&ctx.device, &ctx.queue, buffer)).to_vec()
}

fn read_f32(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Vec<f32> {
    read_bits(ctx, buffer)
        .into_iter()
        .map(f32::from_bits)
        .collect()
}

/// The GPU's values against the CPU mirror: bit for bit for a uniform distribution; for a
/// normal one within 1e-5 relative plus 1e-6 standard deviations.
fn check_mirror(what: &str, gpu: &[f32], distribution: &Distribution, seed: u32) {
    let scale = distribution.scale() as f64;
    let mut differ = 0;
    for (j, &g) in gpu.iter().enumerate() {
        let cpu = distribution.value(seed, j as u64);
        match distribution {
            Distribution::Uniform { .. } => assert_eq!(
                g.to_bits(),
                cpu.to_bits(),
                "{what}[{j}]: the GPU wrote {g:e}, the CPU mirror gives {cpu:e}"
            ),
            Distribution::Normal { .. } => {
                let allowed = 1e-5 * (cpu as f64).abs() + 1e-6 * scale;
                assert!(
                    g.is_finite() && (g as f64 - cpu as f64).abs() <= allowed,
                    "{what}[{j}]: the GPU wrote {g:e}, the CPU mirror gives {cpu:e}"
                );
                differ += usize::from(g.to_bits() != cpu.to_bits());
            }
        }
    }
    if differ > 0 {
        eprintln!(
            "{what}: {differ} of {} normal values differ from the mirror's bits",
            gpu.len()
        );
    }
}

/// The values against their distribution, with tolerances from their number (five standard
/// errors, and a little for float32 and the 24-bit draws): mean, variance, range, and for a
/// normal distribution its mass within one and two standard deviations.
fn check_statistics(what: &str, values: &[f32], distribution: &Distribution) {
    let n = values.len() as f64;
    assert!(values.iter().all(|v| v.is_finite()), "{what}: not finite");
    let variance = distribution.variance();
    let sigma = variance.sqrt();
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    assert!(
        mean.abs() <= 5.0 * sigma / n.sqrt(),
        "{what}: mean {mean:e}, allowed {:e}",
        5.0 * sigma / n.sqrt()
    );
    let second = values.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
    let allowed = 5.0 / (n / 2.0).sqrt() + 1e-3;
    assert!(
        (second / variance - 1.0).abs() <= allowed,
        "{what}: variance {second:e}, the formula's {variance:e} (relative {:e}, allowed {allowed:e})",
        second / variance - 1.0
    );
    match *distribution {
        Distribution::Uniform { .. } => {
            let bound = distribution.scale();
            if let Some(v) = values.iter().find(|&&v| !(-bound..bound).contains(&v)) {
                panic!("{what}: {v:e} outside [-{bound:e}, {bound:e})");
            }
        }
        Distribution::Normal { .. } => {
            let within = |k: f64| {
                values
                    .iter()
                    .filter(|&&v| (v as f64).abs() < k * sigma)
                    .count() as f64
                    / n
            };
            for (k, p) in [(1.0, 0.682_689_492), (2.0, 0.954_499_736)] {
                let got = within(k);
                let allowed = 5.0 * (p * (1.0 - p) / n).sqrt() + 1e-3;
                assert!(
                    (got - p).abs() <= allowed,
                    "{what}: {got} of the values within {k} std, expected {p} +- {allowed}"
                );
            }
            let largest = values.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
            assert!(
                largest < 6.5 * sigma,
                "{what}: |value| {largest:e} past 6.5 std"
            );
        }
    }
}

/// Each initialiser with torch's gains and both fan modes, on matrices and convolution
/// kernels, with the scale each must have by the formula (computed here by hand).
fn cases() -> Vec<(Init, Vec<u64>, f64)> {
    let sqrt3 = 3f64.sqrt();
    let relu = 2f64.sqrt();
    let leaky_02 = (2.0f64 / 1.04).sqrt();
    vec![
        // Xavier: bound gain sqrt(6 / (fan_in + fan_out)), std gain sqrt(2 / (...)).
        (
            Init::xavier_uniform(),
            vec![1000, 1003],
            (6.0f64 / 2003.0).sqrt(),
        ),
        (
            Init::XavierUniform { gain: TANH },
            vec![64, 32, 3, 3],
            TANH * (6.0f64 / 864.0).sqrt(),
        ),
        (
            Init::XavierUniform { gain: relu },
            vec![300, 100],
            relu * (6.0f64 / 400.0).sqrt(),
        ),
        (
            Init::xavier_normal(),
            vec![1000, 1003],
            (2.0f64 / 2003.0).sqrt(),
        ),
        (
            Init::XavierNormal { gain: SELU },
            vec![300, 100],
            SELU * (2.0f64 / 400.0).sqrt(),
        ),
        (
            Init::XavierNormal { gain: TANH },
            vec![64, 32, 3, 3],
            TANH * (2.0f64 / 864.0).sqrt(),
        ),
        // Kaiming: bound sqrt(3) gain / sqrt(fan), std gain / sqrt(fan).
        (
            Init::kaiming_uniform(),
            vec![1000, 1003],
            sqrt3 * relu / 1003f64.sqrt(),
        ),
        (
            kaiming_uniform(FanMode::FanOut, Nonlinearity::Relu),
            vec![64, 32, 3, 3],
            sqrt3 * relu / 576f64.sqrt(),
        ),
        (
            kaiming_uniform(FanMode::FanIn, leaky(0.2)),
            vec![513, 257, 3],
            sqrt3 * leaky_02 / 771f64.sqrt(),
        ),
        (
            kaiming_uniform(FanMode::FanOut, Nonlinearity::Selu),
            vec![1003, 999],
            sqrt3 * SELU / 1003f64.sqrt(),
        ),
        (
            kaiming_uniform(FanMode::FanIn, Nonlinearity::Conv),
            vec![77, 13, 5, 5],
            sqrt3 / 325f64.sqrt(),
        ),
        (
            Init::kaiming_normal(),
            vec![1000, 1003],
            relu / 1003f64.sqrt(),
        ),
        (
            kaiming_normal(FanMode::FanOut, Nonlinearity::Relu),
            vec![64, 32, 3, 3],
            relu / 576f64.sqrt(),
        ),
        (
            kaiming_normal(FanMode::FanOut, leaky(0.2)),
            vec![300, 100],
            leaky_02 / 300f64.sqrt(),
        ),
        (
            kaiming_normal(FanMode::FanIn, Nonlinearity::Tanh),
            vec![1003, 999],
            TANH / 999f64.sqrt(),
        ),
        (
            kaiming_normal(FanMode::FanIn, Nonlinearity::Linear),
            vec![129, 65, 7],
            1.0 / 455f64.sqrt(),
        ),
    ]
}

#[test]
fn every_initialiser_draws_from_its_formulas_distribution_on_the_device() {
    let ctx = context();
    for (c, (init, shape, scale)) in cases().into_iter().enumerate() {
        let what = format!("{init:?} on {shape:?}");
        let distribution = init.distribution(&shape).unwrap();
        let expected = match init {
            Init::XavierUniform { .. } | Init::KaimingUniform { .. } => {
                Distribution::Uniform { bound: scale }
            }
            _ => Distribution::Normal { std: scale },
        };
        assert_eq!(
            std::mem::discriminant(&distribution),
            std::mem::discriminant(&expected),
            "{what}"
        );
        assert!(
            (distribution.scale() as f64 / scale - 1.0).abs() < 1e-7,
            "{what}: scale {:?}, by hand {scale}",
            distribution
        );
        let n = shape.iter().product::<u64>();
        let buffer = poisoned(&ctx, n, f32::NAN);
        let seed = 1000 + c as u32;
        fill_buffer(&ctx, &buffer, 0, &shape, &init, seed).unwrap();
        let values = read_f32(&ctx, &buffer);
        check_statistics(&what, &values, &distribution);
        check_mirror(&what, &values, &distribution, seed);
        if let Distribution::Uniform { .. } = distribution {
            // The whole-tensor mirror too.
            let cpu = init.values(&shape, seed).unwrap();
            assert!(
                cpu.iter()
                    .zip(&values)
                    .all(|(c, g)| c.to_bits() == g.to_bits())
            );
        }
    }
}

/// The four initialisers with their defaults.
fn defaults() -> [Init; 4] {
    [
        Init::xavier_uniform(),
        Init::xavier_normal(),
        Init::kaiming_uniform(),
        Init::kaiming_normal(),
    ]
}

#[test]
fn awkward_sizes_fill_exactly_their_region_at_any_offset() {
    let ctx = context();
    for n in [1u64, 3, 5, 257, 65_537, 1_000_003] {
        // A column: fan_in 1, fan_out n.
        let shape = [n, 1];
        for (i, init) in defaults().into_iter().enumerate() {
            let distribution = init.distribution(&shape).unwrap();
            let expected = match init {
                Init::XavierUniform { .. } => (6.0 / (n as f64 + 1.0)).sqrt(),
                Init::XavierNormal { .. } => (2.0 / (n as f64 + 1.0)).sqrt(),
                // fan_in = 1: gain sqrt(2), times sqrt(3) for the bound.
                Init::KaimingUniform { .. } => 6f64.sqrt(),
                Init::KaimingNormal { .. } => 2f64.sqrt(),
            };
            assert!((distribution.scale() as f64 / expected - 1.0).abs() < 1e-7);
            // At word 0 and at words 1 and 67 of a larger buffer, 1e30 around the region.
            for before in [0u64, 1, 67] {
                let after = 5;
                let buffer = poisoned(&ctx, before + n + after, 1e30);
                let seed = 7 * n as u32 + i as u32;
                fill_buffer(&ctx, &buffer, before * 4, &shape, &init, seed).unwrap();
                let words = read_f32(&ctx, &buffer);
                let what = format!("{init:?} on {shape:?} from word {before}");
                assert!(
                    words[..before as usize]
                        .iter()
                        .chain(&words[(before + n) as usize..])
                        .all(|&v| v == 1e30),
                    "{what}: a value around the region changed"
                );
                let values = &words[before as usize..(before + n) as usize];
                check_mirror(&what, values, &distribution, seed);
                if n >= 1000 {
                    check_statistics(&what, values, &distribution);
                }
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_bits_and_another_seed_other_values() {
    let ctx = context();
    let shape = [513u64, 129];
    let n = 513 * 129;
    for init in defaults() {
        let fill = |seed| {
            let buffer = poisoned(&ctx, n, f32::NAN);
            fill_buffer(&ctx, &buffer, 0, &shape, &init, seed).unwrap();
            read_bits(&ctx, &buffer)
        };
        let (a, b, c) = (fill(5), fill(5), fill(6));
        assert_eq!(a, b, "{init:?}: the same seed twice");
        let same = a.iter().zip(&c).filter(|(x, y)| x == y).count();
        assert!(
            same < 10,
            "{init:?}: seeds 5 and 6 agree on {same} of {n} values"
        );
    }
}

/// Dispatches spread over two dimensions: with a device limited to 16 workgroups per
/// dimension (4,096 elements per row of workgroups, 65,536 per dispatch), and on the default
/// device past 65,535 workgroups of 256.
#[test]
fn elements_past_one_dispatch_dimension_are_filled() {
    let probe = context();
    let small = GpuContext::new(&ContextOptions {
        limits: Some(wgpu::Limits {
            max_compute_workgroups_per_dimension: 16,
            ..probe.limits.clone()
        }),
        ..Default::default()
    })
    .unwrap();
    let shape = [200_003u64, 3];
    let n = 200_003 * 3;
    for init in [Init::xavier_uniform(), Init::kaiming_normal()] {
        let distribution = init.distribution(&shape).unwrap();
        let buffer = poisoned(&small, n + 2, f32::NAN);
        fill_buffer(&small, &buffer, 4, &shape, &init, 3).unwrap();
        let words = read_f32(&small, &buffer);
        assert!(words[0].is_nan() && words[n as usize + 1].is_nan());
        let values = &words[1..=n as usize];
        check_mirror(
            &format!("{init:?}, 16 workgroups per dimension"),
            values,
            &distribution,
            3,
        );
        check_statistics("16 workgroups per dimension", values, &distribution);
    }

    let ctx = context();
    let per_dimension = ctx.limits.max_compute_workgroups_per_dimension as u64;
    let n = per_dimension * 256 + 1001;
    let shape = [n, 1];
    let init = kaiming_normal(FanMode::FanOut, Nonlinearity::Relu);
    let distribution = init.distribution(&shape).unwrap();
    let buffer = poisoned(&ctx, n, f32::NAN);
    fill_buffer(&ctx, &buffer, 0, &shape, &init, 99).unwrap();
    let values = read_f32(&ctx, &buffer);
    check_mirror("past the first dimension", &values, &distribution, 99);
    check_statistics("past the first dimension", &values, &distribution);
}

/// A caller's buffers, NaN around the tensors, which start 2 alignments in.
fn callers_tensor(ctx: &GpuContext, len: u64, offset: u64) -> (wgpu::Buffer, ExternalTensor) {
    let param = poisoned(ctx, offset / 4 + len + 7, f32::NAN);
    let grad = poisoned(ctx, len, 0.0);
    let ext = ExternalTensor {
        param: param.clone(),
        param_offset: offset,
        grad,
        grad_offset: 0,
        len,
    };
    (param, ext)
}

#[test]
fn the_optimizers_tensors_and_callers_tensors_are_initialised_in_place() {
    let ctx = context();
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    // 1003: the scalar kernel; 4096: vec4; both cut into 256-element pieces by 1 KiB segments.
    let (buffer_a, ext_a) = callers_tensor(&ctx, 1003, 2 * align);
    let (buffer_b, ext_b) = callers_tensor(&ctx, 4096, 2 * align);
    let own = vec![f32::NAN; 32 * 3 * 5 * 5];
    let mut opt = Optimizer::builder(&ctx)
        .group(
            AdamW::default(),
            [
                TensorInit::External(ext_a),
                TensorInit::External(ext_b),
                TensorInit::Values(&own),
                TensorInit::Zeros(1000 * 1003),
            ],
        )
        .max_segment_bytes(1024 * 4)
        .build()
        .unwrap();
    let inits: [(Vec<u64>, Init); 4] = [
        (vec![17, 59], Init::xavier_normal()),
        (vec![64, 64], kaiming_uniform(FanMode::FanOut, leaky(0.2))),
        (vec![32, 3, 5, 5], Init::xavier_uniform()),
        (vec![1000, 1003], Init::kaiming_normal()),
    ];
    for (t, (shape, init)) in inits.iter().enumerate() {
        opt.initialize(TensorId(t), shape, init, 40 + t as u32)
            .unwrap();
    }
    for (t, (shape, init)) in inits.iter().enumerate() {
        let what = format!("tensor {t}: {init:?} on {shape:?}");
        let distribution = init.distribution(shape).unwrap();
        let values = opt.read_param(TensorId(t)).unwrap();
        check_mirror(&what, &values, &distribution, 40 + t as u32);
        if values.len() >= 1000 {
            check_statistics(&what, &values, &distribution);
        }
    }
    // The callers' buffers hold the values at their offsets, and NaN around them.
    for (t, (buffer, len)) in [(&buffer_a, 1003u64), (&buffer_b, 4096)]
        .into_iter()
        .enumerate()
    {
        let words = read_bits(&ctx, buffer);
        let first = (2 * align / 4) as usize;
        let values = opt.read_param(TensorId(t)).unwrap();
        assert!(
            words[first..first + len as usize]
                .iter()
                .zip(&values)
                .all(|(w, v)| *w == v.to_bits())
        );
        assert!(
            words[..first]
                .iter()
                .chain(&words[first + len as usize..])
                .all(|w| f32::from_bits(*w).is_nan()),
            "tensor {t}: a value around it changed"
        );
    }
    // The optimizer steps from there.
    let grads: Vec<Vec<f32>> = (0..4)
        .map(|t| vec![0.5; opt.tensor_len(TensorId(t)).unwrap() as usize])
        .collect();
    opt.step_with_grads(&grads.iter().map(Vec::as_slice).collect::<Vec<_>>())
        .unwrap();
    assert!(
        opt.read_param(TensorId(2))
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
}

#[test]
fn errors_change_nothing() {
    let ctx = context();
    let before = params(&mut rng(3), 1000);
    let mut opt = Optimizer::builder(&ctx)
        .group(AdamW::default(), [&before])
        .build()
        .unwrap();
    let bad: [(&[u64], Init); 6] = [
        (&[1000], Init::xavier_uniform()),
        (&[1000], Init::kaiming_normal()),
        (&[10, 99], Init::xavier_normal()),
        (&[10, 100, 2], Init::kaiming_uniform()),
        (&[10, 100], Init::XavierUniform { gain: -1.0 }),
        (&[10, 100], kaiming_normal(FanMode::FanIn, leaky(f64::NAN))),
    ];
    for (shape, init) in &bad {
        let e = opt.initialize(TensorId(0), shape, init, 1).unwrap_err();
        eprintln!("{init:?} on {shape:?}: {e}");
        assert_eq!(
            opt.read_param(TensorId(0)).unwrap(),
            before,
            "{init:?} {shape:?}"
        );
    }
    assert!(
        opt.initialize(TensorId(1), &[10, 100], &Init::xavier_uniform(), 1)
            .is_err()
    );

    // A bare buffer: bad arguments, a misaligned offset, a region past the end, a buffer
    // that cannot be bound for storage.
    let buffer = poisoned(&ctx, 100, 1e30);
    let untouched = read_bits(&ctx, &buffer);
    let attempts: [(u64, &[u64], Init); 6] = [
        (0, &[100], Init::xavier_uniform()),
        (0, &[10, 10], Init::XavierNormal { gain: -0.5 }),
        (
            0,
            &[10, 10],
            kaiming_uniform(FanMode::FanOut, leaky(f64::NAN)),
        ),
        (2, &[5, 5], Init::xavier_uniform()),
        (4, &[10, 10], Init::xavier_uniform()),
        (0, &[101, 1], Init::kaiming_normal()),
    ];
    for (offset, shape, init) in &attempts {
        let e = fill_buffer(&ctx, &buffer, *offset, shape, init, 1).unwrap_err();
        eprintln!("{init:?} on {shape:?} from byte {offset}: {e}");
        assert_eq!(read_bits(&ctx, &buffer), untouched);
    }
    let no_storage = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 400,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let e = fill_buffer(&ctx, &no_storage, 0, &[10, 10], &Init::xavier_uniform(), 1).unwrap_err();
    assert!(e.to_string().contains("STORAGE"), "{e}");

    // No elements: nothing to do, as torch, and no error.
    for shape in [&[0u64, 5][..], &[5, 0], &[0, 0, 3]] {
        for init in defaults() {
            fill_buffer(&ctx, &buffer, 0, shape, &init, 1).unwrap();
        }
    }
    fill_buffer(&ctx, &buffer, 0, &[0], &Init::kaiming_uniform(), 1).unwrap();
    assert_eq!(read_bits(&ctx, &buffer), untouched);
    // The formulas' own errors, through the free functions.
    assert!(init::fans(&[3]).is_err());
}

/// 16-bit parameters hold the float32 values rounded to nearest even (by the kernel); with
/// master weights the master holds the float32 values; Kahan's compensation starts at zero.
#[test]
fn sixteen_bit_parameters_and_master_weights_hold_the_values_rounded() {
    let ctx = context();
    // Odd lengths end inside a word of two 16-bit values; 1 KiB segments cut the large ones.
    let shapes: [Vec<u64>; 4] = [
        vec![3, 1],
        vec![17, 59],
        vec![64, 32, 3, 3],
        vec![1000, 1003],
    ];
    for label in [
        "bf16",
        "f16",
        "bf16-master",
        "f16-master",
        "bf16-kahan",
        "bf16-sr",
    ] {
        let storage = Storage::parse(label).unwrap();
        let poison: Vec<Vec<f32>> = shapes
            .iter()
            .map(|s| vec![f32::NAN; s.iter().product::<u64>() as usize])
            .collect();
        let mut opt = Optimizer::builder(&ctx)
            .group_stored(AdamW::default(), storage, Default::default(), &poison)
            .max_segment_bytes(1024)
            .build()
            .unwrap();
        let inits = [
            Init::xavier_uniform(),
            Init::kaiming_normal(),
            kaiming_uniform(FanMode::FanOut, Nonlinearity::Relu),
            Init::XavierNormal { gain: TANH },
        ];
        if storage.kahan() {
            for (t, p) in poison.iter().enumerate() {
                opt.write(TensorId(t), Role::Compensation, 0, &vec![1e-3; p.len()])
                    .unwrap();
            }
        }
        for (t, (shape, init)) in shapes.iter().zip(&inits).enumerate() {
            opt.initialize(TensorId(t), shape, init, 77 + t as u32)
                .unwrap();
        }
        for (t, (shape, init)) in shapes.iter().zip(&inits).enumerate() {
            let what = format!("{label} tensor {t}: {init:?} on {shape:?}");
            let distribution = init.distribution(shape).unwrap();
            let seed = 77 + t as u32;
            let stored = opt.read_param(TensorId(t)).unwrap();
            let mut off_by_one_ulp = 0;
            for (j, &s) in stored.iter().enumerate() {
                let cpu = distribution.value(seed, j as u64);
                let rounded = storage.param.round(cpu);
                if s.to_bits() == rounded.to_bits() {
                    continue;
                }
                // A normal value computed a few float32 ulps away from the mirror's may round
                // the other way: by one 16-bit ulp, rarely.
                let one_ulp = ulp(storage.param, cpu as f64);
                assert!(
                    matches!(distribution, Distribution::Normal { .. })
                        && (s as f64 - rounded as f64).abs() <= one_ulp,
                    "{what}[{j}]: stored {s:e}, the mirror rounded is {rounded:e}"
                );
                off_by_one_ulp += 1;
            }
            assert!(
                off_by_one_ulp <= 2 + stored.len() / 1000,
                "{what}: {off_by_one_ulp}"
            );
            if stored.len() >= 1000 {
                check_statistics(&what, &stored, &distribution);
            }
            if storage.master_weights {
                let master = opt
                    .read(TensorId(t), Role::Master, 0..stored.len() as u64)
                    .unwrap();
                check_mirror(&format!("{what} master"), &master, &distribution, seed);
                // The model's copy is the master rounded.
                for (m, s) in master.iter().zip(&stored) {
                    assert_eq!(storage.param.round(*m).to_bits(), s.to_bits(), "{what}");
                }
            }
            if storage.kahan() {
                let compensation = opt
                    .read(TensorId(t), Role::Compensation, 0..stored.len() as u64)
                    .unwrap();
                assert!(compensation.iter().all(|&c| c == 0.0), "{what}");
            }
        }
    }
    assert_eq!(Format::Bf16.round(1.0 + 1.0 / 256.0), 1.0);
}

/// A caller's bf16 parameters bound in place: the values rounded, and the bytes around them
/// untouched.
#[test]
fn a_callers_bf16_tensor_is_initialised_in_place() {
    let ctx = context();
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    let len = 64 * 36u64;
    // bf16 values, two per word: NaN halves (0x7fc1) around the tensor.
    let words = (2 * align + len * 2) / 4 + 3;
    let param = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's bf16"),
        size: words * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue.write_buffer(
        &param,
        0,
        bytemuck::cast_slice(&vec![0x7fc1_7fc1u32; words as usize]),
    );
    let grad = poisoned(&ctx, len / 2, 0.0);
    let ext = ExternalTensor {
        param: param.clone(),
        param_offset: 2 * align,
        grad,
        grad_offset: 0,
        len,
    };
    let mut opt = Optimizer::builder(&ctx)
        .group_stored(
            AdamW::default(),
            Storage::parse("bf16").unwrap(),
            Default::default(),
            [TensorInit::External(ext)],
        )
        .build()
        .unwrap();
    let shape = [64u64, 4, 3, 3];
    let init = kaiming_uniform(FanMode::FanIn, leaky(0.2));
    opt.initialize(TensorId(0), &shape, &init, 5).unwrap();
    let distribution = init.distribution(&shape).unwrap();
    let bits = read_bits(&ctx, &param);
    let halves: Vec<u16> = bits
        .iter()
        .flat_map(|w| [*w as u16, (*w >> 16) as u16])
        .collect();
    let first = (2 * align / 2) as usize;
    for j in 0..len as usize {
        let expected = wgpu_optim::half::bf16::from_f32(distribution.value(5, j as u64));
        assert_eq!(halves[first + j], expected.to_bits(), "element {j}");
    }
    assert!(
        halves[..first]
            .iter()
            .chain(&halves[first + len as usize..])
            .all(|&h| h == 0x7fc1)
    );
}

/// Bare 16-bit regions that start and end inside 4-byte words: the values rounded to nearest
/// even, the other halves of those words kept.
#[test]
fn sixteen_bit_regions_inside_words_keep_their_neighbours() {
    let ctx = context();
    for format in [Format::Bf16, Format::F16] {
        for (init, shape) in [
            (Init::xavier_uniform(), vec![257u64, 3]),
            (Init::kaiming_normal(), vec![101, 7, 3]),
            (Init::XavierNormal { gain: SELU }, vec![1, 1]),
        ] {
            let n: u64 = shape.iter().product();
            let distribution = init.distribution(&shape).unwrap();
            for first_half in [0u64, 1, 3, 130] {
                // Halves of 0x7e01 (a NaN in both formats) around the region.
                let words = (first_half + n).div_ceil(2) + 2;
                let buffer = poisoned(&ctx, words, f32::from_bits(0x7e01_7e01));
                wgpu_optim::init::fill_buffer_as(
                    &ctx,
                    &buffer,
                    first_half * 2,
                    format,
                    &shape,
                    &init,
                    11,
                )
                .unwrap();
                let halves: Vec<u16> = read_bits(&ctx, &buffer)
                    .iter()
                    .flat_map(|w| [*w as u16, (*w >> 16) as u16])
                    .collect();
                let what = format!("{format:?} {init:?} on {shape:?} from half {first_half}");
                let (start, end) = (first_half as usize, (first_half + n) as usize);
                assert!(
                    halves[..start]
                        .iter()
                        .chain(&halves[end..])
                        .all(|&h| h == 0x7e01),
                    "{what}: a value around the region changed"
                );
                for (j, &h) in halves[start..end].iter().enumerate() {
                    let cpu = distribution.value(11, j as u64);
                    let (got, expected) = match format {
                        Format::Bf16 => (
                            wgpu_optim::half::bf16::from_bits(h).to_f32(),
                            Format::Bf16.round(cpu),
                        ),
                        _ => (
                            wgpu_optim::half::f16::from_bits(h).to_f32(),
                            Format::F16.round(cpu),
                        ),
                    };
                    let exact = matches!(distribution, Distribution::Uniform { .. });
                    assert!(
                        got.to_bits() == expected.to_bits()
                            || (!exact
                                && (got as f64 - expected as f64).abs() <= ulp(format, cpu as f64)),
                        "{what}[{j}]: {got:e}, the mirror rounded is {expected:e}"
                    );
                }
            }
        }
    }
    // Offsets of whole values only, and whole words within the buffer.
    let buffer = poisoned(&ctx, 4, 0.0);
    let init = Init::xavier_uniform();
    let f = |offset, shape: &[u64]| {
        wgpu_optim::init::fill_buffer_as(&ctx, &buffer, offset, Format::Bf16, shape, &init, 1)
    };
    assert!(f(1, &[2, 2]).is_err());
    assert!(f(2, &[7, 1]).is_ok());
    assert!(f(2, &[8, 1]).is_err());
    assert!(
        wgpu_optim::init::fill_buffer_as(&ctx, &buffer, 0, Format::Q8, &[2, 2], &init, 1).is_err()
    );
}
