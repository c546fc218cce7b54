// Schedule-Free AdamW (Defazio et al. 2024), as schedulefree.AdamWScheduleFree, at step t:
//   v = b2 v + (1 - b2) g^2;   u = g / (sqrt(v / (1 - b2^t)) + eps) + wd y
//   y = lerp(y, z, c);   y = y + lr' (b1 (1 - c) - 1) u;   z = z - lr' u
// with the step factors c (the averaging weight), the warm-up's fraction of lr (lr' = lr times
// it) and 1 / (1 - b2^t). The parameters hold y; with SWAP on, the dispatch instead moves them
// between y and the average x: p = lerp(p, z, w) (to evaluation mode w = 1 - 1/b1, back
// w = 1 - b1), states untouched.

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

override SWAP: bool = false;

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    if (SWAP) {
        // Before the first step there is no z yet, and nothing to swap (as schedulefree).
        if (control.step != 0u) {
            store_param(i, lerp_to(load_param(i), load_z(i), s.swap_weight, s.one_minus_swap_weight));
        }
        return;
    }
    let g = load_grad(i);
    let v = s.beta2 * load_exp_avg_sq(i) + s.one_minus_beta2 * g * g;
    store_exp_avg_sq(i, v);
    let c = control.factors.x;
    let lr = s.lr * control.factors.y;
    let y = load_param(i);
    let u = g / (sqrt(v * control.factors.z) + s.eps) + s.weight_decay * y;
    // z starts as the parameters at the first step (schedulefree creates it then); the
    // buffer's contents are not read before.
    var z = y;
    if (control.step != 1u) {
        z = load_z(i);
    }
    let moved = lerp_to(y, z, c, 1.0 - c);
    store_param(i, moved + lr * (s.beta1 * (1.0 - c) - 1.0) * u);
    store_z(i, z - lr * u);
}
