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
#include <vector>

namespace magnets::nn::ops {

// ---- layer norm --------------------------------------------------------------

// y = (x - mean) * rstd * g + b per row of width n; saves mean and rstd per row.
template <typename T>
void layernorm_forward(const T* x, int64_t ldx, T* y, int64_t ldy, T* mean, T* rstd, const T* g,
                       const T* b, int64_t rows, int64_t n, double eps = 1e-5) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
        const T* xi = x + i * ldx;
        T* yi = y + i * ldy;
        double s = 0;
        for (int64_t j = 0; j < n; ++j) s += xi[j];
        const double mu = s / static_cast<double>(n);
        double v = 0;
        for (int64_t j = 0; j < n; ++j) {
            const double d = xi[j] - mu;
            v += d * d;
        }
        const double rs = 1.0 / std::sqrt(v / static_cast<double>(n) + eps);
        const T m = static_cast<T>(mu), r = static_cast<T>(rs);
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
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
        const T* xi = x + i * ldx;
        const T* dyi = dy + i * lddy;
        T* dxi = dx + i * lddx;
        const T m = mean[i], r = rstd[i];
        double s1 = 0, s2 = 0; // mean(dxhat), mean(dxhat * xhat)
        for (int64_t j = 0; j < n; ++j) {
            const double xh = static_cast<double>((xi[j] - m) * r);
            const double dxh = static_cast<double>(dyi[j] * g[j]);
            s1 += dxh;
            s2 += dxh * xh;
        }
        const T a1 = static_cast<T>(s1 / static_cast<double>(n)), a2 = static_cast<T>(s2 / static_cast<double>(n));
        for (int64_t j = 0; j < n; ++j) {
            const T xh = (xi[j] - m) * r;
            const T v = r * (dyi[j] * g[j] - a1 - xh * a2);
            dxi[j] = accumulate ? dxi[j] + v : v;
        }
    }
    for (int64_t i = 0; i < rows; ++i) {
        const T* xi = x + i * ldx;
        const T* dyi = dy + i * lddy;
        const T m = mean[i], r = rstd[i];
        for (int64_t j = 0; j < n; ++j) {
            dg[j] += dyi[j] * ((xi[j] - m) * r);
            db[j] += dyi[j];
        }
    }
}

// ---- bias --------------------------------------------------------------------

template <typename T>
void add_bias(T* y, int64_t ld, const T* b, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
        T* yi = y + i * ld;
        for (int64_t j = 0; j < n; ++j) yi[j] += b[j];
    }
}

// db += column sums of dy (fixed order).
template <typename T>
void bias_backward(const T* dy, int64_t ld, T* db, int64_t rows, int64_t n) {
    for (int64_t i = 0; i < rows; ++i) {
        const T* dyi = dy + i * ld;
        for (int64_t j = 0; j < n; ++j) db[j] += dyi[j];
    }
}

// ---- GELU (exact, erf form) -----------------------------------------------------

template <typename T>
void gelu_forward(const T* u, T* g, int64_t count) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i) g[i] = static_cast<T>(0.5) * u[i] * (1 + std::erf(u[i] * static_cast<T>(M_SQRT1_2)));
}

// du = dg * gelu'(u); du may alias dg.
template <typename T>
void gelu_backward(const T* u, const T* dg, T* du, int64_t count) {
    const T k = static_cast<T>(0.5 * M_2_SQRTPI * M_SQRT1_2); // 1 / sqrt(2 pi)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; ++i) {
        const T x = u[i];
        const T cdf = static_cast<T>(0.5) * (1 + std::erf(x * static_cast<T>(M_SQRT1_2)));
        du[i] = dg[i] * (cdf + x * k * std::exp(static_cast<T>(-0.5) * x * x));
    }
}

// ---- attention -------------------------------------------------------------------

// Bidirectional multi-head attention over `seq` positions for `batch`
// sequences. q, k, v, out: [batch * seq, heads * hd] with leading dimension
// ld; probs: [batch, heads, seq, seq] (saved for backward).
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t ld, T* out, T* probs, int64_t batch,
                       int64_t seq, int64_t heads, int64_t hd) {
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
#pragma omp parallel
    {
        std::vector<T> kt(static_cast<size_t>(hd * seq));
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < batch * heads; ++bh) {
            const int64_t b = bh / heads, h = bh % heads;
            const T* qb = q + b * seq * ld + h * hd;
            const T* kb = k + b * seq * ld + h * hd;
            const T* vb = v + b * seq * ld + h * hd;
            T* ob = out + b * seq * ld + h * hd;
            T* P = probs + bh * seq * seq;
            for (int64_t j = 0; j < seq; ++j)
                for (int64_t d = 0; d < hd; ++d) kt[static_cast<size_t>(d * seq + j)] = kb[j * ld + d];
            for (int64_t i = 0; i < seq; ++i) {
                T* s = P + i * seq;
                for (int64_t j = 0; j < seq; ++j) s[j] = 0;
                for (int64_t d = 0; d < hd; ++d) {
                    const T qd = qb[i * ld + d] * scale;
                    const T* kd = kt.data() + d * seq;
                    for (int64_t j = 0; j < seq; ++j) s[j] += qd * kd[j];
                }
                T mx = s[0];
                for (int64_t j = 1; j < seq; ++j) mx = std::max(mx, s[j]);
                T sum = 0;
                for (int64_t j = 0; j < seq; ++j) {
                    s[j] = std::exp(s[j] - mx);
                    sum += s[j];
                }
                const T inv = 1 / sum;
                for (int64_t j = 0; j < seq; ++j) s[j] *= inv;
                T* o = ob + i * ld;
                for (int64_t d = 0; d < hd; ++d) o[d] = 0;
                for (int64_t j = 0; j < seq; ++j) {
                    const T pj = s[j];
                    const T* vj = vb + j * ld;
                    for (int64_t d = 0; d < hd; ++d) o[d] += pj * vj[d];
                }
            }
        }
    }
}

// dq, dk, dv (overwritten) from dout, given the forward's q, k, v and probs.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* probs, const T* dout, int64_t ld, T* dq,
                        T* dk, T* dv, int64_t batch, int64_t seq, int64_t heads, int64_t hd) {
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
#pragma omp parallel
    {
        std::vector<T> vt(static_cast<size_t>(hd * seq)), dp(static_cast<size_t>(seq));
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < batch * heads; ++bh) {
            const int64_t b = bh / heads, h = bh % heads;
            const int64_t off = b * seq * ld + h * hd;
            const T *qb = q + off, *kb = k + off, *vb = v + off, *dob = dout + off;
            T *dqb = dq + off, *dkb = dk + off, *dvb = dv + off;
            const T* P = probs + bh * seq * seq;
            for (int64_t j = 0; j < seq; ++j) {
                for (int64_t d = 0; d < hd; ++d) {
                    vt[static_cast<size_t>(d * seq + j)] = vb[j * ld + d];
                    dkb[j * ld + d] = 0;
                    dvb[j * ld + d] = 0;
                }
            }
            for (int64_t i = 0; i < seq; ++i) {
                const T* pi = P + i * seq;
                const T* doi = dob + i * ld;
                // dP[j] = dout_i . v_j
                for (int64_t j = 0; j < seq; ++j) dp[static_cast<size_t>(j)] = 0;
                for (int64_t d = 0; d < hd; ++d) {
                    const T g = doi[d];
                    const T* vd = vt.data() + d * seq;
                    for (int64_t j = 0; j < seq; ++j) dp[static_cast<size_t>(j)] += g * vd[j];
                }
                // dV_j += P_ij dout_i
                for (int64_t j = 0; j < seq; ++j) {
                    const T pj = pi[j];
                    T* dvj = dvb + j * ld;
                    for (int64_t d = 0; d < hd; ++d) dvj[d] += pj * doi[d];
                }
                // dS = P * (dP - sum_j P dP), scaled
                T dot = 0;
                for (int64_t j = 0; j < seq; ++j) dot += pi[j] * dp[static_cast<size_t>(j)];
                for (int64_t j = 0; j < seq; ++j) dp[static_cast<size_t>(j)] = pi[j] * (dp[static_cast<size_t>(j)] - dot) * scale;
                T* dqi = dqb + i * ld;
                const T* qi = qb + i * ld;
                for (int64_t d = 0; d < hd; ++d) dqi[d] = 0;
                for (int64_t j = 0; j < seq; ++j) {
                    const T ds = dp[static_cast<size_t>(j)];
                    const T* kj = kb + j * ld;
                    T* dkj = dkb + j * ld;
                    for (int64_t d = 0; d < hd; ++d) {
                        dqi[d] += ds * kj[d];
                        dkj[d] += ds * qi[d];
                    }
                }
            }
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
struct LossSums {
    double loss = 0, ce = 0;
    int64_t correct = 0, masked = 0;
};

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
#pragma omp parallel
    {
        std::vector<T> tq(static_cast<size_t>(K));
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
            T mx = li[0];
            int64_t arg = 0;
            for (int64_t j = 1; j < K; ++j)
                if (li[j] > mx) { mx = li[j]; arg = j; }
            double sum = 0, sum_l = 0;
            for (int64_t j = 0; j < K; ++j) {
                sum += std::exp(static_cast<double>(li[j] - mx));
                sum_l += static_cast<double>(li[j] - mx);
            }
            const double lse = std::log(sum); // log q_j = (l_j - mx) - lse
            const double logq_y = static_cast<double>(li[y] - mx) - lse;
            const double mean_logq = sum_l / static_cast<double>(K) - lse;
            double loss = alpha * (-(1.0 - eps) * logq_y - eps * mean_logq);
            if (alpha < 1.0) {
                const T* ti = teacher + i * ld_teacher;
                T tm = ti[0];
                for (int64_t j = 1; j < K; ++j) tm = std::max(tm, ti[j]);
                double ts = 0;
                for (int64_t j = 0; j < K; ++j) {
                    tq[static_cast<size_t>(j)] = static_cast<T>(std::exp(static_cast<double>(ti[j] - tm)));
                    ts += tq[static_cast<size_t>(j)];
                }
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
                    di[j] = (std::exp(li[j] - mx) * inv - target) * scale;
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
