// promptd's own CPU kernels for f32 serving passes where libtorch's calls cost more than the work:
//
// - `promptd_few_rows_linear`: `x @ W.T` for a decode step's few rows (at most 2: at 3 it measured no
//   faster than oneDNN over its packed weight on an Intel Xeon with AVX-512) over the plain
//   weight [out, in]. At one row a linear layer is a matrix-vector product bound by reading the
//   weight; this streams each weight row once for all the input rows, with AVX2 + FMA where the CPU
//   has them, split across libtorch's intra-op threads by output. Each output is summed in the
//   same order whatever the number of rows or threads, so a row's result does not depend on its
//   batch.
// - `promptd_rms_norm`: T5's RMS norm (weight * x * rsqrt(mean(x^2) + eps)): libtorch's mean,
//   then one pass over each row instead of three more ops and their temporaries.
//
// Every entry point catches C++ exceptions and returns the message instead (freed by
// promptd_shim_free_error).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "shim.h"

using promptd_shim::copy_message;

namespace {

constexpr int64_t kMaxRows = 2;

// One output of each of the M rows, portable: 16 partial sums strided over the input (the same
// lanes the AVX2 kernel keeps), then added in a fixed order.
template <int M>
void dot_rows_portable(const float* x, const float* w, int64_t k, float* out) {
  for (int m = 0; m < M; ++m) {
    float lanes[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= k; i += 16)
      for (int l = 0; l < 16; ++l) lanes[l] += w[i + l] * x[m * k + i + l];
    float s[8];
    for (int l = 0; l < 8; ++l) s[l] = lanes[l] + lanes[l + 8];
    float t = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
    for (; i < k; ++i) t += x[m * k + i] * w[i];
    out[m] = t;
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);                        // s0+s4, s1+s5, s2+s6, s3+s7
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));     // (s0+s4)+(s2+s6), (s1+s5)+(s3+s7)
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1)); // the two added
  return _mm_cvtss_f32(lo);
}

template <int M>
__attribute__((target("avx2,fma"))) void dot_rows_avx2(const float* x, const float* w, int64_t k,
                                                       float* out) {
  __m256 a[M], b[M];
  for (int m = 0; m < M; ++m) a[m] = b[m] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m256 w0 = _mm256_loadu_ps(w + i), w1 = _mm256_loadu_ps(w + i + 8);
    for (int m = 0; m < M; ++m) {
      a[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * k + i), a[m]);
      b[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * k + i + 8), b[m]);
    }
  }
  for (int m = 0; m < M; ++m) {
    float t = hsum(_mm256_add_ps(a[m], b[m]));
    for (int64_t j = i; j < k; ++j) t += x[m * k + j] * w[j];
    out[m] = t;
  }
}

bool has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <int M>
void few_rows(const float* x, const float* w, float* y, int64_t n, int64_t k) {
  // ~64 KiB of weight per task at t5-small's width: enough to amortize a thread's wake-up.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    float out[M];
    for (int64_t j = begin; j < end; ++j) {
#if defined(__x86_64__)
      if (has_avx2())
        dot_rows_avx2<M>(x, w + j * k, k, out);
      else
#endif
        dot_rows_portable<M>(x, w + j * k, k, out);
      for (int m = 0; m < M; ++m) y[m * n + j] = out[m];
    }
  });
}

}  // namespace

extern "C" {

// The most rows promptd_few_rows_linear takes.
int64_t promptd_few_rows_max() { return kMaxRows; }

// `x @ W.T` for f32 `x` [rows, in] (1 <= rows <= promptd_few_rows_max()) and the plain f32
// weight [out, in], both on the CPU: a new dense [rows, out].
at::Tensor* promptd_few_rows_linear(const at::Tensor* x, const at::Tensor* weight, char** error) {
  try {
    at::NoGradGuard no_grad;
    TORCH_CHECK(x->dim() == 2 && weight->dim() == 2, "few-rows linear takes 2-D operands");
    TORCH_CHECK(x->scalar_type() == at::kFloat && weight->scalar_type() == at::kFloat,
                "few-rows linear takes f32");
    TORCH_CHECK(x->device().is_cpu() && weight->device().is_cpu(), "few-rows linear runs on the CPU");
    const int64_t rows = x->size(0), k = x->size(1), n = weight->size(0);
    TORCH_CHECK(weight->size(1) == k, "few-rows linear: input width ", k, " against a weight of ",
                weight->sizes());
    TORCH_CHECK(rows >= 1 && rows <= kMaxRows, "few-rows linear takes 1 to ", kMaxRows,
                " rows, got ", rows);
    at::Tensor xc = x->contiguous(), wc = weight->contiguous();
    at::Tensor y = at::empty({rows, n}, xc.options());
    const float *xp = xc.data_ptr<float>(), *wp = wc.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    switch (rows) {
      case 1: few_rows<1>(xp, wp, yp, n, k); break;
      default: few_rows<2>(xp, wp, yp, n, k); break;
    }
    return new at::Tensor(y);
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

// T5's RMS norm of f32 `x` [..., d] with f32 `weight` [d], on the CPU: a new tensor of x's shape.
// The variance is libtorch's own f32 mean of x^2, as transformers computes it (the same sums in
// the same order, so the result is that of T5's ops bit for bit); the scaling that follows,
// weight * (x * (1 / sqrt(variance + eps))), is one pass over each row instead of three ops.
at::Tensor* promptd_rms_norm(const at::Tensor* x, const at::Tensor* weight, double eps,
                             char** error) {
  try {
    at::NoGradGuard no_grad;
    TORCH_CHECK(x->scalar_type() == at::kFloat && weight->scalar_type() == at::kFloat,
                "rms norm takes f32");
    TORCH_CHECK(x->device().is_cpu() && weight->device().is_cpu(), "rms norm runs on the CPU");
    TORCH_CHECK(x->dim() >= 1 && weight->dim() == 1 && x->size(-1) == weight->size(0),
                "rms norm of ", x->sizes(), " by a weight of ", weight->sizes());
    const int64_t d = weight->size(0);
    at::Tensor xc = x->contiguous(), wc = weight->contiguous();
    at::Tensor y = at::empty_like(xc);
    const int64_t rows = d == 0 ? 0 : xc.numel() / d;
    at::Tensor variance = xc.pow(2).mean(-1, false, at::kFloat).contiguous();
    const float *xp = xc.data_ptr<float>(), *wp = wc.data_ptr<float>();
    const float* vp = variance.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(d, 1));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* row = xp + r * d;
        const float scale = 1.0f / std::sqrt(vp[r] + float(eps));
        float* out = yp + r * d;
        for (int64_t i = 0; i < d; ++i) out[i] = wp[i] * (row[i] * scale);
      }
    });
    return new at::Tensor(y);
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}
}
