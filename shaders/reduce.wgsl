// Sums over one workgroup, shared by the norm and finalize kernels.
//
// The gradient norm's sum of squares is kept as a pair (q, e) meaning q * 4^e (so that its
// square root is sqrt(q) * 2^e), with q kept near 1: the squares of gradients near
// 1e20, or near 1e-20, neither overflow nor vanish in float32, as in BLAS `nrm2`. Exponents
// travel as (small, exact) floats in `.y`.

// The pair of an empty sum: its exponent loses every `max`.
const EMPTY_SQUARES: vec2<f32> = vec2<f32>(0.0, -1000.0);

// `q * 4^e` with q moved near 1 (within [1/16, 4)) by a power of 4, exactly.
fn squares_normalized(q: f32, e: f32) -> vec2<f32> {
    if (q == 0.0) {
        return EMPTY_SQUARES;
    }
    let k = (frexp(q).exp + 1) / 2;
    return vec2<f32>(ldexp(q, -2 * k), e + f32(k));
}

// The sum of two pairs, on the larger exponent (the smaller side's bits below float32's
// precision are lost, as they would be in any float32 sum).
fn squares_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let e = max(a.y, b.y);
    let q = ldexp(a.x, 2 * i32(max(a.y - e, -200.0))) + ldexp(b.x, 2 * i32(max(b.y - e, -200.0)));
    return squares_normalized(q, e);
}

var<workgroup> square_sums: array<vec2<f32>, WORKGROUP_SIZE>;

// Every invocation of the workgroup calls this with its pair; all get the total.
fn workgroup_squares(lid: u32, value: vec2<f32>) -> vec2<f32> {
    square_sums[lid] = value;
    workgroupBarrier();
    for (var half = WORKGROUP_SIZE / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            square_sums[lid] = squares_add(square_sums[lid], square_sums[lid + half]);
        }
        workgroupBarrier();
    }
    return square_sums[0];
}
