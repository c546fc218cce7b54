//! Every kernel checked by naga, with no GPU: it parses and validates for both element types,
//! its uniform struct has the layout of its Rust mirror, its bindings are the ones the engine
//! binds, and its `override` flags are the ones the host sets.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, StorageAccess, TypeInner};
use wgpu_optim::kernels::{BindingKind, Element, Kernel, ScalarsVia};
use wgpu_optim::tools::shaders::{
    STEP_CONTROL_LAYOUT, optimizer_kernels as all_kernels, standalone_kernels, utility_kernels,
};
use wgpu_optim::{Format, KernelTarget, Q8Blocks, Q8Lookups, Storage};

const BINDINGS: [ScalarsVia; 2] = [ScalarsVia::Immediates, ScalarsVia::UniformBuffer];

fn module(kernel: &Kernel, element: Element, scalars: ScalarsVia) -> naga::Module {
    stored_module(
        kernel,
        element,
        scalars,
        &Storage::F32,
        KernelTarget::default(),
    )
}

fn stored_module(
    kernel: &Kernel,
    element: Element,
    scalars: ScalarsVia,
    storage: &Storage,
    target: KernelTarget,
) -> naga::Module {
    let source = kernel.assemble(element, scalars, storage, target);
    naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
        panic!(
            "{} ({element:?}, {scalars:?}): {}",
            kernel.name,
            e.emit_to_string(&source)
        )
    })
}

#[test]
fn every_kernel_parses_and_validates_for_both_element_types_and_bindings() {
    for kernel in all_kernels() {
        for element in [Element::Vec4, Element::F32] {
            for scalars in BINDINGS {
                let module = module(kernel, element, scalars);
                let capabilities = match scalars {
                    ScalarsVia::Immediates => Capabilities::IMMEDIATES,
                    ScalarsVia::UniformBuffer => Capabilities::empty(),
                };
                Validator::new(ValidationFlags::all(), capabilities)
                    .validate(&module)
                    .unwrap_or_else(|e| {
                        panic!("{} ({element:?}, {scalars:?}): {e:?}", kernel.name)
                    });
                // `main`, and `finalize_tensors` with per-tensor sums.
                assert_eq!(
                    module.entry_points.len(),
                    1 + usize::from(kernel.tensor_sums),
                    "{}",
                    kernel.name
                );
                let main = module
                    .entry_points
                    .iter()
                    .find(|e| e.name == "main")
                    .unwrap();
                assert_eq!(main.workgroup_size, [256, 1, 1]);
                if kernel.tensor_sums {
                    assert!(
                        module
                            .entry_points
                            .iter()
                            .any(|e| e.name == "finalize_tensors")
                    );
                }
            }
        }
    }
}

#[test]
fn every_kernel_validates_in_every_storage_format() {
    let storages = Storage::all();
    for kernel in all_kernels() {
        for storage in &storages {
            // With and without subgroup operations (and with them, q8 blocks in a workgroup or
            // in subgroups of 4 to 64), and with either place for the maps, where q8 states use
            // them; in 32-bit and in 64-bit words.
            let mut variants: Vec<KernelTarget> = if storage.q8() {
                let blocks = [
                    (false, Q8Blocks::Workgroup),
                    (true, Q8Blocks::Workgroup),
                    (true, Q8Blocks::Subgroup { size: 4 }),
                    (true, Q8Blocks::Subgroup { size: 8 }),
                    (true, Q8Blocks::Subgroup { size: 64 }),
                ];
                blocks
                    .into_iter()
                    .flat_map(|(subgroups, q8_blocks)| {
                        [Q8Lookups::Workgroup, Q8Lookups::Uniform].map(|q8_lookups| KernelTarget {
                            subgroups,
                            q8_lookups,
                            wide_words: false,
                            q8_blocks,
                        })
                    })
                    .collect()
            } else {
                vec![KernelTarget::default()]
            };
            let wide: Vec<KernelTarget> = variants
                .iter()
                .map(|&target| KernelTarget {
                    wide_words: true,
                    ..target
                })
                .collect();
            variants.extend(wide);
            // Whole vec4s, and a caller's tensor ending inside one (packed storages only).
            let elements: &[Element] = if storage.packed() {
                &[Element::Vec4, Element::Vec4Tail]
            } else {
                &[Element::Vec4]
            };
            for (&target, &element) in variants
                .iter()
                .flat_map(|s| elements.iter().map(move |e| (s, e)))
            {
                let module =
                    stored_module(kernel, element, ScalarsVia::Immediates, storage, target);
                let mut capabilities = Capabilities::IMMEDIATES;
                if target.subgroups {
                    capabilities |= Capabilities::SUBGROUP;
                }
                if target.wide_words {
                    capabilities |= Capabilities::SHADER_INT64;
                }
                Validator::new(ValidationFlags::all(), capabilities)
                    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
                    .validate(&module)
                    .unwrap_or_else(|e| {
                        panic!("{} {storage:?} {element:?} {target:?}: {e:?}", kernel.name)
                    });
            }
            let module = stored_module(
                kernel,
                Element::Vec4,
                ScalarsVia::Immediates,
                storage,
                KernelTarget::default(),
            );
            let model_copy = module
                .global_variables
                .iter()
                .find(|(_, g)| g.name.as_deref() == Some("model_param"))
                .map(|(_, g)| g.binding.as_ref().unwrap().binding);
            assert_eq!(
                model_copy,
                storage
                    .master_weights
                    .then_some(wgpu_optim::kernels::MODEL_COPY_BINDING),
                "{} {storage:?}",
                kernel.name
            );
        }
    }
}

/// A storage whose states are q8 but whose every state of this kernel is in a format of its
/// own (`f32+q8,momentum_buffer=f32` for SGD) has no q8 state: the kernel is the plain one,
/// whatever the target's q8 path, and one with some states left in q8 takes that path.
#[test]
fn kernels_whose_states_all_left_q8_are_plain() {
    let target = KernelTarget {
        subgroups: true,
        q8_lookups: Q8Lookups::Uniform,
        wide_words: true,
        q8_blocks: Q8Blocks::Subgroup { size: 8 },
    };
    for kernel in all_kernels() {
        let names: Vec<&str> = kernel.state_names().collect();
        let q8 = Storage {
            states: Format::Q8,
            ..Storage::F32
        };
        let mut none_left = q8;
        for name in &names {
            none_left = none_left.with_state(name, Format::F32).unwrap();
        }
        let mut variants = vec![(none_left, false)];
        if let [first, _, ..] = names[..] {
            variants.push((q8.with_state(first, Format::F32).unwrap(), true));
        }
        for (storage, has_q8) in variants {
            let source = kernel.assemble(Element::Vec4, ScalarsVia::Immediates, &storage, target);
            // LAMB's per-tensor sums keep it on the workgroup path.
            let label = format!("{} {}", kernel.name, storage.label());
            assert_eq!(source.contains("fn q8_decode"), has_q8, "{label}");
            assert_eq!(
                source.contains("fn q8_begin_block"),
                has_q8 && !kernel.tensor_sums,
                "{label}"
            );
            let module = stored_module(
                kernel,
                Element::Vec4,
                ScalarsVia::Immediates,
                &storage,
                target,
            );
            Validator::new(
                ValidationFlags::all(),
                Capabilities::IMMEDIATES | Capabilities::SUBGROUP | Capabilities::SHADER_INT64,
            )
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{label}: {e:?}"));
        }
    }
}

#[test]
fn uniform_structs_fit_the_immediates_requested() {
    for kernel in all_kernels() {
        assert!(
            kernel.scalars.size <= wgpu_optim::kernels::IMMEDIATE_BYTES as usize,
            "{}",
            kernel.scalars.name
        );
    }
}

#[test]
fn uniform_structs_match_their_rust_mirrors() {
    for kernel in all_kernels() {
        let module = module(kernel, Element::Vec4, ScalarsVia::Immediates);
        assert_struct_layout(&module, kernel.scalars);
        // A uniform struct's size is a multiple of 16 bytes.
        assert_eq!(
            kernel.scalars.size % 16,
            0,
            "{} is not padded",
            kernel.scalars.name
        );
    }
}

#[test]
fn bindings_are_the_ones_the_engine_binds() {
    for (kernel, scalars) in all_kernels()
        .into_iter()
        .flat_map(|k| BINDINGS.map(|b| (k, b)))
    {
        let module = module(kernel, Element::Vec4, scalars);
        let mut bound: Vec<(u32, String, AddressSpace)> = module
            .global_variables
            .iter()
            .filter_map(|(_, g)| {
                g.binding
                    .as_ref()
                    .map(|b| (b.binding, g.name.clone().unwrap(), g.space))
            })
            .collect();
        bound.sort_by_key(|b| b.0);
        let rw = AddressSpace::Storage {
            access: StorageAccess::LOAD | StorageAccess::STORE,
        };
        let mut expected = vec![];
        if scalars == ScalarsVia::UniformBuffer {
            expected.push((0, "s".to_string(), AddressSpace::Uniform));
        } else {
            let immediate = module
                .global_variables
                .iter()
                .find(|(_, g)| g.name.as_deref() == Some("s"));
            assert_eq!(
                immediate.map(|(_, g)| g.space),
                Some(AddressSpace::Immediate),
                "{}",
                kernel.name
            );
        }
        // The gradient is bound read-write though only read: a caller's gradients may share
        // a buffer with its parameters (burn's pages), which wgpu refuses to bind read-only
        // and read-write in one dispatch.
        expected.extend([(1, "param".to_string(), rw), (2, "grad".to_string(), rw)]);
        for (k, name) in kernel.state_names().enumerate() {
            expected.push((3 + k as u32, name.to_string(), rw));
        }
        expected.push((6, "control".to_string(), AddressSpace::Uniform));
        if kernel.tensor_sums {
            use wgpu_optim::kernels::{
                SEGMENT_INFO_BINDING, TENSOR_PARTIALS_BINDING, TENSOR_TABLE_BINDING,
                WORKGROUP_TENSORS_BINDING,
            };
            expected.extend([
                (
                    SEGMENT_INFO_BINDING,
                    "segment_info".to_string(),
                    AddressSpace::Uniform,
                ),
                (TENSOR_PARTIALS_BINDING, "tensor_partials".to_string(), rw),
                (
                    WORKGROUP_TENSORS_BINDING,
                    "workgroup_tensor".to_string(),
                    AddressSpace::Storage {
                        access: StorageAccess::LOAD,
                    },
                ),
                (TENSOR_TABLE_BINDING, "tensor_table".to_string(), rw),
            ]);
        }
        assert_eq!(bound, expected, "{}", kernel.name);
    }
}

#[test]
fn helper_kernels_validate_and_bind_what_the_host_binds() {
    for kernel in utility_kernels() {
        // 16-bit gradients come packed four to a vec2<u32>: vec4 elements only.
        for (element, grad) in [
            (Element::Vec4, Format::F32),
            (Element::F32, Format::F32),
            (Element::Vec4, Format::Bf16),
            (Element::Vec4, Format::F16),
            (Element::Vec4Tail, Format::F32),
            (Element::Vec4Tail, Format::Bf16),
            (Element::Vec4Tail, Format::F16),
        ] {
            let source = kernel.assemble(element, grad);
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{}: {}", kernel.name, e.emit_to_string(&source)));
            // 64-bit integers only for the copy in 64-bit words.
            Validator::new(ValidationFlags::all(), Capabilities::SHADER_INT64)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{} ({element:?}): {e:?}", kernel.name));
            let mut bound: Vec<(u32, AddressSpace)> = module
                .global_variables
                .iter()
                .filter_map(|(_, g)| g.binding.as_ref().map(|b| (b.binding, g.space)))
                .collect();
            bound.sort_by_key(|b| b.0);
            let expected: Vec<(u32, AddressSpace)> = kernel
                .bindings
                .iter()
                .enumerate()
                .map(|(i, kind)| {
                    let space = match kind {
                        BindingKind::Uniform => AddressSpace::Uniform,
                        BindingKind::Storage { read_only: true } => AddressSpace::Storage {
                            access: StorageAccess::LOAD,
                        },
                        BindingKind::Storage { read_only: false } => AddressSpace::Storage {
                            access: StorageAccess::LOAD | StorageAccess::STORE,
                        },
                    };
                    (i as u32, space)
                })
                .collect();
            assert_eq!(bound, expected, "{}", kernel.name);
            if let Some(layout) = kernel.uniform {
                assert_struct_layout(&module, layout);
            }
        }
    }
}

#[test]
fn the_step_control_struct_matches_its_rust_mirror() {
    let module = module(all_kernels()[0], Element::Vec4, ScalarsVia::Immediates);
    assert_struct_layout(&module, &STEP_CONTROL_LAYOUT);
}

fn assert_struct_layout(module: &naga::Module, layout: &wgpu_optim::kernels::StructLayout) {
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(layout.name))
        .unwrap_or_else(|| panic!("no struct {}", layout.name));
    let TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{} is not a struct", layout.name);
    };
    assert_eq!(*span as usize, layout.size, "{} size", layout.name);
    let wgsl: Vec<(&str, usize)> = members
        .iter()
        .map(|m| (m.name.as_deref().unwrap(), m.offset as usize))
        .collect();
    assert_eq!(wgsl, layout.fields, "{} members and offsets", layout.name);
}

#[test]
fn flags_are_the_overrides_the_kernel_declares() {
    for kernel in all_kernels() {
        let module = module(kernel, Element::Vec4, ScalarsVia::Immediates);
        let mut declared: Vec<String> = module
            .overrides
            .iter()
            .map(|(_, o)| {
                assert!(
                    matches!(
                        module.types[o.ty].inner,
                        TypeInner::Scalar(naga::Scalar::BOOL)
                    ),
                    "{}: override {:?} is not a bool",
                    kernel.name,
                    o.name
                );
                o.name.clone().unwrap()
            })
            .collect();
        declared.sort();
        // Its own flags and the training options' (`step.wgsl`).
        let mut flags: Vec<String> = kernel
            .flags
            .iter()
            .chain(&wgpu_optim::kernels::TRAINING_FLAGS)
            .map(|f| f.to_string())
            .collect();
        flags.sort();
        assert_eq!(declared, flags, "{}", kernel.name);
    }
}

#[test]
fn every_optimizer_sets_exactly_its_kernels_flags() {
    for name in wgpu_optim::optim::OPTIMIZER_NAMES {
        let config = wgpu_optim::OptimizerConfig::default_for(name).unwrap();
        use wgpu_optim::UpdateRule;
        let set: Vec<&str> = config.flags().iter().map(|(f, _)| *f).collect();
        assert_eq!(set, config.kernel().flags, "{name}");
        assert_eq!(
            config.initial_states().len(),
            config.kernel().states.len(),
            "{name}"
        );
    }
}

/// Adafactor's, Muon's, the matrix products' and L-BFGS's kernels: they validate, the structs
/// they share with the host have their Rust mirrors' layouts, and they declare exactly the
/// flags the host sets.
#[test]
fn standalone_kernels_validate_and_match_their_rust_mirrors() {
    for (name, source, layouts, flags) in standalone_kernels() {
        let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
            panic!("{name}: {}", e.emit_to_string(&source));
        });
        Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        for layout in &layouts {
            assert_struct_layout(&module, layout);
        }
        let mut overrides: Vec<&str> = module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.as_deref())
            .collect();
        overrides.sort();
        let mut want = flags.clone();
        want.sort();
        assert_eq!(overrides, want, "{name}'s overrides");
    }
}
