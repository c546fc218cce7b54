//! Fused GPU optimizer steps for very large parameter vectors, on any GPU that wgpu reaches
//! (Vulkan, Metal, DX12, GL).
//!
//! Each elementwise optimizer (SGD, SGDW, Adagrad, RMSprop, Adadelta, Adam, AdamW, NAdam, RAdam,
//! Adamax, Lion, Rprop, ASGD, Schedule-Free AdamW, LAMB) is one WGSL kernel that reads and writes
//! every element once per step, with its reference's semantics, argument names and defaults,
//! and a float64 CPU reference beside it. Adafactor and Muon step groups of shaped tensors
//! ([`ShapedOptimizer`]: row and column statistics, batched matrix products); L-BFGS runs
//! torch's statements on device vectors with a closure ([`GpuLbfgs`]). `torch.nn.init`'s Xavier
//! and Kaiming initialisers ([`Init`]) fill parameters on the device
//! ([`Optimizer::initialize`], [`init::fill_buffer`]).
//!
//! ```no_run
//! use wgpu_optim::{ContextOptions, GpuContext, Optimizer, TensorId, optim::AdamW};
//!
//! let ctx = GpuContext::new(&ContextOptions::default())?;
//! let weights = vec![0.5f32; 1000];
//! let bias = vec![0.0f32; 10];
//! let mut opt = Optimizer::builder(&ctx)
//!     .group(AdamW { lr: 1e-3, ..Default::default() }, [&weights, &bias])
//!     .build()?;
//! opt.step_with_grads(&[&vec![0.1; 1000], &vec![-0.2; 10]])?;
//! let updated = opt.read_param(TensorId(0))?;
//! assert_eq!(updated.len(), 1000);
//! # Ok::<(), wgpu_optim::Error>(())
//! ```

#![warn(missing_docs)]

pub mod context;
pub mod engine;
pub mod error;
pub mod fill;
pub mod init;
pub mod kernels;
pub mod optim;
pub mod reference;
pub mod schedule;
pub mod shaped;
pub mod storage;
pub mod tools;
mod transfer;
pub mod vectors;

/// The wgpu this crate is built against: name buffers and devices through it to get the same
/// version.
pub use wgpu;

pub use context::{AdapterSummary, AvailableMemory, ContextOptions, GpuContext};
pub use engine::{
    ExternalTensor, GroupId, Optimizer, OptimizerBuilder, Role, TensorId, TensorInit,
};
pub use engine::{GradScaler, StepReport, TrainingOptions};
pub use error::{Error, Result};
pub use fill::RandomFill;
pub use init::{Distribution, FanMode, Init, Nonlinearity};
pub use kernels::{Element, Kernel, KernelTarget, ScalarsVia, StateSlot, StructLayout};
pub use optim::lbfgs::{Lbfgs, LineSearch};
pub use optim::{
    Adadelta, Adafactor, Adagrad, Adam, AdamConfig, AdamW, Adamax, Asgd, Decoupled,
    Hyperparameters, L2, Lamb, Lion, Muon, NAdam, OptimizerConfig, RAdam, ReferenceTensor, RmsProp,
    Rprop, ScheduleFreeAdamW, Sgd, SgdConfig, Sgdw, StepCounter, UpdateRule, WeightDecay,
};
pub use reference::ReferenceGroup;
pub use schedule::Schedule;
pub use shaped::{ShapedConfig, ShapedOptimizer, ShapedReference};
pub use storage::{Format, HostValue, Q8Blocks, Q8Lookups, Rounding, Storage};
pub use vectors::{DeviceVectors, GpuLbfgs};

/// The `half` crate this one is built against: its `bf16` and `f16` are the 16-bit host types
/// ([`HostValue`]).
pub use half;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
