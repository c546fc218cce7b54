// RMSprop (Hinton, Lecture 6e; centered variant: Graves 2013), as torch.optim.RMSprop:
//   g = g + wd * p;   sq = alpha * sq + (1 - alpha) * g * g
//   centered: ga = ga + (1 - alpha) * (g - ga);   avg = sqrt(sq - ga * ga) + eps
//   else:     avg = sqrt(sq) + eps
//   momentum: buf = mu * buf + g / avg;   p = p - lr * buf
//   else:     p = p - lr * g / avg

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

override CENTERED: bool = false;
override MOMENTUM: bool = false;

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    let p = load_param(i);
    let g = add_l2(load_descent_grad(i), p, s.weight_decay);
    let sq_old = load_square_avg(i);
    let sq = s.alpha * sq_old + s.one_minus_alpha * g * g;
    store_square_avg(i, sq);
    var avg: V;
    if (CENTERED) {
        let ga_old = load_grad_avg(i);
        let ga = lerp_to(ga_old, g, s.one_minus_alpha, s.alpha);
        store_grad_avg(i, ga);
        // The variance sq - ga^2, updated as a variance (Welford):
        //   alpha (sq_old - ga_old^2) + alpha (1 - alpha) (g - ga_old)^2,
        // equal in exact arithmetic, without subtracting two rounded squares of the same size
        // (with alpha = 0 that difference is 0 exactly, not a rounding error whose square root
        // outweighs eps). Never below 0 in exact arithmetic: clamped against rounding.
        let d = g - ga_old;
        let variance = s.alpha * (sq_old - ga_old * ga_old) + s.alpha * s.one_minus_alpha * d * d;
        avg = sqrt(max(variance, V(0.0))) + s.eps;
    } else {
        avg = sqrt(sq) + s.eps;
    }
    if (MOMENTUM) {
        let buf = s.momentum * load_momentum_buffer(i) + g / avg;
        store_momentum_buffer(i, buf);
        store_param(i, p - s.lr * buf);
    } else {
        store_param(i, p - s.lr * g / avg);
    }
}
