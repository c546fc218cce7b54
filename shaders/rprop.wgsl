// Rprop (Riedmiller & Braun 1993), as torch.optim.Rprop, per element:
//   f = etaplus if g * prev > 0, etaminus if < 0, else 1
//   step = clamp(step * f, step_size_min, step_size_max)
//   g = 0 where the sign flipped;   p = p - sign(g) * step;   prev = g

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    let g = load_descent_grad(i);
    let product = g * load_prev(i);
    let one = V(1.0);
    let factor = select(select(one, V(s.etaminus), product < V(0.0)), V(s.etaplus), product > V(0.0));
    let step = clamp(load_step_size(i) * factor, V(s.step_size_min), V(s.step_size_max));
    store_step_size(i, step);
    let kept = select(g, V(0.0), product < V(0.0));
    store_param(i, load_param(i) - sign(kept) * step);
    store_prev(i, kept);
}
