//! Every kernel the crate launches and every struct it shares with WGSL, for checkers that
//! validate them without a GPU (`tests/shaders.rs` parses each with naga).

use crate::kernels::{Kernel, StructLayout, UtilityKernel};

/// Every optimizer kernel family (optimizers that share one, such as Adam and AdamW, count once).
pub fn optimizer_kernels() -> Vec<&'static Kernel> {
    crate::optim::all_kernels()
}

/// The helper kernels: gradient norm, step finalize, gradient accumulation, random fill (for
/// float32, bfloat16 and binary16 runs), bandwidth copy (32-bit and 64-bit words).
pub fn utility_kernels() -> [&'static UtilityKernel; 8] {
    [
        &crate::engine::control::NORM_KERNEL,
        &crate::engine::control::FINALIZE_KERNEL,
        &crate::engine::ACCUMULATE_KERNEL,
        &crate::fill::FILL_KERNEL,
        &crate::fill::FILL_BF16_KERNEL,
        &crate::fill::FILL_F16_KERNEL,
        &super::bench::COPY_KERNEL,
        &super::bench::COPY_WIDE_KERNEL,
    ]
}

/// The layout of the step control every optimizer kernel reads (`shaders/control.wgsl`).
pub const STEP_CONTROL_LAYOUT: StructLayout = crate::engine::control::StepControl::LAYOUT;

/// The kernels outside the fused engine, each as (name, complete WGSL, the structs it shares
/// with the host, the `override` flags the host sets): Adafactor, Muon, the matrix products,
/// L-BFGS's vector operations.
pub fn standalone_kernels() -> Vec<(&'static str, String, Vec<StructLayout>, Vec<&'static str>)> {
    use crate::shaped::{ADAFACTOR_KERNEL, MUON_KERNEL, TensorEntry, matmul};
    let mut kernels = vec![
        (
            "adafactor",
            ADAFACTOR_KERNEL.assemble(),
            vec![TensorEntry::LAYOUT, crate::shaped::AdafactorScalars::LAYOUT],
            vec!["MAXIMIZE"],
        ),
        (
            "muon",
            MUON_KERNEL.assemble(),
            vec![TensorEntry::LAYOUT, crate::shaped::MuonScalars::LAYOUT],
            vec!["MAXIMIZE", "NESTEROV"],
        ),
        (
            "matmul",
            matmul::matmul_source(),
            vec![matmul::Product::LAYOUT],
            vec![],
        ),
        (
            "vectors",
            crate::vectors::SOURCE.to_string(),
            vec![crate::vectors::VectorParams::LAYOUT],
            vec!["MAX_ABS", "SUM_ABS"],
        ),
    ];
    // Per-tensor gradient norms of the fused engine's groups, for each element type and
    // gradient format.
    use crate::engine::grad_norms::{FINALIZE_SOURCE, NormChunk, NormRange, sum_source};
    use crate::kernels::Element;
    use crate::storage::Format;
    for element in [Element::Vec4, Element::Vec4Tail, Element::F32] {
        for format in [Format::F32, Format::Bf16, Format::F16] {
            if element == Element::F32 && format != Format::F32 {
                continue; // 16-bit gradients are read four at a time: vec4 segments only.
            }
            kernels.push((
                "grad_norms",
                sum_source(element, format),
                vec![NormChunk::LAYOUT, NormRange::LAYOUT],
                vec![],
            ));
        }
    }
    kernels.push((
        "grad_norms finalize",
        FINALIZE_SOURCE.to_string(),
        vec![],
        vec![],
    ));
    kernels
}
