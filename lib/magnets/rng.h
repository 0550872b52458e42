// magnets/rng.h: seeded counter-based random numbers (Philox4x32-10).
//
// Every random draw in the toolkit is a pure function of (seed, stream, index),
// so results never depend on thread count, batch split or call order. Callers
// pick a stream per purpose (e.g. stream_id("mask", step)) and index by element.
//
//   magnets::Philox rng(seed);
//   float u = rng.uniform(stream, i);      // [0, 1)
//   float z = rng.normal(stream, i);       // N(0, 1)
#pragma once
#include <array>
#include <cstdint>

namespace magnets {

// Philox4x32-10 (Salmon et al., SC'11): key = seed, counter = (index, stream).
class Philox {
public:
    explicit Philox(uint64_t seed) : seed_(seed) {}
    uint64_t seed() const { return seed_; }

    // Four independent 32-bit words for (stream, index).
    std::array<uint32_t, 4> block(uint64_t stream, uint64_t index) const;
    // One 32-bit word: word 0 of block(stream, index).
    uint32_t u32(uint64_t stream, uint64_t index) const { return block(stream, index)[0]; }
    // Uniform in [0, 1) with 24 random bits.
    float uniform(uint64_t stream, uint64_t index) const;
    // Uniform in [0, 1) as double (53 bits).
    double uniform_double(uint64_t stream, uint64_t index) const;
    // Standard normal (Box-Muller on one block).
    float normal(uint64_t stream, uint64_t index) const;
    // Gumbel(0, 1) noise: -log(-log(u)), u in (0, 1).
    float gumbel(uint64_t stream, uint64_t index) const;
    // Uniform integer in [0, n) (n > 0), via 64-bit multiply.
    uint32_t below(uint64_t stream, uint64_t index, uint32_t n) const;

private:
    uint64_t seed_;
};

// Stream id from a purpose tag and a step: hash of the tag mixed with the step.
uint64_t stream_id(const char* purpose, uint64_t step = 0);

} // namespace magnets
