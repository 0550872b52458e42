// The nested transformer's training operations on the CPU backends (see
// Backend in magnets/backend.h; the caller is lib/nn/transformer.cpp): the
// f32 instances of the templates in lib/nn/transformer_ops.h, which the
// finite-difference tests also run in double.
//
// Where the CPU has AVX-512, the same templates run from a second instance
// compiled for it (namespace nn::ops::avx512 below, chosen per call by
// simd::cpu_has_avx512(); MAGNETS_CPU_ISA=avx2 keeps the AVX2 code): the
// build targets x86-64-v3, and on an AVX-512 machine the 256-bit loops left
// half of the step's non-matmul time on the table. The two instances give
// the same results within rounding (the register-block products the same
// bits); one process always uses one of them.
#include "cpu/host_backend.h"

#include "nn/transformer_ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(MAGNETS_HAVE_FMA_BLOCK) && defined(__GNUC__) && !defined(__clang__)
#define MAGNETS_HAVE_AVX512_OPS 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512cd,prefer-vector-width=512")
namespace magnets::nn::ops::avx512 {
#define MAGNETS_OPS_FMA_GEMM simd::fma512_gemm
#define MAGNETS_OPS_AVX512 1
#include "nn/transformer_ops.inc"
#undef MAGNETS_OPS_AVX512
#undef MAGNETS_OPS_FMA_GEMM
} // namespace magnets::nn::ops::avx512
#pragma GCC pop_options
// nn::ops::f(args) on the instance this CPU runs best.
#define MAGNETS_OPS(f, ...) (simd::cpu_has_avx512() ? nn::ops::avx512::f(__VA_ARGS__) : nn::ops::f(__VA_ARGS__))
#else
#define MAGNETS_OPS(f, ...) nn::ops::f(__VA_ARGS__)
#endif

namespace magnets {

void HostBackend::layernorm_forward(const float* x, int64_t ldx, float* y, int64_t ldy, float* mean, float* rstd,
                                    const float* g, const float* b, int64_t rows, int64_t n) {
    MAGNETS_OPS(layernorm_forward, x, ldx, y, ldy, mean, rstd, g, b, rows, n);
}

void HostBackend::layernorm_backward(const float* x, int64_t ldx, const float* dy, int64_t lddy, const float* mean,
                                     const float* rstd, const float* g, float* dx, int64_t lddx, float* dg, float* db,
                                     int64_t rows, int64_t n, bool accumulate) {
    MAGNETS_OPS(layernorm_backward, x, ldx, dy, lddy, mean, rstd, g, dx, lddx, dg, db, rows, n, accumulate);
}

void HostBackend::add_bias(float* y, int64_t ld, const float* b, int64_t rows, int64_t n) {
    MAGNETS_OPS(add_bias, y, ld, b, rows, n);
}

void HostBackend::bias_backward(const float* dy, int64_t ld, float* db, int64_t rows, int64_t n) {
    MAGNETS_OPS(bias_backward, dy, ld, db, rows, n);
}

void HostBackend::bias_gelu_forward(float* u, const float* b, float* g, int64_t rows, int64_t n) {
    MAGNETS_OPS(bias_gelu_forward, u, b, g, rows, n);
}

void HostBackend::gelu_bias_backward(const float* u, const float* dg, float* du, float* db, int64_t rows, int64_t n) {
    MAGNETS_OPS(gelu_bias_backward, u, dg, du, db, rows, n);
}

void HostBackend::attention_forward(const float* q, const float* k, const float* v, int64_t ld, float* out,
                                    float* probs, int64_t batch, int64_t seq, int64_t heads, int64_t hd) {
    MAGNETS_OPS(attention_forward, q, k, v, ld, out, probs, batch, seq, heads, hd);
}

void HostBackend::attention_backward(const float* q, const float* k, const float* v, const float* probs,
                                     const float* dout, int64_t ld, float* dq, float* dk, float* dv, int64_t batch,
                                     int64_t seq, int64_t heads, int64_t hd) {
    MAGNETS_OPS(attention_backward, q, k, v, probs, dout, ld, dq, dk, dv, batch, seq, heads, hd);
}

Backend::LossSums HostBackend::masked_loss(const float* logits, int64_t ld, const float* teacher, int64_t ld_teacher,
                                           const int32_t* targets, const uint8_t* mask, int64_t rows,
                                           int64_t n_classes, double eps, double alpha, double weight, float* dlogits,
                                           int64_t ld_d) {
    return MAGNETS_OPS(masked_loss, logits, ld, teacher, ld_teacher, targets, mask, rows, n_classes, eps, alpha, weight,
                                dlogits, ld_d);
}

void HostBackend::embedding_backward(const float* dx, const int32_t* ids, int64_t R, int64_t S, int64_t r, int64_t D,
                                     float* tok_grad, float* pos_grad) {
    for (int64_t i = 0; i < R; ++i) { // fixed order: deterministic
        const float* d = dx + i * r;
        float* t = tok_grad + static_cast<int64_t>(ids[i]) * D;
        float* q = pos_grad + (i % S) * D;
        for (int64_t j = 0; j < r; ++j) {
            t[j] += d[j];
            q[j] += d[j];
        }
    }
}

// Loops over this many elements or more run on all threads.
constexpr int64_t kParallelElems = 1 << 16;

double HostBackend::sum_squares(const float* const* gs, const int64_t* ns, int64_t count) {
    // Per array, sums of squares over fixed chunks, then the chunks in order:
    // the same bits on any number of threads.
    constexpr int64_t chunk = 8192;
    double acc = 0.0;
    std::vector<double> part;
    for (int64_t a = 0; a < count; ++a) {
        const float* g = gs[a];
        const int64_t n = ns[a], chunks = (n + chunk - 1) / chunk;
        part.assign(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(dynamic, 8) if (n >= kParallelElems)
        for (int64_t c = 0; c < chunks; ++c) {
            double s = 0.0;
            for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) s += static_cast<double>(g[i]) * g[i];
            part[static_cast<size_t>(c)] = s;
        }
        for (double p : part) acc += p;
    }
    return acc;
}

void HostBackend::adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float clip, float b1, float b2,
                               float step_size, float inv_sqrt_bc2, float eps, float wd) {
#pragma omp parallel for schedule(dynamic, 4096) if (n >= kParallelElems)
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * clip;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        w[i] -= wd * w[i];
        w[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }
}

void HostBackend::ema_update(float* e, const float* w, float d, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= nn::ops::kParallelWork)
    for (int64_t i = 0; i < n; ++i) e[i] = d * e[i] + (1.0f - d) * w[i];
}

} // namespace magnets
