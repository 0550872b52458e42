// lib/core/fma_block.h (private): the AVX2/FMA register block that every
// hand-written product in magnets runs on: the row-stable inference matmul
// (cpu/rowstable_gemm.cpp), the Winograd convolutions (cpu/winograd.cpp) and
// attention's per-head products (nn/transformer_ops.h).
//
//   C[MR x 16] = A[MR x K] B[K x 16] (+ bias), MR <= 6
//
// in 2 * MR vector accumulators (named registers: an array indexed in a loop
// may be kept in memory). Each C element is one FMA chain over k = 0..K-1 in
// increasing order, started from zero (or from C's old value with
// `accumulate`), and the bias is added after the chain. Whoever computes an
// element, in whatever block, gets the same bits; the sampler's determinism
// across batch sizes rests on that.
//
// Operands: A(i, k) = a[i * ars + k * aks] (UnitK: aks = 1, the common
// row-major case, with simpler addressing); B(k, j) = b[k * ldb + j], so a
// packed panel has ldb = 16.
#pragma once
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <cstdint>

#define MAGNETS_HAVE_FMA_BLOCK 1

namespace magnets::simd {

#define MAGNETS_FMA_ROW(i)                                                                 \
    if (MR > i) {                                                                          \
        const __m256 x = _mm256_broadcast_ss(UnitK ? a + i * ars + k : ak + i * ars);      \
        c##i##0 = _mm256_fmadd_ps(x, b0, c##i##0);                                         \
        c##i##1 = _mm256_fmadd_ps(x, b1, c##i##1);                                         \
    }
#define MAGNETS_FMA_LOAD(i)                                                                \
    if (MR > i && accumulate) {                                                            \
        c##i##0 = _mm256_loadu_ps(c + i * ldc);                                            \
        c##i##1 = _mm256_loadu_ps(c + i * ldc + 8);                                        \
    }
#define MAGNETS_FMA_STORE(i)                                                               \
    if (MR > i) {                                                                          \
        _mm256_storeu_ps(c + i * ldc, bias ? _mm256_add_ps(c##i##0, z0) : c##i##0);        \
        _mm256_storeu_ps(c + i * ldc + 8, bias ? _mm256_add_ps(c##i##1, z1) : c##i##1);    \
    }

template <int MR, bool UnitK>
inline void fma_block_x16(int64_t K, const float* a, int64_t ars, int64_t aks, const float* b, int64_t ldb, float* c,
                          int64_t ldc, const float* bias, bool accumulate) {
    static_assert(MR >= 1 && MR <= 6, "at most 6 rows: 12 accumulators + 2 B vectors + 1 broadcast");
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    MAGNETS_FMA_LOAD(0) MAGNETS_FMA_LOAD(1) MAGNETS_FMA_LOAD(2) MAGNETS_FMA_LOAD(3) MAGNETS_FMA_LOAD(4)
    MAGNETS_FMA_LOAD(5)
    for (int64_t k = 0; k < K; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b + k * ldb), b1 = _mm256_loadu_ps(b + k * ldb + 8);
        const float* ak = a + k * aks;
        (void)ak;
        MAGNETS_FMA_ROW(0) MAGNETS_FMA_ROW(1) MAGNETS_FMA_ROW(2) MAGNETS_FMA_ROW(3) MAGNETS_FMA_ROW(4)
        MAGNETS_FMA_ROW(5)
    }
    const __m256 z0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const __m256 z1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
    MAGNETS_FMA_STORE(0) MAGNETS_FMA_STORE(1) MAGNETS_FMA_STORE(2) MAGNETS_FMA_STORE(3) MAGNETS_FMA_STORE(4)
    MAGNETS_FMA_STORE(5)
}
#undef MAGNETS_FMA_ROW
#undef MAGNETS_FMA_LOAD
#undef MAGNETS_FMA_STORE

// Rows [0, M) of C[:, 0:16] in blocks of 6, the last rows in one smaller block.
template <bool UnitK>
inline void fma_rows_x16(int64_t M, int64_t K, const float* a, int64_t ars, int64_t aks, const float* b, int64_t ldb,
                         float* c, int64_t ldc, const float* bias = nullptr, bool accumulate = false) {
    int64_t i = 0;
    for (; i + 6 <= M; i += 6)
        fma_block_x16<6, UnitK>(K, a + i * ars, ars, aks, b, ldb, c + i * ldc, ldc, bias, accumulate);
    a += i * ars;
    c += i * ldc;
    switch (M - i) {
    case 5: fma_block_x16<5, UnitK>(K, a, ars, aks, b, ldb, c, ldc, bias, accumulate); break;
    case 4: fma_block_x16<4, UnitK>(K, a, ars, aks, b, ldb, c, ldc, bias, accumulate); break;
    case 3: fma_block_x16<3, UnitK>(K, a, ars, aks, b, ldb, c, ldc, bias, accumulate); break;
    case 2: fma_block_x16<2, UnitK>(K, a, ars, aks, b, ldb, c, ldc, bias, accumulate); break;
    case 1: fma_block_x16<1, UnitK>(K, a, ars, aks, b, ldb, c, ldc, bias, accumulate); break;
    default: break;
    }
}

// C[M, N] (+)= A[M, K] B[K, N] with N a multiple of 16, column panel by panel
// (each B panel stays in L1 while every row block uses it).
inline void fma_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t ars, int64_t aks, const float* b,
                     int64_t ldb, float* c, int64_t ldc, bool accumulate = false) {
    for (int64_t j = 0; j < N; j += 16) {
        if (aks == 1)
            fma_rows_x16<true>(M, K, a, ars, 1, b + j, ldb, c + j, ldc, nullptr, accumulate);
        else
            fma_rows_x16<false>(M, K, a, ars, aks, b + j, ldb, c + j, ldc, nullptr, accumulate);
    }
}

} // namespace magnets::simd

#endif
