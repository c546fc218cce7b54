// LAMB (You et al. 2020), as torch_optimizer.Lamb, in three passes and a reduction:
//   MOMENTS:  m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//   NORMS:    r = m / (sqrt(v) + eps) + wd p  (from the moments as stored);  per tensor the sums
//             of p^2 and r^2, one per workgroup
//   finalize_tensors: trust = min(|p|, clamp_value) / |r| (1 if either is 0, or with `adam`)
//   update:   p = p - lr * bc * trust * r,  bc (step factor x) = sqrt(1 - b2^t) / (1 - b1^t)
//             with `debias`, else 1

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

override MOMENTS: bool = false;
override NORMS: bool = false;

// The pass whose workgroups write their sums.
fn takes_tensor_sums() -> bool {
    return NORMS;
}

// Adam's step direction with the decay, from the stored moments.
fn lamb_direction(i: u32, p: V) -> V {
    return load_exp_avg(i) / (sqrt(load_exp_avg_sq(i)) + s.eps) + s.weight_decay * p;
}

// One element of the pass, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    if (MOMENTS) {
        let g = load_grad(i);
        store_exp_avg(i, s.beta1 * load_exp_avg(i) + s.one_minus_beta1 * g);
        store_exp_avg_sq(i, s.beta2 * load_exp_avg_sq(i) + s.one_minus_beta2 * g * g);
        return;
    }
    let p = load_param(i);
    let r = lamb_direction(i, p);
    if (NORMS) {
        add_tensor_sum(vec2<f32>(hsum(p * p), hsum(r * r)));
        return;
    }
    store_param(i, p - (s.lr * control.factors.x * tensor_ratio(i)) * r);
}

// Each tensor's trust ratio from its workgroups' sums (one invocation per tensor).
@compute @workgroup_size(64)
fn finalize_tensors(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.x;
    if (t >= arrayLength(&tensor_table) || (SKIPPABLE && control.skip != 0u)) {
        return;
    }
    let entry = tensor_table[t];
    var sums = vec2<f32>(0.0);
    for (var k = entry.first; k < entry.end; k++) {
        sums += tensor_partials[k];
    }
    let weight_norm = min(sqrt(sums.x), s.clamp_value);
    let direction_norm = sqrt(sums.y);
    var ratio = 1.0;
    if (s.adam == 0u && weight_norm != 0.0 && direction_norm != 0.0) {
        ratio = weight_norm / direction_norm;
    }
    tensor_table[t].value = ratio;
}
