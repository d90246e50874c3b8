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
// - `promptd_one_query_attention`: a decode step's attention (one query per row and head) over
//   the cached keys and values with T5's additive bias, unscaled: per (row, head) the scores,
//   their softmax and the weighted sum of values in one pass over that head's cache, where
//   libtorch's fused attention blocks for long queries and spends most of a decode step's call
//   on its setup. Each (row, head) is computed alone, so a row's result does not depend on its
//   batch.
//
// Every entry point catches C++ exceptions and returns the message instead (freed by
// promptd_shim_free_error).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

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

// One (row, head), portable: softmax(q . K^T + bias) V over `s` cached positions, into `out`.
void attend_one_portable(const float* q, const float* keys, int64_t key_stride, const float* values,
                         int64_t value_stride, const float* bias, int64_t bias_stride, int64_t s,
                         int64_t dk, float* scores, float* out) {
  for (int64_t j = 0; j < s; ++j) {
    const float* key = keys + j * key_stride;
    float d = 0.0f;
    for (int64_t i = 0; i < dk; ++i) d += q[i] * key[i];
    scores[j] = d + bias[j * bias_stride];
  }
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < s; ++j) top = std::max(top, scores[j]);
  for (int64_t i = 0; i < dk; ++i) out[i] = 0.0f;
  // Every position masked out to -inf: nothing to attend (zeros, not NaN).
  if (!std::isfinite(top)) return;
  float sum = 0.0f;
  for (int64_t j = 0; j < s; ++j) {
    scores[j] = std::exp(scores[j] - top);
    sum += scores[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < s; ++j) {
    const float* value = values + j * value_stride;
    for (int64_t i = 0; i < dk; ++i) out[i] += scores[j] * value[i];
  }
  for (int64_t i = 0; i < dk; ++i) out[i] *= inv;
}

#if defined(__x86_64__)
// The same with AVX2 + FMA: four keys' dot products at a time, and the weighted sum of values
// 32 outputs at a time (independent accumulators, so neither waits on one FMA chain).
__attribute__((target("avx2,fma"))) void attend_one_avx2(const float* q, const float* keys,
                                                          int64_t key_stride, const float* values,
                                                          int64_t value_stride, const float* bias,
                                                          int64_t bias_stride, int64_t s,
                                                          int64_t dk, float* scores, float* out) {
  const int64_t vec = dk - dk % 8;
  auto tail_dot = [&](const float* key) {
    float t = 0.0f;
    for (int64_t i = vec; i < dk; ++i) t += q[i] * key[i];
    return t;
  };
  int64_t j = 0;
  for (; j + 4 <= s; j += 4) {
    const float* k0 = keys + j * key_stride;
    const float* k1 = k0 + key_stride;
    const float* k2 = k1 + key_stride;
    const float* k3 = k2 + key_stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < vec; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
    }
    scores[j] = hsum(a0) + tail_dot(k0) + bias[j * bias_stride];
    scores[j + 1] = hsum(a1) + tail_dot(k1) + bias[(j + 1) * bias_stride];
    scores[j + 2] = hsum(a2) + tail_dot(k2) + bias[(j + 2) * bias_stride];
    scores[j + 3] = hsum(a3) + tail_dot(k3) + bias[(j + 3) * bias_stride];
  }
  for (; j < s; ++j) {
    const float* key = keys + j * key_stride;
    __m256 a = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(key + i), a);
    scores[j] = hsum(a) + tail_dot(key) + bias[j * bias_stride];
  }
  float top = -std::numeric_limits<float>::infinity();
  for (j = 0; j < s; ++j) top = std::max(top, scores[j]);
  for (int64_t i = 0; i < dk; ++i) out[i] = 0.0f;
  // Every position masked out to -inf: nothing to attend (zeros, not NaN).
  if (!std::isfinite(top)) return;
  float sum = 0.0f;
  for (j = 0; j < s; ++j) {
    scores[j] = std::exp(scores[j] - top);
    sum += scores[j];
  }
  const float inv = 1.0f / sum;
  int64_t i = 0;
  for (; i + 32 <= dk; i += 32) {
    __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0;
    for (j = 0; j < s; ++j) {
      const float* v = values + j * value_stride + i;
      const __m256 w = _mm256_set1_ps(scores[j]);
      o0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v), o0);
      o1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8), o1);
      o2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 16), o2);
      o3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 24), o3);
    }
    const __m256 scale = _mm256_set1_ps(inv);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(o0, scale));
    _mm256_storeu_ps(out + i + 8, _mm256_mul_ps(o1, scale));
    _mm256_storeu_ps(out + i + 16, _mm256_mul_ps(o2, scale));
    _mm256_storeu_ps(out + i + 24, _mm256_mul_ps(o3, scale));
  }
  for (; i < dk; ++i) {
    float o = 0.0f;
    for (j = 0; j < s; ++j) o += scores[j] * values[j * value_stride + i];
    out[i] = o * inv;
  }
}
#endif

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

// softmax(q K^T + bias) V for f32 CPU `q` [B, H, 1, dk] over `keys` and `values` [B, H, S, dk]
// (any strides, each position's dk values contiguous) with `bias` broadcastable to
// [B, H, 1, S]; T5 does not scale the scores. A new dense [B, H, 1, dk].
at::Tensor* promptd_one_query_attention(const at::Tensor* q, const at::Tensor* keys,
                                        const at::Tensor* values, const at::Tensor* bias,
                                        char** error) {
  try {
    at::NoGradGuard no_grad;
    TORCH_CHECK(q->dim() == 4 && keys->dim() == 4 && values->dim() == 4 && q->size(2) == 1,
                "one-query attention takes [B, H, 1, dk] queries over [B, H, S, dk] keys");
    for (const at::Tensor* t : {q, keys, values, bias})
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu(),
                  "one-query attention takes f32 CPU tensors");
    const int64_t b = q->size(0), h = q->size(1), dk = q->size(3), s = keys->size(2);
    TORCH_CHECK(keys->sizes() == values->sizes() && keys->size(0) == b && keys->size(1) == h &&
                    keys->size(3) == dk,
                "one-query attention: queries ", q->sizes(), " keys ", keys->sizes(), " values ",
                values->sizes());
    at::Tensor qc = q->contiguous();
    at::Tensor kc = keys->stride(3) == 1 ? *keys : keys->contiguous();
    at::Tensor vc = values->stride(3) == 1 ? *values : values->contiguous();
    at::Tensor mask = bias->expand({b, h, 1, s});
    at::Tensor out = at::empty({b, h, 1, dk}, qc.options());
    const float *qp = qc.data_ptr<float>(), *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>();
    const float* mp = mask.data_ptr<float>();
    float* op = out.data_ptr<float>();
#if defined(__x86_64__)
    const bool avx2 = has_avx2();
#else
    const bool avx2 = false;
#endif
    // About 16 KiB of cache per task.
    const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(s * dk, 1));
    at::parallel_for(0, b * h, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(static_cast<size_t>(s));
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t i = bh / h, j = bh % h;
        const float* kb = kp + i * kc.stride(0) + j * kc.stride(1);
        const float* vb = vp + i * vc.stride(0) + j * vc.stride(1);
        const float* mb = mp + i * mask.stride(0) + j * mask.stride(1);
        const float* qb = qp + bh * dk;
        float* ob = op + bh * dk;
#if defined(__x86_64__)
        if (avx2) {
          attend_one_avx2(qb, kb, kc.stride(2), vb, vc.stride(2), mb, mask.stride(3), s, dk,
                          scores.data(), ob);
          continue;
        }
#endif
        attend_one_portable(qb, kb, kc.stride(2), vb, vc.stride(2), mb, mask.stride(3), s, dk,
                            scores.data(), ob);
      }
    });
    return new at::Tensor(out);
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}
}
