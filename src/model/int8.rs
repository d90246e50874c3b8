//! `--dtype int8` on the CPU: the linear layers' weights quantized per output channel
//! (symmetric int8) and prepacked once, activations quantized per call and per row (so a
//! batched row equals the row alone: bit for bit on fbgemm, within one f32 rounding of the
//! output on oneDNN where it picks its kernel by the row count; `int8.cpp` says how), through libtorch's own
//! dynamically quantized linear (`quantized::linear_dynamic`, what PyTorch's `quantize_dynamic`
//! runs), by its fbgemm or oneDNN engine — by default each layer by the call's row count, as
//! both engines measured on this CPU when the model is packed ([`Int8Kernel::Auto`]). tch
//! does not expose those operators, so a small C++
//! shim (`int8.cpp`, built by build.rs against the same libtorch) reaches them through
//! libtorch's dispatcher. The embedding lookup, norms, attention scores, prompts and adapters
//! stay f32; the LM head is packed like the other linear layers.
use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;

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
    /// Measured when the model is packed, on this CPU: fbgemm and oneDNN timed on each
    /// distinct weight shape from 1 to 2048 rows; a layer runs oneDNN from the row count where
    /// it was faster at every count up, fbgemm below (both packs kept only where both win).
    #[default]
    Auto,
    /// fbgemm (AVX2 / AVX-512) for every call: the faster one on AMD EPYC (BENCHMARKS.md).
    Fbgemm,
    /// oneDNN for every call: the faster one from 32–64 rows up on Intel Xeons with AMX.
    Onednn,
}

/// Which engine multiplies a call, by its row count: what `--int8-kernel` resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Split {
    /// fbgemm for every call.
    Fbgemm,
    /// oneDNN for every call.
    Onednn,
    /// fbgemm below this many rows, oneDNN from it up.
    OnednnFrom(usize),
}

impl Int8Split {
    /// Whether a call of `rows` rows runs on oneDNN.
    pub fn onednn_at(self, rows: usize) -> bool {
        match self {
            Int8Split::Fbgemm => false,
            Int8Split::Onednn => true,
            Int8Split::OnednnFrom(from) => rows >= from,
        }
    }

    fn uses(self, kernel: Int8Kernel) -> bool {
        match (self, kernel) {
            (Int8Split::OnednnFrom(_), _) => true,
            (Int8Split::Fbgemm, k) => k == Int8Kernel::Fbgemm,
            (Int8Split::Onednn, k) => k == Int8Kernel::Onednn,
        }
    }
}

/// Set once by the command line (`--int8-kernel`), like `--cpu-matmul`: 0 auto, 1 fbgemm,
/// 2 onednn.
static KERNEL: AtomicU8 = AtomicU8::new(0);

/// Selects the engine that packs this process's int8 weights.
pub fn set_int8_kernel(kernel: Int8Kernel) {
    KERNEL.store(kernel as u8, Ordering::Relaxed);
}

/// The engine that packs this process's int8 weights.
pub fn int8_kernel() -> Int8Kernel {
    match KERNEL.load(Ordering::Relaxed) {
        1 => Int8Kernel::Fbgemm,
        2 => Int8Kernel::Onednn,
        _ => Int8Kernel::Auto,
    }
}

/// Row counts [`Int8Kernel::Auto`] times both engines at (fewer where calls grow slow).
const MEASURED_ROWS: [usize; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];

/// Past this many seconds per call, larger row counts are not timed (an XL model's layers).
const SLOW_CALL: f64 = 0.02;

impl Int8Kernel {
    /// The split for a weight of `inner` → `outer`: fixed for fbgemm and oneDNN; measured on
    /// this CPU once per process and shape for auto (an engine this libtorch lacks leaves the
    /// other).
    pub fn split(self, inner: i64, outer: i64) -> Result<Int8Split, ModelError> {
        match self {
            Int8Kernel::Fbgemm => Ok(Int8Split::Fbgemm),
            Int8Kernel::Onednn => Ok(Int8Split::Onednn),
            Int8Kernel::Auto => {
                static MEASURED: Mutex<Vec<((i64, i64), Int8Split)>> = Mutex::new(Vec::new());
                let mut measured = MEASURED.lock();
                let shape = (inner, outer);
                if let Some((_, split)) = measured.iter().find(|(s, _)| *s == shape) {
                    return Ok(*split);
                }
                let split = measure_split(inner, outer)?;
                measured.push((shape, split));
                Ok(split)
            }
        }
    }
}

/// Times fbgemm and oneDNN on an `inner` → `outer` weight at [`MEASURED_ROWS`]: each engine's
/// best of five rounds (three for calls over 2 ms), a round repeating the call for about a millisecond (a decode step's
/// calls take microseconds, so single calls are noise). oneDNN runs from the smallest row
/// count where it is faster there and at every count above (the largest timed count stands
/// for those above it).
fn measure_split(inner: i64, outer: i64) -> Result<Int8Split, ModelError> {
    let _guard = tch::no_grad_guard();
    let wavy = |rows: i64, cols: i64, step: f64| {
        Tensor::arange(rows * cols, (Kind::Float, tch::Device::Cpu))
            .f_mul_scalar(step)
            .and_then(|t| t.f_sin())
            .and_then(|t| t.f_view([rows, cols]))
    };
    let weight = wavy(outer, inner, 0.731)?.f_mul_scalar(0.05)?;
    let packs = (
        Int8Weight::new(&weight, Int8Split::Fbgemm),
        Int8Weight::new(&weight, Int8Split::Onednn),
    );
    let (fbgemm, onednn) = match packs {
        (Ok(f), Ok(o)) => (f, o),
        (Ok(_), Err(e)) => {
            tracing::warn!("int8: oneDNN unavailable, fbgemm for every call: {e}");
            return Ok(Int8Split::Fbgemm);
        }
        (Err(e), Ok(_)) => {
            tracing::warn!("int8: fbgemm unavailable, oneDNN for every call: {e}");
            return Ok(Int8Split::Onednn);
        }
        (Err(e), Err(_)) => return Err(e),
    };
    // Seconds per call of `pack` on `x`, over `reps` calls.
    let per_call = |pack: &Int8Weight, x: &Tensor, reps: u32| -> Result<f64, ModelError> {
        let t = std::time::Instant::now();
        for _ in 0..reps {
            let _ = pack.linear(x)?;
        }
        Ok(t.elapsed().as_secs_f64() / f64::from(reps))
    };
    let mut faster = Vec::with_capacity(MEASURED_ROWS.len());
    for rows in MEASURED_ROWS {
        let x = wavy(rows as i64, inner, 1.37)?;
        // Warms both engines for this shape, and sizes the repetitions.
        let once = per_call(&fbgemm, &x, 1)?.max(per_call(&onednn, &x, 1)?);
        let reps = (1e-3 / once.max(1e-7)).clamp(1.0, 200.0) as u32;
        let (mut f, mut o) = (f64::INFINITY, f64::INFINITY);
        let rounds = if once > 2e-3 { 3 } else { 5 };
        for _ in 0..rounds {
            f = f.min(per_call(&fbgemm, &x, reps)?);
            o = o.min(per_call(&onednn, &x, reps)?);
        }
        tracing::debug!(
            rows,
            inner,
            outer,
            fbgemm_us = f * 1e6,
            onednn_us = o * 1e6,
            "int8 kernels timed"
        );
        faster.push((rows, o < f));
        if f.max(o) > SLOW_CALL {
            break;
        }
    }
    let split = choose_split(&faster);
    tracing::info!(?split, inner, outer, "int8 kernel measured on this CPU");
    Ok(split)
}

/// The split from whether oneDNN was faster at each measured row count (ascending): oneDNN
/// from the smallest count where it wins at that count and every one above, fbgemm below.
fn choose_split(onednn_faster: &[(usize, bool)]) -> Int8Split {
    let from = onednn_faster
        .iter()
        .rev()
        .take_while(|(_, onednn)| *onednn)
        .last()
        .map(|(rows, _)| *rows);
    match from {
        None => Int8Split::Fbgemm,
        Some(rows) if rows <= 1 => Int8Split::Onednn,
        Some(rows) => Int8Split::OnednnFrom(rows),
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

/// One engine's prepacked int8 weight (freed on drop).
struct EnginePack(NonNull<c_void>);

// SAFETY: the pack is never changed after it is made; libtorch's quantized linear only reads it
// (PyTorch itself runs one quantized module from many threads).
unsafe impl Send for EnginePack {}
unsafe impl Sync for EnginePack {}

impl Drop for EnginePack {
    fn drop(&mut self) {
        // SAFETY: the pack came from promptd_int8_pack and is freed once, here.
        unsafe { promptd_int8_free_pack(self.0.as_ptr()) }
    }
}

impl EnginePack {
    /// Quantizes and packs `weight` [out, in] with `kernel`'s engine (fbgemm or oneDNN).
    fn new(weight: &Tensor, kernel: Int8Kernel) -> Result<Self, ModelError> {
        let engine = i32::from(kernel == Int8Kernel::Onednn);
        // SAFETY: plain calls into the shim; `weight` outlives them (the shim copies it).
        let e = unsafe { promptd_int8_set_engine(engine) };
        if !e.is_null() {
            return Err(take_error(e, "engine"));
        }
        let mut error = std::ptr::null_mut();
        let pack = unsafe { promptd_int8_pack(weight.as_ptr() as *const c_void, &mut error) };
        NonNull::new(pack)
            .map(Self)
            .ok_or_else(|| take_error(error, "packing a weight"))
    }
}

/// One linear layer's int8 weight, prepacked by the engines its [`Int8Split`] uses.
pub struct Int8Weight {
    fbgemm: Option<EnginePack>,
    onednn: Option<EnginePack>,
    split: Int8Split,
    outputs: i64,
}

impl Int8Weight {
    /// Quantizes and packs `weight` [out, in] (on the CPU) for `split`'s engines.
    pub fn new(weight: &Tensor, split: Int8Split) -> Result<Self, ModelError> {
        let size = weight.size();
        if size.len() != 2 || weight.device() != tch::Device::Cpu {
            return Err(ModelError::Config(format!(
                "int8 weights are 2-D CPU tensors, got {size:?} on {:?}",
                weight.device()
            )));
        }
        let pack = |kernel| -> Result<Option<EnginePack>, ModelError> {
            split
                .uses(kernel)
                .then(|| EnginePack::new(weight, kernel))
                .transpose()
        };
        Ok(Self {
            fbgemm: pack(Int8Kernel::Fbgemm)?,
            onednn: pack(Int8Kernel::Onednn)?,
            split,
            outputs: size[0],
        })
    }

    /// Quantizes and packs `weight` [out, in] for `kernel`: for auto, the split measured for
    /// its shape ([`Int8Kernel::split`]).
    pub fn for_kernel(weight: &Tensor, kernel: Int8Kernel) -> Result<Self, ModelError> {
        let split = match weight.size()[..] {
            [outer, inner] if weight.device() == tch::Device::Cpu => kernel.split(inner, outer)?,
            // Refused by `new`, before anything is measured.
            _ => Int8Split::Fbgemm,
        };
        Self::new(weight, split)
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
        let rows = flat.size()[0] as usize;
        let pack = match (&self.fbgemm, &self.onednn) {
            (Some(f), Some(o)) => {
                if self.split.onednn_at(rows) {
                    o
                } else {
                    f
                }
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => unreachable!("a split packs at least one engine"),
        };
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
                pack.0.as_ptr(),
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
        for (kernel, bound) in [(Int8Split::Fbgemm, 0.04), (Int8Split::Onednn, 0.04)] {
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
        // Per-row quantization: each row of a batch equals the row alone (bit for bit on
        // fbgemm). The split runs the batch of 9 on oneDNN and each row alone on fbgemm.
        for split in [
            Int8Split::Fbgemm,
            Int8Split::Onednn,
            Int8Split::OnednnFrom(4),
        ] {
            let q = Int8Weight::new(&w, split).unwrap();
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
                match split {
                    Int8Split::Fbgemm => assert!(d == 0.0, "{split:?} row {r}: {d:e}"),
                    // oneDNN picks its kernel by the row count where it has AMX / VNNI ones
                    // (an Intel Xeon), and fbgemm and oneDNN scale the same integer sums back
                    // to f32 in their own order: one f32 rounding apart.
                    _ => assert!(d <= 1e-6 * m, "{split:?} row {r}: {d:e} of {m:e}"),
                }
            }
        }
        // The scaled copy keeps libtorch's semantics at the edges: a zero row stays zero, a
        // NaN stays in its row only.
        let q = Int8Weight::new(&w, Int8Split::Fbgemm).unwrap();
        let x = wavy(&[3, 64], 0.37);
        let _ = x.narrow(0, 0, 1).fill_(0.0);
        let _ = x.narrow(0, 2, 1).narrow(1, 5, 1).fill_(f64::NAN);
        let y = q.linear(&x).unwrap();
        assert_eq!(y.narrow(0, 0, 1).abs().max().double_value(&[]), 0.0);
        assert!(y.narrow(0, 1, 1).isfinite().all().int64_value(&[]) == 1);
        assert!(y.narrow(0, 2, 1).isnan().all().int64_value(&[]) == 1);
        let q = Int8Weight::new(&w, Int8Split::Fbgemm).unwrap();
        let x = Tensor::zeros([0, 64], (Kind::Float, tch::Device::Cpu));
        assert!(q.linear(&x).is_ok_and(|y| y.size() == [0, 48]) || q.linear(&x).is_err());
        assert!(Int8Weight::new(
            &Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
            Int8Split::Fbgemm
        )
        .is_err());
    }

    #[test]
    fn the_measured_split_takes_onednn_where_it_wins_at_every_count_above() {
        let timed = |wins: &[bool]| -> Vec<(usize, bool)> {
            MEASURED_ROWS
                .iter()
                .copied()
                .zip(wins.iter().copied())
                .collect()
        };
        let (f, t) = (false, true);
        assert_eq!(choose_split(&timed(&[f; 12])), Int8Split::Fbgemm);
        assert_eq!(choose_split(&timed(&[t; 12])), Int8Split::Onednn);
        assert_eq!(
            choose_split(&timed(&[f, f, f, f, t, t, t, t, t, t, t, t])),
            Int8Split::OnednnFrom(16)
        );
        // A win below a loss does not count: the split is one threshold.
        assert_eq!(
            choose_split(&timed(&[t, f, t, f, f, t, t, t, t, t, t, t])),
            Int8Split::OnednnFrom(32)
        );
        assert_eq!(
            choose_split(&timed(
                &[t; 11].iter().copied().chain([f]).collect::<Vec<_>>()
            )),
            Int8Split::Fbgemm
        );
        // Timing stopped early (slow calls): the largest timed count stands for those above.
        assert_eq!(
            choose_split(&timed(&[f, f, f, t])),
            Int8Split::OnednnFrom(8)
        );
        for (rows, onednn) in [(1, false), (15, false), (16, true), (4096, true)] {
            assert_eq!(Int8Split::OnednnFrom(16).onednn_at(rows), onednn);
        }
        // Auto measures once per shape and keeps the answer.
        let a = Int8Kernel::Auto.split(64, 48).unwrap();
        assert_eq!(Int8Kernel::Auto.split(64, 48).unwrap(), a);
        assert_eq!(Int8Kernel::Fbgemm.split(64, 48).unwrap(), Int8Split::Fbgemm);
    }
}
