//! Conformance with PyTorch: replays the trajectories of `data/torch-optim.json` (computed by
//! `torch.optim` in float64; format `optimizer-conformance/1`, see `data/FORMAT.md`) on the GPU
//! and on the CPU reference, and measures how far each lands from PyTorch.

use serde::{Deserialize, Serialize};

use crate::context::{AdapterSummary, GpuContext};
use crate::engine::control::{GradScaler, TrainingOptions};
use crate::engine::{Optimizer, Role, TensorId};
use crate::error::{Error, Result};
use crate::optim::lbfgs::{self, HostVectors, Lbfgs, LbfgsState, Objective};
use crate::optim::{Hyperparameters, OPTIMIZER_NAMES, OptimizerConfig, UpdateRule};
use crate::reference::ReferenceGroup;
use crate::schedule::Schedule;
use crate::shaped::{SHAPED_OPTIMIZER_NAMES, ShapedConfig, ShapedOptimizer, ShapedReference};
use crate::storage::{Format, Storage};
use crate::vectors::GpuLbfgs;

/// The fixture shipped in the binary (a byte-identical copy of the shared one).
pub const BUILTIN_FIXTURE: &str = include_str!("../../data/torch-optim.json");

/// Every fixture the crate ships (byte-identical copies of the shared ones): torch.optim,
/// reduced-precision storage, the optimizers of the next issue. `conformance` runs them all
/// when it is given no file.
pub const SHIPPED_FIXTURES: [(&str, &str); 3] = [
    ("torch-optim.json", BUILTIN_FIXTURE),
    ("formats.json", include_str!("../../data/formats.json")),
    (
        "more-optimizers.json",
        include_str!("../../data/more-optimizers.json"),
    ),
];

/// The whole fixture file.
#[derive(Clone, Debug, Deserialize)]
pub struct Fixture {
    /// The format's name and version; only `optimizer-conformance/1` is read.
    pub format: String,
    /// What computed the expected values (the PyTorch version and how).
    pub source: String,
    /// The pass thresholds of every case and schedule.
    pub tolerance: Tolerance,
    /// The optimizer trajectories.
    pub cases: Vec<Case>,
    /// The learning-rate schedules.
    pub schedules: Vec<FixtureSchedule>,
}

/// Pass thresholds.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Tolerance {
    /// Largest relative L2 error of the parameters after any step.
    pub rel_l2: f64,
    /// Largest relative error of a scheduled learning rate.
    pub lr_rel: f64,
}

/// One trajectory: an optimizer, starting parameters, the gradients of each step and the
/// parameters PyTorch produced after each step.
#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    /// A name unique within the fixture.
    pub name: String,
    /// The optimizer's name (`adamw`), as [`OPTIMIZER_NAMES`] lists them.
    pub optimizer: String,
    /// The hyperparameters by PyTorch's names (`betas` split into `beta1`, `beta2`); a missing
    /// one takes PyTorch's default.
    pub hyper: serde_json::Value,
    /// The shape of each parameter tensor of the case's one group.
    pub shapes: Vec<Vec<u64>>,
    /// The starting values, one flat row-major list per tensor.
    pub params: Vec<Vec<f64>>,
    /// `grads[step][tensor]` (absent in objective-driven cases).
    #[serde(default)]
    pub grads: Vec<Vec<Vec<f64>>>,
    /// `expected[step][tensor]`.
    #[serde(default)]
    pub expected: Vec<Vec<Vec<f64>>>,
    /// The learning rate of each step, overriding `hyper.lr`.
    #[serde(default)]
    pub lrs: Option<Vec<f64>>,
    /// The `max_norm` to clip the gradients to before each step, as
    /// `torch.nn.utils.clip_grad_norm_`.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// A fixed loss scale the gradients carry; the step divides them by it first.
    #[serde(default)]
    pub grad_scale: Option<f64>,
    /// An infinity put into one gradient; that step must be skipped whole.
    #[serde(default)]
    pub inject_inf: Option<InjectInf>,
    /// Storage types (`formats.json`, FORMAT-formats.md); only all-float32 runs here yet.
    #[serde(default)]
    pub dtypes: Option<serde_json::Value>,
    /// A per-case tolerance, `{"rel_l2": x}`, replacing the fixture's.
    #[serde(default)]
    pub tolerance: Option<CaseTolerance>,
    /// The objective L-BFGS minimizes through its closure (`more-optimizers.json`).
    #[serde(default)]
    pub objective: Option<serde_json::Value>,
    /// `losses[k]` (L-BFGS): what the k-th `step(closure)` call returned.
    #[serde(default)]
    pub losses: Option<Vec<f64>>,
    /// `expected_ax[step][tensor]` (ASGD): the averaged parameters, state `ax`, after each
    /// step; compared as `expected` is.
    #[serde(default)]
    pub expected_ax: Option<Vec<Vec<Vec<f64>>>>,
    /// `expected_eval[tensor]` (Schedule-Free): the parameters in evaluation mode after the
    /// last step; compared once, after the steps.
    #[serde(default)]
    pub expected_eval: Option<Vec<Vec<f64>>>,
}

/// A case's own pass threshold.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct CaseTolerance {
    /// Largest relative L2 error of the parameters after any step.
    pub rel_l2: f64,
}

/// Before step `step`, element `index` of tensor `tensor`'s gradient becomes +inf.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct InjectInf {
    /// The step (from 0).
    pub step: usize,
    /// The tensor's index in the case.
    pub tensor: usize,
    /// The element's index in the tensor.
    pub index: usize,
}

/// A learning-rate schedule and the rates PyTorch's scheduler produced.
#[derive(Clone, Debug, Deserialize)]
pub struct FixtureSchedule {
    /// A name unique within the fixture.
    pub name: String,
    /// The rate the schedule starts from (the optimizer's `lr`).
    pub base_lr: f64,
    /// The schedule, as `{"kind": ..., args}`.
    pub schedule: Schedule,
    /// PyTorch's rate at iterations 0, 1, ...
    pub lrs: Vec<f64>,
}

impl FixtureSchedule {
    /// The schedule's rates against PyTorch's, each within `tolerance` relative.
    pub fn run(&self, tolerance: f64) -> ScheduleResult {
        let worst = self
            .lrs
            .iter()
            .enumerate()
            .map(|(t, &expected)| {
                let lr = self.schedule.lr(self.base_lr, t as u64);
                (lr - expected).abs() / expected.abs().max(f64::MIN_POSITIVE)
            })
            .fold(0.0, worse);
        ScheduleResult {
            name: self.name.clone(),
            status: if self.schedule.validate().is_ok() && worst <= tolerance {
                Status::Pass
            } else {
                Status::Fail
            },
            max_rel_error: worst,
        }
    }
}

/// Outcome of one case or schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Within the tolerance.
    Pass,
    /// Past the tolerance, or the run failed (a case's `note` says why).
    Fail,
    /// The case needs something this engine does not do yet (an optimizer, a storage type);
    /// `note` says what. Not a failure.
    Unsupported,
}

/// One row of the conformance table.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// The optimizer's name.
    pub optimizer: String,
    /// Steps in the case's trajectory.
    pub steps: usize,
    /// Whether it passed.
    pub status: Status,
    /// Worst relative L2 error over the steps, GPU (float32) against PyTorch; absent when the
    /// case did not run. NaN and infinities are written as the strings "NaN", "inf", "-inf".
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_error_option"
    )]
    pub gpu_rel_l2: Option<f64>,
    /// The same for the CPU reference (float64).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_error_option"
    )]
    pub cpu_rel_l2: Option<f64>,
    /// Why a case failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One schedule's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleResult {
    /// The schedule's name.
    pub name: String,
    /// Whether every rate was within the tolerance (and the schedule valid).
    pub status: Status,
    /// Largest relative error of a rate against PyTorch's.
    #[serde(serialize_with = "serialize_error")]
    pub max_rel_error: f64,
}

/// An error as a JSON number, or, when it is not finite (which JSON numbers cannot say and
/// serde_json would write as `null`), as the string "NaN", "inf" or "-inf".
fn serialize_error<S: serde::Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else {
        serializer.serialize_str(&non_finite_name(*value))
    }
}

fn serialize_error_option<S: serde::Serializer>(
    value: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => serialize_error(v, serializer),
        None => serializer.serialize_none(),
    }
}

/// "NaN", "inf" or "-inf".
fn non_finite_name(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

/// Everything `wgpu-optim conformance --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The adapter the GPU side ran on.
    pub adapter: AdapterSummary,
    /// One per case, in the fixture's order.
    pub cases: Vec<CaseResult>,
    /// One per schedule, in the fixture's order.
    pub schedules: Vec<ScheduleResult>,
}

impl Report {
    /// True when no case and no schedule failed.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.status != Status::Fail)
            && self.schedules.iter().all(|s| s.status != Status::Fail)
    }
}

impl Fixture {
    /// Parses fixture text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let bad = |reason: String| Error::Fixture {
            path: origin.into(),
            reason,
        };
        // The format first: a file of another format (a side file of float32 errors, say) is
        // named as such, not reported by the first field it lacks.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some("optimizer-conformance/1") => {}
            Some(other) => {
                return Err(bad(format!(
                    "unknown format `{other}` (a fixture of cases is `optimizer-conformance/1`)"
                )));
            }
            None => return Err(bad("no `format` field".into())),
        }
        let fixture: Fixture = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if fixture.cases.is_empty() && fixture.schedules.is_empty() {
            return Err(Error::Fixture {
                path: origin.into(),
                reason: "it has no cases and no schedules: nothing to check".into(),
            });
        }
        for case in fixture.cases.iter().filter(|c| c.unsupported().is_none()) {
            case.check_shapes().map_err(|reason| Error::Fixture {
                path: origin.into(),
                reason: format!("case {}: {reason}", case.name),
            })?;
        }
        Ok(fixture)
    }

    /// Every fixture built into the binary, by file name.
    pub fn shipped() -> Vec<(&'static str, Self)> {
        SHIPPED_FIXTURES
            .iter()
            .map(|(name, text)| {
                let fixture = Self::parse(text, &format!("built-in {name}"))
                    .expect("the shipped fixtures parse");
                (*name, fixture)
            })
            .collect()
    }

    /// The built-in torch.optim fixture.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_FIXTURE, "built-in torch-optim.json")
            .expect("the built-in fixture parses")
    }

    /// Reads and parses a fixture file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Fixture {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// Relative L2 distance of `out` from `expected`, over all tensors together.
pub fn rel_l2<'a>(
    out: impl IntoIterator<Item = &'a [f64]>,
    expected: impl IntoIterator<Item = &'a [f64]>,
) -> f64 {
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (o, e) in out.into_iter().zip(expected) {
        assert_eq!(o.len(), e.len());
        for (a, b) in o.iter().zip(e) {
            err += (a - b) * (a - b);
            norm += b * b;
        }
    }
    if norm == 0.0 {
        err.sqrt()
    } else {
        (err / norm).sqrt()
    }
}

impl Case {
    /// Why this engine cannot run the case yet, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        if self.is_shaped() || self.is_lbfgs() {
            return self.storage().err();
        }
        if !OPTIMIZER_NAMES.contains(&self.optimizer.as_str()) {
            return Some(format!(
                "optimizer `{}` is not implemented (the optimizers are: {})",
                self.optimizer,
                OPTIMIZER_NAMES.join(", ")
            ));
        }
        if self.objective.is_some() {
            return Some(
                "cases driven by an objective (closures, losses) are not supported".into(),
            );
        }
        if self.expected_eval.is_some() && self.config().is_ok_and(|c| c.mode_swap(true).is_none())
        {
            return Some(format!(
                "{} has no evaluation mode (expected_eval)",
                self.optimizer
            ));
        }
        if self.expected_ax.is_some()
            && self
                .config()
                .is_ok_and(|c| !c.state_names().contains(&"ax"))
        {
            return Some(format!(
                "{} keeps no averaged parameters (expected_ax)",
                self.optimizer
            ));
        }
        self.storage().err()
    }

    /// The storage the case's `dtypes` ask for (FORMAT-formats.md), or why it cannot be run.
    pub fn storage(&self) -> std::result::Result<Storage, String> {
        let Some(dtypes) = &self.dtypes else {
            return Ok(Storage::F32);
        };
        let format = |key: &str, states: bool| -> std::result::Result<Format, String> {
            match dtypes.get(key).and_then(|v| v.as_str()).unwrap_or("f32") {
                "f32" => Ok(Format::F32),
                "bf16" => Ok(Format::Bf16),
                "f16" => Ok(Format::F16),
                "q8" if states => Ok(Format::Q8),
                other => Err(format!("storage {dtypes}: unknown {key} type `{other}`")),
            }
        };
        let master_weights = match dtypes.get("master_weights") {
            None => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => return Err(format!("storage {dtypes}: master_weights {other}")),
        };
        let storage = Storage {
            param: format("param", false)?,
            grad: format("grad", false)?,
            states: format("state", true)?,
            master_weights,
            ..Storage::F32
        };
        storage
            .validate()
            .map_err(|e| format!("storage {dtypes}: {e}"))?;
        Ok(storage)
    }

    /// Consistency of shapes, parameters, gradients and expectations.
    fn check_shapes(&self) -> std::result::Result<(), String> {
        let lens: Vec<usize> = self
            .shapes
            .iter()
            .map(|s| s.iter().product::<u64>() as usize)
            .collect();
        let matches = |rows: &[Vec<f64>]| rows.iter().map(Vec::len).eq(lens.iter().copied());
        if !matches(&self.params) {
            return Err("params do not match shapes".into());
        }
        if self.objective.is_some() {
            if self
                .losses
                .as_ref()
                .is_none_or(|l| l.len() != self.expected.len())
            {
                return Err("an objective case needs one loss per expected step".into());
            }
            if !self.expected.iter().all(|e| matches(e)) {
                return Err("a step's expected values do not match shapes".into());
            }
            return Ok(());
        }
        if self.grads.len() != self.expected.len() {
            return Err("grads and expected have different step counts".into());
        }
        if !self.grads.iter().all(|g| matches(g)) || !self.expected.iter().all(|e| matches(e)) {
            return Err("a step's grads or expected values do not match shapes".into());
        }
        if let Some(ax) = &self.expected_ax
            && (ax.len() != self.grads.len() || !ax.iter().all(|e| matches(e)))
        {
            return Err("expected_ax does not have one row per step, shaped as the tensors".into());
        }
        if self.expected_eval.as_ref().is_some_and(|e| !matches(e)) {
            return Err("expected_eval is not shaped as the tensors".into());
        }
        if self
            .lrs
            .as_ref()
            .is_some_and(|l| l.len() != self.grads.len())
        {
            return Err("lrs does not have one rate per step".into());
        }
        Ok(())
    }

    /// Steps in the trajectory.
    pub fn steps(&self) -> usize {
        self.expected.len()
    }

    /// Clipping and loss scaling as the case asks: the fixture's scale is fixed.
    pub fn options(&self) -> TrainingOptions {
        TrainingOptions {
            max_grad_norm: self.clip_grad_norm,
            grad_scaler: self.grad_scale.map(GradScaler::fixed),
            // FORMAT.md: a step with an injected infinity is skipped whole, scaler or not.
            skip_nonfinite: self.inject_inf.is_some(),
            ..Default::default()
        }
    }

    /// The gradients of step `k`, with the injected infinity if the case has one there.
    pub fn grads_at(&self, k: usize) -> Vec<Vec<f64>> {
        let mut grads = self.grads[k].clone();
        if let Some(inject) = self.inject_inf.filter(|i| i.step == k) {
            grads[inject.tensor][inject.index] = f64::INFINITY;
        }
        grads
    }

    /// The optimizer configuration the case describes.
    pub fn config(&self) -> Result<OptimizerConfig> {
        OptimizerConfig::from_hyper(&self.optimizer, &self.hyper)
    }

    /// The learning rate of step `k` (from 0).
    fn lr_at(&self, k: usize, config: &OptimizerConfig) -> f64 {
        self.lrs.as_ref().map_or(config.lr(), |l| l[k])
    }

    /// [`storage`](Self::storage) as the library's error.
    fn storage_or_error(&self) -> Result<Storage> {
        self.storage()
            .map_err(|reason| crate::Error::InvalidConfig {
                optimizer: "storage",
                reason,
            })
    }

    /// Whether the case's optimizer is one over shaped tensors (Adafactor, Muon).
    fn is_shaped(&self) -> bool {
        SHAPED_OPTIMIZER_NAMES.contains(&self.optimizer.as_str())
    }

    /// The case's shapes, as sizes.
    fn shape_sizes(&self) -> Vec<Vec<usize>> {
        self.shapes
            .iter()
            .map(|s| s.iter().map(|&d| d as usize).collect())
            .collect()
    }

    /// Whether the case is L-BFGS on an objective.
    fn is_lbfgs(&self) -> bool {
        self.optimizer == "lbfgs"
    }

    /// An L-BFGS case: its configuration, objective and flat starting point.
    fn lbfgs_setup(&self) -> Result<(Lbfgs, Objective, Vec<f64>)> {
        let config = Lbfgs::from_hyper(&self.hyper)?;
        let objective =
            Objective::from_json(
                self.objective
                    .as_ref()
                    .ok_or_else(|| Error::InvalidConfig {
                        optimizer: "lbfgs",
                        reason: "an L-BFGS case needs an `objective`".into(),
                    })?,
            )?;
        let x0: Vec<f64> = self.params.concat();
        objective.check_len(x0.len())?;
        Ok((config, objective, x0))
    }

    /// The worst of the parameters' errors after each call and the returned losses' error.
    fn lbfgs_error(&self, points: &[Vec<f64>], losses: &[f64]) -> f64 {
        let mut worst = 0.0f64;
        for (point, expected) in points.iter().zip(&self.expected) {
            let expected = expected.concat();
            worst = worse(worst, rel_l2([point.as_slice()], [expected.as_slice()]));
        }
        let want = self.losses.as_deref().unwrap_or(&[]);
        worse(worst, rel_l2([losses], [want]))
    }

    /// An L-BFGS case on the float64 reference (vectors on the host).
    fn run_lbfgs_cpu(&self) -> Result<f64> {
        let (config, objective, mut x) = self.lbfgs_setup()?;
        let mut space = HostVectors { len: x.len() };
        let mut state = LbfgsState::new();
        let (mut points, mut losses) = (Vec::new(), Vec::new());
        for _ in &self.expected {
            let outcome = lbfgs::step(&config, &mut state, &mut space, &mut x, &mut |_, x, g| {
                Ok(objective.value_and_grad(x, g))
            })?;
            losses.push(outcome.loss);
            points.push(x.clone());
        }
        Ok(self.lbfgs_error(&points, &losses))
    }

    /// An L-BFGS case on the GPU: float32 device vectors, the objective evaluated on the host
    /// at the point read back (the closure), its gradient written to the device.
    fn run_lbfgs_gpu(&self, ctx: &GpuContext) -> Result<f64> {
        let (config, objective, x0) = self.lbfgs_setup()?;
        let mut opt = GpuLbfgs::new(ctx, config, &to_f32(&x0))?;
        let (mut points, mut losses) = (Vec::new(), Vec::new());
        for _ in &self.expected {
            let outcome = opt.step(&mut |space, x, grad| {
                let x = to_f64(&space.read(x)?);
                let mut g = vec![0.0; x.len()];
                let loss = objective.value_and_grad(&x, &mut g);
                space.write(grad, &to_f32(&g))?;
                Ok(loss)
            })?;
            losses.push(outcome.loss);
            points.push(to_f64(&opt.read_params()?));
        }
        Ok(self.lbfgs_error(&points, &losses))
    }

    /// A case of an optimizer over shaped tensors, on the CPU reference.
    fn run_shaped_cpu(&self) -> Result<f64> {
        let config = ShapedConfig::from_hyper(&self.optimizer, &self.hyper)?;
        let mut group =
            ShapedReference::new(config.clone(), self.shape_sizes(), self.params.clone())?;
        let mut worst = 0.0f64;
        for (k, expected) in self.expected.iter().enumerate() {
            group
                .config
                .set_lr(self.lrs.as_ref().map_or(config.lr(), |l| l[k]));
            group.step(&self.grads_at(k))?;
            let err = rel_l2(
                group.params.iter().map(Vec::as_slice),
                expected.iter().map(Vec::as_slice),
            );
            worst = worse(worst, err);
        }
        Ok(worst)
    }

    /// A case of an optimizer over shaped tensors, on the GPU in float32.
    fn run_shaped_gpu(&self, ctx: &GpuContext) -> Result<f64> {
        let config = ShapedConfig::from_hyper(&self.optimizer, &self.hyper)?;
        let shapes = self.shape_sizes();
        let params: Vec<Vec<f32>> = self.params.iter().map(|p| to_f32(p)).collect();
        let tensors: Vec<(&[usize], &[f32])> = shapes
            .iter()
            .zip(&params)
            .map(|(s, p)| (s.as_slice(), p.as_slice()))
            .collect();
        let mut opt = ShapedOptimizer::new(ctx, config.clone(), &tensors)?;
        let mut worst = 0.0f64;
        for (k, expected) in self.expected.iter().enumerate() {
            opt.set_lr(self.lrs.as_ref().map_or(config.lr(), |l| l[k]))?;
            let grads: Vec<Vec<f32>> = self.grads_at(k).iter().map(|g| to_f32(g)).collect();
            let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            opt.step_with_grads(&grads)?;
            let out: Vec<Vec<f64>> = (0..shapes.len())
                .map(|t| opt.read_param(t).map(|p| to_f64(&p)))
                .collect::<Result<_>>()?;
            let err = rel_l2(
                out.iter().map(Vec::as_slice),
                expected.iter().map(Vec::as_slice),
            );
            worst = worse(worst, err);
        }
        Ok(worst)
    }

    /// Runs the case on the CPU reference; the worst relative L2 error over the steps.
    pub fn run_cpu(&self) -> Result<f64> {
        if self.is_shaped() {
            return self.run_shaped_cpu();
        }
        if self.is_lbfgs() {
            return self.run_lbfgs_cpu();
        }
        let config = self.config()?;
        let mut group = ReferenceGroup::with_storage(
            config.clone(),
            self.options(),
            self.storage_or_error()?,
            self.params.clone(),
        )?;
        let mut worst = 0.0f64;
        for (k, expected) in self.expected.iter().enumerate() {
            group.config.set_lr(self.lr_at(k, &config));
            group.step(&self.grads_at(k))?;
            let err = rel_l2(
                group.params.iter().map(Vec::as_slice),
                expected.iter().map(Vec::as_slice),
            );
            worst = worse(worst, err);
            if let Some(expected_ax) = &self.expected_ax {
                let ax = (0..group.params.len()).map(|t| group.state(t, "ax").unwrap_or(&[]));
                worst = worse(worst, rel_l2(ax, expected_ax[k].iter().map(Vec::as_slice)));
            }
        }
        if let Some(expected_eval) = &self.expected_eval {
            group.swap_mode(true)?;
            let err = rel_l2(
                group.params.iter().map(Vec::as_slice),
                expected_eval.iter().map(Vec::as_slice),
            );
            worst = worse(worst, err);
        }
        Ok(worst)
    }

    /// Runs the case on the GPU in float32; the worst relative L2 error over the steps.
    pub fn run_gpu(&self, ctx: &GpuContext) -> Result<f64> {
        if self.is_shaped() {
            return self.run_shaped_gpu(ctx);
        }
        if self.is_lbfgs() {
            return self.run_lbfgs_gpu(ctx);
        }
        let config = self.config()?;
        let params: Vec<Vec<f32>> = self.params.iter().map(|p| to_f32(p)).collect();
        let storage = self.storage_or_error()?;
        let mut opt = Optimizer::builder(ctx)
            .group_stored(config.clone(), storage, self.options(), &params)
            .build()?;
        // With master weights the case follows the master (FORMAT-formats.md).
        let compared = if storage.master_weights {
            Role::Master
        } else {
            Role::Param
        };
        let group = opt.group_of(TensorId(0))?;
        let mut worst = 0.0f64;
        for (k, expected) in self.expected.iter().enumerate() {
            opt.set_lr(group, self.lr_at(k, &config))?;
            let grads: Vec<Vec<f32>> = self.grads_at(k).iter().map(|g| to_f32(g)).collect();
            let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            opt.step_with_grads(&grads)?;
            let out = read_all(&opt, compared)?;
            let err = rel_l2(
                out.iter().map(Vec::as_slice),
                expected.iter().map(Vec::as_slice),
            );
            worst = worse(worst, err);
            if let Some(expected_ax) = &self.expected_ax {
                let ax: Vec<Vec<f64>> = (0..params.len())
                    .map(|t| opt.read_state(TensorId(t), "ax").map(|a| to_f64(&a)))
                    .collect::<Result<_>>()?;
                let err = rel_l2(
                    ax.iter().map(Vec::as_slice),
                    expected_ax[k].iter().map(Vec::as_slice),
                );
                worst = worse(worst, err);
            }
        }
        if let Some(expected_eval) = &self.expected_eval {
            opt.eval_mode(group)?;
            let out = read_all(&opt, compared)?;
            let err = rel_l2(
                out.iter().map(Vec::as_slice),
                expected_eval.iter().map(Vec::as_slice),
            );
            worst = worse(worst, err);
        }
        Ok(worst)
    }

    /// Runs the case on both and judges it against `tolerance`.
    pub fn run(&self, ctx: &GpuContext, tolerance: &Tolerance) -> CaseResult {
        let mut result = CaseResult {
            name: self.name.clone(),
            optimizer: self.optimizer.clone(),
            steps: self.steps(),
            status: Status::Fail,
            gpu_rel_l2: None,
            cpu_rel_l2: None,
            note: None,
        };
        if let Some(reason) = self.unsupported() {
            result.status = Status::Unsupported;
            result.note = Some(reason);
            return result;
        }
        let rel_l2 = self.tolerance.map_or(tolerance.rel_l2, |t| t.rel_l2);
        let within = |e: f64| e <= rel_l2;
        match (self.run_gpu(ctx), self.run_cpu()) {
            (Ok(gpu), Ok(cpu)) => {
                result.gpu_rel_l2 = Some(gpu);
                result.cpu_rel_l2 = Some(cpu);
                result.status = if within(gpu) && within(cpu) {
                    Status::Pass
                } else {
                    Status::Fail
                };
                let not_finite: Vec<String> = [("GPU", gpu), ("CPU reference", cpu)]
                    .iter()
                    .filter(|(_, e)| !e.is_finite())
                    .map(|(side, e)| {
                        format!(
                            "the {side}'s error is {}: its parameters left the finite range",
                            non_finite_name(*e)
                        )
                    })
                    .collect();
                if !not_finite.is_empty() {
                    result.note = Some(not_finite.join("; "));
                }
            }
            (gpu, cpu) => {
                result.gpu_rel_l2 = gpu.as_ref().ok().copied();
                result.cpu_rel_l2 = cpu.as_ref().ok().copied();
                result.status = Status::Fail;
                let errors: Vec<String> = [gpu.err(), cpu.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect();
                result.note = Some(errors.join("; "));
            }
        }
        result
    }
}

/// Every tensor's values of `role`, widened.
fn read_all(opt: &Optimizer, role: Role) -> Result<Vec<Vec<f64>>> {
    (0..opt.num_tensors())
        .map(|t| {
            let len = opt.tensor_len(TensorId(t))?;
            opt.read(TensorId(t), role, 0..len).map(|p| to_f64(&p))
        })
        .collect()
}

/// The larger error, where NaN is worse than anything (`f64::max` would drop it).
fn worse(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn to_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

fn to_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

/// Runs every case and schedule of the fixture on `ctx`.
pub fn run(ctx: &GpuContext, fixture: &Fixture) -> Report {
    run_with_progress(ctx, fixture, |_| {})
}

/// [`run`], calling `progress` after each case.
pub fn run_with_progress(
    ctx: &GpuContext,
    fixture: &Fixture,
    mut progress: impl FnMut(&CaseResult),
) -> Report {
    let cases = fixture
        .cases
        .iter()
        .map(|c| {
            let result = c.run(ctx, &fixture.tolerance);
            progress(&result);
            result
        })
        .collect();
    let schedules = fixture
        .schedules
        .iter()
        .map(|s| s.run(fixture.tolerance.lr_rel))
        .collect();
    Report {
        adapter: ctx.summary(),
        cases,
        schedules,
    }
}
