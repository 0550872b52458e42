// lib/cpu/host_backend.h (private): memory of the CPU backends, and the
// row-stable inference matmul they share. Buffers are
// host memory aligned to 64 bytes (a cache line, and what oneDNN prefers);
// upload/download are plain copies.
#pragma once
#include "magnets/backend.h"
#include "cpu/rowstable_gemm.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace magnets {

inline constexpr std::align_val_t k_host_alignment{64};

class HostBackend : public Backend {
public:
    float* alloc(size_t count) override {
        return static_cast<float*>(::operator new(std::max<size_t>(count, 1) * sizeof(float), k_host_alignment));
    }
    void free(float* p) override { ::operator delete(p, k_host_alignment); }
    void upload(float* dst, const float* host_src, size_t count) override {
        if (count) std::memcpy(dst, host_src, count * sizeof(float));
    }
    void download(float* host_dst, const float* src, size_t count) override {
        if (count) std::memcpy(host_dst, src, count * sizeof(float));
    }
    // Both CPU backends share the row-stable kernel (lib/cpu/rowstable_gemm.cpp).
    void matmul_rowstable(ConstMat a, ConstMat w, const float* bias, Mat c, Act act = Act::none) override {
        cpu::rowstable_matmul(a, w, bias, c, act == Act::gelu);
    }
    // ... and the decoder's operations (lib/cpu/host_decoder_ops.cpp).
    void embed_rows(const int32_t* ids, const int32_t* pos, int64_t rq, int64_t S, const float* tok, const float* pe,
                    int64_t D, float* x, int64_t R, int64_t r) override;
    void layernorm_rows(const float* x, float* y, const float* g, const float* b, int64_t rows, int64_t n) override;
    void add_into(float* x, const float* y, int64_t count) override;
    void scatter_rows(const float* src, const int32_t* pos, int64_t rq, int64_t S, float* dst, int64_t R,
                      int64_t n) override;
    void gather_rows(const float* src, const int32_t* idx, int64_t seqs, int64_t rq, int64_t ro, float* dst,
                     int64_t n) override;
    void attention_rows(const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq,
                        int64_t S, int64_t heads, int64_t hd) override;
    // ... the transformer's training operations (lib/cpu/host_train_ops.cpp) ...
    void layernorm_forward(const float* x, int64_t ldx, float* y, int64_t ldy, float* mean, float* rstd,
                           const float* g, const float* b, int64_t rows, int64_t n) override;
    void layernorm_backward(const float* x, int64_t ldx, const float* dy, int64_t lddy, const float* mean,
                            const float* rstd, const float* g, float* dx, int64_t lddx, float* dg, float* db,
                            int64_t rows, int64_t n, bool accumulate) override;
    void add_bias(float* y, int64_t ld, const float* b, int64_t rows, int64_t n) override;
    void bias_backward(const float* dy, int64_t ld, float* db, int64_t rows, int64_t n) override;
    void bias_gelu_forward(float* u, const float* b, float* g, int64_t rows, int64_t n) override;
    void gelu_bias_backward(const float* u, const float* dg, float* du, float* db, int64_t rows, int64_t n) override;
    void attention_forward(const float* q, const float* k, const float* v, int64_t ld, float* out, float* probs,
                           int64_t batch, int64_t seq, int64_t heads, int64_t hd) override;
    void attention_backward(const float* q, const float* k, const float* v, const float* probs, const float* dout,
                            int64_t ld, float* dq, float* dk, float* dv, int64_t batch, int64_t seq, int64_t heads,
                            int64_t hd) override;
    LossSums masked_loss(const float* logits, int64_t ld, const float* teacher, int64_t ld_teacher,
                         const int32_t* targets, const uint8_t* mask, int64_t rows, int64_t n_classes, double eps,
                         double alpha, double weight, float* dlogits, int64_t ld_d) override;
    void embedding_backward(const float* dx, const int32_t* ids_host, int64_t R, int64_t S, int64_t r, int64_t D,
                            float* tok_grad, float* pos_grad) override;
    // Large copies and fills on all threads (a serial 2 MB copy left the
    // other core waiting).
    void copy(float* dst, const float* src, size_t n) override {
        const int64_t chunks = static_cast<int64_t>((n + k_chunk - 1) / k_chunk);
#pragma omp parallel for schedule(static) if (chunks > 1)
        for (int64_t c = 0; c < chunks; ++c) {
            const size_t i = static_cast<size_t>(c) * k_chunk;
            std::memcpy(dst + i, src + i, std::min(k_chunk, n - i) * sizeof(float));
        }
    }
    void zero(float* p, size_t n) override {
        const int64_t chunks = static_cast<int64_t>((n + k_chunk - 1) / k_chunk);
#pragma omp parallel for schedule(static) if (chunks > 1)
        for (int64_t c = 0; c < chunks; ++c) {
            const size_t i = static_cast<size_t>(c) * k_chunk;
            std::fill(p + i, p + i + std::min(k_chunk, n - i), 0.0f);
        }
    }
    static constexpr size_t k_chunk = size_t{1} << 17; // floats (512 KiB)
    double sum_squares(const float* const* g, const int64_t* n, int64_t count) override;
    void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float clip, float b1, float b2,
                      float step_size, float inv_sqrt_bc2, float eps, float wd) override;
    void ema_update(float* e, const float* w, float d, int64_t n) override;
    // ... the image networks' operations (lib/cpu/host_image_ops.cpp), the tokenizer's and the
    // evaluation networks' ...
    void relu(const float* x, float* y, int64_t n) override;
    void relu_backward(const float* y, const float* dy, float* dx, int64_t n) override;
    void upsample2(const float* x, float* y, int64_t planes, int64_t h, int64_t w) override;
    void upsample2_backward(const float* dy, float* dx, int64_t planes, int64_t h, int64_t w) override;
    void pixel_unshuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) override;
    void pixel_shuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) override;
    void transpose_batched(const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols) override;
    void nearest_codes(const float* z, int64_t m, const float* codebook, int64_t K, int64_t c, float* dist,
                       int32_t* idx) override;
    ReconSums recon_loss(const float* pred, const float* target, int64_t images, int64_t per, bool l1, double scale,
                         float* dpred) override;
    double commit_backward(const float* ze, const float* zq, const float* dzq, float* dze, int64_t n,
                           float g) override;
    void zero_pad(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw) override;
    void max_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p) override;
    void avg_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w) override;
    void mean_planes(const float* x, float* y, int64_t planes, int64_t plane) override;
    void copy2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) override;
    void resize_bilinear(const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y, int64_t c_out,
                         int64_t oh, int64_t ow, float mul, float add) override;
    // ... and the sampler's draw (lib/cpu/host_sampler_ops.cpp).
    void draw_rows(const float* logits, int64_t n, const DrawSpec& d, const int32_t* rows, const int32_t* streams,
                   int32_t* token, float* conf) override;
    void sampler_rows(const int32_t* masked, const int32_t* fresh, int64_t nb, int64_t seqs, int64_t N, bool refresh,
                      int64_t rq, int64_t ro, int64_t step, int32_t* pos, int32_t* out_rows, int32_t* meta,
                      int32_t* row_pos) override;
    void reveal_top(const int32_t* token, const float* conf, const int32_t* row_pos, int64_t nb, int64_t ro,
                    int64_t reveal, int64_t N, int64_t S, int64_t branches, int32_t* masked, int32_t* fresh,
                    int32_t* tokens, int32_t* ids, float* conf_all) override;
};

} // namespace magnets
