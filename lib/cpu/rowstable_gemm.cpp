// Row-stable C = A W^T + bias; see rowstable_gemm.h.
#include "cpu/rowstable_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/fastmath.h"
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

void rowstable_matmul(ConstMat a, ConstMat w, const float* bias, Mat c, bool gelu) {
    const int64_t M = a.rows, K = a.cols, N = w.rows;
    const int64_t full = N / 16 * 16; // columns handled by the vector kernel
    (void)full;
#if defined(MAGNETS_HAVE_FMA_BLOCK)
    // W is packed once into 16-column panels [K][16]. Work runs row chunk by
    // row chunk: a chunk of A (about 256 KiB, in L2) meets every panel before
    // the next chunk is read, so A streams from memory once (panel-major order
    // read all of A once per panel: 64 times for a 1024-wide output).
    const int64_t col_blocks = full / 16;
    const int64_t row_chunk = std::clamp<int64_t>((256 * 1024 / 4) / std::max<int64_t>(K, 1) / 6 * 6, 6, 192);
    const int64_t row_chunks = (M + row_chunk - 1) / row_chunk, tasks = col_blocks * row_chunks;
    const bool parallel = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) > 2e6;
    static thread_local std::vector<float> packed_w;
    if (packed_w.size() < static_cast<size_t>(col_blocks * K * 16)) packed_w.resize(static_cast<size_t>(col_blocks * K * 16));
    float* packed = packed_w.data();
#pragma omp parallel if (parallel)
    {
#pragma omp for schedule(static)
        for (int64_t jb = 0; jb < col_blocks; ++jb) { // panel jb: p[k][j] = w[jb*16 + j][k]
            float* p = packed + jb * K * 16;
            for (int64_t j = 0; j < 16; ++j) {
                const float* wr = w.data + (jb * 16 + j) * w.ld;
                for (int64_t k = 0; k < K; ++k) p[k * 16 + j] = wr[k];
            }
        }
        // Threads take row chunks as they finish (whole chunks when there are
        // plenty, so a thread's tasks share their A chunk; single panels
        // otherwise): the two cores of a VM rarely run at the same speed, and
        // a static split left one waiting at the barrier for 4-5% of a forward.
        const int64_t grab = row_chunks >= 8 ? col_blocks : 1;
#pragma omp for schedule(dynamic, grab)
        for (int64_t t = 0; t < tasks; ++t) { // row-chunk major
            const int64_t rc = t / col_blocks, jb = t % col_blocks;
            const int64_t r0 = rc * row_chunk, rows = std::min(row_chunk, M - r0);
            simd::fma_rows_x16<true>(rows, K, a.data + r0 * a.ld, a.ld, 1, packed + jb * K * 16, 16,
                                     c.data + r0 * c.ld + jb * 16, c.ld, bias ? bias + jb * 16 : nullptr);
            if (gelu) { // the block is still in L1
                float* cb = c.data + r0 * c.ld + jb * 16;
                for (int64_t i = 0; i < rows; ++i)
                    for (int64_t j = 0; j < 16; ++j) cb[i * c.ld + j] = magnets::gelu(cb[i * c.ld + j]);
            }
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
                const float v0 = dot_chain(a.data + i * a.ld, w.data + j * w.ld, K);
                const float v = bias ? v0 + bias[j] : v0;
                c.data[i * c.ld + j] = gelu ? magnets::gelu(v) : v;
            }
    }
}

} // namespace magnets::cpu
