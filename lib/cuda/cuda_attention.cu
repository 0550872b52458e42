// lib/cuda/cuda_attention.cu: the decoder's attention (Backend::attention_rows)
// on the tensor cores, for the bf16 mode (MAGNETS_CUDA_BF16=1): a flash-style
// kernel that never writes the scores to memory.
//
// One block per (query tile of 64 rows, head, sequence), 4 warps of 16 query
// rows each. Keys and values stream through shared memory in tiles of 64
// (rounded to bf16 on the way in, as are the queries); scores are f32
// (wmma bf16 16x16x16, f32 accumulation); the softmax runs online: per
// row a running maximum m and sum l, the output rows (f32, in shared
// memory) rescaled by exp(m_old - m_new) before each tile's P V is added;
// P is rounded to bf16 for that product. At the end the output is divided
// by l. Error against the f32 CPU attention: that of bf16 inputs (about
// 2^-9 relative per product term); tests/test_cuda_ops.cpp checks it.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"
#include "magnets/error.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <string>

namespace magnets::cuda {

namespace {

constexpr int kQT = 64;  // query rows per block (4 warps x 16)
constexpr int kKT = 64;  // keys per tile

template <int HD>
struct AttnSmem {
    // offsets in bytes into the dynamic shared memory; every region starts
    // on a 128-byte boundary (wmma needs 32)
    static constexpr int round(int b) { return (b + 127) / 128 * 128; }
    static constexpr int q = 0;                                             // bf16 [kQT][HD]
    static constexpr int k = q + round(kQT * HD * 2);                       // bf16 [kKT][HD]
    static constexpr int v = k + round(kKT * HD * 2);                       // bf16 [kKT][HD]
    static constexpr int s = v + round(kKT * HD * 2);                       // f32 [kQT][kKT]
    static constexpr int p = s + round(kQT * kKT * 4);                      // bf16 [kQT][kKT]
    static constexpr int o = p + round(kQT * kKT * 2);                      // f32 [kQT][HD]
    static constexpr int stats = o + round(kQT * HD * 4);                   // f32 [kQT] m, l, alpha
    static constexpr int bytes = stats + round(3 * kQT * 4);
};

template <int HD>
__global__ void __launch_bounds__(kQT * 2) attention_rows_wmma_kernel(const float* __restrict__ q,
                                                                      const float* __restrict__ kc,
                                                                      const float* __restrict__ vc,
                                                                      float* __restrict__ out, int64_t rq, int64_t S,
                                                                      int64_t heads, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    using L = AttnSmem<HD>;
    extern __shared__ __align__(128) unsigned char smem[];
    __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem + L::q);
    __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + L::k);
    __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + L::v);
    float* Ss = reinterpret_cast<float*>(smem + L::s);
    __nv_bfloat16* Ps = reinterpret_cast<__nv_bfloat16*>(smem + L::p);
    float* Os = reinterpret_cast<float*>(smem + L::o);
    float* Ms = reinterpret_cast<float*>(smem + L::stats);
    float* Ls = Ms + kQT;
    float* As = Ls + kQT;

    const int tid = static_cast<int>(threadIdx.x), nthreads = static_cast<int>(blockDim.x);
    const int warp = tid / kWarp, lane = tid % kWarp;
    const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kQT, h = blockIdx.y, b = blockIdx.z;
    const int64_t a = heads * HD;
    const float* qb = q + (b * rq) * a + h * HD;
    const float* kb = kc + (b * S) * a + h * HD;
    const float* vb = vc + (b * S) * a + h * HD;

    // queries of the tile (zero rows past rq), output and statistics cleared
    for (int e = tid; e < kQT * HD; e += nthreads) {
        const int r = e / HD, d = e % HD;
        const float x = i0 + r < rq ? qb[(i0 + r) * a + d] : 0.0f;
        Qs[e] = __float2bfloat16(x);
        Os[e] = 0.0f;
    }
    for (int r = tid; r < kQT; r += nthreads) {
        Ms[r] = -INFINITY;
        Ls[r] = 0.0f;
    }

    const int wr = warp * 16; // this warp's first row in the tile
    for (int64_t j0 = 0; j0 < S; j0 += kKT) {
        __syncthreads(); // the previous tile's K, V are no longer read
        for (int e = tid; e < kKT * HD; e += nthreads) {
            const int r = e / HD, d = e % HD;
            const bool in = j0 + r < S;
            Ks[e] = __float2bfloat16(in ? kb[(j0 + r) * a + d] : 0.0f);
            Vs[e] = __float2bfloat16(in ? vb[(j0 + r) * a + d] : 0.0f);
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows and the tile's 64 keys
        for (int n = 0; n < kKT / 16; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int d = 0; d < HD / 16; ++d) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
                wmma::load_matrix_sync(fa, Qs + wr * HD + d * 16, HD);
                wmma::load_matrix_sync(fb, Ks + n * 16 * HD + d * 16, HD); // (d, key) at Ks[key * HD + d]
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(Ss + wr * kKT + n * 16, acc, kKT, wmma::mem_row_major);
        }
        __syncwarp();

        // online softmax: two lanes per row, 32 keys each
        {
            const int r = wr + lane / 2, half = lane % 2;
            const float* sr = Ss + r * kKT + half * 32;
            // Each lane starts at its own column (jj = j + lane mod 32): the
            // rows are 64 floats apart, so a common j would put all 32 lanes
            // on one shared-memory bank.
            float mx = -INFINITY;
            for (int j = 0; j < 32; ++j) {
                const int jj = (j + lane) & 31;
                if (j0 + half * 32 + jj < S) mx = fmaxf(mx, sr[jj] * scale);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_old = Ms[r], m_new = fmaxf(m_old, mx);
            float sum = 0.0f;
            __nv_bfloat16* pr = Ps + r * kKT + half * 32;
            for (int j = 0; j < 32; ++j) {
                const int jj = (j + lane) & 31;
                const float e = j0 + half * 32 + jj < S ? __expf(sr[jj] * scale - m_new) : 0.0f;
                pr[jj] = __float2bfloat16(e);
                sum += e;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            __syncwarp();
            if (half == 0) {
                const float alpha = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
                As[r] = alpha;
                Ls[r] = Ls[r] * alpha + sum;
                Ms[r] = m_new;
            }
        }
        __syncwarp();
        // O = alpha O + P V for this warp's rows
        for (int e = lane; e < 16 * HD; e += kWarp) Os[wr * HD + e] *= As[wr + e / HD];
        __syncwarp();
        for (int c = 0; c < HD / 16; ++c) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, Os + wr * HD + c * 16, HD, wmma::mem_row_major);
            for (int n = 0; n < kKT / 16; ++n) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
                wmma::load_matrix_sync(fa, Ps + wr * kKT + n * 16, kKT);
                wmma::load_matrix_sync(fb, Vs + n * 16 * HD + c * 16, HD); // (key, d) at Vs[key * HD + d]
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(Os + wr * HD + c * 16, acc, HD, wmma::mem_row_major);
        }
        __syncwarp();
    }
    // out = O / l
    for (int e = lane; e < 16 * HD; e += kWarp) {
        const int r = wr + e / HD, d = e % HD;
        if (i0 + r < rq) out[(b * rq + i0 + r) * a + h * HD + d] = Os[r * HD + d] / Ls[r];
    }
#else
    (void)q; (void)kc; (void)vc; (void)out; (void)rq; (void)S; (void)heads; (void)scale;
    __trap(); // bf16 tensor cores need compute capability 8.0 or later (the host checks)
#endif
}

template <int HD>
void launch_wmma(Backend& be, const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq,
                 int64_t S, int64_t heads) {
    constexpr int bytes = AttnSmem<HD>::bytes;
    // Per launch: the attribute belongs to the current device's context (a
    // cheap host call; a process-wide "done" flag would miss a second GPU).
    check(cudaFuncSetAttribute(attention_rows_wmma_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
          "attention_rows (bf16): shared memory");
    if (seqs > 65535 || heads > 65535)
        throw Error("attention_rows (bf16): too many sequences for one launch", {},
                    std::to_string(seqs) + " sequences x " + std::to_string(heads) + " heads (grid limit 65535)",
                    "decode with a smaller --batch-size");
    const dim3 grid(static_cast<unsigned>((rq + kQT - 1) / kQT), static_cast<unsigned>(heads),
                    static_cast<unsigned>(seqs));
    const float scale = 1.0f / sqrtf(static_cast<float>(HD));
    attention_rows_wmma_kernel<HD><<<grid, kQT * 2, bytes, stream_of(be)>>>(q, kc, vc, out, rq, S, heads, scale);
    check(cudaGetLastError(), "attention_rows (bf16)");
}

} // namespace

bool attention_rows_bf16(Backend& be, const float* q, const float* kc, const float* vc, float* out, int64_t seqs,
                         int64_t rq, int64_t S, int64_t heads, int64_t hd) {
    if (seqs * rq == 0) return true;
    int dev = 0, major = 0;
    check(cudaGetDevice(&dev), "attention_rows (bf16)");
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "attention_rows (bf16)");
    if (major < 8) return false;
    switch (hd) {
    case 16: launch_wmma<16>(be, q, kc, vc, out, seqs, rq, S, heads); return true;
    case 32: launch_wmma<32>(be, q, kc, vc, out, seqs, rq, S, heads); return true;
    case 48: launch_wmma<48>(be, q, kc, vc, out, seqs, rq, S, heads); return true;
    case 64: launch_wmma<64>(be, q, kc, vc, out, seqs, rq, S, heads); return true;
    case 128: launch_wmma<128>(be, q, kc, vc, out, seqs, rq, S, heads); return true;
    default: return false; // the f32 kernel
    }
}

} // namespace magnets::cuda
