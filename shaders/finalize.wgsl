// Once per step and group, one workgroup, between the reduction and the update: turns the
// partial sums into the global gradient norm, decides whether the step is skipped, advances the
// step count and the loss scale, all on the device (no host round trip inside a step).
//   norm = sqrt(sum of g^2) / loss_scale                       (torch.nn.utils.clip_grad_norm_)
//   multiplier = 1 / loss_scale * min(1, max_norm / (norm + 1e-6))
//   non-finite gradients under loss scaling (or skip_nonfinite): skip; with a scaler,
//   scale *= backoff and tracker = 0
//   otherwise: step += 1, that step's factors; after growth_interval good steps, scale *= growth
//   (GradScaler)
// The sum of squares arrives as (q, e) pairs (q * 4^e, see reduce.wgsl); the division by the
// loss scale is done on the exponent, so a norm that is finite unscaled comes out finite and
// accurate, whatever the scaled squares would have been in float32.

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
    // 1 to skip non-finite steps without a scaler.
    skip_nonfinite: u32,
}

@group(0) @binding(0) var<uniform> settings: ControlSettings;
@group(0) @binding(1) var<storage, read> partials: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> control: StepControl;
// The host's window of step-dependent factors. Row 0 is its header (as u32 bits): x = the step
// before its first row, y = its rows, z = 1 when the last row holds for every later step.
// Row r (1 <= r <= rows) holds the factors of step x + r.
@group(0) @binding(4) var<storage, read> step_factors: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(local_invocation_index) lid: u32) {
    var squares = EMPTY_SQUARES;
    for (var k = lid; k < settings.partial_count; k = k + WORKGROUP_SIZE) {
        squares = squares_add(squares, partials[k]);
    }
    let total = workgroup_squares(lid, squares);
    if (lid != 0u) {
        return;
    }
    let found_inf = atomicExchange(&flags[0], 0u) != 0u;
    let scaling = settings.scaler != 0u;
    let scale = select(1.0, control.loss_scale, scaling);
    let inv_scale = 1.0 / scale;
    // sqrt(q * 4^e) / scale = (sqrt(q) * fract(1 / scale)) * 2^(e + exp(1 / scale)).
    let unscale = frexp(inv_scale);
    var norm = ldexp(sqrt(total.x) * unscale.fract, i32(total.y) + unscale.exp);
    if (total.x == 0.0) {
        norm = 0.0;
    }
    if (found_inf) {
        // As torch: the norm of gradients holding an inf or a NaN is not finite.
        norm = bitcast<f32>(0x7f800000u);
    }
    var clip = 1.0;
    if (settings.clip != 0u) {
        clip = min(1.0, settings.max_norm / (norm + 1e-6));
    }
    control.grad_norm = norm;
    control.found_inf = u32(found_inf);
    control.grad_multiplier = inv_scale * clip;
    if (found_inf && (scaling || settings.skip_nonfinite != 0u)) {
        control.skip = 1u;
        control.skipped_steps = control.skipped_steps + 1u;
        if (scaling) {
            control.loss_scale = scale * settings.backoff_factor;
            control.growth_tracker = 0u;
        }
        return;
    }
    control.skip = 0u;
    let step = control.step + 1u;
    control.step = step;
    let window = bitcast<vec4<u32>>(step_factors[0]);
    // The host keeps the window ahead of the device's step; clamped all the same.
    let row = clamp(select(1u, step - window.x, step > window.x), 1u, window.y);
    control.factors = step_factors[row];
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
