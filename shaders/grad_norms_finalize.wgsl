// Each tensor's sum of its chunks' squares (`grad_norms.wgsl`): one invocation per tensor,
// its slots [first, end) of the partials, in order.
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read> slots: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> sums: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= arrayLength(&slots)) {
        return;
    }
    let range = slots[id.x];
    var total = 0.0;
    for (var s = range.x; s < range.y; s++) {
        total += partials[s];
    }
    sums[id.x] = total;
}
