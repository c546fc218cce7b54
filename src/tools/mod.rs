//! What the `wgpu-optim` command line runs, as a library for tools and tests: the benchmark,
//! the conformance runner, the report, and every kernel for shader checkers. None of it is
//! needed to train with the optimizers; it may change between releases.

pub mod bench;
pub mod conformance;
pub mod lab;
#[cfg(feature = "cli")]
pub mod report;
pub mod shaders;
