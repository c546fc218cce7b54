// RAdam (Liu et al. 2020), as torch.optim.RAdam:
//   g = g + wd * p  (or, decoupled, p = p - (lr * wd) * p)
//   m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g
//   rho_t > 5:  p = p - lr r_t sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
//   otherwise:  p = p - lr / (1 - b1^t) * m
// The host computes rho_t and the rectification r_t, the same for every element of a step.

struct RadamScalars {
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    // Decoupled decay (AdamW-style): lr * weight_decay (0 otherwise).
    decay: f32,
    lr: f32,
    beta1: f32,
}

// Step factors (host-computed by step): x = r_t sqrt(1 - b2^t) / (1 - b1^t) when rectified,
// else 1 / (1 - b1^t); y = 1 when rho_t > 5 (the variance is tractable: adaptive step).

override MAXIMIZE: bool = false;
override DECOUPLED: bool = false;

@group(0) @binding(1) var<storage, read_write> param: array<V>;
@group(0) @binding(2) var<storage, read> grad: array<V>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<V>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<V>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wg, nwg, lid);
    if (i >= arrayLength(&param) || control.skip != 0u) {
        return;
    }
    var g = load_grad(i);
    if (MAXIMIZE) {
        g = -g;
    }
    var p = param[i];
    if (DECOUPLED) {
        // p - (lr * wd) * p, not p * (1 - lr * wd): that factor rounds near 1 in float32 and
        // the rounding compounds over thousands of steps.
        p = p - s.decay * p;
    } else if (s.weight_decay != 0.0) {
        g = g + s.weight_decay * p;
    }
    let m = lerp_to(exp_avg[i], g, s.one_minus_beta1, s.beta1);
    exp_avg[i] = m;
    let v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * g * g;
    exp_avg_sq[i] = v;
    let f = control.factors;
    if (f.y != 0.0) {
        param[i] = p - s.lr * f.x * m / (sqrt(v) + s.eps);
    } else {
        param[i] = p - s.lr * f.x * m;
    }
}
