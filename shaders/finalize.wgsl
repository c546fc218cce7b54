// Once per step and group, one workgroup, between the reduction and the update: turns the
// partial sums into the global gradient norm, decides whether the step is skipped, advances the
// step count and the loss scale, all on the device (no host round trip inside a step).
//   norm = sqrt(sum of g^2) / loss_scale                       (torch.nn.utils.clip_grad_norm_)
//   multiplier = 1 / loss_scale * min(1, max_norm / (norm + 1e-6))
//   non-finite gradients under loss scaling: skip; scale *= backoff; tracker = 0
//   otherwise: step += 1, that step's factors; after growth_interval good steps, scale *= growth
//   (GradScaler)

// Mirrors `ControlSettings` in src/engine/control.rs; written when the options change.
struct ControlSettings {
    // Partial sums to add up (0 when the group computes no norm).
    partial_count: u32,
    // 1 to clip by the global norm.
    clip: u32,
    // 1 to unscale and skip non-finite steps (a GradScaler).
    scaler: u32,
    growth_interval: u32,
    max_norm: f32,
    growth_factor: f32,
    backoff_factor: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> settings: ControlSettings;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> control: StepControl;
// The host's table of step-dependent factors, one row per step number.
@group(0) @binding(4) var<storage, read> step_factors: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(local_invocation_index) lid: u32) {
    var square_sum = 0.0;
    for (var k = lid; k < settings.partial_count; k = k + WORKGROUP_SIZE) {
        square_sum = square_sum + partials[k];
    }
    let total = workgroup_sum(lid, square_sum);
    if (lid != 0u) {
        return;
    }
    let found_inf = atomicExchange(&flags[0], 0u) != 0u;
    let scaling = settings.scaler != 0u;
    let scale = select(1.0, control.loss_scale, scaling);
    let inv_scale = 1.0 / scale;
    let norm = sqrt(total) * inv_scale;
    var clip = 1.0;
    if (settings.clip != 0u) {
        clip = min(1.0, settings.max_norm / (norm + 1e-6));
    }
    control.grad_norm = norm;
    control.found_inf = u32(found_inf);
    control.grad_multiplier = inv_scale * clip;
    if (scaling && found_inf) {
        control.skip = 1u;
        control.skipped_steps = control.skipped_steps + 1u;
        control.loss_scale = scale * settings.backoff_factor;
        control.growth_tracker = 0u;
        return;
    }
    control.skip = 0u;
    let step = control.step + 1u;
    control.step = step;
    // Past the table's end the factors have converged to its last row.
    control.factors = step_factors[min(step, arrayLength(&step_factors)) - 1u];
    if (scaling) {
        let good_steps = control.growth_tracker + 1u;
        if (good_steps == settings.growth_interval) {
            // As GradScaler: the scale only grows while it stays finite.
            let grown = scale * settings.growth_factor;
            if ((bitcast<u32>(grown) & 0x7f800000u) != 0x7f800000u) {
                control.loss_scale = grown;
            }
            control.growth_tracker = 0u;
        } else {
            control.growth_tracker = good_steps;
        }
    }
}
