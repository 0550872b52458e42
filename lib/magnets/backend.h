// magnets/backend.h: the compute backend interface.
//
// A backend is a small table of operations on buffers it owns. The reference
// backend ("ref", plain C++) is always built and is the referee in tests; the
// oneDNN backend ("onednn") is the fast CPU default where available; "cuda"
// lives in lib/cuda. Core code talks only to this interface and never includes
// a vendor header.
//
// Layouts: matrices row-major with a leading dimension (Mat/ConstMat), so
// prefix slices of weights are used without copying. Convolutions are NCHW with
// weights [c_out, c_in, kh, kw] and bias [c_out] (PyTorch's layouts).
//
//   auto be = magnets::make_backend("auto");   // onednn if built, else ref
//   be->matmul(A, false, W, true, C);          // C = A * W^T
#pragma once
#include "magnets/tensor.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace magnets {

enum class Op { matmul, conv2d_forward, conv2d_backward_data, conv2d_backward_weights };
const char* op_name(Op op);

struct Conv2dShape {
    int64_t n = 1, c_in = 1, h = 1, w = 1; // input [n, c_in, h, w]
    int64_t c_out = 1, kh = 3, kw = 3;     // weight [c_out, c_in, kh, kw]
    int64_t stride = 1, pad = 1;           // symmetric zero padding
    int64_t out_h() const { return (h + 2 * pad - kh) / stride + 1; }
    int64_t out_w() const { return (w + 2 * pad - kw) / stride + 1; }
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual const char* name() const = 0;
    virtual bool supports(Op op) const = 0;

    // Memory. CPU backends hand out host memory; device backends device memory.
    virtual float* alloc(size_t count) = 0;
    virtual void free(float* p) = 0;
    virtual void upload(float* dst, const float* host_src, size_t count) = 0;
    virtual void download(float* host_dst, const float* src, size_t count) = 0;
    virtual void synchronize() {}

    // C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
    // Shapes: op(A) [m, k], op(B) [k, n], C [m, n]; any leading dimensions.
    // beta = 0 overwrites C (NaN in C is not propagated).
    virtual void matmul(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c,
                        float alpha = 1.0f, float beta = 0.0f) = 0;

    // Inference product c [M, N] = act(a [M, K] w^T + bias) (w [N, K], bias
    // [N] or null), row-stable: each element is one fixed-order sum over k, so
    // a row's result does not depend on M, the other rows or the thread count.
    // The sampler uses it so a seed gives the same tokens at any batch size.
    // act = gelu applies the exact (erf) GELU while the block is in registers
    // or cache, saving a pass over c.
    enum class Act { none, gelu };
    virtual void matmul_rowstable(ConstMat a, ConstMat w, const float* bias, Mat c, Act act = Act::none) = 0;

    // ---- the sampler's transformer forward (nn::Decoder) on this backend's memory ----
    // Whether alloc() hands out host memory (the CPU backends) or device memory.
    virtual bool host_memory() const { return true; }
    // x [R, r] row i = tok[ids[(i / rq) * S + pos[i]]] + pe[pos[i]], the first r
    // of each table row (tables have rows of D). ids [R / rq * S] and pos [R]
    // are int32 in this backend's memory.
    virtual void embed_rows(const int32_t* ids, const int32_t* pos, int64_t rq, int64_t S, const float* tok,
                            const float* pe, int64_t D, float* x, int64_t R, int64_t r) = 0;
    // y [rows, n] = LayerNorm(x [rows, n]) * g + b, eps 1e-5, both contiguous.
    virtual void layernorm_rows(const float* x, float* y, const float* g, const float* b, int64_t rows, int64_t n) = 0;
    // x[i] += y[i] for i < count.
    virtual void add_into(float* x, const float* y, int64_t count) = 0;
    // Row i of src [R, n] to row (i / rq) * S + pos[i] of dst [., n] (fresh
    // keys and values into the cache).
    virtual void scatter_rows(const float* src, const int32_t* pos, int64_t rq, int64_t S, float* dst, int64_t R,
                              int64_t n) = 0;
    // dst [seqs * ro, n] row k = src row (k / ro) * rq + idx[k] (src [seqs * rq, n]).
    virtual void gather_rows(const float* src, const int32_t* idx, int64_t seqs, int64_t rq, int64_t ro, float* dst,
                             int64_t n) = 0;
    // Attention of rq query rows per sequence against all S cached keys and
    // values: q, out [seqs * rq, heads * hd]; kc, vc [seqs * S, heads * hd].
    virtual void attention_rows(const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq,
                                int64_t S, int64_t heads, int64_t hd) = 0;

    // ---- the sampler's draw (one decoding step, METHOD section 6) ----
    struct DrawSpec {
        int64_t K = 0;        // codes: logits rows are K wide
        bool cfg = false;     // classifier-free guidance: row i's unconditional logits are row n + i
        double guidance = 0;  // l = lc + guidance * (lc - lu) with cfg, else lc
        double tau = 1;       // token temperature: the draw is from softmax(l / tau)
        double choice = 0;    // confidence = log p(token) + choice * Gumbel noise
        int64_t top_k = 0;    // keep the top_k largest l / tau (0: all)
        uint64_t seed = 0;    // Philox key
    };
    // For each of n masked positions (rows of logits): draw a code and score
    // it. rows [n, 2] int32: (image, counter); streams [images, 4] int32: the
    // image's token stream and choice stream (each uint64 as low, high word).
    // The draw uses Philox(seed).uniform_double(token stream, counter), the
    // noise gumbel(choice stream, counter). token [n] int32, conf [n] float.
    // All arrays in this backend's memory; rows are independent, so a row's
    // result never depends on n or on the other rows.
    virtual void draw_rows(const float* logits, int64_t n, const DrawSpec& d, const int32_t* rows,
                           const int32_t* streams, int32_t* token, float* conf) = 0;
    // The step's rows, from the decoding state of nb images of N tokens
    // (masked, fresh [nb * N] int32 0/1: still masked; revealed by the
    // previous step): for each of seqs sequences (image b % nb), pos [seqs *
    // rq] the positions to compute (refresh: 0..S-1; else 1 + j for every j
    // masked or fresh, rq of them), out_rows [seqs * ro] the indices into its
    // pos of the masked positions (ro = the masked count), and for the nb * ro
    // draws: meta [nb * ro, 2] (image, step * N + j) and row_pos [nb * ro] (j).
    virtual void sampler_rows(const int32_t* masked, const int32_t* fresh, int64_t nb, int64_t seqs, int64_t N,
                              bool refresh, int64_t rq, int64_t ro, int64_t step, int32_t* pos, int32_t* out_rows,
                              int32_t* meta, int32_t* row_pos) = 0;
    // Rank and reveal: per image, its ro draws (token, conf, row_pos as from
    // draw_rows and sampler_rows) sorted by confidence, highest first, ties by
    // position; the first `reveal` become tokens: masked = 0, fresh = 1 (0 for
    // every other position), tokens [nb * N] = the code, and the code into ids
    // [branches * nb * S] at 1 + j of each branch's sequence. conf_all [nb * N]
    // gets every drawn confidence, NaN elsewhere.
    virtual void reveal_top(const int32_t* token, const float* conf, const int32_t* row_pos, int64_t nb, int64_t ro,
                            int64_t reveal, int64_t N, int64_t S, int64_t branches, int32_t* masked, int32_t* fresh,
                            int32_t* tokens, int32_t* ids, float* conf_all) = 0;

    // ---- the nested transformer's training operations (Transformer::Impl) ----
    // Same arguments and meaning as the templates of lib/nn/transformer_ops.h,
    // which the CPU backends run (lib/cpu/host_train_ops.cpp); lib/cuda has
    // the GPU versions. Matrices are row-major with leading dimensions.
    // y = LayerNorm(x) * g + b per row of width n, eps 1e-5; saves mean, rstd per row.
    virtual void layernorm_forward(const float* x, int64_t ldx, float* y, int64_t ldy, float* mean, float* rstd,
                                   const float* g, const float* b, int64_t rows, int64_t n) = 0;
    // dx (+)= layer-norm backward of dy (accumulate: add to dx); dg, db += column sums.
    virtual void layernorm_backward(const float* x, int64_t ldx, const float* dy, int64_t lddy, const float* mean,
                                    const float* rstd, const float* g, float* dx, int64_t lddx, float* dg, float* db,
                                    int64_t rows, int64_t n, bool accumulate) = 0;
    // y[i, :n] += b.
    virtual void add_bias(float* y, int64_t ld, const float* b, int64_t rows, int64_t n) = 0;
    // matmul, then add_bias(c, bias): c = alpha op(a) op(b) + beta c + bias
    // per column. A backend may add the bias in the product's epilogue
    // (onednn does, saving a pass over c).
    virtual void matmul_bias(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, const float* bias,
                             float alpha = 1.0f, float beta = 0.0f);
    // c = op(a) op(b) + bias + res: a residual connection, res [m, n] with
    // c's leading dimension (may not alias c). Default: copy2d res into c,
    // then matmul_bias with beta 1; a backend may add res in the epilogue.
    virtual void matmul_residual(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, const float* bias,
                                 const float* res);
    // db += column sums of dy.
    virtual void bias_backward(const float* dy, int64_t ld, float* db, int64_t rows, int64_t n) = 0;
    // x = u [rows, n] + b per row; g = GELU(x) (exact, erf); u = GELU'(x),
    // the derivative the backward needs (x itself is not kept).
    virtual void bias_gelu_forward(float* u, const float* b, float* g, int64_t rows, int64_t n) = 0;
    // du = dg * gp with gp = GELU'(x) as bias_gelu_forward left it in u (du
    // may alias dg); db += column sums of du.
    virtual void gelu_bias_backward(const float* gp, const float* dg, float* du, float* db, int64_t rows,
                                    int64_t n) = 0;
    // matmul (alpha 1, beta 0) into du [m, n] (contiguous), then
    // gelu_bias_backward(gp, du, du, db): the MLP's backward through GELU. A
    // backend may fuse the product by gp into the matmul (onednn does).
    virtual void matmul_gelu_backward(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat du, const float* gp,
                                      float* db);
    // Bidirectional attention: q, k, v, out [batch * seq, heads * hd] with
    // leading dimension ld; probs [batch, heads, seq, seq] saved for backward.
    virtual void attention_forward(const float* q, const float* k, const float* v, int64_t ld, float* out,
                                   float* probs, int64_t batch, int64_t seq, int64_t heads, int64_t hd) = 0;
    // dq, dk, dv (overwritten) from dout, given the forward's q, k, v and probs.
    virtual void attention_backward(const float* q, const float* k, const float* v, const float* probs,
                                    const float* dout, int64_t ld, float* dq, float* dk, float* dv, int64_t batch,
                                    int64_t seq, int64_t heads, int64_t hd) = 0;
    // Per row with mask != 0: alpha * CE with label smoothing eps against
    // targets + (1 - alpha) * H(softmax(teacher), softmax(logits)); the mean
    // over masked rows is the loss, dlogits (may be null) its gradient times
    // weight. targets int32 and mask uint8 arrays in this backend's memory;
    // the sums come back to the host.
    struct LossSums {
        double loss = 0, ce = 0;
        int64_t correct = 0, masked = 0;
    };
    virtual LossSums masked_loss(const float* logits, int64_t ld, const float* teacher, int64_t ld_teacher,
                                 const int32_t* targets, const uint8_t* mask, int64_t rows, int64_t n_classes,
                                 double eps, double alpha, double weight, float* dlogits, int64_t ld_d) = 0;
    // tok_grad[ids[i], :r] += dx[i, :r] and pos_grad[i % S, :r] += dx[i, :r]
    // for rows i < R of dx [R, r]; the tables have rows of D. ids is a host
    // array (the caller's copy of the batch).
    virtual void embedding_backward(const float* dx, const int32_t* ids_host, int64_t R, int64_t S, int64_t r,
                                    int64_t D, float* tok_grad, float* pos_grad) = 0;
    // Buffers: dst[0, n) = src[0, n); p[0, n) = 0.
    virtual void copy(float* dst, const float* src, size_t n) = 0;
    virtual void zero(float* p, size_t n) = 0;
    // The optimizer (nn::Adam) and the EMA weights. sum_squares: the sum of
    // g[k][i]^2 over count arrays g[k] of n[k] floats, in double (g, n host
    // arrays of pointers into this backend's memory; one call, one wait for
    // a device). The CPU adds fixed chunks in order, so the bits do not
    // depend on the thread count.
    virtual double sum_squares(const float* const* g, const int64_t* n, int64_t count) = 0;
    // One AdamW step of n parameters: g' = g * clip; m = b1 m + (1 - b1) g';
    // v = b2 v + (1 - b2) g'^2; w -= wd * w; w -= step_size * m / (sqrt(v) *
    // inv_sqrt_bc2 + eps).
    virtual void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float clip, float b1, float b2,
                              float step_size, float inv_sqrt_bc2, float eps, float wd) = 0;
    // e = d * e + (1 - d) * w.
    virtual void ema_update(float* e, const float* w, float d, int64_t n) = 0;

    // y [n, c_out, oh, ow] = conv(x [n, c_in, h, w], w) + bias (bias may be null).
    virtual void conv2d_forward(const Conv2dShape& s, const float* x, const float* w,
                                const float* bias, float* y) = 0;
    // dx [n, c_in, h, w] = gradient wrt x given dy [n, c_out, oh, ow]; overwrites dx.
    virtual void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w,
                                      float* dx) = 0;
    // dw [c_out, c_in, kh, kw] and dbias [c_out] (may be null); overwrites both.
    virtual void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy,
                                         float* dw, float* dbias) = 0;

    // ---- the image networks' operations (the tokenizer: lib/nn/tokenizer.cpp) ----
    // NCHW f32 arrays, contiguous, in this backend's memory. The CPU backends
    // run lib/nn/image_ops.h (lib/cpu/host_image_ops.cpp).
    // y = max(x, 0) (y may alias x).
    virtual void relu(const float* x, float* y, int64_t n) = 0;
    // dx = dy where y > 0, else 0; y is the ReLU output (dx may alias dy).
    virtual void relu_backward(const float* y, const float* dy, float* dx, int64_t n) = 0;
    // Nearest-neighbour x2: x [planes, h, w] -> y [planes, 2h, 2w].
    virtual void upsample2(const float* x, float* y, int64_t planes, int64_t h, int64_t w) = 0;
    // dx [planes, h, w] = sum of dy [planes, 2h, 2w] over each 2x2 block: (a + b) + (c + d).
    virtual void upsample2_backward(const float* dy, float* dx, int64_t planes, int64_t h, int64_t w) = 0;
    // PyTorch's pixel_unshuffle(2): x [n, c, 2h, 2w] -> y [n, 4c, h, w],
    // y[b, 4q + 2di + dj, i, j] = x[b, q, 2i + di, 2j + dj].
    virtual void pixel_unshuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) = 0;
    // Its inverse, pixel_shuffle(2): x [n, 4c, h, w] -> y [n, c, 2h, 2w].
    virtual void pixel_shuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) = 0;
    // dst [b, cols, rows] = src [b, rows, cols] transposed per batch: NCHW to
    // rows of channel vectors (rows = c, cols = h*w) and back.
    virtual void transpose_batched(const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols) = 0;
    // idx [m] int32 = the nearest row (L2) of codebook [K, c] to each row of
    // z [m, c], ties to the lowest index; dist [m, K] is scratch. The distance
    // is -2 z.e + |e|^2 (|z|^2 does not change the argmin), the product through
    // this backend's matmul, |e|^2 summed in double.
    virtual void nearest_codes(const float* z, int64_t m, const float* codebook, int64_t K, int64_t c, float* dist,
                               int32_t* idx) = 0;
    struct ReconSums {
        double loss = 0; // mean over all values of (p - t)^2, or |p - t| with l1
        double psnr = 0; // sum over images of 10 log10(1 / mse(clamp(p, 0, 1), t))
    };
    // Reconstruction loss of pred against target, `images` images of `per`
    // values each; dpred (when not null) = scale * d(loss)/d(pred), the L1
    // subgradient 0 at 0.
    virtual ReconSums recon_loss(const float* pred, const float* target, int64_t images, int64_t per, bool l1,
                                 double scale, float* dpred) = 0;
    // The commitment term: dze = dzq + g * (ze - zq); returns the sum of (ze - zq)^2.
    virtual double commit_backward(const float* ze, const float* zq, const float* dzq, float* dze, int64_t n,
                                   float g) = 0;

    // ---- the evaluation networks' operations (lib/eval: Inception, the classifier) ----
    // NCHW f32, contiguous, in this backend's memory; CPU: lib/nn/image_ops.h.
    // y [planes, h + 2ph, w + 2pw] = x [planes, h, w] inside a zero border.
    virtual void zero_pad(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw) = 0;
    // 3x3 max pool, stride s, padding p (padding never wins: as -inf), floor
    // mode: y [planes, (h + 2p - 3) / s + 1, (w + 2p - 3) / s + 1].
    virtual void max_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p) = 0;
    // 3x3 average pool, stride 1, padding 1, count_include_pad = false (the
    // divisor counts in-image elements): y [planes, h, w]. The sum runs over
    // the window's rows, then columns, in float.
    virtual void avg_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w) = 0;
    // y [planes] = the mean of each plane of `plane` values (summed in double).
    virtual void mean_planes(const float* x, float* y, int64_t planes, int64_t plane) = 0;
    // dst[i * ld_dst + j] = src[i * ld_src + j] for i < rows, j < cols (a
    // channel concatenation is one call per part, rows = images).
    virtual void copy2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) = 0;
    // Bilinear resize as torch's F.interpolate(mode="bilinear",
    // align_corners=False, antialias=False), then y = mul * v + add:
    // x [n, c_in, h, w] -> y [n, c_out, oh, ow], c_in 1 (copied to every
    // output channel) or c_out. Per axis, in float: scale = in / out, src =
    // scale * (dst + 0.5) - 0.5 clamped below at 0, i0 = min(int(src), in - 1),
    // i1 = i0 + (i0 < in - 1), l1 = src - i0, l0 = 1 - l1; v = l0y * (l0x * x[i0y, i0x] +
    // l1x * x[i0y, i1x]) + l1y * (l0x * x[i1y, i0x] + l1x * x[i1y, i1x]).
    virtual void resize_bilinear(const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y,
                                 int64_t c_out, int64_t oh, int64_t ow, float mul, float add) = 0;
};

// "ref", "onednn", "cuda", or "auto" (best CPU backend built in). Throws Error
// with a hint when the name is unknown or the backend was not built.
std::unique_ptr<Backend> make_backend(const std::string& name);
// Host backends built into this library, e.g. {"ref", "onednn"}: every model
// (tokenizer, transformer, sampler, classifier) runs on them.
std::vector<std::string> available_backends();
// Device backends built into this library ({"cuda"} with CUDA). They compute on
// device memory from their alloc(); make_backend throws when no device is
// visible. Every model runs on them: the transformer (training, sampling), the
// tokenizer and the evaluation networks.
std::vector<std::string> device_backends();
// Threads used by CPU backends (OpenMP); 0 = library default.
void set_num_threads(int n);
int num_threads();

} // namespace magnets
