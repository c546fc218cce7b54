//! The storage layer: how each role's values (parameters, gradients, optimizer states) are kept
//! in GPU memory, and how they are converted on the way in and out. The update rules compute in
//! float32 registers and never see a format: the host writes, for each kernel, accessors that
//! load a role's values as `V` (float32) and store them rounded to the role's format
//! (`Storage::wgsl_accessors`), and the same conversions in Rust for the host's copies and for the
//! float64 reference.
//!
//! 16-bit values are packed two per `u32`; a vec4 element is one `vec2<u32>`, so a 16-bit role
//! needs the vec4 element type (arena segments always have it; a caller's tensor of another
//! even length, or at an offset that is not a multiple of 16 bytes, gets `Vec4Tail`: bound by
//! the word, its last element masked). Rounding to a
//! 16-bit format is to nearest, ties to even (subnormals included), written with integer
//! operations in WGSL: WGSL's own float conversions may round either way.

use serde::{Deserialize, Serialize};

use crate::kernels::{Element, KernelTarget, StateSlot};

pub mod q8;
mod qmaps;

pub use q8::{Q8Blocks, Q8Lookups, QMap};

/// How the values of one role are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// IEEE binary32.
    #[default]
    F32,
    /// bfloat16: the upper half of a binary32 (8-bit significand, float32's exponent range).
    Bf16,
    /// IEEE binary16.
    F16,
    /// 8-bit blockwise (bitsandbytes): a byte per value into a 256-value map, and a float32
    /// absmax per block of 256 values of a tensor ([`q8`]). For optimizer states only.
    Q8,
}

impl Format {
    /// Bytes per value.
    pub fn bytes(self) -> u64 {
        match self {
            Format::F32 => 4,
            Format::Bf16 | Format::F16 => 2,
            Format::Q8 => 1,
        }
    }

    /// Bytes a buffer of `values` values takes (q8: the codes, in whole words, then one
    /// absmax per block).
    pub fn buffer_bytes(self, values: u64) -> u64 {
        match self {
            Format::Q8 => q8::buffer_bytes(values),
            other => values * other.bytes(),
        }
    }

    /// Bytes per value, with a q8 block's absmax shared among its 256 values.
    pub fn bytes_per_value(self) -> f64 {
        match self {
            Format::Q8 => 1.0 + 4.0 / q8::BLOCK as f64,
            other => other.bytes() as f64,
        }
    }

    /// The name the fixtures and the command line use (`"bf16"`).
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::Bf16 => "bf16",
            Format::F16 => "f16",
            Format::Q8 => "q8",
        }
    }

    /// The value a float32 becomes once stored and loaded again: rounded to nearest, ties to
    /// even (what the kernels' stores do). q8 values depend on their block: see
    /// [`q8::round_trip`]; here they pass unchanged.
    pub fn round(self, value: f32) -> f32 {
        match self {
            Format::F32 | Format::Q8 => value,
            Format::Bf16 => half::bf16::from_f32(value).to_f32(),
            Format::F16 => half::f16::from_f32(value).to_f32(),
        }
    }

    /// The value a float32 becomes when stored with stochastic rounding, given 32 random
    /// bits (what the kernels' stores do): up with probability equal to the distance to the
    /// value below, in units in the last place. Exact values stay; NaN stays NaN; f16 values
    /// below 2^-25 become zero.
    pub fn round_stochastic(self, value: f32, random: u32) -> f32 {
        match self {
            Format::F32 | Format::Q8 => value,
            Format::Bf16 => {
                let u = value.to_bits();
                if value.is_nan() {
                    return value;
                }
                let bits = (u.wrapping_add(random & 0xffff) >> 16) as u16;
                half::bf16::from_bits(bits).to_f32()
            }
            Format::F16 => half::f16::from_bits(f16_bits_stochastic(value, random)).to_f32(),
        }
    }

    /// The values as this format's little-endian bytes, each rounded to nearest even. (q8
    /// values are encoded a block at a time, by [`q8::quantize`].)
    pub(crate) fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Format::Q8 => unreachable!("q8 values are quantized by block"),
            Format::F32 => bytemuck::cast_slice(values).to_vec(),
            Format::Bf16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            Format::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }

    /// Little-endian bytes of this format as float32 values (exact).
    pub(crate) fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Format::Q8 => unreachable!("q8 codes are dequantized with their block's absmax"),
            Format::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Format::Bf16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Format::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// The WGSL type of one array element of a buffer in this format: `V` for float32, a
    /// `vec2<u32>` (four 16-bit values) for the others; as 64-bit words with [`Words::Wide`].
    fn wgsl_array_element(self, words: Words) -> &'static str {
        match (self, words == Words::Wide) {
            (Format::F32, false) => "V",
            (Format::F32, true) => "vec2<u64>",
            (Format::Bf16 | Format::F16, false) => "vec2<u32>",
            (Format::Bf16 | Format::F16, true) => "u64",
            (Format::Q8, _) => "u32",
        }
    }

    /// A WGSL expression of type `V` (float32) for the stored word(s) `raw`.
    fn wgsl_load(self, raw: &str, words: Words) -> String {
        let raw = match (self, words == Words::Wide) {
            (Format::F32, true) => return format!("f32x4_from_wide({raw})"),
            (_, true) => format!("words_from_wide({raw})"),
            (_, false) => raw.to_string(),
        };
        match self {
            Format::F32 => raw,
            Format::Bf16 => format!("bf16x4_to_f32({raw})"),
            Format::F16 => format!("f16x4_to_f32({raw})"),
            Format::Q8 => unreachable!("q8 states have their own accessors"),
        }
    }

    /// A WGSL expression of the stored type for the float32 value `value` (of type `V`).
    fn wgsl_store(self, value: &str, words: Words) -> String {
        let packed = match self {
            Format::F32 if words == Words::Wide => return format!("f32x4_to_wide({value})"),
            Format::F32 => return value.to_string(),
            Format::Bf16 => format!("f32_to_bf16x4({value})"),
            Format::F16 => format!("f32_to_f16x4({value})"),
            Format::Q8 => unreachable!("q8 states have their own accessors"),
        };
        wide_words_of(packed, words)
    }
}

/// The 16-bit words `packed` (a `vec2<u32>` expression) as the array element of `words`.
fn wide_words_of(packed: String, words: Words) -> String {
    if words == Words::Wide {
        format!("words_to_wide({packed})")
    } else {
        packed
    }
}

/// How a kernel declares and reads a role's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Words {
    /// One array element per kernel element: a `V` of float32, or the `vec2<u32>` of four
    /// 16-bit values.
    Element,
    /// The same bytes as 64-bit words (`vec2<u64>` per four float32, `u64` per four 16-bit
    /// values; [`KernelTarget::wide_words`]).
    Wide,
    /// A caller's tensor of a [`Element::Vec4Tail`] segment: by the value (float32) or by the
    /// `u32` word (16-bit), so that the binding may end inside the last vec4.
    Tail,
}

/// Conversions between float32 vec4s (or four 16-bit values' `vec2<u32>`) and the 64-bit words
/// of [`Words::Wide`]; little-endian, so the low half is the lower element.
const WIDE_WORDS_WGSL: &str = "
fn f32x4_from_wide(w: vec2<u64>) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(u32(w.x), u32(w.x >> 32u), u32(w.y), u32(w.y >> 32u)));
}
fn f32x4_to_wide(v: vec4<f32>) -> vec2<u64> {
    let u = vec4<u64>(bitcast<vec4<u32>>(v));
    return vec2<u64>(u.x | (u.y << 32u), u.z | (u.w << 32u));
}
fn words_from_wide(w: u64) -> vec2<u32> { return vec2<u32>(u32(w), u32(w >> 32u)); }
fn words_to_wide(v: vec2<u32>) -> u64 { return u64(v.x) | (u64(v.y) << 32u); }
";

/// How a helper kernel reaches a segment's gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradAccess {
    /// Not at all.
    None,
    /// Read, at `@binding(0)` (the norm pass).
    Read,
    /// Read and written, at `@binding(1)` (gradient accumulation).
    ReadWrite,
}

/// A host value type the engine reads and writes: `f32`, and the `half` crate's `bf16` and
/// `f16` (re-exported as `wgpu_optim::half`). Values are widened to float32 exactly, then
/// stored in their role's format.
pub trait HostValue: Copy {
    /// The value as a float32 (exact for every implementation here).
    fn to_f32(self) -> f32;
    /// The float32 rounded to this type (nearest even).
    fn from_f32(value: f32) -> Self;
}

impl HostValue for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl HostValue for half::bf16 {
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(value: f32) -> Self {
        half::bf16::from_f32(value)
    }
}

impl HostValue for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(value: f32) -> Self {
        half::f16::from_f32(value)
    }
}

/// How 16-bit parameters are rounded when the step stores them (without master weights).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// To nearest, ties to even: small updates below half a unit in the last place are lost.
    #[default]
    NearestEven,
    /// Up or down with probability proportional to the distance (unbiased in expectation), the
    /// random bits a counter-based hash of `seed`, the step number and the element's index in
    /// its group ([`stochastic_bits`]): a run is reproducible, and the reference mirrors it.
    Stochastic {
        /// The hash's seed.
        seed: u32,
    },
    /// Compensated (Kahan) summation: a second 16-bit buffer keeps what each store's rounding
    /// lost and adds it back to the next update, so that small updates accumulate.
    Kahan,
}

/// The 32 random bits stochastic rounding uses for the element at `index` (its position in
/// its group, see `Optimizer::rounding_positions`) at step `step` (from 1): PCG's output
/// permutation, chained.
pub fn stochastic_bits(seed: u32, step: u32, index: u64) -> u32 {
    let stream = pcg_hash(step ^ pcg_hash(seed));
    pcg_hash((index as u32) ^ stream)
}

/// PCG's output permutation (O'Neill 2014), as a hash; the same in WGSL.
pub(crate) fn pcg_hash(x: u32) -> u32 {
    let state = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Binary16 bits of `x` rounded stochastically with `random` (as `f16_bits_sr` in WGSL).
fn f16_bits_stochastic(x: f32, random: u32) -> u16 {
    let u = x.to_bits();
    let sign = (u >> 16) & 0x8000;
    let a = u & 0x7fff_ffff;
    if a >= 0x7f80_0000 {
        return half::f16::from_f32(x).to_bits();
    }
    if a >= 0x3880_0000 {
        // Normal: add random low bits, drop 13 bits; past 65504 the carry reaches infinity.
        let r = a + (random & 0x1fff);
        if r >= 0x4780_0000 {
            return (sign | 0x7c00) as u16;
        }
        return (sign | ((r - 0x3800_0000) >> 13)) as u16;
    }
    let e = a >> 23;
    if e < 102 {
        return sign as u16;
    }
    let m = (a & 0x7f_ffff) | 0x80_0000;
    let shift = 126 - e;
    let q = (m + (random & ((1 << shift) - 1))) >> shift;
    (sign | q) as u16
}

/// The most states one storage keeps in formats of their own (no optimizer keeps more states).
pub const MAX_STATE_FORMATS: usize = 4;

/// The states of a [`Storage`] kept in a format of their own, by name (`max_exp_avg_sq`): a
/// short list, in name order, of names some optimizer's kernel declares (serialized as a map
/// from name to format).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateFormats {
    entries: [Option<(&'static str, Format)>; MAX_STATE_FORMATS],
}

impl StateFormats {
    /// No exceptions: every state in [`Storage::states`].
    pub const NONE: StateFormats = StateFormats {
        entries: [None; MAX_STATE_FORMATS],
    };

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries[0].is_none()
    }

    /// The format of state `name`, if it has its own.
    pub fn get(&self, name: &str) -> Option<Format> {
        self.iter().find(|(n, _)| *n == name).map(|(_, f)| f)
    }

    /// The exceptions, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Format)> + '_ {
        self.entries.iter().map_while(|e| *e)
    }

    /// Keeps state `name` in `format`; `default` (the other states' format) removes its
    /// exception.
    fn set(&mut self, name: &str, format: Format, default: Format) -> crate::Result<()> {
        self.replace(name, (format != default).then_some(format))
    }

    /// Gives state `name` the format `format`, or (`None`) none of its own.
    fn replace(&mut self, name: &str, format: Option<Format>) -> crate::Result<()> {
        let bad = |reason: String| crate::Error::InvalidConfig {
            optimizer: "storage",
            reason,
        };
        let Some(name) = crate::optim::known_state_name(name) else {
            return Err(bad(format!(
                "no optimizer keeps a state `{name}` (the states: {})",
                crate::optim::all_state_names().join(", ")
            )));
        };
        let mut list: Vec<(&'static str, Format)> =
            self.iter().filter(|(n, _)| *n != name).collect();
        list.extend(format.map(|f| (name, f)));
        if list.len() > MAX_STATE_FORMATS {
            return Err(bad(format!(
                "at most {MAX_STATE_FORMATS} states in formats of their own"
            )));
        }
        list.sort_by_key(|(n, _)| *n);
        *self = StateFormats::NONE;
        for (entry, value) in self.entries.iter_mut().zip(list) {
            *entry = Some(value);
        }
        Ok(())
    }
}

impl Serialize for StateFormats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for StateFormats {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, Format>::deserialize(deserializer)?;
        let mut formats = StateFormats::NONE;
        for (name, format) in map {
            // A repeat of `states` is caught by `Storage::validate`.
            formats
                .replace(&name, Some(format))
                .map_err(serde::de::Error::custom)?;
        }
        Ok(formats)
    }
}

/// How one parameter group keeps its values. Math is float32 in every case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// The parameters the model reads.
    pub param: Format,
    /// The gradients the step reads.
    pub grad: Format,
    /// Every optimizer state, except those named in `state_formats`.
    pub states: Format,
    /// States kept in a format of their own (AMSGrad's maximum in float32 while the moments
    /// are q8): see [`with_state`](Self::with_state).
    #[serde(skip_serializing_if = "StateFormats::is_empty")]
    pub state_formats: StateFormats,
    /// Keep a float32 master copy of 16-bit parameters: the step updates the master and
    /// writes the 16-bit copy, rounded, in the same pass.
    pub master_weights: bool,
    /// How the step rounds 16-bit parameters (without master weights).
    pub rounding: Rounding,
    /// q8 states that are never negative (second moments, Adagrad's sum, Rprop's step sizes)
    /// store a positive value whose nearest code stands for 0 as their map's smallest positive
    /// code instead ([`q8::Q8Encoding::keep_positive`]). Off by default: q8 then rounds as
    /// bitsandbytes does, to the nearest code, and a rarely active feature's second moment
    /// may become 0 while its first moment does not (README, "q8 and sparse gradients").
    /// Label suffix `,nonzero`.
    pub q8_nonzero: bool,
}

impl Storage {
    /// Everything in float32 (the default).
    pub const F32: Storage = Storage {
        param: Format::F32,
        grad: Format::F32,
        states: Format::F32,
        state_formats: StateFormats::NONE,
        master_weights: false,
        rounding: Rounding::NearestEven,
        q8_nonzero: false,
    };

    /// The same storage with state `name` kept in `format` (overriding
    /// [`states`](Self::states) for it; the format of the other states again removes the
    /// exception). `name` must be a state some optimizer keeps; the group checks it is one of
    /// its optimizer's.
    pub fn with_state(mut self, name: &str, format: Format) -> crate::Result<Self> {
        self.state_formats.set(name, format, self.states)?;
        Ok(self)
    }

    /// The format state `name` is kept in.
    pub fn state_format(&self, name: &str) -> Format {
        self.state_formats.get(name).unwrap_or(self.states)
    }

    /// How state `slot` is quantized when it is q8: its map, and
    /// [`q8_nonzero`](Self::q8_nonzero) if it is never negative.
    pub fn q8_encoding(&self, slot: &crate::kernels::StateSlot) -> q8::Q8Encoding {
        q8::Q8Encoding {
            map: slot.q8_map,
            keep_positive: self.q8_nonzero && slot.nonnegative,
        }
    }

    /// The formats of the states, each once: `states`' and the exceptions'.
    fn all_state_formats(&self) -> impl Iterator<Item = Format> + '_ {
        std::iter::once(self.states).chain(self.state_formats.iter().map(|(_, f)| f))
    }

    /// [`validate`](Self::validate), and that every state named in
    /// [`state_formats`](Self::state_formats) is one of `optimizer`'s.
    pub fn validate_for(&self, optimizer: &crate::OptimizerConfig) -> crate::Result<()> {
        self.validate()?;
        let kernel = crate::UpdateRule::kernel(optimizer);
        for (name, _) in self.state_formats.iter() {
            if !kernel.state_names().any(|s| s == name) {
                return Err(crate::Error::InvalidConfig {
                    optimizer: "storage",
                    reason: format!(
                        "{} keeps no state `{name}` (its states: {})",
                        crate::Hyperparameters::name(optimizer),
                        kernel.state_names().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Master weights keep a float32 copy of 16-bit parameters: float32 parameters with them
    /// are an error (there is nothing to keep a master of).
    pub fn validate(&self) -> crate::Result<()> {
        if let Some((name, format)) = self.state_formats.iter().find(|(_, f)| *f == self.states) {
            return Err(crate::Error::InvalidConfig {
                optimizer: "storage",
                reason: format!(
                    "`{name}={}` repeats the format of every state; name a state only to keep it                      in another format",
                    format.name()
                ),
            });
        }
        if self.param == Format::Q8 || self.grad == Format::Q8 {
            return Err(crate::Error::InvalidConfig {
                optimizer: "storage",
                reason: "q8 (8-bit blockwise) is a format for optimizer states only; parameters \
                         and gradients are f32, bf16 or f16"
                    .into(),
            });
        }
        if self.rounding != Rounding::NearestEven
            && (self.param == Format::F32 || self.master_weights)
        {
            return Err(crate::Error::InvalidConfig {
                optimizer: "storage",
                reason: "stochastic rounding and Kahan summation apply to 16-bit parameters \
                         without master weights"
                    .into(),
            });
        }
        if self.q8_nonzero && !self.q8() {
            return Err(crate::Error::InvalidConfig {
                optimizer: "storage",
                reason: "`nonzero` is how q8 states round; this storage keeps no state in q8"
                    .into(),
            });
        }
        if self.master_weights && self.param == Format::F32 {
            return Err(crate::Error::InvalidConfig {
                optimizer: "storage",
                reason: "master weights need 16-bit parameters (param bf16 or f16); float32 \
                         parameters are their own master"
                    .into(),
            });
        }
        Ok(())
    }

    /// Every storage a group may have: each role in each format, with master weights where
    /// the parameters are 16-bit, stochastic rounding where they are 16-bit without master
    /// weights, Kahan summation there too; states also in q8, and in q8 that keeps positive
    /// values positive (135 in all).
    pub fn all() -> Vec<Storage> {
        let formats = [Format::F32, Format::Bf16, Format::F16];
        let mut all = Vec::new();
        for param in formats {
            for grad in formats {
                for states in [Format::F32, Format::Bf16, Format::F16, Format::Q8] {
                    for master_weights in [false, true] {
                        let storage = Storage {
                            param,
                            grad,
                            states,
                            state_formats: StateFormats::NONE,
                            master_weights,
                            rounding: Rounding::NearestEven,
                            q8_nonzero: false,
                        };
                        if storage.validate().is_ok() {
                            all.push(storage);
                        }
                        for rounding in [Rounding::Stochastic { seed: 0 }, Rounding::Kahan] {
                            let other = Storage {
                                rounding,
                                ..storage
                            };
                            if other.validate().is_ok() {
                                all.push(other);
                            }
                        }
                    }
                }
            }
        }
        let nonzero: Vec<Storage> = all
            .iter()
            .filter(|storage| storage.q8())
            .map(|storage| Storage {
                q8_nonzero: true,
                ..*storage
            })
            .collect();
        all.extend(nonzero);
        all
    }

    /// Whether every role is float32 (no conversion anywhere).
    pub fn is_f32(&self) -> bool {
        *self == Storage::F32
    }

    /// The format the step's parameter binding holds: float32 with master weights (the master),
    /// else the parameters' own.
    pub(crate) fn updated_param(&self) -> Format {
        if self.master_weights {
            Format::F32
        } else {
            self.param
        }
    }

    /// Bytes per value of the widest role: segments hold as many elements as its buffers may.
    pub(crate) fn widest_bytes(&self) -> u64 {
        [self.updated_param(), self.param, self.grad]
            .into_iter()
            .chain(self.all_state_formats())
            .map(|f| f.bytes())
            .max()
            .unwrap_or(4)
    }

    /// Whether parameters keep a Kahan compensation buffer.
    pub fn kahan(&self) -> bool {
        self.rounding == Rounding::Kahan
    }

    /// Whether parameters are rounded stochastically.
    pub fn stochastic(&self) -> bool {
        matches!(self.rounding, Rounding::Stochastic { .. })
    }

    /// Whether any role is packed (16-bit or q8): the kernel then needs the vec4 element type.
    pub fn packed(&self) -> bool {
        [self.param, self.grad]
            .into_iter()
            .chain(self.all_state_formats())
            .any(|f| f != Format::F32)
    }

    /// Whether any state is 8-bit blockwise.
    pub fn q8(&self) -> bool {
        self.all_state_formats().any(|f| f == Format::Q8)
    }

    /// Tensors start, and segments are cut, at multiples of this many elements: a vec4, or a
    /// whole q8 block, so that no block straddles two tensors or two segments.
    pub(crate) fn align_elems(&self) -> u64 {
        if self.q8() { q8::BLOCK } else { 4 }
    }

    /// A short label, which [`parse`](Self::parse) reads back: the parameters' format, `/`
    /// and the gradients' if they differ, `-master` with master weights, `+` and the states'
    /// format if not float32. `f32`, `bf16` (bf16 parameters and gradients), `bf16-master`,
    /// `bf16+bf16`, `f32/bf16` (bf16 gradients only), `f16-master+bf16`; states in a format
    /// of their own follow, `,name=format` each: `bf16+q8,max_exp_avg_sq=f32`.
    pub fn label(&self) -> String {
        let mut label = self.param.name().to_string();
        if self.grad != self.param {
            label.push('/');
            label.push_str(self.grad.name());
        }
        if self.master_weights {
            label.push_str("-master");
        }
        match self.rounding {
            Rounding::NearestEven => {}
            Rounding::Stochastic { seed } => {
                label.push_str("-sr");
                if seed != 0 {
                    label.push_str(&seed.to_string());
                }
            }
            Rounding::Kahan => label.push_str("-kahan"),
        }
        if self.states != Format::F32 || !self.state_formats.is_empty() {
            label.push('+');
            label.push_str(self.states.name());
        }
        for (name, format) in self.state_formats.iter() {
            label.push_str(&format!(",{name}={}", format.name()));
        }
        if self.q8_nonzero {
            label.push_str(",nonzero");
        }
        label
    }

    /// Reads a [`label`](Self::label).
    pub fn parse(label: &str) -> crate::Result<Self> {
        let bad = |reason: String| crate::Error::InvalidConfig {
            optimizer: "storage",
            reason: format!("`{label}`: {reason}"),
        };
        let format = |name: &str| match name {
            "f32" => Ok(Format::F32),
            "bf16" => Ok(Format::Bf16),
            "f16" => Ok(Format::F16),
            "q8" => Ok(Format::Q8),
            other => Err(bad(format!(
                "unknown format `{other}` (f32, bf16, f16, and q8 for states; e.g. bf16, \
                 bf16-master, bf16+bf16, bf16+q8, f32/bf16)"
            ))),
        };
        let (rest, states, exceptions) = match label.split_once('+') {
            Some((rest, states)) => {
                let mut parts = states.split(',');
                let states = format(parts.next().unwrap_or_default())?;
                (rest, states, parts.collect())
            }
            None => (label, Format::F32, Vec::new()),
        };
        let mut state_formats = StateFormats::NONE;
        let mut q8_nonzero = false;
        for exception in exceptions {
            if exception == "nonzero" {
                q8_nonzero = true;
                continue;
            }
            let Some((name, state_format)) = exception.split_once('=') else {
                return Err(bad(format!(
                    "`{exception}`: a state in a format of its own is `name=format` \
                     (e.g. bf16+q8,max_exp_avg_sq=f32)"
                )));
            };
            let state_format = format(state_format)?;
            if state_format == states {
                return Err(bad(format!(
                    "`{exception}` repeats the format of every state"
                )));
            }
            if state_formats.get(name).is_some() {
                return Err(bad(format!("state `{name}` is named twice")));
            }
            state_formats
                .set(name, state_format, states)
                .map_err(|e| bad(e.to_string()))?;
        }
        // `-sr` or `-sr<seed>`: stochastic rounding.
        let (rest, rounding) = match rest.rsplit_once("-sr") {
            Some((rest, seed)) if seed.is_empty() || seed.bytes().all(|b| b.is_ascii_digit()) => {
                let seed = if seed.is_empty() {
                    0
                } else {
                    seed.parse()
                        .map_err(|_| bad(format!("seed `{seed}` is not a u32")))?
                };
                (rest, Rounding::Stochastic { seed })
            }
            _ => (rest, Rounding::NearestEven),
        };
        let (rest, rounding) = match rest.strip_suffix("-kahan") {
            Some(rest) if rounding == Rounding::NearestEven => (rest, Rounding::Kahan),
            _ => (rest, rounding),
        };
        let (rest, master_weights) = match rest.strip_suffix("-master") {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let (param, grad) = match rest.split_once('/') {
            Some((param, grad)) => (format(param)?, format(grad)?),
            None => (format(rest)?, format(rest)?),
        };
        let storage = Storage {
            param,
            grad,
            states,
            state_formats,
            master_weights,
            rounding,
            q8_nonzero,
        };
        storage.validate()?;
        Ok(storage)
    }

    /// Bytes each element keeps resident: the parameter (and its master or its Kahan
    /// compensation), the gradient and the states named `states`.
    pub fn resident_bytes(&self, states: &[&str]) -> f64 {
        let master = if self.master_weights { 4 } else { 0 };
        let compensation = if self.kahan() { self.param.bytes() } else { 0 };
        (self.param.bytes() + master + compensation + self.grad.bytes()) as f64
            + self.state_bytes(states)
    }

    /// Bytes per element of the states named `states`, each in its format.
    pub fn state_bytes(&self, states: &[&str]) -> f64 {
        states
            .iter()
            .map(|name| self.state_format(name).bytes_per_value())
            .sum()
    }

    /// The bytes one step must move per element: read and write the parameter (and the
    /// master, and write the model's copy; or its Kahan compensation), read the gradient, read
    /// and write every state (those named `states`).
    pub fn bytes_per_element(&self, states: &[&str]) -> f64 {
        let param = if self.master_weights {
            2 * 4 + self.param.bytes()
        } else if self.kahan() {
            // The compensation is read and written with the parameter.
            4 * self.param.bytes()
        } else {
            2 * self.param.bytes()
        };
        (param + self.grad.bytes()) as f64 + 2.0 * self.state_bytes(states)
    }

    /// The WGSL conversions between float32 vec4s and packed 16-bit words, for the formats
    /// this storage uses (empty for float32 only).
    pub(crate) fn wgsl_conversions(&self) -> &'static str {
        if self.packed() || self.master_weights {
            CONVERSIONS_WGSL
        } else {
            ""
        }
    }

    /// The bindings and accessors of an optimizer kernel for this storage: `load_param`,
    /// `store_param`, `load_grad` (unscaled and clipped by the control's multiplier) and
    /// `load_<state>`, `store_<state>` for each state; `store_param` also writes the model's
    /// 16-bit copy with master weights.
    pub(crate) fn wgsl_accessors(
        &self,
        states: &[StateSlot],
        bindings: &AccessorBindings,
        target: KernelTarget,
        element: Element,
    ) -> String {
        let AccessorBindings {
            first_state: first_state_binding,
            model_copy: model_copy_binding,
            compensation: compensation_binding,
            qmaps: qmaps_binding,
        } = *bindings;
        let param = self.updated_param();
        // The caller's roles (a `Vec4Tail` segment's parameters, or its model copy, and its
        // gradients) may end inside a vec4; the master is ours, padded like the arena. Whole
        // vec4s are read as 64-bit words where the target says so.
        let words = if element == Element::Vec4 && target.wide_words {
            Words::Wide
        } else {
            Words::Element
        };
        let callers = if element == Element::Vec4Tail {
            Words::Tail
        } else {
            words
        };
        let mut wgsl = if words == Words::Wide {
            WIDE_WORDS_WGSL.to_string()
        } else {
            String::new()
        };
        let param_words = if self.master_weights { words } else { callers };
        wgsl.push_str(&role_array("param", 1, param, param_words));
        wgsl.push_str("// Read-write though only read: see the layout (`KernelCache::layout`).\n");
        wgsl.push_str(&role_array("grad", 2, self.grad, callers));
        wgsl.push_str(&format!(
            "fn element_count() -> u32 {{ return grad_count(); }}\n\
             fn load_param(i: u32) -> V {{ return {}; }}\n\
             // This step's gradient element: unscaled and clipped (the control's multiplier).\n\
             fn load_grad(i: u32) -> V {{\n\
             let g = {};\n\
             if (GRAD_MULTIPLIER) {{ return g * control.grad_multiplier; }}\n\
             return g;\n\
             }}\n",
            param.wgsl_load("param_get(i)", param_words),
            self.grad.wgsl_load("grad_get(i)", callers),
        ));
        if self.master_weights {
            wgsl.push_str(&role_array(
                "model_param",
                model_copy_binding,
                self.param,
                callers,
            ));
            wgsl.push_str(&format!(
                "// The master is updated; the model's copy is the master rounded.\n\
                 fn store_param(i: u32, value: V) {{ param_put(i, {}); model_param_put(i, {}); }}\n",
                param.wgsl_store("value", param_words),
                self.param.wgsl_store("value", callers),
            ));
        } else if let Rounding::Stochastic { seed } = self.rounding {
            let store = match self.param {
                Format::Bf16 => "f32_to_bf16x4_sr",
                _ => "f32_to_f16x4_sr",
            };
            wgsl.push_str(&format!(
                "// Stochastic rounding: the random bits of each element hash the seed, the\n\
                 // device's step number and the element's index in its group (this segment's\n\
                 // first index, plus its place in the segment).\n\
                 // (`segment_info`, the segment's place, is declared with the kernel's bindings.)\n\
                 const ROUNDING_SEED: u32 = {seed}u;\n\
                 fn rounding_bits(i: u32) -> vec4<u32> {{\n\
                 let stream = pcg_hash(control.step ^ pcg_hash(ROUNDING_SEED));\n\
                 let first = segment_info.base + 4u * i;\n\
                 return vec4<u32>(pcg_hash(first ^ stream), pcg_hash((first + 1u) ^ stream),\n\
                 pcg_hash((first + 2u) ^ stream), pcg_hash((first + 3u) ^ stream));\n\
                 }}\n\
                 fn store_param(i: u32, value: V) {{ param_put(i, {}); }}\n",
                wide_words_of(format!("{store}(value, rounding_bits(i))"), param_words),
            ));
        } else if self.rounding == Rounding::Kahan {
            // The compensation is ours, padded like the arena: `words`, never by the value.
            let element = param.wgsl_array_element(words);
            wgsl.push_str(&format!(
                "// Kahan summation: `compensation` holds what rounding the stored parameter lost;\n\
                 // it joins the next update, and what that store loses replaces it.\n\
                 @group(0) @binding({compensation_binding}) var<storage, read_write> compensation: array<{element}>;\n\
                 fn store_param(i: u32, value: V) {{\n\
                 let p = {};\n\
                 let y = (value - p) + {};\n\
                 let stored = {};\n\
                 param_put(i, stored);\n\
                 compensation[i] = {};\n\
                 }}\n",
                param.wgsl_load("param_get(i)", param_words),
                param.wgsl_load("compensation[i]", words),
                param.wgsl_store("p + y", param_words),
                param.wgsl_store(
                    &format!("y - ({} - p)", param.wgsl_load("stored", param_words)),
                    words
                ),
            ));
        } else {
            wgsl.push_str(&format!(
                "fn store_param(i: u32, value: V) {{ param_put(i, {}); }}\n",
                param.wgsl_store("value", param_words)
            ));
        }
        // q8 states share the workgroup's maps and block reduction; the others are plain.
        let bound = |slot: usize| first_state_binding + slot as u32;
        let q8_states: Vec<(u32, &StateSlot, bool)> = states
            .iter()
            .enumerate()
            .filter(|(_, state)| self.state_format(state.name) == Format::Q8)
            .map(|(slot, state)| (bound(slot), state, self.q8_encoding(state).keep_positive))
            .collect();
        if q8_states.is_empty() {
            wgsl.push_str(
                "fn prepare_workgroup(lid: u32) {}\n\
                 fn finish_workgroup(i: u32, lid: u32, in_range: bool) {}\n",
            );
        } else {
            wgsl.push_str(&format!(
                "@group(0) @binding({qmaps_binding}) var<uniform> qmaps: QMaps;\n{}",
                q8::wgsl(target.q8_lookups)
            ));
            let kept: Vec<&str> = q8_states
                .iter()
                .map(|(_, state, _)| state.kept_with.unwrap_or("true"))
                .collect();
            match target.q8_blocks {
                Q8Blocks::Workgroup => {
                    wgsl.push_str(&q8::block_absmax_wgsl(&kept, target.subgroups));
                    wgsl.push_str(&q8_state_accessors(&q8_states));
                }
                Q8Blocks::Subgroup { size } => wgsl.push_str(&q8_subgroup_state_accessors(
                    &q8_states,
                    size,
                    target.q8_lookups,
                )),
            }
        }
        for (slot, name) in states.iter().map(|s| s.name).enumerate() {
            let format = self.state_format(name);
            if format == Format::Q8 {
                continue;
            }
            let binding = bound(slot);
            wgsl.push_str(&format!(
                "@group(0) @binding({binding}) var<storage, read_write> {name}: array<{}>;\n\
                 fn load_{name}(i: u32) -> V {{ return {}; }}\n\
                 fn store_{name}(i: u32, value: V) {{ {name}[i] = {}; }}\n",
                format.wgsl_array_element(words),
                format.wgsl_load(&format!("{name}[i]"), words),
                format.wgsl_store("value", words),
            ));
        }
        wgsl
    }

    /// The gradient binding and accessors of a helper kernel: `grad_count()` elements (of type
    /// `V`), `load_raw_grad(i)` in float32 as stored (not yet unscaled) and, read-write,
    /// `store_raw_grad(i, value)` rounded to the format. Read-only at `@binding(0)` (the
    /// norm), read-write at `@binding(1)` (gradient accumulation).
    pub(crate) fn wgsl_raw_grad(&self, access: GradAccess, element: Element) -> String {
        let (binding, read_only) = match access {
            GradAccess::None => return String::new(),
            GradAccess::Read => (0, true),
            GradAccess::ReadWrite => (1, false),
        };
        let words = if element == Element::Vec4Tail {
            Words::Tail
        } else {
            Words::Element
        };
        let mut wgsl = if read_only {
            role_array_read_only("grad", binding, self.grad, words)
        } else {
            role_array("grad", binding, self.grad, words)
        };
        wgsl.push_str(&format!(
            "fn load_raw_grad(i: u32) -> V {{ return {}; }}\n",
            self.grad.wgsl_load("grad_get(i)", words),
        ));
        if access == GradAccess::ReadWrite {
            wgsl.push_str(&format!(
                "fn store_raw_grad(i: u32, value: V) {{ grad_put(i, {}); }}\n",
                self.grad.wgsl_store("value", words)
            ));
        }
        wgsl
    }
}

/// A read-write role's binding `name` at `binding`, and its raw accessors: `{name}_count()`
/// elements (of type `V`), `{name}_get(i)` and `{name}_put(i, raw)`, the stored word(s) of
/// element `i` (`V` for float32, `vec2<u32>` for four 16-bit values; 64-bit words with
/// [`Words::Wide`]). With [`Words::Tail`] (a caller's tensor in a [`Element::Vec4Tail`]
/// segment) the array holds values (float32) or words (16-bit: an even number of values), so
/// the binding may end inside the last vec4: its lanes past the end read 0 and are not
/// written.
fn role_array(name: &str, binding: u32, format: Format, words: Words) -> String {
    format!(
        "{}{}",
        role_get(name, binding, format, words, "read_write"),
        role_put(name, format, words)
    )
}

/// [`role_array`] without `{name}_put`, bound read-only.
fn role_array_read_only(name: &str, binding: u32, format: Format, words: Words) -> String {
    role_get(name, binding, format, words, "read")
}

/// The binding (access `mode`), `{name}_count()` and `{name}_get(i)` of [`role_array`].
fn role_get(name: &str, binding: u32, format: Format, words: Words, mode: &str) -> String {
    let declare = |element: &str| {
        format!("@group(0) @binding({binding}) var<storage, {mode}> {name}: array<{element}>;\n")
    };
    match (words == Words::Tail, format) {
        (false, _) => format!(
            "{}fn {name}_count() -> u32 {{ return arrayLength(&{name}); }}\n\
             fn {name}_get(i: u32) -> {element} {{ return {name}[i]; }}\n",
            declare(format.wgsl_array_element(words)),
            element = format.wgsl_array_element(words),
        ),
        (true, Format::F32) => format!(
            "{}fn {name}_count() -> u32 {{ return (arrayLength(&{name}) + 3u) / 4u; }}\n\
             fn {name}_get(i: u32) -> vec4<f32> {{\n\
             \x20   let n = arrayLength(&{name});\n\
             \x20   let lane = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u);\n\
             \x20   let at = min(lane, vec4<u32>(n - 1u));\n\
             \x20   let v = vec4<f32>({name}[at.x], {name}[at.y], {name}[at.z], {name}[at.w]);\n\
             \x20   return select(vec4<f32>(0.0), v, lane < vec4<u32>(n));\n\
             }}\n",
            declare("f32"),
        ),
        (true, Format::Bf16 | Format::F16) => format!(
            "{}fn {name}_count() -> u32 {{ return (arrayLength(&{name}) + 1u) / 2u; }}\n\
             fn {name}_get(i: u32) -> vec2<u32> {{\n\
             \x20   let second = 2u * i + 1u;\n\
             \x20   let n = arrayLength(&{name});\n\
             \x20   return vec2<u32>({name}[2u * i], select(0u, {name}[min(second, n - 1u)], second < n));\n\
             }}\n",
            declare("u32"),
        ),
        (true, Format::Q8) => unreachable!("q8 is a format of states, which are ours"),
    }
}

/// `{name}_put(i, raw)` of [`role_array`].
fn role_put(name: &str, format: Format, words: Words) -> String {
    match (words == Words::Tail, format) {
        (false, _) => format!(
            "fn {name}_put(i: u32, raw: {}) {{ {name}[i] = raw; }}\n",
            format.wgsl_array_element(words)
        ),
        (true, Format::F32) => format!(
            "fn {name}_put(i: u32, raw: vec4<f32>) {{\n\
             \x20   let n = arrayLength(&{name});\n\
             \x20   let first = 4u * i;\n\
             \x20   {name}[first] = raw.x;\n\
             \x20   if (first + 1u < n) {{ {name}[first + 1u] = raw.y; }}\n\
             \x20   if (first + 2u < n) {{ {name}[first + 2u] = raw.z; }}\n\
             \x20   if (first + 3u < n) {{ {name}[first + 3u] = raw.w; }}\n\
             }}\n"
        ),
        (true, Format::Bf16 | Format::F16) => format!(
            "fn {name}_put(i: u32, raw: vec2<u32>) {{\n\
             \x20   {name}[2u * i] = raw.x;\n\
             \x20   if (2u * i + 1u < arrayLength(&{name})) {{ {name}[2u * i + 1u] = raw.y; }}\n\
             }}\n"
        ),
        (true, Format::Q8) => unreachable!("q8 is a format of states, which are ours"),
    }
}

/// The bindings of the optional roles of an optimizer kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccessorBindings {
    /// The first state slot; the others follow.
    pub first_state: u32,
    /// The model's 16-bit copy, with master weights.
    pub model_copy: u32,
    /// The Kahan compensation.
    pub compensation: u32,
    /// The q8 maps, with q8 states.
    pub qmaps: u32,
}

/// The accessors of q8 states: `load_<name>` dequantizes with the block's absmax (the word
/// after the segment's codes); `store_<name>` keeps the new value in a register, and
/// `finish_workgroup`, which every invocation calls after the update, takes each block's new
/// absmax and stores the codes and the absmax. A state the rule did not store (a pass that
/// only reads it: Schedule-Free's swap to evaluation mode) keeps its codes and absmax as they
/// are: quantizing a block again is not the identity (the signed map's most negative value is
/// -0.99297, so a block whose largest magnitude is negative would shrink by that factor each
/// time). A rule stores each of its states in every invocation or in none.
fn q8_state_accessors(states: &[(u32, &StateSlot, bool)]) -> String {
    let mut wgsl = String::from(
        "fn prepare_workgroup(lid: u32) {\n    q8_prepare(lid);\n    workgroupBarrier();\n}\n",
    );
    let mut gather = String::new();
    let mut store = String::new();
    // Each q8 state's block magnitude is one component of a vec4 (at most four q8 states).
    for (component, &(binding, state, keep_positive)) in ["x", "y", "z", "w"].iter().zip(states) {
        let name = state.name;
        let map = state.q8_map.wgsl_name();
        wgsl.push_str(&format!(
            "@group(0) @binding({binding}) var<storage, read_write> {name}: array<u32>;\n\
             var<private> {name}_new: V;\n\
             var<private> {name}_stored: bool;\n\
             fn {name}_absmax_index(i: u32) -> u32 {{ return element_count() + i / 64u; }}\n\
             fn load_{name}(i: u32) -> V {{\n\
             return q8_decode({name}[i], bitcast<f32>({name}[{name}_absmax_index(i)]), {map});\n\
             }}\n\
             fn store_{name}(i: u32, value: V) {{ {name}_new = value; {name}_stored = true; }}\n"
        ));
        // A state kept only with a flag is quantized only with it (else its binding is a
        // placeholder).
        let kept = state.kept_with.unwrap_or("true");
        gather.push_str(&format!(
            "        if ({kept} && {name}_stored) {{\n\
             \x20           magnitudes.{component} = bitcast<f32>(hmax_u(bitcast<VU>(abs({name}_new))));\n\
             \x20       }}\n"
        ));
        store.push_str(&format!(
            "        if ({kept} && {name}_stored) {{\n\
             \x20           {name}[i] = q8_encode({name}_new, absmax.{component}, {map}, {keep_positive});\n\
             \x20           if ((lid & 63u) == 0u) {{\n\
             \x20               {name}[{name}_absmax_index(i)] = bitcast<u32>(absmax.{component});\n\
             \x20           }}\n\
             \x20       }}\n"
        ));
    }
    wgsl.push_str(&format!(
        "fn finish_workgroup(i: u32, lid: u32, in_range: bool) {{\n\
         \x20   var magnitudes = vec4<f32>(0.0);\n\
         \x20   if (in_range) {{\n{gather}    }}\n\
         \x20   let absmax = q8_block_absmax(magnitudes, lid);\n\
         \x20   if (in_range) {{\n{store}    }}\n\
         }}\n"
    ));
    wgsl
}

/// The accessors of q8 states when a subgroup holds each block ([`Q8Blocks::Subgroup`]; the
/// entry point is the kernel's `Q8_SUBGROUP_ENTRY_POINT_WGSL`): `q8_begin_block` reads the
/// block's absmax once per state; each invocation then updates its `Q8_LANE_VEC4S` vec4s in
/// turn (`q8_slot`), `store_<name>` keeping each new value in a register and the largest
/// magnitude so far; `q8_finish_block` takes the block's absmax as one `subgroupMax` and
/// stores the codes and the absmax. The same codes as [`q8_state_accessors`], the same rule
/// for a state the rule did not store.
fn q8_subgroup_state_accessors(
    states: &[(u32, &StateSlot, bool)],
    size: u32,
    lookups: Q8Lookups,
) -> String {
    let per_lane = q8::BLOCK as u32 / 4 / size;
    // Maps copied into workgroup memory must be there before anyone reads them; from the
    // uniform nothing waits (and a kernel without a barrier is what this path is for).
    let prepare = match lookups {
        Q8Lookups::Workgroup => {
            "fn prepare_workgroup(lid: u32) {\n\
             \x20   q8_copy_tables(lid, Q8_WORKGROUP_SIZE);\n\
             \x20   workgroupBarrier();\n\
             }\n"
        }
        Q8Lookups::Uniform => "fn prepare_workgroup(lid: u32) {}\n",
    };
    let mut wgsl = format!(
        "const Q8_SUBGROUP_SIZE: u32 = {size}u;\n\
         // Each invocation's vec4s of its block, and the invocations of a workgroup (which holds\n\
         // WORKGROUP_SIZE vec4s, as in the other entry point).\n\
         const Q8_LANE_VEC4S: u32 = {per_lane}u;\n\
         const Q8_WORKGROUP_SIZE: u32 = WORKGROUP_SIZE / Q8_LANE_VEC4S;\n\
         // Which of the invocation's vec4s the update is at.\n\
         var<private> q8_slot: u32;\n\
         // Per q8 state (x, y, z, w in order): the block's absmax before the step, and the bits of\n\
         // the largest magnitude stored since (for non-negative floats, and NaN above infinity,\n\
         // the order of the bits is the order of the values).\n\
         var<private> q8_old_absmax: vec4<f32>;\n\
         var<private> q8_new_magnitudes: vec4<u32>;\n\
         {prepare}"
    );
    let mut begin = String::new();
    let mut encode = String::new();
    let mut absmax = String::new();
    for (component, &(binding, state, keep_positive)) in ["x", "y", "z", "w"].iter().zip(states) {
        let name = state.name;
        let map = state.q8_map.wgsl_name();
        wgsl.push_str(&format!(
            "@group(0) @binding({binding}) var<storage, read_write> {name}: array<u32>;\n\
             var<private> {name}_new: array<V, Q8_LANE_VEC4S>;\n\
             var<private> {name}_stored: bool;\n\
             fn load_{name}(i: u32) -> V {{ return q8_decode({name}[i], q8_old_absmax.{component}, {map}); }}\n\
             fn store_{name}(i: u32, value: V) {{\n\
             \x20   {name}_new[q8_slot] = value;\n\
             \x20   {name}_stored = true;\n\
             \x20   q8_new_magnitudes.{component} = max(q8_new_magnitudes.{component}, hmax_u(bitcast<VU>(abs(value))));\n\
             }}\n"
        ));
        // A state kept only with a flag is read and quantized only with it (else its binding
        // is a placeholder).
        let kept = state.kept_with.unwrap_or("true");
        begin.push_str(&format!(
            "        if ({kept}) {{ q8_old_absmax.{component} = bitcast<f32>({name}[n + block]); }}\n"
        ));
        encode.push_str(&format!(
            "            if ({kept} && {name}_stored) {{\n\
             \x20               {name}[i] = q8_encode({name}_new[k], absmax.{component}, {map}, {keep_positive});\n\
             \x20           }}\n"
        ));
        absmax.push_str(&format!(
            "        if ({kept} && {name}_stored) {{ {name}[n + block] = bitcast<u32>(absmax.{component}); }}\n"
        ));
    }
    wgsl.push_str(&format!(
        "// The absmax of each state's block before the step (a subgroup past the last block\n\
         // reads none).\n\
         fn q8_begin_block(block: u32) {{\n\
         \x20   let n = element_count();\n\
         \x20   if (64u * block < n) {{\n{begin}    }}\n\
         }}\n\
         // The block's new absmax from the whole subgroup, then its codes, and the absmax by its\n\
         // first invocation. Every invocation of the subgroup calls it.\n\
         fn q8_finish_block(block: u32, lane: u32) {{\n\
         \x20   let n = element_count();\n\
         \x20   let absmax = bitcast<vec4<f32>>(subgroupMax(q8_new_magnitudes));\n\
         \x20   for (var k = 0u; k < Q8_LANE_VEC4S; k++) {{\n\
         \x20       let i = 64u * block + k * Q8_SUBGROUP_SIZE + lane;\n\
         \x20       if (i < n) {{\n{encode}        }}\n\
         \x20   }}\n\
         \x20   if (lane == 0u && 64u * block < n) {{\n{absmax}    }}\n\
         }}\n"
    ));
    wgsl
}

/// Conversions between a `vec4<f32>` and four 16-bit values packed in a `vec2<u32>` (the
/// first value in the low half of the first word: little-endian order).
pub(crate) const CONVERSIONS_WGSL: &str = "
fn bf16x4_to_f32(w: vec2<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));
}

// Round to nearest even on the bits; a NaN stays a (quiet) NaN.
fn bf16_bits(x: vec4<f32>) -> vec4<u32> {
    let u = bitcast<vec4<u32>>(x);
    let rounded = (u + vec4<u32>(0x7fffu) + ((u >> vec4<u32>(16u)) & vec4<u32>(1u))) >> vec4<u32>(16u);
    let nan = (u & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    return select(rounded, (u >> vec4<u32>(16u)) | vec4<u32>(0x40u), nan);
}

fn f32_to_bf16x4(x: vec4<f32>) -> vec2<u32> {
    let b = bf16_bits(x);
    return vec2<u32>(b.x | (b.y << 16u), b.z | (b.w << 16u));
}

// By the bits too (exact): `unpack2x16float` needs a capability some adapters lack.
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        // Zero or subnormal: m * 2^-24, exact in float32.
        let v = ldexp(f32(m), -24);
        return select(v, -v, sign != 0u);
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

fn f16x4_to_f32(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(f16_to_f32(w.x & 0xffffu), f16_to_f32(w.x >> 16u),
                     f16_to_f32(w.y & 0xffffu), f16_to_f32(w.y >> 16u));
}

// IEEE binary16 bits of x, rounded to nearest even (subnormals included), by integer
// arithmetic: WGSL's own conversion may round either way.
fn f16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    let sign = (u >> 16u) & 0x8000u;
    let a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) {
        // inf, or NaN (kept quiet, with the top of its payload).
        return sign | 0x7c00u | select(0u, 0x200u | ((a >> 13u) & 0x3ffu), a > 0x7f800000u);
    }
    if (a >= 0x477ff000u) {
        // 65520 and above round to infinity.
        return sign | 0x7c00u;
    }
    if (a >= 0x38800000u) {
        // Normal: drop 13 bits, to nearest even, and rebias the exponent (127 -> 15).
        let r = a + 0xfffu + ((a >> 13u) & 1u);
        return sign | ((r - 0x38000000u) >> 13u);
    }
    let e = a >> 23u;
    if (e < 102u) {
        // Below 2^-25 (or exactly half of the smallest subnormal, a tie to 0).
        return sign;
    }
    // Subnormal: the significand in units of 2^-24, to nearest even.
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    let q = m >> shift;
    let rest = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    let up = rest > half || (rest == half && (q & 1u) == 1u);
    return sign | (q + select(0u, 1u, up));
}

fn f32_to_f16x4(x: vec4<f32>) -> vec2<u32> {
    return vec2<u32>(f16_bits(x.x) | (f16_bits(x.y) << 16u), f16_bits(x.z) | (f16_bits(x.w) << 16u));
}

// PCG's output permutation (O'Neill 2014) as a hash: stochastic rounding's random bits.
fn pcg_hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Stochastic rounding to bf16: add 16 random low bits, then drop them.
fn f32_to_bf16x4_sr(x: vec4<f32>, r: vec4<u32>) -> vec2<u32> {
    let u = bitcast<vec4<u32>>(x);
    let nan = (u & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    let b = select((u + (r & vec4<u32>(0xffffu))) >> vec4<u32>(16u), (u >> vec4<u32>(16u)) | vec4<u32>(0x40u), nan);
    return vec2<u32>(b.x | (b.y << 16u), b.z | (b.w << 16u));
}

// Stochastic rounding to binary16: random low bits added before they are dropped (values below
// 2^-25 become zero).
fn f16_bits_sr(x: f32, random: u32) -> u32 {
    let u = bitcast<u32>(x);
    let sign = (u >> 16u) & 0x8000u;
    let a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) {
        return f16_bits(x);
    }
    if (a >= 0x38800000u) {
        let r = a + (random & 0x1fffu);
        if (r >= 0x47800000u) {
            return sign | 0x7c00u;
        }
        return sign | ((r - 0x38000000u) >> 13u);
    }
    let e = a >> 23u;
    if (e < 102u) {
        return sign;
    }
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    return sign | ((m + (random & ((1u << shift) - 1u))) >> shift);
}

fn f32_to_f16x4_sr(x: vec4<f32>, r: vec4<u32>) -> vec2<u32> {
    return vec2<u32>(f16_bits_sr(x.x, r.x) | (f16_bits_sr(x.y, r.y) << 16u),
                     f16_bits_sr(x.z, r.z) | (f16_bits_sr(x.w, r.w) << 16u));
}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_back() {
        let all = Storage::all();
        // Per states format (f32, bf16, f16, q8): 9 without master weights, 6 with, 6 with
        // stochastic rounding, 6 with Kahan.
        // And q8 once more with `nonzero`.
        assert_eq!(all.len(), 5 * (9 + 6 + 6 + 6));
        for storage in all {
            assert_eq!(Storage::parse(&storage.label()).unwrap(), storage);
        }
        assert_eq!(Storage::parse("bf16").unwrap().grad, Format::Bf16);
        assert_eq!(Storage::parse("bf16+q8").unwrap().states, Format::Q8);
        for bad in [
            "q8",
            "f32/q8+q8",
            "f32-sr",
            "bf16-master-sr",
            "bf16-srx",
            "f64",
            "f32-master",
            "bf16+bf16,nonzero",
            "bf16,nonzero",
            "",
        ] {
            assert!(Storage::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: to the even one, 1.
        assert_eq!(Format::Bf16.round(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(
            Format::Bf16.round(1.0 + 3.0 * 2f32.powi(-8)),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(Format::F16.round(65520.0), f32::INFINITY);
        assert_eq!(Format::F16.round(2f32.powi(-25)), 0.0);
        let bytes = Format::Bf16.encode(&[1.5, -2.0]);
        assert_eq!(Format::Bf16.decode(&bytes), vec![1.5, -2.0]);
    }
}
