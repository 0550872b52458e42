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
// Also transpose8, the 8x8 block transpose (Winograd's layout changes and
// attention's K^T).
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

// The same product in 512-bit registers for CPUs with AVX-512, for code
// that chose it at run time (nn/transformer_ops.inc's avx512 instance; the
// caller checks cpu_has_avx512()). C[MR x 16] in MR vector accumulators
// (MR <= 12), B's row as one vector, A's element broadcast from memory. Each
// C element is still one FMA chain over k in increasing order from zero (or
// C's old value), so it gives the bits of fma_gemm.
// The same target string as the #pragma GCC target of host_train_ops.cpp,
// so the kernels inline there.
#define MAGNETS_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512cd,prefer-vector-width=512")))

template <int MR>
MAGNETS_TARGET_AVX512 inline void fma512_block_x16(int64_t K, const float* a, int64_t ars, int64_t aks, const float* b,
                                                   int64_t ldb, float* c, int64_t ldc, bool accumulate) {
    static_assert(MR >= 1 && MR <= 12, "at most 12 rows: 12 accumulators + B + broadcasts");
    __m512 acc[MR];
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) acc[i] = accumulate ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
        const __m512 bk = _mm512_loadu_ps(b + k * ldb);
        const float* ak = a + k * aks;
#pragma GCC unroll 12
        for (int i = 0; i < MR; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(ak[i * ars]), bk, acc[i]);
    }
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) _mm512_storeu_ps(c + i * ldc, acc[i]);
}

// C[MR x 32] (+)= A B (+ bias after the chain) in 512-bit registers: MR x 32
// blocks of 2 MR accumulators (MR <= 12), A(i, k) = a[i * ars + k * aks]
// (UnitK: aks = 1), B(k, j) = b[k * ldb + j]. The row-stable matmul's panel
// product (B a packed panel, ldb 32) and the attention products' 32-column
// block. The bits of fma_block_x16 on the two 16-column halves; `accumulate`
// continues the chains from C (a product split over blocks of k gives the
// same bits).
template <int MR, bool UnitK>
MAGNETS_TARGET_AVX512 inline void fma512_block_x32(int64_t K, const float* a, int64_t ars, int64_t aks, const float* b,
                                                   int64_t ldb, float* c, int64_t ldc, const float* bias,
                                                   bool accumulate) {
    static_assert(MR >= 1 && MR <= 12, "at most 12 rows: 24 accumulators + 2 B vectors");
    __m512 lo[MR], hi[MR];
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
        lo[i] = accumulate ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
        hi[i] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; ++k) {
        const __m512 b0 = _mm512_loadu_ps(b + k * ldb), b1 = _mm512_loadu_ps(b + k * ldb + 16);
        const float* ak = a + k * (UnitK ? 1 : aks);
#pragma GCC unroll 12
        for (int i = 0; i < MR; ++i) {
            const __m512 x = _mm512_set1_ps(ak[i * ars]);
            lo[i] = _mm512_fmadd_ps(x, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(x, b1, hi[i]);
        }
    }
    const __m512 z0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    const __m512 z1 = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
        _mm512_storeu_ps(c + i * ldc, bias ? _mm512_add_ps(lo[i], z0) : lo[i]);
        _mm512_storeu_ps(c + i * ldc + 16, bias ? _mm512_add_ps(hi[i], z1) : hi[i]);
    }
}

// Rows [0, M) of C[:, 0:32] in blocks of 12, the last rows in one smaller block.
template <bool UnitK>
MAGNETS_TARGET_AVX512 inline void fma512_rows_x32(int64_t M, int64_t K, const float* a, int64_t ars, int64_t aks,
                                                  const float* b, int64_t ldb, float* c, int64_t ldc,
                                                  const float* bias = nullptr, bool accumulate = false) {
    int64_t i = 0;
    for (; i + 12 <= M; i += 12)
        fma512_block_x32<12, UnitK>(K, a + i * ars, ars, aks, b, ldb, c + i * ldc, ldc, bias, accumulate);
    a += i * ars;
    c += i * ldc;
    switch (M - i) {
#define MAGNETS_X32_CASE(r) \
    case r: fma512_block_x32<r, UnitK>(K, a, ars, aks, b, ldb, c, ldc, bias, accumulate); break;
    MAGNETS_X32_CASE(11) MAGNETS_X32_CASE(10) MAGNETS_X32_CASE(9) MAGNETS_X32_CASE(8) MAGNETS_X32_CASE(7)
    MAGNETS_X32_CASE(6) MAGNETS_X32_CASE(5) MAGNETS_X32_CASE(4) MAGNETS_X32_CASE(3) MAGNETS_X32_CASE(2)
    MAGNETS_X32_CASE(1)
#undef MAGNETS_X32_CASE
    default: break;
    }
}


// C[M, N] (+)= A[M, K] B[K, N] with N a multiple of 16: fma_gemm's product
// in 512-bit registers (32-column blocks, then a 16-column one), the same
// bits.
MAGNETS_TARGET_AVX512 inline void fma512_gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t ars,
                                              int64_t aks, const float* b, int64_t ldb, float* c, int64_t ldc,
                                              bool accumulate = false) {
    int64_t j = 0;
    for (; j + 32 <= N; j += 32) {
        if (aks == 1)
            fma512_rows_x32<true>(M, K, a, ars, 1, b + j, ldb, c + j, ldc, nullptr, accumulate);
        else
            fma512_rows_x32<false>(M, K, a, ars, aks, b + j, ldb, c + j, ldc, nullptr, accumulate);
    }
    for (; j < N; j += 16) {
        int64_t i = 0;
        for (; i + 12 <= M; i += 12) fma512_block_x16<12>(K, a + i * ars, ars, aks, b + j, ldb, c + i * ldc + j, ldc, accumulate);
        const float* ai = a + i * ars;
        float* ci = c + i * ldc + j;
        switch (M - i) {
        case 11: fma512_block_x16<11>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 10: fma512_block_x16<10>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 9: fma512_block_x16<9>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 8: fma512_block_x16<8>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 7: fma512_block_x16<7>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 6: fma512_block_x16<6>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 5: fma512_block_x16<5>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 4: fma512_block_x16<4>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 3: fma512_block_x16<3>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 2: fma512_block_x16<2>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        case 1: fma512_block_x16<1>(K, ai, ars, aks, b + j, ldb, ci, ldc, accumulate); break;
        default: break;
        }
    }
}

// Whether this CPU runs the AVX-512 code above (F, VL, BW, DQ, CD: what
// x86-64-v4 code may use), unless MAGNETS_CPU_ISA=avx2 in the environment
// asks for the AVX2 code (to compare the two, or to rule the wide code out).
bool cpu_has_avx512();

// 8x8 block transpose: out[j * ldo + i] = in[i * ldi + j] for i, j < 8.
inline void transpose8(const float* in, int64_t ldi, float* out, int64_t ldo) {
    __m256 r0 = _mm256_loadu_ps(in), r1 = _mm256_loadu_ps(in + ldi), r2 = _mm256_loadu_ps(in + 2 * ldi),
           r3 = _mm256_loadu_ps(in + 3 * ldi), r4 = _mm256_loadu_ps(in + 4 * ldi), r5 = _mm256_loadu_ps(in + 5 * ldi),
           r6 = _mm256_loadu_ps(in + 6 * ldi), r7 = _mm256_loadu_ps(in + 7 * ldi);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
                 t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r0 = _mm256_permute2f128_ps(u0, u4, 0x20); r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
    r2 = _mm256_permute2f128_ps(u2, u6, 0x20); r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
    r4 = _mm256_permute2f128_ps(u0, u4, 0x31); r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
    r6 = _mm256_permute2f128_ps(u2, u6, 0x31); r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
    _mm256_storeu_ps(out, r0); _mm256_storeu_ps(out + ldo, r1); _mm256_storeu_ps(out + 2 * ldo, r2);
    _mm256_storeu_ps(out + 3 * ldo, r3); _mm256_storeu_ps(out + 4 * ldo, r4); _mm256_storeu_ps(out + 5 * ldo, r5);
    _mm256_storeu_ps(out + 6 * ldo, r6); _mm256_storeu_ps(out + 7 * ldo, r7);
}

} // namespace magnets::simd

#endif
