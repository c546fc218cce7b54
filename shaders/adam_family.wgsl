// What every Adam-family rule (Adam, AdamW, NAdam, RAdam) does first: its per-step values, the
// weight decay, and the two moments, written once.
//   L2 (Adam, NAdam, RAdam):   g = g + wd * p
//   decoupled (AdamW, ...):    p = p - (lr * wd) * p, not p * (1 - lr * wd): that factor rounds
//                              near 1 in float32 and the rounding compounds over many steps
//   m = lerp(m, g, 1 - b1)  (torch's lerp: b1 = 0 keeps g exactly);   v = b2 * v + (1 - b2) * g * g

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

override DECOUPLED: bool = false;

// One element after the shared start: the decayed parameter, the gradient the rule uses, and
// the new moments (already stored).
struct AdamMoments {
    p: V,
    g: V,
    m: V,
    v: V,
}

fn adam_moments(i: u32) -> AdamMoments {
    var g = load_descent_grad(i);
    var p = load_param(i);
    if (DECOUPLED) {
        p = p - s.decay * p;
    } else {
        g = add_l2(g, p, s.weight_decay);
    }
    let m = lerp_to(load_exp_avg(i), g, s.one_minus_beta1, s.beta1);
    store_exp_avg(i, m);
    let v = s.beta2 * load_exp_avg_sq(i) + s.one_minus_beta2 * g * g;
    store_exp_avg_sq(i, v);
    return AdamMoments(p, g, m, v);
}
