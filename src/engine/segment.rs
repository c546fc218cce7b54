//! A segment: one dispatch's worth of elements, and the views (buffer, offset, length) it binds
//! for each role. The group lays segments out; the step control and the update kernels bind
//! them.

use super::Role;
use crate::kernels::Element;
pub(crate) use crate::transfer::View;

/// One dispatch's worth of elements.
pub(crate) struct Segment {
    pub element: Element,
    /// The parameters the step updates: the float32 master with master weights.
    pub param: View,
    /// With master weights, the 16-bit copy the model reads, written by the step.
    pub model_param: Option<View>,
    /// With Kahan summation, what rounding the stored parameters lost.
    pub compensation: Option<View>,
    pub grad: View,
    /// One per state slot of the kernel; `None` where the configuration keeps no such state.
    pub states: Vec<Option<View>>,
    pub bind_group: Option<wgpu::BindGroup>,
    pub workgroups: (u32, u32),
    /// The group-local index of the external tensor this segment belongs to, if any.
    pub external_tensor: Option<usize>,
    /// The index of its first element among the group's elements (arena positions, then each
    /// external tensor's after the arena's end): stochastic rounding hashes it.
    pub first_index: u64,
}

impl Segment {
    pub(crate) fn view(&self, role: Role, slot: Option<usize>) -> &View {
        match role {
            Role::Param => self.model_param.as_ref().unwrap_or(&self.param),
            Role::Master => &self.param,
            Role::Compensation => self.compensation.as_ref().expect("Kahan summation"),
            Role::Grad => &self.grad,
            Role::State(_) => self.states[slot.expect("state slot resolved")]
                .as_ref()
                .expect("state kept"),
        }
    }
}
