// The first half of the global gradient norm and of the non-finite check, over one segment:
// each workgroup writes the sum of squares of its gradients to `partials`, and any thread that
// meets an inf or a NaN raises `flags[0]`. `finalize.wgsl` adds the partials up.
// (The sums are of the gradients as they arrive, loss scale included; finalize divides.)

@group(0) @binding(0) var<storage, read> grad: array<V>;
// This segment's slice of the group's partial sums: one per workgroup.
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wg, nwg, lid);
    var square_sum = 0.0;
    if (i < arrayLength(&grad)) {
        let g = grad[i];
        square_sum = hsum(g * g);
        // By the bits: WGSL lets compilers assume arithmetic never meets inf or NaN, so a
        // floating-point test could be folded away. All-ones exponent: inf or NaN.
        if (any((bitcast<VU>(g) & VU(0x7f800000u)) == VU(0x7f800000u))) {
            atomicOr(&flags[0], 1u);
        }
    }
    let total = workgroup_sum(lid, square_sum);
    if (lid == 0u) {
        partials[wg.y * nwg.x + wg.x] = total;
    }
}
