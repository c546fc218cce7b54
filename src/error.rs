//! The library's one error type.
//!
//! Every fallible call checks its input before it touches the GPU, so an `Err` means that nothing
//! was changed: no buffer written, no step applied, no step counted.

/// The Debian/Ubuntu packages that give a machine without a GPU a software Vulkan adapter.
pub const SOFTWARE_ADAPTER_HINT: &str = "install a Vulkan driver; on a machine without a GPU, Mesa's lavapipe \
     (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`)";

/// Everything that can go wrong in `wgpu_optim`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched the request (or none exists at all).
    #[error("no GPU adapter found{detail}: {SOFTWARE_ADAPTER_HINT}")]
    NoAdapter {
        /// What was asked for, e.g. " for backend gl", or the adapters that were seen.
        detail: String,
    },

    /// Adapters exist, but none has the requested name.
    #[error("no adapter's name contains `{wanted}`; the adapters are: {available}")]
    NoMatchingAdapter {
        /// The name asked for (`ContextOptions::adapter_name`).
        wanted: String,
        /// The adapters seen, with their backends.
        available: String,
    },

    /// The adapter refused to open a device with the features and limits asked for.
    #[error("could not open a device on adapter `{adapter}`: {source}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        #[source]
        source: wgpu::RequestDeviceError,
    },

    /// A hyperparameter outside its domain (negative, NaN, a beta outside [0, 1), ...).
    #[error("invalid {optimizer} hyperparameter {name} = {value}: {reason}")]
    InvalidHyperparameter {
        /// The optimizer's name.
        optimizer: &'static str,
        /// The hyperparameter's name, as PyTorch spells it.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What was expected (e.g. "must be >= 0").
        reason: &'static str,
    },

    /// Two options that cannot be combined (nesterov with dampening, ...).
    #[error("invalid {optimizer} configuration: {reason}")]
    InvalidConfig {
        /// The optimizer's name, or the feature's ("schedule", "grad scaler").
        optimizer: &'static str,
        /// What cannot be combined, or what was expected.
        reason: String,
    },

    /// Data whose length does not match the tensor it is meant for.
    #[error("{what} has {got} elements but tensor {tensor} has {expected}")]
    LengthMismatch {
        /// What the data is ("gradient", "parameter data", ...).
        what: &'static str,
        /// The tensor's index.
        tensor: usize,
        /// The tensor's length, in elements.
        expected: u64,
        /// The elements given, or the end of the range asked for.
        got: u64,
    },

    /// A list with one entry per tensor (gradients, ...) of the wrong length.
    #[error(
        "{call} takes one {item} per tensor: this optimizer has {expected} tensor{}, {got} {item}{} came",
        plural(*expected),
        plural(*got)
    )]
    WrongCount {
        /// The function called (`step_with_grads`).
        call: &'static str,
        /// What the list holds ("gradient").
        item: &'static str,
        /// The number of tensors.
        expected: usize,
        /// The number of entries given.
        got: usize,
    },

    /// A tensor or group handle that this optimizer does not own.
    #[error("unknown {what} {index} (this optimizer has {count})")]
    UnknownHandle {
        /// "tensor" or "group".
        what: &'static str,
        /// The handle's number.
        index: usize,
        /// How many of them the optimizer has.
        count: usize,
    },

    /// A state name the group's optimizer does not keep.
    #[error("{optimizer} keeps no state `{name}` with this configuration (it keeps: {available})")]
    UnknownState {
        /// The optimizer's name.
        optimizer: &'static str,
        /// The state name asked for.
        name: String,
        /// The states it keeps, comma-separated.
        available: String,
    },

    /// A user buffer that cannot serve in the role it was given.
    #[error("buffer for {role} of tensor {tensor} {problem}")]
    BadBuffer {
        /// What the buffer was given for ("parameters", "gradients", ...).
        role: &'static str,
        /// The tensor's index.
        tensor: usize,
        /// What is wrong with it (a missing usage, a misaligned offset, ...).
        problem: String,
    },

    /// An optimizer with no tensors, or a tensor with no elements.
    #[error("{0}")]
    Empty(String),

    /// wgpu reported a validation error for work this crate built (a bug, or a foreign buffer).
    #[error("GPU validation error: {0}")]
    Gpu(String),

    /// The device ran out of memory while allocating.
    #[error("GPU out of memory while allocating {what}")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
    },

    /// Waiting for the GPU or mapping a buffer failed (device lost, timeout).
    #[error("GPU wait failed: {0}")]
    Wait(String),

    /// A checkpoint that cannot be written, read, or applied to this optimizer.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file's path (`<memory>` for bytes in memory).
        path: String,
        /// What went wrong.
        reason: String,
    },

    /// The conformance fixture could not be read or parsed.
    #[error("conformance fixture {path}: {reason}")]
    Fixture {
        /// The file's path, or the name of the text parsed.
        path: String,
        /// What went wrong.
        reason: String,
    },

    /// An environment variable holds a value that names nothing (e.g. `WGPU_BACKEND=vulcan`).
    #[error("{variable}={value} {reason}")]
    Environment {
        /// The variable's name.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it, and what is valid.
        reason: String,
    },

    /// Work that this device cannot hold: past its limits or its memory (checked before
    /// anything is allocated).
    #[error("{0}")]
    DoesNotFit(String),

    /// A benchmark result file, or a report written from them, that cannot be read or written.
    #[error("{what} {path}: {reason}")]
    Report {
        /// What the file is ("bench result file", "chart").
        what: &'static str,
        /// The file's path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// "s" unless one.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
