// What every optimizer kernel reads besides its tensors: the group's step control
// (`control.wgsl`), which the finalize kernel updated just before, on the device. The tensors
// themselves are reached through the storage accessors the host generates after this piece
// (`Kernel::assemble` in src/kernels.rs): load_param/store_param, load_grad (unscaled and
// clipped by the control's multiplier), load_<state>/store_<state>.

// `control`, the group's `StepControl` read as a uniform, is declared with the bindings by the
// host (`Kernel::storage`).

// A running average's update, `start + weight * (end - start)`, written as torch's `lerp` does
// it: from the nearer end, so that a weight of 1 (beta1 = 0) gives `end` exactly and a weight
// near 0 keeps `start`'s precision.
fn lerp_to(start: V, end: V, weight: f32, one_minus_weight: f32) -> V {
    if (weight < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * one_minus_weight;
}

// torch's `maximize`: every optimizer ascends instead when it is set.
override MAXIMIZE: bool = false;

// What the group's training options need, fixed when its pipelines are compiled (as PyTorch's
// fused kernels take them as template arguments), so that a group without them pays nothing:
// GRAD_MULTIPLIER, clipping or loss scaling (the gradient is multiplied by the control's
// `grad_multiplier`); SKIPPABLE, a loss scaler or `skip_nonfinite` (a step may be skipped).
override GRAD_MULTIPLIER: bool = true;
override SKIPPABLE: bool = true;

// The gradient the rule descends along: this step's gradient, negated to maximize.
fn load_descent_grad(i: u32) -> V {
    let g = load_grad(i);
    if (MAXIMIZE) {
        return -g;
    }
    return g;
}

// The L2 penalty torch adds to the gradient: g + weight_decay * p, and nothing at all when the
// coefficient is 0 (0 * inf would turn g into NaN). Every rule with L2 decay goes through it.
fn add_l2(g: V, p: V, weight_decay: f32) -> V {
    if (weight_decay != 0.0) {
        return g + weight_decay * p;
    }
    return g;
}
