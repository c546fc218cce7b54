// Adam (Kingma & Ba 2015) with L2 weight decay, and AdamW (Loshchilov & Hutter 2019) with
// decoupled weight decay, both with AMSGrad (Reddi et al. 2018), as torch.optim.Adam/AdamW:
//   Adam: g = g + wd * p          AdamW: p = p - (lr * wd) * p
//   m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g;   amsgrad: vmax = max(vmax, v)
//   p = p - lr / (1 - b1^t) * m / (sqrt(v or vmax) / sqrt(1 - b2^t) + eps)

struct AdamScalars {
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    // Adam: the L2 coefficient added to the gradient (0 for AdamW).
    weight_decay: f32,
    // Decoupled decay (AdamW-style): lr * weight_decay (0 otherwise).
    decay: f32,
    lr: f32,
    beta1: f32,
}

// Step factors (host-computed by step): x = 1 / (1 - beta1^t), y = 1 / sqrt(1 - beta2^t).

override AMSGRAD: bool = false;
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
    var v_used = v;
    if (AMSGRAD) {
        v_used = max(load_max_exp_avg_sq(i), v);
        store_max_exp_avg_sq(i, v_used);
    }
    let f = control.factors;
    let denom = sqrt(v_used) * f.y + s.eps;
    store_param(i, p - s.lr * f.x * m / denom);
}
