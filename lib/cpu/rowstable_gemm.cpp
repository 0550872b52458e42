// Row-stable C = A W^T + bias; see rowstable_gemm.h.
#include "cpu/rowstable_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/fma_block.h"

namespace magnets::cpu {

namespace {

// One element: fma chain over k from 0 (the scalar twin of the vector kernel).
inline float dot_chain(const float* a, const float* w, int64_t K) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k) acc = std::fma(a[k], w[k], acc);
    return acc;
}

} // namespace

void rowstable_matmul(ConstMat a, ConstMat w, const float* bias, Mat c) {
    const int64_t M = a.rows, K = a.cols, N = w.rows;
    const int64_t full = N / 16 * 16; // columns handled by the vector kernel
    (void)full;
#if defined(MAGNETS_HAVE_FMA_BLOCK)
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
            simd::fma_rows_x16<true>(rows, K, a.data + r0 * a.ld, a.ld, 1, p, 16, c.data + r0 * c.ld + jb * 16, c.ld,
                                     bias ? bias + jb * 16 : nullptr);
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
