//! 8-bit blockwise optimizer states, bitsandbytes' scheme (Dettmers et al., "8-bit Optimizers
//! via Block-wise Quantization", ICLR 2022): each tensor's state is cut into blocks of 256
//! consecutive elements (the last one may be shorter); a block keeps one float32 absmax and one
//! byte per element, an index into a 256-value dynamic map. A value is `map[code] * absmax`.
//! After each step the block's new values are quantized again: absmax `A` = their largest
//! magnitude, `r = 1 / A` (rounded, then multiplied: bitsandbytes does not divide), and each
//! value takes the code whose map value is nearest to `clamp(value * r, -1, 1)`, an exact tie
//! going to the lower code (bitsandbytes' CUDA kernel: a binary search, then the nearer
//! neighbour). An all-zero block stores code 0 and absmax 0.
//!
//! On the GPU a state's buffer holds, per segment, the codes (four per `u32`, one word per
//! `vec4` element) and then one absmax per block; the update kernel dequantizes on load,
//! keeps the new values in registers, and quantizes after the update, once a workgroup
//! reduction has found each block's absmax (`wgsl_accessors`, `WGSL`). Here is the same
//! arithmetic on the host, for copies, checkpoints and the float64 reference.

use super::qmaps;

/// Elements per quantization block.
pub const BLOCK: u64 = 256;

/// Which dynamic map a q8 state uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QMap {
    /// Values of either sign (code 127 is 0).
    Signed,
    /// Non-negative values (code 0 is 0): finer steps for the same 8 bits.
    Unsigned,
}

impl QMap {
    /// The 256 ascending map values.
    pub fn values(self) -> &'static [f32; 256] {
        match self {
            QMap::Signed => &qmaps::SIGNED,
            QMap::Unsigned => &qmaps::UNSIGNED,
        }
    }

    /// The code that stores an exact 0 (the value padding keeps).
    pub fn zero_code(self) -> u8 {
        match self {
            QMap::Signed => 127,
            QMap::Unsigned => 0,
        }
    }

    /// The code whose map value is nearest to `x` (exact distances), ties to the lower code.
    pub fn nearest(self, x: f32) -> u8 {
        let map = self.values();
        // The largest code whose value is at most x (0 if none is).
        let mut k = 0usize;
        let mut step = 128usize;
        while step > 0 {
            if map[k + step] <= x {
                k += step;
            }
            step /= 2;
        }
        if k < 255 && (map[k + 1] as f64 - x as f64) < (x as f64 - map[k] as f64) {
            k += 1;
        }
        k as u8
    }
}

/// One block's values quantized: a code per value (into `codes`) and the block's absmax.
pub fn quantize_block(values: &[f32], map: QMap, codes: &mut [u8]) -> f32 {
    debug_assert_eq!(values.len(), codes.len());
    let absmax = values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    if absmax == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    let r = 1.0 / absmax;
    for (code, v) in codes.iter_mut().zip(values) {
        *code = map.nearest((v * r).clamp(-1.0, 1.0));
    }
    absmax
}

/// The value a code stands for in a block of absmax `absmax` (a float32 product).
pub fn dequantize(code: u8, absmax: f32, map: QMap) -> f32 {
    map.values()[code as usize] * absmax
}

/// Values quantized block by block from the first: `(codes, absmax per block)`.
pub fn quantize(values: &[f32], map: QMap) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; values.len()];
    let absmax = values
        .chunks(BLOCK as usize)
        .zip(codes.chunks_mut(BLOCK as usize))
        .map(|(block, codes)| quantize_block(block, map, codes))
        .collect();
    (codes, absmax)
}

/// The values that codes and their blocks' absmax stand for.
pub fn dequantize_all(codes: &[u8], absmax: &[f32], map: QMap) -> Vec<f32> {
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| dequantize(c, absmax[i / BLOCK as usize], map))
        .collect()
}

/// What a state becomes once stored as q8 and loaded again, block by block (the reference's
/// mirror of the kernel's store): quantized from its float32 values.
pub fn round_trip(values: &mut [f64], map: QMap) {
    let narrow: Vec<f32> = values.iter().map(|v| *v as f32).collect();
    let (codes, absmax) = quantize(&narrow, map);
    for (v, q) in values.iter_mut().zip(dequantize_all(&codes, &absmax, map)) {
        *v = q as f64;
    }
}

/// Bytes a q8 state of `elems` elements takes in one buffer: the codes (whole words) and one
/// float32 absmax per block.
pub fn buffer_bytes(elems: u64) -> u64 {
    elems.next_multiple_of(4) + 4 * elems.div_ceil(BLOCK)
}

/// The WGSL of q8 states, for the kernels that have them: both maps in workgroup memory (from a
/// small uniform, `QMAP_BINDING`), decoding, the block absmax by a workgroup reduction over the
/// 64 invocations (of four elements) that hold a block, and encoding by a binary search.
pub(crate) const WGSL: &str = "
struct QMaps { values: array<vec4<f32>, 128> }
var<workgroup> q8_maps: array<f32, 512>;
var<workgroup> q8_scratch: array<vec4<f32>, 256>;
const Q8_SIGNED: u32 = 0u;
const Q8_UNSIGNED: u32 = 256u;

// Every invocation copies two map values; the caller then waits at a barrier.
fn q8_load_maps(lid: u32) {
    let word = qmaps.values[lid / 2u];
    let first = 2u * lid;
    q8_maps[first] = word[first % 4u];
    q8_maps[first + 1u] = word[(first + 1u) % 4u];
}

fn q8_decode(codes: u32, absmax: f32, map: u32) -> vec4<f32> {
    return vec4<f32>(q8_maps[map + (codes & 0xffu)], q8_maps[map + ((codes >> 8u) & 0xffu)],
                     q8_maps[map + ((codes >> 16u) & 0xffu)], q8_maps[map + (codes >> 24u)]) * absmax;
}

// The code nearest to x, ties to the lower code.
fn q8_nearest(x: f32, map: u32) -> u32 {
    var k = 0u;
    for (var step = 128u; step > 0u; step >>= 1u) {
        if (q8_maps[map + k + step] <= x) {
            k += step;
        }
    }
    if (k < 255u && q8_maps[map + k + 1u] - x < x - q8_maps[map + k]) {
        k += 1u;
    }
    return k;
}

fn q8_encode(value: vec4<f32>, absmax: f32, map: u32) -> u32 {
    if (absmax == 0.0) {
        return 0u;
    }
    let x = clamp(value * (1.0 / absmax), vec4<f32>(-1.0), vec4<f32>(1.0));
    return q8_nearest(x.x, map) | (q8_nearest(x.y, map) << 8u) | (q8_nearest(x.z, map) << 16u)
        | (q8_nearest(x.w, map) << 24u);
}

// Each block's largest magnitude of up to four states at once (one per component), taken over
// the 64 invocations that hold the block. Every invocation of the workgroup must call it.
fn q8_block_absmax(magnitudes: vec4<f32>, lid: u32) -> vec4<f32> {
    q8_scratch[lid] = magnitudes;
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if ((lid & 63u) < stride) {
            q8_scratch[lid] = max(q8_scratch[lid], q8_scratch[lid + stride]);
        }
    }
    workgroupBarrier();
    let absmax = q8_scratch[lid & ~63u];
    workgroupBarrier();
    return absmax;
}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_match_the_fixture() {
        let fixture: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/formats.json"))
                .unwrap(),
        )
        .unwrap();
        for (name, map) in [("signed", QMap::Signed), ("unsigned", QMap::Unsigned)] {
            let values: Vec<f32> = fixture["qmaps"][name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(values.as_slice(), map.values().as_slice(), "{name}");
            assert!(values.windows(2).all(|w| w[0] < w[1]), "{name} ascends");
            assert_eq!(map.values()[map.zero_code() as usize], 0.0);
        }
    }

    #[test]
    fn nearest_code_is_nearest_with_ties_to_the_lower() {
        for map in [QMap::Signed, QMap::Unsigned] {
            let values = map.values();
            // Every code's own value, and points just either side of each midpoint.
            for (k, value) in values.iter().enumerate() {
                assert_eq!(map.nearest(*value) as usize, k);
            }
            for k in 0..255 {
                let (a, b) = (values[k] as f64, values[k + 1] as f64);
                let mid = (a + b) / 2.0;
                let below = mid as f32;
                let expected = if (b - below as f64) < (below as f64 - a) {
                    k + 1
                } else {
                    k
                };
                assert_eq!(map.nearest(below) as usize, expected, "{map:?} {k}");
                let above = f32::from_bits(below.to_bits().wrapping_add(if below > 0.0 {
                    1
                } else {
                    u32::MAX
                }));
                let brute = (0..256)
                    .min_by(|&i, &j| {
                        let di = (values[i] as f64 - above as f64).abs();
                        let dj = (values[j] as f64 - above as f64).abs();
                        di.partial_cmp(&dj).unwrap().then(i.cmp(&j))
                    })
                    .unwrap();
                assert_eq!(map.nearest(above) as usize, brute, "{map:?} {k}");
            }
            assert_eq!(map.nearest(-1.0), 0);
            assert_eq!(map.nearest(1.0), 255);
        }
    }

    #[test]
    fn blocks_quantize_within_half_a_step() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let (codes, absmax) = quantize(&values, QMap::Signed);
        assert_eq!(absmax.len(), 4);
        let back = dequantize_all(&codes, &absmax, QMap::Signed);
        for (i, (v, b)) in values.iter().zip(&back).enumerate() {
            let a = absmax[i / 256];
            // The coarsest step of the signed map is 1/71 of the absmax.
            assert!((v - b).abs() <= a / 71.0, "{i}: {v} -> {b}");
        }
        // The largest magnitude of each block is kept exactly.
        for (block, a) in values.chunks(256).zip(&absmax) {
            assert!(block.iter().any(|v| v.abs() == *a));
        }
        let (zeros, zero_absmax) = quantize(&[0.0; 5], QMap::Signed);
        assert_eq!((zeros, zero_absmax), (vec![0; 5], vec![0.0]));
        assert_eq!(buffer_bytes(257), 260 + 8);
    }
}
