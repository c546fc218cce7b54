// The first half of the global gradient norm and of the non-finite check, over one segment:
// each workgroup writes the sum of squares of its gradients to `partials`, as a pair (q, e)
// meaning q * 4^e (see reduce.wgsl), and any thread that meets an inf or a NaN raises
// `flags[0]`. `finalize.wgsl` adds the partials up and divides by the loss scale, by exponent
// arithmetic: squares of gradients as large as 1e20 (or loss-scaled ones) do not overflow, and
// squares of gradients as small as 1e-20 do not vanish.
// Each thread first adds up NORM_ELEMENTS_PER_THREAD elements (strided by the workgroup size,
// so that neighbouring threads read neighbouring elements): the workgroup-wide reduction, with
// its barriers, then runs once per 16 x 256 elements instead of once per 256.

const NORM_ELEMENTS_PER_THREAD: u32 = 16u;

// The gradients, `@binding(0)`, are read through `grad_count()` and `load_raw_grad(i)`, which
// the host writes for their storage format.
// This segment's slice of the group's partial sums: one (q, e) pair per workgroup.
@group(0) @binding(1) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> flags: array<atomic<u32>>;

// By the bits: WGSL lets compilers assume arithmetic never meets inf or NaN, so a
// floating-point test could be folded away. All-ones exponent: inf or NaN.
fn finite_v(g: V) -> VB {
    return (bitcast<VU>(g) & VU(0x7f800000u)) != VU(0x7f800000u);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let first = (wg.y * nwg.x + wg.x) * WORKGROUP_SIZE * NORM_ELEMENTS_PER_THREAD + lid;
    let len = grad_count();
    // The plain float32 sum, and the largest magnitude by its bits (for non-negative floats
    // the integer order is the numeric one, inf and NaN above all; integer tests of loaded
    // bits cannot be folded away the way floating-point tests of inf or NaN can).
    var square_sum = 0.0;
    var top = VU(0u);
    for (var k = 0u; k < NORM_ELEMENTS_PER_THREAD; k = k + 1u) {
        let i = first + k * WORKGROUP_SIZE;
        if (i < len) {
            let g = load_raw_grad(i);
            square_sum = square_sum + hsum(g * g);
            top = max(top, bitcast<VU>(g) & VU(0x7fffffffu));
        }
    }
    let largest_bits = hmax_u(top);
    let non_finite = largest_bits >= 0x7f800000u;
    if (non_finite) {
        atomicOr(&flags[0], 1u);
    }
    var squares = squares_normalized(square_sum, 0.0);
    // Above 2^60 a sum of 64 squares may overflow; below 2^-40 squares of the smaller
    // elements may vanish. Then again, scaled by a power of two from the largest finite
    // magnitude (non-finite values count 0: the flag reports them). Rare: the plain sum
    // serves every gradient in between.
    if (largest_bits > 0x5d800000u || (largest_bits < 0x2b800000u && largest_bits != 0u)) {
        var largest = 0.0;
        for (var k = 0u; k < NORM_ELEMENTS_PER_THREAD; k = k + 1u) {
            let i = first + k * WORKGROUP_SIZE;
            if (i < len) {
                let g = load_raw_grad(i);
                largest = max(largest, hmax(select(V(0.0), abs(g), finite_v(g))));
            }
        }
        squares = EMPTY_SQUARES;
        if (largest > 0.0) {
            let e = frexp(largest).exp;
            var scaled_sum = 0.0;
            for (var k = 0u; k < NORM_ELEMENTS_PER_THREAD; k = k + 1u) {
                let i = first + k * WORKGROUP_SIZE;
                if (i < len) {
                    let g = load_raw_grad(i);
                    let x = ldexp(select(V(0.0), g, finite_v(g)), VI(-e));
                    scaled_sum = scaled_sum + hsum(x * x);
                }
            }
            squares = squares_normalized(scaled_sum, f32(e));
        }
    }
    let total = workgroup_squares(lid, squares);
    if (lid == 0u) {
        partials[wg.y * nwg.x + wg.x] = total;
    }
}
