// lib/cuda/cuda_decoder_ops.cu: the decoder's operations (Backend::embed_rows,
// layernorm_rows, add_into, scatter_rows, gather_rows, attention_rows) on the
// GPU, for nn::Decoder: the sampler's transformer forward with the KV cache
// on device memory. Same arguments and meaning as the CPU versions in
// lib/cpu/host_decoder_ops.cpp; tests/test_cuda_ops.cpp compares them.
//
// attention_rows (f32): for head widths 16, 32, 48 and 64, one thread per
// query row and 64 rows per block, keys and values streamed through shared
// memory in tiles of 64 and an online softmax (running maximum and sum, the
// output rescaled per 8 keys), so the scores never go to memory and each key
// is read once per 64 queries. Other head widths take a plain kernel: one
// warp per query row, its scores in shared memory. Both divide by the
// softmax sum at the end (the CPU multiplies by its reciprocal and takes
// the maximum over all keys first), so GPU and CPU agree to f32 round-off.
// The bf16 mode has a tensor-core kernel (cuda_attention.cu).
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

constexpr int kAttnRows = 64; // query rows (threads) per block, and keys per tile

template <int HD>
__global__ void __launch_bounds__(kAttnRows) attention_rows_tiled_kernel(const float* __restrict__ q,
                                                                         const float* __restrict__ kc,
                                                                         const float* __restrict__ vc,
                                                                         float* __restrict__ out, int64_t rq,
                                                                         int64_t S, int64_t heads, float scale) {
    __shared__ float Ks[kAttnRows][HD], Vs[kAttnRows][HD];
    const int t = static_cast<int>(threadIdx.x);
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kAttnRows + t, h = blockIdx.y, b = blockIdx.z;
    const int64_t a = heads * HD;
    const bool active = i < rq;
    float qr[HD], acc[HD];
    for (int d = 0; d < HD; ++d) {
        qr[d] = active ? q[(b * rq + i) * a + h * HD + d] : 0.0f;
        acc[d] = 0.0f;
    }
    const float* kb = kc + b * S * a + h * HD;
    const float* vb = vc + b * S * a + h * HD;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = 0; j0 < S; j0 += kAttnRows) {
        __syncthreads();
        for (int e = t; e < kAttnRows * HD; e += kAttnRows) {
            const int r = e / HD, d = e % HD;
            const bool in = j0 + r < S;
            Ks[r][d] = in ? kb[(j0 + r) * a + d] : 0.0f;
            Vs[r][d] = in ? vb[(j0 + r) * a + d] : 0.0f;
        }
        __syncthreads();
        const int nk = S - j0 < kAttnRows ? static_cast<int>(S - j0) : kAttnRows;
        for (int jc = 0; jc < nk; jc += 8) {
            float sc[8], cmax = -INFINITY;
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                if (jc + u < nk) {
                    float dot = 0.0f;
#pragma unroll
                    for (int d = 0; d < HD; ++d) dot = fmaf(qr[d], Ks[jc + u][d], dot);
                    sc[u] = dot;
                    cmax = fmaxf(cmax, dot);
                } else {
                    sc[u] = -INFINITY;
                }
            }
            const float m_new = fmaxf(m, cmax); // finite: the chunk has a key
            const float alpha = m == -INFINITY ? 0.0f : expf((m - m_new) * scale);
            l *= alpha;
#pragma unroll
            for (int d = 0; d < HD; ++d) acc[d] *= alpha;
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                if (jc + u >= nk) break;
                const float p = expf((sc[u] - m_new) * scale);
                l += p;
#pragma unroll
                for (int d = 0; d < HD; ++d) acc[d] = fmaf(p, Vs[jc + u][d], acc[d]);
            }
            m = m_new;
        }
    }
    if (!active) return;
    float* oi = out + (b * rq + i) * a + h * HD;
    for (int d = 0; d < HD; ++d) oi[d] = acc[d] / l;
}

template <int HD>
void launch_tiled(Backend& be, const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq,
                  int64_t S, int64_t heads) {
    const dim3 grid(static_cast<unsigned>((rq + kAttnRows - 1) / kAttnRows), static_cast<unsigned>(heads),
                    static_cast<unsigned>(seqs));
    const float scale = 1.0f / sqrtf(static_cast<float>(HD));
    attention_rows_tiled_kernel<HD><<<grid, kAttnRows, 0, stream_of(be)>>>(q, kc, vc, out, rq, S, heads, scale);
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
    switch (hd) {
    case 16: launch_tiled<16>(be, q, kc, vc, out, seqs, rq, S, heads); break;
    case 32: launch_tiled<32>(be, q, kc, vc, out, seqs, rq, S, heads); break;
    case 48: launch_tiled<48>(be, q, kc, vc, out, seqs, rq, S, heads); break;
    case 64: launch_tiled<64>(be, q, kc, vc, out, seqs, rq, S, heads); break;
    default: break;
    }
    if (hd == 16 || hd == 32 || hd == 48 || hd == 64) {
        check(cudaGetLastError(), "attention_rows");
        return;
    }
    constexpr int warps = 4;
    const size_t shared = sizeof(float) * static_cast<size_t>(warps * S);
    check(shared <= 48 * 1024 ? cudaSuccess : cudaErrorInvalidValue, "attention_rows (sequence too long)");
    const float scale = 1.0f / sqrtf(static_cast<float>(hd));
    attention_rows_kernel<<<blocks_for(rows, warps), warps * kWarp, shared, stream_of(be)>>>(q, kc, vc, out, rows, rq,
                                                                                             S, heads, hd, scale);
    check(cudaGetLastError(), "attention_rows");
}

} // namespace magnets::cuda
