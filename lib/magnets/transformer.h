// magnets/transformer.h: the nested masked transformer (MaGNeTS, METHOD 3-5).
//
// One parameter set holds several nested sub-models m_p, p in `factors`
// (default {8, 4, 2, 1}; m_1 is the full model). A sub-model uses the leading
// block of every weight (first rows / first columns) through the backend's
// strided matmul: no weight copies, and it costs its share of the FLOPs.
//
// Sequence: position 0 is the class token, positions 1..N the image tokens.
// Vocabulary: codes 0..K-1, MASK = K, classes K+1..K+C, NULL = K+C+1.
// Pre-LN blocks: x += Attn(LN1(x)); x += MLP(LN2(x)); then LN_f and a head
// D -> K on the image positions. GELU is the exact (erf) form; LayerNorm eps
// is 1e-5. Parameter names and shapes (PyTorch's Linear layout [out, in]):
//
//   tok_emb.weight [V, D]        pos_emb.weight [N+1, D]
//   blocks.{l}.ln1.weight/bias [D]
//   blocks.{l}.attn.{q,k,v}.weight [D, D]   .bias [D]
//   blocks.{l}.attn.o.weight [D, D]         .bias [D]
//   blocks.{l}.ln2.weight/bias [D]
//   blocks.{l}.mlp.fc1.weight [F, D] .bias [F]   (F = mlp_ratio * D)
//   blocks.{l}.mlp.fc2.weight [D, F] .bias [D]
//   ln_f.weight/bias [D]         head.weight [K, D]  head.bias [K]
//
//   auto be = magnets::make_backend("auto");
//   magnets::Transformer m = magnets::Transformer::load("model.h5", be);
//   m.forward(p, ids, batch, logits);   // logits [batch, N, K]
#pragma once
#include "magnets/backend.h"
#include "magnets/formats.h"
#include "magnets/dist.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace magnets {

inline constexpr const char* transformer_format = "magnets-transformer";
inline constexpr int64_t transformer_format_version = 1;

// How a sub-model m_p narrows the model (METHOD section 4).
enum class Nesting {
    width, // residual D/p, attention D/p (H/p heads), MLP F/p: cost ~1/p^2 (default)
    mone,  // residual D/p, attention D (all heads), MLP F/p: cost ~1/p
    mlp,   // residual D, attention D, MLP F/p (MatFormer)
};
const char* nesting_name(Nesting n);
Nesting parse_nesting(const std::string& s); // throws Error listing the choices

struct TransformerConfig {
    int64_t codebook_size = 512;                  // K (from the token file)
    int64_t num_classes = 10;                     // C (from the token file)
    int64_t grid_t = 1, grid_h = 8, grid_w = 8;   // N = t * h * w image tokens
    int64_t width = 128;                          // D
    int64_t heads = 8;                            // H; head dim D / H
    int64_t layers = 4;                           // L
    int64_t mlp_ratio = 4;                        // F = mlp_ratio * D
    Nesting nesting = Nesting::width;
    std::vector<int64_t> factors = {8, 4, 2, 1};  // sub-models, largest p (smallest model) first

    int64_t tokens() const { return grid_t * grid_h * grid_w; } // N
    int64_t seq() const { return tokens() + 1; }                 // S = N + 1
    int64_t vocab() const { return codebook_size + num_classes + 2; }
    int64_t mask_id() const { return codebook_size; }
    int64_t class_id(int64_t c) const { return codebook_size + 1 + c; }
    int64_t null_id() const { return codebook_size + 1 + num_classes; }
    int64_t mlp_width() const { return mlp_ratio * width; }
    int64_t head_dim() const { return width / heads; }

    // The prefix widths of sub-model m_p.
    struct Sub {
        int64_t p = 1;
        int64_t resid = 0; // r_p: residual stream, LN, embeddings, head input
        int64_t attn = 0;  // a_p = heads * head_dim
        int64_t heads = 0;
        int64_t mlp = 0;   // f_p
    };
    Sub sub(int64_t p) const; // throws Error if p is not in factors
    // Forward FLOPs per sequence of sub-model p (2 per multiply-add; every
    // matmul row and attention over all S keys).
    double forward_flops(int64_t p) const;
    int64_t num_params() const;

    void validate() const; // throws Error on inconsistent values (divisibility, ranges)
    void to_attrs(Attrs& a) const;
    static TransformerConfig from_attrs(const Attrs& a, const std::string& path = {});
};
std::string factors_to_string(const std::vector<int64_t>& f);    // "8,4,2,1"
std::vector<int64_t> parse_factors(const std::string& s);        // throws Error

class Transformer {
public:
    Transformer(const TransformerConfig& cfg, std::shared_ptr<Backend> backend);
    ~Transformer();
    Transformer(Transformer&&) noexcept;
    Transformer& operator=(Transformer&&) noexcept;

    // Loads a checkpoint's weights; the EMA weights when `ema` and present.
    static Transformer load(const std::string& path, std::shared_ptr<Backend> backend, bool ema = true);

    const TransformerConfig& config() const;
    Backend& backend();
    std::string hash() const; // weights_hash of the weights

    // Weights ~ N(0, 0.02), biases 0, LayerNorm gains 1 (deterministic in seed).
    void init(uint64_t seed);
    std::vector<std::string> param_names() const; // stable order
    // A parameter and its gradient as host tensors. On a device backend
    // (cuda) training keeps them in device memory: param() first brings the
    // current weights back (and the next computation uploads them again, so
    // the caller may change them), grad() downloads that gradient.
    Tensor& param(const std::string& name);
    Tensor& grad(const std::string& name);
    void zero_grads();

    // Inference: ids [batch, S] (class token first) -> logits [batch, N, K] of sub-model p.
    void forward(int64_t p, const int32_t* ids, int64_t batch, float* logits);

    struct Impl;
    Impl& impl() { return *impl_; }

private:
    std::unique_ptr<Impl> impl_;
};

// ---- training ---------------------------------------------------------------

// What the sub-models learn from (METHOD section 5).
enum class Objective {
    ground_truth, // every sub-model on the ground truth (joint training)
    progressive,  // full model on ground truth; m_i on alpha*CE + (1-alpha)*H(m_{i+1}, m_i)
    distill_only, // progressive with alpha = 0 throughout (expected to degrade)
};
const char* objective_name(Objective o);
Objective parse_objective(const std::string& s);

struct TransformerTrainConfig {
    int64_t steps = 2000;
    int64_t batch_size = 64;
    double lr = 1e-3, lr_min_ratio = 0.05;
    int64_t warmup = 100;
    double beta1 = 0.9, beta2 = 0.96, weight_decay = 0.045, clip_norm = 1.0;
    double ema_decay = 0.999;
    double label_smoothing = 0.1;
    double class_dropout = 0.1;         // replace the class by NULL with this probability
    std::vector<double> loss_weights;   // per factor; empty = all 1
    Objective objective = Objective::ground_truth;
    int64_t alpha_span = 0;             // progressive: alpha 1 -> 0 linearly over this many steps (0 = steps)
    uint64_t seed = 1;
    int64_t log_every = 10;
    int64_t checkpoint_every = 500;     // 0 = only at the end
    int64_t val_every = 500;            // 0 = only at the end
    int64_t val_items = 2000;           // validation items (<= val file count)
    double loss_limit = 0;              // mean loss per sub-model above this (or non-finite) stops the
                                        // run as diverged; 0 = 3 ln K (chance level is ln K)

    double alpha_at(int64_t step) const; // 1 for ground_truth, 0 for distill_only
    void to_attrs(Attrs& a) const;
    static TransformerTrainConfig from_attrs(const Attrs& a, const std::string& path = {});
};

struct TransformerPreset {
    std::string name, description;
    TransformerConfig model; // codebook_size, num_classes and grid come from the token file
    TransformerTrainConfig train;
};
// "tiny" (tests), "demo" (about 10 min on 2 cores), "small" (about an hour),
// "maskgit-s", "maskgit-b", "maskgit-l" (the paper's shapes, for GPUs).
TransformerPreset transformer_preset(const std::string& name);
std::vector<std::string> transformer_preset_names();

// Per sub-model numbers of one step or one validation pass.
struct SubModelStats {
    int64_t p = 1;
    double loss = 0;     // the sub-model's objective
    double ce = 0;       // cross-entropy vs ground truth (no label smoothing)
    double accuracy = 0; // argmax == ground truth, on masked positions
    int64_t masked = 0;  // masked positions counted
};

struct TransformerLog {
    int64_t step = 0, steps = 0;
    double loss = 0;     // weighted sum over sub-models
    double grad_norm = 0, lr = 0, alpha = 1, tokens_per_s = 0;
    std::vector<SubModelStats> subs;
    bool validation = false; // a validation record (subs hold validation numbers)
};

struct TransformerTrainOptions {
    TransformerTrainConfig train;
    std::string output;                // checkpoint path (weights, EMA, train state)
    bool resume = false;               // continue from `output`'s train state
    std::atomic<bool>* stop = nullptr; // set by a signal handler: checkpoint and return
    int64_t stop_after = -1;           // testing aid: behave as if stopped after this step
    std::string creator = "magnets";
    std::string init_from;             // distillation: the checkpoint the weights came from
    // Data parallelism (magnets/dist.h): each rank takes its share of every
    // global batch and the gradients are summed over the ranks; rank 0 alone
    // writes checkpoints and receives on_log calls. Null: one process.
    std::shared_ptr<dist::Comm> comm;
};

// Trains (or resumes) `model` on `train` (validating on `val` when given).
// Atomic checkpoints every checkpoint_every steps and at the end; resume is
// bit-identical with the same thread count. A non-finite or exploding loss
// throws Error naming the last good checkpoint, which is left untouched.
int64_t train_transformer(Transformer& model, const TokenFile& train, const TokenFile* val,
                          const TransformerTrainOptions& opt,
                          const std::function<void(const TransformerLog&)>& on_log);

// Masked-token validation of every sub-model with fixed masks (seeded by
// `seed`, independent of the training step): CE and accuracy on masked positions.
// With `comm`, the batches are shared out over its ranks and every rank
// returns the numbers of the whole set.
std::vector<SubModelStats> validate_transformer(Transformer& model, const TokenFile& val, int64_t items,
                                                uint64_t seed = 12345, int64_t batch_size = 64,
                                                dist::Comm* comm = nullptr);

// Checks that a token file fits a model (codebook, grid, classes, labels);
// throws Error with a hint.
void check_tokens_fit(const TransformerConfig& cfg, const TokenFile& tf, const std::string& path);

// Writes weights (+ EMA when given) to a checkpoint atomically.
void save_transformer(const Transformer& model, const std::string& path, const std::string& creator = "magnets");

} // namespace magnets
