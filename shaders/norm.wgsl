// The first half of the global gradient norm and of the non-finite check, over one segment:
// each workgroup writes the sum of squares of its gradients to `partials`, and any thread that
// meets an inf or a NaN raises `flags[0]`. `finalize.wgsl` adds the partials up.
// (The sums are of the gradients as they arrive, loss scale included; finalize divides.)
// Each thread first adds up NORM_ELEMENTS_PER_THREAD elements (strided by the workgroup size,
// so that neighbouring threads read neighbouring elements): the workgroup-wide reduction, with
// its barriers, then runs once per 16 x 256 elements instead of once per 256.

const NORM_ELEMENTS_PER_THREAD: u32 = 16u;

@group(0) @binding(0) var<storage, read> grad: array<V>;
// This segment's slice of the group's partial sums: one per workgroup.
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let first = (wg.y * nwg.x + wg.x) * WORKGROUP_SIZE * NORM_ELEMENTS_PER_THREAD + lid;
    let len = arrayLength(&grad);
    var square_sum = 0.0;
    var non_finite = false;
    for (var k = 0u; k < NORM_ELEMENTS_PER_THREAD; k = k + 1u) {
        let i = first + k * WORKGROUP_SIZE;
        if (i < len) {
            let g = grad[i];
            square_sum = square_sum + hsum(g * g);
            // By the bits: WGSL lets compilers assume arithmetic never meets inf or NaN, so a
            // floating-point test could be folded away. All-ones exponent: inf or NaN.
            non_finite = non_finite
                || any((bitcast<VU>(g) & VU(0x7f800000u)) == VU(0x7f800000u));
        }
    }
    if (non_finite) {
        atomicOr(&flags[0], 1u);
    }
    let total = workgroup_sum(lid, square_sum);
    if (lid == 0u) {
        partials[wg.y * nwg.x + wg.x] = total;
    }
}
