// RAdam (Liu et al. 2020), as torch.optim.RAdam:
//   g = g + wd * p  (or, decoupled, p = p - (lr * wd) * p)
//   m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g
//   rho_t > 5:  p = p - lr r_t sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
//   otherwise:  p = p - lr / (1 - b1^t) * m
// The host computes rho_t and the rectification r_t, the same for every element of a step.

// Step factors (host-computed by step): x = r_t sqrt(1 - b2^t) / (1 - b1^t) when rectified,
// else 1 / (1 - b1^t); y = 1 when rho_t > 5 (the variance is tractable: adaptive step).

// One element of the step, through the storage accessors (see `Kernel::assemble`), after the
// Adam family's shared start (`adam_family.wgsl`: decay and moments).
fn update(i: u32) {
    let a = adam_moments(i);
    let p = a.p;
    let g = a.g;
    let m = a.m;
    let v = a.v;
    let f = control.factors;
    if (f.y != 0.0) {
        store_param(i, p - s.lr * f.x * m / (sqrt(v) + s.eps));
    } else {
        store_param(i, p - s.lr * f.x * m);
    }
}
