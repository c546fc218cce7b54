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

override DECOUPLED: bool = false;

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    var g = load_descent_grad(i);
    var p = load_param(i);
    if (DECOUPLED) {
        // p - (lr * wd) * p, not p * (1 - lr * wd): that factor rounds near 1 in float32 and
        // the rounding compounds over thousands of steps.
        p = p - s.decay * p;
    } else if (s.weight_decay != 0.0) {
        g = g + s.weight_decay * p;
    }
    let m = lerp_to(load_exp_avg(i), g, s.one_minus_beta1, s.beta1);
    store_exp_avg(i, m);
    let v = s.beta2 * load_exp_avg_sq(i) + s.one_minus_beta2 * g * g;
    store_exp_avg_sq(i, v);
    let f = control.factors;
    if (f.y != 0.0) {
        store_param(i, p - s.lr * f.x * m / (sqrt(v) + s.eps));
    } else {
        store_param(i, p - s.lr * f.x * m);
    }
}
