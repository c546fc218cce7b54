//! `torch.nn.init`'s initialisers ([`Init`]) applied to an optimizer's parameters on the
//! device, whatever their layout and format.

use super::{Optimizer, Role, TensorId};
use crate::error::{Error, Result};
use crate::fill;
use crate::init::{Init, element_count};
use crate::transfer;

impl Optimizer {
    /// Initialises a tensor's parameters as `torch.nn.init` would a tensor of `shape` (whose
    /// elements must number the tensor's length): element `j` gets
    /// [`Distribution::value`](crate::Distribution::value)`(seed, j)` of
    /// `init.distribution(shape)`, computed on the device, wherever the tensor lies (arena
    /// segments, or a caller's [`ExternalTensor`](crate::ExternalTensor), written in place:
    /// it needs no `COPY_DST`).
    ///
    /// 16-bit parameters get the float32 value rounded to nearest even, by the kernel. With
    /// master weights the float32 master gets the values themselves and the model's 16-bit
    /// copy their rounding; with Kahan summation the compensation starts at zero (as after
    /// [`write`](Self::write)). The optimizer's states are left as they are: initialise before
    /// the first step. Queued: returns without waiting for the GPU. On an error (arguments out
    /// of their domains, fewer than 2 dimensions, a shape of another length) nothing is written.
    pub fn initialize(
        &mut self,
        tensor: TensorId,
        shape: &[u64],
        init: &Init,
        seed: u32,
    ) -> Result<()> {
        let len = self.tensor_len(tensor)?;
        let distribution = init.plan(shape)?;
        let count = element_count(shape)?;
        if count != len {
            return Err(Error::LengthMismatch {
                what: "the shape to initialise",
                tensor: tensor.0,
                expected: len,
                got: count,
            });
        }
        // A tensor has elements: the plan has a distribution.
        let Some(distribution) = distribution else {
            return Ok(());
        };
        let (g, local) = self.locate(tensor)?;
        let group = &self.groups[g];
        let spec = distribution.spec(seed);
        let params = group.spans(Role::Param, local, 0..len)?;
        let master = if group.storage.master_weights {
            Some(group.spans(Role::Master, local, 0..len)?)
        } else {
            None
        };
        let compensation = if group.storage.kahan() {
            Some(group.spans(Role::Compensation, local, 0..len)?)
        } else {
            None
        };
        fill::fill_spans(&self.ctx, &params, 0, &spec)?;
        if let Some(master) = master {
            fill::fill_spans(&self.ctx, &master, 0, &spec)?;
        }
        if let Some(compensation) = compensation {
            transfer::fill(&self.ctx, &compensation, 0.0)?;
        }
        Ok(())
    }
}
