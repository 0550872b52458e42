// lib/cuda/cuda_common.cuh (private, CUDA code only): what the .cu files of
// lib/cuda share: the backend's stream, error checks that throw Error, and
// the kernels' warp reductions.
#pragma once
#include "magnets/backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace magnets::cuda {

// The stream of a backend made by make_backend("cuda"); throws Error for any
// other backend (a host backend's buffers cannot be used on the device).
cudaStream_t stream_of(Backend& be);

// The backend's cuBLAS handle (on its stream), whether it was made in the
// bf16 mode (MAGNETS_CUDA_BF16=1), and a scratch buffer of at least `floats`
// that it keeps between calls (valid until the next scratch_of call; no
// allocation, so no stream synchronisation, once it is large enough).
cublasHandle_t blas_of(Backend& be);
bool bf16_mode(Backend& be);
float* scratch_of(Backend& be, size_t floats);

// Throws Error naming `what` when e is not cudaSuccess (or s not CUBLAS_STATUS_SUCCESS).
void check(cudaError_t e, const char* what);
void cublas_check_status(cublasStatus_t s, const char* what);

// Launch and warp helpers of the kernels.
constexpr int kWarp = 32;

inline unsigned blocks_for(int64_t n, int per) { return static_cast<unsigned>((n + per - 1) / per); }

__device__ inline float warp_sum(float v) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ inline float warp_max(float v) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

} // namespace magnets::cuda
