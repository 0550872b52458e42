// lib/nn/transformer_ops.h (private): the transformer's non-matmul ops,
// forward and backward, as templates over the element type. The model runs
// them in float; the finite-difference tests run the same code in double.
//
// Layouts: activations are row-major [rows, width] with a leading dimension
// (ld >= width), so a sub-model's narrower activations use the same code.
// Loops are written so the innermost loop is contiguous (vectorisable without
// -ffast-math). Reductions over rows into parameter gradients run in a fixed
// order on one thread, so results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "core/fma_block.h"
#include "magnets/backend.h"
#include "core/fastmath.h"

namespace magnets::nn::ops {

#if defined(MAGNETS_HAVE_FMA_BLOCK)
#define MAGNETS_OPS_FMA_GEMM simd::fma_gemm
#endif
#include "nn/transformer_ops.inc"
#undef MAGNETS_OPS_FMA_GEMM

} // namespace magnets::nn::ops
