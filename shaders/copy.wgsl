// The ceiling an elementwise step is measured against: a plain copy with 16-byte loads and
// stores, one vec4 per thread (the optimizer kernels' own shape), in the words the optimizer
// kernels read (`CopyWord`: vec4<f32>, or vec2<u64> where they read 64-bit words). Counted as
// bytes read plus bytes written.

@group(0) @binding(0) var<storage, read> src: array<CopyWord>;
@group(0) @binding(1) var<storage, read_write> dst: array<CopyWord>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wg, nwg, lid);
    if (i >= arrayLength(&dst)) {
        return;
    }
    dst[i] = src[i];
}
