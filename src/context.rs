//! The GPU the optimizers run on: adapter choice, device creation, and the limits that shape
//! the arenas.
//!
//! Two ways in: [`GpuContext::new`] picks the best adapter itself (discrete GPU, then integrated,
//! then virtual, then software) and opens a device with the adapter's own limits (wgpu would
//! otherwise grant only its defaults: 128 MiB bindings, 256 MiB buffers); [`GpuContext::from_device`]
//! wraps a device and queue the caller already has, so that a framework can hand its own buffers to
//! the optimizer without copies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::kernels::{IMMEDIATE_BYTES, KernelCache, KernelTarget, ScalarsVia};
use crate::storage::{Q8Blocks, Q8Lookups};

/// Vulkan addresses a binding with signed 32-bit offsets: whatever a driver reports, one binding
/// holds at most 2 GiB - 1 byte.
pub const VULKAN_MAX_BINDING_BYTES: u64 = i32::MAX as u64;

/// How to choose the adapter and what to ask of it.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Backends to consider; `None` reads `WGPU_BACKEND` (e.g. `vulkan`), else all of them.
    pub backends: Option<wgpu::Backends>,
    /// Keep only adapters whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Limits to request instead of the adapter's own (tests lower them to force segmenting).
    pub limits: Option<wgpu::Limits>,
    /// Pass the per-step values through a uniform buffer even where the device has immediates
    /// (the fallback path, which tests exercise this way).
    pub uniform_scalars: bool,
    /// Do without subgroup operations even where the device has them (q8 states' block
    /// maxima then take one atomic per invocation: the fallback path, which tests exercise
    /// this way).
    pub no_subgroups: bool,
    /// Where q8 states look their maps up; `None`: what suits the adapter
    /// ([`Q8Lookups::for_adapter`]). Tests set the other to exercise both.
    pub q8_lookups: Option<Q8Lookups>,
    /// Whether kernels read and write their buffers as 64-bit words
    /// ([`KernelTarget::wide_words`]); `None`: on CPU adapters that have 64-bit integers in
    /// shaders ([`wide_words_suit`]). Tests set the other to exercise both. `Some(true)` on
    /// an adapter without them is an error.
    pub wide_words: Option<bool>,
    /// Whether a subgroup holds each q8 block in the update kernels
    /// ([`Q8Blocks::Subgroup`]); `None`: on CPU adapters whose subgroups have one size
    /// ([`Q8Blocks::for_adapter`]). Tests set the other to exercise both. `Some(true)` where
    /// the device has no subgroups of one size dividing 64 is an error.
    pub q8_subgroup_blocks: Option<bool>,
}

/// Whether 64-bit words suit this adapter by default: a CPU adapter (lavapipe, llvmpipe,
/// WARP, SwiftShader), where every component of a storage access is paid for one invocation
/// at a time, with `SHADER_INT64`. GPUs move the same bytes in fewer, wider transactions
/// whatever the WGSL type, so they keep 32-bit words (and need no extra feature).
pub fn wide_words_suit(info: &wgpu::AdapterInfo, features: wgpu::Features) -> bool {
    info.device_type == wgpu::DeviceType::Cpu && features.contains(wgpu::Features::SHADER_INT64)
}

/// One adapter as `adapters` and the reports show it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdapterSummary {
    /// The adapter's name, as the driver reports it.
    pub name: String,
    /// The maker (NVIDIA, AMD, Intel, ...), or its PCI vendor id in hex when unknown.
    pub vendor: String,
    /// wgpu's `DeviceType` (`DiscreteGpu`, `IntegratedGpu`, `Cpu`, ...).
    pub device_type: String,
    /// The backend's name (`vulkan`, `metal`, `dx12`, `gl`, ...).
    pub backend: String,
    /// The driver's name (empty where the backend does not say).
    pub driver: String,
    /// Further details of the driver, usually its version (empty where the backend does not
    /// say).
    pub driver_info: String,
    /// The most bytes one storage binding may cover, as the limits say (before the Vulkan cap
    /// of [`VULKAN_MAX_BINDING_BYTES`]).
    pub max_storage_buffer_binding_size: u64,
    /// The largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// The most workgroups a dispatch may have along one dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// The alignment, in bytes, of a storage binding's offset.
    pub min_storage_buffer_offset_alignment: u32,
    /// Bytes of immediates (push constants) a pipeline may use; 0 without them.
    pub max_immediate_size: u32,
    /// Whether GPU timestamps are available (the benchmarks time with them, else with the
    /// host's clock).
    pub timestamp_query: bool,
    /// The largest subgroup size the adapter reports.
    pub subgroup_size: u32,
}

impl AdapterSummary {
    fn new(info: &wgpu::AdapterInfo, limits: &wgpu::Limits, features: wgpu::Features) -> Self {
        Self {
            name: info.name.clone(),
            vendor: vendor_name(info.vendor),
            device_type: format!("{:?}", info.device_type),
            backend: info.backend.to_str().to_string(),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            min_storage_buffer_offset_alignment: limits.min_storage_buffer_offset_alignment,
            max_immediate_size: limits.max_immediate_size,
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroup_size: info.subgroup_max_size,
        }
    }
}

/// PCI vendor ids of the GPU makers wgpu meets, spelled out; others as hex.
fn vendor_name(id: u32) -> String {
    match id {
        0x10de => "NVIDIA".into(),
        0x1002 | 0x1022 => "AMD".into(),
        0x8086 => "Intel".into(),
        0x106b => "Apple".into(),
        0x13b5 => "ARM".into(),
        0x5143 => "Qualcomm".into(),
        0x10005 => "Mesa".into(),
        0x1414 => "Microsoft".into(),
        other => format!("{other:#06x}"),
    }
}

/// A device, its queue, what it can do, and the compiled kernels shared by every optimizer on it.
///
/// Cheap to clone: every field is reference-counted.
#[derive(Clone, Debug)]
pub struct GpuContext {
    /// The device every buffer and pipeline of the optimizers lives on.
    pub device: wgpu::Device,
    /// The device's queue, where steps and transfers are submitted.
    pub queue: wgpu::Queue,
    /// The adapter behind the device (name, backend, device type).
    pub info: wgpu::AdapterInfo,
    /// The limits the device was opened with: the adapter's own unless
    /// [`ContextOptions::limits`] asked for others.
    pub limits: wgpu::Limits,
    /// The features enabled on the device; this crate uses timestamps and immediates where
    /// they are present.
    pub features: wgpu::Features,
    pub(crate) kernels: Arc<KernelCache>,
}

/// Ordering of adapters: lower is better.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    // The native APIs before GL, whose compute path is the least capable.
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, backend)
}

/// One wgpu instance per set of backends for the whole process.
///
/// wgpu numbers buffers per instance: a buffer of another instance's device handed to this
/// one's is not an error wgpu can report (it panics, or worse, finds another buffer). With one
/// shared instance, every device this crate opens can tell a foreign buffer and report it as a
/// validation error, which [`Optimizer`](crate::Optimizer) turns into [`Error::BadBuffer`].
fn instance(backends: Option<wgpu::Backends>) -> wgpu::Instance {
    static INSTANCES: OnceLock<Mutex<HashMap<u64, wgpu::Instance>>> = OnceLock::new();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(backends) = backends {
        desc.backends = backends;
    }
    let key = desc.backends.bits() as u64;
    INSTANCES
        .get_or_init(Default::default)
        .lock()
        .expect("instance cache poisoned")
        .entry(key)
        .or_insert_with(|| wgpu::Instance::new(desc))
        .clone()
}

/// Every adapter wgpu finds on the given backends (or `WGPU_BACKEND`, or all), best first.
/// A `WGPU_BACKEND` that names no backend is an error, not an empty list.
pub fn list_adapters(backends: Option<wgpu::Backends>) -> Result<Vec<AdapterSummary>> {
    if backends.is_none() {
        backends_from_env()?;
    }
    Ok(sorted_adapters(&instance(backends))
        .iter()
        .map(|a| AdapterSummary::new(&a.get_info(), &a.limits(), a.features()))
        .collect())
}

/// The backends `WGPU_BACKEND` names (`None` when it is unset), as wgpu reads it: a
/// comma-separated list of `vulkan` (`vk`), `gl` (`gles`, `opengl`), `metal` (`mtl`), `dx12`
/// (`d3d12`), `webgpu` or `noop`, in any case. wgpu itself skips a name it does not know, and
/// with none left finds no adapter at all; here any unknown name (or no name) is an error
/// that says so.
pub fn backends_from_env() -> Result<Option<wgpu::Backends>> {
    const VARIABLE: &str = "WGPU_BACKEND";
    let Some(raw) = std::env::var_os(VARIABLE) else {
        return Ok(None);
    };
    let bad = |value: String, reason: String| Error::Environment {
        variable: VARIABLE,
        value,
        reason: format!("{reason}; valid: vulkan, gl, metal, dx12 (comma-separated)"),
    };
    let Some(value) = raw.to_str() else {
        return Err(bad(
            raw.to_string_lossy().into_owned(),
            "is not valid UTF-8".into(),
        ));
    };
    let names: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Err(bad(value.into(), "names no backend".into()));
    }
    let mut backends = wgpu::Backends::empty();
    for name in &names {
        let backend = wgpu::Backends::from_comma_list(name);
        if backend.is_empty() {
            return Err(bad(
                value.into(),
                if names.len() == 1 {
                    "names no backend".into()
                } else {
                    format!("names no backend in `{name}`")
                },
            ));
        }
        backends |= backend;
    }
    Ok(Some(backends))
}

/// Device memory still free, as far as it can be learned, and where the figure comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvailableMemory {
    /// Bytes that can still be allocated.
    pub bytes: u64,
    /// Completes "this ... has N available": e.g. "CPU adapter" or "integrated GPU (it shares
    /// the host's memory)".
    pub what: String,
}

/// `MemAvailable` of `/proc/meminfo`, in bytes: the host memory that can be allocated without
/// swapping (Linux only).
pub fn host_memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        None => 1,
        Some(u) if u.eq_ignore_ascii_case("kb") => 1024,
        Some(_) => return None,
    };
    value.checked_mul(unit)
}

fn sorted_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(|a| adapter_rank(&a.get_info()));
    adapters
}

/// The features this crate uses when the adapter has them: immediates for the per-step values,
/// GPU timestamps for the benchmarks, subgroup operations for q8 states' block maxima, 64-bit
/// integers for wide words on CPU adapters ([`wide_words_suit`]).
fn wanted_features(available: wgpu::Features, options: &ContextOptions) -> wgpu::Features {
    let mut wanted = wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    if !options.uniform_scalars {
        wanted |= wgpu::Features::IMMEDIATES;
    }
    if !options.no_subgroups {
        wanted |= wgpu::Features::SUBGROUP;
    }
    if options.wide_words != Some(false) {
        wanted |= wgpu::Features::SHADER_INT64;
    }
    available & wanted
}

impl GpuContext {
    /// Opens a device on the best adapter that matches `options`. Without `options.backends`,
    /// a `WGPU_BACKEND` that names no backend is an error ([`backends_from_env`]).
    pub fn new(options: &ContextOptions) -> Result<Self> {
        if options.backends.is_none() {
            backends_from_env()?;
        }
        let instance = instance(options.backends);
        let all = sorted_adapters(&instance);
        let wanted = options.adapter_name.as_deref().map(str::to_lowercase);
        let adapter = all
            .iter()
            .find(|a| {
                wanted
                    .as_deref()
                    .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
            })
            .ok_or_else(|| no_adapter_error(&all, options))?;
        let info = adapter.get_info();
        let features = wanted_features(adapter.features(), options);
        let limits = options.limits.clone().unwrap_or_else(|| adapter.limits());
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-optim"),
            required_features: features,
            required_limits: limits.clone(),
            // The optimizer's buffers are few and large (a segment per role): suballocating
            // them from big blocks wastes up to half of each block (a q8 state's 65 MiB in a
            // 128 MiB block), which past 2^31 elements is gigabytes.
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            ..Default::default()
        }))
        .map_err(|source| Error::RequestDevice {
            adapter: info.name.clone(),
            source,
        })?;
        let q8_lookups = match options.q8_lookups {
            Some(lookups) if !lookups.fits(&limits) => {
                return Err(Error::DoesNotFit(format!(
                    "q8 lookups {lookups:?} need a uniform binding of {} bytes; adapter `{}` \
                     allows {} (Q8Lookups::Workgroup needs {})",
                    lookups.uniform_bytes(),
                    info.name,
                    limits.max_uniform_buffer_binding_size,
                    Q8Lookups::Workgroup.uniform_bytes(),
                )));
            }
            Some(lookups) => lookups,
            None => Q8Lookups::for_adapter(&info, &limits),
        };
        let wide_words = match options.wide_words {
            Some(true) if !features.contains(wgpu::Features::SHADER_INT64) => {
                return Err(Error::DoesNotFit(format!(
                    "64-bit words need 64-bit integers in shaders (SHADER_INT64), which \
                     adapter `{}` does not offer",
                    info.name
                )));
            }
            Some(wide) => wide,
            None => wide_words_suit(&info, features),
        };
        let q8_blocks = match options.q8_subgroup_blocks {
            Some(true) => Q8Blocks::subgroup_of(&info, features).ok_or_else(|| {
                Error::DoesNotFit(format!(
                    "q8 blocks in subgroups need subgroup operations and one subgroup size \
                     dividing 64; adapter `{}` has {} (sizes {} to {})",
                    info.name,
                    if features.contains(wgpu::Features::SUBGROUP) {
                        "subgroups"
                    } else {
                        "no subgroups on this device"
                    },
                    info.subgroup_min_size,
                    info.subgroup_max_size,
                ))
            })?,
            Some(false) => Q8Blocks::Workgroup,
            None => Q8Blocks::for_adapter(&info, features),
        };
        Ok(Self {
            device,
            queue,
            info,
            limits,
            features,
            kernels: Arc::new(KernelCache::new(KernelTarget {
                subgroups: features.contains(wgpu::Features::SUBGROUP),
                q8_lookups,
                wide_words,
                q8_blocks,
            })),
        })
    }

    /// Wraps a device the caller already opened (interop with another wgpu-based framework).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        let limits = device.limits();
        Self {
            kernels: Arc::new(KernelCache::new(KernelTarget {
                subgroups: device.features().contains(wgpu::Features::SUBGROUP),
                q8_lookups: Q8Lookups::for_adapter(&info, &limits),
                wide_words: wide_words_suit(&info, device.features()),
                q8_blocks: Q8Blocks::for_adapter(&info, device.features()),
            })),
            info,
            limits,
            features: device.features(),
            device,
            queue,
        }
    }

    /// The adapter as the reports print it.
    pub fn summary(&self) -> AdapterSummary {
        AdapterSummary::new(&self.info, &self.limits, self.features)
    }

    /// The most bytes one storage binding may cover on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        let mut bytes = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if self.info.backend == wgpu::Backend::Vulkan {
            bytes = bytes.min(VULKAN_MAX_BINDING_BYTES);
        }
        bytes
    }

    /// How optimizer kernels on this device receive their per-step values.
    pub fn scalars_via(&self) -> ScalarsVia {
        if self.features.contains(wgpu::Features::IMMEDIATES)
            && self.limits.max_immediate_size >= IMMEDIATE_BYTES
        {
            ScalarsVia::Immediates
        } else {
            ScalarsVia::UniformBuffer
        }
    }

    /// The memory this device can still allocate, where it can be learned: for a software
    /// adapter (and an integrated GPU, which shares it) the host's `MemAvailable`. `None` for a
    /// discrete GPU: wgpu reports no memory budget, so only the limits can be checked.
    pub fn available_memory(&self) -> Option<AvailableMemory> {
        let what = match self.info.device_type {
            wgpu::DeviceType::Cpu => "CPU adapter",
            wgpu::DeviceType::IntegratedGpu => "integrated GPU (it shares the host's memory)",
            _ => return None,
        };
        Some(AvailableMemory {
            bytes: host_memory_available()?,
            what: what.into(),
        })
    }

    /// Whether kernels may use subgroup operations (q8 states' block maxima do).
    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    /// What this device's optimizer kernels are compiled for.
    pub fn kernel_target(&self) -> KernelTarget {
        self.kernels.target
    }

    /// The most iterations a shader's loops may make in one invocation on this adapter
    /// before the driver leaves them early, where it does (llvmpipe: 65,535); `None` where
    /// loops run to their end. Kernels whose loops grow with a tensor's shape check it.
    pub fn loop_limit(&self) -> Option<u64> {
        // Mesa's gallivm (llvmpipe, lavapipe) counts the iterations of every loop of an
        // invocation and leaves the loop after 65,535 (LP_MAX_TGSI_LOOP_ITERATIONS), silently:
        // measured here, a 70,000-term dot product in one loop returns the sum of 65,535.
        self.info.name.contains("llvmpipe").then_some(65_535)
    }

    /// Whether GPU timestamps can be written between passes.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Blocks until the GPU has finished everything submitted so far.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Wait(e.to_string()))
    }
}

/// "vulkan, gl" for a set of backends.
fn backend_names(backends: wgpu::Backends) -> String {
    [
        (wgpu::Backends::VULKAN, "vulkan"),
        (wgpu::Backends::METAL, "metal"),
        (wgpu::Backends::DX12, "dx12"),
        (wgpu::Backends::GL, "gl"),
        (wgpu::Backends::BROWSER_WEBGPU, "webgpu"),
    ]
    .iter()
    .filter(|(b, _)| backends.contains(*b))
    .map(|(_, name)| *name)
    .collect::<Vec<_>>()
    .join(", ")
}

fn no_adapter_error(seen: &[wgpu::Adapter], options: &ContextOptions) -> Error {
    match &options.adapter_name {
        Some(wanted) if !seen.is_empty() => Error::NoMatchingAdapter {
            wanted: wanted.clone(),
            available: seen
                .iter()
                .map(|a| {
                    let i = a.get_info();
                    format!("`{}` ({})", i.name, i.backend.to_str())
                })
                .collect::<Vec<_>>()
                .join(", "),
        },
        _ => Error::NoAdapter {
            detail: match options.backends.or_else(wgpu::Backends::from_env) {
                Some(b) if b != wgpu::Backends::all() => {
                    format!(" for backend {}", backend_names(b))
                }
                _ => String::new(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo =
            "MemTotal:       32768000 kB\nMemFree:  100 kB\nMemAvailable:   23634616 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(23_634_616 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
    }
}
