//! Every kernel variant the backend can build parses and validates with naga, and declares exactly the
//! bindings its `Kernel::bindings` promises.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, StorageAccess};
use tern_shaders::{Binding, FORMATS, Kernel, attention_workgroup_bytes};

fn every_kernel() -> Vec<Kernel> {
    let mut all: Vec<Kernel> = FORMATS.iter().flat_map(|&ty| Kernel::all_for(ty)).collect();
    all.extend(Kernel::elementwise());
    all
}

#[test]
fn every_variant_validates() {
    for kernel in every_kernel() {
        let src = kernel.wgsl();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{} does not parse:\n{}", kernel.label(), e.emit_to_string(&src)));
        // `unpack2x16float` is core WGSL; naga names it a capability, which every WebGPU device has. Subgroup
        // kernels are only built on devices with the subgroup feature.
        let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if kernel.needs_subgroups() {
            caps |= Capabilities::SUBGROUP;
        }
        if kernel.needs_f16() {
            caps |= Capabilities::SHADER_FLOAT16;
        }
        Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{} does not validate:\n{}", kernel.label(), e.emit_to_string(&src)));
        let entry = module.entry_points.iter().find(|e| e.name == "main");
        let entry = entry.unwrap_or_else(|| panic!("{} has no entry point main", kernel.label()));
        assert_eq!(entry.workgroup_size, [kernel.workgroup_size(), 1, 1], "{}", kernel.label());
    }
}

#[test]
fn bindings_match_the_declared_layout() {
    for kernel in every_kernel() {
        let module = naga::front::wgsl::parse_str(&kernel.wgsl()).unwrap();
        let layout = kernel.bindings();
        for (_, var) in module.global_variables.iter() {
            let Some(rb) = &var.binding else { continue };
            assert_eq!(rb.group, 0, "{}", kernel.label());
            let declared = layout.get(rb.binding as usize).copied();
            let found = match var.space {
                AddressSpace::Uniform => Binding::Params,
                AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => Binding::ReadWrite,
                AddressSpace::Storage { .. } => Binding::Read,
                other => panic!("{}: binding {} in {other:?}", kernel.label(), rb.binding),
            };
            assert_eq!(declared, Some(found), "{}: binding {} ({:?})", kernel.label(), rb.binding, var.name);
        }
    }
}

/// Every kernel fits WebGPU's default 16 KiB of workgroup memory, but attention over several query rows, which
/// declares what `attention_workgroup_bytes` says (the backend takes as many rows as the device has room for).
#[test]
fn workgroup_memory_fits_the_webgpu_default_limit() {
    for kernel in every_kernel() {
        let module = naga::front::wgsl::parse_str(&kernel.wgsl()).unwrap();
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == AddressSpace::WorkGroup)
            .map(|(_, v)| layouter[v.ty].size)
            .sum();
        if let Kernel::Attention { head_dim, rows, int8: false, .. } = kernel {
            assert_eq!(bytes, attention_workgroup_bytes(head_dim, rows), "{}", kernel.label());
            if rows > Kernel::attention_rows(head_dim, 16384) {
                continue;
            }
        }
        assert!(bytes <= 16384, "{} uses {bytes} bytes of workgroup memory", kernel.label());
    }
}

/// The parameter words each kernel documents in `Kernel::params` are the fields of its `Params` struct.
#[test]
fn params_match_the_documented_words() {
    for kernel in every_kernel() {
        let module = naga::front::wgsl::parse_str(&kernel.wgsl()).unwrap();
        let fields: Vec<String> = module
            .types
            .iter()
            .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
                (Some(name), naga::TypeInner::Struct { members, .. }) if name == "Params" => {
                    Some(members.iter().map(|m| m.name.clone().unwrap_or_default()).collect())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{} has no Params struct", kernel.label()));
        let documented: Vec<&str> = kernel.params().iter().map(|w| w.split(' ').next().unwrap_or(w)).collect();
        assert_eq!(fields.len(), 8, "{}", kernel.label());
        for (field, doc) in fields.iter().zip(&documented) {
            let unused = field.starts_with("_p") && *doc == "_";
            assert!(unused || field == doc, "{}: field {field} documented as {doc}", kernel.label());
        }
    }
}
