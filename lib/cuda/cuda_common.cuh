// lib/cuda/cuda_common.cuh (private, CUDA code only): what the .cu files of
// lib/cuda share: the backend's stream and error checks that throw Error.
#pragma once
#include "magnets/backend.h"

#include <cuda_runtime.h>

namespace magnets::cuda {

// The stream of a backend made by make_backend("cuda"); throws Error for any
// other backend (a host backend's buffers cannot be used on the device).
cudaStream_t stream_of(Backend& be);

// Throws Error naming `what` when e is not cudaSuccess.
void check(cudaError_t e, const char* what);

} // namespace magnets::cuda
