// The feature classifier of magnets-eval: explicit forward/backward on the
// project's backends (convolutions and matmuls through the Backend).
#include "magnets/classifier.h"

#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/rng.h"
#include "nn/data_order.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "nn/param_sync.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

namespace magnets {

void ClassifierConfig::to_attrs(Attrs& a) const {
    a["image_size"] = image_size; a["channels"] = channels; a["num_classes"] = num_classes;
    a["width1"] = width1; a["width2"] = width2; a["feature_dim"] = feature_dim;
    a["dataset"] = dataset;
    if (clip_frames > 1) a["clip_frames"] = clip_frames; // image classifiers' files are unchanged
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
    if (a.count("clip_frames")) c.clip_frames = attr_int(a, "clip_frames", path);
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

// Runs on its backend (a GPU's included): activations are nn::DTensors, the
// parameters host masters with device copies (nn::ParamSync), as the tokenizer.
struct Classifier::Impl {
    using DT = nn::DTensor;
    ClassifierConfig cfg;
    std::shared_ptr<Backend> be;
    nn::Conv2d c1, c2, c3;
    Tensor fc1_w, fc1_b, fc2_w, fc2_b, dfc1_w, dfc1_b, dfc2_w, dfc2_b;
    nn::BackendBuffer fc_dev[8]; // device copies of the fc weights and gradients, in that order
    nn::ParamSync sync;
    // activations
    DT x, a1, a2, a3, h, logits, dlogits, dh, da3, da2, da1;
    nn::BackendBuffer targets, mask; // loss inputs (int32, bytes) in the backend's memory
    int64_t flat() const { return cfg.width2 * (cfg.image_size / 4) * (cfg.image_size / 4); }

    Impl(const ClassifierConfig& c, std::shared_ptr<Backend> b)
        : cfg(c), be(std::move(b)), c1("conv1", c.in_channels(), c.width1, 3, 1, 1), c2("conv2", c.width1, c.width2, 3, 2, 1),
          c3("conv3", c.width2, c.width2, 3, 2, 1) {
        check(c.image_size % 4 == 0 && c.image_size >= 8, "classifier", "image_size must be a multiple of 4 (>= 8)");
        check(c.num_classes >= 2, "classifier", "needs at least 2 classes");
        fc1_w = Tensor({c.feature_dim, flat()}); fc1_b = Tensor({c.feature_dim});
        fc2_w = Tensor({c.num_classes, c.feature_dim}); fc2_b = Tensor({c.num_classes});
        dfc1_w = Tensor(fc1_w.shape()); dfc1_b = Tensor(fc1_b.shape());
        dfc2_w = Tensor(fc2_w.shape()); dfc2_b = Tensor(fc2_b.shape());
    }
    std::vector<nn::ParamRef> params() {
        auto conv = [](nn::Conv2d& c, bool bias) {
            return bias ? nn::ParamRef{c.name + ".bias", &c.bias, &c.dbias, &c.bias_dev, &c.dbias_dev}
                        : nn::ParamRef{c.name + ".weight", &c.weight, &c.dweight, &c.weight_dev, &c.dweight_dev};
        };
        return {conv(c1, false), conv(c1, true), conv(c2, false), conv(c2, true), conv(c3, false), conv(c3, true),
                {"fc1.weight", &fc1_w, &dfc1_w, &fc_dev[0], &fc_dev[1]},
                {"fc1.bias", &fc1_b, &dfc1_b, &fc_dev[2], &fc_dev[3]},
                {"fc2.weight", &fc2_w, &dfc2_w, &fc_dev[4], &fc_dev[5]},
                {"fc2.bias", &fc2_b, &dfc2_b, &fc_dev[6], &fc_dev[7]}};
    }
    // (weight, gradient) pointers on the backend: indices into params().
    float* W(size_t i) { return params()[i].W(); }
    float* G(size_t i) { return params()[i].G(); }

    // images [n, c, s, s] (host) -> h (features, after ReLU) and logits, in the backend's memory.
    void forward(const float* images, int64_t n) {
        Backend& b = *be;
        sync.to_device(b, params());
        const int64_t s = cfg.image_size, F = cfg.feature_dim, C = cfg.num_classes;
        x.ensure(b, {n, cfg.in_channels(), s, s});
        b.upload(x.data(), images, static_cast<size_t>(x.numel()));
        c1.forward(b, x, a1); b.relu(a1.data(), a1.data(), a1.numel());
        c2.forward(b, a1, a2); b.relu(a2.data(), a2.data(), a2.numel());
        c3.forward(b, a2, a3); b.relu(a3.data(), a3.data(), a3.numel());
        h.ensure(b, {n, F});
        b.matmul(cmat(a3.data(), n, flat()), false, cmat(W(6), F, flat()), true, mat(h.data(), n, F));
        b.add_bias(h.data(), F, W(7), n, F);
        b.relu(h.data(), h.data(), h.numel());
        logits.ensure(b, {n, C});
        b.matmul(cmat(h.data(), n, F), false, cmat(W(8), C, F), true, mat(logits.data(), n, C));
        b.add_bias(logits.data(), C, W(9), n, C);
    }

    // Backward from dlogits; fills every gradient.
    void backward(int64_t n) {
        Backend& b = *be;
        const int64_t C = cfg.num_classes, F = cfg.feature_dim;
        b.matmul(cmat(dlogits.data(), n, C), true, cmat(h.data(), n, F), false, mat(G(8), C, F));
        b.zero(G(9), static_cast<size_t>(C));
        b.bias_backward(dlogits.data(), C, G(9), n, C);
        dh.ensure(b, {n, F});
        b.matmul(cmat(dlogits.data(), n, C), false, cmat(W(8), C, F), false, mat(dh.data(), n, F));
        b.relu_backward(h.data(), dh.data(), dh.data(), dh.numel());
        b.matmul(cmat(dh.data(), n, F), true, cmat(a3.data(), n, flat()), false, mat(G(6), F, flat()));
        b.zero(G(7), static_cast<size_t>(F));
        b.bias_backward(dh.data(), F, G(7), n, F);
        da3.ensure(b, a3.shape);
        b.matmul(cmat(dh.data(), n, F), false, cmat(W(6), F, flat()), false, mat(da3.data(), n, flat()));
        b.relu_backward(a3.data(), da3.data(), da3.data(), da3.numel());
        c3.backward(b, a2, da3, &da2);
        b.relu_backward(a2.data(), da2.data(), da2.data(), da2.numel());
        c2.backward(b, a1, da2, &da1);
        b.relu_backward(a1.data(), da1.data(), da1.data(), da1.numel());
        c1.backward(b, x, da1, nullptr);
    }

    // Masked (all ones) cross-entropy of the logits against labels y [n] (host):
    // fills dlogits; returns the loss sums.
    Backend::LossSums loss(const int32_t* y, int64_t n) {
        Backend& b = *be;
        const int64_t C = cfg.num_classes;
        targets.bind(b);
        mask.bind(b);
        b.upload(targets.grow(static_cast<size_t>(n)), reinterpret_cast<const float*>(y), static_cast<size_t>(n));
        std::vector<float> ones((static_cast<size_t>(n) + 3) / 4);
        std::memset(ones.data(), 1, static_cast<size_t>(n)); // n bytes of 1 (the rest of the last float unused)
        b.upload(mask.grow(ones.size()), ones.data(), ones.size());
        dlogits.ensure(b, logits.shape);
        return b.masked_loss(logits.data(), C, nullptr, 0, targets.ints(), mask.bytes(), n, C, 0.0, 1.0, 1.0,
                             dlogits.data(), C);
    }
};

Classifier::Classifier(const ClassifierConfig& cfg, std::shared_ptr<Backend> backend)
    : impl_(std::make_unique<Impl>(cfg, std::move(backend))) {}
Classifier::~Classifier() = default;
Classifier::Classifier(Classifier&&) noexcept = default;
Classifier& Classifier::operator=(Classifier&&) noexcept = default;
const ClassifierConfig& Classifier::config() const { return impl_->cfg; }

std::string Classifier::hash() const {
    impl_->sync.to_host(*impl_->be, impl_->params());
    std::map<std::string, Tensor> w;
    for (auto& p : impl_->params()) w[p.name] = *p.w;
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
    impl_->sync.host_changed();
}

void Classifier::save(const std::string& path, const std::string& creator, const Attrs& extra) const {
    Checkpoint ck;
    ck.format = classifier_format;
    ck.format_version = classifier_format_version;
    impl_->cfg.to_attrs(ck.attrs);
    for (const auto& [k, v] : extra) ck.attrs[k] = v;
    impl_->sync.to_host(*impl_->be, impl_->params());
    for (auto& p : impl_->params()) ck.weights[p.name] = *p.w;
    write_checkpoint(path, ck, creator);
}

Classifier Classifier::load(const std::string& path, std::shared_ptr<Backend> backend) {
    Checkpoint ck = read_checkpoint(path, classifier_format, classifier_format_version, false);
    Classifier c(ClassifierConfig::from_attrs(ck.attrs, path), std::move(backend));
    for (auto& p : c.impl_->params()) {
        const std::string& n = p.name;
        auto it = ck.weights.find(n);
        if (it == ck.weights.end() || it->second.shape() != p.w->shape())
            throw Error("cannot load classifier", path, "weight '" + n + "' is missing or has another shape",
                        "the file is damaged; train it again with magnets-eval train-classifier");
        *p.w = it->second.clone();
        for (int64_t i = 0; i < p.w->numel(); ++i)
            if (!std::isfinite(p.w->data()[i]))
                throw Error("cannot load classifier", path, "weight '" + n + "' holds a non-finite value",
                            "train it again");
    }
    c.impl_->sync.host_changed();
    return c;
}

void Classifier::features(const float* images, int64_t n, float* feats, float* probs) {
    Impl& m = *impl_;
    const int64_t per = m.cfg.in_channels() * m.cfg.image_size * m.cfg.image_size, F = m.cfg.feature_dim,
                  C = m.cfg.num_classes;
    constexpr int64_t chunk = 256;
    std::vector<float> logits;
    for (int64_t first = 0; first < n; first += chunk) {
        const int64_t b = std::min(chunk, n - first);
        m.forward(images + first * per, b);
        if (feats) m.be->download(feats + first * F, m.h.data(), static_cast<size_t>(b * F));
        if (probs) {
            logits.resize(static_cast<size_t>(b * C));
            m.be->download(logits.data(), m.logits.data(), logits.size());
        }
        if (probs)
            for (int64_t i = 0; i < b; ++i) {
                const float* l = logits.data() + i * C;
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
    check(data.channels == m.cfg.in_channels() && data.height == m.cfg.image_size && data.width == m.cfg.image_size,
          "cannot train classifier", "images do not have the classifier's size and channels");
    for (int32_t y : data.labels)
        check(y >= 0 && y < m.cfg.num_classes, "cannot train classifier",
              "label " + std::to_string(y) + " outside 0.." + std::to_string(m.cfg.num_classes - 1),
              "every training image needs a class (an image folder: one sub-folder per class)");
    nn::Adam adam({}, *m.be); // on the backend's copies of the weights
    m.sync.to_device(*m.be, m.params());
    for (auto& p : m.params()) {
        check(p.w->is_contiguous() && p.g->is_contiguous(), "cannot train classifier",
              "parameter " + p.name + " is not contiguous");
        adam.add(p.name, p.W(), p.G(), p.w->shape(), false);
    }
    const int64_t B = tc.batch_size, steps = tc.epochs * ((data.count() + B - 1) / B);
    nn::DataOrder order(tc.seed, data.count());
    std::vector<int64_t> idx(static_cast<size_t>(B));
    std::vector<float> batch(static_cast<size_t>(B * data.pixels_per_item()));
    std::vector<int32_t> y(static_cast<size_t>(B));
    double t0 = now_seconds(), loss_acc = 0, ok_acc = 0;
    int64_t seen = 0;
    for (int64_t step = 0; step < steps; ++step) {
        for (int64_t i = 0; i < B; ++i) {
            idx[static_cast<size_t>(i)] = order.item(step * B + i);
            y[static_cast<size_t>(i)] = data.labels[static_cast<size_t>(idx[static_cast<size_t>(i)])];
        }
        data.gather_float(idx.data(), B, batch.data());
        m.forward(batch.data(), B);
        const Backend::LossSums L = m.loss(y.data(), B);
        if (!std::isfinite(L.loss))
            throw Error("classifier training diverged", {}, "loss is " + std::to_string(L.loss), "lower --lr");
        m.backward(B);
        const double lr = nn::warmup_cosine_lr(step, steps, std::min<int64_t>(100, steps / 10), tc.lr, 0.05);
        adam.step(lr);
        m.sync.device_changed(*m.be);
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
    check(data.channels == config().in_channels() && data.height == config().image_size, "classifier accuracy",
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
