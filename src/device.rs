//! `--device cpu|wgpu[:cpu|:N]|cuda[:N]`: parsing, availability probes, and the mapping
//! from the flag to a concrete Burn backend.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum DeviceArg {
    Cpu,
    /// None = the best adapter present; Some(None) software/CPU adapter; index = discrete GPU.
    Wgpu(WgpuChoice),
    Cuda(usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WgpuChoice {
    Default,
    Cpu,
    Discrete(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s.as_str(), None),
        };
        let index = |a: &str| {
            a.parse::<usize>()
                .map_err(|_| format!("device index {a:?} is not a number"))
        };
        match (kind, arg) {
            ("cpu", None) => Ok(Self::Cpu),
            ("wgpu", None) => Ok(Self::Wgpu(WgpuChoice::Default)),
            ("wgpu", Some("cpu")) => Ok(Self::Wgpu(WgpuChoice::Cpu)),
            ("wgpu", Some(a)) => Ok(Self::Wgpu(WgpuChoice::Discrete(index(a)?))),
            ("cuda", None) => Ok(Self::Cuda(0)),
            ("cuda", Some(a)) => Ok(Self::Cuda(index(a)?)),
            _ => Err(format!(
                "unknown device {s:?}: use cpu, wgpu, wgpu:cpu, wgpu:N, cuda or cuda:N"
            )),
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Wgpu(WgpuChoice::Default) => write!(f, "wgpu"),
            Self::Wgpu(WgpuChoice::Cpu) => write!(f, "wgpu:cpu"),
            Self::Wgpu(WgpuChoice::Discrete(i)) => write!(f, "wgpu:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The backend and device a command runs on, after the probe said it exists.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Wgpu(burn::backend::wgpu::WgpuDevice),
    #[cfg(feature = "cuda")]
    Cuda(burn::backend::cuda::CudaDevice),
}

pub type CpuBackend = burn::backend::Flex;
pub type WgpuBackend = burn::backend::Wgpu;
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

impl DeviceArg {
    /// The backend this device belongs to (devices of one training job share it).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu(_) => "wgpu",
            Self::Cuda(_) => "cuda",
        }
    }

    /// Checks the device exists before any backend touches it (backends panic otherwise).
    pub fn open(&self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Wgpu(choice) => open_wgpu(*choice),
            Self::Cuda(index) => open_cuda(*index),
        }
    }
}

fn open_wgpu(choice: WgpuChoice) -> Result<Device> {
    use burn::backend::wgpu::WgpuDevice;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let types: Vec<wgpu::DeviceType> = adapters.iter().map(|a| a.get_info().device_type).collect();
    let hint = "install a Vulkan driver (on Debian: `apt-get install mesa-vulkan-drivers` gives a software one) or use --device cpu";
    if types.is_empty() {
        bail!("device wgpu unavailable: no Vulkan/Metal/DX12 adapter found; {hint}");
    }
    let discrete = types
        .iter()
        .filter(|t| **t == wgpu::DeviceType::DiscreteGpu)
        .count();
    let gpu_like = types.iter().any(|t| {
        matches!(
            t,
            wgpu::DeviceType::DiscreteGpu
                | wgpu::DeviceType::IntegratedGpu
                | wgpu::DeviceType::VirtualGpu
        )
    });
    match choice {
        WgpuChoice::Default if gpu_like => Ok(Device::Wgpu(WgpuDevice::DefaultDevice)),
        // Only a software adapter (lavapipe): ask for it by type.
        WgpuChoice::Default | WgpuChoice::Cpu if types.contains(&wgpu::DeviceType::Cpu) => {
            Ok(Device::Wgpu(WgpuDevice::Cpu))
        }
        WgpuChoice::Cpu | WgpuChoice::Default => {
            bail!("device wgpu:cpu unavailable: no software (CPU) adapter among {types:?}; {hint}")
        }
        WgpuChoice::Discrete(i) if i < discrete => Ok(Device::Wgpu(WgpuDevice::DiscreteGpu(i))),
        WgpuChoice::Discrete(i) => {
            bail!("device wgpu:{i} unavailable: {discrete} discrete GPU(s) found; pick an index below {discrete}, or use wgpu:cpu / cpu")
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(index: usize) -> Result<Device> {
    // SAFETY: only probes whether the driver library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("device cuda:{index} unavailable: the NVIDIA driver library (libcuda) was not found; install the NVIDIA driver or use --device cpu/wgpu");
    }
    let count = cudarc::driver::result::init()
        .and_then(|_| cudarc::driver::result::device::get_count())
        .map_err(|e| anyhow::anyhow!("device cuda:{index} unavailable: the CUDA driver failed to initialise ({e}); check `nvidia-smi`, or use --device cpu"))?;
    if index >= count as usize {
        bail!("device cuda:{index} unavailable: {count} CUDA device(s) found; pick an index below {count}");
    }
    Ok(Device::Cuda(burn::backend::cuda::CudaDevice::new(index)))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(index: usize) -> Result<Device> {
    bail!("device cuda:{index} unavailable: this vitrine binary was built without CUDA support; rebuild it with `cargo build --release --features cuda`, or use --device cpu/wgpu")
}

/// The concrete device of backend `Self` among opened devices (for `--devices`).
pub trait PickDevice: burn::tensor::backend::Backend {
    fn pick(device: &Device) -> Option<Self::Device>;

    fn pick_all(devices: &[Device]) -> Result<Vec<Self::Device>> {
        devices
            .iter()
            .map(|d| Self::pick(d).ok_or_else(|| anyhow::anyhow!("--devices mixes device kinds")))
            .collect()
    }
}

impl PickDevice for CpuBackend {
    fn pick(device: &Device) -> Option<Self::Device> {
        matches!(device, Device::Cpu).then_some(burn::backend::flex::FlexDevice)
    }
}

impl PickDevice for WgpuBackend {
    fn pick(device: &Device) -> Option<Self::Device> {
        match device {
            Device::Wgpu(d) => Some(d.clone()),
            _ => None,
        }
    }
}

#[cfg(feature = "cuda")]
impl PickDevice for CudaBackend {
    fn pick(device: &Device) -> Option<Self::Device> {
        match device {
            Device::Cuda(d) => Some(d.clone()),
            _ => None,
        }
    }
}

/// Work written once for every backend: [`on`] runs it on the backend of an opened device.
pub trait OnBackend {
    type Output;
    fn run<B: PickDevice>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `job` on `device`'s backend.
pub fn on<J: OnBackend>(device: &Device, job: J) -> Result<J::Output> {
    match device {
        Device::Cpu => job.run::<CpuBackend>(burn::backend::flex::FlexDevice),
        Device::Wgpu(d) => job.run::<WgpuBackend>(d.clone()),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => job.run::<CudaBackend>(d.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_flags() {
        assert_eq!("cpu".parse::<DeviceArg>(), Ok(DeviceArg::Cpu));
        assert_eq!(
            "wgpu".parse::<DeviceArg>(),
            Ok(DeviceArg::Wgpu(WgpuChoice::Default))
        );
        assert_eq!(
            "WGPU:cpu".parse::<DeviceArg>(),
            Ok(DeviceArg::Wgpu(WgpuChoice::Cpu))
        );
        assert_eq!(
            "wgpu:1".parse::<DeviceArg>(),
            Ok(DeviceArg::Wgpu(WgpuChoice::Discrete(1)))
        );
        assert_eq!("cuda".parse::<DeviceArg>(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceArg>(), Ok(DeviceArg::Cuda(3)));
        assert!("tpu".parse::<DeviceArg>().is_err());
        assert!("cuda:x".parse::<DeviceArg>().is_err());
    }
}
