// Adafactor (Shazeer & Stern 2018) as torch.optim.Adafactor (torch 2.15), over a group of
// shaped tensors (shaped.wgsl before this: the tensor table, the bindings, the sums). A step is
// eight dispatches:
//   param_sumsq, finalize_x   sums[t].x = Σ θ²              (RMS(θ) before the decay)
//   rows, columns             row and column means of g², into their running averages
//   row_means                 each matrix's mean of its row factors
//   update_sumsq, finalize_y  sums[t].y = Σ U²  (a vector's second moment stored here)
//   update                    θ ← θ·(1 − lr·wd) − α / max(1, RMS(U)/d) · U
// with U = g / √max(V̂, eps1²), V̂ = R·C / max(mean(R), eps1) for a matrix, the running
// average of g² for a vector.

// The element of a chunk pass this invocation handles in round `k` (0..3), if any.
struct ChunkElement {
    t: u32,
    e: u32,
    valid: bool,
}

fn chunk_element(wg: u32, local: u32, k: u32) -> ChunkElement {
    let t = work[wg];
    let tensor = tensors[t];
    let e = (wg - tensor.first_chunk) * CHUNK + k * THREADS + local;
    return ChunkElement(t, e, e < tensor.numel);
}

@compute @workgroup_size(256)
fn param_sumsq(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = flat_workgroup(wg, nwg);
    if (w >= s.chunks) {
        return;
    }
    var total = 0.0;
    for (var k = 0u; k < 4u; k++) {
        let c = chunk_element(w, local, k);
        if (c.valid) {
            let p = params[tensors[c.t].offset + c.e];
            total += p * p;
        }
    }
    reduce_to_partial(local, total, w);
}

// One invocation per row of every matrix of a factored tensor: R ← lerp(R, mean(g²), w).
@compute @workgroup_size(256)
fn rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = flat_workgroup(wg, nwg);
    if (w >= s.row_groups) {
        return;
    }
    let tensor = tensors[work[s.row_work + w]];
    let r = (w - tensor.first_row_group) * THREADS + local;
    if (r >= tensor.batch * tensor.rows) {
        return;
    }
    let first = tensor.offset + r * tensor.cols;
    var total = 0.0;
    for (var c = 0u; c < tensor.cols; c++) {
        let g = grads[first + c];
        total += g * g;
    }
    let i = tensor.row_state + r;
    state[i] = lerp1(state[i], total / f32(tensor.cols), s.weight);
}

// One invocation per column of every matrix of a factored tensor: C ← lerp(C, mean(g²), w).
@compute @workgroup_size(256)
fn columns(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = flat_workgroup(wg, nwg);
    if (w >= s.column_groups) {
        return;
    }
    let tensor = tensors[work[s.column_work + w]];
    let c = (w - tensor.first_column_group) * THREADS + local;
    if (c >= tensor.batch * tensor.cols) {
        return;
    }
    let matrix = c / tensor.cols;
    let first = tensor.offset + matrix * tensor.rows * tensor.cols + c % tensor.cols;
    var total = 0.0;
    for (var r = 0u; r < tensor.rows; r++) {
        let g = grads[first + r * tensor.cols];
        total += g * g;
    }
    let i = tensor.col_state + c;
    state[i] = lerp1(state[i], total / f32(tensor.rows), s.weight);
}

// One invocation per tensor: the mean of each of its matrices' row factors.
@compute @workgroup_size(256)
fn row_means(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= s.tensor_count) {
        return;
    }
    let tensor = tensors[id.x];
    if (tensor.factored == 0u) {
        return;
    }
    for (var b = 0u; b < tensor.batch; b++) {
        var total = 0.0;
        for (var r = 0u; r < tensor.rows; r++) {
            total += state[tensor.row_state + b * tensor.rows + r];
        }
        state[tensor.row_mean_state + b] = total / f32(tensor.rows);
    }
}

// The second-moment estimate of element `e` of tensor `t` (a vector's, as stored).
fn estimate(tensor: TensorEntry, e: u32) -> f32 {
    if (tensor.factored == 0u) {
        return state[tensor.col_state + e];
    }
    let per_matrix = tensor.rows * tensor.cols;
    let b = e / per_matrix;
    let r = e / tensor.cols;
    let c = b * tensor.cols + e % tensor.cols;
    let floor = max(state[tensor.row_mean_state + b], s.eps1);
    return state[tensor.row_state + r] * state[tensor.col_state + c] / floor;
}

fn update_of(g: f32, v: f32) -> f32 {
    return g * inverseSqrt(max(v, s.eps1_squared));
}

@compute @workgroup_size(256)
fn update_sumsq(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = flat_workgroup(wg, nwg);
    if (w >= s.chunks) {
        return;
    }
    var total = 0.0;
    for (var k = 0u; k < 4u; k++) {
        let c = chunk_element(w, local, k);
        if (c.valid) {
            let tensor = tensors[c.t];
            let g = descent_grad(tensor.offset + c.e);
            if (tensor.factored == 0u) {
                let i = tensor.col_state + c.e;
                state[i] = lerp1(state[i], g * g, s.weight);
            }
            let u = update_of(g, estimate(tensor, c.e));
            total += u * u;
        }
    }
    reduce_to_partial(local, total, w);
}

@compute @workgroup_size(256)
fn update(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = flat_workgroup(wg, nwg);
    if (w >= s.chunks) {
        return;
    }
    for (var k = 0u; k < 4u; k++) {
        let c = chunk_element(w, local, k);
        if (c.valid) {
            let tensor = tensors[c.t];
            let n = f32(tensor.numel);
            let sum = sums[c.t];
            let alpha = max(s.eps2, sqrt(sum.x) / sqrt(n)) * s.rho;
            let denom = max(1.0, sqrt(sum.y) / (sqrt(n) * s.d));
            let i = tensor.offset + c.e;
            let u = update_of(descent_grad(i), estimate(tensor, c.e));
            params[i] = params[i] * s.decay - alpha / denom * u;
        }
    }
}
