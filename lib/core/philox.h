// lib/core/philox.h (private): the Philox4x32-10 block and the draws built on
// it, as inline functions that compile for the host and, under nvcc, for the
// device, so a draw made on the GPU has the bits of the same draw made by
// magnets::Philox on the CPU (lib/core/rng.cpp wraps these).
#pragma once
#include "core/hostdevice.h"

#include <cmath>
#include <cstdint>

namespace magnets::philox {

// Philox4x32-10 (Salmon et al., SC'11): key = seed, counter = (index, stream).
MAGNETS_HD inline void block(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
    constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
    uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
    uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
        const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
        const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
        const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
        const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
        const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += kW0; k1 += kW1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// Uniform in [0, 1) as double (53 bits of words 0 and 1).
MAGNETS_HD inline double uniform_double(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t b[4];
    block(seed, stream, index, b);
    const uint64_t bits = (static_cast<uint64_t>(b[0]) << 32 | b[1]) >> 11;
    return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

// Gumbel(0, 1): -log(-log(u)), u = (word 0 + 1/2) / 2^32 in (0, 1), so the logs
// are finite. (log is libm's on the host, CUDA's on the device: both within an
// ulp of the true value, so the float result almost always has the same bits.)
MAGNETS_HD inline float gumbel(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t b[4];
    block(seed, stream, index, b);
    const double u = (static_cast<double>(b[0]) + 0.5) * (1.0 / 4294967296.0);
#if defined(__CUDA_ARCH__)
    return static_cast<float>(-::log(-::log(u)));
#else
    return static_cast<float>(-std::log(-std::log(u)));
#endif
}

} // namespace magnets::philox
