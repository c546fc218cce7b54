// SGD with momentum, dampening and Nesterov (torch.optim.SGD), and SGDW: the same momentum on
// learning-rate-scaled gradients with decoupled weight decay (Loshchilov & Hutter 2019, Alg. 1).
//
//   SGD:  d = g + wd * p;   buf = first ? d : mu * buf + (1 - dampening) * d
//         d = nesterov ? d + mu * buf : buf;                        p = p - lr * d
//   SGDW: d = lr * g;       (buf, d as above)                        p = p - (lr * wd) * p - d

// Its uniform, `s`, is the `…Scalars` struct the host declares from the Rust mirror.

override MOMENTUM: bool = false;
override NESTEROV: bool = false;
override DECOUPLED: bool = false;

// One element of the step, through the storage accessors (see `Kernel::assemble`).
fn update(i: u32) {
    var d = load_descent_grad(i);
    let p = load_param(i);
    if (DECOUPLED) {
        d = s.lr * d;
    } else {
        d = add_l2(d, p, s.weight_decay);
    }
    if (MOMENTUM) {
        // The buffer starts as the first step's direction itself, as in PyTorch: the old
        // contents are not read then, and may hold anything.
        var buf = d;
        if (control.step != 1u) {
            buf = s.momentum * load_momentum_buffer(i) + s.dampening_keep * d;
        }
        store_momentum_buffer(i, buf);
        if (NESTEROV) {
            d = d + s.momentum * buf;
        } else {
            d = buf;
        }
    }
    if (DECOUPLED) {
        // Not p * (1 - lr * wd): that factor rounds near 1 in float32.
        store_param(i, p - s.decay * p - d);
    } else {
        store_param(i, p - s.lr * d);
    }
}
