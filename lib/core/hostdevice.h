// lib/core/hostdevice.h (private): MAGNETS_HD marks an inline function that
// nvcc compiles for both the host and the device (empty for a C++ compiler),
// so the CPU and CUDA backends share one definition of small numerical
// helpers (core/philox.h, core/fastmath.h).
#pragma once

#if defined(__CUDACC__)
#define MAGNETS_HD __host__ __device__
#else
#define MAGNETS_HD
#endif
