//! `--dtype int8` on the CPU: the linear layers' weights quantized per output channel
//! (symmetric int8) and prepacked once, activations quantized per call and per row (so a
//! batched row equals the row alone: bit for bit on fbgemm, within one f32 rounding of the
//! output on oneDNN where it picks its kernel by the row count; `int8.cpp` says how), through libtorch's own
//! dynamically quantized linear (`quantized::linear_dynamic`, what PyTorch's `quantize_dynamic`
//! runs), by its fbgemm or oneDNN engine. tch does not expose those operators, so a small C++
//! shim (`int8.cpp`, built by build.rs against the same libtorch) reaches them through
//! libtorch's dispatcher. The embedding lookup, norms, attention scores, prompts and adapters
//! stay f32; the LM head is packed like the other linear layers.
use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Tensor};

use super::error::ModelError;

extern "C" {
    fn promptd_int8_set_engine(engine: i32) -> *mut c_char;
    fn promptd_int8_pack(weight: *const c_void, error: *mut *mut c_char) -> *mut c_void;
    fn promptd_int8_linear(
        x: *const c_void,
        pack: *mut c_void,
        reduce_range: bool,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn promptd_int8_free_pack(pack: *mut c_void);
    fn promptd_shim_free_error(error: *mut c_char);
}

/// libtorch's quantized engine that packs and multiplies int8 weights (`--int8-kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Int8Kernel {
    /// fbgemm (AVX2 / AVX-512): the faster one on AMD EPYC (BENCHMARKS.md).
    #[default]
    Fbgemm,
    /// oneDNN: the faster one from 64 rows up on Intel Xeons with AMX (BENCHMARKS.md).
    Onednn,
}

/// Set once by the command line (`--int8-kernel`), like `--cpu-matmul`.
static ONEDNN: AtomicBool = AtomicBool::new(false);

/// Selects the engine that packs this process's int8 weights.
pub fn set_int8_kernel(kernel: Int8Kernel) {
    ONEDNN.store(kernel == Int8Kernel::Onednn, Ordering::Relaxed);
}

/// The engine that packs this process's int8 weights.
pub fn int8_kernel() -> Int8Kernel {
    if ONEDNN.load(Ordering::Relaxed) {
        Int8Kernel::Onednn
    } else {
        Int8Kernel::Fbgemm
    }
}

/// Takes a C++ shim's error message (and frees it): `what` failed, and why.
pub(super) fn shim_error(e: *mut c_char, what: &str) -> ModelError {
    let message = if e.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: a non-null error is a NUL-terminated string a shim allocated with malloc.
        let text = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
        unsafe { promptd_shim_free_error(e) };
        text
    };
    ModelError::Config(format!("{what}: {message}"))
}

fn take_error(e: *mut c_char, what: &str) -> ModelError {
    shim_error(e, &format!("int8 {what}"))
}

/// One linear layer's int8 weight, prepacked by libtorch's quantized engine.
pub struct Int8Weight {
    pack: NonNull<c_void>,
    outputs: i64,
}

// SAFETY: the pack is never changed after it is made; libtorch's quantized linear only reads it
// (PyTorch itself runs one quantized module from many threads).
unsafe impl Send for Int8Weight {}
unsafe impl Sync for Int8Weight {}

impl Drop for Int8Weight {
    fn drop(&mut self) {
        // SAFETY: the pack came from promptd_int8_pack and is freed once, here.
        unsafe { promptd_int8_free_pack(self.pack.as_ptr()) }
    }
}

impl Int8Weight {
    /// Quantizes and packs `weight` [out, in] (on the CPU) with `kernel`'s engine.
    pub fn new(weight: &Tensor, kernel: Int8Kernel) -> Result<Self, ModelError> {
        let size = weight.size();
        if size.len() != 2 || weight.device() != tch::Device::Cpu {
            return Err(ModelError::Config(format!(
                "int8 weights are 2-D CPU tensors, got {size:?} on {:?}",
                weight.device()
            )));
        }
        let engine = match kernel {
            Int8Kernel::Fbgemm => 0,
            Int8Kernel::Onednn => 1,
        };
        // SAFETY: plain calls into the shim; `weight` outlives them (the shim copies it).
        let e = unsafe { promptd_int8_set_engine(engine) };
        if !e.is_null() {
            return Err(take_error(e, "engine"));
        }
        let mut error = std::ptr::null_mut();
        let pack = unsafe { promptd_int8_pack(weight.as_ptr() as *const c_void, &mut error) };
        match NonNull::new(pack) {
            Some(pack) => Ok(Self {
                pack,
                outputs: size[0],
            }),
            None => Err(take_error(error, "packing a weight")),
        }
    }

    /// `x @ W.T` for f32 `x` [..., in]: f32 out, activations quantized for this call.
    pub fn linear(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        if x.kind() != Kind::Float {
            return Err(ModelError::Config(format!(
                "int8 linear takes f32 activations, got {:?}",
                x.kind()
            )));
        }
        let mut shape = x.size();
        let inner = *shape
            .last()
            .ok_or_else(|| ModelError::Config("matmul of a scalar".into()))?;
        *shape.last_mut().expect("checked above") = self.outputs;
        let flat = x.f_reshape([-1, inner])?.f_contiguous()?;
        // 7-bit activations, PyTorch's own choice for dynamic int8 on x86: without VNNI the
        // u8 × s8 kernels sum pairs of products in 16 bits, which full-range activations can
        // saturate (oneDNN's, given the full range, erred by 49% on a test input).
        let reduce_range = true;
        let mut error = std::ptr::null_mut();
        // SAFETY: `flat` and the pack live through the call; the result is a new at::Tensor
        // that `Tensor::from_ptr` owns (and frees).
        let out = unsafe {
            promptd_int8_linear(
                flat.as_ptr() as *const c_void,
                self.pack.as_ptr(),
                reduce_range,
                &mut error,
            )
        };
        if out.is_null() {
            return Err(take_error(error, "linear"));
        }
        let out = unsafe { Tensor::from_ptr(out as *mut _) };
        Ok(out.f_view(shape.as_slice())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_linear_is_close_to_f32_on_both_engines() {
        let _guard = tch::no_grad_guard();
        // Values of their own (libtorch's generator is shared with tests running beside this).
        let wavy = |shape: &[i64], step: f64| {
            let n: i64 = shape.iter().product();
            Tensor::arange(n, (Kind::Float, tch::Device::Cpu))
                .f_mul_scalar(step)
                .unwrap()
                .sin()
                .view(shape)
        };
        let w = wavy(&[48, 64], 0.731) * 0.05;
        for (kernel, bound) in [(Int8Kernel::Fbgemm, 0.04), (Int8Kernel::Onednn, 0.04)] {
            let q = Int8Weight::new(&w, kernel).unwrap();
            for shape in [vec![1i64, 64], vec![5, 64], vec![3, 7, 64]] {
                let x = wavy(&shape, 1.37);
                let want = x.linear::<Tensor>(&w, None);
                let got = q.linear(&x).unwrap();
                assert_eq!(got.size(), want.size());
                let err = (&got - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
                assert!(err < bound, "{kernel:?} {shape:?}: relative error {err}");
            }
        }
        // Per-row quantization: each row of a batch equals the row alone (bit for bit on fbgemm).
        for kernel in [Int8Kernel::Fbgemm, Int8Kernel::Onednn] {
            let q = Int8Weight::new(&w, kernel).unwrap();
            let x = wavy(&[9, 64], 2.11);
            let x = &x
                * Tensor::from_slice(&[1e-3f32, 1.0, 30.0, 0.5, 2.0, 1.0, 1.0, 7.0, 0.1])
                    .view([9, 1]);
            let batch = q.linear(&x).unwrap();
            for r in 0..9 {
                let alone = q.linear(&x.narrow(0, r, 1)).unwrap();
                let d = (batch.narrow(0, r, 1) - &alone)
                    .abs()
                    .max()
                    .double_value(&[]);
                let m = alone.abs().max().double_value(&[]);
                match kernel {
                    Int8Kernel::Fbgemm => assert!(d == 0.0, "{kernel:?} row {r}: {d:e}"),
                    // oneDNN picks its kernel by the row count where it has AMX / VNNI ones
                    // (an Intel Xeon): the integer sums are the same, their f32 scaling may
                    // round once differently.
                    Int8Kernel::Onednn => {
                        assert!(d <= 1e-6 * m, "{kernel:?} row {r}: {d:e} of {m:e}")
                    }
                }
            }
        }
        let q = Int8Weight::new(&w, Int8Kernel::Fbgemm).unwrap();
        let x = Tensor::zeros([0, 64], (Kind::Float, tch::Device::Cpu));
        assert!(q.linear(&x).is_ok_and(|y| y.size() == [0, 48]) || q.linear(&x).is_err());
        assert!(Int8Weight::new(
            &Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
            Int8Kernel::Fbgemm
        )
        .is_err());
    }
}
