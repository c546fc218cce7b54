// What every optimizer kernel reads besides its tensors: the group's step control
// (`control.wgsl`), which the finalize kernel updated just before, on the device, and the table
// of step-dependent factors the host computed in float64 (bias corrections and the like).

@group(0) @binding(6) var<storage, read> control: StepControl;
@group(0) @binding(7) var<storage, read> step_factors: array<vec4<f32>>;

// The factors of the current step; past the table's end they have converged to its last row.
fn current_step_factors() -> vec4<f32> {
    return step_factors[min(control.step, arrayLength(&step_factors)) - 1u];
}

// This step's gradient element: unscaled and clipped.
fn load_grad(i: u32) -> V {
    return grad[i] * control.grad_multiplier;
}
