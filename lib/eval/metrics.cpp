// Evaluation metrics on feature vectors: Frechet distance, KID, Inception-Score
// analogue, improved precision/recall. Everything accumulates in double; the
// references are scripts/gen_metrics_fixture.py (SciPy/NumPy).
//
// Frechet distance needs symmetric eigendecompositions up to dim ~2048. We use
// Householder tridiagonalisation (LAPACK dsytd2 style on the lower triangle,
// each rank-2 update fused with the next matrix-vector product so the trailing
// triangle is swept once per step, rows in parallel), the reflectors
// accumulated backwards (dorg2l style) strip by strip, then implicit QL with
// Wilkinson shifts (EISPACK tql2) on the tridiagonal. The QL rotations do not
// depend on the eigenvector matrix, so they are recorded first and applied
// afterwards to 16-column strips of it, each strip staying in cache while every
// rotation passes over it (strips run in parallel).
//
// Every parallel loop gives each output element to one thread and sums in a
// fixed order, so results are bitwise independent of the thread count.
#include "magnets/metrics.h"

#include "magnets/error.h"
#include "magnets/rng.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <limits>
#include <numeric>
#include <tuple>
#include <utility>

namespace magnets {

namespace {

constexpr int64_t kParallelWork = 1 << 15; // below this many flops, stay serial

std::string num(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

void check_set(const float* x, int64_t n, int64_t dim, const char* set, int64_t min_n = 1) {
    check(n >= 1, std::string("empty feature set '") + set + "'", "n = " + std::to_string(n),
          "pass at least " + std::to_string(min_n) + " feature rows");
    check(n >= min_n, std::string("too few samples in feature set '") + set + "'",
          "n = " + std::to_string(n) + ", need at least " + std::to_string(min_n),
          "evaluate on more samples");
    check(dim >= 1, std::string("bad feature dimension for set '") + set + "'", "dim = " + std::to_string(dim),
          "features are rows of dim >= 1 values");
    check(x != nullptr, std::string("null feature pointer for set '") + set + "'");
    const int64_t total = n * dim;
    int64_t bad = -1;
    for (int64_t i = 0; i < total; ++i)
        if (!std::isfinite(x[i])) { bad = i; break; }
    if (bad >= 0)
        throw Error(std::string("non-finite feature in set '") + set + "'", {},
                    "sample " + std::to_string(bad / dim) + ", feature " + std::to_string(bad % dim) + " is " +
                        num(x[bad]),
                    "check the feature extractor's input (NaN/Inf images or a diverged model)");
}

// ---- dense double linear algebra (row-major) ----------------------------------

// Four doubles (GCC/Clang vector extension; AVX2 on the project's x86-64-v3).
typedef double v4d __attribute__((vector_size(32)));
inline v4d ld4(const double* p) { v4d x; std::memcpy(&x, p, sizeof x); return x; }
inline void st4(double* p, v4d x) { std::memcpy(p, &x, sizeof x); }
inline v4d bc4(double a) { return v4d{a, a, a, a}; }
// a * b + c, fused where the target has FMA.
inline v4d fma4(v4d a, v4d b, v4d c) {
#if defined(__FMA__) && defined(__AVX__)
    return (v4d)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
    return a * b + c;
#endif
}

// Row stride of the padded square work matrices: columns 16-aligned, padding zero.
int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }

// C = A B with A [M, K] (row stride lda), B [K, N] (ldb), C [M, N] (ldc);
// M a multiple of 4 and N of 8 (callers pad with zeros). Register tile 4 x 8;
// k blocked so a 4 x KC slice of A stays in L1 while the KC x NC panel of B,
// packed as contiguous 8-column strips, stays in L2. Rows of C are split over
// threads (the same static partition in every block, so each thread owns its
// rows and every element is summed in the same order whatever the threads).
// With accumulate, C += A B.
void gemm(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B, int64_t ldb, double* C,
          int64_t ldc, bool accumulate = false) {
    if (!accumulate)
        for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0);
    constexpr int64_t KC = 256, NC = 256;
    std::vector<double> pack(static_cast<size_t>(KC * NC));
#pragma omp parallel if (M * N * K >= kParallelWork)
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t k1 = std::min(K, k0 + KC), kc = k1 - k0;
        for (int64_t j0 = 0; j0 < N; j0 += NC) {
            const int64_t j1 = std::min(N, j0 + NC);
#pragma omp barrier
#pragma omp single
            for (int64_t j = j0; j < j1; j += 8)
                for (int64_t k = k0; k < k1; ++k)
                    std::memcpy(pack.data() + (j - j0) * kc + (k - k0) * 8, B + k * ldb + j, 8 * sizeof(double));
#pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < M; i += 4) {
                const double *a0 = A + i * lda + k0, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
                for (int64_t j = j0; j < j1; j += 8) {
                    double* c = C + i * ldc + j;
                    const double* bp = pack.data() + (j - j0) * kc;
                    v4d c00 = ld4(c), c01 = ld4(c + 4), c10 = ld4(c + ldc), c11 = ld4(c + ldc + 4);
                    v4d c20 = ld4(c + 2 * ldc), c21 = ld4(c + 2 * ldc + 4), c30 = ld4(c + 3 * ldc),
                        c31 = ld4(c + 3 * ldc + 4);
                    for (int64_t k = 0; k < kc; ++k) {
                        const v4d b0 = ld4(bp + 8 * k), b1 = ld4(bp + 8 * k + 4);
                        v4d a = bc4(a0[k]);
                        c00 = fma4(a, b0, c00); c01 = fma4(a, b1, c01);
                        a = bc4(a1[k]);
                        c10 = fma4(a, b0, c10); c11 = fma4(a, b1, c11);
                        a = bc4(a2[k]);
                        c20 = fma4(a, b0, c20); c21 = fma4(a, b1, c21);
                        a = bc4(a3[k]);
                        c30 = fma4(a, b0, c30); c31 = fma4(a, b1, c31);
                    }
                    st4(c, c00); st4(c + 4, c01); st4(c + ldc, c10); st4(c + ldc + 4, c11);
                    st4(c + 2 * ldc, c20); st4(c + 2 * ldc + 4, c21); st4(c + 3 * ldc, c30); st4(c + 3 * ldc + 4, c31);
                }
            }
        }
    }
}

// An n-row matrix with padded(n) columns stored as 16-column strips, each
// strip contiguous (n rows of 16): element (i, j) at
// [(j / 16) * n * 16 + i * 16 + j % 16]. Strip-wise algorithms then stream
// through contiguous memory instead of touching one page per row.
struct Strips {
    int64_t n = 0, count = 0;
    std::vector<double> v;
    explicit Strips(int64_t rows) : n(rows), count(padded(rows) / 16), v(static_cast<size_t>(rows * padded(rows)), 0.0) {}
    double* strip(int64_t s) { return v.data() + s * n * 16; }
    double& at(int64_t i, int64_t j) { return v[static_cast<size_t>((j / 16) * n * 16 + i * 16 + j % 16)]; }
};

// Householder reflector (LAPACK dlarfg): on x[0..m-1], finds beta, tau and v
// (v[0] = 1, stored over x) with (I - tau v v^T) x = beta e1. Returns beta.
double householder(double* x, int64_t m, double& tau) {
    const double alpha = x[0];
    double scale = 0;
    for (int64_t i = 1; i < m; ++i) scale = std::max(scale, std::abs(x[i]));
    if (scale == 0) {
        tau = 0;
        x[0] = 1;
        return alpha;
    }
    scale = std::max(scale, std::abs(alpha));
    double ss = 0;
    for (int64_t i = 1; i < m; ++i) ss += (x[i] / scale) * (x[i] / scale);
    const double a = alpha / scale;
    const double beta = -std::copysign(scale * std::sqrt(a * a + ss), alpha);
    tau = (beta - alpha) / beta;
    const double s = 1.0 / (alpha - beta);
    for (int64_t i = 1; i < m; ++i) x[i] *= s;
    x[0] = 1;
    return beta;
}

// One pass over the lower triangle of the block of A at (o, o) of size m
// (rows 1..m-1, columns 1..i of each row i, local indices): first the
// rank-2 update B -= v w^T + w v^T (if v), then p = tn * S vn where S is the
// updated block without its row and column 0 (if vn; p has m - 1 entries).
// The lower triangle gives S vn as row dot products plus column scatters; the
// scatters go to per-chunk accumulators (fixed 64-row chunks, summed in order),
// so the result does not depend on the thread count.
void lower_pass(double* A, int64_t n, int64_t o, int64_t m, const double* v, const double* w, const double* vn,
                double tn, double* p, std::vector<double>& acc) {
    constexpr int64_t RC = 64;
    const int64_t chunks = (m - 1 + RC - 1) / RC;
    if (vn) acc.assign(static_cast<size_t>(std::max<int64_t>(chunks, 1) * m), 0.0);
#pragma omp parallel for schedule(dynamic, 1) if (m * m >= kParallelWork)
    for (int64_t c = 0; c < chunks; ++c) {
        double* a = vn ? acc.data() + c * m : nullptr;
        for (int64_t i = 1 + c * RC; i < std::min(m, 1 + (c + 1) * RC); ++i) {
            double* r = A + (o + i) * n + o;
            if (v) {
                const double vi = v[i], wi = w[i];
#pragma omp simd
                for (int64_t j = 1; j <= i; ++j) r[j] -= vi * w[j] + wi * v[j];
            }
            if (vn) {
                const double* x = vn - 1; // x[j] = vn[j - 1]
                const double xi = x[i];
                double dot = 0;
#pragma omp simd reduction(+ : dot)
                for (int64_t j = 1; j < i; ++j) {
                    dot += r[j] * x[j];
                    a[j - 1] += r[j] * xi;
                }
                a[i - 1] += dot + r[i] * xi;
            }
        }
    }
    if (!vn) return;
#pragma omp parallel for schedule(static) if (m * chunks >= kParallelWork)
    for (int64_t j = 0; j < m - 1; ++j) {
        double s = 0;
        for (int64_t c = 0; c < chunks; ++c) s += acc[c * m + j];
        p[j] = tn * s;
    }
}

// Reduces the symmetric A (n x n, row stride n; only the lower triangle is
// read) to tridiagonal T = Q^T A Q: diagonal d[n], off-diagonal e[n-1]
// (LAPACK dsytd2 on the lower triangle). Reflector k is left in the upper
// part of row k (A[k][k+1..n-1] = v, v[0] = 1) with its tau[k]; tau has n
// entries. Each step's rank-2 update is fused with the next step's
// matrix-vector product, so the trailing triangle is swept once per step.
void tridiagonalize(double* A, int64_t n, double* d, double* e, double* tau) {
    std::fill(tau, tau + n, 0.0);
    d[0] = A[0];
    if (n == 1) return;
    if (n == 2) {
        e[0] = A[n];
        d[1] = A[n + 1];
        return;
    }
    // Reflector k from column k below the diagonal, into row k's upper part.
    auto reflector = [&](int64_t k) {
        const int64_t m = n - k - 1;
        double* v = A + k * n + k + 1;
        for (int64_t i = 0; i < m; ++i) v[i] = A[(k + 1 + i) * n + k];
        e[k] = householder(v, m, tau[k]);
    };
    std::vector<double> p(static_cast<size_t>(n)), w(static_cast<size_t>(n)), acc;
    reflector(0);
    lower_pass(A, n, 0, n, nullptr, nullptr, A + 1, tau[0], p.data(), acc); // p = tau0 B0 v0
    for (int64_t k = 0; k + 2 < n; ++k) {
        const int64_t m = n - k - 1, o = k + 1;
        const double* v = A + k * n + k + 1;
        const double t = tau[k];
        double pv = 0;
        for (int64_t i = 0; i < m; ++i) pv += p[i] * v[i];
        const double alpha = -0.5 * t * pv;
        for (int64_t i = 0; i < m; ++i) w[i] = p[i] + alpha * v[i];
        // Column 0 of the block first: it holds the next reflector.
        for (int64_t i = 0; i < m; ++i) A[(o + i) * n + o] -= v[i] * w[0] + w[i] * v[0];
        d[k + 1] = A[o * n + o];
        const bool more = k + 3 < n;
        if (more) reflector(k + 1);
        lower_pass(A, n, o, m, v, w.data(), more ? A + o * n + o + 1 : nullptr, more ? tau[k + 1] : 0.0, p.data(),
                   acc);
    }
    e[n - 2] = A[(n - 1) * n + n - 2];
    d[n - 1] = A[(n - 1) * n + n - 1];
}

// Q = H_0 H_1 ... H_{n-3} from the reflectors left by tridiagonalize. Each
// 16-column strip of Q is independent and goes through every reflector while
// it sits in cache: H_k changes rows k+1.. of the columns k+1.. only (the rest
// of Q is still the identity there when it is applied).
void accumulate_q(const double* A, const double* tau, int64_t n, Strips& Q) {
    std::fill(Q.v.begin(), Q.v.end(), 0.0);
    for (int64_t i = 0; i < n; ++i) Q.at(i, i) = 1;
#pragma omp parallel for schedule(dynamic, 1) if (n * n * n >= kParallelWork)
    for (int64_t st = 0; st < Q.count; ++st) {
        const int64_t j0 = st * 16;
        double* const base = Q.strip(st);
        for (int64_t k = n - 3; k >= 0; --k) {
            if (tau[k] == 0 || j0 + 16 <= k + 1) continue;
            const int64_t m = n - k - 1;
            const double* v = A + k * n + k + 1;
            double* q = base + (k + 1) * 16;
            v4d w0 = bc4(0), w1 = w0, w2 = w0, w3 = w0;
            for (int64_t i = 0; i < m; ++i) {
                const double* r = q + i * 16;
                const v4d vi = bc4(v[i]);
                w0 = fma4(vi, ld4(r), w0); w1 = fma4(vi, ld4(r + 4), w1);
                w2 = fma4(vi, ld4(r + 8), w2); w3 = fma4(vi, ld4(r + 12), w3);
            }
            const v4d t = bc4(-tau[k]);
            w0 *= t; w1 *= t; w2 *= t; w3 *= t;
            for (int64_t i = 0; i < m; ++i) {
                double* r = q + i * 16;
                const v4d vi = bc4(v[i]);
                st4(r, fma4(vi, w0, ld4(r))); st4(r + 4, fma4(vi, w1, ld4(r + 4)));
                st4(r + 8, fma4(vi, w2, ld4(r + 8))); st4(r + 12, fma4(vi, w3, ld4(r + 12)));
            }
        }
    }
}

// Rotations recorded by the QL iteration: sweep s rotates rows (i, i+1) of Zt
// for i = hi[s] - 1 down to lo[s], with (c, s) pairs stored in that order.
struct RotationLog {
    std::vector<int64_t> lo, hi;
    std::vector<double> cs;
    void clear() { lo.clear(); hi.clear(); cs.clear(); }
};

// Applies the logged rotations to the rows of Zt, one 16-column strip at a
// time so the strip stays in cache through the whole log. Within a sweep, the updated row i+1 of one rotation is the input of the
// next, so it is carried in registers: each row is read and written once.
void apply_rotations(const RotationLog& log, Strips& Zt) {
    if (log.lo.empty()) return;
    constexpr int64_t ld = 16;
    const int64_t work = static_cast<int64_t>(log.cs.size()) * Zt.count * 16;
#pragma omp parallel for schedule(dynamic, 1) if (work >= kParallelWork)
    for (int64_t st = 0; st < Zt.count; ++st) {
        double* z = Zt.strip(st);
        const double* cs = log.cs.data();
        for (size_t sw = 0; sw < log.lo.size(); ++sw) {
            const int64_t lo = log.lo[sw], hi = log.hi[sw];
            double* r = z + hi * ld;
            v4d h0 = ld4(r), h1 = ld4(r + 4), h2 = ld4(r + 8), h3 = ld4(r + 12);
            for (int64_t i = hi - 1; i >= lo; --i, cs += 2) {
                const v4d c = bc4(cs[0]), s = bc4(cs[1]), ms = bc4(-cs[1]);
                double* zi = z + i * ld;
                const v4d z0 = ld4(zi), z1 = ld4(zi + 4), z2 = ld4(zi + 8), z3 = ld4(zi + 12);
                double* zo = zi + ld; // row i + 1 gets s z_i + c h; the carry becomes c z_i - s h
                st4(zo, fma4(s, z0, c * h0)); st4(zo + 4, fma4(s, z1, c * h1));
                st4(zo + 8, fma4(s, z2, c * h2)); st4(zo + 12, fma4(s, z3, c * h3));
                h0 = fma4(ms, h0, c * z0); h1 = fma4(ms, h1, c * z1);
                h2 = fma4(ms, h2, c * z2); h3 = fma4(ms, h3, c * z3);
            }
            r = z + lo * ld;
            st4(r, h0); st4(r + 4, h1); st4(r + 8, h2); st4(r + 12, h3);
        }
    }
}

// Eigenvalues of the symmetric tridiagonal (d, e) by implicit QL with
// Wilkinson shifts (EISPACK tql2 as in JAMA). d is overwritten by the
// eigenvalues (unsorted), e destroyed (needs n entries). If Zt is non-null its
// rows are rotated along: start with Q^T to get A's eigenvectors.
void tridiagonal_ql(double* d, double* e, int64_t n, Strips* Zt) {
    if (n == 0) return;
    e[n - 1] = 0;
    RotationLog log;
    const size_t log_cap = 1u << 24; // doubles (128 MiB), flushed when full
    const double eps = std::numeric_limits<double>::epsilon();
    double f = 0, tst1 = 0;
    for (int64_t l = 0; l < n; ++l) {
        tst1 = std::max(tst1, std::abs(d[l]) + std::abs(e[l]));
        int64_t m = l;
        while (m < n - 1 && std::abs(e[m]) > eps * tst1) ++m;
        if (m > l) {
            int iter = 0;
            do {
                if (++iter > 60)
                    throw Error("eigendecomposition did not converge", {},
                                "implicit QL exceeded 60 iterations for eigenvalue " + std::to_string(l),
                                "check the covariance for huge or degenerate values");
                double g = d[l];
                double p = (d[l + 1] - g) / (2.0 * e[l]);
                double r = std::hypot(p, 1.0);
                if (p < 0) r = -r;
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                const double dl1 = d[l + 1];
                double h = g - d[l];
                for (int64_t i = l + 2; i < n; ++i) d[i] -= h;
                f += h;
                p = d[m];
                double c = 1, c2 = 1, c3 = 1, s = 0, s2 = 0;
                const double el1 = e[l + 1];
                if (Zt) { log.lo.push_back(l); log.hi.push_back(m); }
                for (int64_t i = m - 1; i >= l; --i) {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = std::hypot(p, e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    if (Zt) { log.cs.push_back(c); log.cs.push_back(s); }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if (Zt && log.cs.size() >= log_cap) { apply_rotations(log, *Zt); log.clear(); }
            } while (std::abs(e[l]) > eps * tst1);
        }
        d[l] += f;
        e[l] = 0;
    }
    if (Zt) apply_rotations(log, *Zt);
}

// Eigenvalues of the symmetric n x n matrix A (row stride n, destroyed) and,
// if Vt is non-null, its eigenvectors as the rows of Vt (n rows of stride
// padded(n), padding zero).
std::vector<double> sym_eig(std::vector<double>& A, int64_t n, std::vector<double>* Vt) {
    std::vector<double> d(static_cast<size_t>(n)), e(static_cast<size_t>(n)), tau(static_cast<size_t>(n));
    tridiagonalize(A.data(), n, d.data(), e.data(), tau.data());
    if (!Vt) {
        tridiagonal_ql(d.data(), e.data(), n, nullptr);
        return d;
    }
    Strips Z(n);
    {
        Strips Q(n);
        accumulate_q(A.data(), tau.data(), n, Q);
        for (int64_t j = 0; j < n; ++j) // Z = Q^T, row by row of Z (contiguous runs of 16)
            for (int64_t i = 0; i < n; ++i) Z.at(j, i) = Q.at(i, j);
    }
    tridiagonal_ql(d.data(), e.data(), n, &Z);
    const int64_t ld = padded(n);
    Vt->assign(static_cast<size_t>(n * ld), 0.0);
    for (int64_t st = 0; st < Z.count; ++st) {
        const double* z = Z.strip(st);
        for (int64_t i = 0; i < n; ++i) std::copy(z + i * 16, z + i * 16 + 16, Vt->data() + i * ld + st * 16);
    }
    return d;
}

void check_stats(const FeatureStats& s, const char* set) {
    check(s.n >= 2, std::string("too few samples for a covariance in set '") + set + "'",
          "n = " + std::to_string(s.n) + ", need at least 2", "compute the statistics on at least 2 feature rows");
    check(s.dim >= 1 && static_cast<int64_t>(s.mean.size()) == s.dim &&
              static_cast<int64_t>(s.cov.size()) == s.dim * s.dim,
          std::string("malformed feature statistics for set '") + set + "'",
          "dim = " + std::to_string(s.dim) + ", mean has " + std::to_string(s.mean.size()) + " values, cov has " +
              std::to_string(s.cov.size()),
          "build FeatureStats with feature_stats()");
    for (size_t i = 0; i < s.mean.size(); ++i)
        if (!std::isfinite(s.mean[i]))
            throw Error(std::string("non-finite mean in set '") + set + "'", {}, "mean[" + std::to_string(i) + "] is " + num(s.mean[i]),
                        "check the features the statistics came from");
    for (size_t i = 0; i < s.cov.size(); ++i)
        if (!std::isfinite(s.cov[i]))
            throw Error(std::string("non-finite covariance in set '") + set + "'", {},
                        "cov[" + std::to_string(i / s.dim) + ", " + std::to_string(i % s.dim) + "] is " + num(s.cov[i]),
                        "check the features the statistics came from");
}

// A 2 x 4 tile of row pairs: dot products (Dist = false) or squared
// Euclidean distances (Dist = true) over d values (a multiple of 4), in
// double with a fixed summation order.
template <bool Dist>
inline void tile24(const double* x0, const double* x1, const double* const* y, int64_t d, double out[2][4]) {
    v4d s00 = bc4(0), s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00, s13 = s00;
    const double *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
    for (int64_t t = 0; t < d; t += 4) {
        const v4d a0 = ld4(x0 + t), a1 = ld4(x1 + t);
        const v4d b0 = ld4(y0 + t), b1 = ld4(y1 + t), b2 = ld4(y2 + t), b3 = ld4(y3 + t);
        if (Dist) {
            v4d q;
            q = a0 - b0; s00 = fma4(q, q, s00); q = a0 - b1; s01 = fma4(q, q, s01);
            q = a0 - b2; s02 = fma4(q, q, s02); q = a0 - b3; s03 = fma4(q, q, s03);
            q = a1 - b0; s10 = fma4(q, q, s10); q = a1 - b1; s11 = fma4(q, q, s11);
            q = a1 - b2; s12 = fma4(q, q, s12); q = a1 - b3; s13 = fma4(q, q, s13);
        } else {
            s00 = fma4(a0, b0, s00); s01 = fma4(a0, b1, s01); s02 = fma4(a0, b2, s02); s03 = fma4(a0, b3, s03);
            s10 = fma4(a1, b0, s10); s11 = fma4(a1, b1, s11); s12 = fma4(a1, b2, s12); s13 = fma4(a1, b3, s13);
        }
    }
    auto hsum = [](v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); };
    out[0][0] = hsum(s00); out[0][1] = hsum(s01); out[0][2] = hsum(s02); out[0][3] = hsum(s03);
    out[1][0] = hsum(s10); out[1][1] = hsum(s11); out[1][2] = hsum(s12); out[1][3] = hsum(s13);
}

// Rows [r0, r1) of X [n, d] (float) into buf as doubles of stride dd (a
// multiple of 4, zero padded); rows past r1 up to `rows` are zero.
void to_double(const float* X, int64_t d, int64_t r0, int64_t r1, int64_t rows, int64_t dd, double* buf) {
    std::fill(buf, buf + rows * dd, 0.0);
    for (int64_t i = r0; i < r1; ++i)
        for (int64_t t = 0; t < d; ++t) buf[(i - r0) * dd + t] = X[i * d + t];
}

// Calls f(i, j, value) for the pairs of rows i < nx of X and j < ny of Y,
// value the dot product or squared distance of tile24<Dist>, the same value
// for the same pair wherever it is computed. With upper, only pairs with
// j >= i - 15 are visited (f must filter; for a symmetric sum over j > i).
// Blocks of 16 rows of X are split over threads (f may only touch row i's
// state, or synchronise); Y goes through in cache-sized blocks, both
// converted to double in per-thread buffers.
template <bool Dist, class F>
void pairwise(const float* X, int64_t nx, const float* Y, int64_t ny, int64_t d, bool upper, F&& f) {
    constexpr int64_t XB = 16;
    const int64_t dd = (d + 3) / 4 * 4;
    const int64_t yb = std::max<int64_t>(4, (int64_t{1} << 15) / dd / 4 * 4);
    const int64_t xblocks = (nx + XB - 1) / XB;
#pragma omp parallel if (nx * ny * d >= kParallelWork)
    {
        std::vector<double> xbuf(static_cast<size_t>(XB * dd)), ybuf(static_cast<size_t>(yb * dd));
#pragma omp for schedule(dynamic, 1)
        for (int64_t xbk = 0; xbk < xblocks; ++xbk) {
            const int64_t x0 = xbk * XB, x1 = std::min(nx, x0 + XB);
            to_double(X, d, x0, x1, XB, dd, xbuf.data());
            for (int64_t y0 = upper ? x0 : 0; y0 < ny; y0 += yb) {
                const int64_t y1 = std::min(ny, y0 + yb);
                to_double(Y, d, y0, y1, yb, dd, ybuf.data());
                for (int64_t i = x0; i < x1; i += 2) {
                    const double* xr0 = xbuf.data() + (i - x0) * dd;
                    for (int64_t j = y0; j < y1; j += 4) {
                        const double* yr[4];
                        for (int c = 0; c < 4; ++c) yr[c] = ybuf.data() + (j - y0 + c) * dd;
                        double out[2][4];
                        tile24<Dist>(xr0, xr0 + dd, yr, dd, out);
                        for (int r = 0; r < 2 && i + r < x1; ++r)
                            for (int c = 0; c < 4 && j + c < y1; ++c) f(i + r, j + c, out[r][c]);
                    }
                }
            }
        }
    }
}

// Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 between X [m, d] and Y [m, d].
double mmd2_poly(const float* X, const float* Y, int64_t m, int64_t d) {
    const double inv_d = 1.0 / static_cast<double>(d);
    auto kern = [inv_d](double dot) {
        const double t = dot * inv_d + 1.0;
        return t * t * t;
    };
    // Per-row sums (row i's state only), summed in order afterwards: the
    // result does not depend on the thread count. K_XX and K_YY are symmetric:
    // sum over j > i, doubled.
    std::vector<double> rxx(static_cast<size_t>(m), 0.0), ryy(static_cast<size_t>(m), 0.0),
        rxy(static_cast<size_t>(m), 0.0);
    pairwise<false>(X, m, X, m, d, true, [&](int64_t i, int64_t j, double v) { if (j > i) rxx[i] += kern(v); });
    pairwise<false>(Y, m, Y, m, d, true, [&](int64_t i, int64_t j, double v) { if (j > i) ryy[i] += kern(v); });
    pairwise<false>(X, m, Y, m, d, false, [&](int64_t i, int64_t, double v) { rxy[i] += kern(v); });
    double sxx = 0, syy = 0, sxy = 0;
    for (int64_t i = 0; i < m; ++i) { sxx += rxx[i]; syy += ryy[i]; sxy += rxy[i]; }
    const double md = static_cast<double>(m);
    return 2.0 * sxx / (md * (md - 1)) + 2.0 * syy / (md * (md - 1)) - 2.0 * sxy / (md * md);
}

// First m entries of a Philox-driven Fisher-Yates shuffle of 0..n-1.
std::vector<int64_t> draw_subset(const Philox& rng, uint64_t stream, int64_t n, int64_t m) {
    std::vector<int64_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), int64_t{0});
    for (int64_t i = 0; i < m; ++i) {
        const int64_t j = i + rng.below(stream, static_cast<uint64_t>(i), static_cast<uint32_t>(n - i));
        std::swap(idx[i], idx[j]);
    }
    idx.resize(static_cast<size_t>(m));
    return idx;
}

std::pair<double, double> mean_std(const std::vector<double>& v) {
    double mean = 0;
    for (double x : v) mean += x;
    mean /= static_cast<double>(v.size());
    double var = 0;
    for (double x : v) var += (x - mean) * (x - mean);
    var /= static_cast<double>(v.size());
    return {mean, std::sqrt(var)};
}

} // namespace

FeatureStats feature_stats(const float* features, int64_t n, int64_t dim) {
    check_set(features, n, dim, "features", 2);
    FeatureStats s;
    s.n = n;
    s.dim = dim;
    s.mean.assign(static_cast<size_t>(dim), 0.0);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < dim; ++j) s.mean[j] += features[i * dim + j];
    for (double& m : s.mean) m /= static_cast<double>(n);
    // Centred features in double, then cov = Xc^T Xc / (n - 1) by gemm on
    // zero-padded copies (Xc^T [dp, rows] and Xc [rows, dp]) of row chunks.
    const int64_t dp = padded(dim), chunk = std::min<int64_t>(n, 2048);
    std::vector<double> xt(static_cast<size_t>(dp * chunk), 0.0), xc(static_cast<size_t>(chunk * dp), 0.0),
        c(static_cast<size_t>(dp * dp), 0.0);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
        const int64_t rows = std::min(chunk, n - r0);
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < dim; ++j)
                xc[i * dp + j] = xt[j * rows + i] = features[(r0 + i) * dim + j] - s.mean[j];
        gemm(dp, dp, rows, xt.data(), rows, xc.data(), dp, c.data(), dp, true);
    }
    s.cov.assign(static_cast<size_t>(dim * dim), 0.0);
    const double inv = 1.0 / static_cast<double>(n - 1);
    // Mirror the upper triangle so the result is exactly symmetric.
    for (int64_t a = 0; a < dim; ++a)
        for (int64_t b = a; b < dim; ++b) s.cov[a * dim + b] = s.cov[b * dim + a] = c[a * dp + b] * inv;
    return s;
}

double frechet_distance(const FeatureStats& a, const FeatureStats& b, std::string* warning) {
    check_stats(a, "a");
    check_stats(b, "b");
    check(a.dim == b.dim, "feature dimensions differ", "a has dim " + std::to_string(a.dim) + ", b has dim " + std::to_string(b.dim),
          "compute both statistics with the same feature network");
    const int64_t n = a.dim;
    if (warning) {
        warning->clear();
        if (a.n <= n || b.n <= n)
            *warning = "fewer samples than feature dimensions (n = " + std::to_string(a.n) + " and " +
                       std::to_string(b.n) + ", dim = " + std::to_string(n) +
                       "): the covariance is singular and the Frechet distance is strongly biased; use more samples";
    }
    double diff2 = 0, tr = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double q = a.mean[i] - b.mean[i];
        diff2 += q * q;
        tr += a.cov[i * n + i] + b.cov[i * n + i];
    }
    // S1 = V D V^T; the eigenvalues of S1^1/2 S2 S1^1/2 = V D^1/2 (V^T S2 V) D^1/2 V^T
    // are those of M = D^1/2 (V^T S2 V) D^1/2.
    std::vector<double> s1(static_cast<size_t>(n * n)), vt;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) s1[i * n + j] = 0.5 * (a.cov[i * n + j] + a.cov[j * n + i]);
    const std::vector<double> d1 = sym_eig(s1, n, &vt);
    const int64_t np = padded(n); // vt's row stride; gemm works on np x np
    std::vector<double> P(static_cast<size_t>(np * np), 0.0), S2(static_cast<size_t>(np * np), 0.0),
        T(static_cast<size_t>(np * np));
    std::copy(vt.begin(), vt.end(), P.begin()); // rows n.. stay zero
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) S2[i * np + j] = b.cov[i * n + j];
    gemm(np, np, np, P.data(), np, S2.data(), np, T.data(), np); // T = V^T S2
    // S2 <- V (transpose of P), then P = T V = V^T S2 V.
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) S2[j * np + i] = vt[i * np + j];
    gemm(np, np, np, T.data(), np, S2.data(), np, P.data(), np);
    std::vector<double> sq(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) sq[i] = std::sqrt(std::max(d1[i], 0.0));
    std::vector<double> M(static_cast<size_t>(n * n));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j)
            M[i * n + j] = sq[i] * sq[j] * 0.5 * (P[i * np + j] + P[j * np + i]);
    const std::vector<double> lam = sym_eig(M, n, nullptr);
    double tr_sqrt = 0;
    for (double l : lam) tr_sqrt += std::sqrt(std::max(l, 0.0));
    return std::max(0.0, diff2 + tr - 2.0 * tr_sqrt);
}

KidResult kernel_inception_distance(const float* a, int64_t na, const float* b, int64_t nb, int64_t dim,
                                    int64_t subsets, int64_t subset_size, uint64_t seed) {
    check_set(a, na, dim, "a", 2);
    check_set(b, nb, dim, "b", 2);
    check(subsets >= 1, "bad KID subset count", "subsets = " + std::to_string(subsets), "use subsets >= 1 (100 is usual)");
    check(subset_size >= 2, "bad KID subset size", "subset_size = " + std::to_string(subset_size),
          "the unbiased estimate needs subsets of at least 2 samples (1000 is usual)");
    check(na < (int64_t{1} << 32) && nb < (int64_t{1} << 32), "feature set too large for KID", "n >= 2^32");
    const int64_t m = std::min({subset_size, na, nb});
    const Philox rng(seed);
    std::vector<float> xs(static_cast<size_t>(m * dim)), ys(static_cast<size_t>(m * dim));
    std::vector<double> mmds;
    for (int64_t s = 0; s < subsets; ++s) {
        const std::vector<int64_t> ia = draw_subset(rng, stream_id("kid-a", static_cast<uint64_t>(s)), na, m);
        const std::vector<int64_t> ib = draw_subset(rng, stream_id("kid-b", static_cast<uint64_t>(s)), nb, m);
        for (int64_t i = 0; i < m; ++i) {
            std::memcpy(xs.data() + i * dim, a + ia[i] * dim, sizeof(float) * dim);
            std::memcpy(ys.data() + i * dim, b + ib[i] * dim, sizeof(float) * dim);
        }
        mmds.push_back(mmd2_poly(xs.data(), ys.data(), m, dim));
    }
    KidResult r;
    std::tie(r.mean, r.std) = mean_std(mmds);
    r.subsets = subsets;
    r.subset_size = m;
    return r;
}

IsResult inception_score(const float* probs, int64_t n, int64_t classes, int64_t splits) {
    check(classes >= 1, "bad class count for the Inception Score", "classes = " + std::to_string(classes));
    check_set(probs, n, classes, "probs", 1);
    check(splits >= 1 && splits <= n, "bad split count for the Inception Score",
          "splits = " + std::to_string(splits) + " with n = " + std::to_string(n), "use 1 <= splits <= n (10 is usual)");
    for (int64_t i = 0; i < n; ++i) {
        double sum = 0;
        for (int64_t c = 0; c < classes; ++c) {
            const float p = probs[i * classes + c];
            if (p < 0)
                throw Error("negative class probability", {},
                            "sample " + std::to_string(i) + ", class " + std::to_string(c) + " is " + num(p),
                            "pass softmax probabilities p(y|x), not logits");
            sum += p;
        }
        if (std::abs(sum - 1.0) > 1e-3)
            throw Error("class probabilities do not sum to 1", {},
                        "sample " + std::to_string(i) + " sums to " + num(sum),
                        "pass softmax probabilities p(y|x), not logits");
    }
    std::vector<double> scores;
    std::vector<double> py(static_cast<size_t>(classes));
    for (int64_t s = 0; s < splits; ++s) {
        const int64_t r0 = s * n / splits, r1 = (s + 1) * n / splits;
        std::fill(py.begin(), py.end(), 0.0);
        for (int64_t i = r0; i < r1; ++i)
            for (int64_t c = 0; c < classes; ++c) py[c] += probs[i * classes + c];
        for (double& p : py) p /= static_cast<double>(r1 - r0);
        double kl = 0;
        for (int64_t i = r0; i < r1; ++i) {
            double k = 0;
            for (int64_t c = 0; c < classes; ++c) {
                const double p = probs[i * classes + c];
                if (p > 0) k += p * (std::log(p) - std::log(py[c]));
            }
            kl += k;
        }
        scores.push_back(std::exp(kl / static_cast<double>(r1 - r0)));
    }
    IsResult r;
    std::tie(r.mean, r.std) = mean_std(scores);
    return r;
}

PrecisionRecall precision_recall(const float* real, int64_t nr, const float* gen, int64_t ng, int64_t dim, int64_t k) {
    check(k >= 1, "bad k for precision/recall", "k = " + std::to_string(k), "use k >= 1 (3 is usual)");
    check_set(real, nr, dim, "real", 1);
    check_set(gen, ng, dim, "gen", 1);
    check(k < nr && k < ng, "k too large for precision/recall",
          "k = " + std::to_string(k) + " needs more than k samples per set (real " + std::to_string(nr) + ", gen " +
              std::to_string(ng) + ")",
          "use a smaller k or more samples");
    // Squared k-NN radius of every row within its own set (itself excluded).
    auto radii = [&](const float* X, int64_t n) {
        std::vector<double> best(static_cast<size_t>(n * k), std::numeric_limits<double>::infinity());
        pairwise<true>(X, n, X, n, dim, false, [&](int64_t i, int64_t j, double v) {
            if (i == j) return;
            double* b = best.data() + i * k; // ascending, row i's state only
            if (v >= b[k - 1]) return;
            int64_t p = k - 1;
            while (p > 0 && b[p - 1] > v) { b[p] = b[p - 1]; --p; }
            b[p] = v;
        });
        std::vector<double> r(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) r[i] = best[i * k + k - 1];
        return r;
    };
    const std::vector<double> rr = radii(real, nr), rg = radii(gen, ng);
    std::vector<unsigned char> gen_in(static_cast<size_t>(ng), 0), real_in(static_cast<size_t>(nr), 0);
    pairwise<true>(real, nr, gen, ng, dim, false, [&](int64_t i, int64_t j, double v) {
        if (v <= rr[i]) {
#pragma omp atomic write
            gen_in[j] = 1;
        }
        if (v <= rg[j]) real_in[i] = 1; // row i's state only
    });
    PrecisionRecall r;
    r.k = k;
    r.precision = static_cast<double>(std::count(gen_in.begin(), gen_in.end(), 1)) / static_cast<double>(ng);
    r.recall = static_cast<double>(std::count(real_in.begin(), real_in.end(), 1)) / static_cast<double>(nr);
    return r;
}

} // namespace magnets
