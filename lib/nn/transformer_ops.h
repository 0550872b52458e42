// lib/nn/transformer_ops.h (private): the transformer's non-matmul ops,
// forward and backward, as templates over the element type. The model runs
// them in float; the finite-difference tests run the same code in double.
//
// Layouts: activations are row-major [rows, width] with a leading dimension
// (ld >= width), so a sub-model's narrower activations use the same code.
// Loops are written so the innermost loop is contiguous (vectorisable without
// -ffast-math). Reductions over rows into parameter gradients run in a fixed
// order on one thread, so results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "core/fma_block.h"
#include "magnets/backend.h"
#include "core/fastmath.h"

namespace magnets::nn::ops {

// Loops smaller than this many elements run on one thread: a parallel region
// costs microseconds (more when a core is busy elsewhere), more than the loop.
// Row loops keep static shares: handing rows out dynamically let the other
// thread wait less at barriers, but the training step got about 7% slower
// (the rows an op writes were no longer in the cache of the core that reads
// them next, in oneDNN's static split).
inline constexpr int64_t kParallelWork = 1 << 16;

// sum_j x[j] * (y ? y[j] : 1) with 8 interleaved partial sums (vectorisable,
// and the same order on every call).
template <typename T>
inline T lane_sum(const T* x, const T* y, int64_t n) {
    T part[8] = {};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) part[l] += y ? x[j + l] * y[j + l] : x[j + l];
    T s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; j < n; ++j) s += y ? x[j] * y[j] : x[j];
    return s;
}

// max_j x[j] with 8 partial maxima (exact in any order; vectorisable).
template <typename T>
inline T lane_max(const T* x, int64_t n) {
    T part[8];
    for (int l = 0; l < 8; ++l) part[l] = x[0];
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) part[l] = part[l] > x[j + l] ? part[l] : x[j + l];
    T m = part[0];
    for (int l = 1; l < 8; ++l) m = m > part[l] ? m : part[l];
    for (; j < n; ++j) m = m > x[j] ? m : x[j];
    return m;
}


// Column sums over many rows (parameter gradients) in parallel without
// changing a bit: each thread takes one band of columns (a multiple of 8
// wide) and still sums every column over the rows in order, so the result is
// the one-thread result. One band per thread keeps each pass over the rows as
// long as it can be (narrow bands made many strided passes: 6% slower at one
// thread).
template <typename F>
inline void for_column_blocks(int64_t rows, int64_t n, F&& f) {
    const int64_t threads = rows * n >= kParallelWork ? std::max(1, omp_get_max_threads()) : 1;
    const int64_t band = std::max<int64_t>(8, (n + threads - 1) / threads + 7) / 8 * 8;
    const int64_t bands = (n + band - 1) / band;
#pragma omp parallel for schedule(static, 1) if (bands > 1)
    for (int64_t c = 0; c < bands; ++c) f(c * band, std::min(n, (c + 1) * band));
}

// ---- layer norm --------------------------------------------------------------

// y = (x - mean) * rstd * g + b per row of width n; saves mean and rstd per row.
template <typename T>
void layernorm_forward(const T* x, int64_t ldx, T* y, int64_t ldy, T* mean, T* rstd, const T* g,
                       const T* b, int64_t rows, int64_t n, double eps = 1e-5) {
#pragma omp parallel for schedule(static) if (rows * n >= kParallelWork)
    for (int64_t i = 0; i < rows; ++i) {
        const T* xi = x + i * ldx;
        T* yi = y + i * ldy;
        const T m = lane_sum<T>(xi, nullptr, n) / static_cast<T>(n);
        T dev[8] = {};
        int64_t j0 = 0;
        for (; j0 + 8 <= n; j0 += 8)
            for (int l = 0; l < 8; ++l) dev[l] += (xi[j0 + l] - m) * (xi[j0 + l] - m);
        T v = ((dev[0] + dev[1]) + (dev[2] + dev[3])) + ((dev[4] + dev[5]) + (dev[6] + dev[7]));
        for (; j0 < n; ++j0) v += (xi[j0] - m) * (xi[j0] - m);
        const T r = static_cast<T>(1.0 / std::sqrt(static_cast<double>(v) / static_cast<double>(n) + eps));
        for (int64_t j = 0; j < n; ++j) yi[j] = (xi[j] - m) * r * g[j] + b[j];
        mean[i] = m;
        rstd[i] = r;
    }
}

// dx (+)= layer-norm backward of dy; dg, db += column sums. `accumulate`
// adds into dx (the residual stream's gradient) instead of overwriting.
template <typename T>
void layernorm_backward(const T* x, int64_t ldx, const T* dy, int64_t lddy, const T* mean, const T* rstd,
                        const T* g, T* dx, int64_t lddx, T* dg, T* db, int64_t rows, int64_t n, bool accumulate) {
#pragma omp parallel for schedule(static) if (rows * n >= kParallelWork)
    for (int64_t i = 0; i < rows; ++i) {
        const T* xi = x + i * ldx;
        const T* dyi = dy + i * lddy;
        T* dxi = dx + i * lddx;
        const T m = mean[i], r = rstd[i];
        T p1[8] = {}, p2[8] = {}; // mean(dxhat), mean(dxhat * xhat) in 8 lanes
        int64_t j0 = 0;
        for (; j0 + 8 <= n; j0 += 8)
            for (int l = 0; l < 8; ++l) {
                const T dxh = dyi[j0 + l] * g[j0 + l];
                p1[l] += dxh;
                p2[l] += dxh * ((xi[j0 + l] - m) * r);
            }
        T s1 = ((p1[0] + p1[1]) + (p1[2] + p1[3])) + ((p1[4] + p1[5]) + (p1[6] + p1[7]));
        T s2 = ((p2[0] + p2[1]) + (p2[2] + p2[3])) + ((p2[4] + p2[5]) + (p2[6] + p2[7]));
        for (; j0 < n; ++j0) {
            const T dxh = dyi[j0] * g[j0];
            s1 += dxh;
            s2 += dxh * ((xi[j0] - m) * r);
        }
        const T a1 = s1 / static_cast<T>(n), a2 = s2 / static_cast<T>(n);
        for (int64_t j = 0; j < n; ++j) {
            const T xh = (xi[j] - m) * r;
            const T v = r * (dyi[j] * g[j] - a1 - xh * a2);
            dxi[j] = accumulate ? dxi[j] + v : v;
        }
    }
    for_column_blocks(rows, n, [&](int64_t j0, int64_t j1) {
        for (int64_t i = 0; i < rows; ++i) {
            const T* xi = x + i * ldx;
            const T* dyi = dy + i * lddy;
            const T m = mean[i], r = rstd[i];
            for (int64_t j = j0; j < j1; ++j) {
                dg[j] += dyi[j] * ((xi[j] - m) * r);
                db[j] += dyi[j];
            }
        }
    });
}

// ---- bias --------------------------------------------------------------------

template <typename T>
void add_bias(T* y, int64_t ld, const T* b, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(static) if (rows * n >= kParallelWork)
    for (int64_t i = 0; i < rows; ++i) {
        T* yi = y + i * ld;
        for (int64_t j = 0; j < n; ++j) yi[j] += b[j];
    }
}

// db += column sums of dy (fixed order).
template <typename T>
void bias_backward(const T* dy, int64_t ld, T* db, int64_t rows, int64_t n) {
    for_column_blocks(rows, n, [&](int64_t j0, int64_t j1) {
        for (int64_t i = 0; i < rows; ++i) {
            const T* dyi = dy + i * ld;
            for (int64_t j = j0; j < j1; ++j) db[j] += dyi[j];
        }
    });
}

// ---- GELU (exact, erf form) -----------------------------------------------------

template <typename T>
void gelu_forward(const T* u, T* g, int64_t count) {
#pragma omp parallel for schedule(static) if (count >= kParallelWork)
    for (int64_t i = 0; i < count; ++i) g[i] = static_cast<T>(0.5) * u[i] * (1 + nn::verf(u[i] * static_cast<T>(M_SQRT1_2)));
}

// u[i, :] += b, then g = gelu(u): add_bias and gelu_forward in one pass
// (the same operations, so the same bits).
template <typename T>
void bias_gelu_forward(T* u, const T* b, T* g, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(static) if (rows * n >= kParallelWork)
    for (int64_t i = 0; i < rows; ++i) {
        T* ui = u + i * n;
        T* gi = g + i * n;
        for (int64_t j = 0; j < n; ++j) {
            const T x = ui[j] + b[j];
            ui[j] = x;
            gi[j] = static_cast<T>(0.5) * x * (1 + nn::verf(x * static_cast<T>(M_SQRT1_2)));
        }
    }
}

// du = dg * gelu'(u) and db += column sums of du, in one pass over du (the
// bits of gelu_backward followed by bias_backward). du may alias dg.
template <typename T>
void gelu_bias_backward(const T* u, const T* dg, T* du, T* db, int64_t rows, int64_t n) {
    const T k = static_cast<T>(0.5 * M_2_SQRTPI * M_SQRT1_2); // 1 / sqrt(2 pi)
    for_column_blocks(rows, n, [&](int64_t j0, int64_t j1) {
        for (int64_t i = 0; i < rows; ++i) {
            const T* ui = u + i * n;
            const T* dgi = dg + i * n;
            T* dui = du + i * n;
            for (int64_t j = j0; j < j1; ++j) {
                const T x = ui[j];
                const T cdf = static_cast<T>(0.5) * (1 + nn::verf(x * static_cast<T>(M_SQRT1_2)));
                dui[j] = dgi[j] * (cdf + x * k * nn::vexp(static_cast<T>(-0.5) * x * x));
                db[j] += dui[j];
            }
        }
    });
}

// du = dg * gelu'(u); du may alias dg.
template <typename T>
void gelu_backward(const T* u, const T* dg, T* du, int64_t count) {
    const T k = static_cast<T>(0.5 * M_2_SQRTPI * M_SQRT1_2); // 1 / sqrt(2 pi)
#pragma omp parallel for schedule(static) if (count >= kParallelWork)
    for (int64_t i = 0; i < count; ++i) {
        const T x = u[i];
        const T cdf = static_cast<T>(0.5) * (1 + nn::verf(x * static_cast<T>(M_SQRT1_2)));
        du[i] = dg[i] * (cdf + x * k * nn::vexp(static_cast<T>(-0.5) * x * x));
    }
}

// ---- attention -------------------------------------------------------------------

// out[0, w) = sum_{k < n} c[k * cs] * rows[k * ld + (0, w)], accumulated in
// registers over blocks of W columns (w a multiple of W).
template <int W, typename T>
inline void combine_block(const T* c, int64_t cs, const T* rows, int64_t ld, int64_t n, T* out, int64_t w) {
    for (int64_t c0 = 0; c0 < w; c0 += W) {
        T acc[W] = {};
        for (int64_t k = 0; k < n; ++k) {
            const T ck = c[k * cs];
            const T* r = rows + k * ld + c0;
            for (int j = 0; j < W; ++j) acc[j] = std::fma(ck, r[j], acc[j]); // as the AVX2 kernel
        }
        for (int j = 0; j < W; ++j) out[c0 + j] = acc[j];
    }
}
template <typename T>
inline void combine(const T* c, int64_t cs, const T* rows, int64_t ld, int64_t n, T* out, int64_t w) {
    if (w % 16 == 0) return combine_block<16>(c, cs, rows, ld, n, out, w);
    if (w % 8 == 0) return combine_block<8>(c, cs, rows, ld, n, out, w);
    if (w % 4 == 0) return combine_block<4>(c, cs, rows, ld, n, out, w);
    combine_block<1>(c, cs, rows, ld, n, out, w);
}

inline int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

// C[M, N] = A[M, K] B[K, N] (row-major, leading dimensions), for the small
// per-head products of attention. For float with AVX2 and N a multiple of 16,
// the shared 6 x 16 register blocks (core/fma_block.h); otherwise row by row. Each C element is one FMA chain over k in increasing order from zero,
// whichever path computes it, so the paths agree to the bit.
// A's element (i, k) is at A[i * ars + k * aks]: small_gemm passes (lda, 1),
// small_gemm_at (A transposed, stored [K, M]) passes (1, lda).
template <typename T>
void small_gemm_strided(int64_t M, int64_t N, int64_t K, const T* A, int64_t ars, int64_t aks, const T* B, int64_t ldb,
                        T* C, int64_t ldc) {
#if defined(MAGNETS_HAVE_FMA_BLOCK)
    if constexpr (std::is_same_v<T, float>) {
        if (N % 16 == 0) return simd::fma_gemm(M, N, K, A, ars, aks, B, ldb, C, ldc);
    }
#endif
    for (int64_t i = 0; i < M; ++i) combine(A + i * ars, aks, B, ldb, K, C + i * ldc, N);
}
template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
    small_gemm_strided(M, N, K, A, lda, int64_t{1}, B, ldb, C, ldc);
}
// C[M, N] = A^T B with A stored [K, M] (leading dimension lda).
template <typename T>
void small_gemm_at(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
    small_gemm_strided(M, N, K, A, int64_t{1}, lda, B, ldb, C, ldc);
}

// t[d * ldt + j] = x[j * ld + d] for j < seq, d < hd: a head's keys or
// values transposed for the score products (8x8 register transposes where
// the type and sizes allow).
template <typename T>
inline void transpose_head(const T* x, int64_t ld, int64_t seq, int64_t hd, T* t, int64_t ldt) {
    int64_t j0 = 0;
#if defined(MAGNETS_HAVE_FMA_BLOCK)
    if constexpr (std::is_same_v<T, float>) {
        if (hd % 8 == 0)
            for (; j0 + 8 <= seq; j0 += 8)
                for (int64_t d = 0; d < hd; d += 8) simd::transpose8(x + j0 * ld + d, ld, t + d * ldt + j0, ldt);
    }
#endif
    for (int64_t j = j0; j < seq; ++j)
        for (int64_t d = 0; d < hd; ++d) t[d * ldt + j] = x[j * ld + d];
}

// Bidirectional multi-head attention over `seq` positions for `batch`
// sequences. q, k, v, out: [batch * seq, heads * hd] with leading dimension
// ld; probs: [batch, heads, seq, seq] (saved for backward). Work is split
// over (sequence, head) pairs; each pair is computed in a fixed order.
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t ld, T* out, T* probs, int64_t batch,
                       int64_t seq, int64_t heads, int64_t hd) {
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
    const int64_t sp = pad16(seq);
#pragma omp parallel if (batch * heads * seq * seq * hd >= kParallelWork)
    {
        std::vector<T> kt(static_cast<size_t>(hd * sp), T(0)), s(static_cast<size_t>(seq * sp));
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < batch * heads; ++bh) {
            const int64_t b = bh / heads, h = bh % heads;
            const int64_t off = b * seq * ld + h * hd;
            const T *qb = q + off, *kb = k + off, *vb = v + off;
            T* P = probs + bh * seq * seq;
            transpose_head(kb, ld, seq, hd, kt.data(), sp);
            small_gemm(seq, sp, hd, qb, ld, kt.data(), sp, s.data(), sp); // q k^T [seq, sp], unscaled
            for (int64_t i = 0; i < seq; ++i) {
                T* si = s.data() + i * sp;
                const T mx = lane_max(si, seq);
                for (int64_t j = 0; j < seq; ++j) si[j] = nn::vexp((si[j] - mx) * scale); // softmax of scale q k^T
                const T sum = lane_sum<T>(si, nullptr, seq);
                const T inv = 1 / sum;
                T* pi = P + i * seq;
                for (int64_t j = 0; j < seq; ++j) pi[j] = si[j] * inv;
            }
            small_gemm(seq, hd, seq, P, seq, vb, ld, out + off, ld); // out = P V
        }
    }
}

// dq, dk, dv (overwritten) from dout, given the forward's q, k, v and probs.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* probs, const T* dout, int64_t ld, T* dq,
                        T* dk, T* dv, int64_t batch, int64_t seq, int64_t heads, int64_t hd) {
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
    const int64_t sp = pad16(seq);
#pragma omp parallel if (batch * heads * seq * seq * hd >= kParallelWork)
    {
        std::vector<T> vt(static_cast<size_t>(hd * sp), T(0)), dp(static_cast<size_t>(seq * sp)),
            ds(static_cast<size_t>(seq * seq));
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < batch * heads; ++bh) {
            const int64_t b = bh / heads, h = bh % heads;
            const int64_t off = b * seq * ld + h * hd;
            const T *qb = q + off, *kb = k + off, *vb = v + off, *dob = dout + off;
            const T* P = probs + bh * seq * seq;
            transpose_head(vb, ld, seq, hd, vt.data(), sp);
            small_gemm(seq, sp, hd, dob, ld, vt.data(), sp, dp.data(), sp); // dP = dout V^T
            // dS = P * (dP - rowsum(P * dP)) * scale
            for (int64_t i = 0; i < seq; ++i) {
                const T* pi = P + i * seq;
                const T* dpi = dp.data() + i * sp;
                const T dot = lane_sum(pi, dpi, seq);
                T* dsi = ds.data() + i * seq;
                for (int64_t j = 0; j < seq; ++j) dsi[j] = pi[j] * (dpi[j] - dot) * scale;
            }
            small_gemm(seq, hd, seq, ds.data(), seq, kb, ld, dq + off, ld);     // dQ = dS K
            small_gemm_at(seq, hd, seq, ds.data(), seq, qb, ld, dk + off, ld);  // dK = dS^T Q
            small_gemm_at(seq, hd, seq, P, seq, dob, ld, dv + off, ld);         // dV = P^T dout
        }
    }
}

// ---- losses on logits ----------------------------------------------------------

// Per-row loss on logits [rows, n_classes] (ld) for the rows where mask != 0:
//   alpha * CE_smooth(target) + (1 - alpha) * H(softmax(teacher), .)
// with CE_smooth(y) = -(1 - eps) log q_y - eps/K sum_k log q_k. The mean over
// masked rows is the loss; dlogits = weight / M * (q - target distribution)
// (0 on unmasked rows). teacher may be null (then alpha must be 1).
// Returns {loss, ce (no smoothing), correct count, masked count}.
using LossSums = Backend::LossSums; // the backends' masked_loss returns the same sums

template <typename T>
LossSums masked_loss(const T* logits, int64_t ld, const T* teacher, int64_t ld_teacher, const int32_t* targets,
                     const uint8_t* mask, int64_t rows, int64_t n_classes, double eps, double alpha, double weight,
                     T* dlogits /* may be null */, int64_t ld_d) {
    int64_t masked = 0;
    for (int64_t i = 0; i < rows; ++i) masked += mask[i] ? 1 : 0;
    LossSums out;
    out.masked = masked;
    if (masked == 0) {
        if (dlogits)
            for (int64_t i = 0; i < rows; ++i)
                for (int64_t j = 0; j < n_classes; ++j) dlogits[i * ld_d + j] = 0;
        return out;
    }
    const int64_t K = n_classes;
    const T scale = static_cast<T>(weight / static_cast<double>(masked));
    const T a = static_cast<T>(alpha), on = static_cast<T>((1.0 - eps) * alpha), off = static_cast<T>(eps / K * alpha);
    std::vector<double> row_loss(static_cast<size_t>(rows), 0.0), row_ce(static_cast<size_t>(rows), 0.0);
    std::vector<int64_t> row_ok(static_cast<size_t>(rows), 0);
#pragma omp parallel if (rows * n_classes >= kParallelWork)
    {
        std::vector<T> tq(static_cast<size_t>(K)), ex(static_cast<size_t>(K));
#pragma omp for schedule(static)
        for (int64_t i = 0; i < rows; ++i) {
            T* di = dlogits ? dlogits + i * ld_d : nullptr;
            if (!mask[i]) {
                if (di)
                    for (int64_t j = 0; j < K; ++j) di[j] = 0;
                continue;
            }
            const T* li = logits + i * ld;
            const int32_t y = targets[i];
            const T mx = lane_max(li, K);
            int64_t arg = 0;
            while (li[arg] != mx) ++arg; // first maximum
            for (int64_t j = 0; j < K; ++j) ex[static_cast<size_t>(j)] = nn::vexp(li[j] - mx);
            T sum_t = 0, sum_lt = 0;
            for (int64_t j = 0; j < K; ++j) {
                sum_t += ex[static_cast<size_t>(j)];
                sum_lt += li[j] - mx;
            }
            const double sum = static_cast<double>(sum_t), sum_l = static_cast<double>(sum_lt);
            const double lse = std::log(sum); // log q_j = (l_j - mx) - lse
            const double logq_y = static_cast<double>(li[y] - mx) - lse;
            const double mean_logq = sum_l / static_cast<double>(K) - lse;
            double loss = alpha * (-(1.0 - eps) * logq_y - eps * mean_logq);
            if (alpha < 1.0) {
                const T* ti = teacher + i * ld_teacher;
                const T tm = lane_max(ti, K);
                double ts = 0;
                for (int64_t j = 0; j < K; ++j) tq[static_cast<size_t>(j)] = nn::vexp(ti[j] - tm);
                for (int64_t j = 0; j < K; ++j) ts += tq[static_cast<size_t>(j)];
                double h = 0;
                const T inv = static_cast<T>(1.0 / ts);
                for (int64_t j = 0; j < K; ++j) {
                    tq[static_cast<size_t>(j)] *= inv;
                    h -= static_cast<double>(tq[static_cast<size_t>(j)]) * (static_cast<double>(li[j] - mx) - lse);
                }
                loss += (1.0 - alpha) * h;
            }
            row_loss[static_cast<size_t>(i)] = loss;
            row_ce[static_cast<size_t>(i)] = -logq_y;
            row_ok[static_cast<size_t>(i)] = arg == y ? 1 : 0;
            if (di) {
                const T inv = static_cast<T>(1.0 / sum);
                for (int64_t j = 0; j < K; ++j) {
                    T target = off;
                    if (alpha < 1.0) target += (1 - a) * tq[static_cast<size_t>(j)];
                    di[j] = (ex[static_cast<size_t>(j)] * inv - target) * scale;
                }
                di[y] -= on * scale;
            }
        }
    }
    for (int64_t i = 0; i < rows; ++i) {
        out.loss += row_loss[static_cast<size_t>(i)];
        out.ce += row_ce[static_cast<size_t>(i)];
        out.correct += row_ok[static_cast<size_t>(i)];
    }
    out.loss /= static_cast<double>(masked);
    out.ce /= static_cast<double>(masked);
    return out;
}

} // namespace magnets::nn::ops
