// Averaged SGD (Polyak & Juditsky 1992), as torch.optim.ASGD, at step t:
//   eta = lr / (1 + lambd * lr * (t - 1))^alpha;   mu = 1 / max(1, t - 1 - t0)
//   g = g + wd * p;   p = p * (1 - lambd * eta) - eta * g
//   ax = p if mu == 1, else ax + mu * (p - ax)

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    // From the device's step count (a skipped step does not advance it).
    let before = f32(control.step - 1u);
    let eta = s.lr / pow(1.0 + s.lambd * s.lr * before, s.alpha);
    let mu = 1.0 / max(1.0, before - s.t0);
    let p = load_param(i);
    let g = add_l2(load_descent_grad(i), p, s.weight_decay);
    let updated = p * (1.0 - s.lambd * eta) - eta * g;
    store_param(i, updated);
    if (mu == 1.0) {
        store_ax(i, updated);
    } else {
        let ax = load_ax(i);
        store_ax(i, ax + mu * (updated - ax));
    }
}
