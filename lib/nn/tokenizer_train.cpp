// Tokenizer presets, checkpoints, the training loop and evaluation.
#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/rng.h"
#include "magnets/version.h"
#include "nn/data_order.h"
#include "nn/optim.h"
#include "nn/tokenizer_impl.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace magnets {

void TokenizerTrainConfig::to_attrs(Attrs& a) const {
    a["train_steps"] = steps; a["train_batch_size"] = batch_size; a["train_lr"] = lr;
    a["train_warmup"] = warmup; a["train_lr_min_ratio"] = lr_min_ratio;
    a["train_seed"] = static_cast<int64_t>(seed); a["train_restart_every"] = restart_every;
    a["train_dead_threshold"] = dead_threshold; a["train_log_every"] = log_every;
    a["train_checkpoint_every"] = checkpoint_every;
}

TokenizerTrainConfig TokenizerTrainConfig::from_attrs(const Attrs& a, const std::string& path) {
    TokenizerTrainConfig t;
    t.steps = attr_int(a, "train_steps", path); t.batch_size = attr_int(a, "train_batch_size", path);
    t.lr = attr_double(a, "train_lr", path); t.warmup = attr_int(a, "train_warmup", path);
    t.lr_min_ratio = attr_double(a, "train_lr_min_ratio", path);
    t.seed = static_cast<uint64_t>(attr_int(a, "train_seed", path));
    t.restart_every = attr_int(a, "train_restart_every", path);
    t.dead_threshold = attr_double(a, "train_dead_threshold", path);
    t.log_every = attr_int(a, "train_log_every", path);
    t.checkpoint_every = attr_int(a, "train_checkpoint_every", path);
    return t;
}

std::vector<std::string> tokenizer_preset_names() { return {"tiny", "demo", "quality", "video-tiny", "video-demo"}; }

TokenizerPreset tokenizer_preset(const std::string& name) {
    TokenizerPreset p;
    p.name = name;
    if (name == "tiny") {
        p.description = "seconds; for tests and smoke runs";
        p.model.base_channels = 8; p.model.hidden_channels = 16; p.model.res_blocks = 1;
        p.model.codebook_size = 64; p.model.code_dim = 8;
        p.train.steps = 30; p.train.batch_size = 16; p.train.lr = 3e-3; p.train.warmup = 5;
        p.train.restart_every = 10; p.train.log_every = 5; p.train.checkpoint_every = 0;
    } else if (name == "demo") {
        p.description = "under 10 minutes on 2 cores; Fashion-MNIST 32x32 -> 8x8 tokens, 512 codes";
        p.model.base_channels = 64; p.model.hidden_channels = 64; p.model.res_blocks = 2;
        p.model.codebook_size = 512; p.model.code_dim = 32;
        p.train.steps = 3500; p.train.batch_size = 64; p.train.lr = 3e-3; p.train.warmup = 100;
        p.train.restart_every = 50; p.train.log_every = 50; p.train.checkpoint_every = 500;
    } else if (name == "quality") {
        // A twice-as-wide model (128/128, tail 32) trained for 2,000 steps reached only
        // 23.64 dB in 19 minutes: at this budget steps matter more than width.
        p.description = "about 22 minutes on 2 cores; the demo model trained twice as long";
        p.model.base_channels = 64; p.model.hidden_channels = 64; p.model.res_blocks = 2;
        p.model.codebook_size = 512; p.model.code_dim = 32; p.model.tail_channels = 16;
        p.train.steps = 7000; p.train.batch_size = 64; p.train.lr = 3e-3; p.train.warmup = 100;
        p.train.restart_every = 50; p.train.log_every = 50; p.train.checkpoint_every = 500;
    } else if (name == "video-tiny") {
        // Moving Fashion-MNIST clips of 8 frames at 32x32, slots of 4 frames: 2x4x4 tokens.
        p.description = "seconds; video tests: 8-frame 32x32 clips -> 2x4x4 tokens, 64 codes";
        p.model.image_size = 32; p.model.num_down = 3; p.model.frames = 4; p.model.clip_frames = 8;
        p.model.base_channels = 8; p.model.hidden_channels = 16; p.model.res_blocks = 1;
        p.model.codebook_size = 64; p.model.code_dim = 8;
        p.train.steps = 30; p.train.batch_size = 16; p.train.lr = 3e-3; p.train.warmup = 5;
        p.train.restart_every = 10; p.train.log_every = 5; p.train.checkpoint_every = 0;
    } else if (name == "video-demo") {
        // Moving Fashion-MNIST, 16 frames of 64x64 -> 4 slots of 4 frames, 8x8 tokens each.
        p.description = "10 minutes on 2 cores; Moving Fashion-MNIST 16x64x64 -> 4x8x8 tokens, 512 codes";
        p.model.image_size = 64; p.model.num_down = 3; p.model.frames = 4; p.model.clip_frames = 16;
        p.model.base_channels = 32; p.model.hidden_channels = 64; p.model.res_blocks = 2;
        p.model.codebook_size = 512; p.model.code_dim = 32; p.model.tail_channels = 16;
        p.train.steps = 3000; p.train.batch_size = 32; p.train.lr = 3e-3; p.train.warmup = 100;
        p.train.restart_every = 50; p.train.log_every = 50; p.train.checkpoint_every = 500;
    } else {
        std::string names;
        for (auto& n : tokenizer_preset_names()) names += (names.empty() ? "" : ", ") + n;
        throw Error("unknown tokenizer preset '" + name + "'", {}, {}, "choose one of: " + names);
    }
    return p;
}

static Checkpoint make_checkpoint(Tokenizer& tok) {
    Checkpoint ck;
    ck.format = tokenizer_format;
    ck.format_version = tokenizer_format_version;
    tok.config().to_attrs(ck.attrs);
    tok.impl().params_to_host();
    for (auto& p : tok.impl().params()) ck.weights[p.name] = *p.w;
    return ck;
}

void save_tokenizer(const Tokenizer& tok, const std::string& path, const std::string& creator) {
    Checkpoint ck = make_checkpoint(const_cast<Tokenizer&>(tok));
    write_checkpoint(path, ck, creator);
}

static void load_weights(Tokenizer& tok, const Checkpoint& ck, const std::string& path) {
    tok.impl().params_to_host(); // a partial load must not leave stale device weights behind
    for (auto& pr : tok.impl().params()) {
        const std::string& n = pr.name;
        Tensor* w = pr.w;
        auto it = ck.weights.find(n);
        if (it == ck.weights.end())
            throw Error("cannot load tokenizer", path, "weight '" + n + "' is missing",
                        "the file is damaged or was written by an incompatible version; retrain the tokenizer");
        if (it->second.shape() != w->shape())
            throw Error("cannot load tokenizer", path,
                        "weight '" + n + "' has shape " + it->second.shape_str() + ", expected " + w->shape_str(),
                        "the file is damaged; retrain the tokenizer");
        // into the existing storage: the optimizer holds pointers to it
        const Tensor src = it->second.clone();
        check(w->is_contiguous(), "cannot load tokenizer", "parameter " + n + " is not contiguous");
        std::memcpy(w->data(), src.data(), sizeof(float) * static_cast<size_t>(src.numel()));
        const float* v = w->data();
        for (int64_t i = 0; i < w->numel(); ++i)
            if (!std::isfinite(v[i]))
                throw Error("cannot load tokenizer", path,
                            "weight '" + n + "' holds a non-finite value (NaN or infinity) at index " + std::to_string(i),
                            "the run that wrote it diverged or the file is damaged; use an earlier checkpoint or retrain");
    }
    tok.impl().sync.host_changed();
}

Tokenizer Tokenizer::load(const std::string& path, std::shared_ptr<Backend> backend) {
    Checkpoint ck = read_checkpoint(path, tokenizer_format, tokenizer_format_version, false);
    Tokenizer tok(TokenizerConfig::from_attrs(ck.attrs, path), std::move(backend));
    load_weights(tok, ck, path);
    return tok;
}

namespace {

using nn::DataOrder;

double perplexity_of(const std::vector<int64_t>& counts, int64_t* used) {
    double total = 0.0;
    for (int64_t c : counts) total += static_cast<double>(c);
    double h = 0.0;
    int64_t u = 0;
    for (int64_t c : counts) {
        if (c <= 0) continue;
        ++u;
        const double p = static_cast<double>(c) / total;
        h -= p * std::log(p);
    }
    if (used) *used = u;
    return total > 0 ? std::exp(h) : 0.0;
}

// Sets codes `which` to rows of the current batch's encoder outputs drawn by (seed, purpose, step).
void reseed_codes(Tokenizer::Impl& m, const std::vector<int64_t>& which, const Philox& rng, const char* purpose,
                  int64_t step) {
    if (which.empty()) return;
    const int64_t rows = m.z_rows.dim(0), c = m.cfg.code_dim;
    const uint64_t s = stream_id(purpose, static_cast<uint64_t>(step));
    std::vector<float> staging;
    const float* zr = m.host_view(m.z_rows, staging);
    m.codebook_to_host(); // the optimizer may have moved the device's copy
    for (size_t i = 0; i < which.size(); ++i) {
        const int64_t k = which[i];
        const int64_t r = rng.below(s, i, static_cast<uint32_t>(rows));
        std::memcpy(m.codebook.data() + k * c, zr + r * c, sizeof(float) * static_cast<size_t>(c));
        std::memcpy(m.ema_sum.data() + k * c, zr + r * c, sizeof(float) * static_cast<size_t>(c));
        m.ema_count.data()[k] = 1.0f;
    }
    m.codebook_to_device();
}

} // namespace

int64_t train_tokenizer(Tokenizer& tok, const ImageSet& data, const TokenizerTrainOptions& opt,
                        const std::function<void(const TokenizerLog&)>& on_log) {
    Tokenizer::Impl& m = tok.impl();
    const TokenizerConfig& cfg = m.cfg;
    const TokenizerTrainConfig& tc = opt.train;
    const int64_t K = cfg.codebook_size;
    check(data.count() > 0, "cannot train tokenizer", "the dataset is empty");
    if (data.frames != 1 || data.channels != cfg.in_channels() || data.height != cfg.image_size ||
        data.width != cfg.image_size)
        throw Error("cannot train tokenizer", data.source,
                    "items are " + std::to_string(data.frames) + "x" + std::to_string(data.channels) + "x" +
                        std::to_string(data.height) + "x" + std::to_string(data.width) +
                        " (frames x channels x height x width), the tokenizer expects 1x" +
                        std::to_string(cfg.in_channels()) + "x" + std::to_string(cfg.image_size) + "x" +
                        std::to_string(cfg.image_size),
                    cfg.video() ? "cut video clips into slots of the tokenizer's frames (clips_to_slots)"
                                : "load the dataset at the tokenizer's image size and channel count");
    check(tc.steps > 0 && tc.batch_size > 0, "cannot train tokenizer", "steps and batch size must be positive");
    check(!opt.output.empty(), "cannot train tokenizer", "no output path");

    // AdamW on the backend's copies (device memory on a GPU: Impl::params_to_device).
    nn::Adam adam({}, *m.be);
    m.params_to_device();
    for (auto& p : m.params()) {
        if (p.name == "quant.codebook" && cfg.quantizer == Quantizer::ema) continue;
        check(p.w->is_contiguous() && p.g->is_contiguous(), "cannot train tokenizer",
              "parameter " + p.name + " is not contiguous");
        adam.add(p.name, p.W(), p.G(), p.w->shape(), false);
    }
    Philox rng(tc.seed);
    std::vector<int64_t> window(static_cast<size_t>(K), 0), log_window(static_cast<size_t>(K), 0);
    int64_t step = 0;

    if (opt.resume) {
        Checkpoint ck = read_checkpoint(opt.output, tokenizer_format, tokenizer_format_version, true);
        const TokenizerConfig saved = TokenizerConfig::from_attrs(ck.attrs, opt.output);
        Attrs a1, a2;
        saved.to_attrs(a1);
        cfg.to_attrs(a2);
        if (a1 != a2)
            throw Error("cannot resume", opt.output, "the checkpoint's model configuration differs from the requested one",
                        "resume with the same preset and model options, or train to a new output");
        const TokenizerTrainConfig st = TokenizerTrainConfig::from_attrs(ck.attrs, opt.output);
        if (st.seed != tc.seed || st.batch_size != tc.batch_size)
            throw Error("cannot resume", opt.output, "seed or batch size differs from the interrupted run",
                        "resume with --seed " + std::to_string(st.seed) + " --batch-size " + std::to_string(st.batch_size));
        if (!ck.has_state())
            throw Error("cannot resume", opt.output, "the file holds weights only (no training state)",
                        "train again without --resume");
        // The data order is a function of (seed, count): resuming on other data
        // would silently train on a different sequence.
        const std::string src = attr_string(ck.state_attrs, "data_source", opt.output);
        const std::string split = attr_string(ck.state_attrs, "data_split", opt.output);
        const int64_t count = attr_int(ck.state_attrs, "data_count", opt.output);
        if (src != data.source || split != data.split || count != data.count())
            throw Error("cannot resume", opt.output,
                        "the interrupted run trained on " + src + " (" + split + ", " + std::to_string(count) +
                            " images), not " + data.source + " (" + data.split + ", " + std::to_string(data.count()) + ")",
                        "resume with the same --dataset, --split and --limit");
        load_weights(tok, ck, opt.output);
        adam.load(ck, opt.output);
        for (auto [name, dst] : {std::pair<const char*, Tensor*>{"ema_count", &m.ema_count}, {"ema_sum", &m.ema_sum}}) {
            auto it = ck.state.find(name);
            check(it != ck.state.end() && it->second.shape() == dst->shape(), "cannot resume",
                  std::string("training state lacks ") + name);
            *dst = it->second.clone();
        }
        for (auto [name, dst] : {std::pair<const char*, std::vector<int64_t>*>{"usage_window", &window}, {"log_window", &log_window}}) {
            auto it = ck.state.find(name);
            check(it != ck.state.end() && it->second.numel() == K, "cannot resume", std::string("training state lacks ") + name);
            for (int64_t k = 0; k < K; ++k) (*dst)[static_cast<size_t>(k)] = static_cast<int64_t>(it->second.data()[k]);
        }
        step = attr_int(ck.state_attrs, "step", opt.output);
        log_info("resuming from step %lld of %lld (%s)", static_cast<long long>(step), static_cast<long long>(tc.steps),
                 opt.output.c_str());
    }

    auto save = [&](int64_t done) {
        Checkpoint ck = make_checkpoint(tok);
        tc.to_attrs(ck.attrs);
        adam.save(ck);
        ck.state["ema_count"] = m.ema_count;
        ck.state["ema_sum"] = m.ema_sum;
        Tensor w({K}), lw({K});
        for (int64_t k = 0; k < K; ++k) {
            w.data()[k] = static_cast<float>(window[static_cast<size_t>(k)]);
            lw.data()[k] = static_cast<float>(log_window[static_cast<size_t>(k)]);
        }
        ck.state["usage_window"] = w;
        ck.state["log_window"] = lw;
        ck.state_attrs["step"] = done;
        ck.state_attrs["data_position"] = done * tc.batch_size;
        ck.state_attrs["seed"] = static_cast<int64_t>(tc.seed);
        ck.state_attrs["data_source"] = data.source;
        ck.state_attrs["data_split"] = data.split;
        ck.state_attrs["data_count"] = data.count();
        write_checkpoint(opt.output, ck, opt.creator);
    };

    DataOrder order(tc.seed, data.count());
    const int64_t B = tc.batch_size;
    std::vector<int64_t> index(static_cast<size_t>(B));
    std::vector<float> batch(static_cast<size_t>(B * data.pixels_per_item()));
    double t_log = now_seconds();
    int64_t images_since_log = 0;

    while (step < tc.steps) {
        if ((opt.stop && opt.stop->load()) || (opt.stop_after >= 0 && step >= opt.stop_after)) {
            save(step);
            log_info("stopped at step %lld; checkpoint written to %s", static_cast<long long>(step), opt.output.c_str());
            return step;
        }
        for (int64_t i = 0; i < B; ++i) index[static_cast<size_t>(i)] = order.item(step * B + i);
        data.gather_float(index.data(), B, batch.data());

        if (step == 0) {
            // Codebook from data: K random encoder outputs of the first batch.
            m.load_input(batch.data(), B);
            m.encoder_forward();
            m.quantize(); // for z_rows
            std::vector<int64_t> all(static_cast<size_t>(K));
            std::iota(all.begin(), all.end(), int64_t{0});
            reseed_codes(m, all, rng, "codebook-init", 0);
        }

        Tokenizer::StepLosses L = tok.forward_backward(batch.data(), B, true);
        const double lr = nn::warmup_cosine_lr(step, tc.steps, tc.warmup, tc.lr, tc.lr_min_ratio);
        adam.step(lr);
        m.sync.device_changed(*m.be);
        for (int64_t k = 0; k < K; ++k) {
            window[static_cast<size_t>(k)] += L.code_counts[static_cast<size_t>(k)];
            log_window[static_cast<size_t>(k)] += L.code_counts[static_cast<size_t>(k)];
        }
        ++step;
        images_since_log += B;

        if (!std::isfinite(L.loss))
            throw Error("training diverged", opt.output, "loss is " + std::to_string(L.loss) + " at step " + std::to_string(step),
                        "lower --lr, or resume from the last checkpoint with a smaller learning rate");

        int64_t restarted = 0;
        if (tc.restart_every > 0 && step % tc.restart_every == 0 && step < tc.steps) {
            double total = 0;
            for (int64_t c : window) total += static_cast<double>(c);
            const double limit = tc.dead_threshold * total / static_cast<double>(K);
            std::vector<int64_t> dead;
            for (int64_t k = 0; k < K; ++k)
                if (static_cast<double>(window[static_cast<size_t>(k)]) <= limit) dead.push_back(k);
            reseed_codes(m, dead, rng, "dead-code-restart", step);
            restarted = static_cast<int64_t>(dead.size());
            std::fill(window.begin(), window.end(), 0);
        }

        if (step % std::max<int64_t>(tc.log_every, 1) == 0 || step == tc.steps) {
            TokenizerLog lg;
            lg.step = step; lg.steps = tc.steps; lg.loss = L.loss; lg.recon = L.recon; lg.commit = L.commit;
            lg.psnr = L.psnr; lg.lr = lr; lg.restarted = restarted;
            int64_t used = 0;
            lg.perplexity = perplexity_of(log_window, &used);
            lg.usage = static_cast<double>(used) / static_cast<double>(K);
            const double now = now_seconds();
            lg.images_per_s = static_cast<double>(images_since_log) / std::max(now - t_log, 1e-9);
            t_log = now;
            images_since_log = 0;
            std::fill(log_window.begin(), log_window.end(), 0);
            if (on_log) on_log(lg);
        }
        if (tc.checkpoint_every > 0 && step % tc.checkpoint_every == 0 && step < tc.steps) save(step);
    }
    save(step);
    return step;
}

TokenizerEval evaluate_tokenizer(Tokenizer& tok, const ImageSet& data, int64_t batch_size, int64_t limit) {
    const TokenizerConfig& cfg = tok.config();
    check(data.frames == 1 && data.channels == cfg.in_channels() && data.height == cfg.image_size &&
              data.width == cfg.image_size,
          "cannot evaluate tokenizer", "image size or channels differ from the tokenizer's (video: pass slots)");
    const int64_t n = limit >= 0 ? std::min(limit, data.count()) : data.count();
    const int64_t per = data.pixels_per_item(), tpi = tok.tokens_per_image();
    std::vector<float> x(static_cast<size_t>(batch_size * per)), y(x.size());
    std::vector<uint16_t> ids(static_cast<size_t>(batch_size * tpi));
    std::vector<int64_t> hist(static_cast<size_t>(cfg.codebook_size), 0);
    TokenizerEval ev;
    double psnr = 0, se_total = 0;
    for (int64_t first = 0; first < n; first += batch_size) {
        const int64_t b = std::min(batch_size, n - first);
        data.to_float(first, b, x.data());
        tok.encode(x.data(), b, ids.data());
        tok.decode(ids.data(), b, y.data());
        for (int64_t i = 0; i < b * tpi; ++i) ++hist[ids[static_cast<size_t>(i)]];
        for (int64_t i = 0; i < b; ++i) {
            double se = 0;
            for (int64_t j = 0; j < per; ++j) {
                const double e = static_cast<double>(y[static_cast<size_t>(i * per + j)]) - x[static_cast<size_t>(i * per + j)];
                se += e * e;
            }
            se_total += se;
            psnr += 10.0 * std::log10(1.0 / std::max(se / static_cast<double>(per), 1e-10));
        }
    }
    ev.images = n;
    ev.psnr = n ? psnr / static_cast<double>(n) : 0;
    ev.mse = n ? se_total / static_cast<double>(n * per) : 0;
    ev.perplexity = perplexity_of(hist, &ev.codes_used);
    ev.usage = static_cast<double>(ev.codes_used) / static_cast<double>(cfg.codebook_size);
    return ev;
}

} // namespace magnets
