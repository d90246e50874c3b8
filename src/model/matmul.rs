//! Which kernel multiplies a serving pass's f32 activations by a weight on the CPU.
//!
//! libtorch's `linear` sends f32 on the CPU to its BLAS (MKL in the PyPI builds). MKL picks its
//! kernels by CPU vendor: on AMD EPYC it ran at about half the rate of libtorch's own oneDNN on
//! the same shapes (BENCHMARKS.md §11, "This stop: oneDNN"). A serving pass therefore
//! multiplies through oneDNN, by default over weights reordered once at load into oneDNN's own
//! layout (`onednn.cpp`; plain `mkldnn_linear` reorders the weight on every call, which at a
//! decode step's few rows is most of the call: BENCHMARKS.md §17); by default a pass of one or
//! two rows instead reads the plain weight through promptd's own matrix-vector kernel
//! (`kernels.cpp`, `--cpu-matmul few-rows`: BENCHMARKS.md §19). Everything else keeps `linear`:
//! - GPUs and other dtypes (bf16 on the CPU already goes to oneDNN inside `linear`);
//! - anything that needs gradients, and every training forward, so a tuning step stays the
//!   same computation as PyTorch's;
//! - `--cpu-matmul blas`, which puts every layer back on the BLAS (for comparisons, or on a CPU
//!   where the BLAS is the faster one).
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::int8::{Int8Kernel, Int8Weight};
use super::kernels;

extern "C" {
    fn promptd_onednn_pack(weight: *const c_void, error: *mut *mut c_char) -> *mut c_void;
    fn promptd_onednn_linear(
        x: *const c_void,
        packed: *const c_void,
        error: *mut *mut c_char,
    ) -> *mut c_void;
}

/// The kernel for CPU f32 serving matmuls (`--cpu-matmul`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum CpuMatmul {
    /// promptd's own kernel over the plain weight for a pass of 1 or 2 rows (a decode step's
    /// matrix-vector products, bound by reading the weight: `kernels.cpp`), onednn-packed above.
    #[default]
    FewRows,
    /// libtorch's oneDNN over each weight reordered once at load into oneDNN's layout (a
    /// second copy of every linear weight), where libtorch was built with oneDNN.
    OnednnPacked,
    /// libtorch's oneDNN (`mkldnn_linear`) over the plain weights (reordered at every call).
    Onednn,
    /// libtorch's BLAS, as `torch.nn.functional.linear` (MKL in the PyPI builds).
    Blas,
}

/// Set once by the command line, like libtorch's thread count (a process-wide library setting):
/// the [`CpuMatmul`] as its index.
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// Selects the CPU f32 serving matmul kernel for this process.
pub fn set_cpu_matmul(choice: CpuMatmul) {
    CHOICE.store(choice as u8, Ordering::Relaxed);
}

/// The kernel CPU f32 serving matmuls use now (BLAS where libtorch has no oneDNN).
pub fn cpu_matmul() -> CpuMatmul {
    match CHOICE.load(Ordering::Relaxed) {
        _ if !has_onednn() => CpuMatmul::Blas,
        0 => CpuMatmul::FewRows,
        1 => CpuMatmul::OnednnPacked,
        2 => CpuMatmul::Onednn,
        _ => CpuMatmul::Blas,
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
        && cpu_matmul() != CpuMatmul::Blas;
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

/// How a model's linear layers are packed for serving passes on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// int8 per output channel by libtorch's quantized engine (`--dtype int8`).
    Int8(Int8Kernel),
    /// f32 reordered into oneDNN's layout (`--cpu-matmul onednn-packed`).
    Onednn,
}

/// A weight packed for serving passes.
enum Pack {
    Int8(Int8Weight),
    /// The opaque oneDNN tensor `onednn.cpp` made.
    Onednn(Tensor),
}

/// A linear layer's weight [out, in], and its pack for serving passes on the CPU once the
/// model is packed ([`Packing`]): serving passes on f32 CPU activations multiply through the
/// pack; training and anything with gradients keep the plain weight (tuning stays f32, and
/// the same computation as PyTorch's, on a packed server).
pub struct Linear {
    weight: Tensor,
    pack: Option<Pack>,
}

impl Linear {
    /// A layer multiplying by `weight`.
    pub fn new(weight: Tensor) -> Self {
        Self { weight, pack: None }
    }

    /// The f32 (or the model's dtype) weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Packs the weight for serving passes.
    pub fn pack(&mut self, packing: Packing) -> Result<(), ModelError> {
        self.pack = Some(match packing {
            Packing::Int8(kernel) => Pack::Int8(Int8Weight::for_kernel(&self.weight, kernel)?),
            Packing::Onednn => Pack::Onednn(onednn_pack(&self.weight)?),
        });
        Ok(())
    }

    /// `x @ weight.T`: through the pack when there is one and this is a serving pass on f32
    /// CPU activations, else as [`linear`].
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor, ModelError> {
        let serving = !training
            && x.device() == Device::Cpu
            && x.kind() == Kind::Float
            && x.numel() > 0
            && !x.requires_grad();
        match &self.pack {
            Some(Pack::Int8(q)) if serving => q.linear(x),
            Some(Pack::Onednn(w)) if serving => match few_rows(x, &self.weight)? {
                Some(out) => Ok(out),
                None => onednn_linear(x, w, self.weight.size()[0]),
            },
            _ => linear(x, &self.weight, training),
        }
    }
}

/// `x @ weight.T` by [`kernels::few_rows_linear`] where `--cpu-matmul few-rows` is chosen and
/// `x` holds 1 to [`kernels::few_rows_max`] rows of a plain f32 CPU weight; `None` otherwise.
fn few_rows(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>, ModelError> {
    let inner = x.size().last().copied().unwrap_or(0);
    let rows = if inner > 0 {
        x.numel() as i64 / inner
    } else {
        0
    };
    if cpu_matmul() != CpuMatmul::FewRows
        || !(1..=kernels::few_rows_max()).contains(&rows)
        || weight.kind() != Kind::Float
        || weight.device() != Device::Cpu
    {
        return Ok(None);
    }
    let _guard = tch::no_grad_guard();
    let mut shape = x.size();
    *shape.last_mut().expect("rows > 0") = weight.size()[0];
    let out = kernels::few_rows_linear(&x.f_reshape([rows, inner])?, weight)?;
    Ok(Some(out.f_view(shape.as_slice())?))
}

fn take_error(e: *mut c_char, what: &str) -> ModelError {
    super::int8::shim_error(e, &format!("oneDNN {what}"))
}

/// `weight` [out, in] (f32, CPU) reordered into oneDNN's layout.
fn onednn_pack(weight: &Tensor) -> Result<Tensor, ModelError> {
    if weight.dim() != 2 || weight.device() != Device::Cpu || weight.kind() != Kind::Float {
        return Err(ModelError::Config(format!(
            "oneDNN packs 2-D f32 CPU weights, got {:?} {:?} on {:?}",
            weight.size(),
            weight.kind(),
            weight.device()
        )));
    }
    let mut error = std::ptr::null_mut();
    // SAFETY: `weight` lives through the call; the result is a new at::Tensor that
    // `Tensor::from_ptr` owns (and frees).
    let out = unsafe { promptd_onednn_pack(weight.as_ptr() as *const c_void, &mut error) };
    if out.is_null() {
        return Err(take_error(error, "packing a weight"));
    }
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
}

/// `x @ W.T` for f32 `x` [..., in] through a weight [`onednn_pack`] made with `outputs` rows.
fn onednn_linear(x: &Tensor, packed: &Tensor, outputs: i64) -> Result<Tensor, ModelError> {
    let _guard = tch::no_grad_guard();
    let mut shape = x.size();
    let inner = *shape
        .last()
        .ok_or_else(|| ModelError::Config("matmul of a scalar".into()))?;
    *shape.last_mut().expect("checked above") = outputs;
    let flat = x.f_reshape([-1, inner])?.f_contiguous()?;
    let mut error = std::ptr::null_mut();
    // SAFETY: `flat` and `packed` live through the call; the result is a new at::Tensor that
    // `Tensor::from_ptr` owns (and frees).
    let out = unsafe {
        promptd_onednn_linear(
            flat.as_ptr() as *const c_void,
            packed.as_ptr() as *const c_void,
            &mut error,
        )
    };
    if out.is_null() {
        return Err(take_error(error, "linear"));
    }
    let out = unsafe { Tensor::from_ptr(out as *mut _) };
    Ok(out.f_view(shape.as_slice())?)
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

    #[test]
    fn a_packed_layer_equals_its_kernels_bit_for_bit_and_trains_on_the_plain_weight() {
        if !has_onednn() {
            return;
        }
        let _guard = tch::no_grad_guard();
        // Inputs of its own (libtorch's generator is shared with tests running in parallel).
        let fill = |n: i64, shift: f64| {
            Tensor::arange(n, (Kind::Float, Device::Cpu))
                .f_mul_scalar(0.37)
                .unwrap()
                .f_add_scalar(shift)
                .unwrap()
                .sin()
        };
        let w = fill(48 * 32, 0.5).view([48, 32]);
        let mut layer = Linear::new(w.shallow_clone());
        layer.pack(Packing::Onednn).unwrap();
        // The default kernel (few-rows, which no test changes): one or two rows through
        // promptd's own kernel, more through the packed weight.
        assert_eq!(cpu_matmul(), CpuMatmul::FewRows);
        for shape in [vec![1i64, 32], vec![2, 1, 32], vec![5, 32], vec![3, 7, 32]] {
            let x = fill(shape.iter().product(), 1.5).view(shape.as_slice());
            let packed = layer.forward(&x, false).unwrap();
            let flat = x.reshape([-1, 32]);
            let plain = if flat.size()[0] <= kernels::few_rows_max() {
                kernels::few_rows_linear(&flat, &w).unwrap()
            } else {
                flat.to_mkldnn()
                    .mkldnn_linear(&w, None::<Tensor>)
                    .to_dense(None, false)
            }
            .view(packed.size().as_slice());
            assert!(packed.equal(&plain), "{shape:?}");
            // A training pass multiplies by the plain weight through libtorch's linear.
            let trained = layer.forward(&x, true).unwrap();
            assert!(trained.equal(&x.linear::<Tensor>(&w, None)), "{shape:?}");
        }
        let empty = Tensor::zeros([0, 32], (Kind::Float, Device::Cpu));
        assert_eq!(layer.forward(&empty, false).unwrap().size(), vec![0, 48]);
    }
}
