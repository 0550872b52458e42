// lib/nn/optim.h (private): Adam/AdamW over named parameters and the learning
// rate schedule (linear warmup, cosine decay). State round-trips through a
// Checkpoint's train_state so resume is exact.
#pragma once
#include "magnets/backend.h"
#include "magnets/formats.h"
#include "magnets/tensor.h"
#include "nn/backend_buffer.h"

#include <string>
#include <vector>

namespace magnets::nn {

struct AdamConfig {
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0; // decoupled (AdamW)
    double clip_norm = 0.0; // global gradient-norm clip; 0 = off
};

// The update runs on the backend's memory (Backend::adamw_update): the
// parameters, their gradients and the moments all live there (host memory
// on the CPU backends, the device's on a GPU).
class Adam {
public:
    Adam(AdamConfig cfg, Backend& be) : cfg_(cfg), be_(&be) {}
    // w and g: the parameter and its gradient (prod(shape) floats each) in the
    // backend's memory; they must outlive the optimizer. decay = apply weight
    // decay to this parameter.
    void add(const std::string& name, float* w, float* g, const std::vector<int64_t>& shape, bool decay = true);
    // One update with learning rate lr; returns the global gradient norm before clipping.
    double step(double lr) { return step(lr, grad_norm()); }
    // Same, with the norm already computed (callers check it for NaN first).
    // Clipping as torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when below 1.
    double step(double lr, double norm);
    double grad_norm() const; // global L2 norm of all gradients (double accumulation)
    const AdamConfig& config() const { return cfg_; }
    int64_t steps() const { return t_; }
    // Moments as train_state "adam_m/<name>", "adam_v/<name>"; attr "adam_t".
    void save(Checkpoint& ck) const;
    void load(const Checkpoint& ck, const std::string& path);

private:
    struct Slot {
        std::string name;
        float* w;
        float* g;
        std::vector<int64_t> shape;
        int64_t n;
        BackendBuffer m, v;
        bool decay;
    };
    AdamConfig cfg_;
    Backend* be_;
    std::vector<Slot> slots_;
    int64_t t_ = 0;
};

// lr at `step` (0-based): linear warmup to peak over `warmup` steps, then cosine
// decay to peak * min_ratio at `total`.
double warmup_cosine_lr(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio);

} // namespace magnets::nn
