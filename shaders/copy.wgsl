// The ceiling an elementwise step is measured against: a plain copy with 16-byte loads and
// stores, one vec4 per thread (the optimizer kernels' own shape). Counted as bytes read plus
// bytes written.

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wg, nwg, lid);
    if (i >= arrayLength(&dst)) {
        return;
    }
    dst[i] = src[i];
}
