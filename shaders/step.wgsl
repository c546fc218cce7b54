// What every optimizer kernel reads besides its tensors: the group's step control
// (`control.wgsl`), which the finalize kernel updated just before, on the device.

@group(0) @binding(6) var<uniform> control: StepControl;

// This step's gradient element: unscaled and clipped.
fn load_grad(i: u32) -> V {
    return grad[i] * control.grad_multiplier;
}

// A running average's update, `start + weight * (end - start)`, written as torch's `lerp` does
// it: from the nearer end, so that a weight of 1 (beta1 = 0) gives `end` exactly and a weight
// near 0 keeps `start`'s precision.
fn lerp_to(start: V, end: V, weight: f32, one_minus_weight: f32) -> V {
    if (weight < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * one_minus_weight;
}
