// lib/cuda/cuda_ops.cu: the transformer's non-matmul operations on the GPU
// (see cuda_ops.h), written for clarity and determinism: one warp per row for
// row-wise ops, fixed-order two-stage column sums; attention's products on
// cuBLAS strided-batched GEMMs (TF32 tensor cores in the bf16 mode) around
// row-wise softmax kernels. A fused flash-style training attention comes next.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"
#include "magnets/error.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace magnets::cuda {

namespace {

// A device scratch buffer from the backend's pool for the length of a call.
struct Scratch {
    Backend& be;
    float* p;
    Scratch(Backend& b, size_t floats) : be(b), p(b.alloc(floats)) {}
    ~Scratch() { be.free(p); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
};

// ---- layer norm ----------------------------------------------------------------------

__global__ void ln_forward_kernel(const float* x, int64_t ldx, float* y, int64_t ldy, float* mean, float* rstd,
                                  const float* g, const float* b, int64_t rows, int64_t n, float eps) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
    const int lane = threadIdx.x % kWarp;
    if (row >= rows) return;
    const float* xi = x + row * ldx;
    float s = 0;
    for (int64_t j = lane; j < n; j += kWarp) s += xi[j];
    const float m = warp_sum(s) / static_cast<float>(n);
    float v = 0;
    for (int64_t j = lane; j < n; j += kWarp) v += (xi[j] - m) * (xi[j] - m);
    v = warp_sum(v);
    const float r = static_cast<float>(1.0 / sqrt(static_cast<double>(v) / static_cast<double>(n) + eps));
    float* yi = y + row * ldy;
    for (int64_t j = lane; j < n; j += kWarp) yi[j] = (xi[j] - m) * r * g[j] + b[j];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

__global__ void ln_backward_dx_kernel(const float* x, int64_t ldx, const float* dy, int64_t lddy, const float* mean,
                                      const float* rstd, const float* g, float* dx, int64_t lddx, int64_t rows,
                                      int64_t n, bool accumulate) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
    const int lane = threadIdx.x % kWarp;
    if (row >= rows) return;
    const float* xi = x + row * ldx;
    const float* dyi = dy + row * lddy;
    const float m = mean[row], r = rstd[row];
    float s1 = 0, s2 = 0;
    for (int64_t j = lane; j < n; j += kWarp) {
        const float dxh = dyi[j] * g[j];
        s1 += dxh;
        s2 += dxh * ((xi[j] - m) * r);
    }
    const float a1 = warp_sum(s1) / static_cast<float>(n), a2 = warp_sum(s2) / static_cast<float>(n);
    float* dxi = dx + row * lddx;
    for (int64_t j = lane; j < n; j += kWarp) {
        const float xh = (xi[j] - m) * r;
        const float v = r * (dyi[j] * g[j] - a1 - xh * a2);
        dxi[j] = accumulate ? dxi[j] + v : v;
    }
}

// Column sums in two fixed-order stages: partial[c, j] = sum over the rows of
// chunk c (in order), then out[j] += sum over c (in order). With xhat, the
// summand is dy * (x - mean) * rstd (layer norm's dg), else dy.
constexpr int kChunkRows = 256;

__global__ void column_partials_kernel(const float* dy, int64_t lddy, const float* x, int64_t ldx, const float* mean,
                                       const float* rstd, int64_t rows, int64_t n, float* partial) {
    const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t c = blockIdx.y;
    if (j >= n) return;
    const int64_t r0 = c * kChunkRows, r1 = min(rows, r0 + kChunkRows);
    float s = 0;
    for (int64_t i = r0; i < r1; ++i) {
        const float d = dy[i * lddy + j];
        s += x ? d * ((x[i * ldx + j] - mean[i]) * rstd[i]) : d;
    }
    partial[c * n + j] = s;
}

__global__ void column_finish_kernel(const float* partial, int64_t chunks, int64_t n, float* out) {
    const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * n + j];
    out[j] += s;
}

void column_sums(Backend& be, cudaStream_t st, const float* dy, int64_t lddy, const float* x, int64_t ldx,
                 const float* mean, const float* rstd, int64_t rows, int64_t n, float* out) {
    if (rows == 0 || n == 0) return;
    const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
    Scratch part(be, static_cast<size_t>(chunks * n));
    column_partials_kernel<<<dim3(blocks_for(n, 128), static_cast<unsigned>(chunks)), 128, 0, st>>>(
        dy, lddy, x, ldx, mean, rstd, rows, n, part.p);
    column_finish_kernel<<<blocks_for(n, 128), 128, 0, st>>>(part.p, chunks, n, out);
    check(cudaGetLastError(), "column sums");
}

// ---- bias, GELU ------------------------------------------------------------------------

__global__ void add_bias_kernel(float* y, int64_t ld, const float* b, int64_t rows, int64_t n) {
    const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= rows * n) return;
    const int64_t i = t / n, j = t % n;
    y[i * ld + j] += b[j];
}

// g = GELU(u) and u = GELU'(u) (what the backward needs), in place.
__global__ void gelu_forward_kernel(float* u, float* g, int64_t count) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const float k = static_cast<float>(0.5 * M_2_SQRTPI * M_SQRT1_2);
    const float x = u[i];
    const float cdf = 0.5f * (1.0f + erff(x * static_cast<float>(M_SQRT1_2)));
    g[i] = x * cdf;
    u[i] = cdf + x * k * expf(-0.5f * x * x);
}

// du = dg * gp (gp = GELU' from gelu_forward_kernel); du may alias dg.
__global__ void gelu_backward_kernel(const float* gp, const float* dg, float* du, int64_t count) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count) du[i] = dg[i] * gp[i];
}

// ---- attention ----------------------------------------------------------------------------
// The products on cuBLAS (strided-batched over the sequences, one call per
// head and product), the softmax and its backward as one warp per row of the
// probabilities [batch, heads, seq, seq] (which the backward needs anyway).
// In the bf16 mode the products run on TF32 tensor cores.

// probs row (in place): softmax of the scaled scores the product wrote.
__global__ void softmax_rows_kernel(float* p, int64_t rows, int64_t seq) {
    const int w = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + w;
    if (row >= rows) return;
    float* r = p + row * seq;
    float mx = -INFINITY;
    for (int64_t j = lane; j < seq; j += kWarp) mx = fmaxf(mx, r[j]);
    mx = warp_max(mx);
    float sum = 0;
    for (int64_t j = lane; j < seq; j += kWarp) {
        const float e = expf(r[j] - mx);
        r[j] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int64_t j = lane; j < seq; j += kWarp) r[j] *= inv;
}

// dS = P * (dP - <P, dP>) * scale per row; d holds dP (rows of one head:
// row (b, i) of d is row ((b * heads + h) * seq + i) of probs).
__global__ void softmax_backward_rows_kernel(const float* probs, float* d, int64_t batch, int64_t seq, int64_t heads,
                                             int64_t h, float scale) {
    const int w = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + w; // b * seq + i
    if (row >= batch * seq) return;
    const int64_t b = row / seq, i = row % seq;
    const float* P = probs + ((b * heads + h) * seq + i) * seq;
    float* D = d + row * seq;
    float dot = 0;
    for (int64_t j = lane; j < seq; j += kWarp) dot += P[j] * D[j];
    dot = warp_sum(dot);
    for (int64_t j = lane; j < seq; j += kWarp) D[j] = P[j] * (D[j] - dot) * scale;
}

namespace {
constexpr int kSoftmaxWarps = 8;

// Row-major C[b] (m x n, ldc) = alpha op(A[b]) op(B[b]) for b < batch, A, B, C
// row-major with leading dimensions and per-batch strides (the column-major
// call computes C^T = op(B)^T op(A)^T).
void gemm_batched(Backend& be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
                  int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb, float* C, int64_t ldc, int64_t sc,
                  int64_t batch, const char* what) {
    cublasHandle_t h = blas_of(be);
    const float beta = 0.0f;
    const bool tf32 = bf16_mode(be);
    if (tf32) cublas_check_status(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH), what);
    const cublasStatus_t st = cublasSgemmStridedBatched(
        h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
        static_cast<int>(k), &alpha, B, static_cast<int>(ldb), sb, A, static_cast<int>(lda), sa, &beta, C,
        static_cast<int>(ldc), sc, static_cast<int>(batch));
    if (tf32) cublas_check_status(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), what);
    cublas_check_status(st, what);
}
} // namespace

// ---- loss ----------------------------------------------------------------------------------
// One block of 256 threads per row.
constexpr int kLossThreads = 256;

__device__ inline void block_reduce2(float& a, float& b, float* sh) {
    a = warp_sum(a);
    b = warp_sum(b);
    const int w = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();
    if (lane == 0) {
        sh[w] = a;
        sh[kLossThreads / kWarp + w] = b;
    }
    __syncthreads();
    a = 0;
    b = 0;
    for (int i = 0; i < kLossThreads / kWarp; ++i) {
        a += sh[i];
        b += sh[kLossThreads / kWarp + i];
    }
}

// First index of the maximum of x[0, n): (value, index) reduced with the smaller
// index winning ties, as the CPU's scan.
__device__ inline void block_argmax(const float* x, int64_t n, float* sh, float& best, int64_t& arg) {
    float bv = -INFINITY;
    int64_t bi = n;
    for (int64_t j = threadIdx.x; j < n; j += kLossThreads)
        if (x[j] > bv || (x[j] == bv && j < bi)) {
            bv = x[j];
            bi = j;
        }
    for (int o = kWarp / 2; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    __shared__ int64_t shi[kLossThreads / kWarp];
    const int w = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();
    if (lane == 0) {
        sh[w] = bv;
        shi[w] = bi;
    }
    __syncthreads();
    best = sh[0];
    arg = shi[0];
    for (int i = 1; i < kLossThreads / kWarp; ++i)
        if (sh[i] > best || (sh[i] == best && shi[i] < arg)) {
            best = sh[i];
            arg = shi[i];
        }
    __syncthreads();
}

__global__ void masked_loss_kernel(const float* logits, int64_t ld, const float* teacher, int64_t ld_t,
                                   const int32_t* targets, const uint8_t* mask, int64_t K, float eps, float alpha,
                                   const int32_t* count, double weight, float* dlogits, int64_t ld_d,
                                   double* row_loss, double* row_ce, int32_t* row_ok) {
    __shared__ float sh[2 * kLossThreads / kWarp];
    const int64_t i = blockIdx.x;
    // weight / (masked rows), as the host would round it: read on the device,
    // so the host waits once per call (for the results), not twice.
    const int32_t masked = *count;
    const float scale = masked ? static_cast<float>(weight / static_cast<double>(masked)) : 0.0f;
    float* di = dlogits ? dlogits + i * ld_d : nullptr;
    if (!mask[i]) {
        if (di)
            for (int64_t j = threadIdx.x; j < K; j += kLossThreads) di[j] = 0;
        if (threadIdx.x == 0) {
            row_loss[i] = 0;
            row_ce[i] = 0;
            row_ok[i] = 0;
        }
        return;
    }
    const float* li = logits + i * ld;
    const int32_t y = targets[i];
    float mx;
    int64_t arg;
    block_argmax(li, K, sh, mx, arg);
    float sum = 0, sum_l = 0;
    for (int64_t j = threadIdx.x; j < K; j += kLossThreads) {
        sum += expf(li[j] - mx);
        sum_l += li[j] - mx;
    }
    block_reduce2(sum, sum_l, sh);
    const double lse = log(static_cast<double>(sum));
    const double logq_y = static_cast<double>(li[y] - mx) - lse;
    const double mean_logq = static_cast<double>(sum_l) / static_cast<double>(K) - lse;
    double loss = alpha * (-(1.0 - eps) * logq_y - eps * mean_logq);
    float tm = 0, ts = 0;
    const float* ti = teacher ? teacher + i * ld_t : nullptr;
    if (alpha < 1.0f) {
        int64_t targ;
        block_argmax(ti, K, sh, tm, targ);
        float h_part = 0, unused = 0;
        for (int64_t j = threadIdx.x; j < K; j += kLossThreads) ts += expf(ti[j] - tm);
        block_reduce2(ts, unused, sh);
        const float inv_t = 1.0f / ts;
        for (int64_t j = threadIdx.x; j < K; j += kLossThreads)
            h_part -= (expf(ti[j] - tm) * inv_t) * static_cast<float>(static_cast<double>(li[j] - mx) - lse);
        unused = 0;
        block_reduce2(h_part, unused, sh);
        loss += (1.0 - alpha) * h_part;
    }
    if (threadIdx.x == 0) {
        row_loss[i] = loss;
        row_ce[i] = -logq_y;
        row_ok[i] = arg == y ? 1 : 0;
    }
    __syncthreads(); // every read of li[y] is done before dlogits (which may be logits) is written
    if (di) {
        const float inv = static_cast<float>(1.0 / static_cast<double>(sum));
        const float on = (1.0f - eps) * alpha, off = eps / static_cast<float>(K) * alpha;
        const float inv_t = alpha < 1.0f ? 1.0f / ts : 0.0f;
        for (int64_t j = threadIdx.x; j < K; j += kLossThreads) {
            float target = off;
            if (alpha < 1.0f) target += (1.0f - alpha) * (expf(ti[j] - tm) * inv_t);
            float d = (expf(li[j] - mx) * inv - target) * scale;
            if (j == y) d -= on * scale;
            di[j] = d;
        }
    }
}

__global__ void count_mask_kernel(const uint8_t* mask, int64_t rows, int32_t* count) {
    __shared__ int32_t part[256];
    int32_t c = 0;
    for (int64_t i = threadIdx.x; i < rows; i += 256) c += mask[i] ? 1 : 0;
    part[threadIdx.x] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t s = 0;
        for (int t = 0; t < 256; ++t) s += part[t];
        *count = s;
    }
}

// ---- embeddings, optimizer -------------------------------------------------------------------

__global__ void embedding_forward_kernel(const int32_t* ids, const float* tok, const float* pos, float* x, int64_t R,
                                         int64_t S, int64_t r, int64_t D) {
    const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= R * r) return;
    const int64_t i = t / r, j = t % r;
    x[i * r + j] = tok[static_cast<int64_t>(ids[i]) * D + j] + pos[(i % S) * D + j];
}

__global__ void embedding_tok_backward_kernel(const float* dx, const int32_t* rows_by_id, const int32_t* id_start,
                                              float* tok_grad, int64_t V, int64_t r, int64_t D) {
    const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= V * r) return;
    const int64_t id = t / r, j = t % r;
    float s = 0;
    for (int32_t e = id_start[id]; e < id_start[id + 1]; ++e) s += dx[static_cast<int64_t>(rows_by_id[e]) * r + j];
    if (id_start[id + 1] > id_start[id]) tok_grad[id * D + j] += s;
}

__global__ void embedding_pos_backward_kernel(const float* dx, float* pos_grad, int64_t R, int64_t S, int64_t r,
                                              int64_t D) {
    const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= S * r) return;
    const int64_t s = t / r, j = t % r;
    float acc = 0;
    for (int64_t i = s; i < R; i += S) acc += dx[i * r + j];
    pos_grad[s * D + j] += acc;
}

__global__ void square_partials_kernel(const float* g, int64_t n, double* partial) {
    __shared__ double sh[256];
    double s = 0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * 256)
        s += static_cast<double>(g[i]) * g[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int o = 128; o > 0; o >>= 1) {
        if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

__global__ void adamw_kernel(float* w, const float* g, float* m, float* v, int64_t n, float clip, float b1, float b2,
                             float step_size, float inv_sqrt_bc2, float eps, float wd) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gi = g[i] * clip;
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    float wi = w[i];
    wi -= wd * wi;
    wi -= step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
    w[i] = wi;
}

} // namespace

// ---- entry points -------------------------------------------------------------------------------

void layernorm_forward(Backend& be, const float* x, int64_t ldx, float* y, int64_t ldy, float* mean, float* rstd,
                       const float* g, const float* b, int64_t rows, int64_t n, float eps) {
    if (rows == 0) return;
    ln_forward_kernel<<<blocks_for(rows, 8), 8 * kWarp, 0, stream_of(be)>>>(x, ldx, y, ldy, mean, rstd, g, b, rows, n,
                                                                           eps);
    check(cudaGetLastError(), "layernorm_forward");
}

void layernorm_backward(Backend& be, const float* x, int64_t ldx, const float* dy, int64_t lddy, const float* mean,
                        const float* rstd, const float* g, float* dx, int64_t lddx, float* dg, float* db, int64_t rows,
                        int64_t n, bool accumulate) {
    if (rows == 0) return;
    cudaStream_t st = stream_of(be);
    ln_backward_dx_kernel<<<blocks_for(rows, 8), 8 * kWarp, 0, st>>>(x, ldx, dy, lddy, mean, rstd, g, dx, lddx, rows, n,
                                                                     accumulate);
    check(cudaGetLastError(), "layernorm_backward");
    column_sums(be, st, dy, lddy, x, ldx, mean, rstd, rows, n, dg);
    column_sums(be, st, dy, lddy, nullptr, 0, nullptr, nullptr, rows, n, db);
}

void add_bias(Backend& be, float* y, int64_t ld, const float* b, int64_t rows, int64_t n) {
    if (rows * n == 0) return;
    add_bias_kernel<<<blocks_for(rows * n, 256), 256, 0, stream_of(be)>>>(y, ld, b, rows, n);
    check(cudaGetLastError(), "add_bias");
}

void bias_backward(Backend& be, const float* dy, int64_t ld, float* db, int64_t rows, int64_t n) {
    column_sums(be, stream_of(be), dy, ld, nullptr, 0, nullptr, nullptr, rows, n, db);
}

void gelu_forward(Backend& be, float* u, float* g, int64_t count) {
    if (count == 0) return;
    gelu_forward_kernel<<<blocks_for(count, 256), 256, 0, stream_of(be)>>>(u, g, count);
    check(cudaGetLastError(), "gelu_forward");
}

void gelu_backward(Backend& be, const float* gp, const float* dg, float* du, int64_t count) {
    if (count == 0) return;
    gelu_backward_kernel<<<blocks_for(count, 256), 256, 0, stream_of(be)>>>(gp, dg, du, count);
    check(cudaGetLastError(), "gelu_backward");
}

void attention_forward(Backend& be, const float* q, const float* k, const float* v, int64_t ld, float* out,
                       float* probs, int64_t batch, int64_t seq, int64_t heads, int64_t hd) {
    if (batch * heads * seq == 0) return;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    const int64_t SS = seq * seq, bs = seq * ld; // per-sequence stride of q, k, v, out
    for (int64_t h = 0; h < heads; ++h) {
        // scores: P[b, h] = scale Q_bh K_bh^T
        gemm_batched(be, false, true, seq, seq, hd, scale, q + h * hd, ld, bs, k + h * hd, ld, bs, probs + h * SS, seq,
                     heads * SS, batch, "attention_forward (scores)");
    }
    const int64_t rows = batch * heads * seq;
    softmax_rows_kernel<<<blocks_for(rows, kSoftmaxWarps), kSoftmaxWarps * kWarp, 0, stream_of(be)>>>(probs, rows, seq);
    check(cudaGetLastError(), "attention_forward (softmax)");
    for (int64_t h = 0; h < heads; ++h) // out_bh = P_bh V_bh
        gemm_batched(be, false, false, seq, hd, seq, 1.0f, probs + h * SS, seq, heads * SS, v + h * hd, ld, bs,
                     out + h * hd, ld, bs, batch, "attention_forward (P V)");
}

void attention_backward(Backend& be, const float* q, const float* k, const float* v, const float* probs,
                        const float* dout, int64_t ld, float* dq, float* dk, float* dv, int64_t batch, int64_t seq,
                        int64_t heads, int64_t hd) {
    if (batch * heads * seq == 0) return;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    const int64_t SS = seq * seq, bs = seq * ld;
    float* ds = scratch_of(be, static_cast<size_t>(batch * SS)); // one head's dP, then dS
    for (int64_t h = 0; h < heads; ++h) {
        const float* P = probs + h * SS;
        const int64_t o = h * hd;
        // dP = dO V^T
        gemm_batched(be, false, true, seq, seq, hd, 1.0f, dout + o, ld, bs, v + o, ld, bs, ds, seq, SS, batch,
                     "attention_backward (dP)");
        softmax_backward_rows_kernel<<<blocks_for(batch * seq, kSoftmaxWarps), kSoftmaxWarps * kWarp, 0,
                                       stream_of(be)>>>(probs, ds, batch, seq, heads, h, scale);
        check(cudaGetLastError(), "attention_backward (softmax)");
        // dQ = dS K, dK = dS^T Q, dV = P^T dO
        gemm_batched(be, false, false, seq, hd, seq, 1.0f, ds, seq, SS, k + o, ld, bs, dq + o, ld, bs, batch,
                     "attention_backward (dQ)");
        gemm_batched(be, true, false, seq, hd, seq, 1.0f, ds, seq, SS, q + o, ld, bs, dk + o, ld, bs, batch,
                     "attention_backward (dK)");
        gemm_batched(be, true, false, seq, hd, seq, 1.0f, P, seq, heads * SS, dout + o, ld, bs, dv + o, ld, bs, batch,
                     "attention_backward (dV)");
    }
}

LossSums masked_loss(Backend& be, const float* logits, int64_t ld, const float* teacher, int64_t ld_teacher,
                     const int32_t* targets, const uint8_t* mask, int64_t rows, int64_t n_classes, double eps,
                     double alpha, double weight, float* dlogits, int64_t ld_d) {
    LossSums out;
    if (rows == 0) return out;
    if (alpha < 1.0 && !teacher)
        throw Error("distillation", {}, "a teacher is needed when alpha < 1", "pass the next-larger model's logits");
    cudaStream_t st = stream_of(be);
    // Per-row results: loss, ce (double) and correct (int32), in one scratch block.
    const size_t doubles = static_cast<size_t>(2 * rows), ints = static_cast<size_t>(rows + 1);
    Scratch buf(be, 2 * doubles + ints);
    double* row_loss = reinterpret_cast<double*>(buf.p);
    double* row_ce = row_loss + rows;
    int32_t* row_ok = reinterpret_cast<int32_t*>(row_ce + rows);
    int32_t* count = row_ok + rows;
    count_mask_kernel<<<1, 256, 0, st>>>(mask, rows, count);
    masked_loss_kernel<<<static_cast<unsigned>(rows), kLossThreads, 0, st>>>(
        logits, ld, teacher, ld_teacher, targets, mask, n_classes, static_cast<float>(eps), static_cast<float>(alpha),
        count, weight, dlogits, ld_d, row_loss, row_ce, row_ok);
    check(cudaGetLastError(), "masked_loss");
    std::vector<double> l(static_cast<size_t>(rows)), c(static_cast<size_t>(rows));
    std::vector<int32_t> ok(static_cast<size_t>(rows) + 1); // the rows' correct flags, then the count
    check(cudaMemcpyAsync(l.data(), row_loss, sizeof(double) * l.size(), cudaMemcpyDeviceToHost, st), "masked_loss");
    check(cudaMemcpyAsync(c.data(), row_ce, sizeof(double) * c.size(), cudaMemcpyDeviceToHost, st), "masked_loss");
    check(cudaMemcpyAsync(ok.data(), row_ok, sizeof(int32_t) * ok.size(), cudaMemcpyDeviceToHost, st), "masked_loss");
    check(cudaStreamSynchronize(st), "masked_loss");
    const int32_t masked = ok[static_cast<size_t>(rows)];
    out.masked = masked;
    if (masked == 0) return out;
    for (int64_t i = 0; i < rows; ++i) { // the CPU's order
        out.loss += l[static_cast<size_t>(i)];
        out.ce += c[static_cast<size_t>(i)];
        out.correct += ok[static_cast<size_t>(i)];
    }
    out.loss /= static_cast<double>(masked);
    out.ce /= static_cast<double>(masked);
    return out;
}

void embedding_forward(Backend& be, const int32_t* ids, const float* tok_emb, const float* pos_emb, float* x,
                       int64_t R, int64_t S, int64_t r, int64_t D) {
    if (R * r == 0) return;
    embedding_forward_kernel<<<blocks_for(R * r, 256), 256, 0, stream_of(be)>>>(ids, tok_emb, pos_emb, x, R, S, r, D);
    check(cudaGetLastError(), "embedding_forward");
}

void embedding_backward(Backend& be, const float* dx, const int32_t* rows_by_id, const int32_t* id_start,
                        float* tok_grad, float* pos_grad, int64_t R, int64_t S, int64_t V, int64_t r, int64_t D) {
    if (R * r == 0) return;
    cudaStream_t st = stream_of(be);
    embedding_tok_backward_kernel<<<blocks_for(V * r, 256), 256, 0, st>>>(dx, rows_by_id, id_start, tok_grad, V, r, D);
    embedding_pos_backward_kernel<<<blocks_for(S * r, 256), 256, 0, st>>>(dx, pos_grad, R, S, r, D);
    check(cudaGetLastError(), "embedding_backward");
}

void embedding_index(const int32_t* ids, int64_t R, int64_t V, int32_t* rows_by_id, int32_t* id_start) {
    for (int64_t v = 0; v <= V; ++v) id_start[v] = 0;
    for (int64_t i = 0; i < R; ++i) {
        if (ids[i] < 0 || ids[i] >= V)
            throw Error("token id out of range", {}, "id " + std::to_string(ids[i]) + " (vocabulary " + std::to_string(V) + ")",
                        "the tokens do not fit this model");
        ++id_start[ids[i] + 1];
    }
    for (int64_t v = 0; v < V; ++v) id_start[v + 1] += id_start[v];
    std::vector<int32_t> fill(id_start, id_start + V);
    for (int64_t i = 0; i < R; ++i) rows_by_id[fill[static_cast<size_t>(ids[i])]++] = static_cast<int32_t>(i);
}

double sum_squares(Backend& be, const float* g, int64_t n) {
    if (n == 0) return 0.0;
    cudaStream_t st = stream_of(be);
    const int blocks = static_cast<int>(std::min<int64_t>(256, (n + 255) / 256));
    Scratch part(be, static_cast<size_t>(2 * blocks));
    double* p = reinterpret_cast<double*>(part.p);
    square_partials_kernel<<<blocks, 256, 0, st>>>(g, n, p);
    std::vector<double> h(static_cast<size_t>(blocks));
    check(cudaMemcpyAsync(h.data(), p, sizeof(double) * h.size(), cudaMemcpyDeviceToHost, st), "sum_squares");
    check(cudaStreamSynchronize(st), "sum_squares");
    double s = 0;
    for (double x : h) s += x;
    return s;
}

double sum_squares_many(Backend& be, const float* const* g, const int64_t* n, int64_t count) {
    cudaStream_t st = stream_of(be);
    std::vector<int64_t> first(static_cast<size_t>(count) + 1, 0);
    std::vector<int> blocks(static_cast<size_t>(count));
    for (int64_t a = 0; a < count; ++a) {
        blocks[static_cast<size_t>(a)] = static_cast<int>(std::min<int64_t>(256, (n[a] + 255) / 256));
        first[static_cast<size_t>(a) + 1] = first[static_cast<size_t>(a)] + blocks[static_cast<size_t>(a)];
    }
    const int64_t total = first.back();
    if (total == 0) return 0.0;
    double* p = reinterpret_cast<double*>(scratch_of(be, static_cast<size_t>(2 * total)));
    for (int64_t a = 0; a < count; ++a)
        if (blocks[static_cast<size_t>(a)] > 0)
            square_partials_kernel<<<blocks[static_cast<size_t>(a)], 256, 0, st>>>(g[a], n[a],
                                                                                   p + first[static_cast<size_t>(a)]);
    check(cudaGetLastError(), "sum_squares");
    std::vector<double> h(static_cast<size_t>(total));
    check(cudaMemcpyAsync(h.data(), p, sizeof(double) * h.size(), cudaMemcpyDeviceToHost, st), "sum_squares");
    check(cudaStreamSynchronize(st), "sum_squares");
    double s = 0;
    for (double x : h) s += x; // arrays and their blocks in order
    return s;
}

namespace {
__global__ void ema_kernel(float* e, const float* w, float d, int64_t n) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) e[i] = d * e[i] + (1.0f - d) * w[i];
}
} // namespace

void ema_update(Backend& be, float* e, const float* w, float d, int64_t n) {
    if (n == 0) return;
    ema_kernel<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(e, w, d, n);
    check(cudaGetLastError(), "ema_update");
}

void adamw_update(Backend& be, float* w, const float* g, float* m, float* v, int64_t n, float clip, float b1, float b2,
                  float step_size, float inv_sqrt_bc2, float eps, float wd) {
    if (n == 0) return;
    adamw_kernel<<<blocks_for(n, 256), 256, 0, stream_of(be)>>>(w, g, m, v, n, clip, b1, b2, step_size, inv_sqrt_bc2,
                                                                eps, wd);
    check(cudaGetLastError(), "adamw_update");
}

} // namespace magnets::cuda
