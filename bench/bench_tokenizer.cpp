// bench_tokenizer: tokenizer training throughput (images/s) through the public API.
//
// Runs train_tokenizer on Fashion-MNIST with a preset (demo by default) and
// times the steps after a warm-up from the per-step log callback, so the number
// covers everything a training step does: batch gathering, forward, backward,
// EMA codebook update, Adam, usage statistics. Prints one JSON object to stdout;
// bench/run_tokenizer_bench.sh runs it beside the same model in PyTorch
// (bench/tokenizer_torch.py) and prints the ratio.
//
//   bench_tokenizer --preset demo --steps 30 --warmup 5 --threads 2
//   bench_tokenizer --print-config          # the model the PyTorch side must build
//   bench_tokenizer --mode fwdbwd           # Tokenizer::forward_backward on one batch only
#include "magnets/backend.h"
#include "magnets/dataset.h"
#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/tokenizer.h"
#include "magnets/version.h"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

struct BenchOptions {
    std::string preset = "demo";
    std::string backend = "auto";
    std::string mode = "train"; // train: train_tokenizer steps; fwdbwd: forward_backward only
    int64_t steps = 30, warmup = 5, batch_size = 0, threads = 0, limit = -1;
    bool print_config = false;
};

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "bench_tokenizer: %s\n"
                 "usage: bench_tokenizer [--preset NAME] [--steps N] [--warmup N] [--batch-size N]\n"
                 "                       [--threads N] [--backend NAME] [--mode train|fwdbwd] [--limit N]\n"
                 "                       [--print-config]\n",
                 msg);
    std::exit(2);
}

BenchOptions parse(int argc, char** argv) {
    BenchOptions o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value for " + a).c_str());
            return argv[++i];
        };
        auto integer = [&]() -> int64_t {
            std::string v = value();
            char* end = nullptr;
            long long n = std::strtoll(v.c_str(), &end, 10);
            if (v.empty() || *end || n < 0) usage(("bad value for " + a + ": " + v).c_str());
            return n;
        };
        if (a == "--preset") o.preset = value();
        else if (a == "--backend") o.backend = value();
        else if (a == "--mode") o.mode = value();
        else if (a == "--steps") o.steps = integer();
        else if (a == "--warmup") o.warmup = integer();
        else if (a == "--batch-size") o.batch_size = integer();
        else if (a == "--threads") o.threads = integer();
        else if (a == "--limit") o.limit = integer();
        else if (a == "--print-config") o.print_config = true;
        else if (a == "-h" || a == "--help") usage("tokenizer training throughput");
        else usage(("unknown option " + a).c_str());
    }
    if (o.mode != "train" && o.mode != "fwdbwd") usage("--mode must be train or fwdbwd");
    if (o.steps < 1) usage("--steps must be positive");
    return o;
}

// The resolved model and the training hyperparameters that affect cost, as
// JSON: the contract with bench/tokenizer_torch.py.
void print_config(const magnets::TokenizerConfig& m, const magnets::TokenizerTrainConfig& t) {
    std::printf("{\"image_size\":%" PRId64 ",\"channels\":%" PRId64 ",\"base_channels\":%" PRId64
                ",\"hidden_channels\":%" PRId64 ",\"num_down\":%" PRId64 ",\"res_blocks\":%" PRId64
                ",\"codebook_size\":%" PRId64 ",\"code_dim\":%" PRId64 ",\"tail_channels\":%" PRId64 ",\"quantizer\":\"%s\",\"commitment\":%g"
                ",\"ema_decay\":%g,\"recon_loss\":\"%s\",\"batch_size\":%" PRId64 ",\"lr\":%g,\"warmup\":%" PRId64
                ",\"steps\":%" PRId64 ",\"lr_min_ratio\":%g}\n",
                m.image_size, m.channels, m.base_channels, m.hidden_channels, m.num_down, m.res_blocks,
                m.codebook_size, m.code_dim, m.tail_channels, magnets::quantizer_name(m.quantizer), m.commitment, m.ema_decay,
                magnets::recon_loss_name(m.recon_loss), t.batch_size, t.lr, t.warmup, t.steps, t.lr_min_ratio);
}

int run(const BenchOptions& o) {
    magnets::TokenizerPreset preset = magnets::tokenizer_preset(o.preset);
    magnets::TokenizerTrainConfig train = preset.train;
    if (o.batch_size > 0) train.batch_size = o.batch_size;
    if (o.print_config) {
        print_config(preset.model, train);
        return 0;
    }
    magnets::set_log_level(magnets::LogLevel::warn);
    magnets::set_num_threads(static_cast<int>(o.threads));
    std::shared_ptr<magnets::Backend> be(magnets::make_backend(o.backend));
    magnets::ImageSet data =
        magnets::load_fashion_mnist("train", preset.model.image_size);
    if (o.limit > 0 && o.limit < data.count()) {
        data.labels.resize(static_cast<size_t>(o.limit));
        data.pixels.resize(static_cast<size_t>(o.limit * data.pixels_per_item()));
    }

    magnets::Tokenizer tok(preset.model, be);
    tok.init(train.seed);
    const int64_t total = o.warmup + o.steps;
    double t_start = 0, t_end = 0;

    if (o.mode == "fwdbwd") {
        std::vector<float> x(static_cast<size_t>(train.batch_size * data.pixels_per_item()));
        data.to_float(0, train.batch_size, x.data());
        for (int64_t s = 0; s < total; ++s) {
            if (s == o.warmup) t_start = magnets::now_seconds();
            tok.forward_backward(x.data(), train.batch_size);
        }
        t_end = magnets::now_seconds();
    } else {
        // Timestamps at the end of every step; the window is steps (warmup, total].
        std::vector<double> stamps(static_cast<size_t>(total + 1), 0.0);
        train.steps = total;
        train.log_every = 1;
        train.checkpoint_every = 0;
        magnets::TokenizerTrainOptions opt;
        opt.train = train;
        opt.output = (std::filesystem::temp_directory_path() /
                      ("bench_tokenizer_" + std::to_string(getpid()) + ".h5"))
                         .string();
        const double t0 = magnets::now_seconds();
        magnets::train_tokenizer(tok, data, opt, [&](const magnets::TokenizerLog& l) {
            if (l.step >= 0 && l.step <= total) stamps[static_cast<size_t>(l.step)] = magnets::now_seconds();
        });
        std::filesystem::remove(opt.output);
        t_start = o.warmup > 0 ? stamps[static_cast<size_t>(o.warmup)] : t0;
        t_end = stamps[static_cast<size_t>(total)];
        if (t_start <= 0 || t_end <= t_start)
            throw magnets::Error("bench: the log callback did not report every step");
    }
    const double seconds = t_end - t_start;
    const double ips = static_cast<double>(o.steps * train.batch_size) / seconds;
    std::printf("{\"impl\":\"magnets\",\"version\":\"%s\",\"backend\":\"%s\",\"mode\":\"%s\",\"preset\":\"%s\","
                "\"threads\":%d,\"batch_size\":%" PRId64 ",\"steps\":%" PRId64 ",\"warmup\":%" PRId64
                ",\"seconds\":%.4f,\"ms_per_step\":%.3f,\"images_per_s\":%.2f}\n",
                magnets::version_string, be->name(), o.mode.c_str(), o.preset.c_str(), magnets::num_threads(),
                train.batch_size, o.steps, o.warmup, seconds, 1e3 * seconds / static_cast<double>(o.steps), ips);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    BenchOptions o = parse(argc, argv);
    try {
        return run(o);
    } catch (const magnets::Error& e) {
        std::fprintf(stderr, "bench_tokenizer: error: %s\n", e.what());
        if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
        return 1;
    }
}
