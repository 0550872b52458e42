#include "nn/optim.h"

#include "magnets/error.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace magnets::nn {

void Adam::add(const std::string& name, Tensor* w, Tensor* g, bool decay) {
    check(w->shape() == g->shape(), "optimizer", "gradient shape differs for " + name);
    slots_.push_back({name, w, g, Tensor(w->shape()), Tensor(w->shape()), decay});
}

// Loops over this many elements or more run on all threads.
constexpr int64_t kParallelElems = 1 << 16;

double Adam::grad_norm() const {
    // Sums of squares over fixed chunks of each gradient, then the chunks in
    // order: the same bits on any number of threads.
    constexpr int64_t chunk = 8192;
    double sq = 0.0;
    std::vector<double> part;
    for (const auto& s : slots_) {
        const float* g = s.g->data();
        const int64_t n = s.g->numel(), chunks = (n + chunk - 1) / chunk;
        part.assign(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(dynamic, 8) if (n >= kParallelElems)
        for (int64_t c = 0; c < chunks; ++c) {
            double acc = 0.0;
            for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) acc += static_cast<double>(g[i]) * g[i];
            part[static_cast<size_t>(c)] = acc;
        }
        for (double p : part) sq += p;
    }
    return std::sqrt(sq);
}

double Adam::step(double lr, double norm) {
    const double coef = cfg_.clip_norm > 0 ? cfg_.clip_norm / (norm + 1e-6) : 1.0;
    const double clip = coef < 1.0 ? coef : 1.0;
    ++t_;
    const double bc1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(t_));
    const double bc2 = 1.0 - std::pow(cfg_.beta2, static_cast<double>(t_));
    const float b1 = static_cast<float>(cfg_.beta1), b2 = static_cast<float>(cfg_.beta2);
    const float step_size = static_cast<float>(lr / bc1);
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    const float eps = static_cast<float>(cfg_.eps);
    const float fclip = static_cast<float>(clip);
    for (auto& s : slots_) {
        float* w = s.w->data();
        const float* g = s.g->data();
        float* m = s.m.data();
        float* v = s.v.data();
        const float wd = s.decay ? static_cast<float>(lr * cfg_.weight_decay) : 0.0f;
        const int64_t n = s.w->numel();
#pragma omp parallel for schedule(dynamic, 4096) if (n >= kParallelElems)
        for (int64_t i = 0; i < n; ++i) {
            const float gi = g[i] * fclip;
            m[i] = b1 * m[i] + (1.0f - b1) * gi;
            v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
            w[i] -= wd * w[i];
            w[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
        }
    }
    return norm;
}

void Adam::save(Checkpoint& ck) const {
    for (const auto& s : slots_) {
        ck.state["adam_m/" + s.name] = s.m;
        ck.state["adam_v/" + s.name] = s.v;
    }
    ck.state_attrs["adam_t"] = t_;
}

void Adam::load(const Checkpoint& ck, const std::string& path) {
    for (auto& s : slots_) {
        for (auto [prefix, dst] : {std::pair<const char*, Tensor*>{"adam_m/", &s.m}, {"adam_v/", &s.v}}) {
            auto it = ck.state.find(prefix + s.name);
            if (it == ck.state.end())
                throw Error("cannot resume", path, std::string("training state lacks ") + prefix + s.name,
                            "the checkpoint holds weights only; train again without --resume");
            check(it->second.shape() == dst->shape(), "cannot resume", "optimizer state shape differs for " + s.name);
            *dst = it->second.clone();
        }
    }
    t_ = attr_int(ck.state_attrs, "adam_t", path);
}

double warmup_cosine_lr(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio) {
    if (warmup > 0 && step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
    const double span = static_cast<double>(std::max<int64_t>(total - warmup, 1));
    const double p = std::min(1.0, static_cast<double>(step - warmup) / span);
    const double lo = peak * min_ratio;
    return lo + (peak - lo) * 0.5 * (1.0 + std::cos(M_PI * p));
}

} // namespace magnets::nn
