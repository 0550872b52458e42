// Row-stable C = A W^T + bias; see rowstable_gemm.h.
#include "cpu/rowstable_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace magnets::cpu {

namespace {

// One element: fma chain over k from 0 (the scalar twin of the vector kernel).
inline float dot_chain(const float* a, const float* w, int64_t K) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k) acc = std::fma(a[k], w[k], acc);
    return acc;
}

#if defined(__AVX2__) && defined(__FMA__)
// Rows [0, MR) of a (row stride lda) times the packed panel p [K, 16] into c.
// Accumulators are named registers (an array indexed in a loop may be kept in
// memory by the compiler); one FMA chain per element over k in order.
#define MAGNETS_ROW(i)                                                              \
    if (MR > i) {                                                                   \
        const __m256 x = _mm256_broadcast_ss(a + i * lda + k);                      \
        c##i##0 = _mm256_fmadd_ps(x, b0, c##i##0);                                  \
        c##i##1 = _mm256_fmadd_ps(x, b1, c##i##1);                                  \
    }
#define MAGNETS_STORE(i)                                                            \
    if (MR > i) {                                                                   \
        _mm256_storeu_ps(c + i * ldc, bias ? _mm256_add_ps(c##i##0, z0) : c##i##0); \
        _mm256_storeu_ps(c + i * ldc + 8, bias ? _mm256_add_ps(c##i##1, z1) : c##i##1); \
    }
template <int MR>
inline void kernel(int64_t K, const float* a, int64_t lda, const float* p, const float* bias, float* c, int64_t ldc) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t k = 0; k < K; ++k) {
        const __m256 b0 = _mm256_load_ps(p + k * 16), b1 = _mm256_load_ps(p + k * 16 + 8);
        MAGNETS_ROW(0) MAGNETS_ROW(1) MAGNETS_ROW(2) MAGNETS_ROW(3) MAGNETS_ROW(4) MAGNETS_ROW(5)
    }
    const __m256 z0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const __m256 z1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
    MAGNETS_STORE(0) MAGNETS_STORE(1) MAGNETS_STORE(2) MAGNETS_STORE(3) MAGNETS_STORE(4) MAGNETS_STORE(5)
}
#undef MAGNETS_ROW
#undef MAGNETS_STORE

template <int MR>
inline void kernel_rows(int64_t rows, int64_t K, const float* a, int64_t lda, const float* p, const float* bias, float* c,
                        int64_t ldc) {
    int64_t i = 0;
    for (; i + MR <= rows; i += MR) kernel<MR>(K, a + i * lda, lda, p, bias, c + i * ldc, ldc);
    switch (rows - i) {
    case 5: kernel<5>(K, a + i * lda, lda, p, bias, c + i * ldc, ldc); break;
    case 4: kernel<4>(K, a + i * lda, lda, p, bias, c + i * ldc, ldc); break;
    case 3: kernel<3>(K, a + i * lda, lda, p, bias, c + i * ldc, ldc); break;
    case 2: kernel<2>(K, a + i * lda, lda, p, bias, c + i * ldc, ldc); break;
    case 1: kernel<1>(K, a + i * lda, lda, p, bias, c + i * ldc, ldc); break;
    default: break;
    }
}
#endif

} // namespace

void rowstable_matmul(ConstMat a, ConstMat w, const float* bias, Mat c) {
    const int64_t M = a.rows, K = a.cols, N = w.rows;
    const int64_t full = N / 16 * 16; // columns handled by the vector kernel
    (void)full;
#if defined(__AVX2__) && defined(__FMA__)
    constexpr int64_t kRowChunk = 192; // rows per task: the packed panel is reused this often
    const int64_t col_blocks = full / 16, row_chunks = (M + kRowChunk - 1) / kRowChunk;
    const int64_t tasks = col_blocks * row_chunks;
    const bool parallel = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) > 2e6;
#pragma omp parallel if (parallel)
    {
        std::vector<float> buf(static_cast<size_t>(K * 16 + 8));
        float* p = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 31) & ~uintptr_t{31});
        int64_t packed = -1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t jb = t / row_chunks, rc = t % row_chunks;
            if (packed != jb) { // panel p[k][j] = w[jb*16 + j][k]
                for (int64_t j = 0; j < 16; ++j) {
                    const float* wr = w.data + (jb * 16 + j) * w.ld;
                    for (int64_t k = 0; k < K; ++k) p[k * 16 + j] = wr[k];
                }
                packed = jb;
            }
            const int64_t r0 = rc * kRowChunk, rows = std::min(kRowChunk, M - r0);
            kernel_rows<6>(rows, K, a.data + r0 * a.ld, a.ld, p, bias ? bias + jb * 16 : nullptr,
                           c.data + r0 * c.ld + jb * 16, c.ld);
        }
    }
    const int64_t first_scalar = full;
#else
    const int64_t first_scalar = 0;
#endif
    if (first_scalar < N) {
#pragma omp parallel for schedule(static) if (M * (N - first_scalar) * K > 2000000)
        for (int64_t i = 0; i < M; ++i)
            for (int64_t j = first_scalar; j < N; ++j) {
                const float v = dot_chain(a.data + i * a.ld, w.data + j * w.ld, K);
                c.data[i * c.ld + j] = bias ? v + bias[j] : v;
            }
    }
}

} // namespace magnets::cpu
