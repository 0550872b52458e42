// Winograd F(2x2, 3x3) convolutions on the CPU; see winograd.h.
//
// Work is split into chunks of 2x2 output tiles: whole images, or bands of
// tile rows of one image. A chunk is one thread's work from NCHW input to NCHW
// output while its data stays in the core's cache:
//   1. gather: the chunk's input rows (plus a one-pixel zero halo) to a local
//      NHWC buffer by 8x8 transposes, so 8 channels of a pixel are one vector;
//   2. V[xi][t][c] = (B^T d B)[xi] per tile t, xi = 4 * row + col;
//   3. M[xi] = V[xi] U[xi] for the 16 xi (U[xi][c_in][c_out] = G g G^T);
//   4. A^T M A per tile into a local NHWC buffer, then scattered back to NCHW.
// The weight gradient gathers x and dy the same way and accumulates
// dU[xi] += (A dY A^T)[xi]^T V[xi] per thread.
#include "cpu/winograd.h"

#include "core/fma_block.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(MAGNETS_HAVE_FMA_BLOCK)
#define MAGNETS_WINOGRAD_AVX2 1
#endif

namespace magnets::cpu {

bool winograd_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("MAGNETS_WINOGRAD");
        return !(e && std::strcmp(e, "0") == 0);
    }();
    return on;
}

bool winograd_fits(Op op, const Conv2dShape& s) {
#if defined(MAGNETS_WINOGRAD_AVX2)
    if (s.kh != 3 || s.kw != 3 || s.stride != 1 || s.pad != 1 || s.n < 1 || s.h < 1 || s.w < 1) return false;
    switch (op) {
    case Op::conv2d_forward: return s.c_in % 8 == 0 && s.c_out % 16 == 0;
    case Op::conv2d_backward_data: return s.c_out % 8 == 0 && s.c_in % 16 == 0;
    case Op::conv2d_backward_weights: return s.c_in % 16 == 0 && s.c_out % 8 == 0;
    default: return false;
    }
#else
    (void)op; (void)s;
    return false;
#endif
}

#if defined(MAGNETS_WINOGRAD_AVX2)
namespace {

struct Geo {
    int64_t n, h, w;      // spatial size of input and output (stride 1, pad 1)
    int64_t th, tw, tiles; // 2x2 output tiles per row and column, and in all
};
Geo geometry(const Conv2dShape& s) {
    Geo g{s.n, s.h, s.w, (s.h + 1) / 2, (s.w + 1) / 2, 0};
    g.tiles = g.n * g.th * g.tw;
    return g;
}

int max_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}
int thread_id() {
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Grow-only scratch: a convolution per layer per step must not page-fault.
float* scratch(std::vector<float>& v, size_t count) {
    if (v.size() < count) v.resize(count);
    return v.data();
}

// Tiles per chunk so that one chunk's V and M (16 tiles' worth each) fit in
// about `bytes` of cache; a multiple of the 6-row register block.
int64_t chunk_tiles(int64_t c_a, int64_t c_b, int64_t bytes) {
    const int64_t per_tile = 16 * (c_a + c_b) * static_cast<int64_t>(sizeof(float));
    return std::max<int64_t>(6, bytes / per_tile / 6 * 6);
}

// Floats between the 16 slices V[xi] (and M[xi], D[xi]) of a chunk of tn
// tiles. The extra 16 floats keep the slices from starting at addresses 4 KiB
// apart: the transforms touch all 16 at once, and slices in the same L1 set
// evict each other (measured: the input transform ran 4x slower).
inline int64_t slice_stride(int64_t tn, int64_t C) { return tn * C + 16; }

// A chunk: images [b0, b0 + nb), tile rows [r0, r1) of each.
struct Chunk {
    int64_t b0, nb, r0, r1;
};
struct Chunking {
    int64_t count = 0, rows_per = 0, per_image = 0, images_per = 0;
    Chunk at(const Geo& g, int64_t k) const {
        if (per_image > 0) { // bands of one image
            const int64_t r0 = (k % per_image) * rows_per;
            return {k / per_image, 1, r0, std::min(g.th, r0 + rows_per)};
        }
        const int64_t b0 = k * images_per;
        return {b0, std::min(images_per, g.n - b0), 0, g.th};
    }
};
// Chunks of about `target` tiles.
Chunking chunking(const Geo& g, int64_t target) {
    Chunking c;
    const int64_t per_image = g.th * g.tw;
    if (per_image >= target) {
        c.rows_per = std::max<int64_t>(1, target / g.tw);
        c.per_image = (g.th + c.rows_per - 1) / c.rows_per;
        c.count = g.n * c.per_image;
    } else {
        c.images_per = std::max<int64_t>(1, target / per_image);
        c.count = (g.n + c.images_per - 1) / c.images_per;
    }
    return c;
}

// loc [nb][LH][LW][C] (zero-filled) = rows y0 - halo .. of the chunk's images
// of NCHW x, shifted right by `halo` columns; rows and columns outside the
// image stay zero.
void gather(const float* x, const Geo& g, int64_t C, const Chunk& k, int64_t halo, int64_t LH, int64_t LW, float* loc) {
    std::memset(loc, 0, sizeof(float) * static_cast<size_t>(k.nb * LH * LW * C));
    const int64_t hw = g.h * g.w;
    for (int64_t bi = 0; bi < k.nb; ++bi)
        for (int64_t yy = 0; yy < LH; ++yy) {
            const int64_t y = 2 * k.r0 - halo + yy;
            if (y < 0 || y >= g.h) continue;
            float* dst = loc + ((bi * LH + yy) * LW + halo) * C;
            for (int64_t c0 = 0; c0 < C; c0 += 8) {
                const float* src = x + ((k.b0 + bi) * C + c0) * hw + y * g.w;
                int64_t x0 = 0;
                for (; x0 + 8 <= g.w; x0 += 8) simd::transpose8(src + x0, hw, dst + x0 * C + c0, C);
                for (; x0 < g.w; ++x0)
                    for (int64_t c = 0; c < 8; ++c) dst[x0 * C + c0 + c] = src[c * hw + x0];
            }
        }
}

// The chunk's output rows from loc [nb][2 (r1 - r0)][2 tw][C] to NCHW y,
// dropping the positions outside the image.
void scatter(const float* loc, const Geo& g, int64_t C, const Chunk& k, float* y) {
    const int64_t hw = g.h * g.w, LH = 2 * (k.r1 - k.r0), LW = 2 * g.tw;
    for (int64_t bi = 0; bi < k.nb; ++bi)
        for (int64_t yy = 0; yy < LH; ++yy) {
            const int64_t yo = 2 * k.r0 + yy;
            if (yo >= g.h) continue;
            const float* src = loc + (bi * LH + yy) * LW * C;
            for (int64_t c0 = 0; c0 < C; c0 += 8) {
                float* dst = y + ((k.b0 + bi) * C + c0) * hw + yo * g.w;
                int64_t x0 = 0;
                for (; x0 + 8 <= g.w; x0 += 8) simd::transpose8(src + x0 * C + c0, C, dst + x0, hw);
                for (; x0 < g.w; ++x0)
                    for (int64_t c = 0; c < 8; ++c) dst[c * hw + x0] = src[x0 * C + c0 + c];
            }
        }
}

// V[xi][t][c] = (B^T d B)[xi] for the chunk's tiles t (image, tile row, tile
// column order) from the gathered input loc [nb][LH][LW][C] (halo 1).
void input_transform(const float* loc, int64_t LH, int64_t LW, int64_t C, const Chunk& k, int64_t tw, float* V) {
    const int64_t tn = k.nb * (k.r1 - k.r0) * tw, xs = slice_stride(tn, C);
    int64_t t = 0;
    for (int64_t bi = 0; bi < k.nb; ++bi)
        for (int64_t ty = 0; ty < k.r1 - k.r0; ++ty)
            for (int64_t tx = 0; tx < tw; ++tx, ++t) {
                const float* base = loc + ((bi * LH + 2 * ty) * LW + 2 * tx) * C;
                float* v = V + t * C;
                for (int64_t c = 0; c < C; c += 8) {
                    __m256 d[16], u[16];
                    for (int r = 0; r < 4; ++r)
                        for (int q = 0; q < 4; ++q) d[r * 4 + q] = _mm256_loadu_ps(base + (r * LW + q) * C + c);
                    for (int j = 0; j < 4; ++j) { // B^T d
                        u[j] = _mm256_sub_ps(d[j], d[8 + j]);
                        u[4 + j] = _mm256_add_ps(d[4 + j], d[8 + j]);
                        u[8 + j] = _mm256_sub_ps(d[8 + j], d[4 + j]);
                        u[12 + j] = _mm256_sub_ps(d[4 + j], d[12 + j]);
                    }
                    for (int i = 0; i < 4; ++i) { // (B^T d) B
                        const __m256* r = u + 4 * i;
                        _mm256_storeu_ps(v + (4 * i + 0) * xs + c, _mm256_sub_ps(r[0], r[2]));
                        _mm256_storeu_ps(v + (4 * i + 1) * xs + c, _mm256_add_ps(r[1], r[2]));
                        _mm256_storeu_ps(v + (4 * i + 2) * xs + c, _mm256_sub_ps(r[2], r[1]));
                        _mm256_storeu_ps(v + (4 * i + 3) * xs + c, _mm256_sub_ps(r[1], r[3]));
                    }
                }
            }
}

// 2x2 output tiles A^T M[.] A (+ bias) into loc [nb][2 (r1 - r0)][2 tw][C].
void output_transform(const float* M, int64_t C, const Chunk& k, int64_t tw, const float* bias, float* loc) {
    const int64_t tn = k.nb * (k.r1 - k.r0) * tw, xs = slice_stride(tn, C), LW = 2 * tw;
    int64_t t = 0;
    for (int64_t bi = 0; bi < k.nb; ++bi)
        for (int64_t ty = 0; ty < k.r1 - k.r0; ++ty)
            for (int64_t tx = 0; tx < tw; ++tx, ++t) {
                float* o = loc + ((bi * 2 * (k.r1 - k.r0) + 2 * ty) * LW + 2 * tx) * C;
                const float* m = M + t * C;
                for (int64_t c = 0; c < C; c += 8) {
                    const __m256 z = bias ? _mm256_loadu_ps(bias + c) : _mm256_setzero_ps();
                    __m256 s[8];
                    for (int j = 0; j < 4; ++j) { // A^T m
                        const __m256 m0 = _mm256_loadu_ps(m + (0 + j) * xs + c),
                                     m1 = _mm256_loadu_ps(m + (4 + j) * xs + c),
                                     m2 = _mm256_loadu_ps(m + (8 + j) * xs + c),
                                     m3 = _mm256_loadu_ps(m + (12 + j) * xs + c);
                        s[j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                        s[4 + j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
                    }
                    for (int i = 0; i < 2; ++i) { // (A^T m) A
                        const __m256* r = s + 4 * i;
                        _mm256_storeu_ps(o + (i * LW + 0) * C + c,
                                         _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(r[0], r[1]), r[2]), z));
                        _mm256_storeu_ps(o + (i * LW + 1) * C + c,
                                         _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(r[1], r[2]), r[3]), z));
                    }
                }
            }
}

// D[xi][t][c] = (A e A^T)[xi] for the 2x2 output-gradient tiles e, gathered
// in loc [nb][2 (r1 - r0)][2 tw][C] (halo 0); A = [1 0; 1 1; 1 -1; 0 -1].
void grad_transform(const float* loc, int64_t C, const Chunk& k, int64_t tw, float* D) {
    const __m256 zero = _mm256_setzero_ps();
    const int64_t tn = k.nb * (k.r1 - k.r0) * tw, xs = slice_stride(tn, C), LW = 2 * tw;
    int64_t t = 0;
    for (int64_t bi = 0; bi < k.nb; ++bi)
        for (int64_t ty = 0; ty < k.r1 - k.r0; ++ty)
            for (int64_t tx = 0; tx < tw; ++tx, ++t) {
                const float* e0 = loc + ((bi * 2 * (k.r1 - k.r0) + 2 * ty) * LW + 2 * tx) * C;
                float* d = D + t * C;
                for (int64_t c = 0; c < C; c += 8) {
                    __m256 e[4], s[8];
                    e[0] = _mm256_loadu_ps(e0 + c);
                    e[1] = _mm256_loadu_ps(e0 + C + c);
                    e[2] = _mm256_loadu_ps(e0 + LW * C + c);
                    e[3] = _mm256_loadu_ps(e0 + (LW + 1) * C + c);
                    for (int j = 0; j < 2; ++j) { // A e: rows (e0, e0 + e1, e0 - e1, -e1)
                        s[j] = e[j];
                        s[2 + j] = _mm256_add_ps(e[j], e[2 + j]);
                        s[4 + j] = _mm256_sub_ps(e[j], e[2 + j]);
                        s[6 + j] = _mm256_sub_ps(zero, e[2 + j]);
                    }
                    for (int i = 0; i < 4; ++i) { // (A e) A^T
                        const __m256 a = s[2 * i], bb = s[2 * i + 1];
                        _mm256_storeu_ps(d + (4 * i + 0) * xs + c, a);
                        _mm256_storeu_ps(d + (4 * i + 1) * xs + c, _mm256_add_ps(a, bb));
                        _mm256_storeu_ps(d + (4 * i + 2) * xs + c, _mm256_sub_ps(a, bb));
                        _mm256_storeu_ps(d + (4 * i + 3) * xs + c, _mm256_sub_ps(zero, bb));
                    }
                }
            }
}

// C[M, N] = A[M, K] B[K, N], B given as N / 16 packed panels [K][16].
void gemm_packed(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* panels, float* c,
                 int64_t ldc) {
    for (int64_t j = 0; j < N; j += 16) simd::fma_rows_x16<true>(M, K, a, lda, 1, panels + j * K, 16, c + j, ldc);
}

// U[xi] = (G g G^T)[xi] for the 3x3 filter g = w[o][i] (forward), or for
// g = w[i][o] rotated 180 degrees (backward data, where the pass's input
// channels are the layer's outputs); G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
// Each U[xi] [pass in, pass out] is stored as pass-out / 16 packed panels
// [pass in][16] for gemm_packed.
void weight_transform(const float* w, int64_t c_out, int64_t c_in, bool rotate, float* U) {
    const int64_t ni = rotate ? c_out : c_in, no = rotate ? c_in : c_out; // the pass's channels
#pragma omp parallel for schedule(static) if (c_out * c_in > 4096)
    for (int64_t o = 0; o < c_out; ++o)
        for (int64_t i = 0; i < c_in; ++i) {
            const float* k = w + (o * c_in + i) * 9;
            float g[9];
            for (int j = 0; j < 9; ++j) g[j] = rotate ? k[8 - j] : k[j];
            float t[12]; // G g: 4 x 3
            for (int q = 0; q < 3; ++q) {
                t[q] = g[q];
                t[3 + q] = 0.5f * (g[q] + g[3 + q] + g[6 + q]);
                t[6 + q] = 0.5f * (g[q] - g[3 + q] + g[6 + q]);
                t[9 + q] = g[6 + q];
            }
            const int64_t pi = rotate ? o : i, po = rotate ? i : o;
            for (int r = 0; r < 4; ++r) { // (G g) G^T
                const float* tr = t + 3 * r;
                const float u[4] = {tr[0], 0.5f * (tr[0] + tr[1] + tr[2]), 0.5f * (tr[0] - tr[1] + tr[2]), tr[2]};
                for (int q = 0; q < 4; ++q) U[(4 * r + q) * ni * no + (po / 16 * ni + pi) * 16 + po % 16] = u[q];
            }
        }
}

thread_local std::vector<float> tl_in, tl_out, tl_a, tl_b; // per thread, grow-only
thread_local std::vector<float> tl_u;                      // the calling thread's filters

// One chunk's buffers in the calling thread's scratch: the gathered input
// (nb x lh x lw pixels with the one-pixel halo, c_a channels), the output-side
// pixels without halo (c_b channels), and the transformed tiles V (c_a) and
// M or D (c_b), tn tiles each.
struct ChunkBuffers {
    int64_t tn, lh, lw;
    float *in, *out, *v, *m;
    ChunkBuffers(const Geo& g, const Chunk& k, int64_t c_a, int64_t c_b) {
        const int64_t rows = k.r1 - k.r0;
        tn = k.nb * rows * g.tw;
        lh = 2 * rows + 2;
        lw = 2 * g.tw + 2;
        in = scratch(tl_in, static_cast<size_t>(k.nb * lh * lw * c_a));
        out = scratch(tl_out, static_cast<size_t>(k.nb * (lh - 2) * (lw - 2) * c_b));
        v = scratch(tl_a, static_cast<size_t>(16 * slice_stride(tn, c_a)));
        m = scratch(tl_b, static_cast<size_t>(16 * slice_stride(tn, c_b)));
    }
};

constexpr int64_t kChunkBytes = 384 * 1024; // V and M of one chunk: about a Zen 3 L2

// The forward algorithm on NCHW `in` (c_in channels) with filters U, into NCHW
// `out` (c_out channels) plus bias.
void conv_tiles(const Geo& g, int64_t c_in, int64_t c_out, const float* in, const float* U, const float* bias,
                float* out) {
    const Chunking ck = chunking(g, chunk_tiles(c_in, c_out, kChunkBytes));
#pragma omp parallel if (ck.count > 1)
    {
#pragma omp for schedule(static)
        for (int64_t kk = 0; kk < ck.count; ++kk) {
            const Chunk k = ck.at(g, kk);
            const ChunkBuffers w(g, k, c_in, c_out);
            gather(in, g, c_in, k, 1, w.lh, w.lw, w.in);
            input_transform(w.in, w.lh, w.lw, c_in, k, g.tw, w.v);
            for (int xi = 0; xi < 16; ++xi)
                gemm_packed(w.tn, c_out, c_in, w.v + xi * slice_stride(w.tn, c_in), c_in, U + xi * c_in * c_out,
                            w.m + xi * slice_stride(w.tn, c_out), c_out);
            output_transform(w.m, c_out, k, g.tw, bias, w.out);
            scatter(w.out, g, c_out, k, out);
        }
    }
}

} // namespace

void winograd_forward(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
    const Geo g = geometry(s);
    float* U = scratch(tl_u, static_cast<size_t>(16 * s.c_in * s.c_out));
    weight_transform(w, s.c_out, s.c_in, false, U);
    conv_tiles(g, s.c_in, s.c_out, x, U, bias, y);
}

void winograd_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
    const Geo g = geometry(s);
    float* U = scratch(tl_u, static_cast<size_t>(16 * s.c_in * s.c_out));
    weight_transform(w, s.c_out, s.c_in, true, U);
    conv_tiles(g, s.c_out, s.c_in, dy, U, nullptr, dx);
}

void winograd_backward_weights(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias) {
    const Geo g = geometry(s);
    const int64_t hw = g.h * g.w, ci = s.c_in, co = s.c_out;
    const Chunking ck = chunking(g, chunk_tiles(ci, co, kChunkBytes));
    const int nthr = max_threads();
    const int64_t usz = 16 * co * ci;
    // One dU accumulator per thread, summed in thread order at the end (the
    // result depends on the thread count only through that order).
    float* acc = scratch(tl_u, static_cast<size_t>(usz * (nthr + 1)));
    std::fill(acc, acc + usz * (nthr + 1), 0.0f);
#pragma omp parallel num_threads(nthr) if (ck.count > 1)
    {
        float* mine = acc + usz * (1 + thread_id());
#pragma omp for schedule(static)
        for (int64_t kk = 0; kk < ck.count; ++kk) {
            const Chunk k = ck.at(g, kk);
            const ChunkBuffers w(g, k, ci, co);
            gather(x, g, ci, k, 1, w.lh, w.lw, w.in);
            gather(dy, g, co, k, 0, w.lh - 2, w.lw - 2, w.out);
            input_transform(w.in, w.lh, w.lw, ci, k, g.tw, w.v);
            grad_transform(w.out, co, k, g.tw, w.m);
            // dU[xi] [co, ci] += D[xi]^T V[xi]: A(o, t) = D[t * co + o].
            for (int xi = 0; xi < 16; ++xi)
                simd::fma_gemm(co, ci, w.tn, w.m + xi * slice_stride(w.tn, co), 1, co, w.v + xi * slice_stride(w.tn, ci), ci,
                               mine + xi * co * ci, ci, true);
        }
    }
    float* dU = acc;
    for (int t = 0; t < nthr; ++t) {
        const float* src = acc + usz * (1 + t);
        for (int64_t e = 0; e < usz; ++e) dU[e] += src[e];
    }
    // dw = G^T dU G per filter; G^T rows: (1 .5 .5 0), (0 .5 -.5 0), (0 .5 .5 1).
#pragma omp parallel for schedule(static) if (co * ci > 4096)
    for (int64_t o = 0; o < co; ++o)
        for (int64_t i = 0; i < ci; ++i) {
            float u[16], t[12];
            for (int xi = 0; xi < 16; ++xi) u[xi] = dU[(xi * co + o) * ci + i];
            for (int q = 0; q < 4; ++q) {
                t[q] = u[q] + 0.5f * (u[4 + q] + u[8 + q]);
                t[4 + q] = 0.5f * (u[4 + q] - u[8 + q]);
                t[8 + q] = 0.5f * (u[4 + q] + u[8 + q]) + u[12 + q];
            }
            float* k = dw + (o * ci + i) * 9;
            for (int r = 0; r < 3; ++r) {
                const float* tr = t + 4 * r;
                k[3 * r + 0] = tr[0] + 0.5f * (tr[1] + tr[2]);
                k[3 * r + 1] = 0.5f * (tr[1] - tr[2]);
                k[3 * r + 2] = 0.5f * (tr[1] + tr[2]) + tr[3];
            }
        }
    if (dbias) {
#pragma omp parallel for schedule(static) if (co * g.n * hw > 32768)
        for (int64_t o = 0; o < co; ++o) {
            float sum = 0.0f;
            for (int64_t b = 0; b < g.n; ++b) {
                const float* p = dy + (b * co + o) * hw;
                for (int64_t e = 0; e < hw; ++e) sum += p[e];
            }
            dbias[o] = sum;
        }
    }
}

#else // no AVX2: winograd_fits() is false, so these are never called.

void winograd_forward(const Conv2dShape&, const float*, const float*, const float*, float*) {}
void winograd_backward_data(const Conv2dShape&, const float*, const float*, float*) {}
void winograd_backward_weights(const Conv2dShape&, const float*, const float*, float*, float*) {}

#endif

} // namespace magnets::cpu
