// bench/cpu_peak: prints the CPU's measured f32 peak per core (bench/cpu_peak.h),
//
//   cpu_peak            -> "166.4" (GFLOP/s per core)
//   cpu_peak --verbose  -> the number, the vector width and how it was measured
//
// The bench/run_*_bench.sh scripts divide by it for their "of peak" columns.
#include "cpu_peak.h"

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
    const bool verbose = argc > 1 && std::strcmp(argv[1], "--verbose") == 0;
    if (argc > 1 && !verbose) {
        std::fprintf(stderr, "usage: cpu_peak [--verbose]\nPrints the measured f32 peak of one core in GFLOP/s.\n");
        return std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    const magnets::bench::CpuPeak p = magnets::bench::measure_cpu_peak();
    if (p.gflops_per_core <= 0) {
        std::fprintf(stderr, "cpu_peak: no FMA vector code in this build (not x86-64 with AVX2)\n");
        return 1;
    }
    if (verbose)
        std::printf("%.1f GFLOP/s per core: 16 independent %s FMA chains on one thread, best of 3 runs of ~0.2 s\n",
                    p.gflops_per_core, p.isa.c_str());
    else
        std::printf("%.1f\n", p.gflops_per_core);
    return 0;
}
