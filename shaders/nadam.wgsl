// NAdam (Dozat 2016), with the momentum-decay schedule of torch.optim.NAdam:
//   g = g + wd * p  (or, decoupled, p = p - (lr * wd) * p)
//   m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g
//   denom = sqrt(v) / sqrt(1 - b2^t) + eps
//   p = p - lr (1 - mu_t) / (1 - prod mu_1..t) * g / denom
//         - lr mu_{t+1} / (1 - prod mu_1..t+1) * m / denom
// where mu_t = b1 (1 - 0.96^(t psi) / 2), psi the momentum decay; the host computes the products.

struct NadamScalars {
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

// Step factors (host-computed by step): x = 1 / sqrt(1 - beta2^t), y = (1 - mu_t) / (1 - prod
// mu_1..t), z = mu_{t+1} / (1 - prod mu_1..t+1).

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
    // sqrt(v) / sqrt(1 - beta2^t): v / (1 - beta2^t) would overflow where v itself fits.
    let denom = sqrt(v) * f.x + s.eps;
    p = p - s.lr * f.y * g / denom;
    store_param(i, p - s.lr * f.z * m / denom);
}
