// bench/cpu_peak.h: the CPU's f32 peak, measured. Fractions of peak in the
// benchmarks divide by this, not by a nominal figure: the nominal
// "32 FLOP/cycle x cpu MHz" is wrong twice over on an AVX-512 server (two
// 16-wide FMA pipes, and a turbo clock above the /proc/cpuinfo one).
//
// One thread runs 16 independent FMA chains (more than the pipes' latency x
// width needs) in the widest vectors the CPU has (AVX-512 where
// simd::cpu_has_avx512(), else AVX2) for about 0.2 s; the best of 3 tries,
// in GFLOP/s per core (2 FLOP per FMA lane).
#pragma once
#include "core/fma_block.h"

#include <chrono>
#include <cstring>
#include <cstdint>
#include <string>

namespace magnets::bench {

struct CpuPeak {
    double gflops_per_core = 0;
    std::string isa; // "avx512", "avx2" or "none"
};

#if defined(MAGNETS_HAVE_FMA_BLOCK)
namespace detail {
// The timed loop for vector type V with FMA intrinsic FMA and LANES lanes
// (a macro, so each instance is compiled inside its own target function).
#define MAGNETS_PEAK_LOOP(V, SET1, FMA, LANES)                                                     \
    V c[16];                                                                                       \
    const V a = SET1(0.999999f), b = SET1(1e-3f);                                                  \
    for (int i = 0; i < 16; ++i) c[i] = b;                                                         \
    const auto t0 = std::chrono::steady_clock::now();                                              \
    for (int64_t n = 0; n < iters; ++n) {                                                          \
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; ++i) c[i] = FMA(a, c[i], b);             \
    }                                                                                              \
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); \
    V sum = c[0];                                                                                  \
    for (int i = 1; i < 16; ++i) sum = FMA(a, sum, c[i]);                                          \
    float out[LANES];                                                                              \
    std::memcpy(out, &sum, sizeof out);                                                            \
    *sink += out[0];                                                                               \
    return 2.0 * 16 * LANES * static_cast<double>(iters) / s / 1e9;

MAGNETS_TARGET_AVX512 inline double peak512(int64_t iters, float* sink) {
    MAGNETS_PEAK_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps, 16)
}
inline double peak256(int64_t iters, float* sink) { MAGNETS_PEAK_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps, 8) }
#undef MAGNETS_PEAK_LOOP
} // namespace detail
#endif

inline CpuPeak measure_cpu_peak() {
    CpuPeak p;
#if defined(MAGNETS_HAVE_FMA_BLOCK)
    const bool wide = simd::cpu_has_avx512();
    p.isa = wide ? "avx512" : "avx2";
    float sink = 0;
    auto run = [&](int64_t iters) { return wide ? detail::peak512(iters, &sink) : detail::peak256(iters, &sink); };
    // size the run to about 0.2 s from a short one
    const double rough = run(int64_t{1} << 20);
    const int64_t iters = static_cast<int64_t>(0.2 * rough * 1e9 / (2.0 * 16 * (wide ? 16 : 8))) + 1;
    for (int t = 0; t < 3; ++t) {
        const double g = run(iters);
        if (g > p.gflops_per_core) p.gflops_per_core = g;
    }
    if (sink == 12345.0f) p.isa += " "; // keep the chains alive
#else
    p.isa = "none";
#endif
    return p;
}

} // namespace magnets::bench
