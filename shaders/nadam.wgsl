// NAdam (Dozat 2016), with the momentum-decay schedule of torch.optim.NAdam:
//   g = g + wd * p  (or, decoupled, p = p - (lr * wd) * p)
//   m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g
//   denom = sqrt(v) / sqrt(1 - b2^t) + eps
//   p = p - lr (1 - mu_t) / (1 - prod mu_1..t) * g / denom
//         - lr mu_{t+1} / (1 - prod mu_1..t+1) * m / denom
// where mu_t = b1 (1 - 0.96^(t psi) / 2), psi the momentum decay; the host computes the products.

// Step factors (host-computed by step): x = 1 / sqrt(1 - beta2^t), y = (1 - mu_t) / (1 - prod
// mu_1..t), z = mu_{t+1} / (1 - prod mu_1..t+1).

// One element of the step, through the storage accessors (see `Kernel::assemble`), after the
// Adam family's shared start (`adam_family.wgsl`: decay and moments).
fn update(i: u32) {
    let a = adam_moments(i);
    var p = a.p;
    let g = a.g;
    let m = a.m;
    let v = a.v;
    let f = control.factors;
    // sqrt(v) / sqrt(1 - beta2^t): v / (1 - beta2^t) would overflow where v itself fits.
    let denom = sqrt(v) * f.x + s.eps;
    p = p - s.lr * f.y * g / denom;
    store_param(i, p - s.lr * f.z * m / denom);
}
