// tests/device_proxy.h: a backend that behaves like a GPU's to the code above
// it (host_memory() is false: everything must go through alloc, upload,
// download and the backend's operations) while a CPU backend computes. Its
// buffers are whole pages that stay read- and write-protected between
// operations, so host code that touches "device" memory directly (a
// forgotten upload or download) crashes the test instead of passing, and
// every pointer an operation gets must be one of its buffers (a host array
// handed to a device operation throws). With
// it the device code paths of training and sampling run here, where no GPU
// is, and must give the CPU path's bits.
#pragma once
#include "magnets/backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

namespace magnets::test {

class DeviceProxy final : public Backend {
public:
    // One reserved arena (virtual address space only), handed out in whole
    // pages and never reused, so one mprotect opens or closes everything.
    explicit DeviceProxy(std::unique_ptr<Backend> inner, size_t arena_bytes = size_t{16} << 30)
        : in_(std::move(inner)), arena_bytes_(arena_bytes) {
        void* p = mmap(nullptr, arena_bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) throw std::runtime_error("device proxy: cannot reserve the arena");
        arena_ = static_cast<char*>(p);
    }
    ~DeviceProxy() override { munmap(arena_, arena_bytes_); }
    DeviceProxy(const DeviceProxy&) = delete;
    DeviceProxy& operator=(const DeviceProxy&) = delete;
    const char* name() const override { return "device-proxy"; }
    bool supports(Op op) const override { return in_->supports(op); }
    bool host_memory() const override { return false; }

    float* alloc(size_t count) override {
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        const size_t bytes = (std::max<size_t>(count, 1) * sizeof(float) + page - 1) / page * page;
        if (used_ + bytes > arena_bytes_) throw std::runtime_error("device proxy: arena exhausted");
        float* p = reinterpret_cast<float*>(arena_ + used_);
        used_ += bytes;
        regions_[p] = bytes;
        ++allocs_;
        return p;
    }
    void free(float* p) override {
        auto it = regions_.find(p);
        if (it == regions_.end()) throw std::runtime_error("device proxy: free of a pointer it did not give");
        madvise(p, it->second, MADV_DONTNEED); // the pages go back; the addresses are not reused
        regions_.erase(it);
    }
    void upload(float* dst, const float* src, size_t n) override {
        Open o(*this);
        if (n) std::memcpy(dst, src, n * sizeof(float));
    }
    void download(float* dst, const float* src, size_t n) override {
        Open o(*this);
        if (n) std::memcpy(dst, src, n * sizeof(float));
    }
    int64_t allocations() const { return allocs_; }

#define MAGNETS_FWD(call) \
    Open o(*this);        \
    return in_->call
    void matmul(ConstMat a, bool ta, ConstMat b, bool tb, Mat c, float alpha, float beta) override {
        devs("matmul", a.data, b.data, c.data);
        MAGNETS_FWD(matmul(a, ta, b, tb, c, alpha, beta));
    }
    void matmul_bias(ConstMat a, bool ta, ConstMat b, bool tb, Mat c, const float* bias, float alpha,
                     float beta) override {
        devs("matmul_bias", a.data, b.data, c.data, bias);
        MAGNETS_FWD(matmul_bias(a, ta, b, tb, c, bias, alpha, beta));
    }
    void matmul_residual(ConstMat a, bool ta, ConstMat b, bool tb, Mat c, const float* bias, const float* res) override {
        devs("matmul_residual", a.data, b.data, c.data, bias, res);
        MAGNETS_FWD(matmul_residual(a, ta, b, tb, c, bias, res));
    }
    void matmul_gelu_backward(ConstMat a, bool ta, ConstMat b, bool tb, Mat du, const float* gp, float* db) override {
        devs("matmul_gelu_backward", a.data, b.data, du.data, gp, db);
        MAGNETS_FWD(matmul_gelu_backward(a, ta, b, tb, du, gp, db));
    }
    void matmul_rowstable(ConstMat a, ConstMat w, const float* bias, Mat c, Act act) override {
        devs("matmul_rowstable", a.data, w.data, bias, c.data);
        MAGNETS_FWD(matmul_rowstable(a, w, bias, c, act));
    }
    void embed_rows(const int32_t* ids, const int32_t* pos, int64_t rq, int64_t S, const float* tok, const float* pe,
                    int64_t D, float* x, int64_t R, int64_t r) override {
        devs("embed_rows", ids, pos, tok, pe, x);
        MAGNETS_FWD(embed_rows(ids, pos, rq, S, tok, pe, D, x, R, r));
    }
    void layernorm_rows(const float* x, float* y, const float* g, const float* b, int64_t rows, int64_t n) override {
        devs("layernorm_rows", x, y, g, b);
        MAGNETS_FWD(layernorm_rows(x, y, g, b, rows, n));
    }
    void add_into(float* x, const float* y, int64_t count) override { devs("add_into", x, y);
 MAGNETS_FWD(add_into(x, y, count)); }
    void scatter_rows(const float* src, const int32_t* pos, int64_t rq, int64_t S, float* dst, int64_t R,
                      int64_t n) override {
        devs("scatter_rows", src, pos, dst);
        MAGNETS_FWD(scatter_rows(src, pos, rq, S, dst, R, n));
    }
    void gather_rows(const float* src, const int32_t* idx, int64_t seqs, int64_t rq, int64_t ro, float* dst,
                     int64_t n) override {
        devs("gather_rows", src, idx, dst);
        MAGNETS_FWD(gather_rows(src, idx, seqs, rq, ro, dst, n));
    }
    void attention_rows(const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq,
                        int64_t S, int64_t heads, int64_t hd) override {
        devs("attention_rows", q, kc, vc, out);
        MAGNETS_FWD(attention_rows(q, kc, vc, out, seqs, rq, S, heads, hd));
    }
    void draw_rows(const float* logits, int64_t n, const DrawSpec& d, const int32_t* rows, const int32_t* streams,
                   int32_t* token, float* conf) override {
        devs("draw_rows", logits, rows, streams, token, conf);
        MAGNETS_FWD(draw_rows(logits, n, d, rows, streams, token, conf));
    }
    void sampler_rows(const int32_t* masked, const int32_t* fresh, int64_t nb, int64_t seqs, int64_t N, bool refresh,
                      int64_t rq, int64_t ro, int64_t step, int32_t* pos, int32_t* out_rows, int32_t* meta,
                      int32_t* row_pos) override {
        for (const void* p : {static_cast<const void*>(masked), static_cast<const void*>(fresh),
                              static_cast<const void*>(pos), static_cast<const void*>(out_rows),
                              static_cast<const void*>(meta), static_cast<const void*>(row_pos)})
            dev("sampler_rows", p);
        MAGNETS_FWD(sampler_rows(masked, fresh, nb, seqs, N, refresh, rq, ro, step, pos, out_rows, meta, row_pos));
    }
    void reveal_top(const int32_t* token, const float* conf, const int32_t* row_pos, int64_t nb, int64_t ro,
                    int64_t reveal, int64_t N, int64_t S, int64_t branches, int32_t* masked, int32_t* fresh,
                    int32_t* tokens, int32_t* ids, float* conf_all) override {
        for (const void* p : {static_cast<const void*>(token), static_cast<const void*>(conf),
                              static_cast<const void*>(row_pos), static_cast<const void*>(masked),
                              static_cast<const void*>(fresh), static_cast<const void*>(tokens),
                              static_cast<const void*>(ids), static_cast<const void*>(conf_all)})
            dev("reveal_top", p);
        MAGNETS_FWD(reveal_top(token, conf, row_pos, nb, ro, reveal, N, S, branches, masked, fresh, tokens, ids,
                               conf_all));
    }
    void layernorm_forward(const float* x, int64_t ldx, float* y, int64_t ldy, float* mean, float* rstd,
                           const float* g, const float* b, int64_t rows, int64_t n) override {
        devs("layernorm_forward", x, y, mean, rstd, g, b);
        MAGNETS_FWD(layernorm_forward(x, ldx, y, ldy, mean, rstd, g, b, rows, n));
    }
    void layernorm_backward(const float* x, int64_t ldx, const float* dy, int64_t lddy, const float* mean,
                            const float* rstd, const float* g, float* dx, int64_t lddx, float* dg, float* db,
                            int64_t rows, int64_t n, bool accumulate) override {
        devs("layernorm_backward", x, dy, mean, rstd, g, dx, dg, db);
        MAGNETS_FWD(layernorm_backward(x, ldx, dy, lddy, mean, rstd, g, dx, lddx, dg, db, rows, n, accumulate));
    }
    void add_bias(float* y, int64_t ld, const float* b, int64_t rows, int64_t n) override {
        devs("add_bias", y, b);
        MAGNETS_FWD(add_bias(y, ld, b, rows, n));
    }
    void bias_backward(const float* dy, int64_t ld, float* db, int64_t rows, int64_t n) override {
        devs("bias_backward", dy, db);
        MAGNETS_FWD(bias_backward(dy, ld, db, rows, n));
    }
    void bias_gelu_forward(float* u, const float* b, float* g, int64_t rows, int64_t n) override {
        devs("bias_gelu_forward", u, b, g);
        MAGNETS_FWD(bias_gelu_forward(u, b, g, rows, n));
    }
    void gelu_bias_backward(const float* gp, const float* dg, float* du, float* db, int64_t rows, int64_t n) override {
        devs("gelu_bias_backward", gp, dg, du, db);
        MAGNETS_FWD(gelu_bias_backward(gp, dg, du, db, rows, n));
    }
    void attention_forward(const float* q, const float* k, const float* v, int64_t ld, float* out, float* probs,
                           int64_t batch, int64_t seq, int64_t heads, int64_t hd) override {
        devs("attention_forward", q, k, v, out, probs);
        MAGNETS_FWD(attention_forward(q, k, v, ld, out, probs, batch, seq, heads, hd));
    }
    void attention_backward(const float* q, const float* k, const float* v, const float* probs, const float* dout,
                            int64_t ld, float* dq, float* dk, float* dv, int64_t batch, int64_t seq, int64_t heads,
                            int64_t hd) override {
        devs("attention_backward", q, k, v, probs, dout, dq, dk, dv);
        MAGNETS_FWD(attention_backward(q, k, v, probs, dout, ld, dq, dk, dv, batch, seq, heads, hd));
    }
    LossSums masked_loss(const float* logits, int64_t ld, const float* teacher, int64_t ld_teacher,
                         const int32_t* targets, const uint8_t* mask, int64_t rows, int64_t n_classes, double eps,
                         double alpha, double weight, float* dlogits, int64_t ld_d) override {
        devs("masked_loss", logits, teacher, targets, mask, dlogits);
        MAGNETS_FWD(masked_loss(logits, ld, teacher, ld_teacher, targets, mask, rows, n_classes, eps, alpha, weight,
                                dlogits, ld_d));
    }
    void embedding_backward(const float* dx, const int32_t* ids_host, int64_t R, int64_t S, int64_t r, int64_t D,
                            float* tok_grad, float* pos_grad) override {
        devs("embedding_backward", dx, tok_grad, pos_grad);
        MAGNETS_FWD(embedding_backward(dx, ids_host, R, S, r, D, tok_grad, pos_grad));
    }
    void copy(float* dst, const float* src, size_t n) override { devs("copy", dst, src);
 MAGNETS_FWD(copy(dst, src, n)); }
    void zero(float* p, size_t n) override { devs("zero", p);
 MAGNETS_FWD(zero(p, n)); }
    double sum_squares(const float* const* g, const int64_t* n, int64_t count) override {
        for (int64_t k = 0; k < count; ++k) dev("sum_squares", g[k]);
        MAGNETS_FWD(sum_squares(g, n, count));
    }
    void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float clip, float b1, float b2,
                      float step_size, float inv_sqrt_bc2, float eps, float wd) override {
        devs("adamw_update", w, g, m, v);
        MAGNETS_FWD(adamw_update(w, g, m, v, n, clip, b1, b2, step_size, inv_sqrt_bc2, eps, wd));
    }
    void ema_update(float* e, const float* w, float d, int64_t n) override { devs("ema_update", e, w);
 MAGNETS_FWD(ema_update(e, w, d, n)); }
    void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) override {
        devs("conv2d_forward", x, w, bias, y);
        MAGNETS_FWD(conv2d_forward(s, x, w, bias, y));
    }
    void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) override {
        devs("conv2d_backward_data", dy, w, dx);
        MAGNETS_FWD(conv2d_backward_data(s, dy, w, dx));
    }
    void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw,
                                 float* dbias) override {
        devs("conv2d_backward_weights", x, dy, dw, dbias);
        MAGNETS_FWD(conv2d_backward_weights(s, x, dy, dw, dbias));
    }
    void relu(const float* x, float* y, int64_t n) override {
        devs("relu", x, y);
        MAGNETS_FWD(relu(x, y, n));
    }
    void relu_backward(const float* y, const float* dy, float* dx, int64_t n) override {
        devs("relu_backward", y, dy, dx);
        MAGNETS_FWD(relu_backward(y, dy, dx, n));
    }
    void upsample2(const float* x, float* y, int64_t planes, int64_t h, int64_t w) override {
        devs("upsample2", x, y);
        MAGNETS_FWD(upsample2(x, y, planes, h, w));
    }
    void upsample2_backward(const float* dy, float* dx, int64_t planes, int64_t h, int64_t w) override {
        devs("upsample2_backward", dy, dx);
        MAGNETS_FWD(upsample2_backward(dy, dx, planes, h, w));
    }
    void pixel_unshuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) override {
        devs("pixel_unshuffle2", x, y);
        MAGNETS_FWD(pixel_unshuffle2(x, y, n, c, h, w));
    }
    void pixel_shuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) override {
        devs("pixel_shuffle2", x, y);
        MAGNETS_FWD(pixel_shuffle2(x, y, n, c, h, w));
    }
    void transpose_batched(const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols) override {
        devs("transpose_batched", src, dst);
        MAGNETS_FWD(transpose_batched(src, dst, batches, rows, cols));
    }
    void nearest_codes(const float* z, int64_t m, const float* codebook, int64_t K, int64_t c, float* dist,
                       int32_t* idx) override {
        devs("nearest_codes", z, codebook, dist, idx);
        MAGNETS_FWD(nearest_codes(z, m, codebook, K, c, dist, idx));
    }
    ReconSums recon_loss(const float* pred, const float* target, int64_t images, int64_t per, bool l1, double scale,
                         float* dpred) override {
        devs("recon_loss", pred, target, dpred);
        MAGNETS_FWD(recon_loss(pred, target, images, per, l1, scale, dpred));
    }
    double commit_backward(const float* ze, const float* zq, const float* dzq, float* dze, int64_t n,
                           float g) override {
        devs("commit_backward", ze, zq, dzq, dze);
        MAGNETS_FWD(commit_backward(ze, zq, dzq, dze, n, g));
    }
    void zero_pad(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw) override {
        devs("zero_pad", x, y);
        MAGNETS_FWD(zero_pad(x, y, planes, h, w, ph, pw));
    }
    void max_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p) override {
        devs("max_pool3", x, y);
        MAGNETS_FWD(max_pool3(x, y, planes, h, w, s, p));
    }
    void avg_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w) override {
        devs("avg_pool3", x, y);
        MAGNETS_FWD(avg_pool3(x, y, planes, h, w));
    }
    void mean_planes(const float* x, float* y, int64_t planes, int64_t plane) override {
        devs("mean_planes", x, y);
        MAGNETS_FWD(mean_planes(x, y, planes, plane));
    }
    void copy2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) override {
        devs("copy2d", dst, src);
        MAGNETS_FWD(copy2d(dst, ld_dst, src, ld_src, rows, cols));
    }
    void resize_bilinear(const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y, int64_t c_out,
                         int64_t oh, int64_t ow, float mul, float add) override {
        devs("resize_bilinear", x, y);
        MAGNETS_FWD(resize_bilinear(x, n, c_in, h, w, y, c_out, oh, ow, mul, add));
    }
#undef MAGNETS_FWD

private:
    // Every buffer readable and writable while an operation or a copy runs.
    struct Open {
        DeviceProxy& d;
        explicit Open(DeviceProxy& dp) : d(dp) { d.protect(PROT_READ | PROT_WRITE); }
        ~Open() { d.protect(PROT_NONE); }
    };
    // p must be null or inside a buffer this backend gave (a host pointer
    // handed to a device operation would crash a GPU).
    template <typename... P>
    void devs(const char* op, const P*... p) const {
        (dev(op, p), ...);
    }
    void dev(const char* op, const void* p) const {
        if (!p) return;
        auto it = regions_.upper_bound(static_cast<float*>(const_cast<void*>(p)));
        if (it != regions_.begin()) {
            --it;
            const char* base = reinterpret_cast<const char*>(it->first);
            if (static_cast<const char*>(p) >= base && static_cast<const char*>(p) < base + it->second) return;
        }
        throw std::runtime_error(std::string("device proxy: ") + op + " got a pointer that is not device memory");
    }
    void protect(int prot) {
        if (used_ && mprotect(arena_, used_, prot) != 0) throw std::runtime_error("device proxy: mprotect failed");
    }
    std::unique_ptr<Backend> in_;
    size_t arena_bytes_;
    char* arena_ = nullptr;
    size_t used_ = 0;
    std::map<float*, size_t> regions_; // live buffers
    int64_t allocs_ = 0;
};

} // namespace magnets::test
