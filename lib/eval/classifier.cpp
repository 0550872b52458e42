// The feature classifier of magnets-eval: explicit forward/backward on the
// project's backends (convolutions and matmuls through the Backend).
#include "magnets/classifier.h"

#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/rng.h"
#include "nn/data_order.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "nn/transformer_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

namespace magnets {

void ClassifierConfig::to_attrs(Attrs& a) const {
    a["image_size"] = image_size; a["channels"] = channels; a["num_classes"] = num_classes;
    a["width1"] = width1; a["width2"] = width2; a["feature_dim"] = feature_dim;
    a["dataset"] = dataset;
    std::string names;
    for (const auto& c : class_names) names += (names.empty() ? "" : "\n") + c;
    a["class_names"] = names;
}

ClassifierConfig ClassifierConfig::from_attrs(const Attrs& a, const std::string& path) {
    ClassifierConfig c;
    c.image_size = attr_int(a, "image_size", path); c.channels = attr_int(a, "channels", path);
    c.num_classes = attr_int(a, "num_classes", path); c.width1 = attr_int(a, "width1", path);
    c.width2 = attr_int(a, "width2", path); c.feature_dim = attr_int(a, "feature_dim", path);
    c.dataset = attr_string(a, "dataset", path);
    const std::string names = attr_string(a, "class_names", path);
    size_t pos = 0;
    while (!names.empty() && pos <= names.size()) {
        const size_t e = names.find('\n', pos);
        c.class_names.push_back(names.substr(pos, e == std::string::npos ? std::string::npos : e - pos));
        if (e == std::string::npos) break;
        pos = e + 1;
    }
    return c;
}

struct Classifier::Impl {
    ClassifierConfig cfg;
    std::shared_ptr<Backend> be;
    nn::Conv2d c1, c2, c3;
    Tensor fc1_w, fc1_b, fc2_w, fc2_b, dfc1_w, dfc1_b, dfc2_w, dfc2_b;
    // activations
    Tensor x, a1, a2, a3, h, logits, dlogits, dh, da3, da2, da1, dtmp;
    int64_t flat() const { return cfg.width2 * (cfg.image_size / 4) * (cfg.image_size / 4); }

    Impl(const ClassifierConfig& c, std::shared_ptr<Backend> b)
        : cfg(c), be(std::move(b)), c1("conv1", c.channels, c.width1, 3, 1, 1), c2("conv2", c.width1, c.width2, 3, 2, 1),
          c3("conv3", c.width2, c.width2, 3, 2, 1) {
        check(c.image_size % 4 == 0 && c.image_size >= 8, "classifier", "image_size must be a multiple of 4 (>= 8)");
        check(c.num_classes >= 2, "classifier", "needs at least 2 classes");
        fc1_w = Tensor({c.feature_dim, flat()}); fc1_b = Tensor({c.feature_dim});
        fc2_w = Tensor({c.num_classes, c.feature_dim}); fc2_b = Tensor({c.num_classes});
        dfc1_w = Tensor(fc1_w.shape()); dfc1_b = Tensor(fc1_b.shape());
        dfc2_w = Tensor(fc2_w.shape()); dfc2_b = Tensor(fc2_b.shape());
    }
    std::vector<std::pair<std::string, std::pair<Tensor*, Tensor*>>> params() {
        return {{"conv1.weight", {&c1.weight, &c1.dweight}}, {"conv1.bias", {&c1.bias, &c1.dbias}},
                {"conv2.weight", {&c2.weight, &c2.dweight}}, {"conv2.bias", {&c2.bias, &c2.dbias}},
                {"conv3.weight", {&c3.weight, &c3.dweight}}, {"conv3.bias", {&c3.bias, &c3.dbias}},
                {"fc1.weight", {&fc1_w, &dfc1_w}},           {"fc1.bias", {&fc1_b, &dfc1_b}},
                {"fc2.weight", {&fc2_w, &dfc2_w}},           {"fc2.bias", {&fc2_b, &dfc2_b}}};
    }

    // images [n, c, s, s] -> h (features, after ReLU) and logits.
    void forward(const float* images, int64_t n) {
        const int64_t s = cfg.image_size;
        nn::ensure(x, {n, cfg.channels, s, s});
        std::memcpy(x.data(), images, sizeof(float) * static_cast<size_t>(x.numel()));
        c1.forward(*be, x, a1); nn::relu_forward(a1, a1);
        c2.forward(*be, a1, a2); nn::relu_forward(a2, a2);
        c3.forward(*be, a2, a3); nn::relu_forward(a3, a3);
        nn::ensure(h, {n, cfg.feature_dim});
        be->matmul(cmat(a3.data(), n, flat()), false, cmat(fc1_w.data(), cfg.feature_dim, flat()), true, h.mat());
        nn::ops::add_bias(h.data(), cfg.feature_dim, fc1_b.data(), n, cfg.feature_dim);
        nn::relu_forward(h, h);
        nn::ensure(logits, {n, cfg.num_classes});
        be->matmul(h.mat(), false, cmat(fc2_w.data(), cfg.num_classes, cfg.feature_dim), true, logits.mat());
        nn::ops::add_bias(logits.data(), cfg.num_classes, fc2_b.data(), n, cfg.num_classes);
    }

    // Backward from dlogits; fills every gradient.
    void backward(int64_t n) {
        const int64_t C = cfg.num_classes, F = cfg.feature_dim;
        be->matmul(dlogits.mat(), true, h.mat(), false, dfc2_w.mat());
        dfc2_b.zero();
        nn::ops::bias_backward(dlogits.data(), C, dfc2_b.data(), n, C);
        nn::ensure(dh, {n, F});
        be->matmul(dlogits.mat(), false, fc2_w.mat(), false, dh.mat());
        nn::relu_backward(h, dh, dh);
        be->matmul(dh.mat(), true, cmat(a3.data(), n, flat()), false, dfc1_w.mat());
        dfc1_b.zero();
        nn::ops::bias_backward(dh.data(), F, dfc1_b.data(), n, F);
        nn::ensure(da3, a3.shape());
        be->matmul(dh.mat(), false, fc1_w.mat(), false, mat(da3.data(), n, flat()));
        nn::relu_backward(a3, da3, da3);
        nn::ensure(da2, a2.shape());
        c3.backward(*be, a2, da3, &da2);
        nn::relu_backward(a2, da2, da2);
        nn::ensure(da1, a1.shape());
        c2.backward(*be, a1, da2, &da1);
        nn::relu_backward(a1, da1, da1);
        c1.backward(*be, x, da1, nullptr);
    }
};

Classifier::Classifier(const ClassifierConfig& cfg, std::shared_ptr<Backend> backend)
    : impl_(std::make_unique<Impl>(cfg, std::move(backend))) {}
Classifier::~Classifier() = default;
Classifier::Classifier(Classifier&&) noexcept = default;
Classifier& Classifier::operator=(Classifier&&) noexcept = default;
const ClassifierConfig& Classifier::config() const { return impl_->cfg; }

std::string Classifier::hash() const {
    std::map<std::string, Tensor> w;
    for (auto& [n, p] : impl_->params()) w[n] = *p.first;
    return weights_hash(w);
}

void Classifier::init(uint64_t seed) {
    Philox rng(seed);
    impl_->c1.init(rng);
    impl_->c2.init(rng);
    impl_->c3.init(rng);
    for (auto* t : {&impl_->fc1_w, &impl_->fc2_w}) { // He-uniform
        const double bound = std::sqrt(6.0 / static_cast<double>(t->dim(1)));
        const uint64_t st = stream_id(t == &impl_->fc1_w ? "fc1" : "fc2");
        for (int64_t i = 0; i < t->numel(); ++i)
            t->data()[i] = static_cast<float>((2.0 * rng.uniform_double(st, static_cast<uint64_t>(i)) - 1.0) * bound);
    }
    impl_->fc1_b.zero();
    impl_->fc2_b.zero();
}

void Classifier::save(const std::string& path, const std::string& creator, const Attrs& extra) const {
    Checkpoint ck;
    ck.format = classifier_format;
    ck.format_version = classifier_format_version;
    impl_->cfg.to_attrs(ck.attrs);
    for (const auto& [k, v] : extra) ck.attrs[k] = v;
    for (auto& [n, p] : impl_->params()) ck.weights[n] = *p.first;
    write_checkpoint(path, ck, creator);
}

Classifier Classifier::load(const std::string& path, std::shared_ptr<Backend> backend) {
    Checkpoint ck = read_checkpoint(path, classifier_format, classifier_format_version, false);
    Classifier c(ClassifierConfig::from_attrs(ck.attrs, path), std::move(backend));
    for (auto& [n, p] : c.impl_->params()) {
        auto it = ck.weights.find(n);
        if (it == ck.weights.end() || it->second.shape() != p.first->shape())
            throw Error("cannot load classifier", path, "weight '" + n + "' is missing or has another shape",
                        "the file is damaged; train it again with magnets-eval train-classifier");
        *p.first = it->second.clone();
        for (int64_t i = 0; i < p.first->numel(); ++i)
            if (!std::isfinite(p.first->data()[i]))
                throw Error("cannot load classifier", path, "weight '" + n + "' holds a non-finite value",
                            "train it again");
    }
    return c;
}

void Classifier::features(const float* images, int64_t n, float* feats, float* probs) {
    Impl& m = *impl_;
    const int64_t per = m.cfg.channels * m.cfg.image_size * m.cfg.image_size, F = m.cfg.feature_dim,
                  C = m.cfg.num_classes;
    constexpr int64_t chunk = 256;
    for (int64_t first = 0; first < n; first += chunk) {
        const int64_t b = std::min(chunk, n - first);
        m.forward(images + first * per, b);
        if (feats) std::memcpy(feats + first * F, m.h.data(), sizeof(float) * static_cast<size_t>(b * F));
        if (probs)
            for (int64_t i = 0; i < b; ++i) {
                const float* l = m.logits.data() + i * C;
                float* p = probs + (first + i) * C;
                const float mx = *std::max_element(l, l + C);
                double s = 0;
                for (int64_t k = 0; k < C; ++k) s += std::exp(static_cast<double>(l[k] - mx));
                for (int64_t k = 0; k < C; ++k) p[k] = static_cast<float>(std::exp(static_cast<double>(l[k] - mx)) / s);
            }
    }
}

void Classifier::train(const ImageSet& data, const ClassifierTrainConfig& tc, const std::function<void(const Log&)>& on_log) {
    Impl& m = *impl_;
    check(data.count() > 0, "cannot train classifier", "the dataset is empty");
    check(data.channels == m.cfg.channels && data.height == m.cfg.image_size && data.width == m.cfg.image_size,
          "cannot train classifier", "images do not have the classifier's size and channels");
    for (int32_t y : data.labels)
        check(y >= 0 && y < m.cfg.num_classes, "cannot train classifier",
              "label " + std::to_string(y) + " outside 0.." + std::to_string(m.cfg.num_classes - 1),
              "every training image needs a class (an image folder: one sub-folder per class)");
    nn::Adam adam({}, *m.be); // a CPU backend: host memory
    for (auto& [n, p] : m.params()) {
        check(p.first->is_contiguous() && p.second->is_contiguous(), "cannot train classifier",
              "parameter " + n + " is not contiguous");
        adam.add(n, p.first->data(), p.second->data(), p.first->shape(), false);
    }
    const int64_t B = tc.batch_size, steps = tc.epochs * ((data.count() + B - 1) / B);
    nn::DataOrder order(tc.seed, data.count());
    std::vector<int64_t> idx(static_cast<size_t>(B));
    std::vector<float> batch(static_cast<size_t>(B * data.pixels_per_item()));
    std::vector<int32_t> y(static_cast<size_t>(B));
    const std::vector<uint8_t> mask(static_cast<size_t>(B), 1);
    double t0 = now_seconds(), loss_acc = 0, ok_acc = 0;
    int64_t seen = 0;
    for (int64_t step = 0; step < steps; ++step) {
        for (int64_t i = 0; i < B; ++i) {
            idx[static_cast<size_t>(i)] = order.item(step * B + i);
            y[static_cast<size_t>(i)] = data.labels[static_cast<size_t>(idx[static_cast<size_t>(i)])];
        }
        data.gather_float(idx.data(), B, batch.data());
        m.forward(batch.data(), B);
        nn::ensure(m.dlogits, m.logits.shape());
        const nn::ops::LossSums L = nn::ops::masked_loss<float>(m.logits.data(), m.cfg.num_classes, nullptr, 0, y.data(),
                                                               mask.data(), B, m.cfg.num_classes, 0.0, 1.0, 1.0,
                                                               m.dlogits.data(), m.cfg.num_classes);
        if (!std::isfinite(L.loss))
            throw Error("classifier training diverged", {}, "loss is " + std::to_string(L.loss), "lower --lr");
        m.backward(B);
        const double lr = nn::warmup_cosine_lr(step, steps, std::min<int64_t>(100, steps / 10), tc.lr, 0.05);
        adam.step(lr);
        loss_acc += L.loss;
        ok_acc += static_cast<double>(L.correct) / static_cast<double>(B);
        ++seen;
        if (on_log && ((step + 1) % std::max<int64_t>(tc.log_every, 1) == 0 || step + 1 == steps)) {
            const double now = now_seconds();
            on_log({step + 1, steps, loss_acc / static_cast<double>(seen), ok_acc / static_cast<double>(seen),
                    static_cast<double>(seen * B) / std::max(now - t0, 1e-9)});
            t0 = now;
            loss_acc = ok_acc = 0;
            seen = 0;
        }
    }
}

double Classifier::accuracy(const ImageSet& data, int64_t batch_size) {
    const int64_t n = data.count(), C = num_classes();
    check(data.channels == config().channels && data.height == config().image_size, "classifier accuracy",
          "images do not have the classifier's size and channels");
    std::vector<float> x(static_cast<size_t>(batch_size * data.pixels_per_item())), p(static_cast<size_t>(batch_size * C));
    int64_t ok = 0;
    for (int64_t first = 0; first < n; first += batch_size) {
        const int64_t b = std::min(batch_size, n - first);
        data.to_float(first, b, x.data());
        features(x.data(), b, nullptr, p.data());
        for (int64_t i = 0; i < b; ++i) {
            const float* pi = p.data() + i * C;
            if (std::max_element(pi, pi + C) - pi == data.labels[static_cast<size_t>(first + i)]) ++ok;
        }
    }
    return n ? static_cast<double>(ok) / static_cast<double>(n) : 0.0;
}

} // namespace magnets
