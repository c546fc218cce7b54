//! A real problem: a small neural network learns the handwritten digits of the UCI "Optical
//! Recognition of Handwritten Digits" set (8x8 images, as scikit-learn ships them: see
//! `examples/data/LICENSE-digits.md`), once per storage format of the optimizer, and the
//! loss curves are compared.
//!
//! The model, a 64-32-10 perceptron with a tanh hidden layer and a softmax output, runs its
//! forward and backward passes on the host in float32, written out below. Its parameters live
//! in the optimizer: each epoch the model reads the values the optimizer stores (for 16-bit
//! formats the 16-bit values, widened), computes the full-batch gradient and hands it back
//! (rounded to the group's gradient format on upload), and AdamW steps on the GPU.
//!
//! Writes `docs/digits-loss.svg` and exits non-zero if a format that should track float32
//! (stochastic rounding, Kahan summation, master weights, and q8 states with either of the
//! first and last) ends more than 1% above float32's training loss. Nearest-even bf16
//! parameters (with float32 or q8 states) are shown but not checked.
//!
//! `cargo run --release --example digits`

use std::error::Error;
use std::process::ExitCode;
use std::time::Instant;

use plotters::prelude::*;
use wgpu_optim::optim::AdamW;
use wgpu_optim::{ContextOptions, GpuContext, Optimizer, Storage, TensorId, TrainingOptions};

/// The storage formats trained, as `Storage::parse` reads them. A label the library does not
/// know (yet) is skipped with a message.
const FORMATS: [&str; 8] = [
    "f32",
    "bf16",
    "bf16-sr",
    "bf16-kahan",
    "bf16-master",
    "bf16+q8",
    "bf16-sr+q8",
    "bf16-master+q8",
];
/// The formats not held to float32's loss: float32 itself, and nearest-even bf16 parameters
/// (with float32 or q8 states), which lose every update smaller than half a unit in the last
/// place.
const UNCHECKED: [&str; 3] = ["f32", "bf16", "bf16+q8"];
/// How far above float32's final training loss a checked format may end (relative). Below is
/// no failure: q8 states end a few percent lower (quantized moments change the trajectory of a
/// loss that is still falling).
const TOLERANCE: f32 = 0.01;

const INPUTS: usize = 64;
const HIDDEN: usize = 32;
const CLASSES: usize = 10;
/// The first this many samples train, the rest test.
const TRAIN: usize = 1500;
/// Full-batch steps.
const EPOCHS: usize = 400;
const SEED: u64 = 20261124;
const LR: f64 = 1e-2;
const WEIGHT_DECAY: f64 = 1e-2;

/// The parameters, packed in one tensor: W1 (HIDDEN x INPUTS), b1, W2 (CLASSES x HIDDEN), b2.
/// One tensor means one upload and one read per step; weight decay reaches the biases too.
const W1: usize = 0;
const B1: usize = W1 + HIDDEN * INPUTS;
const W2: usize = B1 + HIDDEN;
const B2: usize = W2 + CLASSES * HIDDEN;
const PARAMS: usize = B2 + CLASSES;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/digits-loss.svg");
/// The chart's font, the one the crate's reports use (DejaVu Sans, `assets/DejaVuSans-LICENSE`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Samples: features scaled to [0, 1], and labels.
struct Data {
    x: Vec<f32>,
    y: Vec<usize>,
}

impl Data {
    fn len(&self) -> usize {
        self.y.len()
    }

    fn sample(&self, i: usize) -> &[f32] {
        &self.x[i * INPUTS..(i + 1) * INPUTS]
    }
}

/// The CSV scikit-learn ships: 64 pixel counts (0..16), then the label, per line.
fn load() -> Result<(Data, Data), Box<dyn Error>> {
    let text = include_str!("data/digits.csv");
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != INPUTS + 1 {
            return Err(format!("digits.csv line {}: {} fields", n + 1, fields.len()).into());
        }
        for f in &fields[..INPUTS] {
            x.push(f.parse::<f32>()? / 16.0);
        }
        y.push(fields[INPUTS].parse()?);
    }
    let test = Data {
        x: x.split_off(TRAIN * INPUTS),
        y: y.split_off(TRAIN),
    };
    Ok((Data { x, y }, test))
}

/// SplitMix64, for the initial weights: the same on every machine.
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Glorot-uniform weights, zero biases.
fn init() -> Vec<f32> {
    let mut state = SEED;
    let mut params = vec![0.0; PARAMS];
    let a1 = (6.0 / (INPUTS + HIDDEN) as f32).sqrt();
    for w in &mut params[W1..B1] {
        *w = (2.0 * uniform(&mut state) - 1.0) * a1;
    }
    let a2 = (6.0 / (HIDDEN + CLASSES) as f32).sqrt();
    for w in &mut params[W2..B2] {
        *w = (2.0 * uniform(&mut state) - 1.0) * a2;
    }
    params
}

/// The hidden layer's activations and the class probabilities of one sample.
fn forward(p: &[f32], x: &[f32], h: &mut [f32; HIDDEN], prob: &mut [f32; CLASSES]) {
    for (j, hj) in h.iter_mut().enumerate() {
        let w = &p[W1 + j * INPUTS..W1 + (j + 1) * INPUTS];
        let a: f32 = w.iter().zip(x).map(|(w, x)| w * x).sum();
        *hj = (a + p[B1 + j]).tanh();
    }
    for (k, z) in prob.iter_mut().enumerate() {
        let w = &p[W2 + k * HIDDEN..W2 + (k + 1) * HIDDEN];
        *z = w.iter().zip(h.iter()).map(|(w, h)| w * h).sum::<f32>() + p[B2 + k];
    }
    let max = prob.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for z in prob.iter_mut() {
        *z = (*z - max).exp();
        sum += *z;
    }
    for z in prob.iter_mut() {
        *z /= sum;
    }
}

/// Mean cross-entropy and accuracy over `data`.
fn evaluate(p: &[f32], data: &Data) -> (f32, f32) {
    let (mut h, mut prob) = ([0.0; HIDDEN], [0.0; CLASSES]);
    let (mut loss, mut correct) = (0.0f64, 0);
    for i in 0..data.len() {
        forward(p, data.sample(i), &mut h, &mut prob);
        loss -= f64::from(prob[data.y[i]].max(f32::MIN_POSITIVE).ln());
        let guess = (0..CLASSES).max_by(|&a, &b| prob[a].total_cmp(&prob[b]));
        correct += usize::from(guess == Some(data.y[i]));
    }
    let n = data.len() as f64;
    ((loss / n) as f32, (correct as f64 / n) as f32)
}

/// Mean cross-entropy over `data` and its gradient with respect to every parameter.
fn loss_and_grad(p: &[f32], data: &Data, grad: &mut [f32]) -> f32 {
    grad.fill(0.0);
    let (mut h, mut prob) = ([0.0; HIDDEN], [0.0; CLASSES]);
    let scale = 1.0 / data.len() as f32;
    let mut loss = 0.0f64;
    for i in 0..data.len() {
        let x = data.sample(i);
        forward(p, x, &mut h, &mut prob);
        let label = data.y[i];
        loss -= f64::from(prob[label].max(f32::MIN_POSITIVE).ln());
        // d loss / d logits = probabilities - one-hot label, for the mean over the batch.
        let mut dz = prob;
        dz[label] -= 1.0;
        let mut dh = [0.0f32; HIDDEN];
        for (k, dz) in dz.iter().map(|d| d * scale).enumerate() {
            grad[B2 + k] += dz;
            let w = &p[W2 + k * HIDDEN..W2 + (k + 1) * HIDDEN];
            let g = &mut grad[W2 + k * HIDDEN..W2 + (k + 1) * HIDDEN];
            for j in 0..HIDDEN {
                g[j] += dz * h[j];
                dh[j] += dz * w[j];
            }
        }
        for j in 0..HIDDEN {
            // tanh' = 1 - tanh^2.
            let da = dh[j] * (1.0 - h[j] * h[j]);
            grad[B1 + j] += da;
            let g = &mut grad[W1 + j * INPUTS..W1 + (j + 1) * INPUTS];
            for (g, x) in g.iter_mut().zip(x) {
                *g += da * x;
            }
        }
    }
    (loss / data.len() as f64) as f32
}

/// One format's training.
struct Run {
    label: String,
    /// Training loss before each step, then after the last one.
    losses: Vec<f32>,
    test_accuracy: f32,
    seconds: f32,
}

impl Run {
    fn final_loss(&self) -> f32 {
        *self.losses.last().unwrap_or(&f32::NAN)
    }
}

fn train(
    ctx: &GpuContext,
    label: &str,
    storage: Storage,
    train: &Data,
    test: &Data,
) -> Result<Run, Box<dyn Error>> {
    let start = Instant::now();
    let initial = init();
    let mut opt = Optimizer::builder(ctx)
        .group_stored(
            AdamW {
                lr: LR,
                weight_decay: WEIGHT_DECAY,
                ..Default::default()
            },
            storage,
            TrainingOptions::default(),
            [&initial],
        )
        .build()?;
    let mut grad = vec![0.0; PARAMS];
    let mut losses = Vec::with_capacity(EPOCHS + 1);
    for _ in 0..EPOCHS {
        // What the optimizer stores: 16-bit values (widened) for 16-bit parameters.
        let params = opt.read_param(TensorId(0))?;
        losses.push(loss_and_grad(&params, train, &mut grad));
        opt.step_with_grads(&[&grad])?;
    }
    let params = opt.read_param(TensorId(0))?;
    losses.push(evaluate(&params, train).0);
    let test_accuracy = evaluate(&params, test).1;
    Ok(Run {
        label: label.to_string(),
        losses,
        test_accuracy,
        seconds: start.elapsed().as_secs_f32(),
    })
}

/// Colours distinct in print and for the common colour-vision deficiencies (Okabe-Ito); float32
/// first, as a wide grey band the formats that track it lie on.
const PALETTE: [RGBColor; 8] = [
    RGBColor(170, 170, 170),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

fn chart(runs: &[Run], adapter: &str) -> Result<(), Box<dyn Error>> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "the chart's font does not load")?;
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        area.fill(&WHITE)?;
        let all = runs.iter().flat_map(|r| r.losses.iter().copied());
        let min = all.clone().fold(f32::INFINITY, f32::min);
        let max = all.fold(0.0, f32::max);
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!("Handwritten digits: 64-32-10 MLP, AdamW, full batch, on {adapter}"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0..EPOCHS, (min * 0.8..max * 1.2).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("training loss (log scale)")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (run, color) in runs.iter().zip(PALETTE.iter().cycle()) {
            let style = color.stroke_width(if run.label == "f32" { 8 } else { 2 });
            chart
                .draw_series(LineSeries::new(
                    run.losses.iter().copied().enumerate(),
                    style,
                ))?
                .label(&run.label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        area.present()?;
    }
    std::fs::write(CHART, svg).map_err(|e| format!("{CHART}: {e}"))?;
    Ok(())
}

fn main() -> Result<ExitCode, Box<dyn Error>> {
    let (train_set, test_set) = load()?;
    let ctx = GpuContext::new(&ContextOptions::default())?;
    let adapter = ctx.info.name.clone();
    println!(
        "adapter: {adapter}; {} training and {} test samples, {PARAMS} parameters, {EPOCHS} epochs",
        train_set.len(),
        test_set.len()
    );
    let mut runs: Vec<Run> = Vec::new();
    for label in FORMATS {
        let storage = match Storage::parse(label) {
            Ok(storage) => storage,
            Err(e) => {
                println!("skipped {label}: {e}");
                continue;
            }
        };
        let run = train(&ctx, label, storage, &train_set, &test_set)?;
        println!(
            "{label:>12}: final training loss {:.6}, test accuracy {:.2}% ({:.1} s)",
            run.final_loss(),
            run.test_accuracy * 100.0,
            run.seconds
        );
        runs.push(run);
    }
    let reference = runs
        .iter()
        .find(|r| r.label == "f32")
        .map(Run::final_loss)
        .ok_or("the f32 run is missing")?;
    println!();
    println!("| format | final train loss | vs f32 | test accuracy |");
    println!("|---|---:|---:|---:|");
    for run in &runs {
        println!(
            "| {} | {:.6} | {:.4} | {:.1}% |",
            run.label,
            run.final_loss(),
            run.final_loss() / reference,
            run.test_accuracy * 100.0
        );
    }
    chart(&runs, &adapter)?;
    println!("\nwrote {CHART}");
    let failed: Vec<&Run> = runs
        .iter()
        .filter(|r| !UNCHECKED.contains(&r.label.as_str()))
        .filter(|r| {
            // A NaN loss fails too.
            let off = r.final_loss() / reference - 1.0;
            off.is_nan() || off > TOLERANCE
        })
        .collect();
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for run in failed {
        eprintln!(
            "error: {} ended at training loss {:.6}, {:+.2}% from f32's {reference:.6} \
             (allowed: {:.0}% above)",
            run.label,
            run.final_loss(),
            (run.final_loss() / reference - 1.0) * 100.0,
            TOLERANCE * 100.0
        );
    }
    Ok(ExitCode::FAILURE)
}
