// The reference backend: plain C++ loops, the referee every other backend is
// tested against. Correctness first: every sum accumulates in double, each
// output element is owned by one OpenMP thread and summed in a fixed order, so
// results do not depend on the thread count. Loop orders are chosen so the
// innermost loop runs over contiguous memory; it is still 5-40x slower than
// oneDNN (bench_backend) and is not meant for training. The loops rely on
// -O3 (Meson's release default) to vectorise.
#include "core/backend_registry.h"
#include "cpu/host_backend.h"
#include "magnets/error.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

namespace magnets {
namespace {

// Below this many multiply-adds an op runs on the calling thread: waking an
// OpenMP team costs more than the work, and on a busy 2-core host a small
// parallel region was measured 200x slower than the serial loop.
constexpr int64_t k_min_parallel_work = int64_t(1) << 16;

// Output positions o in [0, out) whose input position o * stride - pad + k
// lies in [0, len): the half-open range [lo, hi) (empty when lo >= hi).
struct Range {
    int64_t lo, hi;
};
Range valid_outputs(int64_t len, int64_t out, int64_t stride, int64_t pad, int64_t k) {
    const int64_t first = pad - k;  // o * stride >= first
    const int64_t last = len - 1 + pad - k; // o * stride <= last
    if (last < 0) return {0, 0};
    const int64_t lo = first <= 0 ? 0 : (first + stride - 1) / stride;
    const int64_t hi = std::min(out, last / stride + 1);
    return {lo, hi};
}

class RefBackend final : public HostBackend {
public:
    const char* name() const override { return "ref"; }
    bool supports(Op) const override { return true; }


    // C (m x n) is computed in tiles of k_rows rows x k_cols columns, each
    // owned by one thread: op(B) is first packed into a contiguous [k, n] copy,
    // then for every p the tile accumulates a[i][p] * b[p][j0 .. j0 + k_cols)
    // in double. The tile (8 x 256 doubles = 16 KiB) stays in L1.
    void matmul(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, float alpha,
                float beta) override {
        const MatmulDims d = check_matmul_args("ref", a, trans_a, b, trans_b, c);
        const int64_t m = d.m, n = d.n, k = d.k;
        if (m == 0 || n == 0) return;

        const bool parallel = m * n * k >= k_min_parallel_work;
        std::vector<float> bp(static_cast<size_t>(k * n)); // op(B) [k, n], contiguous
#pragma omp parallel for schedule(static) if (parallel)
        for (int64_t p = 0; p < k; ++p)
            for (int64_t j = 0; j < n; ++j)
                bp[p * n + j] = trans_b ? b.data[j * b.ld + p] : b.data[p * b.ld + j];

        constexpr int64_t k_rows = 8, k_cols = 256;
        const int64_t row_tiles = (m + k_rows - 1) / k_rows;
        const int64_t col_tiles = (n + k_cols - 1) / k_cols;
#pragma omp parallel if (parallel)
        {
            std::vector<double> arow(static_cast<size_t>(k_rows * k)); // op(A) rows of the tile
            std::vector<double> acc(static_cast<size_t>(k_rows * k_cols));
#pragma omp for schedule(static)
            for (int64_t tile = 0; tile < row_tiles * col_tiles; ++tile) {
                const int64_t i0 = tile / col_tiles * k_rows, j0 = tile % col_tiles * k_cols;
                const int64_t rows = std::min(k_rows, m - i0), cols = std::min(k_cols, n - j0);
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t p = 0; p < k; ++p)
                        arow[r * k + p] = trans_a ? a.data[p * a.ld + i0 + r] : a.data[(i0 + r) * a.ld + p];
                std::fill(acc.begin(), acc.end(), 0.0);
                for (int64_t p = 0; p < k; ++p) {
                    const float* brow = &bp[p * n + j0];
                    for (int64_t r = 0; r < rows; ++r) {
                        const double av = arow[r * k + p];
                        double* ar = &acc[r * k_cols];
                        for (int64_t j = 0; j < cols; ++j) ar[j] += av * brow[j];
                    }
                }
                for (int64_t r = 0; r < rows; ++r) {
                    float* cr = c.data + (i0 + r) * c.ld + j0;
                    const double* ar = &acc[r * k_cols];
                    for (int64_t j = 0; j < cols; ++j) {
                        const double prev = beta == 0.0f ? 0.0 : double(beta) * cr[j];
                        cr[j] = static_cast<float>(double(alpha) * ar[j] + prev);
                    }
                }
            }
        }
    }

    // y[n][co][oy][ox] = bias[co] + sum_{ci,ky,kx} w[co][ci][ky][kx] *
    //                    x[n][ci][oy*s-pad+ky][ox*s-pad+kx]  (outside x is 0).
    // One thread per (n, co) plane, accumulated in double.
    void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                        float* y) override {
        check_conv2d_shape("ref", Op::conv2d_forward, s);
        check(x && w && y, "ref: null buffer", "a required buffer pointer is null");
        const int64_t oh = s.out_h(), ow = s.out_w();
        const bool parallel = s.n * s.c_out * oh * ow * s.c_in * s.kh * s.kw >= k_min_parallel_work;
#pragma omp parallel if (parallel)
        {
            std::vector<double> acc(static_cast<size_t>(oh * ow));
#pragma omp for collapse(2) schedule(static)
            for (int64_t ni = 0; ni < s.n; ++ni) {
                for (int64_t co = 0; co < s.c_out; ++co) {
                    std::fill(acc.begin(), acc.end(), bias ? double(bias[co]) : 0.0);
                    for (int64_t ci = 0; ci < s.c_in; ++ci) {
                        const float* xp = x + (ni * s.c_in + ci) * s.h * s.w;
                        const float* wp = w + (co * s.c_in + ci) * s.kh * s.kw;
                        for (int64_t ky = 0; ky < s.kh; ++ky) {
                            const Range ry = valid_outputs(s.h, oh, s.stride, s.pad, ky);
                            for (int64_t kx = 0; kx < s.kw; ++kx) {
                                const Range rx = valid_outputs(s.w, ow, s.stride, s.pad, kx);
                                const double wv = wp[ky * s.kw + kx];
                                for (int64_t oy = ry.lo; oy < ry.hi; ++oy) {
                                    // x index of output ox: base + ox * stride
                                    const int64_t base = (oy * s.stride - s.pad + ky) * s.w - s.pad + kx;
                                    double* ar = &acc[oy * ow];
                                    if (s.stride == 1)
                                        for (int64_t ox = rx.lo; ox < rx.hi; ++ox) ar[ox] += wv * xp[base + ox];
                                    else
                                        for (int64_t ox = rx.lo; ox < rx.hi; ++ox)
                                            ar[ox] += wv * xp[base + ox * s.stride];
                                }
                            }
                        }
                    }
                    float* yp = y + (ni * s.c_out + co) * oh * ow;
                    for (int64_t i = 0; i < oh * ow; ++i) yp[i] = static_cast<float>(acc[i]);
                }
            }
        }
    }

    // dx[n][ci][iy][ix] = sum over (co, ky, kx, oy, ox) with oy*s-pad+ky = iy and
    // ox*s-pad+kx = ix of w[co][ci][ky][kx] * dy[n][co][oy][ox].
    // One thread per (n, ci) plane, scattered into a double plane.
    void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w,
                              float* dx) override {
        check_conv2d_shape("ref", Op::conv2d_backward_data, s);
        check(dy && w && dx, "ref: null buffer", "a required buffer pointer is null");
        const int64_t oh = s.out_h(), ow = s.out_w();
        const bool parallel = s.n * s.c_out * oh * ow * s.c_in * s.kh * s.kw >= k_min_parallel_work;
#pragma omp parallel if (parallel)
        {
            std::vector<double> acc(static_cast<size_t>(s.h * s.w));
#pragma omp for collapse(2) schedule(static)
            for (int64_t ni = 0; ni < s.n; ++ni) {
                for (int64_t ci = 0; ci < s.c_in; ++ci) {
                    std::fill(acc.begin(), acc.end(), 0.0);
                    for (int64_t co = 0; co < s.c_out; ++co) {
                        const float* dyp = dy + (ni * s.c_out + co) * oh * ow;
                        const float* wp = w + (co * s.c_in + ci) * s.kh * s.kw;
                        for (int64_t ky = 0; ky < s.kh; ++ky) {
                            const Range ry = valid_outputs(s.h, oh, s.stride, s.pad, ky);
                            for (int64_t kx = 0; kx < s.kw; ++kx) {
                                const Range rx = valid_outputs(s.w, ow, s.stride, s.pad, kx);
                                const double wv = wp[ky * s.kw + kx];
                                for (int64_t oy = ry.lo; oy < ry.hi; ++oy) {
                                    // dx index of output ox: base + ox * stride
                                    const int64_t base = (oy * s.stride - s.pad + ky) * s.w - s.pad + kx;
                                    const float* dyr = dyp + oy * ow;
                                    if (s.stride == 1)
                                        for (int64_t ox = rx.lo; ox < rx.hi; ++ox) acc[base + ox] += wv * dyr[ox];
                                    else
                                        for (int64_t ox = rx.lo; ox < rx.hi; ++ox)
                                            acc[base + ox * s.stride] += wv * dyr[ox];
                                }
                            }
                        }
                    }
                    float* dxp = dx + (ni * s.c_in + ci) * s.h * s.w;
                    for (int64_t i = 0; i < s.h * s.w; ++i) dxp[i] = static_cast<float>(acc[i]);
                }
            }
        }
    }

    // dw[co][ci][ky][kx] = sum_{n,oy,ox} dy[n][co][oy][ox] * x[n][ci][oy*s-pad+ky][ox*s-pad+kx],
    // dbias[co] = sum_{n,oy,ox} dy[n][co][oy][ox]. One thread per (co, ci),
    // each sum in double over a fixed order (four interleaved partial sums so
    // the loop vectorizes; still deterministic).
    void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw,
                                 float* dbias) override {
        check_conv2d_shape("ref", Op::conv2d_backward_weights, s);
        check(x && dy && dw, "ref: null buffer", "a required buffer pointer is null");
        const int64_t oh = s.out_h(), ow = s.out_w();
        const bool parallel = s.n * s.c_out * oh * ow * s.c_in * s.kh * s.kw >= k_min_parallel_work;
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
        for (int64_t co = 0; co < s.c_out; ++co) {
            for (int64_t ci = 0; ci < s.c_in; ++ci) {
                for (int64_t ky = 0; ky < s.kh; ++ky) {
                    const Range ry = valid_outputs(s.h, oh, s.stride, s.pad, ky);
                    for (int64_t kx = 0; kx < s.kw; ++kx) {
                        const Range rx = valid_outputs(s.w, ow, s.stride, s.pad, kx);
                        double part[4] = {0, 0, 0, 0};
                        for (int64_t ni = 0; ni < s.n; ++ni) {
                            const float* xp = x + (ni * s.c_in + ci) * s.h * s.w;
                            const float* dyp = dy + (ni * s.c_out + co) * oh * ow;
                            for (int64_t oy = ry.lo; oy < ry.hi; ++oy) {
                                // x index of output ox: base + ox * stride
                                const int64_t base = (oy * s.stride - s.pad + ky) * s.w - s.pad + kx;
                                const float* dyr = dyp + oy * ow;
                                int64_t ox = rx.lo;
                                for (; ox + 4 <= rx.hi; ox += 4)
                                    for (int l = 0; l < 4; ++l)
                                        part[l] += double(dyr[ox + l]) * xp[base + (ox + l) * s.stride];
                                for (; ox < rx.hi; ++ox) part[0] += double(dyr[ox]) * xp[base + ox * s.stride];
                            }
                        }
                        dw[((co * s.c_in + ci) * s.kh + ky) * s.kw + kx] =
                            static_cast<float>((part[0] + part[1]) + (part[2] + part[3]));
                    }
                }
            }
        }
        if (!dbias) return;
#pragma omp parallel for schedule(static) if (parallel)
        for (int64_t co = 0; co < s.c_out; ++co) {
            double sum = 0.0;
            for (int64_t ni = 0; ni < s.n; ++ni) {
                const float* dyp = dy + (ni * s.c_out + co) * oh * ow;
                for (int64_t i = 0; i < oh * ow; ++i) sum += dyp[i];
            }
            dbias[co] = static_cast<float>(sum);
        }
    }
};

} // namespace

std::unique_ptr<Backend> make_ref_backend() { return std::make_unique<RefBackend>(); }

} // namespace magnets
