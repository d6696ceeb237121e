// The AdamW update as one pass over a parameter's elements, without LibTorch: reads the
// parameter, its gradient and both moments once and writes three of them once, where the
// same update in ATen ops (mul_, lerp_, mul_, addcmul_, sqrt, div, add_, addcdiv_, plus the
// clipping's mul_ of the gradient) makes eight to nine passes and two temporaries.
#pragma once

#include <cstdint>

namespace vlorch::train {

// Per-tensor constants, in float32 as ATen rounds them for float32 tensors.
struct AdamWConstants {
  float decay = 1.0f;           // 1 - lr * weight_decay
  float beta1_weight = 0.1f;    // 1 - beta1 (the lerp weight)
  float beta2 = 0.999f;
  float one_minus_beta2 = 0.001f;
  float bias_correction2_sqrt = 1.0f;
  float eps = 1e-8f;
  float neg_step_size = 0.0f;   // -lr / (1 - beta1^t)
  float grad_scale = 1.0f;      // clipping's coefficient, applied to the gradient first
};

// In place on n elements: with g' = g * grad_scale (when grad_scale != 1),
//   p = p * decay;  m = m + beta1_weight * (g' - m);  v = v * beta2 + (one_minus_beta2 * g') * g'
//   p = p + (neg_step_size * m) / (sqrt(v) / bias_correction2_sqrt + eps)
// each operation rounded to float32 in this order (no fused multiply-add), which is what the
// ATen ops compute one after another. The gradient is not modified.
void AdamWUpdateF32(float* p, const float* g, float* m, float* v, int64_t n, const AdamWConstants& c);

}  // namespace vlorch::train
