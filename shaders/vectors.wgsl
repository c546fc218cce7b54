// L-BFGS's vector operations on float32 device vectors (src/vectors.rs): y += alpha·x, x *= alpha,
// and reductions (a·b, max |x|, Σ|x|) in two passes: one partial per workgroup of CHUNK
// elements, then one workgroup over the partials. The host reads back one value.

const CHUNK: u32 = 4096u;
const THREADS: u32 = 256u;
// Elements each invocation of a chunk pass handles, strided by THREADS (neighbours read
// neighbours): 16, so that a reduction's barriers come once per 4,096 elements.
const PER_THREAD: u32 = CHUNK / THREADS;

struct VectorParams {
    len: u32,
    // Partials of the first pass (the second pass's length).
    partial_count: u32,
    alpha: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> settings: VectorParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, local: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * THREADS + local;
}

@compute @workgroup_size(256)
fn axpy(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = flat_index(wg, nwg, local);
    if (i < settings.len) {
        y[i] = fma(settings.alpha, x[i], y[i]);
    }
}

@compute @workgroup_size(256)
fn scale(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = flat_index(wg, nwg, local);
    if (i < settings.len) {
        x[i] = settings.alpha * x[i];
    }
}

// What a reduction combines: the sum of products x·y (both flags off), the largest magnitude
// of x (MAX_ABS; NaN if any element is NaN), or the sum of magnitudes of x (SUM_ABS).
override MAX_ABS: bool = false;
override SUM_ABS: bool = false;

var<workgroup> shared_values: array<f32, 256>;
var<workgroup> shared_nan: array<u32, 256>;

fn combine(a: f32, b: f32) -> f32 {
    if (MAX_ABS) {
        return max(a, b);
    }
    return a + b;
}

// The workgroup's combination of `value` (and whether any invocation saw a NaN).
fn reduce_workgroup(local: u32, value: f32, nan: bool) -> f32 {
    shared_values[local] = value;
    shared_nan[local] = u32(nan);
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            shared_values[local] = combine(shared_values[local], shared_values[local + stride]);
            shared_nan[local] = shared_nan[local] | shared_nan[local + stride];
        }
        workgroupBarrier();
    }
    let result = shared_values[0];
    if (MAX_ABS && shared_nan[0] != 0u) {
        return bitcast<f32>(0x7fc00000u);
    }
    return result;
}

// A NaN's bits, tested as bits: a comparison `t != t` may be folded away by a driver that
// assumes no NaNs.
fn is_nan(t: f32) -> bool {
    return (bitcast<u32>(t) & 0x7fffffffu) > 0x7f800000u;
}

fn term(i: u32) -> f32 {
    if (!MAX_ABS && !SUM_ABS) {
        return x[i] * y[i];
    }
    return abs(x[i]);
}

@compute @workgroup_size(256)
fn reduce_chunks(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = wg.y * nwg.x + wg.x;
    if (w >= settings.partial_count) {
        return;
    }
    var value = 0.0;
    var nan = false;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = w * CHUNK + k * THREADS + local;
        if (i < settings.len) {
            let t = term(i);
            nan = nan || is_nan(t);
            value = combine(value, t);
        }
    }
    let total = reduce_workgroup(local, value, nan);
    if (local == 0u) {
        partials[w] = total;
    }
}

// One workgroup: the partials' combination into partials[partial_count]. (Each invocation
// loops over partial_count / 256 partials: within lavapipe's 65,535 iterations up to 16.7
// million partials, 17 billion elements.)
@compute @workgroup_size(256)
fn reduce_partials(@builtin(local_invocation_index) local: u32) {
    var value = 0.0;
    var nan = false;
    for (var i = local; i < settings.partial_count; i += THREADS) {
        let p = partials[i];
        nan = nan || is_nan(p);
        value = combine(value, p);
    }
    let total = reduce_workgroup(local, value, nan);
    if (local == 0u) {
        partials[settings.partial_count] = total;
    }
}
