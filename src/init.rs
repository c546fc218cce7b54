//! `torch.nn.init`'s initialisers as fills on the device: `xavier_uniform_`, `xavier_normal_`
//! (Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural
//! networks") and `kaiming_uniform_`, `kaiming_normal_` (He et al. 2015, "Delving Deep into
//! Rectifiers: Surpassing Human-Level Performance on ImageNet Classification"), with torch 2.x's
//! fans, gains and defaults.
//!
//! An [`Init`] and a tensor's shape give a [`Distribution`] (uniform in [-bound, bound), or
//! normal with mean 0); the fill kernel (`shaders/fill.wgsl`) draws element `j`'s value from
//! the seed and `j` alone, so that the values do not depend on how the tensor is laid out and
//! [`Distribution::value`] computes any of them on the CPU: the same bits for the uniform
//! distributions, within a few ulps for the normal ones. [`Optimizer::initialize`] fills an
//! optimizer's parameters (its own or a caller's [`ExternalTensor`](crate::ExternalTensor), in
//! place), [`fill_buffer`] a float32 region of any buffer ([`fill_buffer_as`] a bfloat16 or
//! binary16 one). 16-bit values are the float32 values rounded to nearest even, on the device.
//!
//! ```no_run
//! use wgpu_optim::{ContextOptions, GpuContext, Init, Optimizer, TensorId, TensorInit};
//! use wgpu_optim::optim::AdamW;
//!
//! let ctx = GpuContext::new(&ContextOptions::default())?;
//! let mut opt = Optimizer::builder(&ctx)
//!     .group(AdamW::default(), [TensorInit::Zeros(512 * 256), TensorInit::Zeros(512)])
//!     .build()?;
//! // nn.Linear(256, 512)'s weight, as torch.nn.init.kaiming_uniform_(w, nonlinearity="relu").
//! opt.initialize(TensorId(0), &[512, 256], &Init::kaiming_uniform_relu(), 7)?;
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! [`Optimizer::initialize`]: crate::Optimizer::initialize

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::fill::{self, FillSpec, NORMAL, UNIFORM};
use crate::storage::Format;
use crate::transfer::View;

/// Which fan Kaiming initialisation preserves the variance of (torch's `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FanMode {
    /// `"fan_in"`: the variance of the activations in the forward pass (torch's default).
    #[default]
    FanIn,
    /// `"fan_out"`: the variance of the gradients in the backward pass.
    FanOut,
}

impl FanMode {
    /// torch's name for it (`"fan_in"`).
    pub fn name(self) -> &'static str {
        match self {
            FanMode::FanIn => "fan_in",
            FanMode::FanOut => "fan_out",
        }
    }
}

/// The nonlinearity that follows the layer: its recommended gain, as torch's
/// `torch.nn.init.calculate_gain`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nonlinearity {
    /// `"linear"` (and `"identity"`): gain 1.
    Linear,
    /// `"conv1d"`, `"conv2d"`, `"conv3d"`, `"conv_transpose1d"`, `"conv_transpose2d"`,
    /// `"conv_transpose3d"`: gain 1.
    Conv,
    /// `"sigmoid"`: gain 1.
    Sigmoid,
    /// `"tanh"`: gain 5/3.
    Tanh,
    /// `"relu"`: gain sqrt(2).
    Relu,
    /// `"leaky_relu"`: gain sqrt(2 / (1 + negative_slope^2)).
    LeakyRelu {
        /// The slope for negative inputs (torch's `param`; finite, may be negative as in torch).
        negative_slope: f64,
    },
    /// `"selu"`: gain 3/4.
    Selu,
}

impl Nonlinearity {
    /// The slope torch's `calculate_gain("leaky_relu")` takes when none is given. (Kaiming
    /// initialisation passes its own `a`, 0 by default: see [`Init::kaiming_uniform`].)
    pub const DEFAULT_NEGATIVE_SLOPE: f64 = 0.01;

    /// `"leaky_relu"` with torch's default slope, 0.01.
    pub fn leaky_relu() -> Self {
        Nonlinearity::LeakyRelu {
            negative_slope: Self::DEFAULT_NEGATIVE_SLOPE,
        }
    }

    /// torch's `calculate_gain(name, param)`: `param` is the leaky ReLU's negative slope
    /// (`None`: 0.01), ignored by the others as torch ignores it. An unknown name is an error,
    /// as in torch.
    pub fn from_torch(name: &str, param: Option<f64>) -> Result<Self> {
        let nonlinearity = match name {
            "linear" | "identity" => Nonlinearity::Linear,
            "conv1d" | "conv2d" | "conv3d" | "conv_transpose1d" | "conv_transpose2d"
            | "conv_transpose3d" => Nonlinearity::Conv,
            "sigmoid" => Nonlinearity::Sigmoid,
            "tanh" => Nonlinearity::Tanh,
            "relu" => Nonlinearity::Relu,
            "leaky_relu" => Nonlinearity::LeakyRelu {
                negative_slope: param.unwrap_or(Self::DEFAULT_NEGATIVE_SLOPE),
            },
            "selu" => Nonlinearity::Selu,
            other => {
                return Err(Error::InvalidConfig {
                    optimizer: "calculate_gain",
                    reason: format!(
                        "unsupported nonlinearity `{other}` (torch's: linear, identity, conv1d, \
                         conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d, \
                         sigmoid, tanh, relu, leaky_relu, selu)"
                    ),
                });
            }
        };
        nonlinearity.validate()?;
        Ok(nonlinearity)
    }

    /// The recommended gain: the factor by which the nonlinearity shrinks the standard
    /// deviation of its inputs, inverted (torch's values, computed as torch computes them).
    pub fn gain(&self) -> f64 {
        match *self {
            Nonlinearity::Linear | Nonlinearity::Conv | Nonlinearity::Sigmoid => 1.0,
            Nonlinearity::Tanh => 5.0 / 3.0,
            Nonlinearity::Relu => 2f64.sqrt(),
            Nonlinearity::LeakyRelu { negative_slope } => {
                (2.0 / (1.0 + negative_slope.powi(2))).sqrt()
            }
            Nonlinearity::Selu => 3.0 / 4.0,
        }
    }

    /// A leaky ReLU's slope must be finite. A negative one is accepted, as torch accepts it
    /// (its gain is that of the slope's absolute value).
    pub fn validate(&self) -> Result<()> {
        if let Nonlinearity::LeakyRelu { negative_slope } = *self
            && !negative_slope.is_finite()
        {
            return Err(Error::InvalidConfig {
                optimizer: "calculate_gain",
                reason: format!("leaky_relu's negative slope must be finite, not {negative_slope}"),
            });
        }
        Ok(())
    }
}

/// `(fan_in, fan_out)` of a tensor of `shape`, as torch's `_calculate_fan_in_and_fan_out`:
/// `shape[1]` and `shape[0]` times the receptive field (the product of `shape[2..]`; 1 for a
/// matrix). A weight of `nn.Linear(in, out)` has shape `[out, in]`; one of `nn.Conv2d(in, out,
/// (kh, kw))` has `[out, in, kh, kw]`. Fewer than 2 dimensions is an error, as in torch.
pub fn fans(shape: &[u64]) -> Result<(u64, u64)> {
    if shape.len() < 2 {
        return Err(Error::InvalidConfig {
            optimizer: "torch.nn.init",
            reason: format!(
                "fan in and fan out can not be computed for a tensor with fewer than 2 \
                 dimensions (shape {shape:?})"
            ),
        });
    }
    let overflow = || Error::InvalidConfig {
        optimizer: "torch.nn.init",
        reason: format!("the fans of shape {shape:?} overflow 64 bits"),
    };
    let receptive = shape[2..]
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let fan_in = shape[1].checked_mul(receptive).ok_or_else(overflow)?;
    let fan_out = shape[0].checked_mul(receptive).ok_or_else(overflow)?;
    Ok((fan_in, fan_out))
}

/// Elements of a tensor of `shape` (1 for no dimensions, as torch's scalars).
pub fn element_count(shape: &[u64]) -> Result<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::InvalidConfig {
            optimizer: "torch.nn.init",
            reason: format!("shape {shape:?} has more than 2^64 elements"),
        })
}

/// One of `torch.nn.init`'s initialisers, with its arguments. The constructors give torch's
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `xavier_uniform_(gain)`: uniform in [-bound, bound), bound = gain sqrt(6 / (fan_in +
    /// fan_out)) (Glorot & Bengio 2010).
    XavierUniform {
        /// Scales the bound (finite, >= 0): [`Nonlinearity::gain`] of what follows the layer.
        gain: f64,
    },
    /// `xavier_normal_(gain)`: normal with std = gain sqrt(2 / (fan_in + fan_out)).
    XavierNormal {
        /// Scales the standard deviation (finite, >= 0).
        gain: f64,
    },
    /// `kaiming_uniform_(a, mode, nonlinearity)`: uniform in [-bound, bound), bound = sqrt(3)
    /// gain / sqrt(fan) (He et al. 2015).
    KaimingUniform {
        /// The fan that sets the scale.
        mode: FanMode,
        /// What follows the layer; torch's `a` is the slope of [`Nonlinearity::LeakyRelu`].
        nonlinearity: Nonlinearity,
    },
    /// `kaiming_normal_(a, mode, nonlinearity)`: normal with std = gain / sqrt(fan).
    KaimingNormal {
        /// The fan that sets the scale.
        mode: FanMode,
        /// What follows the layer; torch's `a` is the slope of [`Nonlinearity::LeakyRelu`].
        nonlinearity: Nonlinearity,
    },
}

impl Init {
    /// `xavier_uniform_(tensor)`: gain 1.
    pub fn xavier_uniform() -> Self {
        Init::XavierUniform { gain: 1.0 }
    }

    /// `xavier_normal_(tensor)`: gain 1.
    pub fn xavier_normal() -> Self {
        Init::XavierNormal { gain: 1.0 }
    }

    /// `kaiming_uniform_(tensor)`: `a = 0`, `mode = "fan_in"`, `nonlinearity = "leaky_relu"`
    /// (a leaky ReLU of slope 0: gain sqrt(2)).
    pub fn kaiming_uniform() -> Self {
        Init::KaimingUniform {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::LeakyRelu {
                negative_slope: 0.0,
            },
        }
    }

    /// `kaiming_normal_(tensor)`: `a = 0`, `mode = "fan_in"`, `nonlinearity = "leaky_relu"`.
    pub fn kaiming_normal() -> Self {
        Init::KaimingNormal {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::LeakyRelu {
                negative_slope: 0.0,
            },
        }
    }

    /// `kaiming_uniform_(tensor, nonlinearity="relu")`: fan in, gain sqrt(2).
    pub fn kaiming_uniform_relu() -> Self {
        Init::KaimingUniform {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::Relu,
        }
    }

    /// `kaiming_normal_(tensor, nonlinearity="relu")`: fan in, gain sqrt(2).
    pub fn kaiming_normal_relu() -> Self {
        Init::KaimingNormal {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::Relu,
        }
    }

    /// torch's name for the initialiser (`"kaiming_uniform_"`).
    pub fn name(&self) -> &'static str {
        match self {
            Init::XavierUniform { .. } => "xavier_uniform_",
            Init::XavierNormal { .. } => "xavier_normal_",
            Init::KaimingUniform { .. } => "kaiming_uniform_",
            Init::KaimingNormal { .. } => "kaiming_normal_",
        }
    }

    /// The arguments are in their domains: a gain finite and >= 0 (torch's `uniform_` and
    /// `normal_` refuse the negative bound or std a negative gain makes), a leaky ReLU's slope
    /// finite.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Init::XavierUniform { gain } | Init::XavierNormal { gain } => {
                if !(gain.is_finite() && gain >= 0.0) {
                    return Err(Error::InvalidHyperparameter {
                        optimizer: self.name(),
                        name: "gain",
                        value: gain,
                        reason: "must be finite and >= 0",
                    });
                }
                Ok(())
            }
            Init::KaimingUniform { nonlinearity, .. }
            | Init::KaimingNormal { nonlinearity, .. } => nonlinearity.validate(),
        }
    }

    /// The distribution torch draws a tensor of `shape` from (its arithmetic, in float64).
    /// Errors: arguments out of their domains, fewer than 2 dimensions, or a fan of zero (a
    /// tensor with no elements, which [`Optimizer::initialize`](crate::Optimizer::initialize)
    /// and [`fill_buffer`] leave as it is), or a scale past float32's range.
    pub fn distribution(&self, shape: &[u64]) -> Result<Distribution> {
        self.validate()?;
        let (fan_in, fan_out) = fans(shape)?;
        let zero_fan = |which: &str| Error::InvalidConfig {
            optimizer: self.name(),
            reason: format!("{which} of shape {shape:?} is zero: the scale would be infinite"),
        };
        let distribution = match *self {
            Init::XavierUniform { gain } | Init::XavierNormal { gain } => {
                if fan_in + fan_out == 0 {
                    return Err(zero_fan("fan_in + fan_out"));
                }
                // torch: std = gain * math.sqrt(2.0 / float(fan_in + fan_out)).
                let std = gain * (2.0 / (fan_in + fan_out) as f64).sqrt();
                match self {
                    // a = math.sqrt(3.0) * std.
                    Init::XavierUniform { .. } => Distribution::Uniform {
                        bound: 3f64.sqrt() * std,
                    },
                    _ => Distribution::Normal { std },
                }
            }
            Init::KaimingUniform { mode, nonlinearity }
            | Init::KaimingNormal { mode, nonlinearity } => {
                let fan = match mode {
                    FanMode::FanIn => fan_in,
                    FanMode::FanOut => fan_out,
                };
                if fan == 0 {
                    return Err(zero_fan(mode.name()));
                }
                // torch: std = gain / math.sqrt(fan).
                let std = nonlinearity.gain() / (fan as f64).sqrt();
                match self {
                    // bound = math.sqrt(3.0) * std.
                    Init::KaimingUniform { .. } => Distribution::Uniform {
                        bound: 3f64.sqrt() * std,
                    },
                    _ => Distribution::Normal { std },
                }
            }
        };
        if !distribution.scale().is_finite() {
            return Err(Error::InvalidConfig {
                optimizer: self.name(),
                reason: format!("{distribution:?} is past float32's range"),
            });
        }
        Ok(distribution)
    }

    /// What a fill of a tensor of `shape` draws from: `None` for a tensor with no elements,
    /// which torch leaves as it is (after checking the fans, as torch's Xavier does; its
    /// Kaiming checks for no elements first).
    pub(crate) fn plan(&self, shape: &[u64]) -> Result<Option<Distribution>> {
        self.validate()?;
        if matches!(self, Init::XavierUniform { .. } | Init::XavierNormal { .. }) {
            fans(shape)?;
        }
        if element_count(shape)? == 0 {
            return Ok(None);
        }
        self.distribution(shape).map(Some)
    }

    /// The values a fill of a tensor of `shape` writes, computed on the CPU (an empty vector
    /// for a tensor with no elements).
    pub fn values(&self, shape: &[u64], seed: u32) -> Result<Vec<f32>> {
        let Some(distribution) = self.plan(shape)? else {
            return Ok(Vec::new());
        };
        let count = element_count(shape)?;
        Ok((0..count).map(|j| distribution.value(seed, j)).collect())
    }
}

/// What an [`Init`] draws each element of a given shape from, with torch's (float64) scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Uniform in [-bound, bound): `bound` (as a float32) times a uniform value in [-1, 1) of
    /// 24 random bits.
    Uniform {
        /// The half width.
        bound: f64,
    },
    /// Normal with mean 0: `std` (as a float32) times a standard normal value (Box–Muller, of
    /// magnitude at most sqrt(48 ln 2) = 5.77).
    Normal {
        /// The standard deviation.
        std: f64,
    },
}

impl Distribution {
    /// The float32 the kernel scales by: the bound, or the standard deviation.
    pub fn scale(&self) -> f32 {
        match *self {
            Distribution::Uniform { bound } => bound as f32,
            Distribution::Normal { std } => std as f32,
        }
    }

    /// The variance of the values: bound^2 / 3, or std^2.
    pub fn variance(&self) -> f64 {
        match *self {
            Distribution::Uniform { bound } => bound * bound / 3.0,
            Distribution::Normal { std } => std * std,
        }
    }

    /// The value a fill with `seed` writes at element `index` of the tensor (the GPU's bits for
    /// a uniform distribution; within a few ulps of them for a normal one), before it is
    /// stored (a 16-bit parameter holds it rounded to nearest even).
    pub fn value(&self, seed: u32, index: u64) -> f32 {
        self.spec(seed).value(index)
    }

    /// The fill kernel's settings.
    pub(crate) fn spec(&self, seed: u32) -> FillSpec {
        FillSpec {
            seed,
            offset: 0.0,
            scale: self.scale(),
            distribution: match self {
                Distribution::Uniform { .. } => UNIFORM,
                Distribution::Normal { .. } => NORMAL,
            },
        }
    }
}

/// Fills a float32 region of `buffer`, from byte `offset_bytes`, as `init` would a tensor of
/// `shape` (contiguous, row-major): element `j` gets [`Distribution::value`]`(seed, j)`,
/// computed on the device. The buffer needs `BufferUsages::STORAGE` and must belong to `ctx`'s
/// device; the offset must be a multiple of 4 bytes, and the region must lie within the buffer.
/// A shape with no elements writes nothing. Queued: returns without waiting for the GPU. On an
/// error nothing is written.
pub fn fill_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset_bytes: u64,
    shape: &[u64],
    init: &Init,
    seed: u32,
) -> Result<()> {
    fill_buffer_as(ctx, buffer, offset_bytes, Format::F32, shape, init, seed)
}

/// [`fill_buffer`] for a region of values stored in `format`: float32, or bfloat16 or binary16
/// (the float32 value rounded to nearest even, by the kernel), at an offset that is a multiple
/// of the format's size. A 16-bit region may start or end inside a 4-byte word: the other half
/// of that word is kept (read and written back by the one invocation that owns the word, so
/// nothing else may write it meanwhile), and the word must lie within the buffer.
pub fn fill_buffer_as(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset_bytes: u64,
    format: Format,
    shape: &[u64],
    init: &Init,
    seed: u32,
) -> Result<()> {
    let distribution = init.plan(shape)?;
    let len = element_count(shape)?;
    let bad = |reason: String| Error::InvalidConfig {
        optimizer: init.name(),
        reason,
    };
    if format == Format::Q8 {
        return Err(bad(
            "q8 is a format for optimizer states; fill float32, bf16 or f16 values".into(),
        ));
    }
    if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(bad(format!(
            "the buffer lacks BufferUsages::STORAGE (it has {:?})",
            buffer.usage()
        )));
    }
    let bytes = format.bytes();
    if !offset_bytes.is_multiple_of(bytes) {
        return Err(bad(format!(
            "the region starts at byte {offset_bytes}, not a multiple of {bytes} ({} values)",
            format.name()
        )));
    }
    // The kernel binds whole words.
    let end = len
        .checked_mul(bytes)
        .and_then(|b| b.checked_add(offset_bytes))
        .map(|end| end.next_multiple_of(4));
    if end.is_none_or(|end| end > buffer.size()) {
        return Err(bad(format!(
            "{len} {} values from byte {offset_bytes} run past the buffer's end ({} bytes{})",
            format.name(),
            buffer.size(),
            if bytes == 2 {
                ", the last 4-byte word included"
            } else {
                ""
            }
        )));
    }
    let Some(distribution) = distribution else {
        return Ok(());
    };
    // Runs that each fit one binding (bound from the aligned offset at or before them) and one
    // dispatch; an even number of values, so that 16-bit runs keep the region's word parity.
    let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
    let max_per_dim = ctx.limits.max_compute_workgroups_per_dimension as u64;
    let run = (ctx.max_binding_bytes().saturating_sub(align + 4) / bytes)
        .min(max_per_dim * max_per_dim * crate::kernels::WORKGROUP_SIZE as u64)
        / 2
        * 2;
    let run = run.max(2);
    let spans: Vec<View> = (0..len)
        .step_by(run as usize)
        .map(|first| View {
            buffer: buffer.clone(),
            offset: offset_bytes + first * bytes,
            len: (len - first).min(run),
            format,
        })
        .collect();
    // A buffer of another device is a validation error: catch it as an `Error`.
    let scope = crate::engine::scope::GpuErrorScope::push(&ctx.device);
    let filled = fill::fill_spans(ctx, &spans, 0, &distribution.spec(seed));
    scope.pop(&format!("{} of a buffer", init.name()))?;
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15 * b.abs()
    }

    #[test]
    fn fans_are_torchs() {
        assert_eq!(fans(&[300, 100]).unwrap(), (100, 300));
        assert_eq!(fans(&[64, 32, 3, 3]).unwrap(), (32 * 9, 64 * 9));
        assert_eq!(fans(&[8, 4, 5]).unwrap(), (20, 40));
        assert_eq!(fans(&[1_000_003, 1]).unwrap(), (1, 1_000_003));
        assert_eq!(fans(&[0, 5]).unwrap(), (5, 0));
        assert_eq!(fans(&[4, 3, 0]).unwrap(), (0, 0));
        for shape in [&[][..], &[7]] {
            let e = fans(shape).unwrap_err();
            assert!(e.to_string().contains("fewer than 2 dimensions"), "{e}");
        }
        assert!(fans(&[2, 1 << 40, 1 << 30]).is_err());
        assert_eq!(element_count(&[]).unwrap(), 1);
        assert_eq!(element_count(&[64, 32, 3, 3]).unwrap(), 18_432);
        assert!(element_count(&[1 << 40, 1 << 40]).is_err());
    }

    #[test]
    fn gains_are_torchs() {
        let gain =
            |name: &str, param: Option<f64>| Nonlinearity::from_torch(name, param).unwrap().gain();
        for name in [
            "linear",
            "identity",
            "conv1d",
            "conv2d",
            "conv3d",
            "conv_transpose1d",
            "conv_transpose2d",
            "conv_transpose3d",
            "sigmoid",
        ] {
            assert_eq!(gain(name, None), 1.0, "{name}");
        }
        assert_eq!(gain("tanh", None), 5.0 / 3.0);
        assert_eq!(gain("relu", Some(0.3)), 2f64.sqrt());
        assert_eq!(gain("selu", None), 0.75);
        // leaky_relu: 0.01 when no slope is given.
        assert!(close(gain("leaky_relu", None), (2.0 / 1.0001f64).sqrt()));
        assert!(close(gain("leaky_relu", Some(0.2)), (2.0 / 1.04f64).sqrt()));
        assert_eq!(gain("leaky_relu", Some(0.0)), 2f64.sqrt());
        assert_eq!(Nonlinearity::leaky_relu().gain(), gain("leaky_relu", None));
        // nn.Linear's reset_parameters: kaiming_uniform_(w, a=math.sqrt(5)): gain sqrt(1/3).
        assert!(close(
            gain("leaky_relu", Some(5f64.sqrt())),
            (1.0 / 3.0f64).sqrt()
        ));
        assert!(Nonlinearity::from_torch("gelu", None).is_err());
        assert!(Nonlinearity::from_torch("leaky_relu", Some(f64::NAN)).is_err());
        // torch takes a negative slope: the gain of its absolute value.
        assert_eq!(
            gain("leaky_relu", Some(-0.2)),
            gain("leaky_relu", Some(0.2))
        );
    }

    #[test]
    fn scales_are_the_formulas() {
        // xavier_uniform_ on [300, 100]: bound = sqrt(6 / 400).
        let d = Init::xavier_uniform().distribution(&[300, 100]).unwrap();
        let Distribution::Uniform { bound } = d else {
            panic!("{d:?}")
        };
        assert!(close(bound, (6.0f64 / 400.0).sqrt()));
        assert!(close(d.variance(), 2.0 / 400.0));
        // xavier_normal_ with tanh's gain on [20, 30, 5]: std = 5/3 sqrt(2 / 250).
        let d = Init::XavierNormal { gain: 5.0 / 3.0 }
            .distribution(&[20, 30, 5])
            .unwrap();
        assert_eq!(
            d,
            Distribution::Normal {
                std: 5.0 / 3.0 * (2.0f64 / 250.0).sqrt()
            }
        );
        // kaiming_normal_ relu fan_out on [64, 32, 3, 3]: std = sqrt(2) / sqrt(576).
        let d = Init::KaimingNormal {
            mode: FanMode::FanOut,
            nonlinearity: Nonlinearity::Relu,
        }
        .distribution(&[64, 32, 3, 3])
        .unwrap();
        let Distribution::Normal { std } = d else {
            panic!("{d:?}")
        };
        assert!(close(std, 2f64.sqrt() / 24.0));
        // kaiming_uniform_ defaults on [128, 256]: bound = sqrt(3) sqrt(2) / sqrt(256).
        let d = Init::kaiming_uniform().distribution(&[128, 256]).unwrap();
        let Distribution::Uniform { bound } = d else {
            panic!("{d:?}")
        };
        assert!(close(bound, 6f64.sqrt() / 16.0));
        // nn.Linear(100, 10)'s weight: kaiming_uniform_(a=sqrt(5)) gives bound 1 / sqrt(100).
        let d = Init::KaimingUniform {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::LeakyRelu {
                negative_slope: 5f64.sqrt(),
            },
        }
        .distribution(&[10, 100])
        .unwrap();
        assert!(close(d.variance(), 0.01 / 3.0), "{d:?}");
        // selu, fan_in, [50, 49]: std = 0.75 / 7.
        let d = Init::KaimingNormal {
            mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::Selu,
        }
        .distribution(&[50, 49])
        .unwrap();
        assert!(close(d.variance(), (0.75f64 / 7.0).powi(2)));
        assert_eq!(d.scale(), (0.75f64 / 7.0) as f32);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let shape = [10, 10];
        for init in [
            Init::XavierUniform { gain: -1.0 },
            Init::XavierNormal { gain: f64::NAN },
            Init::XavierUniform {
                gain: f64::INFINITY,
            },
            Init::KaimingUniform {
                mode: FanMode::FanIn,
                nonlinearity: Nonlinearity::LeakyRelu {
                    negative_slope: f64::NAN,
                },
            },
            Init::KaimingNormal {
                mode: FanMode::FanOut,
                nonlinearity: Nonlinearity::LeakyRelu {
                    negative_slope: f64::INFINITY,
                },
            },
        ] {
            assert!(init.validate().is_err(), "{init:?}");
            assert!(init.distribution(&shape).is_err(), "{init:?}");
            assert!(init.values(&shape, 1).is_err(), "{init:?}");
        }
        // A scale past float32's range.
        assert!(
            Init::XavierUniform { gain: 1e300 }
                .distribution(&shape)
                .is_err()
        );
        // Zero gain: every value zero.
        let zeros = Init::XavierUniform { gain: 0.0 }.values(&shape, 3).unwrap();
        assert!(zeros.iter().all(|&v| v == 0.0));
        // Fewer than 2 dimensions, for every initialiser.
        for init in [
            Init::xavier_uniform(),
            Init::xavier_normal(),
            Init::kaiming_uniform(),
            Init::kaiming_normal(),
        ] {
            assert!(init.distribution(&[100]).is_err(), "{init:?}");
            assert!(init.distribution(&[]).is_err(), "{init:?}");
        }
        // A zero fan has no scale.
        assert!(Init::kaiming_uniform().distribution(&[4, 0]).is_err());
        assert!(Init::xavier_normal().distribution(&[0, 0]).is_err());
    }

    #[test]
    fn tensors_without_elements_are_left_alone_as_torch_does() {
        // torch's kaiming checks for no elements before the fans; its xavier after them.
        assert_eq!(Init::kaiming_uniform().plan(&[0]).unwrap(), None);
        assert_eq!(Init::kaiming_normal().plan(&[5, 0]).unwrap(), None);
        assert_eq!(Init::xavier_uniform().plan(&[0, 0]).unwrap(), None);
        assert!(Init::xavier_uniform().plan(&[0]).is_err());
        assert!(
            Init::xavier_normal()
                .values(&[3, 0, 2], 1)
                .unwrap()
                .is_empty()
        );
        // Bad arguments are errors all the same.
        assert!(Init::XavierUniform { gain: -1.0 }.plan(&[0, 0]).is_err());
    }

    #[test]
    fn uniform_values_lie_in_the_bound_and_depend_on_seed_and_index() {
        let d = Init::xavier_uniform().distribution(&[300, 100]).unwrap();
        let bound = d.scale();
        let values = Init::xavier_uniform().values(&[300, 100], 9).unwrap();
        assert!(values.iter().all(|&v| -bound <= v && v < bound));
        // Exactly bound * u, u with 24 random bits.
        for (j, &v) in values.iter().enumerate().take(100) {
            let u = v / bound;
            assert_eq!(u * bound, v, "{j}");
        }
        assert_ne!(d.value(9, 0), d.value(10, 0));
        assert_ne!(d.value(9, 5), d.value(9, 5 + (1 << 32)));
    }

    #[test]
    fn normal_values_have_the_normal_moments() {
        let d = Distribution::Normal { std: 1.0 };
        let n = 200_000u64;
        let values: Vec<f64> = (0..n).map(|j| d.value(42, j) as f64).collect();
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let kurtosis = values.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n as f64;
        let within = |k: f64| values.iter().filter(|v| v.abs() < k).count() as f64 / n as f64;
        assert!(mean.abs() < 5.0 / (n as f64).sqrt(), "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
        assert!((kurtosis - 3.0).abs() < 0.1, "{kurtosis}");
        assert!((within(1.0) - 0.682_689).abs() < 0.005, "{}", within(1.0));
        assert!((within(2.0) - 0.954_500).abs() < 0.003, "{}", within(2.0));
        assert!(values.iter().all(|v| v.abs() <= 5.78));
    }
}
