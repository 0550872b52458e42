// The decoder's operations on the CPU backends (see Backend in
// magnets/backend.h and nn/decoder.cpp, their caller): the sampler's
// transformer forward with a KV cache.
#include "cpu/host_backend.h"

#include "core/fastmath.h"
#include "core/fma_block.h"
#include "nn/transformer_ops.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace magnets {

void HostBackend::embed_rows(const int32_t* ids, const int32_t* pos, int64_t rq, int64_t S, const float* tok,
                             const float* pe, int64_t D, float* x, int64_t R, int64_t r) {
#pragma omp parallel for schedule(dynamic, 16) if (R * r >= nn::ops::kParallelWork)
    for (int64_t i = 0; i < R; ++i) {
        const int64_t b = i / rq, ps = pos[i];
        const float* t = tok + static_cast<int64_t>(ids[b * S + ps]) * D;
        const float* q = pe + ps * D;
        float* xi = x + i * r;
        for (int64_t j = 0; j < r; ++j) xi[j] = t[j] + q[j];
    }
}

void HostBackend::layernorm_rows(const float* x, float* y, const float* g, const float* b, int64_t rows, int64_t n) {
    static thread_local std::vector<float> stats; // mean and rstd, not kept
    if (stats.size() < static_cast<size_t>(2 * rows)) stats.resize(static_cast<size_t>(2 * rows));
    nn::ops::layernorm_forward(x, n, y, n, stats.data(), stats.data() + rows, g, b, rows, n);
}

void HostBackend::add_into(float* x, const float* y, int64_t count) {
#pragma omp parallel for schedule(dynamic, 4096) if (count >= nn::ops::kParallelWork)
    for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

void HostBackend::scatter_rows(const float* src, const int32_t* pos, int64_t rq, int64_t S, float* dst, int64_t R,
                               int64_t n) {
#pragma omp parallel for schedule(dynamic, 16) if (R * n >= nn::ops::kParallelWork)
    for (int64_t i = 0; i < R; ++i)
        std::memcpy(dst + (i / rq * S + pos[i]) * n, src + i * n, sizeof(float) * static_cast<size_t>(n));
}

void HostBackend::gather_rows(const float* src, const int32_t* idx, int64_t seqs, int64_t rq, int64_t ro, float* dst,
                              int64_t n) {
#pragma omp parallel for schedule(dynamic, 16) if (seqs * ro * n >= nn::ops::kParallelWork)
    for (int64_t k = 0; k < seqs * ro; ++k)
        std::memcpy(dst + k * n, src + (k / ro * rq + idx[k]) * n, sizeof(float) * static_cast<size_t>(n));
}

namespace {
// nn::ops::small_gemm in 512-bit registers where the CPU has them: the same
// FMA chains (core/fma_block.h), so the same bits, and the sampler's tokens
// do not depend on the vector width.
void attention_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                    float* C, int64_t ldc) {
#if defined(MAGNETS_HAVE_FMA_BLOCK)
    if (N % 16 == 0 && simd::cpu_has_avx512()) return simd::fma512_gemm(M, N, K, A, lda, 1, B, ldb, C, ldc);
#endif
    nn::ops::small_gemm(M, N, K, A, lda, B, ldb, C, ldc);
}
} // namespace

void HostBackend::attention_rows(const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq,
                                 int64_t S, int64_t heads, int64_t hd) {
    const int64_t a = heads * hd, sp = nn::ops::pad16(S);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
#pragma omp parallel if (seqs * heads * rq * S * hd >= nn::ops::kParallelWork)
    {
        // kt: K^T [hd, sp], its padding columns zero; e: exp of the scores [rq, sp]
        std::vector<float> kt(static_cast<size_t>(hd * sp), 0.0f), e(static_cast<size_t>(rq * sp)),
            inv(static_cast<size_t>(rq));
#pragma omp for schedule(dynamic, 8) // cores of a VM run at different speeds
        for (int64_t bh = 0; bh < seqs * heads; ++bh) {
            const int64_t b = bh / heads, h = bh % heads;
            const float* kb = kc + b * S * a + h * hd;
            const float* vb = vc + b * S * a + h * hd;
            const float* qb = q + b * rq * a + h * hd;
            float* ob = out + b * rq * a + h * hd;
            int64_t j0 = 0;
#if defined(MAGNETS_HAVE_FMA_BLOCK)
            if (hd % 8 == 0)
                for (; j0 + 8 <= S; j0 += 8)
                    for (int64_t d = 0; d < hd; d += 8) simd::transpose8(kb + j0 * a + d, a, kt.data() + d * sp + j0, sp);
#endif
            for (int64_t j = j0; j < S; ++j)
                for (int64_t d = 0; d < hd; ++d) kt[static_cast<size_t>(d * sp + j)] = kb[j * a + d];
            // scores q k^T straight from the q rows; the 1/sqrt(hd) scale goes
            // into the exponent, and the 1/sum onto the output rows (hd wide,
            // where the probabilities are S wide)
            attention_gemm(rq, sp, hd, qb, a, kt.data(), sp, e.data(), sp);
            for (int64_t i = 0; i < rq; ++i) {
                float* ei = e.data() + i * sp;
                const float mx = nn::ops::lane_max(ei, S);
                for (int64_t j = 0; j < S; ++j) ei[j] = magnets::vexp((ei[j] - mx) * scale);
                inv[static_cast<size_t>(i)] = 1.0f / nn::ops::lane_sum<float>(ei, nullptr, S);
            }
            attention_gemm(rq, hd, S, e.data(), sp, vb, a, ob, a);
            for (int64_t i = 0; i < rq; ++i)
                for (int64_t d = 0; d < hd; ++d) ob[i * a + d] *= inv[static_cast<size_t>(i)];
        }
    }
}

} // namespace magnets
