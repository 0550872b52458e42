// eval/inception.cpp: Inception-v3, FID variant (see magnets/inception.h).
//
// The graph follows torchvision.models.inception_v3 with pytorch-fid's patches
// (FIDInceptionA/C/E_1/E_2). Every conv is BasicConv2d: conv (no bias) +
// BatchNorm(eps) + ReLU; BatchNorm is folded at load into w' = w * g and
// b' = beta - mean * g with g = gamma / sqrt(var + eps) (in double, then f32).
// Convs with unequal padding per axis (1x7 / 7x1 / 1x3 / 3x1 kernels) get an
// explicitly zero-padded copy of their input and run with pad 0, because
// Conv2dShape has one symmetric pad. Every op is a Backend operation on
// backend memory, so the network runs on a GPU as on the CPU.
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
    nn::BackendBuffer wd, bd; // copies in a device backend's memory (empty on the CPU)
    const float* W() const { return wd.data() ? wd.data() : w.data(); }
    const float* B() const { return bd.data() ? bd.data() : b.data(); }
};

} // namespace

// The network runs on its backend: activations are nn::DTensors in the
// backend's memory (a GPU's included), every op a Backend operation.
struct InceptionV3::Impl {
    std::shared_ptr<Backend> be;
    std::map<std::string, FoldedConv> convs;
    std::string hash;
    StageHook hook;

    using DT = nn::DTensor;

    void stage(const std::string& name, const DT& t) const {
        if (!hook) return;
        Tensor h(t.shape);
        be->download(h.data(), t.data(), static_cast<size_t>(t.numel()));
        hook(name, h);
    }

    // y = relu(bn(conv(x))) with BatchNorm folded.
    void conv(const std::string& name, const DT& x, DT& y) const {
        Backend& b = *be;
        const FoldedConv& c = convs.at(name);
        const ConvSpec& s = c.spec;
        check(x.shape.size() == 4 && x.dim(1) == s.c_in, "inception: " + name,
              "input " + x.shape_str() + " does not have " + std::to_string(s.c_in) + " channels");
        DT padded;
        const DT* in = &x;
        int64_t pad = s.pad_h;
        if (s.pad_h != s.pad_w) {
            padded.ensure(b, {x.dim(0), x.dim(1), x.dim(2) + 2 * s.pad_h, x.dim(3) + 2 * s.pad_w});
            b.zero_pad(x.data(), padded.data(), x.dim(0) * x.dim(1), x.dim(2), x.dim(3), s.pad_h, s.pad_w);
            in = &padded;
            pad = 0;
        }
        Conv2dShape cs;
        cs.n = in->dim(0); cs.c_in = s.c_in; cs.h = in->dim(2); cs.w = in->dim(3);
        cs.c_out = s.c_out; cs.kh = s.kh; cs.kw = s.kw; cs.stride = s.stride; cs.pad = pad;
        y.ensure(b, {cs.n, cs.c_out, cs.out_h(), cs.out_w()});
        b.conv2d_forward(cs, in->data(), c.W(), c.B(), y.data());
        b.relu(y.data(), y.data(), y.numel());
    }

    DT chain(const DT& x, std::initializer_list<const char*> names, const std::string& prefix) const {
        DT cur, next;
        const DT* in = &x;
        for (const char* n : names) {
            conv(prefix + "." + n, *in, next);
            cur = std::move(next);
            next = DT();
            in = &cur;
        }
        return cur;
    }

    // 3x3 max pool, stride s, padding p; 3x3 average pool, stride 1, padding 1.
    void max_pool(const DT& x, int64_t s, int64_t p, DT& y) const {
        const int64_t h = x.dim(2), w = x.dim(3);
        y.ensure(*be, {x.dim(0), x.dim(1), (h + 2 * p - 3) / s + 1, (w + 2 * p - 3) / s + 1});
        be->max_pool3(x.data(), y.data(), x.dim(0) * x.dim(1), h, w, s, p);
    }
    void avg_pool(const DT& x, DT& y) const {
        y.ensure(*be, x.shape);
        be->avg_pool3(x.data(), y.data(), x.dim(0) * x.dim(1), x.dim(2), x.dim(3));
    }

    // y [n, sum c_i, h, w] = channel concatenation of parts (same n, h, w).
    void concat(const std::vector<const DT*>& parts, DT& y) const {
        const int64_t n = parts[0]->dim(0), h = parts[0]->dim(2), w = parts[0]->dim(3);
        int64_t c = 0;
        for (const DT* t : parts) {
            check(t->dim(0) == n && t->dim(2) == h && t->dim(3) == w, "inception: concat",
                  "branch shapes differ: " + parts[0]->shape_str() + " vs " + t->shape_str());
            c += t->dim(1);
        }
        y.ensure(*be, {n, c, h, w});
        const int64_t plane = h * w;
        int64_t off = 0;
        for (const DT* t : parts) {
            const int64_t ct = t->dim(1);
            be->copy2d(y.data() + off * plane, c * plane, t->data(), ct * plane, n, ct * plane);
            off += ct;
        }
    }

    // FIDInceptionA (Mixed_5b..5d).
    void block_a(const std::string& p, const DT& x, DT& y) const {
        DT b1, b5, b3, pooled, bp;
        conv(p + ".branch1x1", x, b1);
        b5 = chain(x, {"branch5x5_1", "branch5x5_2"}, p);
        b3 = chain(x, {"branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"}, p);
        avg_pool(x, pooled);
        conv(p + ".branch_pool", pooled, bp);
        concat({&b1, &b5, &b3, &bp}, y);
    }
    // InceptionB (Mixed_6a).
    void block_b(const std::string& p, const DT& x, DT& y) const {
        DT b3, bd, pooled;
        conv(p + ".branch3x3", x, b3);
        bd = chain(x, {"branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"}, p);
        max_pool(x, 2, 0, pooled);
        concat({&b3, &bd, &pooled}, y);
    }
    // FIDInceptionC (Mixed_6b..6e).
    void block_c(const std::string& p, const DT& x, DT& y) const {
        DT b1, b7, bd, pooled, bp;
        conv(p + ".branch1x1", x, b1);
        b7 = chain(x, {"branch7x7_1", "branch7x7_2", "branch7x7_3"}, p);
        bd = chain(x, {"branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"}, p);
        avg_pool(x, pooled);
        conv(p + ".branch_pool", pooled, bp);
        concat({&b1, &b7, &bd, &bp}, y);
    }
    // InceptionD (Mixed_7a).
    void block_d(const std::string& p, const DT& x, DT& y) const {
        DT b3, b7, pooled;
        b3 = chain(x, {"branch3x3_1", "branch3x3_2"}, p);
        b7 = chain(x, {"branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"}, p);
        max_pool(x, 2, 0, pooled);
        concat({&b3, &b7, &pooled}, y);
    }
    // FIDInceptionE_1 (Mixed_7b, average pool) and FIDInceptionE_2 (Mixed_7c, max pool).
    void block_e(const std::string& p, const DT& x, bool max_pool_branch, DT& y) const {
        DT b1, t, a, b, b3, bd, pooled, bp;
        conv(p + ".branch1x1", x, b1);
        conv(p + ".branch3x3_1", x, t);
        conv(p + ".branch3x3_2a", t, a);
        conv(p + ".branch3x3_2b", t, b);
        concat({&a, &b}, b3);
        t = chain(x, {"branch3x3dbl_1", "branch3x3dbl_2"}, p);
        conv(p + ".branch3x3dbl_3a", t, a);
        conv(p + ".branch3x3dbl_3b", t, b);
        concat({&a, &b}, bd);
        a = DT(); b = DT(); t = DT();
        if (max_pool_branch)
            max_pool(x, 1, 1, pooled);
        else
            avg_pool(x, pooled);
        conv(p + ".branch_pool", pooled, bp);
        concat({&b1, &b3, &bd, &bp}, y);
    }

    // x [b, 3, 299, 299] in [-1, 1] -> out [b, 2048] (host memory).
    void forward(DT x, float* out) const {
        DT y;
        stage("input", x);
        auto step = [&](const std::string& name, auto&& fn) {
            fn(x, y);
            x = std::move(y);
            y = DT();
            stage(name, x);
        };
        for (const char* n : {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"})
            step(n, [&](const DT& a, DT& b) { conv(n, a, b); });
        step("maxpool1", [&](const DT& a, DT& b) { max_pool(a, 2, 0, b); });
        for (const char* n : {"Conv2d_3b_1x1", "Conv2d_4a_3x3"})
            step(n, [&](const DT& a, DT& b) { conv(n, a, b); });
        step("maxpool2", [&](const DT& a, DT& b) { max_pool(a, 2, 0, b); });
        for (const char* n : {"Mixed_5b", "Mixed_5c", "Mixed_5d"})
            step(n, [&](const DT& a, DT& b) { block_a(n, a, b); });
        step("Mixed_6a", [&](const DT& a, DT& b) { block_b("Mixed_6a", a, b); });
        for (const char* n : {"Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"})
            step(n, [&](const DT& a, DT& b) { block_c(n, a, b); });
        step("Mixed_7a", [&](const DT& a, DT& b) { block_d("Mixed_7a", a, b); });
        step("Mixed_7b", [&](const DT& a, DT& b) { block_e("Mixed_7b", a, false, b); });
        step("Mixed_7c", [&](const DT& a, DT& b) { block_e("Mixed_7c", a, true, b); });

        // Adaptive average pool to 1x1 (a mean over the 8x8 map for 299 inputs).
        const int64_t n = x.dim(0), c = x.dim(1), plane = x.dim(2) * x.dim(3);
        check(c == feature_dim, "inception: final pool", "expected 2048 channels, got " + x.shape_str());
        DT pooled;
        pooled.ensure(*be, {n, c, 1, 1});
        be->mean_planes(x.data(), pooled.data(), n * c, plane);
        stage("avgpool", pooled);
        be->download(out, pooled.data(), static_cast<size_t>(n * c));
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
        if (!impl->be->host_memory()) { // the weights go to the device once
            Backend& b = *impl->be;
            f.wd.bind(b);
            f.bd.bind(b);
            b.upload(f.wd.grow(static_cast<size_t>(f.w.numel())), f.w.data(), static_cast<size_t>(f.w.numel()));
            b.upload(f.bd.grow(static_cast<size_t>(f.b.numel())), f.b.data(), static_cast<size_t>(f.b.numel()));
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

    // The images go to the backend as they are; resizing to 299 x 299 (gray
    // to RGB) and scaling [0, 1] to [-1, 1] happen there.
    const int64_t S = input_size;
    Backend& be = *impl_->be;
    nn::DTensor raw;
    for (int64_t start = 0; start < n; start += batch) {
        const int64_t b = std::min(batch, n - start);
        raw.ensure(be, {b, channels, h, w});
        be.upload(raw.data(), images + start * channels * h * w, static_cast<size_t>(raw.numel()));
        nn::DTensor x;
        x.ensure(be, {b, 3, S, S});
        be.resize_bilinear(raw.data(), b, channels, h, w, x.data(), 3, S, S, 2.0f, -1.0f);
        impl_->forward(std::move(x), out + start * feature_dim);
    }
}

} // namespace magnets
