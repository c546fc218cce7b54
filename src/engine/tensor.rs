//! The handles and descriptions of tensors a caller hands the engine: ids, caller-owned
//! buffers, initial contents, and which buffer of a tensor a read or write means.

/// A tensor of an [`Optimizer`](super::Optimizer), numbered in the order tensors were added, across groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// A parameter group of an [`Optimizer`](super::Optimizer), numbered in the order groups were added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub usize);

/// A tensor whose parameters and gradients stay in the caller's own buffers (for example those
/// of another wgpu-based framework), updated in place without copies. The optimizer keeps only
/// the states. Both buffers need `BufferUsages::STORAGE` (plus `COPY_SRC` to read them back and
/// `COPY_DST` to write them through the optimizer), and offsets aligned to the device's
/// `min_storage_buffer_offset_alignment`. Lengths that are multiples of 4 at 16-byte offsets get
/// the `vec4` kernel; others the scalar one, or, where a role is 16-bit or q8 (four values to
/// an invocation), the `vec4` kernel with a masked last element. 16-bit tensors need an even
/// length (an odd one ends inside a 4-byte word, where no storage binding can end).
///
/// The buffers must belong to the optimizer's device. A buffer of another device of the same
/// `wgpu::Instance` is reported as [`Error::BadBuffer`](crate::Error::BadBuffer); one of another instance cannot be told
/// apart by wgpu (its ids are per instance), so keep one instance per process.
#[derive(Clone, Debug)]
pub struct ExternalTensor {
    /// The buffer holding the parameters, updated in place by each step.
    pub param: wgpu::Buffer,
    /// Byte offset of the first parameter in `param`.
    pub param_offset: u64,
    /// The buffer holding the gradients, which the step reads.
    pub grad: wgpu::Buffer,
    /// Byte offset of the first gradient in `grad`.
    pub grad_offset: u64,
    /// Elements: values in the group's parameter and gradient formats (float32 unless the group
    /// is stored in 16 bits; see [`Storage`](crate::Storage)).
    pub len: u64,
}

impl ExternalTensor {
    /// `len` elements at the start of each buffer.
    pub fn new(param: &wgpu::Buffer, grad: &wgpu::Buffer, len: u64) -> Self {
        Self {
            param: param.clone(),
            param_offset: 0,
            grad: grad.clone(),
            grad_offset: 0,
            len,
        }
    }
}

/// The initial contents of a parameter tensor.
#[derive(Clone, Debug)]
pub enum TensorInit<'a> {
    /// These values, copied into the optimizer's arena.
    Values(&'a [f32]),
    /// This many zeros (fill them later with [`Optimizer::write_param`](super::Optimizer::write_param)).
    Zeros(u64),
    /// The caller's buffers, used in place.
    External(ExternalTensor),
}

impl TensorInit<'_> {
    pub(crate) fn len(&self) -> u64 {
        match self {
            TensorInit::Values(v) => v.len() as u64,
            TensorInit::Zeros(n) => *n,
            TensorInit::External(e) => e.len,
        }
    }
}

impl From<ExternalTensor> for TensorInit<'_> {
    fn from(tensor: ExternalTensor) -> Self {
        TensorInit::External(tensor)
    }
}

impl<'a> From<&'a [f32]> for TensorInit<'a> {
    fn from(values: &'a [f32]) -> Self {
        TensorInit::Values(values)
    }
}

impl<'a> From<&'a Vec<f32>> for TensorInit<'a> {
    fn from(values: &'a Vec<f32>) -> Self {
        TensorInit::Values(values)
    }
}

/// Which buffer of a tensor to read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    /// The parameters.
    Param,
    /// The gradients.
    Grad,
    /// An optimizer state by PyTorch's name (`"exp_avg"`, `"momentum_buffer"`, ...).
    State(&'a str),
    /// The float32 master copy of 16-bit parameters (groups with master weights only; their
    /// [`Param`](Role::Param) is the 16-bit copy the model reads).
    Master,
    /// What rounding the stored 16-bit parameters lost, kept by Kahan summation (groups with
    /// [`Rounding::Kahan`](crate::Rounding::Kahan) only).
    Compensation,
}
