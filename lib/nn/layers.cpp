#include "nn/layers.h"

#include "nn/image_ops.h"

#include "magnets/error.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace magnets::nn {

void ensure(Tensor& t, const std::vector<int64_t>& shape) {
    if (t.shape() != shape || !t.data()) t.resize(shape);
}

int64_t DTensor::numel() const {
    int64_t n = shape.empty() ? 0 : 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string DTensor::shape_str() const {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

void DTensor::ensure(Backend& be, const std::vector<int64_t>& s) {
    buf.bind(be);
    shape = s;
    buf.grow(static_cast<size_t>(std::max<int64_t>(numel(), 1)));
}

Conv2d::Conv2d(std::string n, int64_t ci, int64_t co, int64_t kk, int64_t s, int64_t p)
    : name(std::move(n)), c_in(ci), c_out(co), k(kk), stride(s), pad(p), weight({co, ci, kk, kk}),
      bias({co}), dweight({co, ci, kk, kk}), dbias({co}) {}

Conv2dShape Conv2d::shape_for(const std::vector<int64_t>& x) const {
    if (x.size() != 4 || x[1] != c_in) {
        std::string str = "[";
        for (size_t i = 0; i < x.size(); ++i) str += (i ? ", " : "") + std::to_string(x[i]);
        throw Error("conv " + name, {}, "input " + str + "] has wrong channels (expected " + std::to_string(c_in) + ")");
    }
    Conv2dShape s;
    s.n = x[0]; s.c_in = c_in; s.h = x[2]; s.w = x[3];
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
    Conv2dShape s = shape_for(x.shape());
    ensure(y, {s.n, c_out, s.out_h(), s.out_w()});
    be.conv2d_forward(s, x.data(), weight.data(), bias.data(), y.data());
}

void Conv2d::forward(Backend& be, const DTensor& x, DTensor& y) const {
    Conv2dShape s = shape_for(x.shape);
    y.ensure(be, {s.n, c_out, s.out_h(), s.out_w()});
    be.conv2d_forward(s, x.data(), W(), B(), y.data());
}

void Conv2d::backward(Backend& be, const DTensor& x, const DTensor& dy, DTensor* dx) {
    Conv2dShape s = shape_for(x.shape);
    be.conv2d_backward_weights(s, x.data(), dy.data(), dW(), dB());
    if (dx) {
        dx->ensure(be, x.shape);
        be.conv2d_backward_data(s, dy.data(), W(), dx->data());
    }
}

void Conv2d::backward(Backend& be, const Tensor& x, const Tensor& dy, Tensor* dx) {
    Conv2dShape s = shape_for(x.shape());
    be.conv2d_backward_weights(s, x.data(), dy.data(), dweight.data(), dbias.data());
    if (dx) {
        ensure(*dx, x.shape());
        be.conv2d_backward_data(s, dy.data(), weight.data(), dx->data());
    }
}

// ---- host loops (nn/image_ops.h) ---------------------------------------------------

namespace img {

void relu(const float* a, float* b, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) b[i] = a[i] > 0.0f ? a[i] : 0.0f;
}

void relu_backward(const float* o, const float* g, float* d, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) d[i] = o[i] > 0.0f ? g[i] : 0.0f;
}

void upsample2(const float* a, float* b, int64_t planes, int64_t h, int64_t w) {
#pragma omp parallel for schedule(static) if (planes > 64)
    for (int64_t p = 0; p < planes; ++p) {
        const float* src = a + p * h * w;
        float* dst = b + p * 4 * h * w;
        for (int64_t i = 0; i < h; ++i) {
            float* r0 = dst + (2 * i) * 2 * w;
            for (int64_t j = 0; j < w; ++j) r0[2 * j] = r0[2 * j + 1] = src[i * w + j];
            std::memcpy(r0 + 2 * w, r0, sizeof(float) * static_cast<size_t>(2 * w));
        }
    }
}

void upsample2_backward(const float* g, float* d, int64_t planes, int64_t h, int64_t w) {
#pragma omp parallel for schedule(static) if (planes > 64)
    for (int64_t p = 0; p < planes; ++p) {
        const float* src = g + p * 4 * h * w;
        float* dst = d + p * h * w;
        for (int64_t i = 0; i < h; ++i) {
            const float* r0 = src + (2 * i) * 2 * w;
            const float* r1 = r0 + 2 * w;
            for (int64_t j = 0; j < w; ++j) dst[i * w + j] = (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
        }
    }
}

void pixel_unshuffle2(const float* a, float* b, int64_t n, int64_t c, int64_t h, int64_t w) {
#pragma omp parallel for schedule(static) if (n * c > 64)
    for (int64_t p = 0; p < n * c; ++p)
        for (int64_t di = 0; di < 2; ++di)
            for (int64_t dj = 0; dj < 2; ++dj) {
                float* dst = b + (p * 4 + di * 2 + dj) * h * w;
                const float* src = a + p * 4 * h * w;
                for (int64_t i = 0; i < h; ++i)
                    for (int64_t j = 0; j < w; ++j) dst[i * w + j] = src[(2 * i + di) * 2 * w + 2 * j + dj];
            }
}

void pixel_shuffle2(const float* a, float* b, int64_t n, int64_t c, int64_t h, int64_t w) {
#pragma omp parallel for schedule(static) if (n * c > 64)
    for (int64_t p = 0; p < n * c; ++p)
        for (int64_t di = 0; di < 2; ++di)
            for (int64_t dj = 0; dj < 2; ++dj) {
                const float* src = a + (p * 4 + di * 2 + dj) * h * w;
                float* dst = b + p * 4 * h * w;
                for (int64_t i = 0; i < h; ++i)
                    for (int64_t j = 0; j < w; ++j) dst[(2 * i + di) * 2 * w + 2 * j + dj] = src[i * w + j];
            }
}

void transpose_batched(const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (batches * rows * cols > 65536)
    for (int64_t b = 0; b < batches; ++b) {
        const float* s = src + b * rows * cols;
        float* d = dst + b * rows * cols;
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) d[j * rows + i] = s[i * cols + j];
    }
}

double mse(const float* p, const float* t, int64_t n, double scale, float* d) {
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

double l1(const float* p, const float* t, int64_t n, double scale, float* d) {
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

double psnr_sum(const float* p, const float* t, int64_t images, int64_t per) {
    double psnr = 0.0;
    for (int64_t b = 0; b < images; ++b) {
        double se = 0.0;
        const float* pb = p + b * per;
        const float* tb = t + b * per;
        for (int64_t i = 0; i < per; ++i) {
            const double e = std::min(1.0f, std::max(0.0f, pb[i])) - tb[i];
            se += e * e;
        }
        psnr += 10.0 * std::log10(1.0 / std::max(se / static_cast<double>(per), 1e-10));
    }
    return psnr;
}

double commit_backward(const float* ze, const float* zq, const float* dzq, float* dze, int64_t n, float g) {
    double commit = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const float e = ze[i] - zq[i];
        commit += static_cast<double>(e) * e;
        dze[i] = dzq[i] + g * e;
    }
    return commit;
}

void argmin_codes(const float* d, const float* e, int64_t m, int64_t k, int64_t c, int32_t* idx) {
    std::vector<float> enorm(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) {
        double s = 0;
        for (int64_t q = 0; q < c; ++q) s += static_cast<double>(e[j * c + q]) * e[j * c + q];
        enorm[static_cast<size_t>(j)] = static_cast<float>(s);
    }
#pragma omp parallel for schedule(static) if (m > 1024)
    for (int64_t i = 0; i < m; ++i) {
        float best = std::numeric_limits<float>::infinity();
        int32_t arg = 0;
        const float* row = d + i * k;
        for (int64_t j = 0; j < k; ++j) {
            const float v = row[j] + enorm[static_cast<size_t>(j)];
            if (v < best) { best = v; arg = static_cast<int32_t>(j); }
        }
        idx[i] = arg;
    }
}

void zero_pad(const float* src, float* dst, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw) {
    const int64_t H = h + 2 * ph, W = w + 2 * pw;
#pragma omp parallel for schedule(static) if (planes > 16)
    for (int64_t p = 0; p < planes; ++p) {
        float* d = dst + p * H * W;
        std::fill(d, d + H * W, 0.0f);
        for (int64_t i = 0; i < h; ++i)
            std::memcpy(d + (i + ph) * W + pw, src + (p * h + i) * w, sizeof(float) * static_cast<size_t>(w));
    }
}

void max_pool3(const float* src, float* dst, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p) {
    const int64_t oh = (h + 2 * p - 3) / s + 1, ow = (w + 2 * p - 3) / s + 1;
#pragma omp parallel for schedule(static) if (planes > 16)
    for (int64_t q = 0; q < planes; ++q) {
        const float* a = src + q * h * w;
        float* b = dst + q * oh * ow;
        for (int64_t i = 0; i < oh; ++i) {
            const int64_t y0 = std::max<int64_t>(i * s - p, 0), y1 = std::min<int64_t>(i * s - p + 3, h);
            for (int64_t j = 0; j < ow; ++j) {
                const int64_t x0 = std::max<int64_t>(j * s - p, 0), x1 = std::min<int64_t>(j * s - p + 3, w);
                float m = -std::numeric_limits<float>::infinity();
                for (int64_t yy = y0; yy < y1; ++yy)
                    for (int64_t xx = x0; xx < x1; ++xx) m = std::max(m, a[yy * w + xx]);
                b[i * ow + j] = m;
            }
        }
    }
}

void avg_pool3(const float* src, float* dst, int64_t planes, int64_t h, int64_t w) {
#pragma omp parallel for schedule(static) if (planes > 16)
    for (int64_t q = 0; q < planes; ++q) {
        const float* a = src + q * h * w;
        float* b = dst + q * h * w;
        for (int64_t i = 0; i < h; ++i) {
            const int64_t y0 = std::max<int64_t>(i - 1, 0), y1 = std::min<int64_t>(i + 2, h);
            for (int64_t j = 0; j < w; ++j) {
                const int64_t x0 = std::max<int64_t>(j - 1, 0), x1 = std::min<int64_t>(j + 2, w);
                float sum = 0.0f;
                for (int64_t yy = y0; yy < y1; ++yy)
                    for (int64_t xx = x0; xx < x1; ++xx) sum += a[yy * w + xx];
                b[i * w + j] = sum / static_cast<float>((y1 - y0) * (x1 - x0));
            }
        }
    }
}

void mean_planes(const float* src, float* dst, int64_t planes, int64_t plane) {
#pragma omp parallel for schedule(static) if (planes * plane > 65536)
    for (int64_t q = 0; q < planes; ++q) {
        double s = 0.0;
        for (int64_t i = 0; i < plane; ++i) s += src[q * plane + i];
        dst[q] = static_cast<float>(s / static_cast<double>(plane));
    }
}

void copy2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t i = 0; i < rows; ++i)
        std::memcpy(dst + i * ld_dst, src + i * ld_src, sizeof(float) * static_cast<size_t>(cols));
}

namespace {
struct Taps {
    std::vector<int64_t> i0, i1;
    std::vector<float> l0, l1;
};
// Bilinear taps as torch's F.interpolate(mode="bilinear", align_corners=False,
// antialias=False): src = (dst + 0.5) * in / out - 0.5, clamped below at 0.
Taps resize_taps(int64_t in, int64_t out) {
    Taps t;
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    for (int64_t o = 0; o < out; ++o) {
        float src = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
        if (src < 0.0f) src = 0.0f;
        const int64_t a = std::min<int64_t>(static_cast<int64_t>(src), in - 1);
        const int64_t b = a + (a < in - 1 ? 1 : 0);
        const float l1 = src - static_cast<float>(a);
        t.i0.push_back(a);
        t.i1.push_back(b);
        t.l1.push_back(l1);
        t.l0.push_back(1.0f - l1);
    }
    return t;
}
} // namespace

void resize_bilinear(const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y, int64_t c_out,
                     int64_t oh, int64_t ow, float mul, float add) {
    const Taps ty = resize_taps(h, oh), tx = resize_taps(w, ow);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < c_out; ++c) {
            const float* src = x + (i * c_in + (c_in == 1 ? 0 : c)) * h * w;
            float* dst = y + (i * c_out + c) * oh * ow;
            for (int64_t oy = 0; oy < oh; ++oy) {
                const float* r0 = src + ty.i0[static_cast<size_t>(oy)] * w;
                const float* r1 = src + ty.i1[static_cast<size_t>(oy)] * w;
                const float h0 = ty.l0[static_cast<size_t>(oy)], h1 = ty.l1[static_cast<size_t>(oy)];
                for (int64_t ox = 0; ox < ow; ++ox) {
                    const int64_t a = tx.i0[static_cast<size_t>(ox)], b = tx.i1[static_cast<size_t>(ox)];
                    const float w0 = tx.l0[static_cast<size_t>(ox)], w1 = tx.l1[static_cast<size_t>(ox)];
                    const float v = h0 * (w0 * r0[a] + w1 * r0[b]) + h1 * (w0 * r1[a] + w1 * r1[b]);
                    dst[oy * ow + ox] = mul * v + add;
                }
            }
        }
}

} // namespace img

// ---- host tensors ------------------------------------------------------------------

void relu_forward(const Tensor& x, Tensor& y) {
    if (&y != &x) ensure(y, x.shape());
    img::relu(x.data(), y.data(), x.numel());
}

void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
    if (&dx != &dy) ensure(dx, dy.shape());
    img::relu_backward(y.data(), dy.data(), dx.data(), dy.numel());
}

void upsample2_forward(const Tensor& x, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
    ensure(y, {n, c, 2 * h, 2 * w});
    img::upsample2(x.data(), y.data(), n * c, h, w);
}

void upsample2_backward(const Tensor& dy, Tensor& dx) {
    const int64_t n = dy.dim(0), c = dy.dim(1), h = dy.dim(2) / 2, w = dy.dim(3) / 2;
    ensure(dx, {n, c, h, w});
    img::upsample2_backward(dy.data(), dx.data(), n * c, h, w);
}

void pixel_unshuffle2(const Tensor& x, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2) / 2, w = x.dim(3) / 2;
    check(x.dim(2) % 2 == 0 && x.dim(3) % 2 == 0, "pixel unshuffle", "odd spatial size " + x.shape_str());
    ensure(y, {n, 4 * c, h, w});
    img::pixel_unshuffle2(x.data(), y.data(), n, c, h, w);
}

void pixel_shuffle2(const Tensor& x, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1) / 4, h = x.dim(2), w = x.dim(3);
    check(x.dim(1) % 4 == 0, "pixel shuffle", "channels not a multiple of 4 in " + x.shape_str());
    ensure(y, {n, c, 2 * h, 2 * w});
    img::pixel_shuffle2(x.data(), y.data(), n, c, h, w);
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

void ResBlock::forward(Backend& be, const DTensor& x, DTensor& y) {
    t1.ensure(be, x.shape);
    be.relu(x.data(), t1.data(), x.numel());
    conv_a.forward(be, t1, t2);
    t3.ensure(be, t2.shape);
    be.relu(t2.data(), t3.data(), t2.numel());
    conv_b.forward(be, t3, y);
    be.add_into(y.data(), x.data(), y.numel()); // x + block(x): the float sum is the same either way round
}

void ResBlock::backward(Backend& be, const DTensor& dy, DTensor& dx) {
    DTensor& d3 = scratch3;
    DTensor& d1 = scratch1;
    conv_b.backward(be, t3, dy, &d3);
    be.relu_backward(t3.data(), d3.data(), d3.data(), d3.numel());
    conv_a.backward(be, t1, d3, &d1);
    be.relu_backward(t1.data(), d1.data(), d1.data(), d1.numel());
    dx.ensure(be, dy.shape);
    be.copy(dx.data(), dy.data(), static_cast<size_t>(dy.numel()));
    be.add_into(dx.data(), d1.data(), dx.numel());
}

double mse_loss(const Tensor& pred, const Tensor& target, Tensor* dpred, double scale) {
    check(pred.shape() == target.shape(), "mse loss", "shape mismatch");
    if (dpred) ensure(*dpred, pred.shape());
    return img::mse(pred.data(), target.data(), pred.numel(), scale, dpred ? dpred->data() : nullptr);
}

double l1_loss(const Tensor& pred, const Tensor& target, Tensor* dpred, double scale) {
    check(pred.shape() == target.shape(), "l1 loss", "shape mismatch");
    if (dpred) ensure(*dpred, pred.shape());
    return img::l1(pred.data(), target.data(), pred.numel(), scale, dpred ? dpred->data() : nullptr);
}

void nearest_codes(Backend& be, const Tensor& z, const Tensor& codebook, Tensor& dist, std::vector<int32_t>& idx) {
    const int64_t m = z.dim(0), c = z.dim(1), k = codebook.dim(0);
    check(codebook.dim(1) == c, "quantizer", "code dimension mismatch");
    ensure(dist, {m, k});
    idx.resize(static_cast<size_t>(m));
    be.nearest_codes(z.data(), m, codebook.data(), k, c, dist.data(), idx.data());
}

} // namespace magnets::nn
