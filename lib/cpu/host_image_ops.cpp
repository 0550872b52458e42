// The image networks' operations on the CPU backends (see Backend in
// magnets/backend.h; the tokenizer, lib/nn/tokenizer.cpp, and the evaluation
// networks, lib/eval, are their callers):
// the host loops of lib/nn/image_ops.h.
#include "cpu/host_backend.h"

#include "nn/image_ops.h"

namespace magnets {

void HostBackend::relu(const float* x, float* y, int64_t n) { nn::img::relu(x, y, n); }

void HostBackend::relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
    nn::img::relu_backward(y, dy, dx, n);
}

void HostBackend::upsample2(const float* x, float* y, int64_t planes, int64_t h, int64_t w) {
    nn::img::upsample2(x, y, planes, h, w);
}

void HostBackend::upsample2_backward(const float* dy, float* dx, int64_t planes, int64_t h, int64_t w) {
    nn::img::upsample2_backward(dy, dx, planes, h, w);
}

void HostBackend::pixel_unshuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) {
    nn::img::pixel_unshuffle2(x, y, n, c, h, w);
}

void HostBackend::pixel_shuffle2(const float* x, float* y, int64_t n, int64_t c, int64_t h, int64_t w) {
    nn::img::pixel_shuffle2(x, y, n, c, h, w);
}

void HostBackend::transpose_batched(const float* src, float* dst, int64_t batches, int64_t rows, int64_t cols) {
    nn::img::transpose_batched(src, dst, batches, rows, cols);
}

void HostBackend::nearest_codes(const float* z, int64_t m, const float* codebook, int64_t K, int64_t c, float* dist,
                                int32_t* idx) {
    // dist = -2 z e^T, then the argmin of dist + |e|^2.
    matmul(cmat(z, m, c), false, cmat(codebook, K, c), true, mat(dist, m, K), -2.0f, 0.0f);
    nn::img::argmin_codes(dist, codebook, m, K, c, idx);
}

Backend::ReconSums HostBackend::recon_loss(const float* pred, const float* target, int64_t images, int64_t per,
                                           bool l1, double scale, float* dpred) {
    ReconSums r;
    const int64_t n = images * per;
    r.loss = l1 ? nn::img::l1(pred, target, n, scale, dpred) : nn::img::mse(pred, target, n, scale, dpred);
    r.psnr = nn::img::psnr_sum(pred, target, images, per);
    return r;
}

double HostBackend::commit_backward(const float* ze, const float* zq, const float* dzq, float* dze, int64_t n,
                                    float g) {
    return nn::img::commit_backward(ze, zq, dzq, dze, n, g);
}

void HostBackend::zero_pad(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t ph, int64_t pw) {
    nn::img::zero_pad(x, y, planes, h, w, ph, pw);
}

void HostBackend::max_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w, int64_t s, int64_t p) {
    nn::img::max_pool3(x, y, planes, h, w, s, p);
}

void HostBackend::avg_pool3(const float* x, float* y, int64_t planes, int64_t h, int64_t w) {
    nn::img::avg_pool3(x, y, planes, h, w);
}

void HostBackend::mean_planes(const float* x, float* y, int64_t planes, int64_t plane) {
    nn::img::mean_planes(x, y, planes, plane);
}

void HostBackend::copy2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols) {
    nn::img::copy2d(dst, ld_dst, src, ld_src, rows, cols);
}

void HostBackend::resize_bilinear(const float* x, int64_t n, int64_t c_in, int64_t h, int64_t w, float* y,
                                  int64_t c_out, int64_t oh, int64_t ow, float mul, float add) {
    nn::img::resize_bilinear(x, n, c_in, h, w, y, c_out, oh, ow, mul, add);
}

} // namespace magnets
