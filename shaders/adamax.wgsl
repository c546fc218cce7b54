// Adamax (Kingma & Ba 2015, section 7.1), as torch.optim.Adamax:
//   g = g + wd * p;   m = m + (1 - b1) * (g - m);   u = max(b2 * u, |g| + eps)
//   p = p - lr / (1 - b1^t) * m / u

struct AdamaxScalars {
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    lr: f32,
    beta1: f32,
    _pad1: u32,
    _pad2: u32,
}


// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    var g = load_descent_grad(i);
    let p = load_param(i);
    if (s.weight_decay != 0.0) {
        g = g + s.weight_decay * p;
    }
    let m = lerp_to(load_exp_avg(i), g, s.one_minus_beta1, s.beta1);
    store_exp_avg(i, m);
    let u = max(s.beta2 * load_exp_inf(i), abs(g) + s.eps);
    store_exp_inf(i, u);
    // Step factor x = 1 / (1 - beta1^t).
    store_param(i, p - s.lr * control.factors.x * m / u);
}
