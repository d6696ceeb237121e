#include "worker/train/adamw_kernel.h"

#include <cmath>

namespace vlorch::train {
namespace {

template <bool kScale>
inline void Update(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                   int64_t n, const AdamWConstants& c) {
  const float decay = c.decay, w1 = c.beta1_weight, b2 = c.beta2, omb2 = c.one_minus_beta2,
              bc2 = c.bias_correction2_sqrt, eps = c.eps, step = c.neg_step_size, scale = c.grad_scale;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = kScale ? g[i] * scale : g[i];
    const float mi = m[i] + w1 * (gi - m[i]);
    float vi = v[i] * b2;
    vi = vi + (omb2 * gi) * gi;
    const float denom = std::sqrt(vi) / bc2 + eps;
    p[i] = p[i] * decay + step * mi / denom;  // addcdiv: self + (value * t1) / t2
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

// Vectorised for AVX2 where the CPU has it (the build targets baseline x86-64); AVX2 without
// FMA, so no multiply-add is contracted and both clones give the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void AdamWUpdateF32(float* p, const float* g, float* m, float* v, int64_t n, const AdamWConstants& c) {
  if (c.grad_scale != 1.0f) Update<true>(p, g, m, v, n, c);
  else Update<false>(p, g, m, v, n, c);
}

}  // namespace vlorch::train
