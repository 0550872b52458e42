// lib/cuda/cuda_ops.h (private): the nested transformer's non-matmul operations
// on the GPU, one function per operation of lib/nn/transformer_ops.h (same
// arguments, same meaning), plus AdamW and the embeddings. Plain C++: callers
// and tests need no CUDA headers.
//
// Every pointer is device memory from the cuda backend's alloc() (int32 and
// uint8 arrays too: allocate count * sizeof / sizeof(float) floats). Work runs
// on the backend's stream; results are ready after be.synchronize() or a
// download. Reductions (column sums, the loss) add in a fixed order, so a run
// repeats bit for bit; they are not the CPU's order, so GPU and CPU agree to
// f32 round-off (tests/test_cuda_ops.cpp measures it).
#pragma once
#include "magnets/backend.h"

#include <cstdint>

namespace magnets::cuda {

// y = (x - mean) * rstd * g + b per row of width n; saves mean and rstd per row.
void layernorm_forward(Backend& be, const float* x, int64_t ldx, float* y, int64_t ldy, float* mean, float* rstd,
                       const float* g, const float* b, int64_t rows, int64_t n, float eps = 1e-5f);
// dx (+)= layer-norm backward of dy; dg, db += column sums.
void layernorm_backward(Backend& be, const float* x, int64_t ldx, const float* dy, int64_t lddy, const float* mean,
                        const float* rstd, const float* g, float* dx, int64_t lddx, float* dg, float* db, int64_t rows,
                        int64_t n, bool accumulate);

void add_bias(Backend& be, float* y, int64_t ld, const float* b, int64_t rows, int64_t n);
// db += column sums of dy.
void bias_backward(Backend& be, const float* dy, int64_t ld, float* db, int64_t rows, int64_t n);

// Exact (erf) GELU; du may alias dg.
// g = GELU(u), then u = GELU'(u) in place (Backend::bias_gelu_forward).
void gelu_forward(Backend& be, float* u, float* g, int64_t count);
// du = dg * gp (gp = GELU' as gelu_forward left it).
void gelu_backward(Backend& be, const float* gp, const float* dg, float* du, int64_t count);

// Bidirectional attention as nn::ops::attention_forward: q, k, v, out [batch *
// seq, heads * hd] with leading dimension ld; probs [batch, heads, seq, seq].
void attention_forward(Backend& be, const float* q, const float* k, const float* v, int64_t ld, float* out,
                       float* probs, int64_t batch, int64_t seq, int64_t heads, int64_t hd);
// dq, dk, dv (overwritten) from dout, given the forward's q, k, v and probs.
void attention_backward(Backend& be, const float* q, const float* k, const float* v, const float* probs,
                        const float* dout, int64_t ld, float* dq, float* dk, float* dv, int64_t batch, int64_t seq,
                        int64_t heads, int64_t hd);

// As nn::ops::masked_loss: per-row alpha * CE_smooth + (1 - alpha) * H(teacher)
// on rows with mask != 0 (targets int32, mask uint8, both device memory);
// dlogits may be null. The sums come back to the host.
using LossSums = Backend::LossSums;
LossSums masked_loss(Backend& be, const float* logits, int64_t ld, const float* teacher, int64_t ld_teacher,
                     const int32_t* targets, const uint8_t* mask, int64_t rows, int64_t n_classes, double eps,
                     double alpha, double weight, float* dlogits, int64_t ld_d);

// x [R, r] (leading dimension r) = tok_emb[ids[i], :r] + pos_emb[i % S, :r];
// embedding tables have row length D.
void embedding_forward(Backend& be, const int32_t* ids, const float* tok_emb, const float* pos_emb, float* x,
                       int64_t R, int64_t S, int64_t r, int64_t D);
// tok_grad[v, :r] += sum of dx rows whose id is v; pos_grad[s, :r] += sum over
// sequences. rows_by_id (device, R entries) lists the rows grouped by id in
// increasing row order, id_start (device, V + 1 entries) where each id's group
// starts: the host builds both from the ids it already has (embedding_index).
void embedding_backward(Backend& be, const float* dx, const int32_t* rows_by_id, const int32_t* id_start,
                        float* tok_grad, float* pos_grad, int64_t R, int64_t S, int64_t V, int64_t r, int64_t D);
// Host helper for embedding_backward: rows_by_id [R] and id_start [V + 1].
void embedding_index(const int32_t* ids, int64_t R, int64_t V, int32_t* rows_by_id, int32_t* id_start);

// Sum of squares of g[0, n) in double (for the global gradient norm).
double sum_squares(Backend& be, const float* g, int64_t n);
// The same over count arrays (Backend::sum_squares): one download, one wait.
double sum_squares_many(Backend& be, const float* const* g, const int64_t* n, int64_t count);
// One AdamW update of n parameters, as nn::Adam::step (clip already folded
// into `clip`; step_size = lr / bc1; wd = lr * weight_decay or 0).
void adamw_update(Backend& be, float* w, const float* g, float* m, float* v, int64_t n, float clip, float b1, float b2,
                  float step_size, float inv_sqrt_bc2, float eps, float wd);

// e = d * e + (1 - d) * w (the EMA weights).
void ema_update(Backend& be, float* e, const float* w, float d, int64_t n);

// ---- the decoder's operations (cuda_decoder_ops.cu): Backend::embed_rows and
// the rest, with the same arguments (ids, pos, idx: int32 device arrays).
void embed_rows(Backend& be, const int32_t* ids, const int32_t* pos, int64_t rq, int64_t S, const float* tok,
                const float* pe, int64_t D, float* x, int64_t R, int64_t r);
void add_into(Backend& be, float* x, const float* y, int64_t count);
void scatter_rows(Backend& be, const float* src, const int32_t* pos, int64_t rq, int64_t S, float* dst, int64_t R,
                  int64_t n);
void gather_rows(Backend& be, const float* src, const int32_t* idx, int64_t seqs, int64_t rq, int64_t ro, float* dst,
                 int64_t n);
void attention_rows(Backend& be, const float* q, const float* kc, const float* vc, float* out, int64_t seqs,
                    int64_t rq, int64_t S, int64_t heads, int64_t hd);

// The same on the tensor cores (cuda_attention.cu, the bf16 mode): queries,
// keys, values and probabilities rounded to bf16, f32 accumulation and
// softmax. Returns false (and does nothing) where it does not apply: head
// width not 16, 32, 48, 64 or 128, or a GPU older than compute capability 8.0.
bool attention_rows_bf16(Backend& be, const float* q, const float* kc, const float* vc, float* out, int64_t seqs,
                         int64_t rq, int64_t S, int64_t heads, int64_t hd);

// ---- the sampler's draw (cuda_sampler_ops.cu): Backend::draw_rows.
void draw_rows(Backend& be, const float* logits, int64_t n, const Backend::DrawSpec& d, const int32_t* rows,
               const int32_t* streams, int32_t* token, float* conf);
void sampler_rows(Backend& be, const int32_t* masked, const int32_t* fresh, int64_t nb, int64_t seqs, int64_t N,
                  bool refresh, int64_t rq, int64_t ro, int64_t step, int32_t* pos, int32_t* out_rows, int32_t* meta,
                  int32_t* row_pos);
void reveal_top(Backend& be, const int32_t* token, const float* conf, const int32_t* row_pos, int64_t nb, int64_t ro,
                int64_t reveal, int64_t N, int64_t S, int64_t branches, int32_t* masked, int32_t* fresh,
                int32_t* tokens, int32_t* ids, float* conf_all);

// ---- the image networks' operations (cuda_image_ops.cu): Backend::relu and
// the rest, with the same arguments and meaning (NCHW f32, contiguous; idx
// int32). The data movement and elementwise ones give the CPU's bits;
// nearest_codes' product runs on be.matmul (cuBLAS); recon_loss and
// commit_backward add fixed block partials in double, then on the host in
// block order, and wait for the stream.
void relu(Backend& be, const float* x, float* y, int64_t n);
void relu_backward(Backend& be, const float* y, const float* dy, float* dx, int64_t n);
void upsample2(Backend& be, const float* x, float* y, int64_t planes, int64_t h, int64_t w);
void upsample2_backward(Backend& be, const float* dy, float* dx, int64_t planes, int64_t h, int64_t w);
void pixel_unshuffle2(Backend& be, const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w);
void pixel_shuffle2(Backend& be, const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w);
void transpose_batched(Backend& be, const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols);
void nearest_codes(Backend& be, const float* z, int64_t m, const float* codebook, int64_t K, int64_t c, float* dist,
                   int32_t* idx);
Backend::ReconSums recon_loss(Backend& be, const float* pred, const float* target, int64_t images, int64_t per,
                              bool l1, double scale, float* dpred);
double commit_backward(Backend& be, const float* ze, const float* zq, const float* dzq, float* dze, int64_t n,
                       float g);

// ---- the evaluation networks' operations (cuda_image_ops.cu): Backend::zero_pad
// and the rest, same arguments and meaning. zero_pad, max_pool3, avg_pool3
// and copy2d give the CPU's bits; resize_bilinear the bits of the documented
// float formula without FMA (the CPU's where its compiler does not contract
// it); mean_planes sums each plane in double in a fixed block tree (not the
// CPU's order: ~1 ulp of float). None waits for the stream or allocates.
void zero_pad(Backend& be, const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw);
void max_pool3(Backend& be, const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p);
void avg_pool3(Backend& be, const float* x, float* y, int64_t planes, int64_t h, int64_t w);
void mean_planes(Backend& be, const float* x, float* y, int64_t planes, int64_t plane);
void copy2d(Backend& be, float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols);
void resize_bilinear(Backend& be, const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y,
                     int64_t c_out, int64_t oh, int64_t ow, float mul, float add);

} // namespace magnets::cuda
