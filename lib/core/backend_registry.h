// core/backend_registry.h (private): factories of the backends built into the
// library, and the argument checks every backend shares so that all of them
// reject the same bad calls with the same message.
//
// Backend folders (cpu/ref, cpu/onednn, cuda) include this header but never
// each other; make_backend() in core/backend.cpp is the only caller of the
// factories.
#pragma once
#include "magnets/backend.h"

#include <memory>

namespace magnets {

std::unique_ptr<Backend> make_ref_backend();
std::unique_ptr<Backend> make_onednn_backend(); // defined only when MAGNETS_HAVE_ONEDNN
// In libmagnets_cuda (built with MAGNETS_HAVE_CUDA), which make_backend loads on
// first use through its C entry point magnets_cuda_backend_create; throws
// without a device.
std::unique_ptr<Backend> make_cuda_backend();

// Shapes of C = op(A) * op(B): op(A) [m, k], op(B) [k, n], C [m, n].
struct MatmulDims {
    int64_t m = 0, n = 0, k = 0;
};

// Throws Error naming `backend` unless op(A), op(B) and C agree, every
// ld >= cols, sizes are non-negative, and data is non-null where elements exist.
// Overlap of C with A or B is not detected; every backend assumes there is none.
MatmulDims check_matmul_args(const char* backend, ConstMat a, bool trans_a, ConstMat b,
                             bool trans_b, Mat c);

// Throws Error naming `backend` and `op` unless every size is positive, the
// padding is non-negative and the output is at least 1x1.
void check_conv2d_shape(const char* backend, Op op, const Conv2dShape& s);

} // namespace magnets
