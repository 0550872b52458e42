// lib/cuda/cuda_backend.cu: the "cuda" backend behind magnets/backend.h.
//
// Buffers are device memory from a caching pool (no cudaMalloc per step).
// matmul runs on cuBLAS in f32 (no TF32: this backend is checked against the
// CPU reference at f32 tolerances); matmul_rowstable is our own kernel whose
// every output element is one fmaf chain over k = 0..K-1 from zero, then the
// bias, exactly as lib/cpu/rowstable_gemm.cpp: the same inputs give the same
// bits on the GPU and on the CPU, whatever M. Convolutions run on cuDNN with
// FMA math (no TF32) and NCHW tensors.
//
// All calls are asynchronous on one stream; download() and synchronize() wait.
#include "core/backend_registry.h"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"
#include "magnets/error.h"
#include "magnets_config.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#if MAGNETS_HAVE_CUDNN
#include <cudnn.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <array>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace magnets {

namespace {

void cuda_check(cudaError_t e, const char* what) { cuda::check(e, what); }

void cublas_check(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw Error(std::string("cuBLAS error in ") + what, {}, "status " + std::to_string(static_cast<int>(s)),
                    "this is a bug in magnets' CUDA backend or an unsupported shape; report it with the command");
}

#if MAGNETS_HAVE_CUDNN
void cudnn_check(cudnnStatus_t s, const char* what) {
    if (s != CUDNN_STATUS_SUCCESS)
        throw Error(std::string("cuDNN error in ") + what, {}, cudnnGetErrorString(s),
                    "this is a bug in magnets' CUDA backend or an unsupported shape; report it with the command");
}
#endif

// ---- the row-stable product ---------------------------------------------------
// c [M, N] = a [M, K] w [N, K]^T (+ bias). A 64 x 64 tile of C per block of
// 16 x 16 threads, 4 x 4 elements per thread; k advances in chunks of 16
// through shared memory, in order, so every element is the chain
// acc = fmaf(a[i][k], w[j][k], acc) for k = 0, 1, ..., K-1.
constexpr int kTile = 64, kChunk = 16, kThreads = 16, kPer = kTile / kThreads;

__global__ void rowstable_kernel(int64_t M, int64_t N, int64_t K, const float* __restrict__ a, int64_t lda,
                                 const float* __restrict__ w, int64_t ldw, const float* __restrict__ bias,
                                 float* __restrict__ c, int64_t ldc, bool gelu) {
    __shared__ float as[kChunk][kTile + 1];
    __shared__ float ws[kChunk][kTile + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kThreads + tx;
    const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
    float acc[kPer][kPer] = {};
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
        // 64 rows x 16 k of A and of W: 1024 values each, 4 per thread.
        for (int e = tid; e < kTile * kChunk; e += kThreads * kThreads) {
            const int r = e / kChunk, kk = e % kChunk;
            const int64_t gi = row0 + r, gj = col0 + r, gk = k0 + kk;
            as[kk][r] = (gi < M && gk < K) ? a[gi * lda + gk] : 0.0f;
            ws[kk][r] = (gj < N && gk < K) ? w[gj * ldw + gk] : 0.0f;
        }
        __syncthreads();
        const int kn = static_cast<int>(K - k0 < kChunk ? K - k0 : kChunk);
        for (int kk = 0; kk < kn; ++kk) {
            float av[kPer], wv[kPer];
#pragma unroll
            for (int u = 0; u < kPer; ++u) {
                av[u] = as[kk][ty + u * kThreads];
                wv[u] = ws[kk][tx + u * kThreads];
            }
#pragma unroll
            for (int u = 0; u < kPer; ++u)
#pragma unroll
                for (int v = 0; v < kPer; ++v) acc[u][v] = fmaf(av[u], wv[v], acc[u][v]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
        const int64_t i = row0 + ty + u * kThreads;
        if (i >= M) continue;
#pragma unroll
        for (int v = 0; v < kPer; ++v) {
            const int64_t j = col0 + tx + v * kThreads;
            if (j >= N) continue;
            const float y = bias ? acc[u][v] + bias[j] : acc[u][v];
            c[i * ldc + j] = gelu ? 0.5f * y * (1.0f + erff(y * 0.70710678118654752f)) : y;
        }
    }
}

// ---- the bf16 products (MAGNETS_CUDA_BF16=1) -----------------------------------
// dst [rows, cols] (contiguous) = bf16(src [rows, cols] with leading dimension ld).
__global__ void to_bf16_kernel(const float* __restrict__ src, int64_t ld, __nv_bfloat16* __restrict__ dst,
                               int64_t rows, int64_t cols) {
    const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= rows * cols) return;
    dst[e] = __float2bfloat16(src[(e / cols) * ld + e % cols]);
}

// c[i, j] = act(c[i, j] + bias[j]) after the tensor-core product.
__global__ void bias_act_kernel(float* __restrict__ c, int64_t ldc, const float* __restrict__ bias, int64_t rows,
                                int64_t cols, bool gelu) {
    const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= rows * cols) return;
    float& x = c[(e / cols) * ldc + e % cols];
    const float y = bias ? x + bias[e % cols] : x;
    x = gelu ? 0.5f * y * (1.0f + erff(y * 0.70710678118654752f)) : y;
}

// ---- device memory pool ---------------------------------------------------------
// Freed blocks are kept by size and handed out again for requests of the same
// rounded size, so a training or decoding loop allocates only in its first step.
class Pool {
public:
    ~Pool() {
        for (auto& [size, p] : free_) cudaFree(p);
    }
    float* get(size_t count) {
        const size_t bytes = round(std::max<size_t>(count, 1) * sizeof(float));
        std::lock_guard<std::mutex> lock(mu_);
        auto it = free_.find(bytes);
        if (it != free_.end()) {
            void* p = it->second;
            free_.erase(it);
            live_[p] = bytes;
            return static_cast<float*>(p);
        }
        void* p = nullptr;
        cudaError_t e = cudaMalloc(&p, bytes);
        if (e != cudaSuccess) { // give the cached blocks back and try once more
            cudaGetLastError();
            for (auto& [size, q] : free_) cudaFree(q);
            free_.clear();
            e = cudaMalloc(&p, bytes);
        }
        if (e != cudaSuccess)
            throw Error("out of GPU memory", {}, "could not allocate " + std::to_string(bytes >> 20) + " MiB",
                        "use a smaller --batch-size, or free the device (nvidia-smi)");
        live_[p] = bytes;
        return static_cast<float*>(p);
    }
    void put(float* p) {
        if (!p) return;
        std::lock_guard<std::mutex> lock(mu_);
        auto it = live_.find(p);
        if (it == live_.end()) return; // not ours: ignore rather than corrupt the pool
        free_.emplace(it->second, p);
        live_.erase(it);
    }

private:
    // Sizes rounded up to 256 B, then to 1/8 steps of their power of two.
    static size_t round(size_t b) {
        b = (b + 255) & ~size_t{255};
        size_t p2 = 256;
        while (p2 < b) p2 <<= 1;
        const size_t step = std::max<size_t>(p2 / 8, 256);
        return (b + step - 1) / step * step;
    }
    std::mutex mu_;
    std::multimap<size_t, void*> free_;
    std::map<void*, size_t> live_;
};

// The GPU this process uses: MAGNETS_CUDA_DEVICE when set; under an MPI
// launcher (data-parallel training, magnets/dist.h) the rank's index on its
// host, so the ranks of a node share its GPUs out one each; otherwise 0.
int pick_device(int count) {
    if (const char* s = std::getenv("MAGNETS_CUDA_DEVICE")) {
        char* end = nullptr;
        const long d = std::strtol(s, &end, 10);
        if (end == s || *end != '\0' || d < 0 || d >= count)
            throw Error("bad MAGNETS_CUDA_DEVICE", {}, "'" + std::string(s) + "' with " + std::to_string(count) +
                        " visible device(s)", "give an index from 0 to " + std::to_string(count - 1));
        return static_cast<int>(d);
    }
    for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"})
        if (const char* s = std::getenv(v)) return std::atoi(s) % count;
    return 0;
}

class CudaBackend final : public Backend {
public:
    CudaBackend() {
        int n = 0;
        const cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess || n == 0) {
            cudaGetLastError();
            throw Error("backend not available: cuda", {},
                        e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device is visible",
                        "run on a machine with an NVIDIA GPU and driver, or use --backend onednn");
        }
        device_ = pick_device(n);
        cuda_check(cudaSetDevice(device_), "cudaSetDevice");
        cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
        cublas_check(cublasCreate(&blas_), "cublasCreate");
        cublas_check(cublasSetStream(blas_, stream_), "cublasSetStream");
        cublas_check(cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
#if MAGNETS_HAVE_CUDNN
        cudnn_check(cudnnCreate(&dnn_), "cudnnCreate");
        cudnn_check(cudnnSetStream(dnn_, stream_), "cudnnSetStream");
#endif
    }
    ~CudaBackend() override {
        cudaStreamSynchronize(stream_);
        if (workspace_) pool_.put(workspace_);
        if (ln_stats_) pool_.put(ln_stats_);
        if (bf16_a_) pool_.put(bf16_a_);
        if (bf16_w_) pool_.put(bf16_w_);
        if (scratch_) pool_.put(scratch_);
#if MAGNETS_HAVE_CUDNN
        cudnnDestroy(dnn_);
#endif
        cublasDestroy(blas_);
        cudaStreamDestroy(stream_);
    }

    const char* name() const override { return "cuda"; }
    bool supports(Op op) const override {
#if MAGNETS_HAVE_CUDNN
        (void)op;
        return true;
#else
        return op == Op::matmul;
#endif
    }

    float* alloc(size_t count) override { return pool_.get(count); }
    void free(float* p) override {
        // No wait: every use of this backend's memory (kernels, cuBLAS, cuDNN,
        // copies) is on its one stream, so work queued after p is handed out
        // again runs after the work still using it (PyTorch's caching
        // allocator relies on the same stream order). Models can then free
        // temporaries (Inception's branches, a step's scratch) without a
        // host round trip.
        pool_.put(p);
    }
    void upload(float* dst, const float* host_src, size_t count) override {
        if (count)
            cuda_check(cudaMemcpyAsync(dst, host_src, count * sizeof(float), cudaMemcpyHostToDevice, stream_), "upload");
        cuda_check(cudaStreamSynchronize(stream_), "upload");
    }
    void download(float* host_dst, const float* src, size_t count) override {
        if (count)
            cuda_check(cudaMemcpyAsync(host_dst, src, count * sizeof(float), cudaMemcpyDeviceToHost, stream_), "download");
        cuda_check(cudaStreamSynchronize(stream_), "download");
    }
    void synchronize() override { cuda_check(cudaStreamSynchronize(stream_), "synchronize"); }

    // The decoder's operations (cuda_decoder_ops.cu, cuda_ops.cu).
    bool host_memory() const override { return false; }
    void embed_rows(const int32_t* ids, const int32_t* pos, int64_t rq, int64_t S, const float* tok, const float* pe,
                    int64_t D, float* x, int64_t R, int64_t r) override {
        cuda::embed_rows(*this, ids, pos, rq, S, tok, pe, D, x, R, r);
    }
    void layernorm_rows(const float* x, float* y, const float* g, const float* b, int64_t rows, int64_t n) override {
        if (ln_stats_n_ < static_cast<size_t>(2 * rows)) {
            if (ln_stats_) free(ln_stats_);
            ln_stats_n_ = static_cast<size_t>(2 * rows);
            ln_stats_ = pool_.get(ln_stats_n_);
        }
        cuda::layernorm_forward(*this, x, n, y, n, ln_stats_, ln_stats_ + rows, g, b, rows, n);
    }
    void add_into(float* x, const float* y, int64_t count) override { cuda::add_into(*this, x, y, count); }
    void scatter_rows(const float* src, const int32_t* pos, int64_t rq, int64_t S, float* dst, int64_t R,
                      int64_t n) override {
        cuda::scatter_rows(*this, src, pos, rq, S, dst, R, n);
    }
    void gather_rows(const float* src, const int32_t* idx, int64_t seqs, int64_t rq, int64_t ro, float* dst,
                     int64_t n) override {
        cuda::gather_rows(*this, src, idx, seqs, rq, ro, dst, n);
    }
    void attention_rows(const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq,
                        int64_t S, int64_t heads, int64_t hd) override {
        if (bf16_ && cuda::attention_rows_bf16(*this, q, kc, vc, out, seqs, rq, S, heads, hd)) return;
        cuda::attention_rows(*this, q, kc, vc, out, seqs, rq, S, heads, hd);
    }
    // The transformer's training operations (cuda_ops.cu).
    void layernorm_forward(const float* x, int64_t ldx, float* y, int64_t ldy, float* mean, float* rstd,
                           const float* g, const float* b, int64_t rows, int64_t n) override {
        cuda::layernorm_forward(*this, x, ldx, y, ldy, mean, rstd, g, b, rows, n);
    }
    void layernorm_backward(const float* x, int64_t ldx, const float* dy, int64_t lddy, const float* mean,
                            const float* rstd, const float* g, float* dx, int64_t lddx, float* dg, float* db,
                            int64_t rows, int64_t n, bool accumulate) override {
        cuda::layernorm_backward(*this, x, ldx, dy, lddy, mean, rstd, g, dx, lddx, dg, db, rows, n, accumulate);
    }
    void add_bias(float* y, int64_t ld, const float* b, int64_t rows, int64_t n) override {
        cuda::add_bias(*this, y, ld, b, rows, n);
    }
    void bias_backward(const float* dy, int64_t ld, float* db, int64_t rows, int64_t n) override {
        cuda::bias_backward(*this, dy, ld, db, rows, n);
    }
    void bias_gelu_forward(float* u, const float* b, float* g, int64_t rows, int64_t n) override {
        cuda::add_bias(*this, u, n, b, rows, n);
        cuda::gelu_forward(*this, u, g, rows * n);
    }
    void gelu_bias_backward(const float* gp, const float* dg, float* du, float* db, int64_t rows, int64_t n) override {
        cuda::gelu_backward(*this, gp, dg, du, rows * n);
        cuda::bias_backward(*this, du, n, db, rows, n);
    }
    void attention_forward(const float* q, const float* k, const float* v, int64_t ld, float* out, float* probs,
                           int64_t batch, int64_t seq, int64_t heads, int64_t hd) override {
        cuda::attention_forward(*this, q, k, v, ld, out, probs, batch, seq, heads, hd);
    }
    void attention_backward(const float* q, const float* k, const float* v, const float* probs, const float* dout,
                            int64_t ld, float* dq, float* dk, float* dv, int64_t batch, int64_t seq, int64_t heads,
                            int64_t hd) override {
        cuda::attention_backward(*this, q, k, v, probs, dout, ld, dq, dk, dv, batch, seq, heads, hd);
    }
    LossSums masked_loss(const float* logits, int64_t ld, const float* teacher, int64_t ld_teacher,
                         const int32_t* targets, const uint8_t* mask, int64_t rows, int64_t n_classes, double eps,
                         double alpha, double weight, float* dlogits, int64_t ld_d) override {
        return cuda::masked_loss(*this, logits, ld, teacher, ld_teacher, targets, mask, rows, n_classes, eps, alpha,
                                 weight, dlogits, ld_d);
    }
    void embedding_backward(const float* dx, const int32_t* ids_host, int64_t R, int64_t S, int64_t r, int64_t D,
                            float* tok_grad, float* pos_grad) override {
        // Rows grouped by id (built here from the host's ids), so each table
        // row is summed by one thread in row order.
        int64_t V = 0;
        for (int64_t i = 0; i < R; ++i) V = std::max<int64_t>(V, ids_host[i] + 1);
        std::vector<int32_t> index(static_cast<size_t>(R + V + 1));
        cuda::embedding_index(ids_host, R, V, index.data(), index.data() + R);
        float* d = pool_.get(index.size());
        upload(d, reinterpret_cast<const float*>(index.data()), index.size());
        const int32_t* di = reinterpret_cast<const int32_t*>(d);
        cuda::embedding_backward(*this, dx, di, di + R, tok_grad, pos_grad, R, S, V, r, D);
        free(d);
    }
    void copy(float* dst, const float* src, size_t n) override {
        if (n) cuda_check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_), "copy");
    }
    void zero(float* p, size_t n) override {
        if (n) cuda_check(cudaMemsetAsync(p, 0, n * sizeof(float), stream_), "zero");
    }
    double sum_squares(const float* const* g, const int64_t* n, int64_t count) override {
        return cuda::sum_squares_many(*this, g, n, count);
    }
    void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, float clip, float b1, float b2,
                      float step_size, float inv_sqrt_bc2, float eps, float wd) override {
        cuda::adamw_update(*this, w, g, m, v, n, clip, b1, b2, step_size, inv_sqrt_bc2, eps, wd);
    }
    void ema_update(float* e, const float* w, float d, int64_t n) override { cuda::ema_update(*this, e, w, d, n); }
    void sampler_rows(const int32_t* masked, const int32_t* fresh, int64_t nb, int64_t seqs, int64_t N, bool refresh,
                      int64_t rq, int64_t ro, int64_t step, int32_t* pos, int32_t* out_rows, int32_t* meta,
                      int32_t* row_pos) override {
        cuda::sampler_rows(*this, masked, fresh, nb, seqs, N, refresh, rq, ro, step, pos, out_rows, meta, row_pos);
    }
    void reveal_top(const int32_t* token, const float* conf, const int32_t* row_pos, int64_t nb, int64_t ro,
                    int64_t reveal, int64_t N, int64_t S, int64_t branches, int32_t* masked, int32_t* fresh,
                    int32_t* tokens, int32_t* ids, float* conf_all) override {
        cuda::reveal_top(*this, token, conf, row_pos, nb, ro, reveal, N, S, branches, masked, fresh, tokens, ids,
                         conf_all);
    }
    void draw_rows(const float* logits, int64_t n, const DrawSpec& d, const int32_t* rows, const int32_t* streams,
                   int32_t* token, float* conf) override {
        cuda::draw_rows(*this, logits, n, d, rows, streams, token, conf);
    }
    // The image networks' operations (cuda_image_ops.cu).
    void relu(const float* x, float* y, int64_t n) override { cuda::relu(*this, x, y, n); }
    void relu_backward(const float* y, const float* dy, float* dx, int64_t n) override {
        cuda::relu_backward(*this, y, dy, dx, n);
    }
    void upsample2(const float* x, float* y, int64_t planes, int64_t h, int64_t w) override {
        cuda::upsample2(*this, x, y, planes, h, w);
    }
    void upsample2_backward(const float* dy, float* dx, int64_t planes, int64_t h, int64_t w) override {
        cuda::upsample2_backward(*this, dy, dx, planes, h, w);
    }
    void pixel_unshuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) override {
        cuda::pixel_unshuffle2(*this, x, y, n, c, h, w);
    }
    void pixel_shuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) override {
        cuda::pixel_shuffle2(*this, x, y, n, c, h, w);
    }
    void transpose_batched(const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols) override {
        cuda::transpose_batched(*this, src, dst, batches, rows, cols);
    }
    void nearest_codes(const float* z, int64_t m, const float* codebook, int64_t K, int64_t c, float* dist,
                       int32_t* idx) override {
        cuda::nearest_codes(*this, z, m, codebook, K, c, dist, idx);
    }
    ReconSums recon_loss(const float* pred, const float* target, int64_t images, int64_t per, bool l1, double scale,
                         float* dpred) override {
        return cuda::recon_loss(*this, pred, target, images, per, l1, scale, dpred);
    }
    double commit_backward(const float* ze, const float* zq, const float* dzq, float* dze, int64_t n,
                           float g) override {
        return cuda::commit_backward(*this, ze, zq, dzq, dze, n, g);
    }
    // The evaluation networks' operations (cuda_image_ops.cu).
    void zero_pad(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw) override {
        cuda::zero_pad(*this, x, y, planes, h, w, ph, pw);
    }
    void max_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p) override {
        cuda::max_pool3(*this, x, y, planes, h, w, s, p);
    }
    void avg_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w) override {
        cuda::avg_pool3(*this, x, y, planes, h, w);
    }
    void mean_planes(const float* x, float* y, int64_t planes, int64_t plane) override {
        cuda::mean_planes(*this, x, y, planes, plane);
    }
    void copy2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) override {
        cuda::copy2d(*this, dst, ld_dst, src, ld_src, rows, cols);
    }
    void resize_bilinear(const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y, int64_t c_out,
                         int64_t oh, int64_t ow, float mul, float add) override {
        cuda::resize_bilinear(*this, x, n, c_in, h, w, y, c_out, oh, ow, mul, add);
    }
    cudaStream_t stream() const { return stream_; }
    cublasHandle_t blas() const { return blas_; }
    bool bf16() const { return bf16_; }
    float* scratch(size_t floats) {
        if (floats > scratch_n_) {
            if (scratch_) free(scratch_);
            scratch_ = pool_.get(floats);
            scratch_n_ = floats;
        }
        return scratch_;
    }

    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the
    // operands, keep the leading dimensions.
    void matmul(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, float alpha, float beta) override {
        const MatmulDims d = check_matmul_args("cuda", a, trans_a, b, trans_b, c);
        if (d.m == 0 || d.n == 0) return;
        if (d.k == 0) { // C = beta C
            scale_rows(c, beta);
            return;
        }
        if (bf16_) return matmul_bf16_general(a, trans_a, b, trans_b, c, d, alpha, beta);
        cublas_check(cublasSgemm(blas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 static_cast<int>(d.n), static_cast<int>(d.m), static_cast<int>(d.k), &alpha, b.data,
                                 static_cast<int>(b.ld), a.data, static_cast<int>(a.ld), &beta, c.data,
                                 static_cast<int>(c.ld)),
                     "matmul (cublasSgemm)");
    }

    void matmul_rowstable(ConstMat a, ConstMat w, const float* bias, Mat c, Act act = Act::none) override {
        check_matmul_args("cuda", a, false, w, true, c);
        if (c.rows == 0 || c.cols == 0) return;
        if (bf16_ && a.cols > 0) return matmul_bf16(a, w, bias, c, act == Act::gelu);
        const dim3 block(kThreads, kThreads);
        const dim3 grid(static_cast<unsigned>((c.cols + kTile - 1) / kTile),
                        static_cast<unsigned>((c.rows + kTile - 1) / kTile));
        rowstable_kernel<<<grid, block, 0, stream_>>>(c.rows, c.cols, a.cols, a.data, a.ld, w.data, w.ld, bias, c.data,
                                                      c.ld, act == Act::gelu);
        cuda_check(cudaGetLastError(), "matmul_rowstable");
    }

#if MAGNETS_HAVE_CUDNN
    void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) override {
        check_conv2d_shape("cuda", Op::conv2d_forward, s);
        Plan& p = plan(s);
        const Descs& d = p.d;
        if (!p.fwd_ready) {
            cudnnConvolutionFwdAlgoPerf_t perf[8];
            int found = 0;
            cudnn_check(cudnnGetConvolutionForwardAlgorithm_v7(dnn_, d.x, d.w, d.conv, d.y, 8, &found, perf),
                        "conv algo");
            p.fwd = pick(perf, found).algo;
            cudnn_check(cudnnGetConvolutionForwardWorkspaceSize(dnn_, d.x, d.w, d.conv, d.y, p.fwd, &p.fwd_ws),
                        "conv workspace");
            p.fwd_ready = true;
        }
        const float one = 1.0f, zero = 0.0f;
        cudnn_check(cudnnConvolutionForward(dnn_, &one, d.x, x, d.w, w, d.conv, p.fwd, workspace(p.fwd_ws), p.fwd_ws,
                                            &zero, d.y, y),
                    "conv2d_forward");
        if (bias) cudnn_check(cudnnAddTensor(dnn_, &one, d.b, bias, &one, d.y, y), "conv2d_forward bias");
    }
    void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) override {
        check_conv2d_shape("cuda", Op::conv2d_backward_data, s);
        Plan& p = plan(s);
        const Descs& d = p.d;
        if (!p.bwd_data_ready) {
            cudnnConvolutionBwdDataAlgoPerf_t perf[8];
            int found = 0;
            cudnn_check(cudnnGetConvolutionBackwardDataAlgorithm_v7(dnn_, d.w, d.y, d.conv, d.x, 8, &found, perf),
                        "conv bwd-data algo");
            p.bwd_data = pick(perf, found).algo;
            cudnn_check(cudnnGetConvolutionBackwardDataWorkspaceSize(dnn_, d.w, d.y, d.conv, d.x, p.bwd_data,
                                                                     &p.bwd_data_ws),
                        "conv bwd-data workspace");
            p.bwd_data_ready = true;
        }
        const float one = 1.0f, zero = 0.0f;
        cudnn_check(cudnnConvolutionBackwardData(dnn_, &one, d.w, w, d.y, dy, d.conv, p.bwd_data,
                                                 workspace(p.bwd_data_ws), p.bwd_data_ws, &zero, d.x, dx),
                    "conv2d_backward_data");
    }
    void conv2d_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw,
                                 float* dbias) override {
        check_conv2d_shape("cuda", Op::conv2d_backward_weights, s);
        Plan& p = plan(s);
        const Descs& d = p.d;
        if (!p.bwd_filter_ready) {
            cudnnConvolutionBwdFilterAlgoPerf_t perf[8];
            int found = 0;
            cudnn_check(cudnnGetConvolutionBackwardFilterAlgorithm_v7(dnn_, d.x, d.y, d.conv, d.w, 8, &found, perf),
                        "conv bwd-weights algo");
            p.bwd_filter = pick(perf, found).algo;
            cudnn_check(cudnnGetConvolutionBackwardFilterWorkspaceSize(dnn_, d.x, d.y, d.conv, d.w, p.bwd_filter,
                                                                       &p.bwd_filter_ws),
                        "conv bwd-weights workspace");
            p.bwd_filter_ready = true;
        }
        const float one = 1.0f, zero = 0.0f;
        cudnn_check(cudnnConvolutionBackwardFilter(dnn_, &one, d.x, x, d.y, dy, d.conv, p.bwd_filter,
                                                   workspace(p.bwd_filter_ws), p.bwd_filter_ws, &zero, d.w, dw),
                    "conv2d_backward_weights");
        if (dbias) cudnn_check(cudnnConvolutionBackwardBias(dnn_, &one, d.y, dy, &zero, d.b, dbias), "conv bias grad");
    }
#else
    void conv2d_forward(const Conv2dShape&, const float*, const float*, const float*, float*) override { no_cudnn(); }
    void conv2d_backward_data(const Conv2dShape&, const float*, const float*, float*) override { no_cudnn(); }
    void conv2d_backward_weights(const Conv2dShape&, const float*, const float*, float*, float*) override {
        no_cudnn();
    }
#endif

private:
#if !MAGNETS_HAVE_CUDNN
    [[noreturn]] static void no_cudnn() {
        throw Error("convolution not available on cuda", {}, "this library was built without cuDNN",
                    "install cuDNN (libcudnn9-dev) and rebuild, or use --backend onednn for the tokenizer");
    }
#endif

    // c = act(a w^T + bias) on the tensor cores: a and w rounded to bf16 (into
    // scratch buffers, every call: the weights may change between calls), f32
    // accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F), then bias and GELU.
    // cuBLAS picks its kernel by shape, so rows are not independent of M.
    void matmul_bf16(ConstMat a, ConstMat w, const float* bias, Mat c, bool gelu) {
        const int64_t M = c.rows, N = c.cols, K = a.cols;
        __nv_bfloat16* ab = bf16_scratch(bf16_a_, bf16_a_n_, M * K);
        __nv_bfloat16* wb = bf16_scratch(bf16_w_, bf16_w_n_, N * K);
        to_bf16_kernel<<<static_cast<unsigned>((M * K + 255) / 256), 256, 0, stream_>>>(a.data, a.ld, ab, M, K);
        to_bf16_kernel<<<static_cast<unsigned>((N * K + 255) / 256), 256, 0, stream_>>>(w.data, w.ld, wb, N, K);
        cuda_check(cudaGetLastError(), "matmul_rowstable (bf16 conversion)");
        const float one = 1.0f, zero = 0.0f;
        cublas_check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
        const cublasStatus_t st =
            cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
                         &one, wb, CUDA_R_16BF, static_cast<int>(K), ab, CUDA_R_16BF, static_cast<int>(K), &zero, c.data,
                         CUDA_R_32F, static_cast<int>(c.ld), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        cublas_check(cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
        cublas_check(st, "matmul_rowstable (cublasGemmEx, bf16)");
        if (bias || gelu) {
            bias_act_kernel<<<static_cast<unsigned>((M * N + 255) / 256), 256, 0, stream_>>>(c.data, c.ld, bias, M, N,
                                                                                           gelu);
            cuda_check(cudaGetLastError(), "matmul_rowstable (bias)");
        }
    }
    // The bf16 mode's matmul (training): both operands rounded to bf16 into
    // contiguous scratch copies (their stored shapes), cublasGemmEx with f32
    // accumulation into the f32 C with alpha and beta, as autocast does.
    void matmul_bf16_general(ConstMat a, bool trans_a, ConstMat b, bool trans_b, Mat c, const MatmulDims& d,
                             float alpha, float beta) {
        __nv_bfloat16* ab = bf16_scratch(bf16_a_, bf16_a_n_, a.rows * a.cols);
        __nv_bfloat16* bb = bf16_scratch(bf16_w_, bf16_w_n_, b.rows * b.cols);
        to_bf16_kernel<<<static_cast<unsigned>((a.rows * a.cols + 255) / 256), 256, 0, stream_>>>(a.data, a.ld, ab,
                                                                                                  a.rows, a.cols);
        to_bf16_kernel<<<static_cast<unsigned>((b.rows * b.cols + 255) / 256), 256, 0, stream_>>>(b.data, b.ld, bb,
                                                                                                  b.rows, b.cols);
        cuda_check(cudaGetLastError(), "matmul (bf16 conversion)");
        cublas_check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
        const cublasStatus_t st = cublasGemmEx(
            blas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(d.n),
            static_cast<int>(d.m), static_cast<int>(d.k), &alpha, bb, CUDA_R_16BF, static_cast<int>(b.cols), ab,
            CUDA_R_16BF, static_cast<int>(a.cols), &beta, c.data, CUDA_R_32F, static_cast<int>(c.ld),
            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        cublas_check(cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
        cublas_check(st, "matmul (cublasGemmEx, bf16)");
    }
    __nv_bfloat16* bf16_scratch(float*& buf, size_t& have, int64_t count) {
        const size_t floats = static_cast<size_t>((count + 1) / 2);
        if (floats > have) {
            if (buf) free(buf);
            buf = pool_.get(floats);
            have = floats;
        }
        return reinterpret_cast<__nv_bfloat16*>(buf);
    }

    // C = beta C for the k = 0 corner case (cuBLAS rejects k = 0 on some versions).
    void scale_rows(Mat c, float beta) {
        if (beta == 0.0f) {
            cuda_check(cudaMemset2DAsync(c.data, static_cast<size_t>(c.ld) * sizeof(float), 0,
                                         static_cast<size_t>(c.cols) * sizeof(float), static_cast<size_t>(c.rows),
                                         stream_),
                       "matmul (k = 0)");
            return;
        }
        for (int64_t i = 0; i < c.rows; ++i)
            cublas_check(cublasSscal(blas_, static_cast<int>(c.cols), &beta, c.data + i * c.ld, 1), "matmul (k = 0)");
    }

    float* workspace(size_t bytes) {
        if (bytes <= workspace_bytes_) return workspace_;
        if (workspace_) free(workspace_);
        workspace_ = pool_.get((bytes + sizeof(float) - 1) / sizeof(float));
        workspace_bytes_ = bytes;
        return workspace_;
    }

#if MAGNETS_HAVE_CUDNN
    // Descriptors of one convolution, f32 NCHW: FMA math (no TF32), or in the
    // bf16 mode cuDNN's default math, which lets it use TF32 tensor cores (as
    // PyTorch does for f32 convolutions unless allow_tf32 is turned off).
    struct Descs {
        cudnnTensorDescriptor_t x{}, y{}, b{};
        cudnnFilterDescriptor_t w{};
        cudnnConvolutionDescriptor_t conv{};
        Descs(const Conv2dShape& s, bool tf32) {
            cudnn_check(cudnnCreateTensorDescriptor(&x), "descriptor");
            cudnn_check(cudnnCreateTensorDescriptor(&y), "descriptor");
            cudnn_check(cudnnCreateTensorDescriptor(&b), "descriptor");
            cudnn_check(cudnnCreateFilterDescriptor(&w), "descriptor");
            cudnn_check(cudnnCreateConvolutionDescriptor(&conv), "descriptor");
            const int n = static_cast<int>(s.n), ci = static_cast<int>(s.c_in), co = static_cast<int>(s.c_out);
            cudnn_check(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, ci, static_cast<int>(s.h),
                                                   static_cast<int>(s.w)),
                        "x descriptor");
            cudnn_check(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, co,
                                                   static_cast<int>(s.out_h()), static_cast<int>(s.out_w())),
                        "y descriptor");
            cudnn_check(cudnnSetTensor4dDescriptor(b, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, co, 1, 1), "bias descriptor");
            cudnn_check(cudnnSetFilter4dDescriptor(w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, co, ci,
                                                   static_cast<int>(s.kh), static_cast<int>(s.kw)),
                        "w descriptor");
            const int pad = static_cast<int>(s.pad), stride = static_cast<int>(s.stride);
            cudnn_check(cudnnSetConvolution2dDescriptor(conv, pad, pad, stride, stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                        CUDNN_DATA_FLOAT),
                        "conv descriptor");
            cudnn_check(cudnnSetConvolutionMathType(conv, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH), "conv math type");
        }
        ~Descs() {
            cudnnDestroyConvolutionDescriptor(conv);
            cudnnDestroyFilterDescriptor(w);
            cudnnDestroyTensorDescriptor(b);
            cudnnDestroyTensorDescriptor(y);
            cudnnDestroyTensorDescriptor(x);
        }
        Descs(const Descs&) = delete;
        Descs& operator=(const Descs&) = delete;
    };
    // The fastest algorithm cuDNN ranks as working and deterministic (so a
    // tokenizer run repeats bit for bit), else its first working one.
    template <typename Perf>
    static const Perf& pick(const Perf* perf, int found) {
        for (int i = 0; i < found; ++i)
            if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC) return perf[i];
        for (int i = 0; i < found; ++i)
            if (perf[i].status == CUDNN_STATUS_SUCCESS) return perf[i];
        throw Error("cuDNN has no algorithm for this convolution", {}, "every candidate failed",
                    "report the shape; use --backend onednn meanwhile");
    }
    // A convolution's descriptors and chosen algorithms, made on its first use
    // and kept by shape: Inception's ~100 convolutions (or a tokenizer step's)
    // then cost no descriptor set-up or heuristic query per call.
    struct Plan {
        Descs d;
        bool fwd_ready = false, bwd_data_ready = false, bwd_filter_ready = false;
        cudnnConvolutionFwdAlgo_t fwd{};
        cudnnConvolutionBwdDataAlgo_t bwd_data{};
        cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
        size_t fwd_ws = 0, bwd_data_ws = 0, bwd_filter_ws = 0;
        Plan(const Conv2dShape& s, bool tf32) : d(s, tf32) {}
    };
    Plan& plan(const Conv2dShape& s) {
        const std::array<int64_t, 9> key = {s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride, s.pad};
        auto it = plans_.find(key);
        if (it == plans_.end()) it = plans_.emplace(key, std::make_unique<Plan>(s, bf16_)).first;
        return *it->second;
    }
    std::map<std::array<int64_t, 9>, std::unique_ptr<Plan>> plans_;
    cudnnHandle_t dnn_{};
#endif

    Pool pool_;
    cudaStream_t stream_{};
    int device_ = 0;
    cublasHandle_t blas_{};
    float* workspace_ = nullptr;
    size_t workspace_bytes_ = 0;
    float* ln_stats_ = nullptr; // layernorm_rows' mean and rstd (not kept)
    size_t ln_stats_n_ = 0;
    // MAGNETS_CUDA_BF16=1 when the backend was made: matmul_rowstable on bf16
    // tensor cores (matmul_bf16) instead of the f32 row-stable kernel,
    // attention_rows on them too (cuda_attention.cu), and matmul (training)
    // with bf16 operands and f32 accumulation (matmul_bf16_general).
    bool bf16_ = [] {
        const char* e = std::getenv("MAGNETS_CUDA_BF16");
        return e && std::string(e) == "1";
    }();
    float* scratch_ = nullptr; // scratch_of (attention backward, the gradient norm, the image ops)
    size_t scratch_n_ = 0;
    float *bf16_a_ = nullptr, *bf16_w_ = nullptr;
    size_t bf16_a_n_ = 0, bf16_w_n_ = 0;
};

} // namespace

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

namespace cuda {

namespace {
CudaBackend& cuda_backend(Backend& be) {
    auto* c = dynamic_cast<CudaBackend*>(&be);
    if (!c)
        throw Error("not a GPU backend", {}, std::string("the ") + be.name() + " backend's buffers are host memory",
                    "make the backend with make_backend(\"cuda\")");
    return *c;
}
} // namespace

cudaStream_t stream_of(Backend& be) { return cuda_backend(be).stream(); }
cublasHandle_t blas_of(Backend& be) { return cuda_backend(be).blas(); }
bool bf16_mode(Backend& be) { return cuda_backend(be).bf16(); }
float* scratch_of(Backend& be, size_t floats) { return cuda_backend(be).scratch(floats); }
void cublas_check_status(cublasStatus_t s, const char* what) { cublas_check(s, what); }

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw Error(std::string("CUDA error in ") + what, {}, cudaGetErrorString(e),
                    "check the device (nvidia-smi) and that no other process holds its memory");
}

} // namespace cuda

} // namespace magnets

// The entry point core/backend.cpp finds (linked in, or after dlopen of
// libmagnets_cuda). Throws magnets::Error when no device is visible.
extern "C" magnets::Backend* magnets_cuda_backend_create() { return magnets::make_cuda_backend().release(); }
