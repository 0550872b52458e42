// lib/nn/tokenizer_impl.h (private): the tokenizer's layers and saved
// activations, shared by inference (tokenizer.cpp) and training
// (tokenizer_train.cpp).
#pragma once
#include "magnets/tokenizer.h"
#include "nn/layers.h"

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
    Tensor ema_count, ema_sum;       // [K], [K, c] (Quantizer::ema)
    // decoder
    nn::Conv2d dec_in;
    std::vector<nn::ResBlock> dec_res;
    std::vector<nn::Conv2d> dec_up;
    nn::Conv2d dec_out;                         // to 4T channels at half resolution
    nn::Conv2d dec_tail;                        // T -> C at full resolution

    // saved activations (training)
    Tensor x;                                   // input [n, C, S, S]
    Tensor x_s2d;                               // pixel-unshuffled input [n, 4C, S/2, S/2]
    Tensor e_in, e_in_r;                        // conv_in out, relu
    std::vector<Tensor> e_down, e_down_r;       // per down stage
    std::vector<Tensor> e_res_out;              // per res block
    Tensor e_res_r, z_e;                        // relu before conv_out, encoder output [n, c, h, w]
    Tensor z_rows, z_q_rows, dist, z_q;         // quantizer
    std::vector<int32_t> codes;
    Tensor d_in;                                // decoder conv_in out
    std::vector<Tensor> d_res_out;
    Tensor d_res_r;
    std::vector<Tensor> d_up_in, d_up, d_up_r;  // upsampled input, conv out, relu
    Tensor out_s2d, tail_in, tail_r, x_hat;     // [n, 4T, S/2, S/2], shuffled [n, T, S, S], ReLU, output [n, C, S, S]
    // Backward scratch, kept between steps so training allocates only once.
    Tensor bw_g, bw_g2, bw_s2d, bw_tail, bw_dxhat, bw_dzq, bw_dze;

    Impl(const TokenizerConfig& c, std::shared_ptr<Backend> b);
    // Every learnable parameter and its gradient, in a stable order.
    std::vector<std::pair<std::string, std::pair<Tensor*, Tensor*>>> params();

    void encoder_forward(const Tensor& input);  // fills saved encoder activations and z_e
    void quantize();                            // z_e -> codes, z_q
    void decoder_forward(const Tensor& zq);     // fills saved decoder activations and x_hat
    // d_xhat -> gradient wrt the decoder input (dzq); fills decoder grads.
    void decoder_backward(const Tensor& d_xhat, Tensor& dzq);
    // dz_e -> encoder grads.
    void encoder_backward(const Tensor& dze);
};

} // namespace magnets
