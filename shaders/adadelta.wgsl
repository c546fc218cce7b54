// Adadelta (Zeiler 2012), as torch.optim.Adadelta:
//   g = g + wd * p;   sq = rho * sq + (1 - rho) * g * g
//   delta = sqrt(acc + eps) / sqrt(sq + eps) * g;   acc = rho * acc + (1 - rho) * delta * delta
//   p = p - lr * delta

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    let p = load_param(i);
    let g = add_l2(load_descent_grad(i), p, s.weight_decay);
    let sq = s.rho * load_square_avg(i) + s.one_minus_rho * g * g;
    store_square_avg(i, sq);
    let acc = load_acc_delta(i);
    let delta = sqrt(acc + s.eps) / sqrt(sq + s.eps) * g;
    store_acc_delta(i, s.rho * acc + s.one_minus_rho * delta * delta);
    store_param(i, p - s.lr * delta);
}
