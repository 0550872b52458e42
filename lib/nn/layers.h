// lib/nn/layers.h (private): explicit forward/backward of the layers the
// models are built from, in the style of llm.c. Activations are NCHW f32
// arrays owned by the caller: DTensor, in the backend's memory (the
// tokenizer, which runs on any backend, a GPU's included; every op goes
// through the Backend), or host Tensors (the evaluation networks, CPU only:
// convolutions through the Backend, elementwise ops the host loops of
// nn/image_ops.h).
#pragma once
#include "magnets/backend.h"
#include "magnets/rng.h"
#include "magnets/tensor.h"
#include "nn/backend_buffer.h"

#include <string>
#include <vector>

namespace magnets::nn {

// Reallocates t only when its shape differs (buffers are reused across steps).
void ensure(Tensor& t, const std::vector<int64_t>& shape);

// An activation in a backend's memory: a shape and a buffer that grows on
// demand (host memory on the CPU backends, device memory on a GPU).
struct DTensor {
    std::vector<int64_t> shape;
    BackendBuffer buf;
    float* data() const { return buf.data(); }
    int32_t* ints() const { return buf.ints(); }
    int64_t numel() const;
    int64_t dim(int i) const { return shape.at(static_cast<size_t>(i)); }
    std::string shape_str() const;
    // Becomes `shape` in be's memory; the buffer is reused when large enough
    // (contents are then left as they are).
    void ensure(Backend& be, const std::vector<int64_t>& shape);
};

struct Conv2d {
    std::string name;
    int64_t c_in = 0, c_out = 0, k = 3, stride = 1, pad = 1;
    Tensor weight, bias;   // [c_out, c_in, k, k], [c_out]
    Tensor dweight, dbias; // same shapes
    // Copies in a device backend's memory (empty on the CPU backends, where the
    // DTensor overloads use the host tensors above). Their owner keeps them in
    // step with the host copies (Tokenizer::Impl::params_to_device).
    BackendBuffer weight_dev, bias_dev, dweight_dev, dbias_dev;
    const float* W() const { return weight_dev.data() ? weight_dev.data() : weight.data(); }
    const float* B() const { return bias_dev.data() ? bias_dev.data() : bias.data(); }
    float* dW() { return dweight_dev.data() ? dweight_dev.data() : dweight.data(); }
    float* dB() { return dbias_dev.data() ? dbias_dev.data() : dbias.data(); }

    Conv2d() = default;
    Conv2d(std::string name, int64_t c_in, int64_t c_out, int64_t k, int64_t stride, int64_t pad);
    Conv2dShape shape_for(const std::vector<int64_t>& x) const;
    // He-uniform init (bound sqrt(6 / fan_in)), bias 0; draws from (seed, stream_id(name)).
    void init(const Philox& rng);
    // y [n, c_out, oh, ow] = conv(x) + bias.
    void forward(Backend& be, const Tensor& x, Tensor& y) const;
    // Given x (the forward input) and dy: overwrites dweight, dbias; writes dx when non-null.
    void backward(Backend& be, const Tensor& x, const Tensor& dy, Tensor* dx);
    // The same on backend memory (W(), dW() ...).
    void forward(Backend& be, const DTensor& x, DTensor& y) const;
    void backward(Backend& be, const DTensor& x, const DTensor& dy, DTensor* dx);
};

// y = max(x, 0); in-place allowed.
void relu_forward(const Tensor& x, Tensor& y);
// dx = dy * (y > 0), where y is the ReLU output; in-place (dx == dy) allowed.
void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx);
// Nearest-neighbour x2: x [n, c, h, w] -> y [n, c, 2h, 2w].
void upsample2_forward(const Tensor& x, Tensor& y);
// dx [n, c, h, w] = sum of dy over each 2x2 block.
void upsample2_backward(const Tensor& dy, Tensor& dx);
// Pixel unshuffle by 2 (PyTorch's pixel_unshuffle): x [n, c, 2h, 2w] -> y [n, 4c, h, w],
// y[b, 4q + 2di + dj, i, j] = x[b, q, 2i + di, 2j + dj]. Its backward is pixel_shuffle2.
void pixel_unshuffle2(const Tensor& x, Tensor& y);
// Pixel shuffle by 2 (PyTorch's pixel_shuffle): x [n, 4c, h, w] -> y [n, c, 2h, 2w];
// the inverse permutation of pixel_unshuffle2 (and its backward).
void pixel_shuffle2(const Tensor& x, Tensor& y);
// y = a + b (same shape); out may alias a.
void add(const Tensor& a, const Tensor& b, Tensor& y);
// y += x.
void add_inplace(Tensor& y, const Tensor& x);
// copy of x into y (resized).
void copy(const Tensor& x, Tensor& y);

// Residual block h + conv_b(relu(conv_a(relu(h)))), conv_a 3x3, conv_b 1x1
// (VQ-VAE), on backend memory.
struct ResBlock {
    Conv2d conv_a, conv_b;
    // Saved activations of the last forward (for backward).
    DTensor t1, t2, t3;
    DTensor scratch3, scratch1; // backward gradients, kept so steps do not reallocate
    ResBlock() = default;
    ResBlock(const std::string& name, int64_t channels);
    // y = x + block(x) (y may not alias x; x must stay unchanged until backward).
    void forward(Backend& be, const DTensor& x, DTensor& y);
    // dy -> dx (dx may not alias dy).
    void backward(Backend& be, const DTensor& dy, DTensor& dx);
};

// Mean squared error over all elements; writes d(loss)/d(pred) scaled by `scale`.
double mse_loss(const Tensor& pred, const Tensor& target, Tensor* dpred, double scale = 1.0);
// Mean absolute error; subgradient 0 at 0.
double l1_loss(const Tensor& pred, const Tensor& target, Tensor* dpred, double scale = 1.0);

// Nearest code (L2) for each row of z [m, c] in codebook [k, c]; ties -> lowest index.
// dist is scratch [m, k]. Host arrays: be.nearest_codes on a CPU backend.
void nearest_codes(Backend& be, const Tensor& z, const Tensor& codebook, Tensor& dist, std::vector<int32_t>& idx);

} // namespace magnets::nn
