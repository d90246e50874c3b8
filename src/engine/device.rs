//! `--device` and `--dtype` choices.
use std::str::FromStr;

use tch::{Device, Kind};

/// `auto | cpu | cuda | cuda:N`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when available, else CPU.
    Auto,
    /// CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("invalid device {s:?}: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl DeviceSpec {
    /// Resolves to a tch device; errors when CUDA is asked for but absent.
    pub fn resolve(self) -> Result<Device, String> {
        let cuda_count = tch::Cuda::device_count() as usize;
        match self {
            Self::Auto => Ok(if cuda_count > 0 {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) if n < cuda_count => Ok(Device::Cuda(n)),
            Self::Cuda(n) => Err(format!(
                "device cuda:{n} requested but {cuda_count} CUDA device(s) are visible \
                 (a CPU-only build sees none: build with --features cuda)"
            )),
        }
    }
}

/// `auto | f32 | bf16 | f16 | int8`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeSpec {
    /// f32 on CPU, bf16 on GPU.
    Auto,
    /// float32
    F32,
    /// bfloat16
    Bf16,
    /// float16 (T5 v1.1/Flan overflow in f16: allowed with a warning)
    F16,
    /// f32 weights with the linear layers also packed as int8 for serving on the CPU
    /// ([`crate::model::int8`]); tuning keeps f32.
    Int8,
}

impl FromStr for DtypeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            _ => Err(format!(
                "invalid dtype {s:?}: use auto, f32, bf16, f16 or int8"
            )),
        }
    }
}

impl DtypeSpec {
    /// Whether the linear layers serve in int8 (`--dtype int8`).
    pub fn is_int8(self) -> bool {
        self == Self::Int8
    }

    /// The dtype for `device`.
    pub fn resolve(self, device: Device) -> Kind {
        match self {
            Self::Auto if device == Device::Cpu => Kind::Float,
            Self::Auto | Self::Bf16 => Kind::BFloat16,
            Self::F32 | Self::Int8 => Kind::Float,
            Self::F16 => {
                tracing::warn!(
                    "dtype f16: T5 v1.1/Flan activations overflow in float16; prefer bf16"
                );
                Kind::Half
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DtypeSpec::Auto.resolve(Device::Cpu), Kind::Float);
        assert_eq!(DtypeSpec::Auto.resolve(Device::Cuda(0)), Kind::BFloat16);
        assert!("f64".parse::<DtypeSpec>().is_err());
    }
}
