// lib/cuda/cuda_decoder_ops.cu: the decoder's operations (Backend::embed_rows,
// layernorm_rows, add_into, scatter_rows, gather_rows, attention_rows) on the
// GPU, for nn::Decoder: the sampler's transformer forward with the KV cache
// on device memory. Same arguments and meaning as the CPU versions in
// lib/cpu/host_decoder_ops.cpp; tests/test_cuda_ops.cpp compares them.
//
// attention_rows is a plain first version: one warp per query row, the scores
// in shared memory (S floats per warp), exp in f32, the weighted sum of V one
// lane per output column. It divides by the softmax sum at the end (the CPU
// multiplies by its reciprocal), so the two agree to round-off.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"

#include <cuda_runtime.h>

namespace magnets::cuda {

namespace {

__global__ void embed_rows_kernel(const int32_t* ids, const int32_t* pos, int64_t rq, int64_t S, const float* tok,
                                  const float* pe, int64_t D, float* x, int64_t R, int64_t r) {
    const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= R * r) return;
    const int64_t i = e / r, j = e % r, b = i / rq, ps = pos[i];
    x[e] = tok[static_cast<int64_t>(ids[b * S + ps]) * D + j] + pe[ps * D + j];
}

__global__ void add_into_kernel(float* x, const float* y, int64_t count) {
    const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e < count) x[e] += y[e];
}

__global__ void scatter_rows_kernel(const float* src, const int32_t* pos, int64_t rq, int64_t S, float* dst, int64_t R,
                                    int64_t n) {
    const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= R * n) return;
    const int64_t i = e / n, j = e % n;
    dst[(i / rq * S + pos[i]) * n + j] = src[e];
}

__global__ void gather_rows_kernel(const float* src, const int32_t* idx, int64_t rq, int64_t ro, float* dst,
                                   int64_t rows, int64_t n) {
    const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= rows * n) return;
    const int64_t k = e / n, j = e % n;
    dst[e] = src[(k / ro * rq + idx[k]) * n + j];
}

__global__ void attention_rows_kernel(const float* q, const float* kc, const float* vc, float* out, int64_t rows,
                                      int64_t rq, int64_t S, int64_t heads, int64_t hd, float scale) {
    extern __shared__ float scores[]; // S per warp
    const int warp = static_cast<int>(threadIdx.x) / kWarp, lane = static_cast<int>(threadIdx.x) % kWarp;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + warp; // (b, h, i)
    if (row >= rows) return; // the whole warp
    const int64_t i = row % rq, bh = row / rq, h = bh % heads, b = bh / heads, a = heads * hd;
    const float* qi = q + (b * rq + i) * a + h * hd;
    const float* kb = kc + b * S * a + h * hd;
    const float* vb = vc + b * S * a + h * hd;
    float* sc = scores + static_cast<int64_t>(warp) * S;
    float mx = -INFINITY;
    for (int64_t j = lane; j < S; j += kWarp) {
        float acc = 0.0f;
        for (int64_t d = 0; d < hd; ++d) acc = fmaf(qi[d], kb[j * a + d], acc);
        sc[j] = acc;
        mx = fmaxf(mx, acc);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int64_t j = lane; j < S; j += kWarp) {
        const float e = expf((sc[j] - mx) * scale);
        sc[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    __syncwarp();
    float* oi = out + (b * rq + i) * a + h * hd;
    for (int64_t d = lane; d < hd; d += kWarp) {
        float acc = 0.0f;
        for (int64_t j = 0; j < S; ++j) acc = fmaf(sc[j], vb[j * a + d], acc);
        oi[d] = acc / sum;
    }
}

} // namespace

void embed_rows(Backend& be, const int32_t* ids, const int32_t* pos, int64_t rq, int64_t S, const float* tok,
                const float* pe, int64_t D, float* x, int64_t R, int64_t r) {
    if (R * r == 0) return;
    embed_rows_kernel<<<blocks_for(R * r, 256), 256, 0, stream_of(be)>>>(ids, pos, rq, S, tok, pe, D, x, R, r);
    check(cudaGetLastError(), "embed_rows");
}

void add_into(Backend& be, float* x, const float* y, int64_t count) {
    if (count == 0) return;
    add_into_kernel<<<blocks_for(count, 256), 256, 0, stream_of(be)>>>(x, y, count);
    check(cudaGetLastError(), "add_into");
}

void scatter_rows(Backend& be, const float* src, const int32_t* pos, int64_t rq, int64_t S, float* dst, int64_t R,
                  int64_t n) {
    if (R * n == 0) return;
    scatter_rows_kernel<<<blocks_for(R * n, 256), 256, 0, stream_of(be)>>>(src, pos, rq, S, dst, R, n);
    check(cudaGetLastError(), "scatter_rows");
}

void gather_rows(Backend& be, const float* src, const int32_t* idx, int64_t seqs, int64_t rq, int64_t ro, float* dst,
                 int64_t n) {
    const int64_t rows = seqs * ro;
    if (rows * n == 0) return;
    gather_rows_kernel<<<blocks_for(rows * n, 256), 256, 0, stream_of(be)>>>(src, idx, rq, ro, dst, rows, n);
    check(cudaGetLastError(), "gather_rows");
}

void attention_rows(Backend& be, const float* q, const float* kc, const float* vc, float* out, int64_t seqs,
                    int64_t rq, int64_t S, int64_t heads, int64_t hd) {
    const int64_t rows = seqs * heads * rq;
    if (rows == 0) return;
    constexpr int warps = 4;
    const size_t shared = sizeof(float) * static_cast<size_t>(warps * S);
    check(shared <= 48 * 1024 ? cudaSuccess : cudaErrorInvalidValue, "attention_rows (sequence too long)");
    const float scale = 1.0f / sqrtf(static_cast<float>(hd));
    attention_rows_kernel<<<blocks_for(rows, warps), warps * kWarp, shared, stream_of(be)>>>(q, kc, vc, out, rows, rq,
                                                                                             S, heads, hd, scale);
    check(cudaGetLastError(), "attention_rows");
}

} // namespace magnets::cuda
