//! Which kernel multiplies a serving pass's f32 activations by a weight on the CPU.
//!
//! libtorch's `linear` sends f32 on the CPU to its BLAS (MKL in the PyPI builds). MKL picks its
//! kernels by CPU vendor: on AMD EPYC it ran at about half the rate of libtorch's own oneDNN on
//! the same shapes (BENCHMARKS.md §11, "This stop: oneDNN"). A serving pass therefore
//! multiplies through oneDNN (`mkldnn_linear`: the activations wrapped as a oneDNN tensor, the
//! output read back dense), and everything else keeps `linear`:
//! - GPUs and other dtypes (bf16 on the CPU already goes to oneDNN inside `linear`);
//! - anything that needs gradients, and every training forward, so a tuning step stays the
//!   same computation as PyTorch's;
//! - `--cpu-matmul blas`, which puts every layer back on the BLAS (for comparisons, or on a CPU
//!   where the BLAS is the faster one).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::int8::{Int8Kernel, Int8Weight};

/// The kernel for CPU f32 serving matmuls (`--cpu-matmul`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum CpuMatmul {
    /// libtorch's oneDNN (`mkldnn_linear`), where libtorch was built with it.
    #[default]
    Onednn,
    /// libtorch's BLAS, as `torch.nn.functional.linear` (MKL in the PyPI builds).
    Blas,
}

/// Set once by the command line, like libtorch's thread count (a process-wide library setting).
static BLAS_ONLY: AtomicBool = AtomicBool::new(false);

/// Selects the CPU f32 serving matmul kernel for this process.
pub fn set_cpu_matmul(choice: CpuMatmul) {
    BLAS_ONLY.store(choice == CpuMatmul::Blas, Ordering::Relaxed);
}

/// The kernel CPU f32 serving matmuls use now (BLAS where libtorch has no oneDNN).
pub fn cpu_matmul() -> CpuMatmul {
    if BLAS_ONLY.load(Ordering::Relaxed) || !has_onednn() {
        CpuMatmul::Blas
    } else {
        CpuMatmul::Onednn
    }
}

fn has_onednn() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(tch::utils::has_mkldnn)
}

/// `x @ weight.T` for `x` [..., in] and `weight` [out, in]; `training` is set while a tuning
/// forward runs (it keeps libtorch's `linear`).
pub fn linear(x: &Tensor, weight: &Tensor, training: bool) -> Result<Tensor, ModelError> {
    let onednn = !training
        && x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && weight.kind() == Kind::Float
        && x.numel() > 0
        && !x.requires_grad()
        && !weight.requires_grad()
        && cpu_matmul() == CpuMatmul::Onednn;
    if !onednn {
        return Ok(x.f_linear::<Tensor>(weight, None)?);
    }
    let mut shape = x.size();
    let inner = *shape
        .last()
        .ok_or_else(|| ModelError::Config("matmul of a scalar".into()))?;
    *shape.last_mut().expect("checked above") = weight.size()[0];
    let flat = x.f_reshape([-1, inner])?.f_contiguous()?;
    let out = flat
        .f_to_mkldnn(None)?
        .f_mkldnn_linear(weight, None::<Tensor>)?
        .f_to_dense(None, false)?;
    Ok(out.f_view(shape.as_slice())?)
}

/// A linear layer's weight [out, in], and its int8 pack once the model is quantized
/// (`--dtype int8`): serving passes on the CPU multiply through the pack; training and anything
/// with gradients keep the f32 weight (tuning stays f32 on an int8 server).
pub struct Linear {
    weight: Tensor,
    int8: Option<Int8Weight>,
}

impl Linear {
    /// A layer multiplying by `weight`.
    pub fn new(weight: Tensor) -> Self {
        Self { weight, int8: None }
    }

    /// The f32 (or the model's dtype) weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Packs the weight as int8 for serving passes.
    pub fn quantize(&mut self, kernel: Int8Kernel) -> Result<(), ModelError> {
        self.int8 = Some(Int8Weight::new(&self.weight, kernel)?);
        Ok(())
    }

    /// `x @ weight.T`: through the int8 pack when there is one and this is a serving pass on
    /// f32 CPU activations, else as [`linear`].
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor, ModelError> {
        match &self.int8 {
            Some(q)
                if !training
                    && x.device() == Device::Cpu
                    && x.kind() == Kind::Float
                    && x.numel() > 0
                    && !x.requires_grad() =>
            {
                q.linear(x)
            }
            _ => linear(x, &self.weight, training),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onednn_and_blas_agree_on_2d_and_3d_inputs() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(3);
        let w = Tensor::randn([48, 32], (Kind::Float, Device::Cpu));
        for shape in [vec![5i64, 32], vec![3, 7, 32], vec![1, 1, 32]] {
            let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
            let fast = linear(&x, &w, false).unwrap();
            let plain = linear(&x, &w, true).unwrap();
            assert_eq!(fast.size(), plain.size());
            let diff = (&fast - &plain).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "{shape:?}: {diff}");
        }
        // A strided input (a transposed view) and an empty one.
        let x = Tensor::randn([32, 6], (Kind::Float, Device::Cpu)).tr();
        let diff = (linear(&x, &w, false).unwrap() - x.linear::<Tensor>(&w, None))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
        let empty = Tensor::zeros([0, 32], (Kind::Float, Device::Cpu));
        assert_eq!(linear(&empty, &w, false).unwrap().size(), vec![0, 48]);
    }
}
