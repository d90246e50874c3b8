// libtorch's own dynamically quantized linear (`quantized::linear_dynamic`, what PyTorch's
// `quantize_dynamic` runs) for promptd's `--dtype int8`: weights quantized per output channel
// (symmetric qint8) and prepacked once by the selected quantized engine (fbgemm or oneDNN);
// each call quantizes its activations and returns f32. The ops are reached through the
// dispatcher because libtorch exposes them to C++ only as registered operators. Every entry
// point catches C++ exceptions and returns the message instead (freed by promptd_shim_free_error).
//
// libtorch quantizes a call's activations with one range for the whole tensor, which would make
// a row's answer depend on the other rows of its batch. Each row is therefore divided by its own
// largest magnitude first and a fence row holding -1 and +1 is appended, so the tensor's range
// is always [-1, 1]: every row is quantized on its own scale (per-row quantization, as
// CTranslate2 does), the integer products are exact, and the output rows are multiplied back.
// A batched row equals the row alone, bit for bit.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "shim.h"

using promptd_shim::copy_message;
using promptd_shim::op;

extern "C" {

// Selects libtorch's quantized engine for the packs made after it: 0 fbgemm, 1 onednn.
char* promptd_int8_set_engine(int engine) {
  try {
    at::globalContext().setQEngine(engine == 0 ? at::QEngine::FBGEMM : at::QEngine::ONEDNN);
    return nullptr;
  } catch (const std::exception& e) {
    return copy_message(e.what());
  }
}

struct Pack {
  c10::IValue packed;
  // [1, in]: -1 and +1 in its first two columns (one column: two rows, -1 and +1).
  at::Tensor fence;
};

// Quantizes `weight` [out, in] per output channel (scale = max |w| / 127, zero point 0) and
// prepacks it; the pack is freed by promptd_int8_free_pack.
void* promptd_int8_pack(const at::Tensor* weight, char** error) {
  try {
    at::NoGradGuard no_grad;
    at::Tensor w = weight->detach().to(at::kFloat).contiguous();
    at::Tensor scales = w.abs().amax({1}).clamp_min(1e-12).div(127.0).to(at::kDouble);
    at::Tensor zeros = at::zeros({w.size(0)}, at::kLong);
    at::Tensor qw = at::quantize_per_channel(w, scales, zeros, 0, at::kQInt8);
    static const c10::OperatorHandle prepack = op("quantized::linear_prepack");
    std::vector<c10::IValue> stack{qw, c10::IValue()};
    prepack.callBoxed(&stack);
    int64_t in = w.size(1);
    at::Tensor fence = in >= 2 ? at::zeros({1, in}, at::kFloat) : at::zeros({2, 1}, at::kFloat);
    fence.view({-1})[0] = -1.0;
    fence.view({-1})[1] = 1.0;
    return new Pack{std::move(stack.at(0)), fence};
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

// `x @ W.T` for f32 `x` [rows, in] through the pack: each row's activations quantized on its
// own scale (7-bit when `reduce_range`, as PyTorch does on x86).
at::Tensor* promptd_int8_linear(const at::Tensor* x, void* pack, bool reduce_range, char** error) {
  try {
    at::NoGradGuard no_grad;
    static const c10::OperatorHandle linear = op("quantized::linear_dynamic");
    const Pack* p = static_cast<const Pack*>(pack);
    int64_t rows = x->size(0);
    at::Tensor scale = x->abs().amax({1}, true).clamp_min(1e-30);
    at::Tensor fenced = at::cat({x->div(scale), p->fence}, 0);
    std::vector<c10::IValue> stack{fenced, p->packed, reduce_range};
    linear.callBoxed(&stack);
    at::Tensor y = stack.at(0).toTensor().narrow(0, 0, rows).mul(scale);
    return new at::Tensor(std::move(y));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

void promptd_int8_free_pack(void* pack) { delete static_cast<Pack*>(pack); }

// Frees an error message of any of promptd's shims.
void promptd_shim_free_error(char* error) { std::free(error); }
}
