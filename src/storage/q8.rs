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
//! keeps the new values in registers, and quantizes after the update, once a reduction over
//! the invocations that hold the block (64 of a workgroup, or one subgroup: [`Q8Blocks`]) has
//! found its absmax (`wgsl_accessors`, `WGSL`). Here is the same arithmetic on the host, for
//! copies, checkpoints and the float64 reference.

use std::sync::OnceLock;

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

    /// The WGSL constant that names the map in `q8_table` (its offset there).
    pub(crate) fn wgsl_name(self) -> &'static str {
        match self {
            QMap::Signed => "Q8_SIGNED",
            QMap::Unsigned => "Q8_UNSIGNED",
        }
    }

    /// The code that stores an exact 0 (the value padding keeps).
    pub fn zero_code(self) -> u8 {
        match self {
            QMap::Signed => 127,
            QMap::Unsigned => 0,
        }
    }

    /// For each code `k` below 255, the least float32 whose nearest code is above `k`: the
    /// rounding of the exact midpoint of codes `k` and `k + 1` if that lies above the midpoint,
    /// else the next float32 up (a value exactly at the midpoint is a tie, which goes to the
    /// lower code). So `x >= thresholds[k]`
    /// says "nearer to `k + 1`" exactly, in one float32 comparison, with no distance to round.
    /// Entry 255 is unused (2).
    pub fn thresholds(self) -> [f32; 256] {
        let values = self.values();
        let mut thresholds = [2.0f32; 256];
        for k in 0..255 {
            // Exact in float64: two float32 of nearby magnitudes.
            let mid = (values[k] as f64 + values[k + 1] as f64) / 2.0;
            let rounded = mid as f32;
            thresholds[k] = if (rounded as f64) > mid {
                rounded
            } else {
                rounded.next_up()
            };
        }
        thresholds
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

/// How one q8 state turns values into codes: its map, and whether a positive value may become 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Q8Encoding {
    /// The dynamic map the codes index.
    pub map: QMap,
    /// A positive value whose nearest code stands for 0 takes the smallest positive code
    /// instead ([`Storage::q8_nonzero`](crate::Storage::q8_nonzero), on a state that is never
    /// negative). Without it a rare feature's second moment falls below the map's smallest
    /// code (3.25e-7 of its block's absmax in the unsigned map) and stores 0 while its first
    /// moment keeps a code: Adam then steps `lr * m / eps`.
    pub keep_positive: bool,
}

impl From<QMap> for Q8Encoding {
    /// The map's nearest code, 0 included: bitsandbytes' rounding.
    fn from(map: QMap) -> Self {
        Self {
            map,
            keep_positive: false,
        }
    }
}

impl Q8Encoding {
    /// The code of `x` (in [-1, 1]): the nearest, ties to the lower, or with
    /// [`keep_positive`](Self::keep_positive) the smallest positive code where that would
    /// stand for 0 and `x` is above it.
    pub fn code(self, x: f32) -> u8 {
        let nearest = self.map.nearest(x);
        let zero = self.map.zero_code();
        if self.keep_positive && nearest == zero && x > 0.0 {
            zero + 1
        } else {
            nearest
        }
    }
}

/// The kernel's first guess at the code of `x` (in [-1, 1]), from the map's structure
/// (bitsandbytes' `create_dynamic_map`: decade `d` = 0..6 holds |x| in [10^(d-7), 10^(d-6)) with
/// 2^d codes (signed) or 2^(d+1) (unsigned) at the midpoints of equal steps; 0 below 10^-7;
/// negative values mirror positive ones in the signed map). It is within one code of the
/// nearest, and the kernel decides between it and its two neighbours by two exact thresholds
/// ([`nearest_around`]): two lookups instead of a binary search's ten. The host does not need
/// it (it searches); the tests check its bound.
pub fn guess(x: f32, map: QMap) -> u8 {
    let unsigned = map == QMap::Unsigned;
    let a = x.abs();
    let (mut decade, mut scale, mut threshold) = (0u32, 1e-6f32, 1e-6f32);
    for _ in 0..6 {
        if a >= threshold {
            decade += 1;
            scale *= 10.0;
        }
        threshold *= 10.0;
    }
    let count = 1u32 << (decade + unsigned as u32);
    let lo = 0.1 * scale;
    let step = 0.9 * scale / count as f32;
    let j = (((a - lo) / step).max(0.0) as u32).min(count - 1);
    let mut code = if unsigned { count - 1 } else { 127 + count } + j;
    if a < 1e-7 {
        code = map.zero_code() as u32;
    }
    if x < 0.0 {
        code = if unsigned { 0 } else { 254 - code };
    }
    code as u8
}

/// The kernel's nearest code: of the three codes around [`guess`], by the
/// [`thresholds`](QMap::thresholds) between them. Equal to [`QMap::nearest`] on every float32
/// in [-1, 1] the tests try.
pub fn nearest_around(x: f32, map: QMap, thresholds: &[f32; 256]) -> u8 {
    let first = (guess(x, map) as usize).clamp(1, 254) - 1;
    (first + (x >= thresholds[first]) as usize + (x >= thresholds[first + 1]) as usize) as u8
}

/// The encoding table of [`Q8Lookups::Uniform`]: the magnitudes from 2^-25 to 1 cut into
/// cells of 1/128 of a binade (the float32 bits of `|x|` shifted right by 16), per map and
/// sign. A cell holds at most one threshold of its map (the tests check every cell), so the
/// code of `x` is its cell's code, moved one code on (up for positive `x`, down for negative)
/// where `|x|`'s low 16 bits reach the cell's threshold: one lookup, where
/// [`nearest_around`] takes a guess and two.
pub mod cells {
    use super::QMap;

    /// The first cell: the bits of 2^-25 shifted right by 16. Every magnitude below it takes
    /// the first cell, which holds no threshold and the code that stands for 0.
    pub const FIRST: u32 = 102 << 7;
    /// The last cell: 1.0's.
    pub const LAST: u32 = 127 << 7;
    /// Cells per map and sign.
    pub const COUNT: usize = (LAST - FIRST + 1) as usize;
    /// A cell's threshold where it has none: above every 16-bit remainder.
    const NONE: u32 = 1 << 16;

    /// The table of one map: `COUNT` cells for non-negative `x`, then `COUNT` for negative;
    /// each `code | threshold << 8`, `threshold` the least 16-bit remainder of `|x|`'s bits at
    /// which the next code is nearer (`1 << 16`: none in this cell).
    pub fn table(map: QMap) -> Vec<u32> {
        let mut table = Vec::with_capacity(2 * COUNT);
        for negative in [false, true] {
            let value = |bits: u32| {
                let x = f32::from_bits(bits);
                if negative { -x } else { x }
            };
            for cell in FIRST..=LAST {
                let bottom = cell << 16;
                let code = map.nearest(value(bottom));
                // The least remainder whose code differs (codes are monotone in |x|).
                let top = if cell == LAST {
                    bottom
                } else {
                    bottom | 0xffff
                };
                let threshold = if map.nearest(value(top)) == code {
                    NONE
                } else {
                    let (mut lo, mut hi) = (0u32, 0xffffu32);
                    while lo < hi {
                        let mid = (lo + hi) / 2;
                        if map.nearest(value(bottom | mid)) == code {
                            lo = mid + 1;
                        } else {
                            hi = mid;
                        }
                    }
                    lo
                };
                table.push(code as u32 | threshold << 8);
            }
        }
        table
    }

    /// The code of `x` (in [-1, 1], or NaN) as the kernel finds it in `table` ([`table`]).
    pub fn code(x: f32, table: &[u32]) -> u8 {
        let magnitude = x.to_bits() & 0x7fff_ffff;
        let negative = x.is_sign_negative();
        let cell = (magnitude >> 16).clamp(FIRST, LAST) - FIRST;
        let entry = table[cell as usize + negative as usize * COUNT];
        let base = entry & 0xff;
        let crossed = ((magnitude & 0xffff) >= entry >> 8) as u32;
        (if negative {
            base - crossed
        } else {
            base + crossed
        }) as u8
    }
}

/// One block's values quantized: a code per value (into `codes`) and the block's absmax.
pub fn quantize_block(values: &[f32], encoding: Q8Encoding, codes: &mut [u8]) -> f32 {
    debug_assert_eq!(values.len(), codes.len());
    // A NaN makes the absmax NaN (the kernel takes the largest bit pattern, and a NaN's
    // exceeds infinity's): the whole block then stands for NaN, whatever its codes.
    let absmax = values.iter().fold(0.0f32, |a, v| {
        if a.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            a.max(v.abs())
        }
    });
    if absmax == 0.0 || absmax.is_nan() {
        codes.fill(0);
        return absmax;
    }
    let r = 1.0 / absmax;
    for (code, v) in codes.iter_mut().zip(values) {
        *code = encoding.code((v * r).clamp(-1.0, 1.0));
    }
    absmax
}

/// The value a code stands for in a block of absmax `absmax` (a float32 product).
pub fn dequantize(code: u8, absmax: f32, map: QMap) -> f32 {
    map.values()[code as usize] * absmax
}

/// Values quantized block by block from the first: `(codes, absmax per block)`.
pub fn quantize(values: &[f32], encoding: impl Into<Q8Encoding>) -> (Vec<u8>, Vec<f32>) {
    let encoding = encoding.into();
    let mut codes = vec![0u8; values.len()];
    let absmax = values
        .chunks(BLOCK as usize)
        .zip(codes.chunks_mut(BLOCK as usize))
        .map(|(block, codes)| quantize_block(block, encoding, codes))
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
pub fn round_trip(values: &mut [f64], encoding: impl Into<Q8Encoding>) {
    let encoding = encoding.into();
    let narrow: Vec<f32> = values.iter().map(|v| *v as f32).collect();
    let (codes, absmax) = quantize(&narrow, encoding);
    for (v, q) in values
        .iter_mut()
        .zip(dequantize_all(&codes, &absmax, encoding.map))
    {
        *v = q as f64;
    }
}

/// What the kernels' `QMaps` uniform holds, as 32-bit words: the signed and unsigned maps,
/// then the signed and unsigned thresholds (1,024 float32's bits); with
/// [`Q8Lookups::Uniform`] then the signed and the unsigned map's [`cells::table`], padded to
/// whole vec4s. Built once per path.
pub fn uniform_words(lookups: Q8Lookups) -> &'static [u32] {
    static WORKGROUP: OnceLock<Vec<u32>> = OnceLock::new();
    static UNIFORM: OnceLock<Vec<u32>> = OnceLock::new();
    let words = match lookups {
        Q8Lookups::Workgroup => &WORKGROUP,
        Q8Lookups::Uniform => &UNIFORM,
    };
    words.get_or_init(|| build_uniform_words(lookups))
}

fn build_uniform_words(lookups: Q8Lookups) -> Vec<u32> {
    let mut words = Vec::with_capacity(1024 + 4 * cells::COUNT);
    for map in [QMap::Signed, QMap::Unsigned] {
        words.extend(map.values().iter().map(|v| v.to_bits()));
    }
    for map in [QMap::Signed, QMap::Unsigned] {
        words.extend(map.thresholds().iter().map(|v| v.to_bits()));
    }
    if lookups == Q8Lookups::Uniform {
        for map in [QMap::Signed, QMap::Unsigned] {
            words.extend(cells::table(map));
        }
    }
    words.resize(words.len().next_multiple_of(4), 0);
    words
}

/// The WGSL of [`Q8Blocks::Workgroup`]: `q8_prepare(lid)`, which clears the block maxima, and
/// `q8_block_absmax(magnitudes, lid)`, the largest magnitude of each q8 state
/// (components x, y, z, w; `kept[k]` the WGSL condition under which state k is kept, `true`
/// or a flag like `AMSGRAD`) in the block of invocation `lid`, taken over the 64 invocations
/// (of four elements) that hold the block. Every invocation of the workgroup calls it once,
/// after `q8_prepare` has cleared the maxima.
///
/// Each invocation takes an atomic max into workgroup memory and waits at a barrier; four
/// invocations copy the workgroup's four blocks' maxima into plain workgroup memory, and
/// after a second barrier every invocation reads all four at the same addresses and keeps its
/// block's. (llvmpipe loads an atomic, or a value at a per-invocation address, lane by lane; a
/// value at one address once: 0.90x the step time of each invocation loading its block's
/// atomics, AdamW bf16+q8 on lavapipe.) With `subgroups` (where the adapter has them), a
/// subgroup that lies within one block first reduces its magnitudes and only one of its
/// invocations takes the atomics: on lavapipe (subgroups of 8) 0.71x the time of the tree
/// reduction this replaced (7 barriers), atomics alone 0.86x. A subgroup that spans blocks (or
/// lanes in an order the check cannot see) is never merged: each lane then takes its own.
pub(crate) fn block_absmax_wgsl(kept: &[&str], subgroups: bool) -> String {
    let components = &["x", "y", "z", "w"][..kept.len()];
    let mut wgsl = String::from(
        "// The absmax of each of the workgroup's four blocks for each of up to four states (block b,\n\
         // state k at 4b + k), as float32 bits: for non-negative floats (and NaN above infinity) the\n\
         // order of the bits is the order of the values, so an atomic max of the bits takes the max.\n\
         var<workgroup> q8_absmax_bits: array<atomic<u32>, 16>;\n\
         // The first 16 invocations clear the block maxima, and the tables are copied where they are\n\
         // read from (`q8_copy_tables`); the caller then waits at a barrier.\n\
         fn q8_prepare(lid: u32) {\n\
         \x20   if (lid < 16u) {\n\
         \x20       atomicStore(&q8_absmax_bits[lid], 0u);\n\
         \x20   }\n\
         \x20   q8_copy_tables(lid, WORKGROUP_SIZE);\n\
         }\n\
         // The absmax of each of the workgroup's four blocks, once all have taken their atomics.\n\
         var<workgroup> q8_block_maxima: array<vec4<u32>, 4>;\n\
         fn q8_block_absmax(magnitudes: vec4<f32>, lid: u32) -> vec4<f32> {\n\
         \x20   let at = 4u * (lid >> 6u);\n\
         \x20   var bits = bitcast<vec4<u32>>(magnitudes);\n\
         \x20   var takes = true;\n",
    );
    if subgroups {
        wgsl.push_str(
            "    // The whole subgroup in this block: reduce it and let its first lane take it.\n\
             \x20   if (subgroupMin(at) == subgroupMax(at)) {\n\
             \x20       bits = subgroupMax(bits);\n\
             \x20       takes = subgroupBroadcastFirst(lid) == lid;\n\
             \x20   }\n",
        );
    }
    wgsl.push_str("    if (takes) {\n");
    for (k, (c, kept)) in components.iter().zip(kept).enumerate() {
        wgsl.push_str(&format!(
            "        if ({kept}) {{ atomicMax(&q8_absmax_bits[at + {k}u], bits.{c}); }}\n"
        ));
    }
    wgsl.push_str(
        "    }\n\
         \x20   workgroupBarrier();\n\
         \x20   if (lid < 4u) {\n\
         \x20       var block = vec4<u32>(0u);\n",
    );
    for (k, (c, kept)) in components.iter().zip(kept).enumerate() {
        wgsl.push_str(&format!(
            "        if ({kept}) {{ block.{c} = atomicLoad(&q8_absmax_bits[4u * lid + {k}u]); }}\n"
        ));
    }
    wgsl.push_str(
        "        q8_block_maxima[lid] = block;\n\
         \x20   }\n\
         \x20   workgroupBarrier();\n\
         \x20   let b = lid >> 6u;\n\
         \x20   let low = select(q8_block_maxima[0], q8_block_maxima[1], b == 1u);\n\
         \x20   let high = select(q8_block_maxima[2], q8_block_maxima[3], b == 3u);\n\
         \x20   return bitcast<vec4<f32>>(select(low, high, b >= 2u));\n\
         }\n",
    );
    wgsl
}

/// Bytes a q8 state of `elems` elements takes in one buffer: the codes (whole words) and one
/// float32 absmax per block.
pub fn buffer_bytes(elems: u64) -> u64 {
    elems.next_multiple_of(4) + 4 * elems.div_ceil(BLOCK)
}

/// Where a q8 kernel reads the maps and their thresholds from, per value: a lookup at an
/// address that differs between neighbouring invocations (a code, a guess).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Q8Lookups {
    /// Each workgroup copies them from the uniform into workgroup memory first, as
    /// bitsandbytes keeps its map in shared memory: a GPU's uniform (constant) cache serves
    /// one address per cycle and serializes a warp's divergent reads, its workgroup memory
    /// does not.
    #[default]
    Workgroup,
    /// Straight from the uniform. On a CPU adapter (llvmpipe) a read of workgroup memory at a
    /// per-invocation address is a loop over the SIMD lanes, a uniform's one gather: AdamW
    /// bf16+q8 steps in about half the time there (BENCHMARKS.md, "q8 lookups").
    Uniform,
}

impl Q8Lookups {
    /// What suits the adapter: [`Uniform`](Self::Uniform) on a CPU whose uniform bindings hold
    /// the tables ([`uniform_words`]: 54 KiB with the encoding cells), else
    /// [`Workgroup`](Self::Workgroup).
    pub fn for_adapter(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> Self {
        if info.device_type == wgpu::DeviceType::Cpu && Self::Uniform.fits(limits) {
            Self::Uniform
        } else {
            Self::Workgroup
        }
    }

    /// Bytes of the q8 maps' uniform on this path.
    pub fn uniform_bytes(self) -> u64 {
        4 * uniform_words(self).len() as u64
    }

    /// Whether a device with these limits can bind the uniform of this path.
    pub fn fits(self, limits: &wgpu::Limits) -> bool {
        self.uniform_bytes() <= limits.max_uniform_buffer_binding_size
    }
}

/// Which invocations hold a q8 block in the update kernel, and so how its new absmax (the
/// largest magnitude of its 256 new values, which every code of the block waits for) is found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Q8Blocks {
    /// 64 invocations of the workgroup, one `vec4` each (an invocation per four elements, as
    /// every other kernel): the block's maximum through workgroup memory, atomics and three
    /// barriers in all (clearing the maxima, after the atomics, after their copy;
    /// [`block_absmax_wgsl`]). A GPU's way: its invocations are cheap, its barriers
    /// too.
    #[default]
    Workgroup,
    /// One subgroup of `size` invocations (a divisor of 64): each steps `64 / size` of the
    /// block's vec4s in turn (`size` apart, so that the subgroup reads consecutive words),
    /// keeps their new values in registers, and one `subgroupMax` gives the absmax: no
    /// barrier, no atomics. llvmpipe runs a kernel that has a barrier as coroutines, one per
    /// SIMD group, suspended at each barrier; without one the same step takes 0.70x the time
    /// (AdamW f32+q8 at 2^22 on lavapipe, BENCHMARKS.md "q8 blocks in one subgroup"). Needs
    /// subgroups of one fixed size: the kernel maps blocks to subgroups by `subgroup_id`.
    Subgroup {
        /// Invocations per subgroup, the adapter's one subgroup size.
        size: u32,
    },
}

impl Q8Blocks {
    /// What suits the adapter: [`Subgroup`](Self::Subgroup) on a CPU adapter whose subgroups
    /// have one size ([`subgroup_of`](Self::subgroup_of)) when the device has subgroup
    /// operations, else [`Workgroup`](Self::Workgroup).
    pub fn for_adapter(info: &wgpu::AdapterInfo, features: wgpu::Features) -> Self {
        match Self::subgroup_of(info, features) {
            Some(blocks) if info.device_type == wgpu::DeviceType::Cpu => blocks,
            _ => Self::Workgroup,
        }
    }

    /// [`Subgroup`](Self::Subgroup) where the device can take it: subgroup operations, and a
    /// subgroup size that is fixed (the adapter's least and largest agree) and divides 64.
    pub fn subgroup_of(info: &wgpu::AdapterInfo, features: wgpu::Features) -> Option<Self> {
        let size = info.subgroup_min_size;
        (features.contains(wgpu::Features::SUBGROUP)
            && size == info.subgroup_max_size
            && size > 0
            && (BLOCK as u32 / 4).is_multiple_of(size))
        .then_some(Self::Subgroup { size })
    }
}

/// The WGSL of q8 states, for the kernels that have them: the maps, their thresholds and (with
/// [`Q8Lookups::Uniform`]) the encoding cells in a small uniform (`QMAP_BINDING`:
/// [`uniform_words`]), read as `lookups` says; decoding; encoding, by the cells or by a guess
/// and two thresholds. The block absmax is [`block_absmax_wgsl`]'s.
pub(crate) fn wgsl(lookups: Q8Lookups) -> String {
    let vec4s = uniform_words(lookups).len() / 4;
    let tables = match lookups {
        Q8Lookups::Workgroup => {
            "// Both maps and their thresholds, copied from the uniform by every workgroup.\n\
             var<workgroup> q8_maps: array<f32, 1024>;\n\
             fn q8_table(k: u32) -> f32 { return q8_maps[k]; }\n\
             // The workgroup's `invocations` copy four values at a time; the caller then waits\n\
             // at a barrier.\n\
             fn q8_copy_tables(lid: u32, invocations: u32) {\n\
             \x20   for (var w = lid; w < 256u; w += invocations) {\n\
             \x20       let word = bitcast<vec4<f32>>(qmaps.words[w]);\n\
             \x20       q8_maps[4u * w] = word.x;\n\
             \x20       q8_maps[4u * w + 1u] = word.y;\n\
             \x20       q8_maps[4u * w + 2u] = word.z;\n\
             \x20       q8_maps[4u * w + 3u] = word.w;\n\
             \x20   }\n\
             }\n\
             // The codes of four values by a guess and the two thresholds around it.\n\
             fn q8_codes(x: vec4<f32>, map: u32) -> vec4<u32> {\n\
             \x20   let g = q8_guess(x, map);\n\
             \x20   return vec4<u32>(q8_nearest(x.x, g.x, map), q8_nearest(x.y, g.y, map),\n\
             \x20                    q8_nearest(x.z, g.z, map), q8_nearest(x.w, g.w, map));\n\
             }\n"
            .to_owned()
                + Q8_GUESS_WGSL
        }
        Q8Lookups::Uniform => {
            "// Both maps, their thresholds and the cells, read from the uniform where they are.\n\
             fn q8_word(k: u32) -> u32 { return qmaps.words[k >> 2u][k & 3u]; }\n\
             fn q8_table(k: u32) -> f32 { return bitcast<f32>(q8_word(k)); }\n\
             fn q8_copy_tables(lid: u32, invocations: u32) {}\n\
             // The codes of four values by their cells (`cells::code` in q8.rs mirrors it): the\n\
             // cell's code, one on (down for a negative value) where the cell's threshold is reached.\n\
             fn q8_codes(x: vec4<f32>, map: u32) -> vec4<u32> {\n\
             \x20   let bits = bitcast<vec4<u32>>(x);\n\
             \x20   let magnitude = bits & vec4<u32>(0x7fffffffu);\n\
             \x20   let negative = bits >> vec4<u32>(31u);\n\
             \x20   let table = Q8_CELL_TABLES + select(0u, 2u * Q8_CELLS, map == Q8_UNSIGNED);\n\
             \x20   let cell = table + clamp(magnitude >> vec4<u32>(16u), vec4<u32>(Q8_FIRST_CELL), vec4<u32>(Q8_LAST_CELL))\n\
             \x20       - Q8_FIRST_CELL + negative * Q8_CELLS;\n\
             \x20   let entry = vec4<u32>(q8_word(cell.x), q8_word(cell.y), q8_word(cell.z), q8_word(cell.w));\n\
             \x20   let base = entry & vec4<u32>(0xffu);\n\
             \x20   let crossed = select(vec4<u32>(0u), vec4<u32>(1u), (magnitude & vec4<u32>(0xffffu)) >= (entry >> vec4<u32>(8u)));\n\
             \x20   return select(base + crossed, base - crossed, negative == vec4<u32>(1u));\n\
             }\n"
            .to_owned()
        }
    };
    format!(
        "struct QMaps {{ words: array<vec4<u32>, {vec4s}> }}\n\
         // The encoding cells (`cells` in q8.rs), after the maps and thresholds.\n\
         const Q8_CELL_TABLES: u32 = 1024u;\n\
         const Q8_CELLS: u32 = {}u;\n\
         const Q8_FIRST_CELL: u32 = {}u;\n\
         const Q8_LAST_CELL: u32 = {}u;\n\
         {Q8_WGSL}{tables}",
        cells::COUNT,
        cells::FIRST,
        cells::LAST,
    )
}

/// The workgroup path's encoding helpers (the uniform path encodes by the cells instead).
const Q8_GUESS_WGSL: &str = "
// A guess at each value's code from the structure of the map (see `guess` in q8.rs, which
// mirrors it), within one code of the nearest.
fn q8_guess(x: vec4<f32>, map: u32) -> vec4<u32> {
    let a = abs(x);
    var decade = vec4<u32>(0u);
    var scale = vec4<f32>(1e-6);
    var threshold = 1e-6;
    for (var t = 0u; t < 6u; t++) {
        let up = a >= vec4<f32>(threshold);
        decade += select(vec4<u32>(0u), vec4<u32>(1u), up);
        scale = select(scale, scale * 10.0, up);
        threshold *= 10.0;
    }
    let unsigned = map == Q8_UNSIGNED;
    let count = vec4<u32>(1u) << (decade + select(0u, 1u, unsigned));
    let lo = 0.1 * scale;
    let step = 0.9 * scale / vec4<f32>(count);
    let j = min(vec4<u32>(max((a - lo) / step, vec4<f32>(0.0))), count - 1u);
    var code = select(vec4<u32>(127u) + count, count - 1u, vec4<bool>(unsigned)) + j;
    code = select(code, vec4<u32>(select(127u, 0u, unsigned)), a < vec4<f32>(1e-7));
    let negative = x < vec4<f32>(0.0);
    return select(code, select(254u - code, vec4<u32>(0u), vec4<bool>(unsigned)), negative);
}

// The code nearest to x, ties to the lower code: of the guess and its two neighbours, by the
// thresholds between them (`nearest_around` in q8.rs mirrors it).
fn q8_nearest(x: f32, guess: u32, map: u32) -> u32 {
    let first = min(max(guess, 1u), 254u) - 1u;
    let above = Q8_THRESHOLDS + map + first;
    return first + select(0u, 1u, x >= q8_table(above)) + select(0u, 1u, x >= q8_table(above + 1u));
}
";

const Q8_WGSL: &str = "
// In `q8_table`: the signed map from 0, the unsigned from 256, then their thresholds.
const Q8_SIGNED: u32 = 0u;
const Q8_UNSIGNED: u32 = 256u;
const Q8_THRESHOLDS: u32 = 512u;
fn q8_decode(codes: u32, absmax: f32, map: u32) -> vec4<f32> {
    return vec4<f32>(q8_table(map + (codes & 0xffu)), q8_table(map + ((codes >> 8u) & 0xffu)),
                     q8_table(map + ((codes >> 16u) & 0xffu)), q8_table(map + (codes >> 24u))) * absmax;
}

// The codes of four values, `keep_positive` as `Q8Encoding::code` (a positive value whose
// nearest code stands for 0 takes the smallest positive code).
fn q8_encode(value: vec4<f32>, absmax: f32, map: u32, keep_positive: bool) -> u32 {
    if (absmax == 0.0) {
        return 0u;
    }
    let x = clamp(value * (1.0 / absmax), vec4<f32>(-1.0), vec4<f32>(1.0));
    var codes = q8_codes(x, map);
    if (keep_positive) {
        let zero = vec4<u32>(select(127u, 0u, map == Q8_UNSIGNED));
        codes = select(codes, zero + 1u, (codes == zero) & (x > vec4<f32>(0.0)));
    }
    return codes.x | (codes.y << 8u) | (codes.z << 16u) | (codes.w << 24u);
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
    fn the_kernels_guess_is_within_one_code_and_finds_the_nearest() {
        for map in [QMap::Signed, QMap::Unsigned] {
            let values = map.values();
            let thresholds = map.thresholds();
            let table = cells::table(map);
            let mut points: Vec<f32> = vec![
                -1.0, 1.0, 0.0, -0.0, 1e-7, -1e-7, 9.9e-8, 1e-38, -1e-38, 3e-8, -3e-8, 1e-45,
            ];
            // Every code's value, every midpoint, and a few units in the last place around each.
            for k in 0..256 {
                let mut around = vec![values[k]];
                if k < 255 {
                    around.push(((values[k] as f64 + values[k + 1] as f64) / 2.0) as f32);
                }
                for v in around {
                    for d in -3i32..=3 {
                        points.push(f32::from_bits((v.to_bits() as i32 + d) as u32));
                    }
                }
            }
            // And a dense sweep of every decade.
            for e in -80..=0 {
                for m in 0..2000 {
                    let v = 10f32.powf(e as f32 / 10.0) * (1.0 + m as f32 / 2000.0);
                    points.extend([v.min(1.0), -v.min(1.0)]);
                }
            }
            for x in points {
                if !(-1.0..=1.0).contains(&x) || x.is_nan() {
                    continue;
                }
                let (g, n) = (guess(x, map) as i32, map.nearest(x) as i32);
                assert!((g - n).abs() <= 1, "{map:?} {x:e}: guess {g}, nearest {n}");
                assert_eq!(
                    nearest_around(x, map, &thresholds) as i32,
                    n,
                    "{map:?} {x:e}"
                );
                assert_eq!(cells::code(x, &table) as i32, n, "{map:?} {x:e} by cells");
            }
        }
    }

    /// Each cell's codes change at most once, so one threshold per cell finds the nearest;
    /// the first cell, where every smaller magnitude lands, stands for 0 throughout; and the
    /// code of every float32 in a wide sweep of cells is the nearest.
    #[test]
    fn encoding_cells_hold_at_most_one_threshold_and_find_the_nearest_code() {
        for map in [QMap::Signed, QMap::Unsigned] {
            let table = cells::table(map);
            assert_eq!(table.len(), 2 * cells::COUNT);
            for (side, sign) in [(0, 1.0f32), (1, -1.0)] {
                for cell in cells::FIRST..=cells::LAST {
                    let bottom = sign * f32::from_bits(cell << 16);
                    let top = sign * f32::from_bits((cell << 16) | 0xffff).min(1.0);
                    let (b, t) = (map.nearest(bottom) as i32, map.nearest(top) as i32);
                    assert!(
                        (b - t).abs() <= 1,
                        "{map:?} cell {cell:#x}: codes {b} to {t}"
                    );
                }
                let first = table[side * cells::COUNT];
                assert_eq!(
                    first,
                    map.zero_code() as u32 | 1 << 24,
                    "{map:?} side {side}"
                );
            }
            // Every 2,369th float32 from 2^-26 to 1, both signs: 900,000 values per map.
            let mut bits = (101u32 << 23) | 0x1234;
            while bits <= 1.0f32.to_bits() {
                for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                    assert_eq!(cells::code(x, &table), map.nearest(x), "{map:?} {x:e}");
                }
                bits += 37 * 64 + 1;
            }
        }
    }

    #[test]
    fn keep_positive_only_lifts_positive_values_off_zero() {
        for map in [QMap::Signed, QMap::Unsigned] {
            let zero = map.zero_code();
            let keep = Q8Encoding {
                map,
                keep_positive: true,
            };
            let nearest = Q8Encoding::from(map);
            for x in [1e-30f32, 1e-9, 9e-8] {
                assert_eq!(nearest.code(x), zero, "{map:?} {x:e}");
                assert_eq!(keep.code(x), zero + 1, "{map:?} {x:e}");
            }
            assert_eq!(keep.code(0.0), zero);
            // Negative values round as before (to 0, in the signed map).
            assert_eq!(keep.code(-1e-9), nearest.code(-1e-9));
            // Above the smallest code's midpoint nothing changes.
            for x in [1e-6f32, 0.01, 0.5, 1.0, -0.5] {
                assert_eq!(keep.code(x), nearest.code(x), "{map:?} {x:e}");
            }
        }
        // A block: every positive value keeps a positive code.
        let values = [1.0f32, 1e-9, 0.0, 3e-8, 0.2];
        let (codes, absmax) = quantize(
            &values,
            Q8Encoding {
                map: QMap::Unsigned,
                keep_positive: true,
            },
        );
        assert_eq!(absmax, vec![1.0]);
        assert_eq!(codes[..4], [255, 1, 0, 1]);
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
