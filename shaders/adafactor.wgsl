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
    let chunk = chunk_of(w);
    var total = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let e = chunk.first + k * THREADS + local;
        if (e < chunk.tensor.numel) {
            let p = params[chunk.tensor.offset + e];
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
    // r: the row counted over the tensor's matrices; b: its matrix.
    let r = e / tensor.cols;
    let b = r / tensor.rows;
    let c = b * tensor.cols + (e - r * tensor.cols);
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
    let chunk = chunk_of(w);
    let tensor = chunk.tensor;
    var total = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let e = chunk.first + k * THREADS + local;
        if (e < tensor.numel) {
            let g = descent_grad(tensor.offset + e);
            if (tensor.factored == 0u) {
                let i = tensor.col_state + e;
                state[i] = lerp1(state[i], g * g, s.weight);
            }
            let u = update_of(g, estimate(tensor, e));
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
    let chunk = chunk_of(w);
    let tensor = chunk.tensor;
    // The tensor's step size α / max(1, RMS(U)/d), once per workgroup.
    let n = sqrt(f32(tensor.numel));
    let sum = sums[chunk.t];
    let alpha = max(s.eps2, sqrt(sum.x) / n) * s.rho;
    let step = alpha / max(1.0, sqrt(sum.y) / (n * s.d));
    for (var k = 0u; k < PER_THREAD; k++) {
        let e = chunk.first + k * THREADS + local;
        if (e < tensor.numel) {
            let i = tensor.offset + e;
            let u = update_of(descent_grad(i), estimate(tensor, e));
            params[i] = params[i] * s.decay - step * u;
        }
    }
}
