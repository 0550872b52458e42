// lib/nn/param_sync.h (private): host master copies of a model's parameters
// and their copies in a device backend's memory, kept in step.
//
// The models that run on any backend (the tokenizer, the classifier) keep
// every parameter as a host Tensor (init, checkpoints, param()) and, on a
// backend whose memory is not the host's, a device copy of it and of its
// gradient, where the layers and the optimizer work. ParamSync says which
// side is newer and copies the other way when asked. On the CPU backends
// nothing is copied: W() and G() are the host tensors.
#pragma once
#include "magnets/backend.h"
#include "magnets/tensor.h"
#include "nn/backend_buffer.h"

#include <string>
#include <vector>

namespace magnets::nn {

struct ParamRef {
    std::string name;
    Tensor* w;         // host master copy
    Tensor* g;         // host gradient (a device's: downloaded by ParamSync::grads_to_host)
    BackendBuffer* wd; // device copies (never allocated on the CPU backends)
    BackendBuffer* gd;
    float* W() const { return wd->data() ? wd->data() : w->data(); }
    float* G() const { return gd->data() ? gd->data() : g->data(); }
};

class ParamSync {
public:
    // Upload the host weights where they are newer (first use, after init,
    // load or a host write); allocate and zero the device gradients.
    void to_device(Backend& be, const std::vector<ParamRef>& ps) {
        if (be.host_memory() || !host_newer_) return;
        for (const ParamRef& p : ps) {
            const size_t n = static_cast<size_t>(p.w->numel());
            p.wd->bind(be);
            p.gd->bind(be);
            be.upload(p.wd->grow(n), p.w->data(), n);
            if (!p.gd->data()) be.zero(p.gd->grow(n), n);
        }
        host_newer_ = false;
    }
    // Download the device weights where they are newer (after optimizer steps).
    void to_host(Backend& be, const std::vector<ParamRef>& ps) {
        if (be.host_memory() || !device_newer_) return;
        for (const ParamRef& p : ps)
            if (p.wd->data()) be.download(p.w->data(), p.wd->data(), static_cast<size_t>(p.w->numel()));
        device_newer_ = false;
    }
    static void grads_to_host(Backend& be, const std::vector<ParamRef>& ps) {
        if (be.host_memory()) return;
        for (const ParamRef& p : ps)
            if (p.gd->data()) be.download(p.g->data(), p.gd->data(), static_cast<size_t>(p.g->numel()));
    }
    // The host copies were written (init, load, a caller's param()): they are
    // the current ones; upload them before the next use.
    void host_changed() {
        host_newer_ = true;
        device_newer_ = false;
    }
    // The device copies were written (an optimizer step): download before the host reads them.
    void device_changed(const Backend& be) { device_newer_ = !be.host_memory(); }

private:
    bool host_newer_ = true;
    bool device_newer_ = false;
};

} // namespace magnets::nn
