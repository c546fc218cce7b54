// Adam (Kingma & Ba 2015) with L2 weight decay, and AdamW (Loshchilov & Hutter 2019) with
// decoupled weight decay, both with AMSGrad (Reddi et al. 2018), as torch.optim.Adam/AdamW:
//   Adam: g = g + wd * p          AdamW: p = p - (lr * wd) * p
//   m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g;   amsgrad: vmax = max(vmax, v)
//   p = p - lr / (1 - b1^t) * m / (sqrt(v or vmax) / sqrt(1 - b2^t) + eps)

// Step factors (host-computed by step): x = 1 / (1 - beta1^t), y = 1 / sqrt(1 - beta2^t).

override AMSGRAD: bool = false;

// One element of the step, through the storage accessors (see `Kernel::assemble`), after the
// Adam family's shared start (`adam_family.wgsl`: decay and moments).
fn update(i: u32) {
    let a = adam_moments(i);
    let p = a.p;
    let g = a.g;
    let m = a.m;
    let v = a.v;
    var v_used = v;
    if (AMSGRAD) {
        v_used = max(load_max_exp_avg_sq(i), v);
        store_max_exp_avg_sq(i, v_used);
    }
    let f = control.factors;
    let denom = sqrt(v_used) * f.y + s.eps;
    store_param(i, p - s.lr * f.x * m / denom);
}
