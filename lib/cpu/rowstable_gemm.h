// lib/cpu/rowstable_gemm.h (private): C = A W^T (+ bias) on the CPU, where
// every C element is one FMA chain over k = 0..K-1 started from zero, then the
// bias added. A row's result therefore never depends on M, on the other rows
// or on the thread count; the sampler relies on it so a seed gives the same
// tokens at any batch size. (oneDNN's matmul picks kernels by shape: rows of a
// 7-row product differ in the last bits from the same rows inside 4,160.)
//
// AVX2/FMA: W is packed per 16 output columns into a K x 16 panel and a 6 x 16
// register block of C accumulates in 12 vector registers. AVX-512 (chosen at
// run time, simd::cpu_has_avx512()): 32-column panels and 12 x 32 blocks in 24
// registers; the same chains, so the same bits. Elsewhere: the same chains in
// scalar code.
#pragma once
#include "magnets/tensor.h"

namespace magnets::cpu {

// a [M, K], w [N, K] (PyTorch Linear layout, any leading dimensions),
// bias [N] or null, c [M, N]; gelu: c = GELU(a w^T + bias), applied to each
// block right after it is computed.
void rowstable_matmul(ConstMat a, ConstMat w, const float* bias, Mat c, bool gelu = false);
// The same with the vector width chosen by the caller (tests compare the two;
// avx512 = true needs a CPU with AVX-512).
void rowstable_matmul_isa(ConstMat a, ConstMat w, const float* bias, Mat c, bool gelu, bool avx512);

} // namespace magnets::cpu
