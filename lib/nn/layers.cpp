#include "nn/layers.h"

#include "magnets/error.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace magnets::nn {

void ensure(Tensor& t, const std::vector<int64_t>& shape) {
    if (t.shape() != shape || !t.data()) t.resize(shape);
}

Conv2d::Conv2d(std::string n, int64_t ci, int64_t co, int64_t kk, int64_t s, int64_t p)
    : name(std::move(n)), c_in(ci), c_out(co), k(kk), stride(s), pad(p), weight({co, ci, kk, kk}),
      bias({co}), dweight({co, ci, kk, kk}), dbias({co}) {}

Conv2dShape Conv2d::shape_for(const Tensor& x) const {
    check(x.rank() == 4 && x.dim(1) == c_in, "conv " + name, "input " + x.shape_str() + " has wrong channels");
    Conv2dShape s;
    s.n = x.dim(0); s.c_in = c_in; s.h = x.dim(2); s.w = x.dim(3);
    s.c_out = c_out; s.kh = k; s.kw = k; s.stride = stride; s.pad = pad;
    return s;
}

void Conv2d::init(const Philox& rng) {
    const double bound = std::sqrt(6.0 / static_cast<double>(c_in * k * k));
    const uint64_t stream = stream_id(name.c_str());
    float* w = weight.data();
    for (int64_t i = 0; i < weight.numel(); ++i)
        w[i] = static_cast<float>((2.0 * rng.uniform_double(stream, static_cast<uint64_t>(i)) - 1.0) * bound);
    bias.zero();
}

void Conv2d::forward(Backend& be, const Tensor& x, Tensor& y) const {
    Conv2dShape s = shape_for(x);
    ensure(y, {s.n, c_out, s.out_h(), s.out_w()});
    be.conv2d_forward(s, x.data(), weight.data(), bias.data(), y.data());
}

void Conv2d::backward(Backend& be, const Tensor& x, const Tensor& dy, Tensor* dx) {
    Conv2dShape s = shape_for(x);
    be.conv2d_backward_weights(s, x.data(), dy.data(), dweight.data(), dbias.data());
    if (dx) {
        ensure(*dx, x.shape());
        be.conv2d_backward_data(s, dy.data(), weight.data(), dx->data());
    }
}

void relu_forward(const Tensor& x, Tensor& y) {
    if (&y != &x) ensure(y, x.shape());
    const float* a = x.data();
    float* b = y.data();
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) b[i] = a[i] > 0.0f ? a[i] : 0.0f;
}

void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
    if (&dx != &dy) ensure(dx, dy.shape());
    const float* o = y.data();
    const float* g = dy.data();
    float* d = dx.data();
    const int64_t n = dy.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) d[i] = o[i] > 0.0f ? g[i] : 0.0f;
}

void upsample2_forward(const Tensor& x, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
    ensure(y, {n, c, 2 * h, 2 * w});
    const float* a = x.data();
    float* b = y.data();
#pragma omp parallel for schedule(static) if (n * c > 64)
    for (int64_t p = 0; p < n * c; ++p) {
        const float* src = a + p * h * w;
        float* dst = b + p * 4 * h * w;
        for (int64_t i = 0; i < h; ++i) {
            float* r0 = dst + (2 * i) * 2 * w;
            for (int64_t j = 0; j < w; ++j) r0[2 * j] = r0[2 * j + 1] = src[i * w + j];
            std::memcpy(r0 + 2 * w, r0, sizeof(float) * static_cast<size_t>(2 * w));
        }
    }
}

void upsample2_backward(const Tensor& dy, Tensor& dx) {
    const int64_t n = dy.dim(0), c = dy.dim(1), h = dy.dim(2) / 2, w = dy.dim(3) / 2;
    ensure(dx, {n, c, h, w});
    const float* g = dy.data();
    float* d = dx.data();
#pragma omp parallel for schedule(static) if (n * c > 64)
    for (int64_t p = 0; p < n * c; ++p) {
        const float* src = g + p * 4 * h * w;
        float* dst = d + p * h * w;
        for (int64_t i = 0; i < h; ++i) {
            const float* r0 = src + (2 * i) * 2 * w;
            const float* r1 = r0 + 2 * w;
            for (int64_t j = 0; j < w; ++j) dst[i * w + j] = (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
        }
    }
}

void pixel_unshuffle2(const Tensor& x, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2) / 2, w = x.dim(3) / 2;
    check(x.dim(2) % 2 == 0 && x.dim(3) % 2 == 0, "pixel unshuffle", "odd spatial size " + x.shape_str());
    ensure(y, {n, 4 * c, h, w});
    const float* a = x.data();
    float* b = y.data();
    for (int64_t p = 0; p < n * c; ++p)
        for (int64_t di = 0; di < 2; ++di)
            for (int64_t dj = 0; dj < 2; ++dj) {
                float* dst = b + (p * 4 + di * 2 + dj) * h * w;
                const float* src = a + p * 4 * h * w;
                for (int64_t i = 0; i < h; ++i)
                    for (int64_t j = 0; j < w; ++j) dst[i * w + j] = src[(2 * i + di) * 2 * w + 2 * j + dj];
            }
}

void pixel_shuffle2(const Tensor& x, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1) / 4, h = x.dim(2), w = x.dim(3);
    check(x.dim(1) % 4 == 0, "pixel shuffle", "channels not a multiple of 4 in " + x.shape_str());
    ensure(y, {n, c, 2 * h, 2 * w});
    const float* a = x.data();
    float* b = y.data();
    for (int64_t p = 0; p < n * c; ++p)
        for (int64_t di = 0; di < 2; ++di)
            for (int64_t dj = 0; dj < 2; ++dj) {
                const float* src = a + (p * 4 + di * 2 + dj) * h * w;
                float* dst = b + p * 4 * h * w;
                for (int64_t i = 0; i < h; ++i)
                    for (int64_t j = 0; j < w; ++j) dst[(2 * i + di) * 2 * w + 2 * j + dj] = src[i * w + j];
            }
}

void add(const Tensor& a, const Tensor& b, Tensor& y) {
    check(a.shape() == b.shape(), "add", "shape mismatch " + a.shape_str() + " vs " + b.shape_str());
    if (&y != &a) ensure(y, a.shape());
    const float* p = a.data();
    const float* q = b.data();
    float* o = y.data();
    const int64_t n = a.numel();
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) o[i] = p[i] + q[i];
}

void add_inplace(Tensor& y, const Tensor& x) { add(y, x, y); }

void copy(const Tensor& x, Tensor& y) {
    ensure(y, x.shape());
    std::memcpy(y.data(), x.data(), sizeof(float) * static_cast<size_t>(x.numel()));
}

ResBlock::ResBlock(const std::string& name, int64_t ch)
    : conv_a(name + ".conv_a", ch, ch, 3, 1, 1), conv_b(name + ".conv_b", ch, ch, 1, 1, 0) {}

void ResBlock::forward(Backend& be, const Tensor& x, Tensor& y) {
    copy(x, in);
    relu_forward(in, t1);
    conv_a.forward(be, t1, t2);
    relu_forward(t2, t3);
    conv_b.forward(be, t3, t4);
    add(in, t4, y);
}

void ResBlock::backward(Backend& be, const Tensor& dy, Tensor& dx) {
    Tensor& d3 = scratch3;
    Tensor& d1 = scratch1;
    conv_b.backward(be, t3, dy, &d3);
    relu_backward(t3, d3, d3);
    conv_a.backward(be, t1, d3, &d1);
    relu_backward(t1, d1, d1);
    add(dy, d1, dx);
}

double mse_loss(const Tensor& pred, const Tensor& target, Tensor* dpred, double scale) {
    check(pred.shape() == target.shape(), "mse loss", "shape mismatch");
    const int64_t n = pred.numel();
    const float* p = pred.data();
    const float* t = target.data();
    if (dpred) ensure(*dpred, pred.shape());
    float* d = dpred ? dpred->data() : nullptr;
    const float g = static_cast<float>(2.0 * scale / static_cast<double>(n));
    double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
        const float e = p[i] - t[i];
        sum += static_cast<double>(e) * e;
        if (d) d[i] = g * e;
    }
    return sum / static_cast<double>(n);
}

double l1_loss(const Tensor& pred, const Tensor& target, Tensor* dpred, double scale) {
    check(pred.shape() == target.shape(), "l1 loss", "shape mismatch");
    const int64_t n = pred.numel();
    const float* p = pred.data();
    const float* t = target.data();
    if (dpred) ensure(*dpred, pred.shape());
    float* d = dpred ? dpred->data() : nullptr;
    const float g = static_cast<float>(scale / static_cast<double>(n));
    double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
        const float e = p[i] - t[i];
        sum += std::fabs(static_cast<double>(e));
        if (d) d[i] = e > 0.0f ? g : (e < 0.0f ? -g : 0.0f);
    }
    return sum / static_cast<double>(n);
}

void nchw_to_rows(const Tensor& x, Tensor& rows) {
    const int64_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3);
    ensure(rows, {n * hw, c});
    const float* a = x.data();
    float* r = rows.data();
    for (int64_t b = 0; b < n; ++b)
        for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t p = 0; p < hw; ++p) r[(b * hw + p) * c + ch] = a[(b * c + ch) * hw + p];
}

void rows_to_nchw(const Tensor& rows, int64_t n, int64_t h, int64_t w, Tensor& x) {
    const int64_t c = rows.dim(1), hw = h * w;
    ensure(x, {n, c, h, w});
    const float* r = rows.data();
    float* a = x.data();
    for (int64_t b = 0; b < n; ++b)
        for (int64_t ch = 0; ch < c; ++ch)
            for (int64_t p = 0; p < hw; ++p) a[(b * c + ch) * hw + p] = r[(b * hw + p) * c + ch];
}

void nearest_codes(Backend& be, const Tensor& z, const Tensor& codebook, Tensor& dist, std::vector<int32_t>& idx) {
    const int64_t m = z.dim(0), c = z.dim(1), k = codebook.dim(0);
    check(codebook.dim(1) == c, "quantizer", "code dimension mismatch");
    ensure(dist, {m, k});
    // dist = -2 z e^T, then + |e|^2 (|z|^2 is constant per row and does not change the argmin).
    be.matmul(z.mat(), false, codebook.mat(), true, dist.mat(), -2.0f, 0.0f);
    std::vector<float> enorm(static_cast<size_t>(k));
    const float* e = codebook.data();
    for (int64_t j = 0; j < k; ++j) {
        double s = 0;
        for (int64_t q = 0; q < c; ++q) s += static_cast<double>(e[j * c + q]) * e[j * c + q];
        enorm[static_cast<size_t>(j)] = static_cast<float>(s);
    }
    idx.resize(static_cast<size_t>(m));
    const float* d = dist.data();
#pragma omp parallel for schedule(static) if (m > 1024)
    for (int64_t i = 0; i < m; ++i) {
        float best = std::numeric_limits<float>::infinity();
        int32_t arg = 0;
        const float* row = d + i * k;
        for (int64_t j = 0; j < k; ++j) {
            const float v = row[j] + enorm[static_cast<size_t>(j)];
            if (v < best) { best = v; arg = static_cast<int32_t>(j); }
        }
        idx[static_cast<size_t>(i)] = arg;
    }
}

} // namespace magnets::nn
