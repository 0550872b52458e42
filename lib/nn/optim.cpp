#include "nn/optim.h"

#include "magnets/error.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace magnets::nn {

void Adam::add(const std::string& name, float* w, float* g, const std::vector<int64_t>& shape, bool decay) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    Slot s{name, w, g, shape, n, BackendBuffer(*be_), BackendBuffer(*be_), decay};
    for (BackendBuffer* b : {&s.m, &s.v}) {
        b->grow(static_cast<size_t>(std::max<int64_t>(n, 1)));
        be_->zero(b->data(), static_cast<size_t>(n));
    }
    slots_.push_back(std::move(s));
}

double Adam::grad_norm() const {
    // Slot by slot in order (the CPU backends sum fixed chunks in order: the
    // same bits on any number of threads).
    std::vector<const float*> g;
    std::vector<int64_t> n;
    for (const auto& s : slots_) {
        g.push_back(s.g);
        n.push_back(s.n);
    }
    return std::sqrt(be_->sum_squares(g.data(), n.data(), static_cast<int64_t>(g.size())));
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
        const float wd = s.decay ? static_cast<float>(lr * cfg_.weight_decay) : 0.0f;
        be_->adamw_update(s.w, s.g, s.m.data(), s.v.data(), s.n, fclip, b1, b2, step_size, inv_sqrt_bc2, eps, wd);
    }
    return norm;
}

void Adam::save(Checkpoint& ck) const {
    for (const auto& s : slots_) {
        Tensor m(s.shape), v(s.shape);
        be_->download(m.data(), s.m.data(), static_cast<size_t>(s.n));
        be_->download(v.data(), s.v.data(), static_cast<size_t>(s.n));
        ck.state["adam_m/" + s.name] = m;
        ck.state["adam_v/" + s.name] = v;
    }
    ck.state_attrs["adam_t"] = t_;
}

void Adam::load(const Checkpoint& ck, const std::string& path) {
    for (auto& s : slots_) {
        for (auto [prefix, dst] : {std::pair<const char*, BackendBuffer*>{"adam_m/", &s.m}, {"adam_v/", &s.v}}) {
            auto it = ck.state.find(prefix + s.name);
            if (it == ck.state.end())
                throw Error("cannot resume", path, std::string("training state lacks ") + prefix + s.name,
                            "the checkpoint holds weights only; train again without --resume");
            check(it->second.shape() == s.shape, "cannot resume", "optimizer state shape differs for " + s.name);
            const Tensor src = it->second.is_contiguous() ? it->second : it->second.clone();
            be_->upload(dst->data(), src.data(), static_cast<size_t>(s.n));
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
