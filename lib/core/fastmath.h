// lib/core/fastmath.h (private): exp, erf and GELU for float that the compiler can
// vectorise (branch-free arithmetic, no libm calls), used by softmax, GELU
// and the losses. Double keeps libm (the finite-difference tests run in
// double). Accuracy is checked against libm in tests/test_transformer.cpp.
#pragma once
#include "core/hostdevice.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace magnets {

// exp(x) for float: Cephes' minimax polynomial on [-ln2/2, ln2/2] after range
// reduction x = n ln2 + r; about 1 ulp over the normal range. Inputs below
// -87.3 return ~0 (never a denormal), above 88.7 are clamped. Also a device
// function under nvcc (the GPU sampler's draw uses it).
MAGNETS_HD inline float vexp(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
#if defined(__CUDA_ARCH__)
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
#else
    const float n = std::floor(x * 1.44269504088896341f + 0.5f);
#endif
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f; // ln2 split in two parts
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
#if defined(__CUDA_ARCH__)
    const float scale = __int_as_float(bits);
#else
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
#endif
    return p * scale;
}
inline double vexp(double x) { return std::exp(x); }

// erf(x) for float: the rational approximation used by Eigen and XLA
// (x * P(x^2) / Q(x^2) on [-4, 4], +-1 beyond); a few ulp.
inline float verf(float a) {
    const float x = a < -4.0f ? -4.0f : (a > 4.0f ? 4.0f : a);
    const float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    p = p * x;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return p / q;
}
inline double verf(double x) { return std::erf(x); }

// Exact (erf) GELU, the formula of nn::ops::gelu_forward: 0.5 x (1 + erf(x / sqrt 2)).
inline float gelu(float x) { return 0.5f * x * (1 + verf(x * static_cast<float>(M_SQRT1_2))); }

// The model code calls these as nn::vexp / nn::verf.
namespace nn {
using magnets::verf;
using magnets::vexp;
} // namespace nn

} // namespace magnets
