// Lion (Chen et al. 2023, Algorithm 2), as lion_pytorch.Lion:
//   c = b1 * m + (1 - b1) * g;   p = p * (1 - lr * wd) - lr * sign(c)
//   m = b2 * m + (1 - b2) * g

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    let g = load_grad(i);
    let m = load_exp_avg(i);
    let c = s.beta1 * m + s.one_minus_beta1 * g;
    store_param(i, load_param(i) * s.decay - s.lr * sign(c));
    store_exp_avg(i, s.beta2 * m + s.one_minus_beta2 * g);
}
