// lib/nn/image_ops.h (private): the image networks' elementwise and data
// movement operations on raw host arrays (NCHW f32, contiguous). The CPU
// backends answer the matching Backend calls with them
// (lib/cpu/host_image_ops.cpp), and the Tensor layers of nn/layers.h use them
// directly; lib/cuda/cuda_image_ops.cu has the GPU versions.
#pragma once
#include "magnets/backend.h"

#include <cstdint>

namespace magnets::nn::img {

void relu(const float* x, float* y, int64_t n);
void relu_backward(const float* y, const float* dy, float* dx, int64_t n);
void upsample2(const float* x, float* y, int64_t planes, int64_t h, int64_t w);
void upsample2_backward(const float* dy, float* dx, int64_t planes, int64_t h, int64_t w);
void pixel_unshuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w);
void pixel_shuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w);
void transpose_batched(const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols);
// Mean squared / absolute error of n values; d (when not null) = scale * gradient.
double mse(const float* p, const float* t, int64_t n, double scale, float* d);
double l1(const float* p, const float* t, int64_t n, double scale, float* d);
// Sum over images of 10 log10(1 / mse(clamp(p, 0, 1), t)).
double psnr_sum(const float* p, const float* t, int64_t images, int64_t per);
double commit_backward(const float* ze, const float* zq, const float* dzq, float* dze, int64_t n, float g);
// The evaluation networks' operations (Backend::zero_pad ... resize_bilinear).
void zero_pad(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw);
void max_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p);
void avg_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w);
void mean_planes(const float* x, float* y, int64_t planes, int64_t plane);
void copy2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols);
void resize_bilinear(const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y, int64_t c_out,
                     int64_t oh, int64_t ow, float mul, float add);
// Nearest code per row of z given dist = -2 z e^T (already computed): the
// argmin of dist[i, j] + |e_j|^2, ties to the lowest j.
void argmin_codes(const float* dist, const float* codebook, int64_t m, int64_t K, int64_t c, int32_t* idx);

} // namespace magnets::nn::img
