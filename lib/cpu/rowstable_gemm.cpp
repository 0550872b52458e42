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
#if defined(MAGNETS_HAVE_FMA_BLOCK)
    rowstable_matmul_isa(a, w, bias, c, gelu, simd::cpu_has_avx512());
#else
    rowstable_matmul_isa(a, w, bias, c, gelu, false);
#endif
}

void rowstable_matmul_isa(ConstMat a, ConstMat w, const float* bias, Mat c, bool gelu, bool avx512) {
    const int64_t M = a.rows, K = a.cols, N = w.rows;
    (void)avx512;
#if defined(MAGNETS_HAVE_FMA_BLOCK)
    // W is packed once into panels [K][NB] of NB = 32 output columns (AVX-512)
    // or 16 (AVX2), the last 16 columns of an AVX-512 product in a 16-panel.
    // Work runs row chunk by row chunk: a chunk of A meets every panel before
    // the next chunk is read, so A streams from memory once (panel-major
    // order read all of A once per panel: 64 times for a 1024-wide output).
    const int64_t NB = avx512 ? 32 : 16;
    const int64_t wide = N / NB * NB;                            // columns in NB-panels
    const int64_t full = avx512 && N - wide >= 16 ? wide + 16 : (avx512 ? wide : N / 16 * 16); // + a 16-panel
    struct Panel {
        int64_t col, width;
    };
    std::vector<Panel> panels;
    for (int64_t j = 0; j < wide; j += NB) panels.push_back({j, NB});
    if (full > wide) panels.push_back({wide, 16});
    const int64_t col_blocks = static_cast<int64_t>(panels.size());
    const int64_t kc = 256;
    // rows of A per chunk: a chunk's k block (rows x kc) about 256 KiB
    const int64_t row_chunk = std::clamp<int64_t>((256 * 1024 / 4) / std::max<int64_t>(std::min(K, kc), 1) / 12 * 12, 12, 192);
    const int64_t row_chunks = (M + row_chunk - 1) / row_chunk;
    const bool parallel = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) > 2e6;
    static thread_local std::vector<float> packed_w;
    if (packed_w.size() < static_cast<size_t>(full * K)) packed_w.resize(static_cast<size_t>(full * K));
    float* packed = packed_w.data(); // panel of column j0 at packed + j0 * K
#pragma omp parallel if (parallel)
    {
#pragma omp for schedule(static)
        for (int64_t jb = 0; jb < col_blocks; ++jb) { // p[k][j] = w[j0 + j][k]
            const Panel P = panels[static_cast<size_t>(jb)];
            float* p = packed + P.col * K;
            for (int64_t j = 0; j < P.width; ++j) {
                const float* wr = w.data + (P.col + j) * w.ld;
                for (int64_t k = 0; k < K; ++k) p[k * P.width + j] = wr[k];
            }
        }
        // A task is one row chunk against a group of panels (about 256
        // columns), k block by k block: the group's slice of W for a k block
        // (kc x 256) and the chunk's C block (rows x 256) stay in L2 while all
        // the chunk's rows pass. (Panel by panel over the whole K streamed
        // all of packed W from L3 for every chunk: 105 GFLOP/s at K = 3072, N
        // = 768 on an AVX-512 core; a whole chunk against every panel per k
        // block moved rows x N of C through L3 instead.) With few row chunks
        // a group is one panel, so both cores get work. Threads take tasks as
        // they finish: the two cores of a VM rarely run at the same speed,
        // and a static split left one waiting at the barrier for 4-5% of a
        // forward. Between k blocks the chains continue through C (stored and
        // reloaded exactly) and the bias comes after the last: the same bits
        // in any order.
        const int64_t group = row_chunks >= 4 ? std::max<int64_t>(1, 256 / NB) : 1;
        const int64_t groups = (col_blocks + group - 1) / group, tasks = row_chunks * groups;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t rc = t / groups;
            const int64_t jb0 = t % groups * group, jb1 = std::min(col_blocks, jb0 + group);
            const int64_t r0 = rc * row_chunk, rows = std::min(row_chunk, M - r0);
            int64_t k0 = 0;
            do {
                const int64_t kn = std::min(kc, K - k0);
                const float* ak = a.data + r0 * a.ld + k0;
                for (int64_t jb = jb0; jb < jb1; ++jb) {
                    const Panel P = panels[static_cast<size_t>(jb)];
                    float* cb = c.data + r0 * c.ld + P.col;
                    const float* pk = packed + P.col * K + k0 * P.width;
                    const float* bk = bias && k0 + kn == K ? bias + P.col : nullptr;
                    if (P.width == 32)
                        simd::fma512_rows_x32<true>(rows, kn, ak, a.ld, 1, pk, 32, cb, c.ld, bk, k0 > 0);
                    else
                        simd::fma_rows_x16<true>(rows, kn, ak, a.ld, 1, pk, 16, cb, c.ld, bk, k0 > 0);
                }
                k0 += kn;
            } while (k0 < K);
            if (gelu)
                for (int64_t i = r0; i < r0 + rows; ++i) {
                    float* ci = c.data + i * c.ld;
                    for (int64_t j = panels[static_cast<size_t>(jb0)].col; j < panels[static_cast<size_t>(jb1 - 1)].col +
                                                                                  panels[static_cast<size_t>(jb1 - 1)].width;
                         ++j)
                        ci[j] = magnets::gelu(ci[j]);
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
