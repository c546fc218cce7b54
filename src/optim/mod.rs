//! The optimizers: one module each, holding the hyperparameters with PyTorch's names and
//! defaults, the validation PyTorch does, the per-step uniform its kernel reads, and a plain
//! float64 CPU reference of the update rule.
//!
//! | name | module | kernel |
//! | --- | --- | --- |
//! | `sgd` | [`sgd`] | `shaders/sgd.wgsl` |
//! | `sgdw` | [`sgdw`] | `shaders/sgd.wgsl` (decoupled) |
//! | `adagrad` | [`adagrad`] | `shaders/adagrad.wgsl` |
//! | `rmsprop` | [`rmsprop`] | `shaders/rmsprop.wgsl` |
//! | `adadelta` | [`adadelta`] | `shaders/adadelta.wgsl` |
//! | `adam` | [`adam`] | `shaders/adam.wgsl` |
//! | `adamw` | [`adamw`] | `shaders/adam.wgsl` (decoupled) |
//! | `nadam` | [`nadam`] | `shaders/nadam.wgsl` |
//! | `radam` | [`radam`] | `shaders/radam.wgsl` |
//! | `adamax` | [`adamax`] | `shaders/adamax.wgsl` |
//! | `lion` | [`lion`] | `shaders/lion.wgsl` |
//! | `rprop` | [`rprop`] | `shaders/rprop.wgsl` |
//! | `asgd` | [`asgd`] | `shaders/asgd.wgsl` |
//! | `schedulefree_adamw` | [`schedulefree_adamw`] | `shaders/schedulefree_adamw.wgsl` |
//! | `lamb` | [`lamb`] | `shaders/lamb.wgsl` (phases, per-tensor sums) |
//!
//! Adding an optimizer: a module here declaring its hyperparameters (`hyperparameters!`:
//! PyTorch's names, defaults and checks) and implementing [`UpdateRule`], its kernel in
//! `shaders/`, and one line in the `optimizers!` list below; then a fixture case and a README row.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::Kernel;

/// A swap of the parameters between training and evaluation mode: `p = lerp(p, state,
/// weight)` for every element, by the optimizer's own kernel with its `SWAP` flag on.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeSwap {
    /// The state the parameters move towards.
    pub state: &'static str,
    /// The interpolation weight.
    pub weight: f64,
    /// The kernel's uniform for the swap (its `…Scalars`, carrying the weight).
    pub scalars: Vec<u8>,
}

/// The per-group scalar state that advances with every applied step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCounter {
    /// Steps applied so far; the step being computed is numbered from 1, as in PyTorch.
    pub step: u64,
    /// NAdam's running product of its momentum coefficients mu_1 ... mu_step (1 elsewhere).
    pub mu_product: f64,
    /// Schedule-Free's running sum of its averaging weights (0 elsewhere).
    #[serde(default)]
    pub weight_sum: f64,
}

impl Default for StepCounter {
    fn default() -> Self {
        Self {
            step: 0,
            mu_product: 1.0,
            weight_sum: 0.0,
        }
    }
}

/// One tensor as the float64 reference steps it.
pub struct ReferenceTensor<'a> {
    /// The parameters, updated in place.
    pub param: &'a mut [f64],
    /// This step's gradient (already unscaled and clipped).
    pub grad: &'a [f64],
    /// One vector per state slot of the kernel (empty for slots the configuration does not
    /// keep), each as long as `param`.
    pub states: &'a mut [Vec<f64>],
}

/// An optimizer's hyperparameters as the engine reads them. `hyperparameters!` writes it from
/// the one declaration of the fields, their defaults and their checks.
pub trait Hyperparameters {
    /// The name the fixture, the command line and the reports use (`"adamw"`).
    fn name(&self) -> &'static str;
    /// The learning rate.
    fn lr(&self) -> f64;
    /// Replaces the learning rate (a schedule's, or `lrs` of a fixture case).
    fn set_lr(&mut self, lr: f64);
    /// Each hyperparameter's own check (PyTorch's range, plus NaN and infinity), in the order
    /// they are declared.
    fn check_each(&self) -> Result<()>;
}

/// One optimizer algorithm: its kernel, the values the kernel reads, the states it keeps and
/// its float64 reference. Adding an optimizer is one module implementing this (with its
/// hyperparameters declared by `hyperparameters!`), its WGSL rule and one line in the
/// `optimizers!` list.
pub trait UpdateRule: Hyperparameters {
    /// The kernel family that runs it.
    fn kernel(&self) -> &'static Kernel;
    /// Values of the kernel's `override` flags, in [`Kernel::flags`] order. The flags also say
    /// which states are kept ([`StateSlot::kept_with`](crate::kernels::StateSlot::kept_with)).
    fn flags(&self) -> Vec<(&'static str, bool)>;
    /// Checks that involve more than one hyperparameter (SGD's Nesterov momentum), after
    /// [`check_each`](Hyperparameters::check_each).
    fn check_together(&self) -> Result<()> {
        Ok(())
    }
    /// Every check PyTorch makes, plus NaN and infinity everywhere.
    fn validate(&self) -> Result<()> {
        self.check_each()?;
        self.check_together()
    }
    /// The value every element of state `state` starts from (0 unless overridden: Adagrad's
    /// `initial_accumulator_value`).
    fn initial_value(&self, _state: &str) -> f64 {
        0.0
    }
    /// For an optimizer whose parameters differ between training and evaluation
    /// (Schedule-Free): the swap to evaluation mode (`to_eval`) or back to training mode,
    /// `p = lerp(p, state, weight)`. `None` for the others.
    fn mode_swap(&self, _to_eval: bool) -> Option<ModeSwap> {
        None
    }
    /// One entry per state slot of the kernel: the initial value of each state this
    /// configuration keeps, `None` for slots whose flag is off.
    fn initial_states(&self) -> Vec<Option<f64>> {
        let flags = self.flags();
        let flag_on = |flag: &str| flags.iter().any(|&(name, on)| on && name == flag);
        self.kernel()
            .states
            .iter()
            .map(|slot| {
                let kept = slot.kept_with.is_none_or(flag_on);
                kept.then(|| self.initial_value(slot.name))
            })
            .collect()
    }
    /// The rest of the step in float64, after the states were stored in their formats (and
    /// loaded again), for a rule whose kernel updates the parameters in a pass of its own from
    /// the states as stored (LAMB: the norms of the update made from the stored moments);
    /// [`reference_step`](Self::reference_step) then updates the states only. Nothing for the
    /// others.
    fn reference_finish(&self, _counter: &StepCounter, _lr: f64, _tensor: ReferenceTensor<'_>) {}
    /// The counter after one more step.
    fn advance(&self, counter: &StepCounter) -> StepCounter {
        StepCounter {
            step: counter.step + 1,
            ..*counter
        }
    }
    /// The counter after `step` steps from the start: what `step` calls of
    /// [`advance`](Self::advance) give, without making them where the counter is the step alone.
    fn counter_at(&self, step: u64) -> StepCounter {
        StepCounter {
            step,
            ..StepCounter::default()
        }
    }
    /// The kernel's per-iteration values (its `…Scalars` struct, as bytes) at learning rate
    /// `lr`: hyperparameters and what depends on the learning rate, nothing that depends on the
    /// step number (the device keeps that: see [`step_factors`](Self::step_factors)).
    fn scalars(&self, lr: f64) -> Vec<u8>;
    /// The parts of step `counter.step` that depend on the step number but not on the learning
    /// rate (bias corrections, NAdam's momentum products, RAdam's rectification), in float64.
    /// The host tabulates them by step; the kernel looks up the row of the device's own step
    /// count, which a skipped step does not advance.
    fn step_factors(&self, _counter: &StepCounter) -> [f64; 4] {
        [0.0; 4]
    }
    /// What [`step_factors`](Self::step_factors) tends to as the step number grows (the table
    /// ends where every factor has reached it in float32); `None` when there are no factors.
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        None
    }
    /// The same step of one tensor in float64 on the CPU.
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>);
    /// The fewest bytes one step must move per element in `storage`: read and write the
    /// parameter, read the gradient, read and write every state kept (a rule with passes of
    /// its own adds theirs).
    fn bytes_per_element(&self, storage: &crate::Storage) -> f64 {
        storage.bytes_per_element(&self.kept_state_names())
    }
    /// The names of the states this configuration keeps.
    fn kept_state_names(&self) -> Vec<&'static str> {
        self.kernel()
            .states
            .iter()
            .zip(self.initial_states())
            .filter(|(_, init)| init.is_some())
            .map(|(slot, _)| slot.name)
            .collect()
    }
}

/// Where an optimizer's weight decay goes: into the gradient as an L2 penalty ([`L2`]: Adam,
/// SGD) or onto the parameter, decoupled ([`Decoupled`]: AdamW, SGDW). A type parameter, so that
/// each pair is two types (two registry entries, two names, two sets of defaults) declared once.
pub trait WeightDecay: Clone + std::fmt::Debug + PartialEq {
    /// Whether the decay is decoupled from the gradient.
    const DECOUPLED: bool;
}

/// Weight decay added to the gradient (`g + weight_decay * p`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct L2;

/// Weight decay applied to the parameter (`p - lr * weight_decay * p`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Decoupled;

impl WeightDecay for L2 {
    const DECOUPLED: bool = false;
}

impl WeightDecay for Decoupled {
    const DECOUPLED: bool = true;
}

/// The documentation of a hyperparameter that means the same in every optimizer that has it
/// (empty for the others, which carry their own).
macro_rules! common_doc {
    (lr) => {
        "Learning rate."
    };
    (beta1) => {
        "Decay of the first moment's running average (`betas[0]`)."
    };
    (beta2) => {
        "Decay of the second moment's running average (`betas[1]`)."
    };
    (eps) => {
        "Added to the denominator, for numerical stability."
    };
    (maximize) => {
        "Ascend the objective instead of descending it."
    };
    ($other:ident) => {
        ""
    };
}

/// Declares an optimizer's hyperparameters once: each field with its PyTorch name, its default
/// and (for numbers) its check from [`check`]. From it come the struct (serde, unknown keys
/// refused, missing keys defaulted), its `Default` and its [`Hyperparameters`]. An optional
/// type parameter `<W: WeightDecay>` makes one declaration serve an optimizer and its
/// decoupled-decay twin (Adam and AdamW): name and defaults may read `W::DECOUPLED`, and the
/// struct gets a `weight_decay_kind` marker field (filled by `..Default::default()`).
macro_rules! hyperparameters {
    (
        $(#[$meta:meta])*
        pub struct $ty:ident $(<$decay:ident: WeightDecay>)? {
            $($(#[$field_meta:meta])* pub $field:ident: $field_ty:ty = $default:expr
                $(=> $check:ident)?,)*
        }
        name: $name:expr
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields, bound = "")]
        pub struct $ty $(<$decay: $crate::optim::WeightDecay>)? {
            $(
                #[doc = common_doc!($field)]
                $(#[$field_meta])*
                #[doc = concat!("\n\nDefault: `", stringify!($default), "`.")]
                pub $field: $field_ty,
            )*
            $(
                /// L2 or decoupled weight decay: a type, not a value (see
                /// [`WeightDecay`](crate::optim::WeightDecay)).
                #[serde(skip)]
                pub weight_decay_kind: std::marker::PhantomData<$decay>,
            )?
        }

        impl $(<$decay: $crate::optim::WeightDecay>)? Default for $ty $(<$decay>)? {
            fn default() -> Self {
                Self {
                    $($field: $default,)*
                    $(weight_decay_kind: std::marker::PhantomData::<$decay>,)?
                }
            }
        }

        impl $(<$decay: $crate::optim::WeightDecay>)? $crate::optim::Hyperparameters
            for $ty $(<$decay>)?
        {
            fn name(&self) -> &'static str {
                $name
            }
            fn lr(&self) -> f64 {
                self.lr
            }
            fn set_lr(&mut self, lr: f64) {
                self.lr = lr;
            }
            fn check_each(&self) -> $crate::error::Result<()> {
                $($($crate::optim::check::$check(self.name(), stringify!($field), self.$field)?;)?)*
                Ok(())
            }
        }
    };
}

/// Declares every optimizer once: its module, its type and the name the fixtures, the command
/// line and the reports use (the type's [`UpdateRule::name`]). From this one list come the
/// modules, the [`OptimizerConfig`] enum (serialized as `{"optimizer": name, "hyper": {...}}`),
/// [`OPTIMIZER_NAMES`], the `From` conversions and the dispatch to each optimizer's
/// [`UpdateRule`]. Adding an optimizer is one line here.
macro_rules! optimizers {
    ($($module:ident :: $ty:ident => $name:literal),* $(,)?) => {
        $(pub mod $module;)*
        $(pub use $module::$ty;)*

        /// Any of the optimizers, as a value (what a parameter group holds).
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "optimizer", content = "hyper", deny_unknown_fields)]
        pub enum OptimizerConfig {
            $(
                /// This optimizer, with its hyperparameters.
                #[serde(rename = $name)] $ty($ty),
            )*
        }

        /// Every optimizer name, in the order the tables list them.
        pub const OPTIMIZER_NAMES: [&str; [$($name),*].len()] = [$($name),*];

        $(impl From<$ty> for OptimizerConfig {
            fn from(c: $ty) -> Self {
                OptimizerConfig::$ty(c)
            }
        })*

        impl OptimizerConfig {
            /// The optimizer it holds, as its update rule.
            pub fn rule(&self) -> &dyn UpdateRule {
                match self {
                    $(OptimizerConfig::$ty(c) => c,)*
                }
            }

            /// The same, to change (the learning rate).
            pub fn rule_mut(&mut self) -> &mut dyn UpdateRule {
                match self {
                    $(OptimizerConfig::$ty(c) => c,)*
                }
            }
        }
    };
}

pub mod adafactor;
pub mod lbfgs;
pub mod muon;

pub use adafactor::Adafactor;
pub use adam::AdamConfig;
pub use muon::Muon;
pub use sgd::SgdConfig;

optimizers! {
    sgd::Sgd => "sgd",
    sgdw::Sgdw => "sgdw",
    adagrad::Adagrad => "adagrad",
    rmsprop::RmsProp => "rmsprop",
    adadelta::Adadelta => "adadelta",
    adam::Adam => "adam",
    adamw::AdamW => "adamw",
    nadam::NAdam => "nadam",
    radam::RAdam => "radam",
    adamax::Adamax => "adamax",
    lion::Lion => "lion",
    rprop::Rprop => "rprop",
    asgd::Asgd => "asgd",
    schedulefree_adamw::ScheduleFreeAdamW => "schedulefree_adamw",
    lamb::Lamb => "lamb",
}

/// Every state name some optimizer's kernel declares, each once, in the optimizers' order.
pub fn all_state_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for optimizer in OPTIMIZER_NAMES {
        let config = OptimizerConfig::default_for(optimizer).expect("every optimizer has defaults");
        for name in config.kernel().state_names() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// `name` as the kernels spell it (a `'static` string), if some optimizer keeps a state so
/// named.
pub(crate) fn known_state_name(name: &str) -> Option<&'static str> {
    all_state_names().into_iter().find(|n| *n == name)
}

impl OptimizerConfig {
    /// The names of the states this configuration keeps, in binding order (AMSGrad's maximum
    /// only with `amsgrad`, and so on).
    pub fn state_names(&self) -> Vec<&'static str> {
        self.kept_state_names()
    }

    /// Its swap to evaluation mode (`to_eval`) or back ([`UpdateRule::mode_swap`]), or the
    /// error that it has none.
    pub fn swap_for(&self, to_eval: bool) -> Result<ModeSwap> {
        let name = self.name();
        self.mode_swap(to_eval).ok_or_else(|| Error::InvalidConfig {
            optimizer: name,
            reason: format!(
                "{name} has no evaluation mode: its parameters are the same for training and \
                 evaluation"
            ),
        })
    }

    /// The optimizer called `name` with PyTorch's default hyperparameters.
    pub fn default_for(name: &str) -> Result<Self> {
        Self::from_hyper(name, &serde_json::Value::Object(Default::default()))
    }

    /// The optimizer called `name` with the hyperparameters of a JSON object in PyTorch's
    /// argument names (`betas` split into `beta1`, `beta2`); missing keys take the defaults.
    pub fn from_hyper(name: &str, hyper: &serde_json::Value) -> Result<Self> {
        let Some(known) = OPTIMIZER_NAMES.iter().find(|n| **n == name) else {
            return Err(Error::InvalidConfig {
                optimizer: "optimizer",
                reason: format!(
                    "unknown optimizer `{name}`; the optimizers are: {}",
                    OPTIMIZER_NAMES.join(", ")
                ),
            });
        };
        let tagged = serde_json::json!({ "optimizer": name, "hyper": hyper });
        serde_json::from_value(tagged).map_err(|e| Error::InvalidConfig {
            optimizer: known,
            reason: e.to_string(),
        })
    }
}

impl Hyperparameters for OptimizerConfig {
    fn name(&self) -> &'static str {
        self.rule().name()
    }
    fn lr(&self) -> f64 {
        self.rule().lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.rule_mut().set_lr(lr)
    }
    fn check_each(&self) -> Result<()> {
        self.rule().check_each()
    }
}

impl UpdateRule for OptimizerConfig {
    fn kernel(&self) -> &'static Kernel {
        self.rule().kernel()
    }
    fn flags(&self) -> Vec<(&'static str, bool)> {
        self.rule().flags()
    }
    fn check_together(&self) -> Result<()> {
        self.rule().check_together()
    }
    fn initial_value(&self, state: &str) -> f64 {
        self.rule().initial_value(state)
    }
    fn mode_swap(&self, to_eval: bool) -> Option<ModeSwap> {
        self.rule().mode_swap(to_eval)
    }
    fn advance(&self, counter: &StepCounter) -> StepCounter {
        self.rule().advance(counter)
    }
    fn counter_at(&self, step: u64) -> StepCounter {
        self.rule().counter_at(step)
    }
    fn scalars(&self, lr: f64) -> Vec<u8> {
        self.rule().scalars(lr)
    }
    fn step_factors(&self, counter: &StepCounter) -> [f64; 4] {
        self.rule().step_factors(counter)
    }
    fn step_factors_limit(&self) -> Option<[f64; 4]> {
        self.rule().step_factors_limit()
    }
    fn reference_step(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        self.rule().reference_step(counter, lr, tensor)
    }
    fn reference_finish(&self, counter: &StepCounter, lr: f64, tensor: ReferenceTensor<'_>) {
        self.rule().reference_finish(counter, lr, tensor)
    }
    fn bytes_per_element(&self, storage: &crate::Storage) -> f64 {
        self.rule().bytes_per_element(storage)
    }
}

/// Consecutive rows of [`UpdateRule::step_factors`], in float32, as the device reads them.
#[derive(Clone, Debug, PartialEq)]
pub struct FactorRows {
    /// The factors of steps `start + 1`, `start + 2`, ...
    pub rows: Vec<[f32; 4]>,
    /// Whether the last row has reached the factors' limit (every factor within 2^-30 of it,
    /// so that it rounds to the limit in float32): it then holds for every later step too.
    pub converged: bool,
}

/// The factors of the `max_rows` steps after `start` (fewer if they converge first), computed
/// in float64 and rounded once. There is no limit on how close to 1 a beta may be: the engine
/// keeps a window of rows ahead of the device's step and slides it as steps are taken. A rule
/// without factors gets one unused row.
pub fn step_factor_rows(
    rule: &impl UpdateRule,
    start: &StepCounter,
    max_rows: usize,
) -> FactorRows {
    let Some(limit) = rule.step_factors_limit() else {
        return FactorRows {
            rows: vec![[0.0; 4]],
            converged: true,
        };
    };
    let converged = |f: &[f64; 4]| {
        f.iter()
            .zip(&limit)
            .all(|(v, l)| (v - l).abs() <= 2f64.powi(-30) * l.abs().max(1e-30))
    };
    let mut rows = Vec::new();
    let mut counter = *start;
    while rows.len() < max_rows.max(1) {
        counter = rule.advance(&counter);
        let factors = rule.step_factors(&counter);
        rows.push(factors.map(|v| v as f32));
        if converged(&factors) {
            return FactorRows {
                rows,
                converged: true,
            };
        }
    }
    FactorRows {
        rows,
        converged: false,
    }
}

/// Every kernel family (optimizers that share one, such as Adam and AdamW, count once), for
/// the shader tests.
pub fn all_kernels() -> Vec<&'static Kernel> {
    let mut kernels: Vec<&'static Kernel> = Vec::new();
    for name in OPTIMIZER_NAMES {
        let kernel = OptimizerConfig::default_for(name)
            .expect("every registered optimizer has defaults")
            .kernel();
        if !kernels.iter().any(|k| std::ptr::eq(*k, kernel)) {
            kernels.push(kernel);
        }
    }
    kernels
}

/// The sign, 0 for 0 (torch's `sign` and WGSL's, which Lion and Rprop step by).
pub(crate) fn sign(x: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x.signum() }
}

/// Checks shared by the optimizers' `validate`.
pub(crate) mod check {
    use crate::error::{Error, Result};

    /// A finite value >= 0 (learning rates, eps, weight decay, momentum, ...).
    pub fn non_negative(optimizer: &'static str, name: &'static str, value: f64) -> Result<()> {
        if value.is_nan() {
            return Err(invalid(optimizer, name, value, "must not be NaN"));
        }
        if !value.is_finite() {
            return Err(invalid(optimizer, name, value, "must be finite"));
        }
        if value < 0.0 {
            return Err(invalid(optimizer, name, value, "must be >= 0"));
        }
        Ok(())
    }

    /// A finite value, of either sign (SGD's dampening: torch checks nothing there).
    pub fn finite(optimizer: &'static str, name: &'static str, value: f64) -> Result<()> {
        if value.is_nan() {
            return Err(invalid(optimizer, name, value, "must not be NaN"));
        }
        if !value.is_finite() {
            return Err(invalid(optimizer, name, value, "must be finite"));
        }
        Ok(())
    }

    /// A value in [0, 1], as torch checks Adadelta's rho.
    pub fn closed_unit_interval(
        optimizer: &'static str,
        name: &'static str,
        value: f64,
    ) -> Result<()> {
        if value.is_nan() {
            return Err(invalid(optimizer, name, value, "must not be NaN"));
        }
        if !(0.0..=1.0).contains(&value) {
            return Err(invalid(optimizer, name, value, "must be in [0, 1]"));
        }
        Ok(())
    }

    /// A value in [0, 1) (betas).
    pub fn unit_interval(optimizer: &'static str, name: &'static str, value: f64) -> Result<()> {
        if value.is_nan() {
            return Err(invalid(optimizer, name, value, "must not be NaN"));
        }
        if !(0.0..1.0).contains(&value) {
            return Err(invalid(optimizer, name, value, "must be in [0, 1)"));
        }
        Ok(())
    }

    fn invalid(
        optimizer: &'static str,
        name: &'static str,
        value: f64,
        reason: &'static str,
    ) -> Error {
        Error::InvalidHyperparameter {
            optimizer,
            name,
            value,
            reason,
        }
    }
}

/// `start + weight * (end - start)` as torch's `lerp` (and the kernels' `lerp_to`) compute it:
/// from the nearer end, so that a weight of 1 gives `end` exactly.
pub(crate) fn lerp(start: f64, end: f64, weight: f64) -> f64 {
    if weight < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// The gradient a step descends along, as the kernels' `load_descent_grad` and their L2 decay
/// give it: negated with `maximize`, plus the L2 penalty `weight_decay * param`.
pub(crate) fn l2_descent_grad(grad: f64, param: f64, maximize: bool, weight_decay: f64) -> f64 {
    let g = if maximize { -grad } else { grad };
    if weight_decay != 0.0 {
        g + weight_decay * param
    } else {
        g
    }
}

/// `values` as little-endian bytes of `T`, the uniform's layout.
pub(crate) fn uniform_bytes<T: bytemuck::Pod>(value: &T) -> Vec<u8> {
    bytemuck::bytes_of(value).to_vec()
}

/// Splits the reference's state slots into `N` mutable vectors.
pub(crate) fn slots<const N: usize>(states: &mut [Vec<f64>]) -> &mut [Vec<f64>; N] {
    states
        .try_into()
        .unwrap_or_else(|_| panic!("expected {N} state slots"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_optimizer_answers_to_its_name() {
        for name in OPTIMIZER_NAMES {
            let config = OptimizerConfig::default_for(name).unwrap();
            assert_eq!(config.name(), name);
            config.validate().unwrap();
            let text = serde_json::to_string(&config).unwrap();
            assert_eq!(
                serde_json::from_str::<OptimizerConfig>(&text).unwrap(),
                config
            );
        }
        assert_eq!(all_kernels().len(), 13);
    }

    #[test]
    fn a_config_with_unknown_keys_is_refused() {
        let ok: OptimizerConfig =
            serde_json::from_str(r#"{"optimizer": "adam", "hyper": {"lr": 0.1}}"#).unwrap();
        assert_eq!(ok.lr(), 0.1);
        for bad in [
            r#"{"optimizer": "adam", "hyper": {"lr": 0.1}, "lr": null}"#,
            r#"{"optimizer": "adam", "hyper": {"lr": 0.1, "momentum": 0.9}}"#,
        ] {
            assert!(
                serde_json::from_str::<OptimizerConfig>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn counters_at_a_step_are_the_ones_the_steps_make() {
        let rules: [OptimizerConfig; 3] = [
            Adam::default().into(),
            NAdam::default().into(),
            NAdam {
                beta1: 0.999999,
                momentum_decay: 1e9,
                ..Default::default()
            }
            .into(),
        ];
        for rule in rules {
            let mut counter = StepCounter::default();
            for step in 1..=3000u64 {
                counter = rule.advance(&counter);
                if step % 500 == 0 {
                    assert_eq!(rule.counter_at(step), counter, "{rule:?} at {step}");
                }
            }
        }
    }
}
