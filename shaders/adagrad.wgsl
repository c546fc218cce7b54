// Adagrad (Duchi, Hazan & Singer 2011), as torch.optim.Adagrad:
//   g = g + wd * p;   sum = sum + g * g;   p = p - clr * g / (sqrt(sum) + eps)
// with clr = lr / (1 + (step - 1) * lr_decay), from the device's step count.

struct AdagradScalars {
    lr: f32,
    lr_decay: f32,
    weight_decay: f32,
    eps: f32,
}


// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    var g = load_descent_grad(i);
    let p = load_param(i);
    if (s.weight_decay != 0.0) {
        g = g + s.weight_decay * p;
    }
    let acc = load_sum(i) + g * g;
    store_sum(i, acc);
    let clr = s.lr / (1.0 + f32(control.step - 1u) * s.lr_decay);
    store_param(i, p - clr * g / (sqrt(acc) + s.eps));
}
