// lib/cpu/winograd.h (private): 3x3, stride-1, pad-1 convolutions by Winograd's
// minimal filtering F(2x2, 3x3), forward and both backward passes, on the CPU.
//
// Each 4x4 input tile d and 3x3 filter g give a 2x2 output tile
//     Y = A^T [ (G g G^T) . (B^T d B) ] A
// so a 3x3 convolution becomes 16 independent products [tiles x C_in] x
// [C_in x C_out] (one per tile position xi), 2.25x fewer multiplications than
// the direct method. The backward passes are the same algorithm:
//   - data: the forward pass on dy with the filters rotated 180 degrees and
//     C_in/C_out swapped (rotation permutes the 16 transformed positions);
//   - weights: dU[xi] = sum over tiles (A dY A^T)[xi] (x) (B^T d B)[xi], then
//     dg = G^T dU G.
// Tiles are processed in chunks that stay in the core's L2 cache, with an
// AVX2 6x16 register-block product; the transposes to and from NHWC are the
// only full passes over memory. Results differ from the direct method by
// rounding only (relative error about 1e-6 in f32; tests/test_backend.cpp).
//
// The oneDNN backend routes the shapes winograd_fits() accepts here (oneDNN
// 2.x has Winograd only on AVX-512); set MAGNETS_WINOGRAD=0 to use oneDNN's
// direct convolutions instead (benchmarks compare both).
#pragma once
#include "magnets/backend.h"

namespace magnets::cpu {

// True for 3x3, stride 1, pad 1 with the channel counts the vector code
// handles (input channels a multiple of 8, output channels of 16, for the
// pass's own input and output), on a CPU build with AVX2/FMA.
bool winograd_fits(Op op, const Conv2dShape& s);
// False when the environment sets MAGNETS_WINOGRAD=0 (read once).
bool winograd_enabled();

void winograd_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);
void winograd_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void winograd_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias);

} // namespace magnets::cpu
