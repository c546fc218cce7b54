// Muon (Jordan et al. 2024) as torch.optim.Muon (torch 2.15), Newton–Schulz in float32, over a
// group of 2-D tensors (shaped.wgsl before this: the tensor table, the bindings, the sums).
// A step:
//   momentum, finalize_x   B ← lerp(B, g, 1 − μ); U = lerp(g, B, μ) (Nesterov) or B, written
//                          as X (p×q, p = min(m, n): transposed when m > n); sums[t].x = Σ U²
//   normalize              X ← X / max(‖X‖_F, eps)
//   3 products per Newton–Schulz iteration (matmul.wgsl, batched over the group's matrices):
//                          A = XXᵀ; T = c·A·A + b·A; X' = T·X + a·X
//   update                 θ ← θ·(1 − lr·wd) − lr'·X, X transposed back; lr' per tensor

override NESTEROV: bool = true;

// Where element e (row-major in the m×n parameter) sits in the tensor's X (p×q).
fn x_index(tensor: TensorEntry, e: u32) -> u32 {
    if (tensor.transposed == 0u) {
        return e;
    }
    let r = e / tensor.cols;
    let c = e % tensor.cols;
    return c * tensor.rows + r;
}

@compute @workgroup_size(256)
fn momentum(
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
            let i = tensor.offset + e;
            let g = descent_grad(i);
            let b = lerp1(state[i], g, s.one_minus_momentum);
            state[i] = b;
            var u = b;
            if (NESTEROV) {
                u = lerp1(g, b, s.momentum);
            }
            scratch[tensor.scratch + x_index(tensor, e)] = u;
            total += u * u;
        }
    }
    reduce_to_partial(local, total, w);
}

@compute @workgroup_size(256)
fn normalize(
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
    let norm = max(sqrt(sums[chunk.t].x), s.eps);
    for (var k = 0u; k < PER_THREAD; k++) {
        let e = chunk.first + k * THREADS + local;
        if (e < tensor.numel) {
            let i = tensor.scratch + e;
            scratch[i] = scratch[i] / norm;
        }
    }
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
    // The iteration's result is in the first copy of X after an even number of iterations,
    // in the second after an odd number.
    let result = tensor.scratch + s.result_copy * tensor.numel;
    let lr = sums[chunk.t].z;
    for (var k = 0u; k < PER_THREAD; k++) {
        let e = chunk.first + k * THREADS + local;
        if (e < tensor.numel) {
            let i = tensor.offset + e;
            params[i] = params[i] * s.decay - lr * scratch[result + x_index(tensor, e)];
        }
    }
}
