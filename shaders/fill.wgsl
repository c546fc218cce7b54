// Fills a run of a buffer with pseudo-random values that depend only on (seed, element index):
//   dst[start + i] = offset + scale * u(seed, first + i),   u uniform in [-1, 1)
// so that the CPU (`RandomFill::value` in src/fill.rs) computes the very same bits for any element without
// holding the data: how the large tests and the benchmarks get real, non-zero inputs quickly.

struct FillParams {
    seed: u32,
    // The first element's index (u64, as two words): values do not depend on the layout.
    first_lo: u32,
    first_hi: u32,
    // Elements to write, from `start` in `dst`.
    count: u32,
    start: u32,
    offset: f32,
    scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> f: FillParams;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;

// PCG's output permutation (O'Neill 2014, "PCG: A Family of Simple Fast Space-Efficient
// Statistically Good Algorithms for Random Number Generation"), as a hash.
fn pcg_hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wg, nwg, lid);
    if (i >= f.count) {
        return;
    }
    let lo = f.first_lo + i;
    let hi = f.first_hi + select(0u, 1u, lo < f.first_lo);
    let h = pcg_hash(lo ^ pcg_hash(hi ^ pcg_hash(f.seed)));
    // 24 random bits, exactly representable: the same float on every device and on the CPU.
    let u = f32(h >> 8u) * (1.0 / 16777216.0) * 2.0 - 1.0;
    dst[f.start + i] = f.offset + f.scale * u;
}
