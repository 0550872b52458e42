// The oneDNN (2.6) CPU backend: matmul and 2-D convolution primitives on
// caller-owned host buffers.
//
// Contracts and choices:
// - Matmul operands are described by strided memory descriptors, so leading
//   dimensions and transposes cost no copy: op(A) = A^T is the stored [k, m]
//   matrix with strides {1, ld}. alpha is an output scale, beta a sum post-op
//   (only when beta != 0, so beta = 0 never reads C and NaN in C is dropped).
// - Creating a oneDNN primitive (kernels are JIT-compiled) took 0.5 ms for a
//   small convolution and up to 20 ms for the first matmul here, far more than
//   running a small one (2-4 us), so every primitive (with its memory objects and reorders) is cached
//   by shape, leading dimensions, flags, and for matmul alpha and beta. Each
//   cache is cleared when it exceeds k_max_plans entries, which bounds memory
//   for callers that vary alpha/beta freely.
// - Convolutions take NCHW data and OIHW weights, the caller's layouts. Each op
//   either runs on those plain layouts directly or lets oneDNN choose blocked
//   layouts (format_tag::any) and reorders inputs in and outputs out on every
//   call; k_default_conv_layouts records which was faster here and why. The
//   blocked copies live in scratch buffers shared by all plans (calls are
//   serial), so memory grows with the largest convolution, not with the
//   number of cached shapes.
// - One engine and one in-order stream per backend; every call waits for its
//   work, so results are ready on return. Not thread-safe: one caller at a
//   time per Backend object (the caches and stream are unguarded). Threads
//   come from OpenMP (oneDNN's CPU runtime here), see set_num_threads().
#include "core/backend_registry.h"
#include "cpu/host_backend.h"
#include "core/fma_block.h"
#include "cpu/winograd.h"
#include "magnets/error.h"

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <unordered_map>
#include <vector>

namespace magnets {
namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
constexpr auto f32 = dnnl::memory::data_type::f32;
constexpr std::align_val_t k_alignment = k_host_alignment; // scratch buffers too
constexpr size_t k_max_plans = 1024;

// For each convolution op: true = let oneDNN pick blocked layouts (any) and
// reorder to/from NCHW/OIHW around the primitive; false = run on NCHW/OIHW.
struct ConvLayouts {
    bool forward_any, backward_data_any, backward_weights_any;
};
// Blocked (any + reorders) for every op. Plain NCHW/OIHW makes oneDNN 2.6 fall
// back to im2col + GEMM ("gemm:jit"); blocked layouts get the direct AVX2
// kernels ("jit:avx2", nChw8c) and win even with the reorders counted (each
// reorder of a 64x32x32x32 tensor costs ~1.2 ms). Measured on 1 thread of the
// 2-core EPYC, n = 64, time per call including reorders, plain -> blocked:
//   32->32 3x3 32x32:    fwd 37 -> 21 ms, bwd-data 55 -> 20, bwd-weights 62 -> 31
//   64->64 3x3 16x16:    fwd 27 -> 19 ms, bwd-data 32 -> 18, bwd-weights 37 -> 23
//   32->64 4x4/2 32x32:  fwd 31 -> 19 ms, bwd-data 37 -> 18, bwd-weights 39 -> 20
//   64->32 4x4/2 16x16:  fwd 13 -> 6 ms,  bwd-data 15 -> 6,  bwd-weights 13 -> 6
// (a second run on a busier machine gave the same ordering, 1.2-2.7x).
constexpr ConvLayouts k_default_conv_layouts{true, true, true};

// Cache key: an op tag and up to 11 integers, compared exactly.
struct Key {
    std::array<int64_t, 12> v{};
    bool operator==(const Key& o) const { return v == o.v; }
};
struct KeyHash {
    size_t operator()(const Key& k) const {
        uint64_t h = 0x9e3779b97f4a7c15ull;
        for (int64_t x : k.v) {
            h ^= static_cast<uint64_t>(x) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
        }
        return static_cast<size_t>(h);
    }
};

int64_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// A primitive with its argument memories. Each Port is one argument: `user`
// wraps the caller's buffer (handle set per call); when oneDNN wants another
// layout, `inner` points into the backend's scratch buffer `slot` (handle set
// per call) and `reorder` converts between the two (user -> inner for inputs,
// inner -> user for outputs).
struct Port {
    bool input = true;
    bool reordered = false;
    int slot = -1;
    memory user, inner;
    dnnl::reorder reorder;
};
struct Plan {
    dnnl::primitive prim;
    std::vector<Port> ports;
    std::unordered_map<int, memory> args;
};

class OnednnBackend final : public HostBackend {
public:
    explicit OnednnBackend(ConvLayouts layouts = k_default_conv_layouts)
        : layouts_(layouts), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

    const char* name() const override { return "onednn"; }
    bool supports(Op) const override { return true; }


    void matmul(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, float alpha,
                float beta) override {
        matmul_into(a, trans_a, b, trans_b, c, alpha, beta, nullptr);
    }

    // The bias in the product's epilogue (alpha 1: oneDNN's output scale
    // would scale the bias too).
    void matmul_bias(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, const float* bias, float alpha,
                     float beta) override {
        if (alpha != 1.0f) return Backend::matmul_bias(a, trans_a, b, trans_b, c, bias, alpha, beta);
        matmul_into(a, trans_a, b, trans_b, c, alpha, beta, nullptr, bias);
    }

    // The residual as a binary add post-op: no copy of res into c first.
    void matmul_residual(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, const float* bias,
                         const float* res) override {
        matmul_into(a, trans_a, b, trans_b, c, 1.0f, 0.0f, nullptr, bias, res);
    }

    // The product by GELU' as a binary post-op: du is written once, instead of
    // written by the matmul and read and rewritten by a separate pass.
    void matmul_gelu_backward(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat du, const float* gp,
                              float* db) override {
        check(du.ld == du.cols, "matmul_gelu_backward", "du must be contiguous (ld = cols)");
        matmul_into(a, trans_a, b, trans_b, du, 1.0f, 0.0f, gp);
        bias_backward(du.data, du.ld, db, du.rows, du.cols);
    }


    void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias,
                        float* y) override {
        check_conv2d_shape("onednn", Op::conv2d_forward, s);
        if (cpu::winograd_enabled() && cpu::winograd_fits(Op::conv2d_forward, s))
            return cpu::winograd_forward(s, x, w, bias, y);
        conv(Op::conv2d_forward, s, bias != nullptr, {x, w, bias, y});
    }

    void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w,
                              float* dx) override {
        check_conv2d_shape("onednn", Op::conv2d_backward_data, s);
        if (cpu::winograd_enabled() && cpu::winograd_fits(Op::conv2d_backward_data, s))
            return cpu::winograd_backward_data(s, dy, w, dx);
        conv(Op::conv2d_backward_data, s, false, {dy, w, dx});
    }

    void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw,
                                 float* dbias) override {
        check_conv2d_shape("onednn", Op::conv2d_backward_weights, s);
        if (cpu::winograd_enabled() && cpu::winograd_fits(Op::conv2d_backward_weights, s))
            return cpu::winograd_backward_weights(s, x, dy, dw, dbias);
        conv(Op::conv2d_backward_weights, s, dbias != nullptr, {x, dy, dw, dbias});
    }

private:
    // c = (alpha op(a) op(b) + bias) * mul + add + beta c, where bias [n] (per
    // column), mul [m, n] (contiguous) and add [m, n] (c's leading
    // dimension) apply when not null.
    void matmul_into(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, float alpha, float beta,
                     const float* mul, const float* bias = nullptr, const float* add = nullptr) {
        const MatmulDims d = check_matmul_args("onednn", a, trans_a, b, trans_b, c);
        if (d.m == 0 || d.n == 0) return;
        if (d.k == 0) { // oneDNN rejects empty reductions; C = beta * C
            for (int64_t i = 0; i < d.m; ++i)
                for (int64_t j = 0; j < d.n; ++j) {
                    float& x = c.data[i * c.ld + j];
                    x = beta == 0.0f ? 0.0f : beta * x;
                }
            return;
            // (with mul, alpha op(a) op(b) = 0 times mul is 0 as well)
        }
        // A transposed weight (C = A W^T, the layers' forward products) is
        // copied into [k, n] order first when the product is much larger than
        // the copy: oneDNN 2.6 packs a transposed B slowly, and for a prefix
        // slice (ld > k) falls back to its older GEMM (the training step's
        // 4160x64 * [64, 64]^T ran at 51 GFLOP/s against 127 untransposed, on
        // an AVX-512 core; the copy is 1/m of the product's work).
        if (trans_b && !trans_a && d.m >= k_transpose_b_min_m && transpose_b_enabled()) {
            bt_.resize(static_cast<size_t>(d.k * d.n));
            transpose_into(b.data, b.ld, d.n, d.k, bt_.data());
            b = ConstMat{bt_.data(), d.k, d.n, d.n};
            trans_b = false;
        }
        const Key key{{0, d.m, d.n, d.k, a.ld, b.ld, c.ld, trans_a, trans_b, float_bits(alpha),
                       float_bits(beta), (mul != nullptr) + 2 * (bias != nullptr) + 4 * (add != nullptr)}};
        try {
            Plan& plan = find_or_make(matmul_plans_, key, [&] {
                return make_matmul_plan(d, a.ld, trans_a, b.ld, trans_b, c.ld, alpha, beta, mul != nullptr,
                                        bias != nullptr, add != nullptr);
            });
            run(plan, {a.data, b.data, c.data, mul, add, bias});
        } catch (const dnnl::error& e) {
            throw Error("onednn matmul failed", {}, dnnl_why(e, "m " + std::to_string(d.m) + ", n " +
                                                                  std::to_string(d.n) + ", k " +
                                                                  std::to_string(d.k)),
                        "use the ref backend to compute this case");
        }
    }

    using PlanMap = std::unordered_map<Key, Plan, KeyHash>;

    template <class Make>
    Plan& find_or_make(PlanMap& plans, const Key& key, Make make) {
        auto it = plans.find(key);
        if (it != plans.end()) return it->second;
        if (plans.size() >= k_max_plans) plans.clear();
        return plans.emplace(key, make()).first->second;
    }

    static std::string dnnl_why(const dnnl::error& e, const std::string& shape) {
        return std::string(e.what()) + " (status " + std::to_string(int(e.status)) + ") for " + shape;
    }

    // Appends one argument port: `user_md` is the caller's layout, `want` the
    // primitive's; they differ only when a layout was left to oneDNN (any).
    void add_port(Plan& plan, int arg, const memory::desc& user_md, const memory::desc& want,
                  bool input) {
        Port p;
        p.input = input;
        p.user = memory(user_md, engine_, DNNL_MEMORY_NONE);
        if (want == user_md) {
            p.inner = p.user;
        } else {
            p.reordered = true;
            p.slot = int(std::count_if(plan.ports.begin(), plan.ports.end(),
                                       [](const Port& q) { return q.reordered; }));
            p.inner = memory(want, engine_, DNNL_MEMORY_NONE);
            p.reorder = input ? dnnl::reorder(p.user, p.inner) : dnnl::reorder(p.inner, p.user);
        }
        plan.args[arg] = p.inner;
        plan.ports.push_back(std::move(p));
    }

    // Runs a plan on the caller's buffers, given in port order; a null pointer
    // marks an absent optional argument (its port must not exist).
    void run(Plan& plan, std::initializer_list<const float*> ptrs) {
        const size_t given = std::count_if(ptrs.begin(), ptrs.end(), [](const float* p) { return p; });
        check(given == plan.ports.size(), "onednn: null buffer", "a required buffer pointer is null");
        size_t i = 0;
        for (const float* ptr : ptrs) {
            if (!ptr) continue;
            plan.ports.at(i++).user.set_data_handle(const_cast<float*>(ptr));
        }
        for (Port& p : plan.ports) {
            if (!p.reordered) continue;
            p.inner.set_data_handle(scratch(p.slot, p.inner.get_desc().get_size()));
            if (p.input) p.reorder.execute(stream_, p.user, p.inner);
        }
        plan.prim.execute(stream_, plan.args);
        for (Port& p : plan.ports)
            if (p.reordered && !p.input) p.reorder.execute(stream_, p.inner, p.user);
        stream_.wait();
    }

    // Products with at least this many rows copy a transposed B (see matmul).
    static constexpr int64_t k_transpose_b_min_m = 256;
    static bool transpose_b_enabled() {
        static const bool on = [] {
            const char* e = std::getenv("MAGNETS_ONEDNN_TRANSPOSE_B");
            return !(e && std::strcmp(e, "0") == 0);
        }();
        return on;
    }
    // t [k, n] (ld n) = the transpose of b stored [n, k] (ld ldb).
    static void transpose_into(const float* b, int64_t ldb, int64_t n, int64_t k, float* t) {
        int64_t j0 = 0;
#if defined(MAGNETS_HAVE_FMA_BLOCK)
        for (; j0 + 8 <= n; j0 += 8) {
            int64_t k0 = 0;
            for (; k0 + 8 <= k; k0 += 8) simd::transpose8(b + j0 * ldb + k0, ldb, t + k0 * n + j0, n);
            for (; k0 < k; ++k0)
                for (int64_t j = j0; j < j0 + 8; ++j) t[k0 * n + j] = b[j * ldb + k0];
        }
#endif
        for (int64_t kk = 0; kk < k; ++kk)
            for (int64_t j = j0; j < n; ++j) t[kk * n + j] = b[j * ldb + kk];
    }

    // op(A) [m, k] from A stored [m, k] (strides {ld, 1}) or [k, m] (strides {1, ld}).
    static memory::desc strided_md(int64_t rows, int64_t cols, int64_t ld, bool trans) {
        return memory::desc({rows, cols}, f32, trans ? memory::dims{1, ld} : memory::dims{ld, 1});
    }

    Plan make_matmul_plan(const MatmulDims& d, int64_t lda, bool trans_a, int64_t ldb, bool trans_b,
                          int64_t ldc, float alpha, float beta, bool mul, bool bias, bool add) {
        const memory::desc a_md = strided_md(d.m, d.k, lda, trans_a);
        const memory::desc b_md = strided_md(d.k, d.n, ldb, trans_b);
        const memory::desc c_md = strided_md(d.m, d.n, ldc, false);
        const memory::desc mul_md = strided_md(d.m, d.n, d.n, false);
        dnnl::primitive_attr attr;
        if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
        dnnl::post_ops po;
        const memory::desc add_md = strided_md(d.m, d.n, ldc, false);
        if (mul) po.append_binary(dnnl::algorithm::binary_mul, mul_md);
        if (add) po.append_binary(dnnl::algorithm::binary_add, add_md);
        if (beta != 0.0f) po.append_sum(beta);
        if (mul || add || beta != 0.0f) attr.set_post_ops(po);
        const memory::desc bias_md({1, d.n}, f32, memory::dims{d.n, 1});
        const dnnl::matmul::primitive_desc pd(
            bias ? dnnl::matmul::desc(a_md, b_md, bias_md, c_md) : dnnl::matmul::desc(a_md, b_md, c_md), attr, engine_);
        Plan plan;
        plan.prim = dnnl::matmul(pd);
        add_port(plan, DNNL_ARG_SRC, a_md, pd.src_desc(), true);
        add_port(plan, DNNL_ARG_WEIGHTS, b_md, pd.weights_desc(), true);
        add_port(plan, DNNL_ARG_DST, c_md, pd.dst_desc(), false);
        if (mul) add_port(plan, DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, mul_md, mul_md, true);
        if (add) add_port(plan, DNNL_ARG_ATTR_MULTIPLE_POST_OP(mul ? 1 : 0) | DNNL_ARG_SRC_1, add_md, add_md, true);
        if (bias) add_port(plan, DNNL_ARG_BIAS, bias_md, pd.bias_desc(), true);
        return plan;
    }

    void conv(Op op, const Conv2dShape& s, bool has_bias, std::initializer_list<const float*> ptrs) {
        const Key key{{int64_t(op) + 1, s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride, s.pad,
                       has_bias, 0}};
        try {
            Plan& plan = find_or_make(conv_plans_, key, [&] { return make_conv_plan(op, s, has_bias); });
            run(plan, ptrs);
        } catch (const dnnl::error& e) {
            throw Error(std::string("onednn ") + op_name(op) + " failed", {},
                        dnnl_why(e, "n " + std::to_string(s.n) + ", c_in " + std::to_string(s.c_in) +
                                        ", " + std::to_string(s.h) + "x" + std::to_string(s.w) +
                                        ", c_out " + std::to_string(s.c_out) + ", kernel " +
                                        std::to_string(s.kh) + "x" + std::to_string(s.kw) +
                                        ", stride " + std::to_string(s.stride) + ", pad " +
                                        std::to_string(s.pad)),
                        "use the ref backend to compute this case");
        }
    }

    // Port order matches the public signatures: forward (x, w, bias?, y),
    // backward data (dy, w, dx), backward weights (x, dy, dw, dbias?).
    Plan make_conv_plan(Op op, const Conv2dShape& s, bool has_bias) {
        const bool any = op == Op::conv2d_forward         ? layouts_.forward_any
                         : op == Op::conv2d_backward_data ? layouts_.backward_data_any
                                                          : layouts_.backward_weights_any;
        const memory::dims x_dims{s.n, s.c_in, s.h, s.w}, w_dims{s.c_out, s.c_in, s.kh, s.kw},
            y_dims{s.n, s.c_out, s.out_h(), s.out_w()}, b_dims{s.c_out};
        const memory::desc x_user(x_dims, f32, tag::nchw), w_user(w_dims, f32, tag::oihw),
            y_user(y_dims, f32, tag::nchw), b_user(b_dims, f32, tag::x);
        const memory::desc x_md(x_dims, f32, any ? tag::any : tag::nchw),
            w_md(w_dims, f32, any ? tag::any : tag::oihw), y_md(y_dims, f32, any ? tag::any : tag::nchw);
        const memory::dims strides{s.stride, s.stride}, pad{s.pad, s.pad};
        const auto algo = dnnl::algorithm::convolution_direct;
        const auto fwd_desc =
            has_bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, algo, x_md,
                                                       w_md, b_user, y_md, strides, pad, pad)
                     : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, algo, x_md,
                                                       w_md, y_md, strides, pad, pad);
        const dnnl::convolution_forward::primitive_desc fwd_pd(fwd_desc, engine_);

        Plan plan;
        switch (op) {
        case Op::conv2d_forward:
            plan.prim = dnnl::convolution_forward(fwd_pd);
            add_port(plan, DNNL_ARG_SRC, x_user, fwd_pd.src_desc(), true);
            add_port(plan, DNNL_ARG_WEIGHTS, w_user, fwd_pd.weights_desc(), true);
            if (has_bias) add_port(plan, DNNL_ARG_BIAS, b_user, fwd_pd.bias_desc(), true);
            add_port(plan, DNNL_ARG_DST, y_user, fwd_pd.dst_desc(), false);
            break;
        case Op::conv2d_backward_data: {
            const dnnl::convolution_backward_data::primitive_desc pd(
                dnnl::convolution_backward_data::desc(algo, x_md, w_md, y_md, strides, pad, pad),
                engine_, fwd_pd);
            plan.prim = dnnl::convolution_backward_data(pd);
            add_port(plan, DNNL_ARG_DIFF_DST, y_user, pd.diff_dst_desc(), true);
            add_port(plan, DNNL_ARG_WEIGHTS, w_user, pd.weights_desc(), true);
            add_port(plan, DNNL_ARG_DIFF_SRC, x_user, pd.diff_src_desc(), false);
            break;
        }
        case Op::conv2d_backward_weights: {
            const auto desc =
                has_bias ? dnnl::convolution_backward_weights::desc(algo, x_md, w_md, b_user, y_md,
                                                                    strides, pad, pad)
                         : dnnl::convolution_backward_weights::desc(algo, x_md, w_md, y_md, strides,
                                                                    pad, pad);
            const dnnl::convolution_backward_weights::primitive_desc pd(desc, engine_, fwd_pd);
            plan.prim = dnnl::convolution_backward_weights(pd);
            add_port(plan, DNNL_ARG_SRC, x_user, pd.src_desc(), true);
            add_port(plan, DNNL_ARG_DIFF_DST, y_user, pd.diff_dst_desc(), true);
            add_port(plan, DNNL_ARG_DIFF_WEIGHTS, w_user, pd.diff_weights_desc(), false);
            if (has_bias) add_port(plan, DNNL_ARG_DIFF_BIAS, b_user, pd.diff_bias_desc(), false);
            break;
        }
        case Op::matmul: break;
        }
        return plan;
    }

    // Scratch buffer `slot` with at least `bytes`, grown on demand; plans set
    // their handles on every call, so growing never leaves one dangling.
    void* scratch(int slot, size_t bytes) {
        if (size_t(slot) >= scratch_.size()) scratch_.resize(size_t(slot) + 1);
        Scratch& s = scratch_[size_t(slot)];
        if (s.bytes < bytes) {
            s.data.reset(static_cast<float*>(::operator new(bytes, k_alignment)));
            s.bytes = bytes;
        }
        return s.data.get();
    }

    struct AlignedDelete {
        void operator()(float* p) const { ::operator delete(p, k_alignment); }
    };
    struct Scratch {
        std::unique_ptr<float, AlignedDelete> data;
        size_t bytes = 0;
    };

    ConvLayouts layouts_;
    dnnl::engine engine_;
    dnnl::stream stream_;
    PlanMap matmul_plans_, conv_plans_;
    std::vector<float> bt_; // the transposed B of matmul
    std::vector<Scratch> scratch_;
};

} // namespace

std::unique_ptr<Backend> make_onednn_backend() { return std::make_unique<OnednnBackend>(); }

} // namespace magnets
