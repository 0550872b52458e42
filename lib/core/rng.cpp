#include "magnets/rng.h"

#include "core/philox.h"

#include <cmath>

namespace magnets {

std::array<uint32_t, 4> Philox::block(uint64_t stream, uint64_t index) const {
    std::array<uint32_t, 4> out;
    philox::block(seed_, stream, index, out.data());
    return out;
}

float Philox::uniform(uint64_t stream, uint64_t index) const {
    return static_cast<float>(u32(stream, index) >> 8) * (1.0f / 16777216.0f);
}

double Philox::uniform_double(uint64_t stream, uint64_t index) const {
    return philox::uniform_double(seed_, stream, index);
}

float Philox::normal(uint64_t stream, uint64_t index) const {
    auto b = block(stream, index);
    // u1 in (0, 1], u2 in [0, 1).
    double u1 = (static_cast<double>(b[0]) + 1.0) * (1.0 / 4294967296.0);
    double u2 = static_cast<double>(b[1]) * (1.0 / 4294967296.0);
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

float Philox::gumbel(uint64_t stream, uint64_t index) const { return philox::gumbel(seed_, stream, index); }

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
