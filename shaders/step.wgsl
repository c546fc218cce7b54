// What every optimizer kernel reads besides its tensors: the group's step control
// (`control.wgsl`), which the finalize kernel updated just before, on the device.

@group(0) @binding(6) var<uniform> control: StepControl;

// This step's gradient element: unscaled and clipped.
fn load_grad(i: u32) -> V {
    return grad[i] * control.grad_multiplier;
}
