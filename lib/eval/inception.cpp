// eval/inception.cpp: Inception-v3, FID variant (see magnets/inception.h).
//
// The graph follows torchvision.models.inception_v3 with pytorch-fid's patches
// (FIDInceptionA/C/E_1/E_2). Every conv is BasicConv2d: conv (no bias) +
// BatchNorm(eps) + ReLU; BatchNorm is folded at load into w' = w * g and
// b' = beta - mean * g with g = gamma / sqrt(var + eps) (in double, then f32).
// Convs with unequal padding per axis (1x7 / 7x1 / 1x3 / 3x1 kernels) get an
// explicitly zero-padded copy of their input and run with pad 0, because
// Conv2dShape has one symmetric pad.
#include "magnets/inception.h"

#include "magnets/error.h"
#include "nn/layers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

namespace magnets {
namespace {

constexpr const char* inception_hint =
    "convert the weights with scripts/convert_inception.py (pytorch-fid's pt_inception-2015-12-05 .pth)";

struct ConvSpec {
    std::string name;
    int64_t c_in, c_out, kh, kw, stride, pad_h, pad_w;
};

void add(std::vector<ConvSpec>& v, const std::string& name, int64_t ci, int64_t co, int64_t kh, int64_t kw,
         int64_t stride = 1, int64_t ph = 0, int64_t pw = 0) {
    v.push_back({name, ci, co, kh, kw, stride, ph, pw});
}

// torchvision InceptionA .. InceptionE layer lists (names are state_dict prefixes).
void block_a(std::vector<ConvSpec>& v, const std::string& p, int64_t in, int64_t pool) {
    add(v, p + ".branch1x1", in, 64, 1, 1);
    add(v, p + ".branch5x5_1", in, 48, 1, 1);
    add(v, p + ".branch5x5_2", 48, 64, 5, 5, 1, 2, 2);
    add(v, p + ".branch3x3dbl_1", in, 64, 1, 1);
    add(v, p + ".branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
    add(v, p + ".branch3x3dbl_3", 96, 96, 3, 3, 1, 1, 1);
    add(v, p + ".branch_pool", in, pool, 1, 1);
}
void block_b(std::vector<ConvSpec>& v, const std::string& p, int64_t in) {
    add(v, p + ".branch3x3", in, 384, 3, 3, 2);
    add(v, p + ".branch3x3dbl_1", in, 64, 1, 1);
    add(v, p + ".branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
    add(v, p + ".branch3x3dbl_3", 96, 96, 3, 3, 2);
}
void block_c(std::vector<ConvSpec>& v, const std::string& p, int64_t in, int64_t c7) {
    add(v, p + ".branch1x1", in, 192, 1, 1);
    add(v, p + ".branch7x7_1", in, c7, 1, 1);
    add(v, p + ".branch7x7_2", c7, c7, 1, 7, 1, 0, 3);
    add(v, p + ".branch7x7_3", c7, 192, 7, 1, 1, 3, 0);
    add(v, p + ".branch7x7dbl_1", in, c7, 1, 1);
    add(v, p + ".branch7x7dbl_2", c7, c7, 7, 1, 1, 3, 0);
    add(v, p + ".branch7x7dbl_3", c7, c7, 1, 7, 1, 0, 3);
    add(v, p + ".branch7x7dbl_4", c7, c7, 7, 1, 1, 3, 0);
    add(v, p + ".branch7x7dbl_5", c7, 192, 1, 7, 1, 0, 3);
    add(v, p + ".branch_pool", in, 192, 1, 1);
}
void block_d(std::vector<ConvSpec>& v, const std::string& p, int64_t in) {
    add(v, p + ".branch3x3_1", in, 192, 1, 1);
    add(v, p + ".branch3x3_2", 192, 320, 3, 3, 2);
    add(v, p + ".branch7x7x3_1", in, 192, 1, 1);
    add(v, p + ".branch7x7x3_2", 192, 192, 1, 7, 1, 0, 3);
    add(v, p + ".branch7x7x3_3", 192, 192, 7, 1, 1, 3, 0);
    add(v, p + ".branch7x7x3_4", 192, 192, 3, 3, 2);
}
void block_e(std::vector<ConvSpec>& v, const std::string& p, int64_t in) {
    add(v, p + ".branch1x1", in, 320, 1, 1);
    add(v, p + ".branch3x3_1", in, 384, 1, 1);
    add(v, p + ".branch3x3_2a", 384, 384, 1, 3, 1, 0, 1);
    add(v, p + ".branch3x3_2b", 384, 384, 3, 1, 1, 1, 0);
    add(v, p + ".branch3x3dbl_1", in, 448, 1, 1);
    add(v, p + ".branch3x3dbl_2", 448, 384, 3, 3, 1, 1, 1);
    add(v, p + ".branch3x3dbl_3a", 384, 384, 1, 3, 1, 0, 1);
    add(v, p + ".branch3x3dbl_3b", 384, 384, 3, 1, 1, 1, 0);
    add(v, p + ".branch_pool", in, 192, 1, 1);
}

const std::vector<ConvSpec>& conv_specs() {
    static const std::vector<ConvSpec> specs = [] {
        std::vector<ConvSpec> v;
        add(v, "Conv2d_1a_3x3", 3, 32, 3, 3, 2);
        add(v, "Conv2d_2a_3x3", 32, 32, 3, 3);
        add(v, "Conv2d_2b_3x3", 32, 64, 3, 3, 1, 1, 1);
        add(v, "Conv2d_3b_1x1", 64, 80, 1, 1);
        add(v, "Conv2d_4a_3x3", 80, 192, 3, 3);
        block_a(v, "Mixed_5b", 192, 32);
        block_a(v, "Mixed_5c", 256, 64);
        block_a(v, "Mixed_5d", 288, 64);
        block_b(v, "Mixed_6a", 288);
        block_c(v, "Mixed_6b", 768, 128);
        block_c(v, "Mixed_6c", 768, 160);
        block_c(v, "Mixed_6d", 768, 160);
        block_c(v, "Mixed_6e", 768, 192);
        block_d(v, "Mixed_7a", 768);
        block_e(v, "Mixed_7b", 1280);
        block_e(v, "Mixed_7c", 2048);
        return v;
    }();
    return specs;
}

const char* const bn_parts[] = {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"};

struct FoldedConv {
    ConvSpec spec;
    Tensor w, b; // BatchNorm folded in: [c_out, c_in, kh, kw], [c_out]
};

// ---- elementwise helpers (NCHW, contiguous) ---------------------------------------

void relu_inplace(Tensor& t) { nn::relu_forward(t, t); }

// y [n, c, h + 2ph, w + 2pw] = x with a zero border.
void zero_pad(const Tensor& x, int64_t ph, int64_t pw, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
    const int64_t H = h + 2 * ph, W = w + 2 * pw;
    y = Tensor({n, c, H, W}); // zero-filled
    const float* src = x.data();
    float* dst = y.data();
#pragma omp parallel for schedule(static) if (n * c > 16)
    for (int64_t p = 0; p < n * c; ++p)
        for (int64_t i = 0; i < h; ++i)
            std::memcpy(dst + (p * H + i + ph) * W + pw, src + (p * h + i) * w, sizeof(float) * static_cast<size_t>(w));
}

// 3x3 max pool, stride s, padding p (padding never wins: as -inf), floor mode.
void max_pool3(const Tensor& x, int64_t s, int64_t p, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
    const int64_t oh = (h + 2 * p - 3) / s + 1, ow = (w + 2 * p - 3) / s + 1;
    y = Tensor({n, c, oh, ow});
    const float* src = x.data();
    float* dst = y.data();
#pragma omp parallel for schedule(static) if (n * c > 16)
    for (int64_t q = 0; q < n * c; ++q) {
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

// 3x3 average pool, stride 1, padding 1, count_include_pad=False (the divisor is
// the number of in-image elements: 9 inside, 6 on edges, 4 in corners).
void avg_pool3_same(const Tensor& x, Tensor& y) {
    const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
    y = Tensor({n, c, h, w});
    const float* src = x.data();
    float* dst = y.data();
#pragma omp parallel for schedule(static) if (n * c > 16)
    for (int64_t q = 0; q < n * c; ++q) {
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

// y [n, sum c_i, h, w] = channel concatenation of parts (same n, h, w).
void concat(const std::vector<const Tensor*>& parts, Tensor& y) {
    const int64_t n = parts[0]->dim(0), h = parts[0]->dim(2), w = parts[0]->dim(3);
    int64_t c = 0;
    for (const Tensor* t : parts) {
        check(t->dim(0) == n && t->dim(2) == h && t->dim(3) == w, "inception: concat",
              "branch shapes differ: " + parts[0]->shape_str() + " vs " + t->shape_str());
        c += t->dim(1);
    }
    y = Tensor({n, c, h, w});
    const int64_t plane = h * w;
    for (int64_t b = 0; b < n; ++b) {
        int64_t off = 0;
        for (const Tensor* t : parts) {
            const int64_t ct = t->dim(1);
            std::memcpy(y.data() + (b * c + off) * plane, t->data() + b * ct * plane,
                        sizeof(float) * static_cast<size_t>(ct * plane));
            off += ct;
        }
    }
}

// Bilinear resize as torch's F.interpolate(mode="bilinear", align_corners=False,
// antialias=False): src = (dst + 0.5) * in / out - 0.5, clamped below at 0.
struct Taps {
    std::vector<int64_t> i0, i1;
    std::vector<float> l0, l1;
};
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

struct InceptionV3::Impl {
    std::shared_ptr<Backend> be;
    std::map<std::string, FoldedConv> convs;
    std::string hash;
    StageHook hook;

    void stage(const std::string& name, const Tensor& t) const {
        if (hook) hook(name, t);
    }

    // y = relu(bn(conv(x))) with BatchNorm folded.
    void conv(const std::string& name, const Tensor& x, Tensor& y) const {
        const FoldedConv& c = convs.at(name);
        const ConvSpec& s = c.spec;
        check(x.rank() == 4 && x.dim(1) == s.c_in, "inception: " + name,
              "input " + x.shape_str() + " does not have " + std::to_string(s.c_in) + " channels");
        Tensor padded;
        const Tensor* in = &x;
        int64_t pad = s.pad_h;
        if (s.pad_h != s.pad_w) {
            zero_pad(x, s.pad_h, s.pad_w, padded);
            in = &padded;
            pad = 0;
        }
        Conv2dShape cs;
        cs.n = in->dim(0); cs.c_in = s.c_in; cs.h = in->dim(2); cs.w = in->dim(3);
        cs.c_out = s.c_out; cs.kh = s.kh; cs.kw = s.kw; cs.stride = s.stride; cs.pad = pad;
        y = Tensor({cs.n, cs.c_out, cs.out_h(), cs.out_w()});
        be->conv2d_forward(cs, in->data(), c.w.data(), c.b.data(), y.data());
        relu_inplace(y);
    }

    Tensor chain(const Tensor& x, std::initializer_list<const char*> names, const std::string& prefix) const {
        Tensor cur, next;
        const Tensor* in = &x;
        for (const char* n : names) {
            conv(prefix + "." + n, *in, next);
            cur = std::move(next);
            next = Tensor();
            in = &cur;
        }
        return cur;
    }

    // FIDInceptionA (Mixed_5b..5d).
    void block_a(const std::string& p, const Tensor& x, Tensor& y) const {
        Tensor b1, b5, b3, pooled, bp;
        conv(p + ".branch1x1", x, b1);
        b5 = chain(x, {"branch5x5_1", "branch5x5_2"}, p);
        b3 = chain(x, {"branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"}, p);
        avg_pool3_same(x, pooled);
        conv(p + ".branch_pool", pooled, bp);
        concat({&b1, &b5, &b3, &bp}, y);
    }
    // InceptionB (Mixed_6a).
    void block_b(const std::string& p, const Tensor& x, Tensor& y) const {
        Tensor b3, bd, pooled;
        conv(p + ".branch3x3", x, b3);
        bd = chain(x, {"branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"}, p);
        max_pool3(x, 2, 0, pooled);
        concat({&b3, &bd, &pooled}, y);
    }
    // FIDInceptionC (Mixed_6b..6e).
    void block_c(const std::string& p, const Tensor& x, Tensor& y) const {
        Tensor b1, b7, bd, pooled, bp;
        conv(p + ".branch1x1", x, b1);
        b7 = chain(x, {"branch7x7_1", "branch7x7_2", "branch7x7_3"}, p);
        bd = chain(x, {"branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"}, p);
        avg_pool3_same(x, pooled);
        conv(p + ".branch_pool", pooled, bp);
        concat({&b1, &b7, &bd, &bp}, y);
    }
    // InceptionD (Mixed_7a).
    void block_d(const std::string& p, const Tensor& x, Tensor& y) const {
        Tensor b3, b7, pooled;
        b3 = chain(x, {"branch3x3_1", "branch3x3_2"}, p);
        b7 = chain(x, {"branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"}, p);
        max_pool3(x, 2, 0, pooled);
        concat({&b3, &b7, &pooled}, y);
    }
    // FIDInceptionE_1 (Mixed_7b, average pool) and FIDInceptionE_2 (Mixed_7c, max pool).
    void block_e(const std::string& p, const Tensor& x, bool max_pool_branch, Tensor& y) const {
        Tensor b1, t, a, b, b3, bd, pooled, bp;
        conv(p + ".branch1x1", x, b1);
        conv(p + ".branch3x3_1", x, t);
        conv(p + ".branch3x3_2a", t, a);
        conv(p + ".branch3x3_2b", t, b);
        concat({&a, &b}, b3);
        t = chain(x, {"branch3x3dbl_1", "branch3x3dbl_2"}, p);
        conv(p + ".branch3x3dbl_3a", t, a);
        conv(p + ".branch3x3dbl_3b", t, b);
        concat({&a, &b}, bd);
        a = Tensor(); b = Tensor(); t = Tensor();
        if (max_pool_branch)
            max_pool3(x, 1, 1, pooled);
        else
            avg_pool3_same(x, pooled);
        conv(p + ".branch_pool", pooled, bp);
        concat({&b1, &b3, &bd, &bp}, y);
    }

    // x [b, 3, 299, 299] in [-1, 1] -> out [b, 2048].
    void forward(Tensor x, float* out) const {
        Tensor y;
        stage("input", x);
        auto step = [&](const std::string& name, auto&& fn) {
            fn(x, y);
            x = std::move(y);
            y = Tensor();
            stage(name, x);
        };
        for (const char* n : {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"})
            step(n, [&](const Tensor& a, Tensor& b) { conv(n, a, b); });
        step("maxpool1", [&](const Tensor& a, Tensor& b) { max_pool3(a, 2, 0, b); });
        for (const char* n : {"Conv2d_3b_1x1", "Conv2d_4a_3x3"})
            step(n, [&](const Tensor& a, Tensor& b) { conv(n, a, b); });
        step("maxpool2", [&](const Tensor& a, Tensor& b) { max_pool3(a, 2, 0, b); });
        for (const char* n : {"Mixed_5b", "Mixed_5c", "Mixed_5d"})
            step(n, [&](const Tensor& a, Tensor& b) { block_a(n, a, b); });
        step("Mixed_6a", [&](const Tensor& a, Tensor& b) { block_b("Mixed_6a", a, b); });
        for (const char* n : {"Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"})
            step(n, [&](const Tensor& a, Tensor& b) { block_c(n, a, b); });
        step("Mixed_7a", [&](const Tensor& a, Tensor& b) { block_d("Mixed_7a", a, b); });
        step("Mixed_7b", [&](const Tensor& a, Tensor& b) { block_e("Mixed_7b", a, false, b); });
        step("Mixed_7c", [&](const Tensor& a, Tensor& b) { block_e("Mixed_7c", a, true, b); });

        // Adaptive average pool to 1x1 (a mean over the 8x8 map for 299 inputs).
        const int64_t n = x.dim(0), c = x.dim(1), plane = x.dim(2) * x.dim(3);
        check(c == feature_dim, "inception: final pool", "expected 2048 channels, got " + x.shape_str());
        Tensor pooled({n, c, 1, 1});
        const float* src = x.data();
        for (int64_t q = 0; q < n * c; ++q) {
            double s = 0.0;
            for (int64_t i = 0; i < plane; ++i) s += src[q * plane + i];
            pooled.data()[q] = static_cast<float>(s / static_cast<double>(plane));
        }
        stage("avgpool", pooled);
        std::memcpy(out, pooled.data(), sizeof(float) * static_cast<size_t>(n * c));
    }
};

InceptionV3::InceptionV3(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InceptionV3::~InceptionV3() = default;
InceptionV3::InceptionV3(InceptionV3&&) noexcept = default;
InceptionV3& InceptionV3::operator=(InceptionV3&&) noexcept = default;

Backend& InceptionV3::backend() { return *impl_->be; }
const std::string& InceptionV3::hash() const { return impl_->hash; }
void InceptionV3::set_stage_hook(StageHook hook) { impl_->hook = std::move(hook); }

std::vector<std::pair<std::string, std::vector<int64_t>>> InceptionV3::weight_shapes() {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    for (const ConvSpec& s : conv_specs()) {
        out.push_back({s.name + ".conv.weight", {s.c_out, s.c_in, s.kh, s.kw}});
        for (const char* part : bn_parts) out.push_back({s.name + "." + part, {s.c_out}});
    }
    return out;
}

InceptionV3 InceptionV3::load(const std::string& path, std::shared_ptr<Backend> backend) {
    Checkpoint ck;
    try {
        ck = read_checkpoint(path, inception_format, inception_format_version, false);
    } catch (const Error& e) { // add how to get such a file
        throw Error(e.summary(), e.path(), e.why(), (e.hint().empty() ? "" : e.hint() + "; ") + inception_hint);
    }
    return from_checkpoint(ck, std::move(backend), path);
}

InceptionV3 InceptionV3::from_checkpoint(const Checkpoint& ck, std::shared_ptr<Backend> backend,
                                         const std::string& path) {
    check(backend != nullptr, "inception: no backend", "a null backend was passed");
    const std::string be_name = backend->name();
    if (be_name != "ref" && be_name != "onednn")
        throw Error("inception: unsupported backend '" + be_name + "'", {},
                    "the FID network runs pools and padding on host memory", "use the ref or onednn backend");
    const std::string what = "invalid " + std::string(inception_format) + " file";
    if (ck.format != inception_format)
        throw Error(what, path, "its format is '" + ck.format + "', expected '" + inception_format + "'",
                    inception_hint);
    const std::string variant = attr_string(ck.attrs, "variant", path);
    if (variant != "fid")
        throw Error(what, path, "variant '" + variant + "' is not supported (only 'fid')", inception_hint);
    const double eps = attr_double(ck.attrs, "bn_eps", path);
    if (!(eps > 0.0) || !std::isfinite(eps))
        throw Error(what, path, "bn_eps " + attr_to_string(ck.attrs.at("bn_eps")) + " is not positive", inception_hint);

    // Everything the graph needs, present and of the right shape.
    std::map<std::string, Tensor> used;
    for (const auto& [name, shape] : weight_shapes()) {
        auto it = ck.weights.find(name);
        if (it == ck.weights.end())
            throw Error(what, path, "tensor '" + name + "' is missing", inception_hint);
        if (it->second.shape() != shape) {
            std::string want = "[";
            for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
            throw Error(what, path,
                        "tensor '" + name + "' has shape " + it->second.shape_str() + ", expected " + want + "]",
                        inception_hint);
        }
        Tensor t = it->second.is_contiguous() ? it->second : it->second.clone();
        for (int64_t i = 0; i < t.numel(); ++i)
            if (!std::isfinite(t.data()[i]))
                throw Error(what, path, "tensor '" + name + "' has non-finite values", inception_hint);
        used.emplace(name, std::move(t));
    }

    auto impl = std::make_unique<Impl>();
    impl->be = std::move(backend);
    impl->hash = weights_hash(used);
    for (const ConvSpec& s : conv_specs()) {
        const Tensor& w = used.at(s.name + ".conv.weight");
        const float* gamma = used.at(s.name + ".bn.weight").data();
        const float* beta = used.at(s.name + ".bn.bias").data();
        const float* mean = used.at(s.name + ".bn.running_mean").data();
        const float* var = used.at(s.name + ".bn.running_var").data();
        FoldedConv f;
        f.spec = s;
        f.w = Tensor({s.c_out, s.c_in, s.kh, s.kw});
        f.b = Tensor({s.c_out});
        const int64_t per_out = s.c_in * s.kh * s.kw;
        for (int64_t o = 0; o < s.c_out; ++o) {
            if (!(static_cast<double>(var[o]) + eps > 0.0))
                throw Error(what, path, "tensor '" + s.name + ".bn.running_var' has a negative value", inception_hint);
            const double g = static_cast<double>(gamma[o]) / std::sqrt(static_cast<double>(var[o]) + eps);
            for (int64_t i = 0; i < per_out; ++i)
                f.w.data()[o * per_out + i] = static_cast<float>(static_cast<double>(w.data()[o * per_out + i]) * g);
            f.b.data()[o] = static_cast<float>(static_cast<double>(beta[o]) - static_cast<double>(mean[o]) * g);
        }
        impl->convs.emplace(s.name, std::move(f));
    }
    return InceptionV3(std::move(impl));
}

void InceptionV3::features(const float* images, int64_t n, int64_t h, int64_t w, int64_t channels, float* out,
                           int64_t batch) {
    check(n >= 0, "inception features", "negative image count " + std::to_string(n));
    if (n == 0) return;
    check(images != nullptr && out != nullptr, "inception features", "null images or output buffer");
    check(h > 0 && w > 0, "inception features",
          "image size " + std::to_string(h) + "x" + std::to_string(w) + " is not positive");
    check(channels == 1 || channels == 3, "inception features",
          std::to_string(channels) + " channels (expected 1 gray or 3 RGB)", "convert other layouts first");
    check(batch > 0, "inception features", "batch " + std::to_string(batch) + " is not positive");

    const Taps ty = resize_taps(h, input_size), tx = resize_taps(w, input_size);
    const int64_t S = input_size;
    for (int64_t start = 0; start < n; start += batch) {
        const int64_t b = std::min(batch, n - start);
        Tensor x({b, 3, S, S});
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t i = 0; i < b; ++i)
            for (int64_t c = 0; c < 3; ++c) {
                const float* src = images + ((start + i) * channels + (channels == 1 ? 0 : c)) * h * w;
                float* dst = x.data() + (i * 3 + c) * S * S;
                for (int64_t oy = 0; oy < S; ++oy) {
                    const float* r0 = src + ty.i0[oy] * w;
                    const float* r1 = src + ty.i1[oy] * w;
                    const float h0 = ty.l0[oy], h1 = ty.l1[oy];
                    for (int64_t ox = 0; ox < S; ++ox) {
                        const int64_t a = tx.i0[ox], bb = tx.i1[ox];
                        const float w0 = tx.l0[ox], w1 = tx.l1[ox];
                        const float v = h0 * (w0 * r0[a] + w1 * r0[bb]) + h1 * (w0 * r1[a] + w1 * r1[bb]);
                        dst[oy * S + ox] = 2.0f * v - 1.0f; // [0, 1] -> [-1, 1]
                    }
                }
            }
        impl_->forward(std::move(x), out + start * feature_dim);
    }
}

} // namespace magnets
