// lib/nn/tokenizer_impl.h (private): the tokenizer's layers and saved
// activations, shared by inference (tokenizer.cpp) and training
// (tokenizer_train.cpp).
//
// The network runs on any backend: activations are DTensors in the
// backend's memory. The parameters' master copies are host Tensors
// (checkpoints, init, param()); on a device backend each has a device copy
// (Conv2d::weight_dev ..., codebook_dev), kept in step by nn::ParamSync. The quantizer's bookkeeping
// (code counts, EMA statistics, dead-code restarts) is host code on the
// downloaded codes and encoder rows: small next to the convolutions.
#pragma once
#include "magnets/tokenizer.h"
#include "nn/layers.h"
#include "nn/param_sync.h"

#include <map>

namespace magnets {

struct Tokenizer::Impl {
    TokenizerConfig cfg;
    std::shared_ptr<Backend> be;

    // encoder
    nn::Conv2d enc_in;
    std::vector<nn::Conv2d> enc_down;
    std::vector<nn::ResBlock> enc_res;
    nn::Conv2d enc_out;
    // quantizer
    Tensor codebook, dcodebook;      // [K, c]
    nn::BackendBuffer codebook_dev, dcodebook_dev; // device copies (device backends only)
    Tensor ema_count, ema_sum;       // [K], [K, c] (Quantizer::ema), host only
    // decoder
    nn::Conv2d dec_in;
    std::vector<nn::ResBlock> dec_res;
    std::vector<nn::Conv2d> dec_up;
    nn::Conv2d dec_out;                         // to 4T channels at half resolution
    nn::Conv2d dec_tail;                        // T -> C at full resolution

    // saved activations (training), in the backend's memory
    nn::DTensor x;                              // input [n, C, S, S]
    nn::DTensor x_s2d;                          // pixel-unshuffled input [n, 4C, S/2, S/2]
    nn::DTensor e_in, e_in_r;                   // conv_in out, relu
    std::vector<nn::DTensor> e_down, e_down_r;  // per down stage
    std::vector<nn::DTensor> e_res_out;         // per res block
    nn::DTensor e_res_r, z_e;                   // relu before conv_out, encoder output [n, c, h, w]
    nn::DTensor z_rows, z_q_rows, dist, z_q;    // quantizer: rows [n*h*w, c], distances, z_q [n, c, h, w]
    nn::DTensor codes_dev;                      // codes as int32 [n*h*w]
    std::vector<int32_t> codes;                 // the same on the host
    nn::DTensor d_in;                           // decoder conv_in out
    std::vector<nn::DTensor> d_res_out;
    nn::DTensor d_res_r;
    std::vector<nn::DTensor> d_up_in, d_up, d_up_r; // upsampled input, conv out, relu
    nn::DTensor out_s2d, tail_in, tail_r, x_hat;    // [n, 4T, S/2, S/2], shuffled [n, T, S, S], ReLU, output [n, C, S, S]
    // Backward scratch, kept between steps so training allocates only once.
    nn::DTensor bw_g, bw_g2, bw_s2d, bw_tail, bw_dxhat, bw_dzq, bw_dze;

    using ParamRef = nn::ParamRef;
    nn::ParamSync sync;

    Impl(const TokenizerConfig& c, std::shared_ptr<Backend> b);
    // Every learnable parameter and its gradient, in a stable order.
    std::vector<ParamRef> params();

    bool on_device() const { return !be->host_memory(); }
    void params_to_device() { sync.to_device(*be, params()); }
    void params_to_host() { sync.to_host(*be, params()); }
    void grads_to_host() { nn::ParamSync::grads_to_host(*be, params()); }
    // The codebook alone (the quantizer's host bookkeeping changes it every step).
    void codebook_to_host();
    void codebook_to_device();
    const float* codebook_ptr() const { return codebook_dev.data() ? codebook_dev.data() : codebook.data(); }

    // Upload n images [n, C, S, S] into x.
    void load_input(const float* images, int64_t n);
    // Host view of a backend array (the array itself on a CPU backend).
    const float* host_view(const nn::DTensor& t, std::vector<float>& staging) const;

    void encoder_forward();                     // x -> saved encoder activations and z_e
    void quantize();                            // z_e -> z_rows, codes (device and host), z_q_rows, z_q
    void decoder_forward();                     // z_q -> saved decoder activations and x_hat
    // d_xhat -> gradient wrt the decoder input (dzq); fills decoder grads.
    void decoder_backward(const nn::DTensor& d_xhat, nn::DTensor& dzq);
    // dz_e -> encoder grads.
    void encoder_backward(const nn::DTensor& dze);
};

} // namespace magnets
