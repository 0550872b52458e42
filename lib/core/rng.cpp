#include "magnets/rng.h"

#include <cmath>

namespace magnets {

// Philox4x32-10 constants (Salmon et al. 2011).
static constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
static constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;

std::array<uint32_t, 4> Philox::block(uint64_t stream, uint64_t index) const {
    uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
    uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
    uint32_t k0 = static_cast<uint32_t>(seed_), k1 = static_cast<uint32_t>(seed_ >> 32);
    for (int r = 0; r < 10; ++r) {
        uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
        uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
        uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
        uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += kW0; k1 += kW1;
    }
    return {c0, c1, c2, c3};
}

float Philox::uniform(uint64_t stream, uint64_t index) const {
    return static_cast<float>(u32(stream, index) >> 8) * (1.0f / 16777216.0f);
}

double Philox::uniform_double(uint64_t stream, uint64_t index) const {
    auto b = block(stream, index);
    uint64_t bits = (static_cast<uint64_t>(b[0]) << 32 | b[1]) >> 11;
    return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

float Philox::normal(uint64_t stream, uint64_t index) const {
    auto b = block(stream, index);
    // u1 in (0, 1], u2 in [0, 1).
    double u1 = (static_cast<double>(b[0]) + 1.0) * (1.0 / 4294967296.0);
    double u2 = static_cast<double>(b[1]) * (1.0 / 4294967296.0);
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

float Philox::gumbel(uint64_t stream, uint64_t index) const {
    // u in (0, 1): never 0 or 1, so the logs are finite.
    double u = (static_cast<double>(u32(stream, index)) + 0.5) * (1.0 / 4294967296.0);
    return static_cast<float>(-std::log(-std::log(u)));
}

uint32_t Philox::below(uint64_t stream, uint64_t index, uint32_t n) const {
    return static_cast<uint32_t>((static_cast<uint64_t>(u32(stream, index)) * n) >> 32);
}

uint64_t stream_id(const char* purpose, uint64_t step) {
    uint64_t h = 14695981039346656037ull; // FNV-1a 64
    for (const char* p = purpose; *p; ++p) { h ^= static_cast<unsigned char>(*p); h *= 1099511628211ull; }
    // splitmix64 finaliser over (hash, step) so nearby steps give unrelated streams.
    uint64_t z = h ^ (step * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

} // namespace magnets
