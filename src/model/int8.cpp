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
// A batched row equals the row alone, bit for bit. The scaling into the fenced copy is one pass
// over each row (`fence_rows`), the same arithmetic as `x.div(x.abs().amax(1).clamp_min(1e-30))`
// and a cat without their four temporaries; the output rows are scaled back in place.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "shim.h"

using promptd_shim::copy_message;
using promptd_shim::op;

namespace {

// Smallest row scale, as libtorch's clamp_min(1e-30) in f32.
constexpr float kMinScale = 1e-30f;

// The largest magnitude of `x[0..k)`, NaN when any element is NaN (as libtorch's amax). Max is
// exact in any order, so the vector and scalar loops agree.
float max_abs_portable(const float* x, int64_t k) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < k; ++i) {
    nan |= std::isnan(x[i]);
    m = std::max(m, std::fabs(x[i]));
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) float max_abs_avx2(const float* x, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, m);
  float out = max_abs_portable(lanes, 8);
  float tail = max_abs_portable(x + i, k - i);
  if (_mm256_movemask_ps(nan) != 0 || std::isnan(tail)) return std::numeric_limits<float>::quiet_NaN();
  return std::max(out, tail);
}

// `out[i] = x[i] / s`: IEEE division, the same result as the scalar loop and libtorch's div.
__attribute__((target("avx2"))) void divide_avx2(const float* x, float s, float* out, int64_t k) {
  const __m256 d = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) _mm256_storeu_ps(out + i, _mm256_div_ps(_mm256_loadu_ps(x + i), d));
  for (; i < k; ++i) out[i] = x[i] / s;
}

bool has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

// Each row of `x` [rows, k] divided by its largest magnitude into `fenced` [rows + fence, k],
// whose last rows are the pack's fence; the scales go to `scale` [rows, 1].
void fence_rows(const at::Tensor& x, const at::Tensor& fence, at::Tensor& fenced, at::Tensor& scale) {
  const int64_t rows = x.size(0), k = x.size(1);
  const float* xp = x.data_ptr<float>();
  float* fp = fenced.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  // A few KiB of activations per task: enough to amortize a thread's wake-up.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * k;
      float* out = fp + r * k;
#if defined(__x86_64__)
      if (has_avx2()) {
        float m = max_abs_avx2(row, k);
        float s = std::isnan(m) ? m : std::max(m, kMinScale);
        sp[r] = s;
        divide_avx2(row, s, out, k);
        continue;
      }
#endif
      float m = max_abs_portable(row, k);
      float s = std::isnan(m) ? m : std::max(m, kMinScale);
      sp[r] = s;
      for (int64_t i = 0; i < k; ++i) out[i] = row[i] / s;
    }
  });
  std::memcpy(fp + rows * k, fence.data_ptr<float>(), fence.numel() * sizeof(float));
}

}  // namespace

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
    TORCH_CHECK(x->dim() == 2 && x->scalar_type() == at::kFloat && x->device().is_cpu(),
                "int8 linear takes 2-D f32 activations on the CPU");
    at::Tensor xc = x->contiguous();
    const int64_t rows = xc.size(0), k = xc.size(1);
    // A fence of one row [1, k] (k >= 2) or two rows [2, 1] (k == 1).
    TORCH_CHECK(p->fence.size(1) == k, "int8 linear: input width ", k, " against a weight of width ",
                p->fence.size(1));
    at::Tensor fenced = at::empty({rows + p->fence.size(0), k}, xc.options());
    at::Tensor scale = at::empty({rows, 1}, xc.options());
    fence_rows(xc, p->fence, fenced, scale);
    std::vector<c10::IValue> stack{fenced, p->packed, reduce_range};
    linear.callBoxed(&stack);
    at::Tensor y = stack.at(0).toTensor().narrow(0, 0, rows);
    y.mul_(scale);
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
