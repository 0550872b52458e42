// lib/cuda/cuda_image_ops.cu: the image networks' operations (Backend::relu,
// relu_backward, upsample2, upsample2_backward, pixel_unshuffle2,
// pixel_shuffle2, transpose_batched, nearest_codes, recon_loss,
// commit_backward) on the GPU, for the tokenizer on device memory, and the
// evaluation networks' (zero_pad, max_pool3, avg_pool3, mean_planes, copy2d,
// resize_bilinear), for Inception and the classifier. Same arguments and
// meaning as the CPU versions (lib/nn/image_ops.h, after the loops of
// lib/nn/layers.cpp, lib/nn/tokenizer.cpp and lib/eval/inception.cpp);
// tests/test_cuda_ops.cpp compares them.
//
// - relu, relu_backward, upsample2, upsample2_backward, the pixel shuffles:
//   one thread per output element, the CPU's expression for it, so the GPU
//   gives the CPU's bits ((a + b) + (c + d) for the 2x2 sums, with
//   __fadd_rn so nothing is reordered or fused).
// - transpose_batched: 32 x 32 tiles through shared memory (reads and
//   writes along rows of their arrays); a copy, so the CPU's bits.
// - nearest_codes: dist = -2 z e^T by cublasSgemm (f32 even in the bf16 mode), |e|^2
//   one thread per code summed in double as the CPU, then one warp per row
//   for the argmin of dist + |e|^2: each lane scans its columns with a
//   strict <, the lanes combine (value, index) with ties to the lower index,
//   which is the CPU's "first minimum". The product adds in cuBLAS's order,
//   so a code can differ from the CPU's where two distances are within
//   round-off of each other.
// - recon_loss, commit_backward: fixed blocks (by shape only), each summing
//   its elements in double and reducing in a fixed tree in shared memory;
//   the block partials come back to the host and are added there in block
//   order (so a run repeats bit for bit). The gradients use the CPU's float
//   expressions (commit's dzq + g * e with __fmul_rn/__fadd_rn: no FMA), so
//   they give its bits where the CPU's compiler does not fuse them (GCC
//   compiles C++ with -ffp-contract=fast, even under -std=c++17, and
//   -march=x86-64-v3 has FMA: an ulp's difference there). PSNR's log10 runs
//   on the host.
//
// The evaluation networks' operations (Backend::zero_pad, max_pool3,
// avg_pool3, mean_planes, copy2d, resize_bilinear; CPU after the loops of
// lib/eval/inception.cpp):
// - zero_pad, max_pool3, avg_pool3, resize_bilinear: one thread per output
//   element with the CPU's loop for it (max as std::max, (m < v) ? v : m;
//   the average's float sum over the window's rows then columns, then the
//   division; the resize's taps recomputed per thread with the CPU's float
//   expressions), all float arithmetic as __fadd_rn/__fmul_rn/__fsub_rn/
//   __fdiv_rn (no FMA, no reordering). zero_pad, max_pool3 and avg_pool3
//   (copies, compares, adds and one division) give the CPU's bits;
//   resize_bilinear gives the bits of its documented float formula, which
//   are the CPU's only where the host compiler does not contract its
//   multiply-adds (GCC does, see above: ~1e-6 apart).
// - copy2d: cudaMemcpy2DAsync on the backend's stream (a copy: the bits).
// - mean_planes: one block per plane, each thread's strided sum in double,
//   a fixed tree in shared memory, then float(s / plane): another order than
//   the CPU's serial double sum, so ~1 ulp of float from it, and a run
//   repeats bit for bit.
//
// Scratch (the code norms, the partials) is the backend's scratch_of buffer:
// no allocation once it is large enough, no wait except where recon_loss and
// commit_backward return their sums (the evaluation ops neither allocate nor
// wait).
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <vector>

namespace magnets::cuda {

namespace {

constexpr int kThreads = 256; // elementwise kernels and the reductions

__device__ inline int64_t global_index() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }

// ---- elementwise and data movement --------------------------------------------------

// y may alias x; dx may alias dy (each thread reads its element, then writes it).
__global__ void relu_kernel(const float* x, float* y, int64_t n) {
    const int64_t i = global_index();
    if (i >= n) return;
    const float a = x[i];
    y[i] = a > 0.0f ? a : 0.0f;
}

__global__ void relu_backward_kernel(const float* y, const float* dy, float* dx, int64_t n) {
    const int64_t i = global_index();
    if (i >= n) return;
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// y [planes, 2h, 2w], one thread per element of y.
__global__ void upsample2_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t planes, int64_t h,
                                 int64_t w) {
    const int64_t e = global_index();
    const int64_t out = 4 * h * w;
    if (e >= planes * out) return;
    const int64_t p = e / out, r = e % out, oi = r / (2 * w), oj = r % (2 * w);
    y[e] = x[p * h * w + (oi / 2) * w + oj / 2];
}

// dx [planes, h, w], one thread per element of dx: (a + b) + (c + d) with a, b
// the top pair of its 2x2 block of dy and c, d the bottom pair.
__global__ void upsample2_backward_kernel(const float* __restrict__ dy, float* __restrict__ dx, int64_t planes,
                                          int64_t h, int64_t w) {
    const int64_t e = global_index();
    const int64_t hw = h * w;
    if (e >= planes * hw) return;
    const int64_t p = e / hw, r = e % hw, i = r / w, j = r % w;
    const float* r0 = dy + p * 4 * hw + (2 * i) * 2 * w;
    const float* r1 = r0 + 2 * w;
    dx[e] = __fadd_rn(__fadd_rn(r0[2 * j], r0[2 * j + 1]), __fadd_rn(r1[2 * j], r1[2 * j + 1]));
}

// x [n, c, 2h, 2w] -> y [n, 4c, h, w], one thread per element of y:
// y[b, 4q + 2di + dj, i, j] = x[b, q, 2i + di, 2j + dj] (plane p = b c + q).
__global__ void pixel_unshuffle2_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t planes, int64_t h,
                                        int64_t w) {
    const int64_t e = global_index();
    const int64_t hw = h * w;
    if (e >= planes * 4 * hw) return;
    const int64_t plane4 = e / hw, r = e % hw, i = r / w, j = r % w; // plane4 = 4 p + 2 di + dj
    const int64_t p = plane4 / 4, di = (plane4 % 4) / 2, dj = plane4 % 2;
    y[e] = x[p * 4 * hw + (2 * i + di) * 2 * w + 2 * j + dj];
}

// x [n, 4c, h, w] -> y [n, c, 2h, 2w], one thread per element of y (the inverse).
__global__ void pixel_shuffle2_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t planes, int64_t h,
                                      int64_t w) {
    const int64_t e = global_index();
    const int64_t hw = h * w;
    if (e >= planes * 4 * hw) return;
    const int64_t p = e / (4 * hw), r = e % (4 * hw), oi = r / (2 * w), oj = r % (2 * w);
    const int64_t i = oi / 2, di = oi % 2, j = oj / 2, dj = oj % 2;
    y[e] = x[((p * 4 + 2 * di + dj) * h + i) * w + j];
}

// dst [b, cols, rows] = src [b, rows, cols]^T: blocks of 32 x 8 threads move
// 32 x 32 tiles (the padding column avoids shared-memory bank conflicts).
// Tiles beyond the grid's y and z extent are taken by striding.
constexpr int kTile = 32, kTileRows = 8;

__global__ void transpose_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t batches, int64_t rows,
                                 int64_t cols) {
    __shared__ float tile[kTile][kTile + 1];
    const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
    const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
    const int64_t row_tiles = (rows + kTile - 1) / kTile;
    for (int64_t b = blockIdx.z; b < batches; b += gridDim.z) {
        const float* s = src + b * rows * cols;
        float* d = dst + b * rows * cols;
        for (int64_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
            const int64_t r0 = rt * kTile;
            for (int r = ty; r < kTile; r += kTileRows) { // along a row of src
                const int64_t gr = r0 + r, gc = c0 + tx;
                if (gr < rows && gc < cols) tile[r][tx] = s[gr * cols + gc];
            }
            __syncthreads();
            for (int c = ty; c < kTile; c += kTileRows) { // along a row of dst
                const int64_t gc = c0 + c, gr = r0 + tx;
                if (gc < cols && gr < rows) d[gc * rows + gr] = tile[tx][c];
            }
            __syncthreads();
        }
    }
}

// ---- the quantizer --------------------------------------------------------------------

// enorm[j] = |e_j|^2, summed in double in order, then rounded to float (the CPU's loop).
__global__ void code_norms_kernel(const float* __restrict__ codebook, int64_t K, int64_t c, float* __restrict__ enorm) {
    const int64_t j = global_index();
    if (j >= K) return;
    const float* e = codebook + j * c;
    double s = 0.0;
    for (int64_t q = 0; q < c; ++q) s += static_cast<double>(e[q]) * e[q];
    enorm[j] = static_cast<float>(s);
}

// idx[i] = argmin over j of dist[i, j] + enorm[j], the lowest j among equal
// minima; 0 when no value is below +inf (the CPU's start). One warp per row.
constexpr int kArgminWarps = 8;

__global__ void argmin_rows_kernel(const float* __restrict__ dist, const float* __restrict__ enorm, int64_t m,
                                   int64_t K, int32_t* __restrict__ idx) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kArgminWarps + threadIdx.x / kWarp;
    const int lane = static_cast<int>(threadIdx.x % kWarp);
    if (row >= m) return; // the whole warp
    const float* r = dist + row * K;
    float best = INFINITY;
    int arg = INT_MAX; // none yet
    for (int64_t j = lane; j < K; j += kWarp) {
        const float v = r[j] + enorm[j];
        if (v < best) { // strict: a lane keeps its first (lowest) column among equals; NaN never wins
            best = v;
            arg = static_cast<int>(j);
        }
    }
    // (value, index) minimum with ties to the lower index: a total order, so
    // every lane ends with the same winner whatever the butterfly's order.
    for (int o = kWarp / 2; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, arg, o);
        if (ov < best || (ov == best && oi < arg)) {
            best = ov;
            arg = oi;
        }
    }
    if (lane == 0) idx[row] = arg == INT_MAX ? 0 : static_cast<int32_t>(arg);
}

// ---- the losses -------------------------------------------------------------------------

// Block tree sum of two doubles per thread (kThreads of them), fixed order;
// thread 0 gets the totals.
__device__ inline void block_sum2(double& a, double& b) {
    __shared__ double sa[kThreads], sb[kThreads];
    const int t = static_cast<int>(threadIdx.x);
    sa[t] = a;
    sb[t] = b;
    __syncthreads();
    for (int o = kThreads / 2; o > 0; o >>= 1) {
        if (t < o) {
            sa[t] += sa[t + o];
            sb[t] += sb[t + o];
        }
        __syncthreads();
    }
    a = sa[0];
    b = sb[0];
}

// Each image's values in chunks of kReconChunk, one block per (image, chunk):
// partial[2 blk] = the chunk's sum of (p - t)^2 (or |p - t|), partial[2 blk + 1]
// its sum of (clamp(p, 0, 1) - t)^2, both in double; d (may be null) the
// scaled gradient, g = 2 scale / n (l2) or scale / n (l1) as the CPU rounds it.
constexpr int64_t kReconChunk = 16 * kThreads;

__global__ void recon_kernel(const float* pred, const float* target, int64_t per, int64_t chunks, bool l1, float g,
                             float* d, double* __restrict__ partial) {
    const int64_t blk = blockIdx.x, b = blk / chunks, k0 = (blk % chunks) * kReconChunk;
    const int64_t k1 = k0 + kReconChunk < per ? k0 + kReconChunk : per;
    double loss = 0.0, se = 0.0;
    for (int64_t k = k0 + threadIdx.x; k < k1; k += kThreads) {
        const int64_t i = b * per + k;
        const float p = pred[i], t = target[i];
        const float e = p - t;
        if (l1) {
            loss += fabs(static_cast<double>(e));
            if (d) d[i] = e > 0.0f ? g : (e < 0.0f ? -g : 0.0f);
        } else {
            loss += static_cast<double>(e) * e;
            if (d) d[i] = g * e;
        }
        // std::min(1.0f, std::max(0.0f, p)) - t in float, then squared in double.
        float q = 0.0f < p ? p : 0.0f;
        q = q < 1.0f ? q : 1.0f;
        const double ec = static_cast<double>(q - t);
        se += ec * ec;
    }
    block_sum2(loss, se);
    if (threadIdx.x == 0) {
        partial[2 * blk] = loss;
        partial[2 * blk + 1] = se;
    }
}

// e = ze - zq; dze = dzq + g e (dze may alias dzq); partial[block] = sum of e^2
// in double over the block's grid-stride elements.
__global__ void commit_kernel(const float* ze, const float* zq, const float* dzq, float* dze, int64_t n, float g,
                              double* __restrict__ partial) {
    double s = 0.0, unused = 0.0;
    for (int64_t i = global_index(); i < n; i += static_cast<int64_t>(gridDim.x) * kThreads) {
        const float e = ze[i] - zq[i];
        s += static_cast<double>(e) * e;
        dze[i] = __fadd_rn(dzq[i], __fmul_rn(g, e));
    }
    block_sum2(s, unused);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

constexpr int64_t kCommitBlocks = 1024;

// ---- the evaluation networks' operations ------------------------------------------------

// y [planes, h + 2ph, w + 2pw] = x [planes, h, w] inside a zero border; one
// thread per element of y.
__global__ void zero_pad_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t planes, int64_t h,
                                int64_t w, int64_t ph, int64_t pw) {
    const int64_t e = global_index();
    const int64_t H = h + 2 * ph, W = w + 2 * pw;
    if (e >= planes * H * W) return;
    const int64_t p = e / (H * W), r = e % (H * W), i = r / W - ph, j = r % W - pw;
    y[e] = (i >= 0 && i < h && j >= 0 && j < w) ? x[(p * h + i) * w + j] : 0.0f;
}

// 3x3 max pool, stride s, padding p, floor mode; one thread per element of y
// [planes, oh, ow]. The window is clipped to the image (padding never wins)
// and scanned as the CPU: m = -inf, then std::max(m, v) = (m < v) ? v : m
// row by row (a NaN never replaces m; of +0 and -0 the first stays).
__global__ void max_pool3_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t planes, int64_t h,
                                 int64_t w, int64_t s, int64_t p, int64_t oh, int64_t ow) {
    const int64_t e = global_index();
    if (e >= planes * oh * ow) return;
    const int64_t q = e / (oh * ow), r = e % (oh * ow), i = r / ow, j = r % ow;
    const float* a = x + q * h * w;
    const int64_t y0 = max(i * s - p, int64_t(0)), y1 = min(i * s - p + 3, h);
    const int64_t x0 = max(j * s - p, int64_t(0)), x1 = min(j * s - p + 3, w);
    float m = -INFINITY;
    for (int64_t yy = y0; yy < y1; ++yy)
        for (int64_t xx = x0; xx < x1; ++xx) {
            const float v = a[yy * w + xx];
            m = (m < v) ? v : m;
        }
    y[e] = m;
}

// 3x3 average pool, stride 1, padding 1, count_include_pad = false; one
// thread per element of y [planes, h, w]: the float sum over the clipped
// window's rows, then columns, from 0, divided by the in-image count.
__global__ void avg_pool3_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t planes, int64_t h,
                                 int64_t w) {
    const int64_t e = global_index();
    if (e >= planes * h * w) return;
    const int64_t q = e / (h * w), r = e % (h * w), i = r / w, j = r % w;
    const float* a = x + q * h * w;
    const int64_t y0 = max(i - 1, int64_t(0)), y1 = min(i + 2, h);
    const int64_t x0 = max(j - 1, int64_t(0)), x1 = min(j + 2, w);
    float sum = 0.0f;
    for (int64_t yy = y0; yy < y1; ++yy)
        for (int64_t xx = x0; xx < x1; ++xx) sum = __fadd_rn(sum, a[yy * w + xx]);
    y[e] = __fdiv_rn(sum, static_cast<float>((y1 - y0) * (x1 - x0)));
}

// y[q] = float(sum of plane q in double / plane); one block (kThreads) per
// plane: thread t sums elements t, t + kThreads, ... in double, then the
// block's fixed tree.
__global__ void mean_planes_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t plane) {
    const float* a = x + static_cast<int64_t>(blockIdx.x) * plane;
    double s = 0.0, unused = 0.0;
    for (int64_t i = threadIdx.x; i < plane; i += kThreads) s += static_cast<double>(a[i]);
    block_sum2(s, unused);
    if (threadIdx.x == 0) y[blockIdx.x] = static_cast<float>(s / static_cast<double>(plane));
}

// One axis of torch's bilinear resize (align_corners = False), in the CPU's
// float arithmetic (resize_taps of lib/eval/inception.cpp): output index o
// of `out` reads inputs i0 and i1 with weights l0 and l1.
struct Tap {
    int64_t i0, i1;
    float l0, l1;
};
__device__ inline Tap resize_tap(int64_t in, int64_t out, int64_t o) {
    const float scale = __fdiv_rn(static_cast<float>(in), static_cast<float>(out));
    float src = __fsub_rn(__fmul_rn(scale, __fadd_rn(static_cast<float>(o), 0.5f)), 0.5f);
    if (src < 0.0f) src = 0.0f;
    Tap t;
    t.i0 = min(static_cast<int64_t>(src), in - 1);
    t.i1 = t.i0 + (t.i0 < in - 1 ? 1 : 0);
    t.l1 = __fsub_rn(src, static_cast<float>(t.i0));
    t.l0 = __fsub_rn(1.0f, t.l1);
    return t;
}

// x [n, c_in, h, w] -> y [n, c_out, oh, ow] = mul * bilinear(x) + add, c_in
// 1 (every output channel reads plane 0 of its image) or c_out; one thread
// per element of y: h0 (w0 r0[a] + w1 r0[b]) + h1 (w0 r1[a] + w1 r1[b]) in
// that order, as the CPU.
__global__ void resize_bilinear_kernel(const float* __restrict__ x, int64_t c_in, int64_t h, int64_t w,
                                       float* __restrict__ y, int64_t count, int64_t c_out, int64_t oh, int64_t ow,
                                       float mul, float add) {
    const int64_t e = global_index();
    if (e >= count) return;
    const int64_t ox = e % ow, oy = (e / ow) % oh, pc = e / (oh * ow), b = pc / c_out, c = pc % c_out;
    const float* src = x + (b * c_in + (c_in == 1 ? 0 : c)) * h * w;
    const Tap ty = resize_tap(h, oh, oy), tx = resize_tap(w, ow, ox);
    const float* r0 = src + ty.i0 * w;
    const float* r1 = src + ty.i1 * w;
    const float top = __fadd_rn(__fmul_rn(tx.l0, r0[tx.i0]), __fmul_rn(tx.l1, r0[tx.i1]));
    const float bottom = __fadd_rn(__fmul_rn(tx.l0, r1[tx.i0]), __fmul_rn(tx.l1, r1[tx.i1]));
    const float v = __fadd_rn(__fmul_rn(ty.l0, top), __fmul_rn(ty.l1, bottom));
    y[e] = __fadd_rn(__fmul_rn(mul, v), add);
}

// The partials (doubles) back to the host: waits for the stream.
std::vector<double> download_doubles(cudaStream_t st, const double* p, size_t count, const char* what) {
    std::vector<double> h(count);
    check(cudaMemcpyAsync(h.data(), p, sizeof(double) * count, cudaMemcpyDeviceToHost, st), what);
    check(cudaStreamSynchronize(st), what);
    return h;
}

} // namespace

// ---- entry points ------------------------------------------------------------------------

void relu(Backend& be, const float* x, float* y, int64_t n) {
    if (n <= 0) return;
    relu_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream_of(be)>>>(x, y, n);
    check(cudaGetLastError(), "relu");
}

void relu_backward(Backend& be, const float* y, const float* dy, float* dx, int64_t n) {
    if (n <= 0) return;
    relu_backward_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream_of(be)>>>(y, dy, dx, n);
    check(cudaGetLastError(), "relu_backward");
}

void upsample2(Backend& be, const float* x, float* y, int64_t planes, int64_t h, int64_t w) {
    const int64_t count = planes * 4 * h * w;
    if (count <= 0) return;
    upsample2_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream_of(be)>>>(x, y, planes, h, w);
    check(cudaGetLastError(), "upsample2");
}

void upsample2_backward(Backend& be, const float* dy, float* dx, int64_t planes, int64_t h, int64_t w) {
    const int64_t count = planes * h * w;
    if (count <= 0) return;
    upsample2_backward_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream_of(be)>>>(dy, dx, planes, h, w);
    check(cudaGetLastError(), "upsample2_backward");
}

void pixel_unshuffle2(Backend& be, const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) {
    const int64_t count = n * c * 4 * h * w;
    if (count <= 0) return;
    pixel_unshuffle2_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream_of(be)>>>(x, y, n * c, h, w);
    check(cudaGetLastError(), "pixel_unshuffle2");
}

void pixel_shuffle2(Backend& be, const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) {
    const int64_t count = n * c * 4 * h * w;
    if (count <= 0) return;
    pixel_shuffle2_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream_of(be)>>>(x, y, n * c, h, w);
    check(cudaGetLastError(), "pixel_shuffle2");
}

void transpose_batched(Backend& be, const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols) {
    if (batches <= 0 || rows <= 0 || cols <= 0) return;
    const int64_t col_tiles = (cols + kTile - 1) / kTile, row_tiles = (rows + kTile - 1) / kTile;
    const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(std::min<int64_t>(row_tiles, 65535)),
                    static_cast<unsigned>(std::min<int64_t>(batches, 65535)));
    transpose_kernel<<<grid, dim3(kTile, kTileRows), 0, stream_of(be)>>>(src, dst, batches, rows, cols);
    check(cudaGetLastError(), "transpose_batched");
}

void nearest_codes(Backend& be, const float* z, int64_t m, const float* codebook, int64_t K, int64_t c, float* dist,
                   int32_t* idx) {
    if (m <= 0) return;
    cudaStream_t st = stream_of(be);
    // The norms first: scratch_of may wait for the stream (when it grows), and
    // the product below does not use it.
    float* enorm = K > 0 ? scratch_of(be, static_cast<size_t>(K)) : nullptr;
    if (K > 0) {
        code_norms_kernel<<<blocks_for(K, kThreads), kThreads, 0, st>>>(codebook, K, c, enorm);
        check(cudaGetLastError(), "nearest_codes (norms)");
        // dist = -2 z e^T in f32 (cublasSgemm on the backend's handle and
        // stream), also in the bf16 mode: a code choice must not depend on
        // bf16 rounding of the distances. Row-major dist [m, K] is the
        // column-major K x m product codebook * z^T.
        const float alpha = -2.0f, beta = 0.0f;
        cublas_check_status(cublasSgemm(blas_of(be), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(K), static_cast<int>(m),
                                        static_cast<int>(c), &alpha, codebook, static_cast<int>(c), z,
                                        static_cast<int>(c), &beta, dist, static_cast<int>(K)),
                            "nearest_codes (cublasSgemm)");
    }
    argmin_rows_kernel<<<blocks_for(m, kArgminWarps), kArgminWarps * kWarp, 0, st>>>(dist, enorm, m, K, idx);
    check(cudaGetLastError(), "nearest_codes (argmin)");
}

Backend::ReconSums recon_loss(Backend& be, const float* pred, const float* target, int64_t images, int64_t per,
                              bool l1, double scale, float* dpred) {
    Backend::ReconSums out;
    const int64_t n = images * per;
    if (n <= 0) return out;
    cudaStream_t st = stream_of(be);
    const int64_t chunks = (per + kReconChunk - 1) / kReconChunk, blocks = images * chunks;
    double* partial = reinterpret_cast<double*>(scratch_of(be, static_cast<size_t>(4 * blocks)));
    const float g = l1 ? static_cast<float>(scale / static_cast<double>(n))
                       : static_cast<float>(2.0 * scale / static_cast<double>(n));
    recon_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(pred, target, per, chunks, l1, g, dpred, partial);
    check(cudaGetLastError(), "recon_loss");
    const std::vector<double> h = download_doubles(st, partial, static_cast<size_t>(2 * blocks), "recon_loss");
    double loss = 0.0;
    for (int64_t b = 0; b < images; ++b) {
        double se = 0.0;
        for (int64_t k = 0; k < chunks; ++k) {
            loss += h[static_cast<size_t>(2 * (b * chunks + k))];
            se += h[static_cast<size_t>(2 * (b * chunks + k) + 1)];
        }
        out.psnr += 10.0 * std::log10(1.0 / std::max(se / static_cast<double>(per), 1e-10));
    }
    out.loss = loss / static_cast<double>(n);
    return out;
}

double commit_backward(Backend& be, const float* ze, const float* zq, const float* dzq, float* dze, int64_t n,
                       float g) {
    if (n <= 0) return 0.0;
    cudaStream_t st = stream_of(be);
    const int64_t blocks = std::min<int64_t>(kCommitBlocks, (n + kThreads - 1) / kThreads);
    double* partial = reinterpret_cast<double*>(scratch_of(be, static_cast<size_t>(2 * blocks)));
    commit_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(ze, zq, dzq, dze, n, g, partial);
    check(cudaGetLastError(), "commit_backward");
    const std::vector<double> h = download_doubles(st, partial, static_cast<size_t>(blocks), "commit_backward");
    double s = 0.0;
    for (double x : h) s += x; // block order
    return s;
}

void zero_pad(Backend& be, const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw) {
    const int64_t count = planes * (h + 2 * ph) * (w + 2 * pw);
    if (count <= 0) return;
    zero_pad_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream_of(be)>>>(x, y, planes, h, w, ph, pw);
    check(cudaGetLastError(), "zero_pad");
}

void max_pool3(Backend& be, const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p) {
    const int64_t oh = (h + 2 * p - 3) / s + 1, ow = (w + 2 * p - 3) / s + 1;
    if (planes <= 0 || oh <= 0 || ow <= 0) return;
    const int64_t count = planes * oh * ow;
    max_pool3_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream_of(be)>>>(x, y, planes, h, w, s, p, oh, ow);
    check(cudaGetLastError(), "max_pool3");
}

void avg_pool3(Backend& be, const float* x, float* y, int64_t planes, int64_t h, int64_t w) {
    const int64_t count = planes * h * w;
    if (count <= 0) return;
    avg_pool3_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream_of(be)>>>(x, y, planes, h, w);
    check(cudaGetLastError(), "avg_pool3");
}

void mean_planes(Backend& be, const float* x, float* y, int64_t planes, int64_t plane) {
    if (planes <= 0 || plane <= 0) return;
    mean_planes_kernel<<<static_cast<unsigned>(planes), kThreads, 0, stream_of(be)>>>(x, y, plane);
    check(cudaGetLastError(), "mean_planes");
}

void copy2d(Backend& be, float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) {
    if (rows <= 0 || cols <= 0) return;
    constexpr size_t f = sizeof(float);
    check(cudaMemcpy2DAsync(dst, static_cast<size_t>(ld_dst) * f, src, static_cast<size_t>(ld_src) * f,
                            static_cast<size_t>(cols) * f, static_cast<size_t>(rows), cudaMemcpyDeviceToDevice,
                            stream_of(be)),
          "copy2d");
}

void resize_bilinear(Backend& be, const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y,
                     int64_t c_out, int64_t oh, int64_t ow, float mul, float add) {
    const int64_t count = n * c_out * oh * ow;
    if (count <= 0) return;
    resize_bilinear_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream_of(be)>>>(x, c_in, h, w, y, count,
                                                                                          c_out, oh, ow, mul, add);
    check(cudaGetLastError(), "resize_bilinear");
}

} // namespace magnets::cuda
