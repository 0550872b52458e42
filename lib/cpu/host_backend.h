// lib/cpu/host_backend.h (private): memory of the CPU backends, and the
// row-stable inference matmul they share. Buffers are
// host memory aligned to 64 bytes (a cache line, and what oneDNN prefers);
// upload/download are plain copies.
#pragma once
#include "magnets/backend.h"
#include "cpu/rowstable_gemm.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace magnets {

inline constexpr std::align_val_t k_host_alignment{64};

class HostBackend : public Backend {
public:
    float* alloc(size_t count) override {
        return static_cast<float*>(::operator new(std::max<size_t>(count, 1) * sizeof(float), k_host_alignment));
    }
    void free(float* p) override { ::operator delete(p, k_host_alignment); }
    void upload(float* dst, const float* host_src, size_t count) override {
        if (count) std::memcpy(dst, host_src, count * sizeof(float));
    }
    void download(float* host_dst, const float* src, size_t count) override {
        if (count) std::memcpy(host_dst, src, count * sizeof(float));
    }
    // Both CPU backends share the row-stable kernel (lib/cpu/rowstable_gemm.cpp).
    void matmul_rowstable(ConstMat a, ConstMat w, const float* bias, Mat c, Act act = Act::none) override {
        cpu::rowstable_matmul(a, w, bias, c, act == Act::gelu);
    }
};

} // namespace magnets
