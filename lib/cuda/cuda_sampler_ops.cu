// lib/cuda/cuda_sampler_ops.cu: the sampler's per-step work on the GPU
// (Backend::sampler_rows, draw_rows, reveal_top; the CPU versions are in
// lib/cpu/host_sampler_ops.cpp), so a decoding step stays on the device:
// the rows to compute, the draws from the logits, the ranking and reveal.
//
// One block per masked position. The random numbers come from the same
// inline Philox as the CPU's (core/philox.h) and exp from the same
// polynomial (core/fastmath.h). What differs from the CPU is the order of
// the double sums (segment sums here, one running sum there), which moves
// the cut points of the draw by about an ulp of the total; tests/test_cuda_ops.cpp
// measures the agreement.
#include "core/fastmath.h"
#include "core/philox.h"
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"

#include <cuda_runtime.h>

#include <cmath>

namespace magnets::cuda {

namespace {

constexpr int kDrawThreads = 256;

struct DrawArgs {
    int64_t K = 0, n = 0, top_k = 0;
    int cfg = 0;
    double guidance = 0, tau = 1, choice = 0;
    uint64_t seed = 0;
};

// Order-preserving map of floats (not NaN) to unsigned keys, and back.
__device__ inline uint32_t order_key(float f) {
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ inline float key_value(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The scaled logit of code k, as the CPU computes it (double, then float).
__device__ inline float row_logit(const float* lc, const float* lu, int64_t k, const DrawArgs& a) {
    const double l = a.cfg ? static_cast<double>(lc[k]) + a.guidance * (static_cast<double>(lc[k]) - lu[k])
                           : static_cast<double>(lc[k]);
    return static_cast<float>(l / a.tau);
}

__device__ inline int block_sum_int(int v, int* red) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int w = static_cast<int>(threadIdx.x) / kWarp;
    __syncthreads();
    if (threadIdx.x % kWarp == 0) red[w] = v;
    __syncthreads();
    int s = 0;
    for (int i = 0; i < kDrawThreads / kWarp; ++i) s += red[i];
    return s;
}
__device__ inline float block_max_float(float v, float* red) {
    v = warp_max(v);
    const int w = static_cast<int>(threadIdx.x) / kWarp;
    __syncthreads();
    if (threadIdx.x % kWarp == 0) red[w] = v;
    __syncthreads();
    float m = red[0];
    for (int i = 1; i < kDrawThreads / kWarp; ++i) m = fmaxf(m, red[i]);
    return m;
}

__global__ void __launch_bounds__(kDrawThreads) draw_rows_kernel(const float* logits, DrawArgs a, const int32_t* rows,
                                                                  const int32_t* streams, int32_t* token, float* conf) {
    extern __shared__ float ex[]; // K: scaled logits, then their exp
    __shared__ double seg[kDrawThreads];
    __shared__ float red_f[kDrawThreads / kWarp];
    __shared__ int red_i[kDrawThreads / kWarp];
    const int64_t i = blockIdx.x, K = a.K;
    const int t = static_cast<int>(threadIdx.x);
    const float* lc = logits + i * K;
    const float* lu = a.cfg ? logits + (a.n + i) * K : nullptr;
    for (int64_t k = t; k < K; k += kDrawThreads) ex[k] = row_logit(lc, lu, k, a);
    __syncthreads();

    // top-k: the k-th largest value is the largest key T with at least top_k
    // keys >= T, found bit by bit (exact, as the CPU's nth_element).
    float kth = -INFINITY;
    if (a.top_k > 0 && a.top_k < K) {
        uint32_t T = 0;
        for (int bit = 31; bit >= 0; --bit) {
            const uint32_t cand = T | (1u << bit);
            int c = 0;
            for (int64_t k = t; k < K; k += kDrawThreads) c += order_key(ex[k]) >= cand ? 1 : 0;
            if (block_sum_int(c, red_i) >= a.top_k) T = cand;
        }
        kth = key_value(T);
    }
    float mx = -INFINITY;
    for (int64_t k = t; k < K; k += kDrawThreads) {
        float v = ex[k];
        if (v < kth) ex[k] = v = -INFINITY;
        mx = fmaxf(mx, v);
    }
    mx = block_max_float(mx, red_f); // ends with a barrier: every ex[k] is final

    // exp, summed per contiguous segment of codes (one segment per thread)
    const int64_t per = (K + kDrawThreads - 1) / kDrawThreads, k0 = t * per, k1 = k0 + per < K ? k0 + per : K;
    double s = 0;
    for (int64_t k = k0; k < k1; ++k) {
        const float e = vexp(ex[k] - mx);
        ex[k] = e;
        s += e;
    }
    seg[t] = s;
    __syncthreads();
    if (t != 0) return;

    const int64_t img = rows[2 * i];
    const uint64_t ctr = static_cast<uint32_t>(rows[2 * i + 1]);
    const int32_t* st = streams + 4 * img;
    const uint64_t tok_stream = static_cast<uint64_t>(static_cast<uint32_t>(st[0])) |
                                static_cast<uint64_t>(static_cast<uint32_t>(st[1])) << 32;
    const uint64_t gum_stream = static_cast<uint64_t>(static_cast<uint32_t>(st[2])) |
                                static_cast<uint64_t>(static_cast<uint32_t>(st[3])) << 32;
    double total = 0;
    for (int q = 0; q < kDrawThreads; ++q) total += seg[q];
    const double u = philox::uniform_double(a.seed, tok_stream, ctr) * total;
    double acc = 0;
    int64_t pick = K - 1;
    bool found = false;
    for (int q = 0; q < kDrawThreads && !found; ++q) {
        if (acc + seg[q] <= u) {
            acc += seg[q];
            continue;
        }
        const int64_t e1 = (q + 1) * per < K ? (q + 1) * per : K;
        for (int64_t k = q * per; k < e1; ++k) { // the cut is in this segment
            acc += ex[k];
            if (acc > u) { pick = k; found = true; break; }
        }
    }
    float lp = row_logit(lc, lu, pick, a);
    if (lp < kth) lp = -INFINITY;
    while (!isfinite(lp)) { // never a top-k-excluded code
        --pick;
        lp = row_logit(lc, lu, pick, a);
        if (lp < kth) lp = -INFINITY;
    }
    const double logp = static_cast<double>(lp - mx) - ::log(total);
    token[i] = static_cast<int32_t>(pick);
    conf[i] = static_cast<float>(logp + a.choice * philox::gumbel(a.seed, gum_stream, ctr));
}

// One thread per sequence: its positions to compute and the indices of its
// masked ones among them (N is small: a sequential scan keeps the order).
__global__ void sampler_rows_kernel(const int32_t* masked, const int32_t* fresh, int64_t nb, int64_t seqs, int64_t N,
                                    int refresh, int64_t rq, int64_t ro, int32_t* pos, int32_t* out_rows) {
    const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b >= seqs) return;
    const int64_t img = b % nb;
    const int32_t* mk = masked + img * N;
    const int32_t* fr = fresh + img * N;
    int32_t* pb = pos + b * rq;
    int32_t* ob = out_rows + b * ro;
    int64_t cnt = 0, out = 0;
    // The caller's rq and ro are the counts of this state (the CPU checks it);
    // the guards keep a wrong count from writing into the next sequence.
    if (refresh) {
        for (int64_t j = 0; j <= N && j < rq; ++j) pb[j] = static_cast<int32_t>(j);
        for (int64_t j = 0; j < N; ++j)
            if (mk[j] && out < ro) ob[out++] = static_cast<int32_t>(1 + j);
    } else {
        for (int64_t j = 0; j < N; ++j)
            if ((mk[j] || fr[j]) && cnt < rq) {
                if (mk[j] && out < ro) ob[out++] = static_cast<int32_t>(cnt);
                pb[cnt++] = static_cast<int32_t>(1 + j);
            }
    }
}

// One thread per image: its ro draws' (image, counter) and positions.
__global__ void draw_meta_kernel(const int32_t* masked, int64_t nb, int64_t N, int64_t ro, int64_t step, int32_t* meta,
                                 int32_t* row_pos) {
    const int64_t img = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (img >= nb) return;
    int64_t i = img * ro;
    const int64_t end = i + ro;
    for (int64_t j = 0; j < N && i < end; ++j)
        if (masked[img * N + j]) {
            meta[2 * i] = static_cast<int32_t>(img);
            meta[2 * i + 1] = static_cast<int32_t>(step * N + j);
            row_pos[i++] = static_cast<int32_t>(j);
        }
}

constexpr int kRankThreads = 256;

// One block per image: its draws sorted by (-confidence, index) in shared
// memory (bitonic, a total order as the CPU's std::sort of the same pairs),
// then the first `reveal` written into the decoding state.
__global__ void __launch_bounds__(kRankThreads) reveal_top_kernel(const int32_t* token, const float* conf,
                                                                  const int32_t* row_pos, int64_t ro, int64_t reveal,
                                                                  int64_t nb, int64_t N, int64_t S, int64_t branches,
                                                                  int P, int32_t* masked, int32_t* fresh,
                                                                  int32_t* tokens, int32_t* ids, float* conf_all) {
    extern __shared__ float rank_sh[];
    float* key = rank_sh;                                  // P
    int32_t* idx = reinterpret_cast<int32_t*>(rank_sh + P); // P
    const int64_t img = blockIdx.x;
    const int t = static_cast<int>(threadIdx.x);
    for (int64_t j = t; j < N; j += kRankThreads) {
        fresh[img * N + j] = 0;
        conf_all[img * N + j] = __int_as_float(0x7fc00000); // NaN: nothing drawn here
    }
    __syncthreads();
    for (int q = t; q < P; q += kRankThreads) {
        if (q < ro) {
            const int64_t i = img * ro + q;
            conf_all[img * N + row_pos[i]] = conf[i];
            key[q] = -conf[i];
            idx[q] = q;
        } else {
            key[q] = INFINITY;
            idx[q] = 0x7fffffff;
        }
    }
    __syncthreads();
    for (int k = 2; k <= P; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int q = t; q < P; q += kRankThreads) {
                const int o = q ^ j;
                if (o <= q) continue;
                const bool greater = key[q] > key[o] || (key[q] == key[o] && idx[q] > idx[o]);
                if (((q & k) == 0) == greater) {
                    const float kk = key[q]; key[q] = key[o]; key[o] = kk;
                    const int32_t ii = idx[q]; idx[q] = idx[o]; idx[o] = ii;
                }
            }
            __syncthreads();
        }
    for (int64_t q = t; q < reveal; q += kRankThreads) {
        const int64_t i = img * ro + idx[q];
        const int64_t j = row_pos[i];
        masked[img * N + j] = 0;
        fresh[img * N + j] = 1;
        tokens[img * N + j] = token[i];
        for (int64_t br = 0; br < branches; ++br) ids[(br * nb + img) * S + 1 + j] = token[i];
    }
}

} // namespace

void sampler_rows(Backend& be, const int32_t* masked, const int32_t* fresh, int64_t nb, int64_t seqs, int64_t N,
                  bool refresh, int64_t rq, int64_t ro, int64_t step, int32_t* pos, int32_t* out_rows, int32_t* meta,
                  int32_t* row_pos) {
    if (seqs == 0) return;
    cudaStream_t st = stream_of(be);
    sampler_rows_kernel<<<blocks_for(seqs, 64), 64, 0, st>>>(masked, fresh, nb, seqs, N, refresh ? 1 : 0, rq, ro, pos,
                                                            out_rows);
    if (ro > 0) draw_meta_kernel<<<blocks_for(nb, 64), 64, 0, st>>>(masked, nb, N, ro, step, meta, row_pos);
    check(cudaGetLastError(), "sampler_rows");
}

void reveal_top(Backend& be, const int32_t* token, const float* conf, const int32_t* row_pos, int64_t nb, int64_t ro,
                int64_t reveal, int64_t N, int64_t S, int64_t branches, int32_t* masked, int32_t* fresh,
                int32_t* tokens, int32_t* ids, float* conf_all) {
    if (nb == 0) return;
    int P = 1;
    while (P < ro) P <<= 1;
    const size_t shared = static_cast<size_t>(P) * (sizeof(float) + sizeof(int32_t));
    if (shared > 48 * 1024)
        check(cudaFuncSetAttribute(reveal_top_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(shared)),
              "reveal_top (too many tokens per image for one block's shared memory)");
    reveal_top_kernel<<<static_cast<unsigned>(nb), kRankThreads, shared, stream_of(be)>>>(
        token, conf, row_pos, ro, reveal, nb, N, S, branches, P, masked, fresh, tokens, ids, conf_all);
    check(cudaGetLastError(), "reveal_top");
}

void draw_rows(Backend& be, const float* logits, int64_t n, const Backend::DrawSpec& d, const int32_t* rows,
               const int32_t* streams, int32_t* token, float* conf) {
    if (n == 0) return;
    DrawArgs a;
    a.K = d.K; a.n = n; a.top_k = d.top_k; a.cfg = d.cfg ? 1 : 0;
    a.guidance = d.guidance; a.tau = d.tau; a.choice = d.choice; a.seed = d.seed;
    const size_t shared = sizeof(float) * static_cast<size_t>(d.K);
    // The default dynamic limit is 48 KiB less the kernel's static shared
    // memory (segments and reduction scratch): opt in beyond what is left.
    cudaFuncAttributes fa{};
    check(cudaFuncGetAttributes(&fa, draw_rows_kernel), "draw_rows (attributes)");
    if (shared > static_cast<size_t>(fa.maxDynamicSharedSizeBytes))
        check(cudaFuncSetAttribute(draw_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(shared)),
              "draw_rows (codebook too large for one block's shared memory)");
    draw_rows_kernel<<<static_cast<unsigned>(n), kDrawThreads, shared, stream_of(be)>>>(logits, a, rows, streams, token,
                                                                                        conf);
    check(cudaGetLastError(), "draw_rows");
}

} // namespace magnets::cuda
