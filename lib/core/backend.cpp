// Backend selection, thread control and the argument checks shared by all
// backends (see core/backend_registry.h).
#include "core/backend_registry.h"
#include "magnets/error.h"
#include "magnets_config.h"

#include <omp.h>

#if MAGNETS_HAVE_CUDA
#include <dlfcn.h>
#endif

#include <string>

namespace magnets {

const char* op_name(Op op) {
    switch (op) {
    case Op::matmul: return "matmul";
    case Op::conv2d_forward: return "conv2d_forward";
    case Op::conv2d_backward_data: return "conv2d_backward_data";
    case Op::conv2d_backward_weights: return "conv2d_backward_weights";
    }
    return "unknown";
}

void Backend::matmul_bias(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, const float* bias, float alpha,
                          float beta) {
    matmul(a, trans_a, b, trans_b, c, alpha, beta);
    add_bias(c.data, c.ld, bias, c.rows, c.cols);
}

void Backend::matmul_residual(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, const float* bias,
                              const float* res) {
    copy2d(c.data, c.ld, res, c.ld, c.rows, c.cols);
    matmul_bias(a, trans_a, b, trans_b, c, bias, 1.0f, 1.0f);
}

void Backend::matmul_gelu_backward(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat du, const float* gp,
                                   float* db) {
    check(du.ld == du.cols, "matmul_gelu_backward", "du must be contiguous (ld = cols)");
    matmul(a, trans_a, b, trans_b, du);
    gelu_bias_backward(gp, du.data, du.data, db, du.rows, du.cols);
}

std::vector<std::string> available_backends() {
    std::vector<std::string> names{"ref"};
#if MAGNETS_HAVE_ONEDNN
    names.push_back("onednn");
#endif
    return names;
}

std::vector<std::string> device_backends() {
    std::vector<std::string> names;
#if MAGNETS_HAVE_CUDA
    names.push_back("cuda");
#endif
    return names;
}

static std::string join_available() {
    std::string s;
    for (const auto& n : available_backends()) s += (s.empty() ? "" : ", ") + n;
    return s;
}

#if MAGNETS_HAVE_CUDA
// libmagnets_cuda's entry point: already there when the program links the
// library (tests, static builds), else loaded from beside libmagnets.so.
extern "C" Backend* magnets_cuda_backend_create() __attribute__((weak));

static std::unique_ptr<Backend> load_cuda_backend() {
    using Create = Backend* (*)();
    static Create create = nullptr;
    static std::string failure;
    if (!create && failure.empty()) {
        if (magnets_cuda_backend_create) {
            create = magnets_cuda_backend_create;
        } else {
            std::string dir;
            Dl_info info{};
            if (dladdr(reinterpret_cast<void*>(&make_backend), &info) && info.dli_fname) {
                dir = info.dli_fname;
                dir = dir.find('/') == std::string::npos ? std::string() : dir.substr(0, dir.rfind('/') + 1);
            }
            void* h = dlopen((dir + "libmagnets_cuda.so").c_str(), RTLD_NOW | RTLD_LOCAL);
            if (!h) h = dlopen("libmagnets_cuda.so", RTLD_NOW | RTLD_LOCAL);
            if (h) create = reinterpret_cast<Create>(dlsym(h, "magnets_cuda_backend_create"));
            if (!create) {
                const char* e = dlerror();
                failure = e ? e : "libmagnets_cuda.so has no entry point";
            }
        }
    }
    if (!create)
        throw Error("backend not available: cuda", {}, "could not load the CUDA backend library: " + failure,
                    "install the CUDA runtime libraries (cuBLAS, cuDNN) it was built against, or use one of: " +
                        join_available());
    return std::unique_ptr<Backend>(create());
}
#endif

std::unique_ptr<Backend> make_backend(const std::string& name) {
    if (name == "ref") return make_ref_backend();
    if (name == "onednn" || name == "auto") {
#if MAGNETS_HAVE_ONEDNN
        return make_onednn_backend();
#else
        if (name == "auto") return make_ref_backend();
        throw Error("backend not available: onednn", {}, "this library was built without oneDNN",
                    "install libdnnl-dev and rebuild with -Donednn=enabled, or use one of: " +
                        join_available());
#endif
    }
    if (name == "cuda") {
#if MAGNETS_HAVE_CUDA
        return load_cuda_backend(); // throws with a hint when no device is visible
#else
        throw Error("backend not available: cuda", {}, "this library was built without CUDA",
                    "rebuild with -Dcuda=enabled on a machine with the CUDA toolkit, or use one of: " +
                        join_available());
#endif
    }
    throw Error("unknown backend: '" + name + "'", {}, {},
                "use auto or one of: " + join_available());
}

// The OpenMP default (OMP_NUM_THREADS or the core count), captured before the
// first set_num_threads() so that set_num_threads(0) can restore it.
static int default_num_threads() {
    static const int n = omp_get_max_threads();
    return n;
}

void set_num_threads(int n) {
    check(n >= 0, "invalid thread count", std::to_string(n) + " is negative",
          "use 0 for the default or a positive count");
    const int def = default_num_threads();
    omp_set_num_threads(n == 0 ? def : n);
}

int num_threads() {
    default_num_threads();
    return omp_get_max_threads();
}

static std::string mat_str(const char* name, ConstMat m) {
    return std::string(name) + " [" + std::to_string(m.rows) + ", " + std::to_string(m.cols) +
           "] ld " + std::to_string(m.ld);
}

MatmulDims check_matmul_args(const char* backend, ConstMat a, bool trans_a, ConstMat b,
                             bool trans_b, Mat c) {
    const std::string what = std::string(backend) + " matmul: invalid arguments";
    const std::string shapes = mat_str("A", a) + (trans_a ? "^T" : "") + ", " +
                               mat_str("B", b) + (trans_b ? "^T" : "") + ", " +
                               mat_str("C", c);
    for (ConstMat x : {a, b, ConstMat(c)}) {
        check(x.rows >= 0 && x.cols >= 0, what, "negative size in " + shapes);
        check(x.ld >= x.cols, what, "leading dimension smaller than cols in " + shapes,
              "ld is the distance between rows, at least cols");
        check(x.data != nullptr || x.rows * x.cols == 0, what, "null data in " + shapes);
    }
    MatmulDims d;
    d.m = trans_a ? a.cols : a.rows;
    d.k = trans_a ? a.rows : a.cols;
    const int64_t kb = trans_b ? b.cols : b.rows;
    d.n = trans_b ? b.rows : b.cols;
    check(d.k == kb, what, "inner dimensions differ (" + std::to_string(d.k) + " vs " +
                               std::to_string(kb) + ") in " + shapes);
    check(c.rows == d.m && c.cols == d.n, what,
          "C must be [" + std::to_string(d.m) + ", " + std::to_string(d.n) + "] in " + shapes);
    return d;
}

void check_conv2d_shape(const char* backend, Op op, const Conv2dShape& s) {
    const std::string what = std::string(backend) + " " + op_name(op) + ": invalid shape";
    const std::string shape = "x [" + std::to_string(s.n) + ", " + std::to_string(s.c_in) + ", " +
                              std::to_string(s.h) + ", " + std::to_string(s.w) + "], w [" +
                              std::to_string(s.c_out) + ", " + std::to_string(s.c_in) + ", " +
                              std::to_string(s.kh) + ", " + std::to_string(s.kw) + "], stride " +
                              std::to_string(s.stride) + ", pad " + std::to_string(s.pad);
    check(s.n > 0 && s.c_in > 0 && s.h > 0 && s.w > 0 && s.c_out > 0 && s.kh > 0 && s.kw > 0,
          what, "every size must be positive: " + shape);
    check(s.stride > 0 && s.pad >= 0, what, "stride must be positive and pad non-negative: " + shape);
    check(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw, what,
          "kernel larger than the padded input: " + shape);
}

} // namespace magnets
