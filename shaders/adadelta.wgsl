// Adadelta (Zeiler 2012), as torch.optim.Adadelta:
//   g = g + wd * p;   sq = rho * sq + (1 - rho) * g * g
//   delta = sqrt(acc + eps) / sqrt(sq + eps) * g;   acc = rho * acc + (1 - rho) * delta * delta
//   p = p - lr * delta

struct AdadeltaScalars {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
    _pad0: u32,
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
    let sq = s.rho * load_square_avg(i) + s.one_minus_rho * g * g;
    store_square_avg(i, sq);
    let acc = load_acc_delta(i);
    let delta = sqrt(acc + s.eps) / sqrt(sq + s.eps) * g;
    store_acc_delta(i, s.rho * acc + s.one_minus_rho * delta * delta);
    store_param(i, p - s.lr * delta);
}
