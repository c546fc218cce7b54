// Shared by the kernels of optimizers whose step needs each tensor's shape (Adafactor, Muon):
// the group's tensor table, the bindings every such kernel has, and the per-tensor sums.
//
// The host puts the kernel's `Scalars` struct before this piece; it begins with the fields
// read here: `tensor_count`, `chunks` (workgroups of a pass over elements), `row_work` and
// `row_groups` (where the row passes' workgroups start in `work`, and how many),
// `column_work` and `column_groups`.
//
// Work is spread by tables, not by one dispatch per tensor: a pass over elements runs one
// workgroup per chunk of CHUNK consecutive elements of one tensor (no workgroup holds two
// tensors, so a workgroup's sum belongs to one tensor), a pass over rows one workgroup per 256
// rows of one tensor, and so on. `work` maps each workgroup of each kind of pass to its tensor.

const CHUNK: u32 = 4096u;
const THREADS: u32 = 256u;
// Elements each invocation of a chunk pass handles, strided by THREADS (neighbours read
// neighbours): 16, so that a reduction's barriers come once per 4,096 elements.
const PER_THREAD: u32 = CHUNK / THREADS;

// One tensor, as the host's `TensorEntry` (src/shaped/mod.rs).
struct TensorEntry {
    // Its first element in the parameters, the gradients and the elementwise states.
    offset: u32,
    numel: u32,
    // Matrices (product of the leading dimensions), rows and columns of each; a vector is
    // one matrix of one row.
    batch: u32,
    rows: u32,
    cols: u32,
    // Adafactor: first element of its row factors, of its column factors (or a vector's
    // second moment), of its per-matrix row means, in the state buffer.
    row_state: u32,
    col_state: u32,
    row_mean_state: u32,
    // Its first workgroup in each kind of pass: element chunks, rows, columns.
    first_chunk: u32,
    first_row_group: u32,
    first_column_group: u32,
    // Muon: its matrix in the scratch buffer (two copies, p×q each, then the p×p products),
    // and whether it is stored transposed there (more rows than columns).
    scratch: u32,
    transposed: u32,
    // 1 for a tensor factored over its last two dimensions (two or more), 0 for a vector.
    factored: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> s: Scalars;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(5) var<storage, read> tensors: array<TensorEntry>;
@group(0) @binding(6) var<storage, read> work: array<u32>;
// Per tensor: x and y, sums the kernels take (finalize_x, finalize_y); z, a value the host
// writes before each step (Muon: the tensor's learning rate).
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
@group(0) @binding(8) var<storage, read_write> sums: array<vec4<f32>>;

override MAXIMIZE: bool = false;

fn flat_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y * nwg.x + wg.x;
}

// The gradient the rule descends along (negated to maximize).
fn descent_grad(i: u32) -> f32 {
    if (MAXIMIZE) {
        return -grads[i];
    }
    return grads[i];
}

// torch's lerp, from the nearer end (as `lerp_to` in step.wgsl).
fn lerp1(start: f32, end: f32, weight: f32) -> f32 {
    if (weight < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}

// A chunk pass's workgroup: its tensor (one per chunk: the table was cut so) and the index in
// that tensor of the chunk's first element, read once per workgroup.
struct Chunk {
    t: u32,
    tensor: TensorEntry,
    first: u32,
}

fn chunk_of(wg: u32) -> Chunk {
    let t = work[wg];
    let tensor = tensors[t];
    return Chunk(t, tensor, (wg - tensor.first_chunk) * CHUNK);
}

var<workgroup> reduce_scratch: array<f32, 256>;

// The workgroup's sum of `value` into `partials[slot]`; every invocation must call it.
fn reduce_to_partial(local: u32, value: f32, slot: u32) {
    reduce_scratch[local] = value;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride = stride / 2u) {
        if (local < stride) {
            reduce_scratch[local] = reduce_scratch[local] + reduce_scratch[local + stride];
        }
        workgroupBarrier();
    }
    if (local == 0u) {
        partials[slot] = reduce_scratch[0];
    }
}

// Sums each tensor's chunk partials, in chunk order, into `sums[tensor].x` (`finalize_x`) or
// `.y` (`finalize_y`): one invocation per tensor.
fn tensor_total(t: u32) -> f32 {
    let tensor = tensors[t];
    let chunks = (tensor.numel + CHUNK - 1u) / CHUNK;
    var total = 0.0;
    for (var c = 0u; c < chunks; c++) {
        total += partials[tensor.first_chunk + c];
    }
    return total;
}

@compute @workgroup_size(256)
fn finalize_x(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < s.tensor_count) {
        sums[id.x].x = tensor_total(id.x);
    }
}

@compute @workgroup_size(256)
fn finalize_y(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < s.tensor_count) {
        sums[id.x].y = tensor_total(id.x);
    }
}

// Each tensor's Σ g² into its chunks' partials (then `finalize_x`): per-tensor gradient norms
// for the user (`ShapedOptimizer::grad_norms`), in the same two dispatches as the step's sums.
@compute @workgroup_size(256)
fn grad_sumsq(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = flat_workgroup(wg, nwg);
    if (w >= s.chunks) {
        return;
    }
    let chunk = chunk_of(w);
    var total = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let e = chunk.first + k * THREADS + local;
        if (e < chunk.tensor.numel) {
            let g = grads[chunk.tensor.offset + e];
            total += g * g;
        }
    }
    reduce_to_partial(local, total, w);
}
