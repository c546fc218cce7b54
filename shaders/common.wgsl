// Shared by every kernel. Before it, for the kernels that handle tensor elements, the host puts
// the element type and two helpers (see `Element::prelude` in src/kernels.rs):
//   alias V = vec4<f32>;   arena segments, whose lengths are multiples of 4 (16-byte loads)
//   alias V = f32;         user buffers of any length
// so that each kernel is written once for both element types. After an optimizer kernel it
// declares `s`, the kernel's per-iteration values (its `...Scalars` struct):
//   var<immediate> s: ...Scalars;                           recorded in the command buffer
//   @group(0) @binding(0) var<uniform> s: ...Scalars;       where the device lacks immediates

const WORKGROUP_SIZE: u32 = 256u;

// One thread per element. A 2 GiB segment holds 2^27 vec4s, i.e. 524,288 workgroups, more than
// the 65,535 one dimension allows: the host spreads them over x and y, and this flattens them.
fn element_index(workgroup: vec3<u32>, workgroups: vec3<u32>, local: u32) -> u32 {
    return (workgroup.y * workgroups.x + workgroup.x) * WORKGROUP_SIZE + local;
}
