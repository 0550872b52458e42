// magnets/tokenizer.h: the VQ tokenizer (images <-> discrete token grids).
//
// Conv encoder (pixel unshuffle, then stride-2 convs and residual blocks) ->
// vector quantizer (K codes of dimension c, EMA or loss-trained codebook,
// dead-code restarts) -> conv decoder (residual blocks, nearest upsampling +
// conv, a conv to 4 * tail_channels, pixel shuffle, ReLU, and one 3x3 "tail"
// conv at full resolution). Only the tail runs at full resolution. Images are
// [n, channels, size, size] floats in [0, 1]; tokens are [n, size/f, size/f]
// with f = 2^num_down.
//
//   auto be = magnets::make_backend("auto");
//   magnets::Tokenizer tok = magnets::Tokenizer::load("tok.h5", be);
//   std::vector<uint16_t> ids(n * tok.tokens_per_image());
//   tok.encode(images, n, ids.data());
//   tok.decode(ids.data(), n, recon);
//
// Training (library-side loop; the tool only parses options and prints):
//   magnets::TokenizerTrainOptions opt = ...;
//   magnets::train_tokenizer(tok, train_set, opt, on_log);
#pragma once
#include "magnets/backend.h"
#include "magnets/dataset.h"
#include "magnets/formats.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace magnets {

inline constexpr const char* tokenizer_format = "magnets-tokenizer";
inline constexpr int64_t tokenizer_format_version = 1;

enum class Quantizer { ema, loss };       // EMA codebook updates, or codebook + commitment losses
enum class ReconLoss { l2, l1 };
const char* quantizer_name(Quantizer q);
Quantizer parse_quantizer(const std::string& s); // throws Error listing the choices
const char* recon_loss_name(ReconLoss r);
ReconLoss parse_recon_loss(const std::string& s);

struct TokenizerConfig {
    int64_t image_size = 32;     // input is image_size x image_size
    int64_t channels = 1;        // 1 gray, 3 RGB
    int64_t base_channels = 32;  // width at half resolution (after the pixel unshuffle)
    int64_t hidden_channels = 64;// width at every lower resolution
    int64_t num_down = 2;        // halvings: a pixel unshuffle + (num_down - 1) stride-2 convs;
                                 // tokens = image_size / 2^num_down per side
    int64_t res_blocks = 2;      // residual blocks at token resolution (encoder and decoder each)
    int64_t codebook_size = 512; // K
    int64_t code_dim = 32;       // c
    int64_t tail_channels = 16;  // T: width of the decoder's one full-resolution conv
    Quantizer quantizer = Quantizer::ema;
    double commitment = 0.25;    // beta
    double ema_decay = 0.99;
    ReconLoss recon_loss = ReconLoss::l2;

    // Video (our choice, METHOD section 2): a clip of clip_frames frames is cut
    // into slots of `frames` consecutive frames; a slot's frames are stacked as
    // input channels (frames x channels), so the first convolution mixes them
    // and time is downsampled by `frames`. A clip becomes grid_t() x side x side
    // tokens. Images: frames = clip_frames = 1.
    int64_t frames = 1;          // frames per token slot (temporal downsampling)
    int64_t clip_frames = 1;     // frames per clip; a multiple of frames

    int64_t tokens_side() const { return image_size >> num_down; }
    int64_t in_channels() const { return frames * channels; } // the network's input/output channels
    int64_t grid_t() const { return clip_frames / frames; }
    bool video() const { return clip_frames > 1; }
    void validate() const;       // throws Error on inconsistent values
    void to_attrs(Attrs& a) const;
    static TokenizerConfig from_attrs(const Attrs& a, const std::string& path = {});
};

struct TokenizerTrainConfig {
    int64_t steps = 1000;
    int64_t batch_size = 64;
    double lr = 2e-3;             // Adam peak learning rate
    int64_t warmup = 100;         // linear warmup steps, then cosine decay to lr_min
    double lr_min_ratio = 0.05;
    uint64_t seed = 1;
    int64_t restart_every = 50;   // dead-code restart period (steps); 0 = never
    double dead_threshold = 1e-3; // a code with EMA usage below this share of 1/K is restarted
    int64_t log_every = 10;
    int64_t checkpoint_every = 200; // steps; 0 = only at the end

    void to_attrs(Attrs& a) const;
    static TokenizerTrainConfig from_attrs(const Attrs& a, const std::string& path = {});
};

struct TokenizerPreset {
    std::string name, description;
    TokenizerConfig model;
    TokenizerTrainConfig train;
};
// "tiny" (tests), "demo" (<= 10 min on 2 cores), "quality" (longer, better).
TokenizerPreset tokenizer_preset(const std::string& name);
std::vector<std::string> tokenizer_preset_names();

class Tokenizer {
public:
    Tokenizer(const TokenizerConfig& cfg, std::shared_ptr<Backend> backend);
    ~Tokenizer();
    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;

    // Reads a tokenizer checkpoint (weights only); throws Error with a hint.
    static Tokenizer load(const std::string& path, std::shared_ptr<Backend> backend);

    const TokenizerConfig& config() const;
    Backend& backend();
    int64_t tokens_per_image() const;
    std::string hash() const; // weights_hash of the weights: the tokenizer's identity

    // Random initialisation from a seed (He init for convs, codebook ~ N(0, 1)/sqrt(c)).
    void init(uint64_t seed);
    // images [n, channels, size, size] in [0, 1] -> tokens [n, side, side].
    void encode(const float* images, int64_t n, uint16_t* tokens);
    // tokens -> images [n, channels, size, size], clamped to [0, 1]. Tokens >= K throw Error.
    void decode(const uint16_t* tokens, int64_t n, float* images);

    // Named parameters (weights) and their gradients, stable order.
    std::vector<std::string> param_names() const;
    Tensor& param(const std::string& name);
    Tensor& grad(const std::string& name);

    // Training forward + backward on one batch; fills grads (overwrites), updates
    // codebook usage statistics, and for Quantizer::ema applies the EMA codebook update.
    struct StepLosses {
        double loss = 0, recon = 0, commit = 0, codebook = 0, psnr = 0;
        std::vector<int64_t> code_counts; // [K] codes chosen in this batch
    };
    StepLosses forward_backward(const float* images, int64_t n, bool update_codebook = true);

    struct Impl;
    Impl& impl() { return *impl_; }

private:
    std::unique_ptr<Impl> impl_;
};

// One logged step.
struct TokenizerLog {
    int64_t step = 0, steps = 0;
    double loss = 0, recon = 0, commit = 0, psnr = 0;
    double usage = 0;      // fraction of codes used over the last restart window
    double perplexity = 0; // exp(entropy) of code use in that window
    double lr = 0, images_per_s = 0;
    int64_t restarted = 0; // codes restarted at this step
};

struct TokenizerTrainOptions {
    TokenizerTrainConfig train;
    std::string output;                // checkpoint path (weights + train state)
    bool resume = false;               // continue from `output`'s train state
    std::atomic<bool>* stop = nullptr; // set by a signal handler: checkpoint and return
    int64_t stop_after = -1;           // testing aid: behave as if stopped after this step
    std::string creator = "magnets";   // program name written into checkpoints
};

// Trains (or resumes) `tok` on `data`. Writes atomic checkpoints every
// checkpoint_every steps and at the end; resume continues bit-identically
// (same data order, RNG draws and optimizer state). Returns the last step done.
int64_t train_tokenizer(Tokenizer& tok, const ImageSet& data, const TokenizerTrainOptions& opt,
                        const std::function<void(const TokenizerLog&)>& on_log);

// Writes `tok` (weights only) to a checkpoint file atomically.
void save_tokenizer(const Tokenizer& tok, const std::string& path, const std::string& creator = "magnets");

struct TokenizerEval {
    int64_t images = 0;
    double psnr = 0;        // mean over images of per-image PSNR (peak 1.0)
    double mse = 0;         // mean squared error per pixel
    double usage = 0;       // fraction of the K codes used at least once
    double perplexity = 0;  // exp(entropy) of the code histogram
    int64_t codes_used = 0;
};
TokenizerEval evaluate_tokenizer(Tokenizer& tok, const ImageSet& data, int64_t batch_size = 256,
                                 int64_t limit = -1);

} // namespace magnets
