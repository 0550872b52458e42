// Every layer's backward against central finite differences of a
// double-precision reference forward.
//
// Method: for a layer y = f(x, w) and a random upstream gradient r, the scalar
// L = sum(r * f(x, w)) is evaluated in double (naive reference loops below, no
// shared code with the library), and dL/dp = (L(p + h) - L(p - h)) / 2h with
// h = 1e-6 has truncation error O(h^2) ~ 1e-12 and rounding error ~1e-10, so the
// double result is exact to far below f32 resolution. The library's f32
// backward is then compared with a normalised error
//     max|g - g_fd| / max(1, max|g_fd|) < 2e-4,
// the budget of f32 accumulation over at most a few hundred terms (~1e-6
// relative each) with margin; a wrong index or missing term gives O(1) errors.
#include <doctest.h>

#include "magnets/backend.h"
#include "magnets/rng.h"
#include "nn/layers.h"

#include <cmath>
#include <functional>
#include <random>
#include <vector>

using namespace magnets;
using Vec = std::vector<double>;

namespace {

Vec random_vec(size_t n, uint32_t seed, double lo = -1, double hi = 1) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<double> d(lo, hi);
    Vec v(n);
    for (auto& x : v) x = d(g);
    return v;
}

Tensor to_tensor(const Vec& v, std::vector<int64_t> shape) {
    Tensor t(std::move(shape));
    for (size_t i = 0; i < v.size(); ++i) t.data()[i] = static_cast<float>(v[i]);
    return t;
}

// Rounds v to f32 so the double reference sees exactly the library's inputs.
void round_f32(Vec& v) { for (auto& x : v) x = static_cast<float>(x); }

double dot(const Vec& a, const Vec& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

// d/dp of fwd(p) . r for every entry of p, by central differences.
Vec fd_grad(Vec p, const std::function<Vec(const Vec&)>& fwd, const Vec& r, double h = 1e-6) {
    Vec g(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
        const double keep = p[i];
        p[i] = keep + h;
        const double lp = dot(fwd(p), r);
        p[i] = keep - h;
        const double lm = dot(fwd(p), r);
        p[i] = keep;
        g[i] = (lp - lm) / (2 * h);
    }
    return g;
}

double norm_err(const float* got, const Vec& want) {
    double m = 0, s = 1;
    for (size_t i = 0; i < want.size(); ++i) {
        m = std::max(m, std::fabs(static_cast<double>(got[i]) - want[i]));
        s = std::max(s, std::fabs(want[i]));
    }
    return m / s;
}

struct ConvCase { int64_t n, ci, h, w, co, k, stride, pad; };

// Naive double convolution, NCHW / OIHW.
Vec conv_ref(const ConvCase& c, const Vec& x, const Vec& w, const Vec& b) {
    const int64_t oh = (c.h + 2 * c.pad - c.k) / c.stride + 1, ow = (c.w + 2 * c.pad - c.k) / c.stride + 1;
    Vec y(static_cast<size_t>(c.n * c.co * oh * ow));
    for (int64_t n = 0; n < c.n; ++n)
        for (int64_t o = 0; o < c.co; ++o)
            for (int64_t i = 0; i < oh; ++i)
                for (int64_t j = 0; j < ow; ++j) {
                    double s = b[static_cast<size_t>(o)];
                    for (int64_t q = 0; q < c.ci; ++q)
                        for (int64_t u = 0; u < c.k; ++u)
                            for (int64_t v = 0; v < c.k; ++v) {
                                const int64_t yy = i * c.stride - c.pad + u, xx = j * c.stride - c.pad + v;
                                if (yy < 0 || yy >= c.h || xx < 0 || xx >= c.w) continue;
                                s += x[static_cast<size_t>(((n * c.ci + q) * c.h + yy) * c.w + xx)] *
                                     w[static_cast<size_t>(((o * c.ci + q) * c.k + u) * c.k + v)];
                            }
                    y[static_cast<size_t>(((n * c.co + o) * oh + i) * ow + j)] = s;
                }
    return y;
}

void check_conv(const std::string& backend, const ConvCase& c) {
    auto be = make_backend(backend);
    nn::Conv2d conv("t", c.ci, c.co, c.k, c.stride, c.pad);
    Vec x = random_vec(static_cast<size_t>(c.n * c.ci * c.h * c.w), 1), w = random_vec(conv.weight.numel(), 2),
        b = random_vec(static_cast<size_t>(c.co), 3);
    round_f32(x); round_f32(w); round_f32(b);
    Tensor xt = to_tensor(x, {c.n, c.ci, c.h, c.w});
    conv.weight = to_tensor(w, conv.weight.shape());
    conv.bias = to_tensor(b, {c.co});
    Tensor y;
    conv.forward(*be, xt, y);
    Vec yref = conv_ref(c, x, w, b);
    CHECK(norm_err(y.data(), yref) < 2e-5);
    Vec r = random_vec(yref.size(), 4);
    round_f32(r);
    Tensor dy = to_tensor(r, y.shape()), dx;
    conv.backward(*be, xt, dy, &dx);
    CHECK(norm_err(dx.data(), fd_grad(x, [&](const Vec& p) { return conv_ref(c, p, w, b); }, r)) < 2e-4);
    CHECK(norm_err(conv.dweight.data(), fd_grad(w, [&](const Vec& p) { return conv_ref(c, x, p, b); }, r)) < 2e-4);
    CHECK(norm_err(conv.dbias.data(), fd_grad(b, [&](const Vec& p) { return conv_ref(c, x, w, p); }, r)) < 2e-4);
}

} // namespace

TEST_CASE("conv2d backward matches double finite differences on every backend") {
    const ConvCase cases[] = {
        {2, 3, 6, 5, 4, 3, 1, 1}, // 3x3 same
        {2, 2, 8, 8, 3, 4, 2, 1}, // 4x4 stride 2 (tokenizer downsampling)
        {1, 4, 5, 5, 2, 1, 1, 0}, // 1x1
        {2, 1, 7, 7, 2, 3, 2, 0}, // odd size, stride 2, no padding
    };
    for (const auto& be : available_backends()) {
        if (be == "cuda") continue;
        for (const auto& c : cases) {
            CAPTURE(be);
            CAPTURE(c.k);
            CAPTURE(c.stride);
            check_conv(be, c);
        }
    }
}

TEST_CASE("relu, upsample and add backward match finite differences") {
    Vec x = random_vec(2 * 3 * 4 * 4, 7);
    for (auto& v : x) if (std::fabs(v) < 1e-3) v = 0.5; // keep away from the kink
    round_f32(x);
    Tensor xt = to_tensor(x, {2, 3, 4, 4}), y, dx;
    nn::relu_forward(xt, y);
    Vec r = random_vec(x.size(), 8);
    round_f32(r);
    Tensor dy = to_tensor(r, y.shape());
    nn::relu_backward(y, dy, dx);
    auto relu_ref = [](const Vec& p) { Vec o(p); for (auto& v : o) v = v > 0 ? v : 0; return o; };
    CHECK(norm_err(dx.data(), fd_grad(x, relu_ref, r)) < 2e-4);

    // Upsample x2.
    nn::upsample2_forward(xt, y);
    REQUIRE(y.shape() == std::vector<int64_t>{2, 3, 8, 8});
    auto up_ref = [](const Vec& p) {
        Vec o(static_cast<size_t>(2 * 3 * 8 * 8));
        for (int64_t c = 0; c < 6; ++c)
            for (int64_t i = 0; i < 8; ++i)
                for (int64_t j = 0; j < 8; ++j) o[static_cast<size_t>((c * 8 + i) * 8 + j)] = p[static_cast<size_t>((c * 4 + i / 2) * 4 + j / 2)];
        return o;
    };
    Vec yr = up_ref(x);
    CHECK(norm_err(y.data(), yr) == 0.0);
    Vec r2 = random_vec(yr.size(), 9);
    round_f32(r2);
    Tensor dy2 = to_tensor(r2, y.shape());
    nn::upsample2_backward(dy2, dx);
    CHECK(norm_err(dx.data(), fd_grad(x, up_ref, r2)) < 2e-4);
}

TEST_CASE("residual block backward matches finite differences") {
    auto be = make_backend("ref");
    const int64_t n = 2, c = 3, h = 4, w = 4;
    nn::ResBlock blk("r", c);
    Vec x = random_vec(static_cast<size_t>(n * c * h * w), 11), wa = random_vec(c * c * 9, 12),
        ba = random_vec(c, 13), wb = random_vec(c * c, 14), bb = random_vec(c, 15);
    round_f32(x); round_f32(wa); round_f32(ba); round_f32(wb); round_f32(bb);
    blk.conv_a.weight = to_tensor(wa, {c, c, 3, 3}); blk.conv_a.bias = to_tensor(ba, {c});
    blk.conv_b.weight = to_tensor(wb, {c, c, 1, 1}); blk.conv_b.bias = to_tensor(bb, {c});
    auto fwd = [&](const Vec& xx, const Vec& a, const Vec& bbias) {
        Vec t1(xx);
        for (auto& v : t1) v = v > 0 ? v : 0;
        Vec t2 = conv_ref({n, c, h, w, c, 3, 1, 1}, t1, a, ba);
        for (auto& v : t2) v = v > 0 ? v : 0;
        Vec t4 = conv_ref({n, c, h, w, c, 1, 1, 0}, t2, wb, bbias);
        for (size_t i = 0; i < t4.size(); ++i) t4[i] += xx[i];
        return t4;
    };
    // DTensors on a CPU backend: host memory, read directly.
    const Tensor xh = to_tensor(x, {n, c, h, w});
    nn::DTensor xt, y, dx, dy;
    xt.ensure(*be, xh.shape());
    std::copy(xh.data(), xh.data() + xh.numel(), xt.data());
    blk.forward(*be, xt, y);
    Vec yr = fwd(x, wa, bb);
    CHECK(norm_err(y.data(), yr) < 2e-5);
    Vec r = random_vec(yr.size(), 16);
    round_f32(r);
    const Tensor dyh = to_tensor(r, y.shape);
    dy.ensure(*be, y.shape);
    std::copy(dyh.data(), dyh.data() + dyh.numel(), dy.data());
    blk.backward(*be, dy, dx);
    CHECK(norm_err(dx.data(), fd_grad(x, [&](const Vec& p) { return fwd(p, wa, bb); }, r)) < 2e-4);
    CHECK(norm_err(blk.conv_a.dweight.data(), fd_grad(wa, [&](const Vec& p) { return fwd(x, p, bb); }, r)) < 2e-4);
    CHECK(norm_err(blk.conv_b.dbias.data(), fd_grad(bb, [&](const Vec& p) { return fwd(x, wa, p); }, r)) < 2e-4);
}

TEST_CASE("mse and l1 losses: values and gradients") {
    Vec p = random_vec(50, 21), t = random_vec(50, 22);
    round_f32(p); round_f32(t);
    Tensor pt = to_tensor(p, {5, 10}), tt = to_tensor(t, {5, 10}), d;
    auto mse = [&](const Vec& q) { double s = 0; for (size_t i = 0; i < q.size(); ++i) s += (q[i] - t[i]) * (q[i] - t[i]); return Vec{s / q.size()}; };
    auto l1 = [&](const Vec& q) { double s = 0; for (size_t i = 0; i < q.size(); ++i) s += std::fabs(q[i] - t[i]); return Vec{s / q.size()}; };
    double v = nn::mse_loss(pt, tt, &d);
    CHECK(v == doctest::Approx(mse(p)[0]).epsilon(1e-6));
    CHECK(norm_err(d.data(), fd_grad(p, mse, Vec{1.0})) < 1e-5);
    v = nn::l1_loss(pt, tt, &d);
    CHECK(v == doctest::Approx(l1(p)[0]).epsilon(1e-6));
    CHECK(norm_err(d.data(), fd_grad(p, l1, Vec{1.0})) < 1e-5);
}

TEST_CASE("nearest code search picks the L2-closest code with lowest-index ties") {
    auto be = make_backend("ref");
    Tensor cb({3, 2});
    const float cbv[] = {0, 0, 1, 1, 1, 1}; // codes 1 and 2 identical
    std::copy(cbv, cbv + 6, cb.data());
    Tensor z({3, 2}), dist;
    const float zv[] = {0.1f, -0.1f, 0.9f, 1.2f, 0.6f, 0.6f};
    std::copy(zv, zv + 6, z.data());
    std::vector<int32_t> idx;
    nn::nearest_codes(*be, z, cb, dist, idx);
    CHECK(idx == std::vector<int32_t>{0, 1, 1});
}
