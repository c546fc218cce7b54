// Fills a run of a buffer with pseudo-random values that depend only on (seed, element index):
//   dst[start + i] = offset + scale * x(seed, first + i)
// with x uniform in [-1, 1) (`distribution` 0) or standard normal (`distribution` 1), so that
// the CPU (`FillSpec::value` in src/fill.rs) computes the same value for any element without
// holding the data: how the large tests and the benchmarks get real, non-zero inputs quickly,
// and how `torch.nn.init`'s initialisers fill parameters on the device (src/init.rs).
//
// How the values are stored is put before this source by the host (src/fill.rs): `dst` at
// `@binding(1)`, `unit_count()` and `store_unit(i)`, which writes unit `i` (a float32 word, or a
// word of two 16-bit values rounded to nearest even) with `fill_value(k)` for its elements `k`.
// `pcg_hash` comes with them.

struct FillParams {
    seed: u32,
    // The first element's index (u64, as two words): values do not depend on the layout.
    first_lo: u32,
    first_hi: u32,
    // Elements to write, from `start` in `dst` (in values of its format).
    count: u32,
    start: u32,
    offset: f32,
    scale: f32,
    // 0: uniform in [-1, 1); 1: standard normal.
    distribution: u32,
}

@group(0) @binding(0) var<uniform> f: FillParams;

// The hash of element `first + k` under `key`: PCG's output permutation (O'Neill 2014, "PCG: A
// Family of Simple Fast Space-Efficient Statistically Good Algorithms for Random Number
// Generation"), chained over the index's two words.
fn element_hash(k: u32, key: u32) -> u32 {
    let lo = f.first_lo + k;
    let hi = f.first_hi + select(0u, 1u, lo < f.first_lo);
    return pcg_hash(lo ^ pcg_hash(hi ^ key));
}

// The key of the normal distribution's second hash: another stream of the same seed.
const SECOND_STREAM: u32 = 0x9e3779b9u;

// ln((k + 1) / 2^24) for k < 2^24, with only additions, multiplications and one division (the
// CPU mirror does the same operations: WGSL's own `log` may be off by 3 ulp, or by 2^-21
// absolutely near 1, differently on each device). x = m 2^e with m in [sqrt(1/2), sqrt(2)],
// ln m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1), |s| <= 0.1716: the
// terms past s^11 are below float32's rounding.
fn ln_of_unit(k: u32) -> f32 {
    let x = f32(k + 1u);
    let bits = bitcast<u32>(x);
    var e = i32(bits >> 23u) - 127;
    var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);
    // float32's sqrt(2) and ln 2 below: the CPU mirror's `SQRT_2` and `LN_2`.
    if (m > 1.4142135) {
        m = m * 0.5;
        e = e + 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0 + s2 * (0.33333334 + s2 * (0.2 + s2 * (0.14285715 + s2 * (0.11111111 + s2 * 0.09090909))));
    return f32(e - 24) * 0.6931472 + 2.0 * s * series;
}

// cos(2 pi k / 2^24) for k < 2^24 by polynomials: the quadrant from k's top bits (exact), the
// rest an angle a in [-pi/4, pi/4) where Taylor's series to a^10 is exact to float32 (WGSL's own
// `cos` may be off by 2^-11 absolutely).
fn cos_of_turn(k: u32) -> f32 {
    var quadrant = k >> 22u;
    var rest = i32(k & 0x3fffffu);
    if (rest >= 0x200000) {
        rest = rest - 0x400000;
        quadrant = quadrant + 1u;
    }
    // 2 pi / 2^24.
    let a = f32(rest) * 3.7450704e-7;
    let a2 = a * a;
    let sin_a = a + a * a2 * (-0.16666667 + a2 * (0.008333334 + a2 * (-0.0001984127 + a2 * 2.7557319e-6)));
    let cos_a = 1.0 + a2 * (-0.5 + a2 * (0.041666668 + a2 * (-0.0013888889 + a2 * (2.4801588e-5 + a2 * -2.755732e-7))));
    switch (quadrant & 3u) {
        case 0u: { return cos_a; }
        case 1u: { return -sin_a; }
        case 2u: { return -cos_a; }
        default: { return sin_a; }
    }
}

// The value of element `first + k`.
fn fill_value(k: u32) -> f32 {
    let key = pcg_hash(f.seed);
    let h = element_hash(k, key);
    if (f.distribution == 0u) {
        // 24 random bits, exactly representable: the same float on every device and on the CPU.
        let u = f32(h >> 8u) * (1.0 / 16777216.0) * 2.0 - 1.0;
        return f.offset + f.scale * u;
    }
    // Box & Muller (1958), "A Note on the Generation of Random Normal Deviates": with u1 in
    // (0, 1] and u2 in [0, 1) independent and uniform, sqrt(-2 ln u1) cos(2 pi u2) is standard
    // normal. u1 = (k1 + 1) / 2^24 is never 0, so the logarithm is finite and |z| <= 5.77; u2
    // comes from a second hash of the same index, in another stream of the seed.
    let h2 = element_hash(k, key + SECOND_STREAM);
    let radius = sqrt(-2.0 * ln_of_unit(h >> 8u));
    return f.offset + f.scale * (radius * cos_of_turn(h2 >> 8u));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element_index(wg, nwg, lid);
    if (i < unit_count()) {
        store_unit(i);
    }
}
