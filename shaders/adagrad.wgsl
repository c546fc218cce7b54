// Adagrad (Duchi, Hazan & Singer 2011), as torch.optim.Adagrad:
//   g = g + wd * p;   sum = sum + g * g;   p = p - clr * g / (sqrt(sum) + eps)
// with clr = lr / (1 + (step - 1) * lr_decay), from the device's step count.

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    let p = load_param(i);
    let g = add_l2(load_descent_grad(i), p, s.weight_decay);
    let acc = load_sum(i) + g * g;
    store_sum(i, acc);
    let clr = s.lr / (1.0 + f32(control.step - 1u) * s.lr_decay);
    store_param(i, p - clr * g / (sqrt(acc) + s.eps));
}
