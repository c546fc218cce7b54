// A parameter group's step control: one small buffer per group, written only by the finalize
// kernel (as storage), read by the optimizer kernels (as a uniform: every invocation reads the
// same values, which the uniform path serves from the constant cache) and by the host when
// asked.

// Mirrors `StepControl` in src/engine/control.rs.
struct StepControl {
    // This step's row of the step-factor table (bias corrections and the like), which the
    // host computed in float64 for every step number.
    factors: vec4<f32>,
    // Optimizer steps applied so far, this one included; a skipped step does not count.
    step: u32,
    // 1 when this step is skipped whole (non-finite gradients under loss scaling).
    skip: u32,
    // Every gradient is multiplied by this: 1 / loss scale, times the clipping coefficient.
    grad_multiplier: f32,
    // The global L2 norm of the unscaled gradients, when the group computes it.
    grad_norm: f32,
    // The loss scale the next step's gradients are expected to carry.
    loss_scale: f32,
    // Successful steps since the loss scale last changed.
    growth_tracker: u32,
    // 1 when this step's gradients held an inf or a NaN.
    found_inf: u32,
    // Steps skipped so far.
    skipped_steps: u32,
}
