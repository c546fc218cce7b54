//! Criterion benches: every optimizer at 2^20 and 2^24 elements and on GPT-2 small's 148
//! tensors, timed by GPU timestamps (wall clock where the adapter has none), reported as time
//! per step and as effective bandwidth (the fewest bytes a step must move, per second).
//!
//! `cargo bench` (set `WGPU_BACKEND` to pick a backend). The `bench` command prints the same
//! measurements as a fraction of the adapter's copy bandwidth.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgpu_optim::optim::OPTIMIZER_NAMES;
use wgpu_optim::tools::bench::{BenchOptions, PreparedSteps, Workload, bench_config};
use wgpu_optim::{ContextOptions, GpuContext, UpdateRule};

fn optimizers(c: &mut Criterion) {
    let ctx = GpuContext::new(&ContextOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let options = BenchOptions::default();
    for workload in [
        Workload::Elements(1 << 20),
        Workload::Elements(1 << 24),
        Workload::Gpt2Small,
    ] {
        let mut group = c.benchmark_group(format!("step/{}", workload.label()));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(5));
        for name in OPTIMIZER_NAMES {
            let config = bench_config(name).unwrap();
            let elements: u64 = workload.lens().iter().sum();
            let bytes = config.bytes_per_element(&wgpu_optim::Storage::F32) * elements as f64;
            group.throughput(Throughput::Bytes(bytes as u64));
            // Prepared inside: a filtered-out bench builds nothing.
            group.bench_function(name, |b| {
                let mut prepared = PreparedSteps::new(
                    &ctx,
                    &config,
                    &wgpu_optim::Storage::F32,
                    &workload,
                    &options,
                )
                .unwrap();
                b.iter_custom(|iters| {
                    let (_, times) = prepared.time(iters as usize).unwrap();
                    Duration::from_secs_f64(times.iter().sum())
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, optimizers);
criterion_main!(benches);
