// lib/core/cpu_features.cpp: which instruction sets the CPU code may use at
// run time (core/fma_block.h). The build targets x86-64-v3 (AVX2, FMA);
// wider code is chosen per call where the CPU has it.
#include "core/fma_block.h"

#include <cstdlib>
#include <cstring>

#if defined(MAGNETS_HAVE_FMA_BLOCK)
namespace magnets::simd {

bool cpu_has_avx512() {
    static const bool yes = [] {
        const char* isa = std::getenv("MAGNETS_CPU_ISA");
        if (isa && std::strcmp(isa, "avx2") == 0) return false;
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512cd");
    }();
    return yes;
}

} // namespace magnets::simd
#endif
