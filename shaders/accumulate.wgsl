// Gradient accumulation on the device: one segment's gradients plus a micro-batch's, stored
// in the gradients' format (rounded to nearest even when 16-bit). The micro-batch arrives as
// float32 at `@binding(0)`; the gradients, `@binding(1)`, are reached through
// `grad_count()`, `load_raw_grad(i)` and `store_raw_grad(i, value)`, which the host writes for
// their format.

@group(0) @binding(0) var<storage, read> incoming: array<V>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wg, nwg, lid);
    if (i < grad_count()) {
        store_raw_grad(i, load_raw_grad(i) + incoming[i]);
    }
}
