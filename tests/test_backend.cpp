// Backend tests: the reference backend is checked against hand-computed and
// independently formulated results, then every other built backend is run on
// random inputs against it. Buffers go through alloc/upload/download, so the
// same tests serve device backends.
//
// Tolerance for backend-vs-ref: normalised error max|a - b| / max(1, max|b|)
// < 1e-4. Inputs are U(-1, 1); the longest f32 reduction here is k <= ~600
// terms (matmul k, conv c_in*kh*kw = 576). Worst-case f32 accumulation error is
// about k * 2^-24 * sum|terms| ~ 600 * 6e-8 * (600 / 4) ~ 5e-3 absolute, but
// blocked/vectorised sums grow like sqrt(k) in practice (observed ~1e-6), and
// the ref accumulates in double. 1e-4 is ~100x above what correct code shows
// while any indexing, transpose or stride bug gives an error of order 1.
#include "core/fastmath.h"
#include "cpu/winograd.h"
#include "magnets/backend.h"
#include "magnets/error.h"

#include <doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace magnets;

namespace {

constexpr double k_tolerance = 1e-4;

std::vector<float> random_vec(size_t n, uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = u(gen);
    return v;
}

double normalised_error(const std::vector<float>& got, const std::vector<float>& want) {
    REQUIRE(got.size() == want.size());
    double diff = 0.0, scale = 1.0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (std::isnan(got[i]) != std::isnan(want[i])) return std::numeric_limits<double>::infinity();
        if (std::isnan(want[i])) continue;
        diff = std::max(diff, std::fabs(double(got[i]) - want[i]));
        scale = std::max(scale, std::fabs(double(want[i])));
    }
    return diff / scale;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// A backend buffer holding a copy of a host vector.
class Buffer {
public:
    Buffer(Backend& be, const std::vector<float>& host) : be_(be), n_(host.size()) {
        p_ = be_.alloc(n_);
        be_.upload(p_, host.data(), n_);
    }
    Buffer(Backend& be, size_t n) : Buffer(be, std::vector<float>(n, 0.0f)) {}
    ~Buffer() { be_.free(p_); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    float* get() { return p_; }
    std::vector<float> download() {
        std::vector<float> h(n_);
        be_.download(h.data(), p_, n_);
        be_.synchronize();
        return h;
    }

private:
    Backend& be_;
    size_t n_;
    float* p_;
};

// Host backends, plus the device backends that can run here (a build with
// CUDA on a machine without a GPU skips them, with a message).
std::vector<std::string> usable_backends() {
    std::vector<std::string> out = available_backends();
    for (const auto& n : device_backends()) {
        try {
            make_backend(n);
            out.push_back(n);
        } catch (const Error& e) {
            MESSAGE("skipping backend " << n << ": " << e.why());
        }
    }
    return out;
}

// Usable backends other than the referee.
std::vector<std::string> peers() {
    std::vector<std::string> out;
    for (const auto& n : usable_backends())
        if (n != "ref") out.push_back(n);
    return out;
}

// ---- matmul -----------------------------------------------------------------

// C = alpha * op(A) * op(B) + beta * C where A, B and C are leading blocks of
// larger parent buffers (extra rows and extra columns, i.e. ld > cols).
struct MatmulCase {
    int64_t m, n, k;
    bool trans_a, trans_b;
    int64_t pad_cols = 0, pad_rows = 0; // parent size beyond each stored block
    float alpha = 1.0f, beta = 0.0f;
    bool nan_c = false; // fill C's parent with NaN (only meaningful with beta = 0)
};

struct MatmulResult {
    std::vector<float> c_parent; // whole parent buffer of C after the call
};

struct MatmulInputs {
    int64_t a_rows, a_cols, a_ld, b_rows, b_cols, b_ld, c_ld;
    std::vector<float> a, b, c; // parent buffers
};

MatmulInputs make_inputs(const MatmulCase& t, uint32_t seed) {
    MatmulInputs in;
    in.a_rows = t.trans_a ? t.k : t.m;
    in.a_cols = t.trans_a ? t.m : t.k;
    in.b_rows = t.trans_b ? t.n : t.k;
    in.b_cols = t.trans_b ? t.k : t.n;
    in.a_ld = in.a_cols + t.pad_cols;
    in.b_ld = in.b_cols + t.pad_cols;
    in.c_ld = t.n + t.pad_cols;
    in.a = random_vec(size_t((in.a_rows + t.pad_rows) * in.a_ld), seed);
    in.b = random_vec(size_t((in.b_rows + t.pad_rows) * in.b_ld), seed + 1);
    in.c = t.nan_c ? std::vector<float>(size_t((t.m + t.pad_rows) * in.c_ld),
                                        std::numeric_limits<float>::quiet_NaN())
                   : random_vec(size_t((t.m + t.pad_rows) * in.c_ld), seed + 2);
    return in;
}

std::vector<float> run_matmul(Backend& be, const MatmulCase& t, const MatmulInputs& in) {
    Buffer a(be, in.a), b(be, in.b), c(be, in.c);
    be.matmul(ConstMat(a.get(), in.a_rows, in.a_cols, in.a_ld), t.trans_a,
              ConstMat(b.get(), in.b_rows, in.b_cols, in.b_ld), t.trans_b,
              Mat{c.get(), t.m, t.n, in.c_ld}, t.alpha, t.beta);
    return c.download();
}

std::string describe(const MatmulCase& t) {
    return "m " + std::to_string(t.m) + " n " + std::to_string(t.n) + " k " + std::to_string(t.k) +
           " trans " + std::to_string(t.trans_a) + std::to_string(t.trans_b) + " pad " +
           std::to_string(t.pad_cols) + "," + std::to_string(t.pad_rows) + " alpha " +
           std::to_string(t.alpha) + " beta " + std::to_string(t.beta) + (t.nan_c ? " nan-C" : "");
}

// Runs one case on `be` and on ref; checks the slice of C against ref and that
// every element of C's parent outside the slice kept its bits.
void check_matmul_against_ref(Backend& be, Backend& ref, const MatmulCase& t, uint32_t seed) {
    CAPTURE(describe(t));
    const MatmulInputs in = make_inputs(t, seed);
    const std::vector<float> got = run_matmul(be, t, in), want = run_matmul(ref, t, in);
    std::vector<float> got_slice, want_slice;
    int64_t touched_outside = 0;
    for (int64_t i = 0; i < int64_t(in.c.size()); ++i) {
        const int64_t r = i / in.c_ld, col = i % in.c_ld;
        if (r < t.m && col < t.n) {
            got_slice.push_back(got[i]);
            want_slice.push_back(want[i]);
        } else {
            touched_outside += !same_bits(got[i], in.c[i]) + !same_bits(want[i], in.c[i]);
        }
    }
    CHECK(touched_outside == 0);
    if (t.nan_c) {
        CHECK(std::none_of(got_slice.begin(), got_slice.end(), [](float x) { return std::isnan(x); }));
        CHECK(std::none_of(want_slice.begin(), want_slice.end(), [](float x) { return std::isnan(x); }));
    }
    CHECK(normalised_error(got_slice, want_slice) < k_tolerance);
}

// ---- conv2d -----------------------------------------------------------------

Conv2dShape conv_shape(int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t kh,
                       int64_t kw, int64_t stride, int64_t pad) {
    Conv2dShape s;
    s.n = n, s.c_in = c_in, s.h = h, s.w = w, s.c_out = c_out, s.kh = kh, s.kw = kw;
    s.stride = stride, s.pad = pad;
    return s;
}

std::string describe(const Conv2dShape& s) {
    return "x [" + std::to_string(s.n) + "," + std::to_string(s.c_in) + "," + std::to_string(s.h) +
           "," + std::to_string(s.w) + "] w [" + std::to_string(s.c_out) + "," +
           std::to_string(s.c_in) + "," + std::to_string(s.kh) + "," + std::to_string(s.kw) +
           "] stride " + std::to_string(s.stride) + " pad " + std::to_string(s.pad);
}

size_t x_size(const Conv2dShape& s) { return size_t(s.n * s.c_in * s.h * s.w); }
size_t w_size(const Conv2dShape& s) { return size_t(s.c_out * s.c_in * s.kh * s.kw); }
size_t y_size(const Conv2dShape& s) { return size_t(s.n * s.c_out * s.out_h() * s.out_w()); }

struct ConvData {
    std::vector<float> x, w, bias, dy;
};

ConvData make_conv_data(const Conv2dShape& s, uint32_t seed) {
    return {random_vec(x_size(s), seed), random_vec(w_size(s), seed + 1),
            random_vec(size_t(s.c_out), seed + 2), random_vec(y_size(s), seed + 3)};
}

// Outputs of all three conv ops; outputs start NaN-filled so that an element
// the backend fails to write is caught.
struct ConvOutputs {
    std::vector<float> y, dx, dw, dbias;
};

ConvOutputs run_conv(Backend& be, const Conv2dShape& s, const ConvData& d, bool with_bias) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    Buffer x(be, d.x), w(be, d.w), bias(be, d.bias), dy(be, d.dy);
    Buffer y(be, std::vector<float>(y_size(s), nan)), dx(be, std::vector<float>(x_size(s), nan)),
        dw(be, std::vector<float>(w_size(s), nan)), dbias(be, std::vector<float>(size_t(s.c_out), nan));
    be.conv2d_forward(s, x.get(), w.get(), with_bias ? bias.get() : nullptr, y.get());
    be.conv2d_backward_data(s, dy.get(), w.get(), dx.get());
    be.conv2d_backward_weights(s, x.get(), dy.get(), dw.get(), with_bias ? dbias.get() : nullptr);
    ConvOutputs out{y.download(), dx.download(), dw.download(), {}};
    if (with_bias) out.dbias = dbias.download();
    return out;
}

const std::vector<Conv2dShape>& conv_cases() {
    static const std::vector<Conv2dShape> cases = {
        conv_shape(2, 3, 8, 8, 4, 3, 3, 1, 1),
        conv_shape(2, 16, 16, 16, 32, 3, 3, 1, 1),
        conv_shape(3, 8, 16, 16, 16, 4, 4, 2, 1),   // 4x4 stride 2 (downsampling)
        conv_shape(2, 32, 8, 8, 32, 1, 1, 1, 0),    // 1x1
        conv_shape(2, 5, 9, 7, 6, 3, 3, 2, 0),      // odd non-square input, pad 0
        conv_shape(2, 4, 8, 8, 4, 3, 3, 2, 1),      // (8 + 2 - 3) / 2 floors
        conv_shape(2, 3, 10, 12, 5, 4, 4, 2, 0),    // 4x4 stride 2, pad 0
        conv_shape(2, 4, 6, 6, 3, 3, 1, 1, 1),      // non-square kernel
        conv_shape(1, 64, 8, 8, 64, 3, 3, 1, 1),    // reduction c_in*kh*kw = 576
        conv_shape(4, 32, 16, 16, 64, 4, 4, 2, 1),  // bench-like downsampling
        // 3x3 stride-1 pad-1 shapes that take onednn's Winograd path (cpu/winograd.h):
        // odd sizes leave partial 2x2 tiles at the right and bottom edges.
        conv_shape(2, 16, 9, 11, 16, 3, 3, 1, 1),
        conv_shape(3, 8, 7, 5, 16, 3, 3, 1, 1),     // forward only (c_in 8: backward data is direct)
        conv_shape(2, 32, 1, 1, 16, 3, 3, 1, 1),    // one pixel: one tile, mostly padding
        conv_shape(5, 16, 3, 2, 48, 3, 3, 1, 1),
    };
    return cases;
}

} // namespace

// ---- the referee itself ----------------------------------------------------------

TEST_CASE("ref matmul matches a hand-computed 2x3x2 product, in every transpose form") {
    auto ref = make_backend("ref");
    // A [2, 3], B [3, 2], A * B = [[58, 64], [139, 154]].
    const std::vector<float> a{1, 2, 3, 4, 5, 6}, at{1, 4, 2, 5, 3, 6};
    const std::vector<float> b{7, 8, 9, 10, 11, 12}, bt{7, 9, 11, 8, 10, 12};
    const std::vector<float> want{58, 64, 139, 154};
    for (int ta = 0; ta < 2; ++ta) {
        for (int tb = 0; tb < 2; ++tb) {
            CAPTURE(ta);
            CAPTURE(tb);
            std::vector<float> c(4, 0.0f);
            ref->matmul(ta ? cmat(at.data(), 3, 2) : cmat(a.data(), 2, 3), ta,
                        tb ? cmat(bt.data(), 2, 3) : cmat(b.data(), 3, 2), tb, mat(c.data(), 2, 2));
            CHECK(c == want);
        }
    }
    // alpha = 2, beta = 0.5 on C = [[1, 2], [3, 4]]: 2 * AB + 0.5 * C.
    std::vector<float> c{1, 2, 3, 4};
    ref->matmul(cmat(a.data(), 2, 3), false, cmat(b.data(), 3, 2), false, mat(c.data(), 2, 2), 2.0f, 0.5f);
    CHECK(c == std::vector<float>{116.5f, 129.0f, 279.5f, 310.0f});
}

TEST_CASE("ref conv2d forward and backward equal im2col + matmul") {
    auto ref = make_backend("ref");
    for (const Conv2dShape& s : {conv_shape(2, 3, 5, 6, 4, 3, 3, 1, 1), conv_shape(2, 2, 7, 7, 3, 4, 4, 2, 1)}) {
        CAPTURE(describe(s));
        const ConvData d = make_conv_data(s, 11);
        const int64_t oh = s.out_h(), ow = s.out_w(), kk = s.c_in * s.kh * s.kw, pix = oh * ow;
        // cols[n] [kk, pix]: cols[(ci, ky, kx)][(oy, ox)] = x[ci][oy*s-pad+ky][ox*s-pad+kx] or 0.
        auto input_index = [&](int64_t ni, int64_t row, int64_t p) -> int64_t {
            const int64_t ci = row / (s.kh * s.kw), ky = row / s.kw % s.kh, kx = row % s.kw;
            const int64_t iy = p / ow * s.stride - s.pad + ky, ix = p % ow * s.stride - s.pad + kx;
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) return -1;
            return ((ni * s.c_in + ci) * s.h + iy) * s.w + ix;
        };
        std::vector<float> y_want(y_size(s)), dx_want(x_size(s), 0.0f), dw_want(w_size(s), 0.0f);
        std::vector<float> dbias_want(size_t(s.c_out), 0.0f);
        for (int64_t ni = 0; ni < s.n; ++ni) {
            std::vector<float> cols(size_t(kk * pix));
            for (int64_t row = 0; row < kk; ++row)
                for (int64_t p = 0; p < pix; ++p) {
                    const int64_t i = input_index(ni, row, p);
                    cols[row * pix + p] = i < 0 ? 0.0f : d.x[i];
                }
            // y[n] [c_out, pix] = W [c_out, kk] * cols + bias
            float* yn = &y_want[ni * s.c_out * pix];
            ref->matmul(cmat(d.w.data(), s.c_out, kk), false, cmat(cols.data(), kk, pix), false,
                        mat(yn, s.c_out, pix));
            for (int64_t co = 0; co < s.c_out; ++co)
                for (int64_t p = 0; p < pix; ++p) yn[co * pix + p] += d.bias[co];
            // dcols [kk, pix] = W^T * dy[n], scattered back (col2im) into dx.
            const float* dyn = &d.dy[ni * s.c_out * pix];
            std::vector<float> dcols(size_t(kk * pix));
            ref->matmul(cmat(d.w.data(), s.c_out, kk), true, cmat(dyn, s.c_out, pix), false,
                        mat(dcols.data(), kk, pix));
            for (int64_t row = 0; row < kk; ++row)
                for (int64_t p = 0; p < pix; ++p) {
                    const int64_t i = input_index(ni, row, p);
                    if (i >= 0) dx_want[i] += dcols[row * pix + p];
                }
            // dw [c_out, kk] += dy[n] * cols^T; dbias += row sums of dy[n].
            ref->matmul(cmat(dyn, s.c_out, pix), false, cmat(cols.data(), kk, pix), true,
                        mat(dw_want.data(), s.c_out, kk), 1.0f, 1.0f);
            for (int64_t co = 0; co < s.c_out; ++co)
                for (int64_t p = 0; p < pix; ++p) dbias_want[co] += dyn[co * pix + p];
        }
        const ConvOutputs got = run_conv(*ref, s, d, true);
        // Both sides sum the same products in a different order: rounding only.
        CHECK(normalised_error(got.y, y_want) < 1e-5);
        CHECK(normalised_error(got.dx, dx_want) < 1e-5);
        CHECK(normalised_error(got.dw, dw_want) < 1e-5);
        CHECK(normalised_error(got.dbias, dbias_want) < 1e-5);
    }
}

TEST_CASE("ref results do not depend on the thread count") {
    auto ref = make_backend("ref");
    // Large enough (> 2^16 multiply-adds) that ref runs them multi-threaded.
    const MatmulCase t{97, 130, 70, true, false, 3, 2};
    const MatmulInputs in = make_inputs(t, 5);
    const Conv2dShape s = conv_shape(4, 8, 17, 17, 8, 3, 3, 2, 1);
    const ConvData d = make_conv_data(s, 6);
    const int saved = num_threads();
    set_num_threads(1);
    CHECK(num_threads() == 1);
    const std::vector<float> c1 = run_matmul(*ref, t, in);
    const ConvOutputs o1 = run_conv(*ref, s, d, true);
    set_num_threads(2);
    const std::vector<float> c2 = run_matmul(*ref, t, in);
    const ConvOutputs o2 = run_conv(*ref, s, d, true);
    set_num_threads(saved);
    CHECK(c1 == c2);
    CHECK(o1.y == o2.y);
    CHECK(o1.dx == o2.dx);
    CHECK(o1.dw == o2.dw);
    CHECK(o1.dbias == o2.dbias);
}

// ---- every backend against the referee --------------------------------------------

TEST_CASE("matmul: every backend matches ref") {
    if (peers().empty()) MESSAGE("skipped: no backend other than ref is built");
    auto ref = make_backend("ref");
    for (const std::string& name : peers()) {
        CAPTURE(name);
        auto be = make_backend(name);
        std::mt19937 gen(1234);
        std::uniform_int_distribution<int64_t> dim(1, 100);
        uint32_t seed = 100;
        for (int rep = 0; rep < 6; ++rep) {
            const int64_t m = dim(gen), n = dim(gen), k = dim(gen);
            for (int ta = 0; ta < 2; ++ta)
                for (int tb = 0; tb < 2; ++tb) {
                    // contiguous; then a prefix slice of a larger buffer with alpha/beta
                    check_matmul_against_ref(*be, *ref, {m, n, k, bool(ta), bool(tb)}, seed++);
                    check_matmul_against_ref(*be, *ref, {m, n, k, bool(ta), bool(tb), 7, 3, 0.5f, -1.5f},
                                             seed++);
                }
        }
        for (int ta = 0; ta < 2; ++ta)
            for (int tb = 0; tb < 2; ++tb) {
                check_matmul_against_ref(*be, *ref, {64, 256, 256, bool(ta), bool(tb)}, seed++);
                check_matmul_against_ref(*be, *ref, {300, 200, 600, bool(ta), bool(tb), 40, 10, 1.0f, 1.0f},
                                         seed++);
                check_matmul_against_ref(*be, *ref, {1, 17, 33, bool(ta), bool(tb), 1, 0}, seed++);
                check_matmul_against_ref(*be, *ref, {19, 1, 5, bool(ta), bool(tb), 2, 1, 2.0f, 0.25f}, seed++);
            }
        // m >= 256 with A * W^T: oneDNN copies W transposed first; sizes off the 8x8 blocks, strided.
        check_matmul_against_ref(*be, *ref, {260, 13, 27, false, true, 5, 2, 1.0f, 0.5f}, seed++);
        check_matmul_against_ref(*be, *ref, {512, 24, 40, false, true, 8, 0}, seed++);
        // Nested-model slice: W [192, 384], the leading block of [768, 3072], used as A * W^T.
        check_matmul_against_ref(*be, *ref, {32, 192, 768 / 2, false, true, 3072 - 768 / 2, 576}, seed++);
    }
}

TEST_CASE("matmul_bias and matmul_residual equal matmul then add_bias (and the residual), on every backend") {
    for (const std::string& name : available_backends()) {
        CAPTURE(name);
        auto be = make_backend(name);
        for (int64_t m : {int64_t{7}, int64_t{300}}) // 300: onednn's transposed-B copy
            for (bool tb : {false, true})
                for (float beta : {0.0f, 1.0f}) {
                    CAPTURE(m);
                    CAPTURE(tb);
                    CAPTURE(beta);
                    const int64_t n = 40, k = 24, ldc = n + 5;
                    std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(n * k)),
                        bias(static_cast<size_t>(n)), c0(static_cast<size_t>(m * ldc));
                    std::mt19937 gen(static_cast<uint32_t>(m + 2 * tb + 4 * beta));
                    std::normal_distribution<float> nd;
                    for (auto* v : {&a, &b, &bias, &c0})
                        for (float& x : *v) x = nd(gen);
                    const ConstMat A(a.data(), m, k, k), B(b.data(), tb ? n : k, tb ? k : n, tb ? k : n);
                    std::vector<float> ref = c0, got = c0;
                    be->matmul(A, false, B, tb, Mat{ref.data(), m, n, ldc}, 1.0f, beta);
                    be->add_bias(ref.data(), ldc, bias.data(), m, n);
                    be->matmul_bias(A, false, B, tb, Mat{got.data(), m, n, ldc}, bias.data(), 1.0f, beta);
                    double worst = 0;
                    for (size_t i = 0; i < ref.size(); ++i)
                        worst = std::max(worst, double(std::abs(ref[i] - got[i])) / (1.0 + std::abs(ref[i])));
                    CHECK(worst < 1e-5); // the padding columns (ldc > n) are untouched: exact there
                    if (beta != 0.0f) continue;
                    // matmul_residual: c = A B + bias + res (res with c's leading dimension)
                    std::vector<float> res(c0.size());
                    for (float& x : res) x = nd(gen);
                    std::vector<float> want = c0, have = c0;
                    for (int64_t i = 0; i < m; ++i)
                        for (int64_t j = 0; j < n; ++j) want[size_t(i * ldc + j)] = res[size_t(i * ldc + j)];
                    be->matmul(A, false, B, tb, Mat{want.data(), m, n, ldc}, 1.0f, 1.0f);
                    be->add_bias(want.data(), ldc, bias.data(), m, n);
                    be->matmul_residual(A, false, B, tb, Mat{have.data(), m, n, ldc}, bias.data(), res.data());
                    double worst_r = 0;
                    for (size_t i = 0; i < want.size(); ++i)
                        worst_r = std::max(worst_r, double(std::abs(want[i] - have[i])) / (1.0 + std::abs(want[i])));
                    CHECK(worst_r < 1e-5);
                }
    }
}

TEST_CASE("matmul: beta = 0 overwrites a NaN-filled C") {
    auto ref = make_backend("ref");
    std::vector<std::string> names = peers();
    names.push_back("ref");
    for (const std::string& name : names) {
        CAPTURE(name);
        auto be = make_backend(name);
        for (int ta = 0; ta < 2; ++ta)
            for (int tb = 0; tb < 2; ++tb) {
                MatmulCase t{23, 31, 47, bool(ta), bool(tb), 5, 2, 1.0f, 0.0f, true};
                check_matmul_against_ref(*be, *ref, t, 900);
                t.alpha = 3.0f;
                check_matmul_against_ref(*be, *ref, t, 901);
            }
    }
}

TEST_CASE("matmul: repeated shapes reuse cached plans on new buffers") {
    auto ref = make_backend("ref");
    for (const std::string& name : peers()) {
        CAPTURE(name);
        auto be = make_backend(name);
        for (uint32_t seed = 0; seed < 4; ++seed) {
            check_matmul_against_ref(*be, *ref, {40, 24, 56, false, true, 8, 1}, 500 + seed);
            check_matmul_against_ref(*be, *ref, {40, 24, 56, false, true, 8, 1, 1.0f, 1.0f}, 600 + seed);
        }
    }
}

TEST_CASE("matmul: k = 0 gives beta * C; empty C is a no-op") {
    std::vector<std::string> names = peers();
    names.push_back("ref");
    for (const std::string& name : names) {
        CAPTURE(name);
        auto be = make_backend(name);
        Buffer a(*be, 8), b(*be, 8), c(*be, std::vector<float>{1, 2, 3, 4});
        be->matmul(ConstMat(a.get(), 2, 0, 1), false, ConstMat(b.get(), 0, 2, 2), false,
                   Mat{c.get(), 2, 2, 2}, 1.0f, 2.0f);
        CHECK(c.download() == std::vector<float>{2, 4, 6, 8});
        be->matmul(ConstMat(a.get(), 0, 3, 3), false, ConstMat(b.get(), 3, 2, 2), false,
                   Mat{c.get(), 0, 2, 2});
        CHECK(c.download() == std::vector<float>{2, 4, 6, 8});
    }
}

TEST_CASE("matmul: mismatched shapes throw Error on every backend") {
    for (const std::string& name : usable_backends()) {
        CAPTURE(name);
        auto be = make_backend(name);
        std::vector<float> buf(64, 0.0f);
        // inner dimensions 3 vs 4
        CHECK_THROWS_AS(be->matmul(cmat(buf.data(), 2, 3), false, cmat(buf.data(), 4, 2), false,
                                   mat(buf.data() + 32, 2, 2)),
                        Error);
        // C has the wrong shape
        CHECK_THROWS_AS(be->matmul(cmat(buf.data(), 2, 3), false, cmat(buf.data(), 3, 2), false,
                                   mat(buf.data() + 32, 3, 2)),
                        Error);
        // ld < cols
        CHECK_THROWS_AS(be->matmul(ConstMat(buf.data(), 2, 3, 2), false, cmat(buf.data(), 3, 2), false,
                                   mat(buf.data() + 32, 2, 2)),
                        Error);
    }
}

TEST_CASE("conv2d: every backend matches ref (forward, backward data, backward weights)") {
    if (peers().empty()) MESSAGE("skipped: no backend other than ref is built");
    auto ref = make_backend("ref");
    for (const std::string& name : peers()) {
        CAPTURE(name);
        auto be = make_backend(name);
        uint32_t seed = 7000;
        for (const Conv2dShape& s : conv_cases()) {
            for (bool with_bias : {true, false}) {
                CAPTURE(describe(s));
                CAPTURE(with_bias);
                const ConvData d = make_conv_data(s, seed += 10);
                const ConvOutputs want = run_conv(*ref, s, d, with_bias);
                // Twice: the second call runs a cached plan on fresh buffers.
                for (int call = 0; call < 2; ++call) {
                    CAPTURE(call);
                    const ConvOutputs got = run_conv(*be, s, d, with_bias);
                    CHECK(normalised_error(got.y, want.y) < k_tolerance);
                    CHECK(normalised_error(got.dx, want.dx) < k_tolerance);
                    CHECK(normalised_error(got.dw, want.dw) < k_tolerance);
                    CHECK(normalised_error(got.dbias, want.dbias) < k_tolerance);
                }
            }
        }
    }
}

// The Winograd kernels called directly (not through the oneDNN backend's
// routing, which would hide a broken kernel behind oneDNN's own convolution),
// against the reference backend. Winograd's transforms add round-off (about
// 1e-6 relative here), far inside the 1e-4 tolerance; an indexing or
// transform error gives errors of order 1.
TEST_CASE("Winograd F(2x2, 3x3) kernels match the reference backend in all three passes") {
#if defined(__AVX2__) && defined(__FMA__)
    auto ref = make_backend("ref");
    uint32_t seed = 9100;
    for (const Conv2dShape& s : {conv_shape(2, 16, 9, 11, 16, 3, 3, 1, 1), conv_shape(3, 32, 8, 8, 16, 3, 3, 1, 1),
                                 conv_shape(1, 16, 1, 1, 32, 3, 3, 1, 1), conv_shape(64, 16, 4, 6, 16, 3, 3, 1, 1)}) {
        CAPTURE(describe(s));
        REQUIRE(cpu::winograd_fits(Op::conv2d_forward, s));
        REQUIRE(cpu::winograd_fits(Op::conv2d_backward_data, s));
        REQUIRE(cpu::winograd_fits(Op::conv2d_backward_weights, s));
        const ConvData d = make_conv_data(s, seed += 10);
        const ConvOutputs want = run_conv(*ref, s, d, true);
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> y(y_size(s), nan), dx(x_size(s), nan), dw(w_size(s), nan), db(size_t(s.c_out), nan);
        cpu::winograd_forward(s, d.x.data(), d.w.data(), d.bias.data(), y.data());
        cpu::winograd_backward_data(s, d.dy.data(), d.w.data(), dx.data());
        cpu::winograd_backward_weights(s, d.x.data(), d.dy.data(), dw.data(), db.data());
        CHECK(normalised_error(y, want.y) < 1e-5);
        CHECK(normalised_error(dx, want.dx) < 1e-5);
        CHECK(normalised_error(dw, want.dw) < 1e-5);
        CHECK(normalised_error(db, want.dbias) < 1e-5);
    }
    // Shapes it must leave to the direct method.
    CHECK_FALSE(cpu::winograd_fits(Op::conv2d_forward, conv_shape(2, 16, 8, 8, 16, 3, 3, 2, 1)));  // stride 2
    CHECK_FALSE(cpu::winograd_fits(Op::conv2d_forward, conv_shape(2, 16, 8, 8, 16, 4, 4, 2, 1)));  // 4x4
    CHECK_FALSE(cpu::winograd_fits(Op::conv2d_forward, conv_shape(2, 4, 8, 8, 16, 3, 3, 1, 1)));   // c_in 4
    CHECK_FALSE(cpu::winograd_fits(Op::conv2d_forward, conv_shape(2, 16, 8, 8, 1, 3, 3, 1, 1)));   // c_out 1
    CHECK_FALSE(cpu::winograd_fits(Op::conv2d_backward_data, conv_shape(2, 8, 8, 8, 16, 3, 3, 1, 1))); // dx: 8 channels
#else
    MESSAGE("skipped: Winograd needs AVX2/FMA");
#endif
}

TEST_CASE("conv2d: invalid shapes throw Error on every backend") {
    for (const std::string& name : usable_backends()) {
        CAPTURE(name);
        auto be = make_backend(name);
        std::vector<float> buf(1024, 0.0f);
        Conv2dShape s = conv_shape(1, 2, 2, 2, 2, 3, 3, 1, 0); // kernel larger than the input
        CHECK_THROWS_AS(be->conv2d_forward(s, buf.data(), buf.data(), nullptr, buf.data()), Error);
        s = conv_shape(1, 2, 4, 4, 2, 3, 3, 0, 1); // stride 0
        CHECK_THROWS_AS(be->conv2d_backward_data(s, buf.data(), buf.data(), buf.data()), Error);
        s = conv_shape(0, 2, 4, 4, 2, 3, 3, 1, 1); // empty batch
        CHECK_THROWS_AS(be->conv2d_backward_weights(s, buf.data(), buf.data(), buf.data(), nullptr), Error);
    }
}

// ---- row-stable matmul ------------------------------------------------------------

// Every backend's matmul_rowstable gives the CPU kernel's bits (one fmaf chain
// per element, then the bias), on prefix slices, for any split of the rows.
TEST_CASE("matmul_rowstable: every backend gives the CPU kernel's bits, whatever the row count") {
    auto ref = make_backend("ref");
    const int64_t M = 77, N = 70, K = 45, lda = K + 3, ldw = 2 * K; // W a prefix slice of [N + 5, 2K]
    const std::vector<float> a = random_vec(size_t(M * lda), 31), w = random_vec(size_t((N + 5) * ldw), 32),
                             bias = random_vec(size_t(N), 33);
    std::vector<float> want(size_t(M * N));
    {
        Buffer ab(*ref, a), wb(*ref, w), bb(*ref, bias), cb(*ref, want.size());
        ref->matmul_rowstable(ConstMat(ab.get(), M, K, lda), ConstMat(wb.get(), N, K, ldw), bb.get(), Mat{cb.get(), M, N, N});
        want = cb.download();
    }
    // The chain by hand for a few elements.
    for (int64_t i : {int64_t{0}, int64_t{41}, M - 1})
        for (int64_t j : {int64_t{0}, int64_t{17}, N - 1}) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc = std::fma(a[size_t(i * lda + k)], w[size_t(j * ldw + k)], acc);
            CHECK(same_bits(want[size_t(i * N + j)], acc + bias[size_t(j)]));
        }
    for (const std::string& name : usable_backends()) {
        CAPTURE(name);
        auto be = make_backend(name);
        Buffer ab(*be, a), wb(*be, w), bb(*be, bias);
        for (int64_t split : {M, int64_t{1}, int64_t{7}, int64_t{64}}) { // rows computed `split` at a time
            CAPTURE(split);
            Buffer cb(*be, size_t(M * N));
            for (int64_t r0 = 0; r0 < M; r0 += split) {
                const int64_t rows = std::min(split, M - r0);
                be->matmul_rowstable(ConstMat(ab.get() + r0 * lda, rows, K, lda), ConstMat(wb.get(), N, K, ldw), bb.get(),
                                     Mat{cb.get() + r0 * N, rows, N, N});
            }
            const std::vector<float> got = cb.download();
            int64_t differ = 0;
            for (size_t i = 0; i < got.size(); ++i) differ += same_bits(got[i], want[i]) ? 0 : 1;
            CHECK(differ == 0);
        }
        Buffer cb(*be, size_t(M * N)); // without bias: the bare chain
        be->matmul_rowstable(ConstMat(ab.get(), M, K, lda), ConstMat(wb.get(), N, K, ldw), nullptr, Mat{cb.get(), M, N, N});
        const std::vector<float> got = cb.download();
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) acc = std::fma(a[size_t(5 * lda + k)], w[size_t(9 * ldw + k)], acc);
        CHECK(same_bits(got[size_t(5 * N + 9)], acc));
    }
}

// The GELU epilogue: act = gelu gives GELU of the plain result, element by
// element: the same bits on the CPU backends (the same float operations), and
// within 1e-6 normalised on a device (its erff is not our erf polynomial).
TEST_CASE("matmul_rowstable: the GELU epilogue equals GELU of the product") {
    const int64_t M = 50, N = 40, K = 33; // N = 40: two 16-column panels and an 8-column scalar tail
    const std::vector<float> a = random_vec(size_t(M * K), 41), w = random_vec(size_t(N * K), 42),
                             bias = random_vec(size_t(N), 43);
    for (const std::string& name : usable_backends()) {
        CAPTURE(name);
        auto be = make_backend(name);
        Buffer ab(*be, a), wb(*be, w), bb(*be, bias), plain(*be, size_t(M * N)), fused(*be, size_t(M * N));
        be->matmul_rowstable(ConstMat(ab.get(), M, K, K), ConstMat(wb.get(), N, K, K), bb.get(), Mat{plain.get(), M, N, N});
        be->matmul_rowstable(ConstMat(ab.get(), M, K, K), ConstMat(wb.get(), N, K, K), bb.get(), Mat{fused.get(), M, N, N},
                             Backend::Act::gelu);
        std::vector<float> want = plain.download();
        for (float& v : want) v = static_cast<float>(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
        const std::vector<float> got = fused.download();
        CHECK(normalised_error(got, want) < 1e-6);
        if (name == "ref" || name == "onednn") {
            const std::vector<float> host = plain.download();
            int64_t differ = 0;
            for (size_t i = 0; i < host.size(); ++i) differ += same_bits(magnets::gelu(host[i]), got[i]) ? 0 : 1;
            CHECK(differ == 0);
        }
    }
}

// ---- selection ------------------------------------------------------------------

TEST_CASE("make_backend: names, auto, and errors with hints") {
    const std::vector<std::string> avail = available_backends();
    REQUIRE(!avail.empty());
    CHECK(avail.front() == "ref");
    for (const std::string& name : avail) {
        auto be = make_backend(name);
        CHECK(std::string(be->name()) == name);
        for (Op op : {Op::matmul, Op::conv2d_forward, Op::conv2d_backward_data, Op::conv2d_backward_weights})
            CHECK(be->supports(op));
    }
    const bool have_onednn = std::find(avail.begin(), avail.end(), "onednn") != avail.end();
    CHECK(std::string(make_backend("auto")->name()) == (have_onednn ? "onednn" : "ref"));

    try {
        make_backend("tpu");
        FAIL("unknown backend accepted");
    } catch (const Error& e) {
        CHECK(e.summary().find("tpu") != std::string::npos);
        CHECK(e.hint().find("ref") != std::string::npos);
    }
    const std::vector<std::string> dev = device_backends();
    CHECK(std::find(avail.begin(), avail.end(), "cuda") == avail.end()); // the models' list is host only
    if (std::find(dev.begin(), dev.end(), "cuda") == dev.end()) {
        try {
            make_backend("cuda");
            FAIL("cuda accepted although not built");
        } catch (const Error& e) {
            CHECK(e.hint().find("-Dcuda=enabled") != std::string::npos); // how to rebuild
            CHECK(e.hint().find("ref") != std::string::npos);
        }
    } else {
        try {
            auto be = make_backend("cuda");
            CHECK(std::string(be->name()) == "cuda");
            CHECK(be->supports(Op::matmul));
        } catch (const Error& e) { // built, but no device here: says what to do instead
            CHECK(e.summary().find("cuda") != std::string::npos);
            CHECK(e.hint().find("onednn") != std::string::npos);
        }
    }
    if (!have_onednn) CHECK_THROWS_AS(make_backend("onednn"), Error);
}

TEST_CASE("op names and thread control") {
    CHECK(std::string(op_name(Op::matmul)) == "matmul");
    CHECK(std::string(op_name(Op::conv2d_forward)) == "conv2d_forward");
    CHECK(std::string(op_name(Op::conv2d_backward_data)) == "conv2d_backward_data");
    CHECK(std::string(op_name(Op::conv2d_backward_weights)) == "conv2d_backward_weights");
    const int saved = num_threads();
    CHECK(saved >= 1);
    set_num_threads(1);
    CHECK(num_threads() == 1);
    set_num_threads(0);
    CHECK(num_threads() >= 1);
    CHECK_THROWS_AS(set_num_threads(-1), Error);
    set_num_threads(saved);
}
