// Adamax (Kingma & Ba 2015, section 7.1), as torch.optim.Adamax:
//   g = g + wd * p;   m = m + (1 - b1) * (g - m);   u = max(b2 * u, |g| + eps)
//   p = p - lr / (1 - b1^t) * m / u

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    let p = load_param(i);
    let g = add_l2(load_descent_grad(i), p, s.weight_decay);
    let m = lerp_to(load_exp_avg(i), g, s.one_minus_beta1, s.beta1);
    store_exp_avg(i, m);
    let u = max(s.beta2 * load_exp_inf(i), abs(g) + s.eps);
    store_exp_inf(i, u);
    // Step factor x = 1 / (1 - beta1^t).
    store_param(i, p - s.lr * control.factors.x * m / u);
}
