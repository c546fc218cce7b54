//! wgpu's validation and out-of-memory errors as this crate's [`Error`].

use crate::error::{Error, Result};

/// Catches wgpu's validation and out-of-memory errors around a block of calls, so that they
/// become an [`Error`] instead of wgpu's default panic.
///
/// Fields drop in declaration order, which pops the inner (validation) scope first, as the
/// scope stack requires when an early return drops the guard unpopped.
pub(crate) struct GpuErrorScope {
    validation: wgpu::ErrorScopeGuard,
    memory: wgpu::ErrorScopeGuard,
}

impl GpuErrorScope {
    pub(crate) fn push(device: &wgpu::Device) -> Self {
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        Self { validation, memory }
    }

    pub(crate) fn pop(self, what: &str) -> Result<()> {
        let validation = pollster::block_on(self.validation.pop());
        let memory = pollster::block_on(self.memory.pop());
        if memory.is_some() {
            return Err(Error::OutOfMemory { what: what.into() });
        }
        match validation {
            Some(e) => Err(Error::Gpu(error_chain(&e))),
            None => Ok(()),
        }
    }
}

/// An error and its causes on one line ("a: b: c"); wgpu keeps the useful part in the causes.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
