//! One AdamW step, burn 0.22.1 (burn-wgpu with fusion) against wgpu-optim, on the same adapter
//! in the same process: wall clock with a device sync per step, median of the timed steps after
//! the warm-up, the two alternating step by step (burn, ours in each storage, burn, ...) so that
//! machine drift falls on both.
//!
//! `cargo run --release --manifest-path peers/burn-adamw/Cargo.toml -- [options]`
//!
//! Options: `--sizes 2^20,2^24,gpt2` (`gpt2`: GPT-2 small's 148 tensors with the 38.6M-element
//! token embedding split in two halves, 149 tensors; `gpt2-unsplit`: the embedding whole),
//! `--storages f32,bf16+bf16,bf16+q8`, `--steps 10`, `--warmup 3`, `--no-burn`, `--no-ours`,
//! `--burn-dtype f32|bf16|f16` (burn's parameters and gradients, hence its states; default f32).

use std::time::Instant;

use burn::module::{Module, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{DType, Device, Tensor, TensorData};
use wgpu_optim::optim::AdamW;
use wgpu_optim::{ContextOptions, GpuContext, Optimizer, Storage, TensorId, TrainingOptions};

const LR: f64 = 1e-3;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;
const WEIGHT_DECAY: f64 = 0.01;

/// The parameters as burn holds them: one module of one-dimensional tensors.
#[derive(Module, Debug)]
struct Params {
    tensors: Vec<Param<Tensor<1>>>,
}

struct Args {
    sizes: Vec<String>,
    storages: Vec<String>,
    steps: usize,
    warmup: usize,
    burn: bool,
    burn_dtype: DType,
    ours: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        sizes: vec!["2^20".into(), "2^24".into(), "gpt2".into()],
        storages: vec!["f32".into(), "bf16+bf16".into(), "bf16+q8".into()],
        steps: 10,
        warmup: 3,
        burn: true,
        burn_dtype: DType::F32,
        ours: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        let list = |v: String| v.split(',').map(str::to_owned).collect::<Vec<_>>();
        match arg.as_str() {
            "--sizes" => args.sizes = list(value()),
            "--storages" => args.storages = list(value()),
            "--steps" => args.steps = value().parse().expect("--steps: a number"),
            "--warmup" => args.warmup = value().parse().expect("--warmup: a number"),
            "--no-burn" => args.burn = false,
            "--burn-dtype" => {
                args.burn_dtype = match value().as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    other => panic!("--burn-dtype: f32, bf16 or f16, not {other}"),
                }
            }
            "--no-ours" => args.ours = false,
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// The tensor lengths of a size: `2^k`, a number, `gpt2` (embedding split) or `gpt2-unsplit`.
fn lens(size: &str) -> Vec<usize> {
    if let Some(split) = size.strip_prefix("gpt2") {
        let mut lens: Vec<usize> = wgpu_optim::tools::bench::gpt2_small_shapes()
            .iter()
            .map(|s| s.iter().product::<u64>() as usize)
            .collect();
        match split {
            "" => {
                // The token embedding, 50257 x 768, in two halves of 19,298,688 elements.
                let embedding = lens.remove(0);
                lens.splice(0..0, [embedding / 2, embedding - embedding / 2]);
            }
            "-unsplit" => {}
            other => panic!("unknown size gpt2{other}"),
        }
        return lens;
    }
    if let Some(k) = size.strip_prefix("2^") {
        return vec![1usize << k.parse::<u32>().expect("2^k")];
    }
    vec![size.parse().expect("a size: 2^k, a number or gpt2")]
}

/// Deterministic values in [-scale, scale) (xorshift64*), the same for both libraries.
fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

/// Burn's side of one size: the module, its optimizer and the fixed gradients.
struct BurnRun {
    device: Device,
    module: Option<Params>,
    optim: ModuleOptimizer,
    ids: Vec<ParamId>,
    grads: Vec<Tensor<1>>,
}

impl BurnRun {
    fn new(device: &Device, dtype: DType, params: &[Vec<f32>], grads: &[Vec<f32>]) -> Self {
        // Parameters on an autodiff device, as in training; gradients are inner tensors, as a
        // backward pass hands them to the optimizer.
        let ad = device.clone().autodiff();
        let tensor = |v: &Vec<f32>, device: &Device| {
            let t = Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device);
            if dtype == DType::F32 {
                t
            } else {
                t.cast(dtype)
            }
        };
        let tensors: Vec<Param<Tensor<1>>> = params
            .iter()
            .map(|p| Param::from_tensor(tensor(p, &ad)))
            .collect();
        let ids = tensors.iter().map(|p| p.id).collect();
        let grads = grads.iter().map(|g| tensor(g, device)).collect();
        let optim = AdamWConfig::new()
            .with_beta_1(BETA1 as f32)
            .with_beta_2(BETA2 as f32)
            .with_epsilon(EPS as f32)
            .with_weight_decay(WEIGHT_DECAY as f32)
            .init();
        device.sync().expect("burn: sync after upload");
        Self {
            device: device.clone(),
            module: Some(Params { tensors }),
            optim,
            ids,
            grads,
        }
    }

    /// One step and a sync, in milliseconds.
    fn step(&mut self) -> f64 {
        let start = Instant::now();
        let mut grads = GradientsParams::new();
        for (id, grad) in self.ids.iter().zip(&self.grads) {
            grads.register(*id, grad.clone());
        }
        let module = self.module.take().expect("module");
        self.module = Some(self.optim.step(LR, module, grads));
        self.device.sync().expect("burn: sync after a step");
        start.elapsed().as_secs_f64() * 1e3
    }

    /// Tensor 0's parameters, or the error burn reports: a failed allocation inside a step
    /// surfaces only here, not at `sync`.
    fn first_param(&self) -> Result<Vec<f32>, String> {
        let t = self.module.as_ref().expect("module").tensors[0].val();
        let data = t.cast(DType::F32).try_into_data().map_err(|e| {
            // The innermost cause is the useful line ("can't allocate buffer of size: ...").
            let text = e.to_string();
            let cause = text.rsplit("Caused by:").next().unwrap_or(&text);
            cause
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or_default()
                .to_owned()
        })?;
        data.try_to_vec::<f32>().map_err(|e| format!("{e:?}"))
    }
}

/// Ours in one storage.
struct OursRun {
    label: String,
    opt: Optimizer,
}

impl OursRun {
    fn new(
        ctx: &GpuContext,
        label: &str,
        params: &[Vec<f32>],
        grads: &[Vec<f32>],
    ) -> wgpu_optim::Result<Self> {
        let config = AdamW {
            lr: LR,
            beta1: BETA1,
            beta2: BETA2,
            eps: EPS,
            weight_decay: WEIGHT_DECAY,
            ..Default::default()
        };
        let mut opt = Optimizer::builder(ctx)
            .group_stored(
                config,
                Storage::parse(label)?,
                TrainingOptions::default(),
                params.iter(),
            )
            .build()?;
        // The gradients are written once; every step reads them.
        for (t, grad) in grads.iter().enumerate() {
            opt.write_grad(TensorId(t), grad)?;
        }
        opt.wait()?;
        Ok(Self {
            label: label.into(),
            opt,
        })
    }

    fn step(&mut self) -> f64 {
        let start = Instant::now();
        self.opt.step().expect("ours: step");
        self.opt.wait().expect("ours: wait");
        start.elapsed().as_secs_f64() * 1e3
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();

    // Ours: the best adapter under WGPU_BACKEND (here Vulkan: lavapipe).
    let ctx = GpuContext::new(&ContextOptions::default())?;
    let summary = ctx.summary();
    let ours_adapter = format!(
        "{} ({}, {}, driver {} {})",
        summary.name, summary.backend, summary.device_type, summary.driver, summary.driver_info
    );
    println!("ours: {ours_adapter}");
    println!(
        "limits: max_storage_buffer_binding_size {} B, max_buffer_size {} B",
        summary.max_storage_buffer_binding_size, summary.max_buffer_size
    );

    // Burn: its own device on the default adapter, pinned to Vulkan.
    let device = Device::wgpu_options()
        .graphics_api(WgpuBackend::Vulkan)
        .init()?;
    let burn_adapter = device
        .identity()
        .map_or("(no identity)".into(), |i| i.name.clone());
    println!("burn: {burn_adapter}");
    println!(
        "burn's supports_dtype on this device: bf16 {}, f16 {}",
        device.supports_dtype(DType::BF16),
        device.supports_dtype(DType::F16)
    );
    let mut args = args;
    if args.burn && !device.supports_dtype(args.burn_dtype) {
        // Forced anyway, bf16 on WGSL panics in cubecl's compiler thread
        // (`UnsupportedType("cube.bf16")`) while the steps "complete": the times would be of
        // nothing.
        println!(
            "burn: {:?} is not supported on this device; burn's column is left out",
            args.burn_dtype
        );
        args.burn = false;
    }
    println!(
        "AdamW lr {LR} betas {BETA1}/{BETA2} eps {EPS} weight decay {WEIGHT_DECAY}; \
         median of {} steps after {} warm-up, wall clock with a sync per step\n",
        args.steps, args.warmup
    );

    let mut rows = Vec::new();
    for size in &args.sizes {
        let lens = lens(size);
        let total: usize = lens.iter().sum();
        eprintln!(
            "{size}: {} tensor(s), {total} elements: filling",
            lens.len()
        );
        let params: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| values(n, 2 * i as u64 + 1, 0.02))
            .collect();
        let grads: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| values(n, 2 * i as u64 + 2, 1e-3))
            .collect();

        let mut burn = args
            .burn
            .then(|| BurnRun::new(&device, args.burn_dtype, &params, &grads));
        let mut ours: Vec<OursRun> = Vec::new();
        if args.ours {
            for label in &args.storages {
                ours.push(OursRun::new(&ctx, label, &params, &grads)?);
            }
        }
        drop(params);
        drop(grads);

        let mut burn_ms = Vec::new();
        let mut ours_ms = vec![Vec::new(); ours.len()];
        for step in 0..args.warmup + args.steps {
            let timed = step >= args.warmup;
            if let Some(burn) = burn.as_mut() {
                let ms = burn.step();
                if timed {
                    burn_ms.push(ms);
                }
            }
            for (run, times) in ours.iter_mut().zip(&mut ours_ms) {
                let ms = run.step();
                if timed {
                    times.push(ms);
                }
            }
        }

        // Both did the same steps on the same values: float32 parameters must agree. Reading
        // burn's tensor back is also where a failed step shows.
        let mut burn_error = None;
        if let Some(burn) = &burn {
            match burn.first_param() {
                Err(e) => {
                    eprintln!("{size}: burn's steps failed: {e}");
                    burn_error = Some(e);
                }
                Ok(theirs) => {
                    if let Some(f32_run) = ours.iter().find(|r| r.label == "f32") {
                        let mine = f32_run.opt.read_param(TensorId(0))?;
                        eprintln!(
                            "{size}: burn vs ours f32 after {} steps, tensor 0: max |diff| {:.3e}",
                            args.warmup + args.steps,
                            max_abs_diff(&theirs, &mine)
                        );
                    }
                }
            }
        }
        let dispatches = ours.first().map(|r| r.opt.dispatches_per_step());

        let burn_median = match burn_error {
            Some(e) => Err(e),
            None => Ok((!burn_ms.is_empty()).then(|| median(&mut burn_ms))),
        };
        let ours_medians: Vec<(String, f64)> = ours
            .iter()
            .zip(&mut ours_ms)
            .map(|(r, t)| (r.label.clone(), median(t)))
            .collect();
        eprintln!(
            "{size}: burn {burn_median:?} ms, ours {ours_medians:?} ms, our dispatches/step {dispatches:?}"
        );
        rows.push((size.clone(), total, burn_median, ours_medians));
    }

    // The table.
    let storages: Vec<String> = rows
        .first()
        .map(|r| r.3.iter().map(|(l, _)| l.clone()).collect())
        .unwrap_or_default();
    let burn_dtype = format!("{:?}", args.burn_dtype).to_lowercase();
    let mut header = format!("| size | elements | burn {burn_dtype} ms |");
    let mut rule = String::from("|---|---:|---:|");
    for s in &storages {
        header.push_str(&format!(" ours {s} ms |"));
        rule.push_str("---:|");
    }
    for s in &storages {
        header.push_str(&format!(" {s} / burn |"));
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    for (size, total, burn, ours) in &rows {
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let burn_cell = match burn {
            Ok(ms) => fmt(*ms),
            Err(e) => format!("failed ({e})"),
        };
        let burn = burn.clone().ok().flatten();
        let mut line = format!("| {size} | {total} | {burn_cell} |");
        for (_, ms) in ours {
            line.push_str(&format!(" {} |", fmt(Some(*ms))));
        }
        for (_, ms) in ours {
            let ratio = burn.map(|b| ms / b);
            line.push_str(&format!(
                " {} |",
                ratio.map_or("-".into(), |r| format!("{r:.2}"))
            ));
        }
        println!("{line}");
    }
    println!("\nours: {ours_adapter}\nburn: {burn_adapter}");
    Ok(())
}
