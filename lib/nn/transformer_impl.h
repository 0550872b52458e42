// lib/nn/transformer_impl.h (private): the nested transformer's parameters,
// saved activations, and the explicit forward/backward of one sub-model (in
// the style of llm.c). Used by transformer.cpp, the training loop and tests.
#pragma once
#include "magnets/transformer.h"
#include "magnets/tensor.h"
#include "nn/backend_buffer.h"

#include <map>
#include <string>
#include <vector>

namespace magnets {

struct Transformer::Impl {
    TransformerConfig cfg;
    std::shared_ptr<Backend> be;

    // A parameter and its gradient. On a device backend both also live in
    // device memory (dw, dg), where training reads and updates them; W() and
    // G() are the copies the backend computes on.
    struct Param {
        Tensor w, g;
        bool decay = false; // AdamW weight decay (matrices and embeddings)
        nn::BackendBuffer dw, dg;
        float* W() { return dw.data() ? dw.data() : w.data(); }
        const float* W() const { return dw.data() ? dw.data() : w.data(); }
        float* G() { return dg.data() ? dg.data() : g.data(); }
    };
    std::map<std::string, Param> params; // by name
    std::vector<std::string> order;      // stable order (construction order)

    struct Layer {
        Param *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b, *ln2_w, *ln2_b, *fc1_w, *fc1_b,
            *fc2_w, *fc2_b;
    };
    Param *tok_emb = nullptr, *pos_emb = nullptr, *lnf_w = nullptr, *lnf_b = nullptr, *head_w = nullptr,
          *head_b = nullptr;
    std::vector<Layer> layers;

    // Where the parameters are current on a device backend: after compute
    // or an optimizer step on the device, the device copies (host Tensors
    // stale); after host code read or wrote the Tensors (Transformer::param,
    // init, loading), the host. Always the host on CPU backends.
    bool on_device() const { return !be->host_memory(); }
    bool device_current = false;
    // Device: upload every parameter unless the device copies are current
    // (allocating them, and zeroed gradients, the first time). Host: nothing.
    void params_to_device();
    // Device: download every parameter if the device copies are newer; the
    // host Tensors become current (the next compute uploads them). Host: nothing.
    void params_to_host();
    // Device: download one gradient into its Tensor. Host: nothing.
    void grad_to_host(Param& p);
    void zero_grads();

    // Saved activations of the last forward (sized for the full model, used
    // densely at the running sub-model's widths), in the backend's memory.
    // u holds GELU'(fc1 output), not the output itself (bias_gelu_forward).
    struct Acts {
        nn::BackendBuffer x_in, h1, mean1, rstd1, q, k, v, probs, att, x_mid, h2, mean2, rstd2, u, g;
    };
    std::vector<Acts> acts;
    nn::BackendBuffer x_out, hf, meanf, rstdf, logits; // final residual, LN_f output, logits [head rows, K]
    nn::BackendBuffer dx, dh, dq, dk, dv, datt, du, dlogits; // backward scratch
    nn::BackendBuffer hsel, dhsel;                           // LN_f rows the head ran on (selected forward)
    // The batch's ids, positions (i % S), head rows and loss targets in the
    // backend's memory (on a device; the host arrays are used in place otherwise).
    nn::BackendBuffer d_ids, d_pos, d_rows, d_targets, d_mask;
    std::vector<int32_t> pos_host, rows32;
    std::vector<int32_t> ids_saved;
    std::vector<int64_t> head_rows; // rows (b * S + s) the head ran on; empty = all rows
    bool head_selected = false;
    int64_t batch = 0, sub_p = 0; // shape of the saved forward

    Impl(const TransformerConfig& c, std::shared_ptr<Backend> b);
    Param& add(const std::string& name, std::vector<int64_t> shape, bool decay);
    void ensure_buffers(int64_t batch);

    // Forward of sub-model p on ids [batch, S]; logits [batch * S, K] in `logits`
    // (row b * S + s; the class rows s = 0 are computed and ignored). With
    // `rows` (n_rows global row indices), the output head runs on those rows
    // only and `logits` is [n_rows, K] in that order: training needs logits at
    // the masked positions only, and the head is most of a small sub-model's cost.
    void forward(int64_t p, const int32_t* ids, int64_t batch, const int64_t* rows = nullptr, int64_t n_rows = 0);
    // Backward of the last forward given dlogits (the shape of its logits);
    // accumulates into the parameter gradients.
    void backward();

    // Loss of sub-model p on masked positions (targets/mask [batch, N]) with
    // forward + backward: grads += weight * d(loss). teacher: logits
    // [batch * S, K] of the next-larger sub-model (null when alpha == 1).
    SubModelStats forward_backward(int64_t p, const int32_t* ids, const int32_t* targets, const uint8_t* mask,
                                   int64_t batch, double smoothing, double alpha, const float* teacher,
                                   double weight, bool backward_pass = true);

    // One joint step's forward/backward over every sub-model, largest model
    // first (it is the teacher of the next smaller one). Gradients are zeroed
    // first. alpha per METHOD 5 (1 for ground truth). Returns stats in the
    // order of cfg.factors and the weighted total loss in *total.
    std::vector<SubModelStats> joint_forward_backward(const int32_t* ids, const int32_t* targets,
                                                      const uint8_t* mask, int64_t batch, Objective obj,
                                                      double alpha, const std::vector<double>& weights,
                                                      double smoothing, double* total, bool backward_pass = true);
    nn::BackendBuffer teacher; // logits of the previous (larger) sub-model
    int64_t teacher_rows = 0;
};

} // namespace magnets
