// lib/nn/backend_buffer.h (private): a float buffer in a backend's memory
// (host memory on the CPU backends, device memory on a GPU) that grows on
// demand. The transformer's activations and the decoder's cache live in them.
#pragma once
#include "magnets/backend.h"

#include <cstddef>
#include <cstdint>

namespace magnets::nn {

class BackendBuffer {
public:
    BackendBuffer() = default;
    explicit BackendBuffer(Backend& be) : be_(&be) {}
    BackendBuffer(const BackendBuffer&) = delete;
    BackendBuffer& operator=(const BackendBuffer&) = delete;
    BackendBuffer(BackendBuffer&& o) noexcept : be_(o.be_), p_(o.p_), n_(o.n_) {
        o.p_ = nullptr;
        o.n_ = 0;
    }
    BackendBuffer& operator=(BackendBuffer&& o) noexcept {
        if (this != &o) {
            release();
            be_ = o.be_; p_ = o.p_; n_ = o.n_;
            o.p_ = nullptr;
            o.n_ = 0;
        }
        return *this;
    }
    ~BackendBuffer() { release(); }

    // Use this backend (frees what another backend gave).
    void bind(Backend& be) {
        if (be_ != &be) {
            release();
            be_ = &be;
        }
    }
    // At least n floats; the contents are not kept when it grows.
    float* grow(size_t n) {
        if (n > n_) {
            release();
            p_ = be_->alloc(n);
            n_ = n;
        }
        return p_;
    }
    float* data() const { return p_; }
    int32_t* ints() const { return reinterpret_cast<int32_t*>(p_); }
    uint8_t* bytes() const { return reinterpret_cast<uint8_t*>(p_); }
    size_t size() const { return n_; }

private:
    void release() {
        if (p_) be_->free(p_);
        p_ = nullptr;
        n_ = 0;
    }
    Backend* be_ = nullptr;
    float* p_ = nullptr;
    size_t n_ = 0;
};

} // namespace magnets::nn
