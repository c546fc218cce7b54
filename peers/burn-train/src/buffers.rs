//! From a burn tensor to the wgpu buffer behind it, without a host round trip.
//!
//! burn 0.22.1 with fusion holds a float tensor as a `FusionTensor` whose operations may not
//! have run yet; `resolve_tensor_float` runs them (drains the fusion stream) and hands back the
//! `CubeTensor` (cubecl's handle, metadata and dtype). cubecl's client then gives the storage
//! resource behind the handle: the `wgpu::Buffer`, the byte offset of the tensor's first element
//! in it, and its size. Holding that `ManagedResource` pins the allocation: cubecl neither frees,
//! reuses nor moves it while it is held (cubecl-runtime `storage/base.rs`).

use std::any::Any;

use burn::backend::Cube;
use burn::backend::wgpu::{AutoCompiler, CubeBackend};
use burn::cubecl::wgpu::WgpuServer;
use burn::tensor::{DType, Tensor};
use wgpu_optim::Format;
use wgpu_optim::engine::ExternalTensor;

/// One tensor's place on the device, pinned while this value lives.
pub struct DeviceTensor {
    /// cubecl's `ManagedResource`: keeps cubecl from reusing or moving the allocation.
    _pinned: Box<dyn Any + Send>,
    buffer: wgpu_optim::wgpu::Buffer,
    offset: u64,
    /// Elements.
    pub len: u64,
    /// The element format, as wgpu-optim names it.
    pub format: Format,
}

impl DeviceTensor {
    /// Resolves a float tensor (an inner one: take `.inner()` of an autodiff tensor first).
    ///
    /// Refused, with the reason: a tensor of another backend, a strided or tiled view (a
    /// transposed `Linear` of `LinearLayout::Col`, a slice with steps), a dtype wgpu-optim does
    /// not store (anything but f32, bf16, f16), a buffer region that is not 4-byte aligned.
    pub fn resolve<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<Self, String> {
        let fusion = tensor
            .try_into_primitive::<Cube>()
            .map_err(|e| format!("{what}: not a tensor of burn's cubecl backend: {e:?}"))?;
        let client = fusion.client.clone();
        let cube = client.resolve_tensor_float::<CubeBackend>(fusion);
        let format = match cube.dtype {
            DType::F32 => Format::F32,
            DType::BF16 => Format::Bf16,
            DType::F16 => Format::F16,
            other => {
                return Err(format!(
                    "{what}: dtype {other:?}; wgpu-optim stores f32, bf16, f16"
                ));
            }
        };
        if !cube.is_contiguous() || cube.meta.is_tiled() {
            return Err(format!(
                "{what}: a strided or tiled view (shape {:?}, strides {:?}); the optimizer \
                 updates contiguous tensors only (make it contiguous, or use LinearLayout::Row)",
                cube.meta.shape(),
                cube.meta.strides()
            ));
        }
        let len = cube.meta.shape().num_elements() as u64;
        let pinned = cube
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(cube.handle.clone())
            .map_err(|e| format!("{what}: cubecl gave no wgpu resource: {e:?}"))?;
        let resource = pinned.resource();
        let bytes = len * format.bytes();
        if resource.offset % 4 != 0 || resource.size < bytes {
            return Err(format!(
                "{what}: {bytes} bytes at offset {} in a region of {} bytes",
                resource.offset, resource.size
            ));
        }
        Ok(Self {
            buffer: resource.buffer.clone(),
            offset: resource.offset,
            _pinned: Box::new(pinned),
            len,
            format,
        })
    }

    /// The buffer the tensor lives in.
    pub fn buffer(&self) -> &wgpu_optim::wgpu::Buffer {
        &self.buffer
    }

    /// The byte offset of its first element in [`buffer`](Self::buffer).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A parameter and its gradient as one caller-owned tensor of wgpu-optim.
    pub fn external(param: &DeviceTensor, grad: &DeviceTensor) -> Result<ExternalTensor, String> {
        if param.len != grad.len || param.format != grad.format {
            return Err(format!(
                "parameter ({} x {:?}) and gradient ({} x {:?}) differ",
                param.len, param.format, grad.len, grad.format
            ));
        }
        Ok(ExternalTensor {
            param: param.buffer().clone(),
            param_offset: param.offset(),
            grad: grad.buffer().clone(),
            grad_offset: grad.offset(),
            len: param.len,
        })
    }
}
