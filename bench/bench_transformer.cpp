// bench_transformer: nested transformer training throughput (tokens/s, every
// sub-model per step) through train_transformer, the real training loop:
// masking, joint forward/backward of all sub-models, AdamW, EMA.
//
// Uses a random token file of the given shape (the speed does not depend on
// the token values). Timing comes from the per-step log callback after
// --warmup steps. Prints one JSON object to stdout; bench/run_transformer_bench.sh
// runs it beside bench/transformer_torch.py (the same model and step in
// PyTorch) and prints the ratio. Also reports the FLOP rate (6 x forward FLOPs
// per token: forward, and backward at twice the forward) so the fraction of the
// CPU's peak can be given.
//
//   bench_transformer --threads 2 --steps 20 --warmup 3            # demo shape
//   bench_transformer --width 256 --layers 8 --batch 128            # small preset shape
#include "magnets/backend.h"
#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/rng.h"
#include "magnets/transformer.h"
#include "magnets/version.h"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

int main(int argc, char** argv) {
    magnets::TransformerConfig c;
    int64_t steps = 20, warmup = 3, batch = 64, threads = 0;
    std::string backend = "auto", factors = "8,4,2,1", nesting = "width";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) { std::fprintf(stderr, "bench_transformer: %s needs a value\n", a.c_str()); std::exit(2); }
            return argv[++i];
        };
        if (a == "--steps") steps = std::atoll(next());
        else if (a == "--warmup") warmup = std::atoll(next());
        else if (a == "--batch") batch = std::atoll(next());
        else if (a == "--threads") threads = std::atoll(next());
        else if (a == "--backend") backend = next();
        else if (a == "--K") c.codebook_size = std::atoll(next());
        else if (a == "--C") c.num_classes = std::atoll(next());
        else if (a == "--grid-h") c.grid_h = std::atoll(next());
        else if (a == "--grid-w") c.grid_w = std::atoll(next());
        else if (a == "--width") c.width = std::atoll(next());
        else if (a == "--heads") c.heads = std::atoll(next());
        else if (a == "--layers") c.layers = std::atoll(next());
        else if (a == "--mlp-ratio") c.mlp_ratio = std::atoll(next());
        else if (a == "--nesting") nesting = next();
        else if (a == "--factors") factors = next();
        else { std::fprintf(stderr, "bench_transformer: unknown option %s\n", a.c_str()); return 2; }
    }
    try {
        magnets::set_num_threads(static_cast<int>(threads));
        c.nesting = magnets::parse_nesting(nesting);
        c.factors = magnets::parse_factors(factors);
        c.validate();
        magnets::TokenFile tf;
        tf.grid_h = c.grid_h; tf.grid_w = c.grid_w; tf.codebook_size = c.codebook_size;
        tf.split = "bench"; tf.source = "random"; tf.tokenizer_hash = "0000000000000000";
        const int64_t items = 4096;
        magnets::Philox rng(1);
        for (int64_t i = 0; i < items; ++i) {
            tf.labels.push_back(static_cast<int32_t>(rng.below(1, static_cast<uint64_t>(i), static_cast<uint32_t>(c.num_classes))));
            for (int64_t j = 0; j < c.tokens(); ++j)
                tf.tokens.push_back(static_cast<uint16_t>(rng.below(2, static_cast<uint64_t>(i * c.tokens() + j), static_cast<uint32_t>(c.codebook_size))));
        }
        magnets::Transformer m(c, std::shared_ptr<magnets::Backend>(magnets::make_backend(backend)));
        m.init(1);
        magnets::TransformerTrainOptions o;
        o.train.steps = warmup + steps;
        o.train.batch_size = batch;
        o.train.warmup = 0;
        o.train.log_every = 1;
        o.train.checkpoint_every = 0;
        o.train.val_every = 0;
        o.train.loss_limit = 1e9;
        char tmpl[] = "/tmp/bench_transformer_XXXXXX";
        const int fd = mkstemp(tmpl);
        if (fd >= 0) close(fd);
        o.output = tmpl;
        double t_start = 0, t_end = 0, final_loss = 0;
        o.stop_after = warmup + steps; // stop before the final checkpoint write is timed
        train_transformer(m, tf, nullptr, o, [&](const magnets::TransformerLog& lg) {
            if (lg.step == warmup) t_start = magnets::now_seconds();
            if (lg.step == warmup + steps) { t_end = magnets::now_seconds(); final_loss = lg.loss; }
        });
        std::remove(tmpl);
        const double secs = t_end - t_start;
        const double tokens = static_cast<double>(steps * batch * c.tokens());
        double flops_per_seq = 0;
        for (int64_t p : c.factors) flops_per_seq += 3.0 * c.forward_flops(p);
        const double gflops = flops_per_seq * static_cast<double>(steps * batch) / secs / 1e9;
        std::printf("{\"impl\":\"magnets\",\"version\":\"%s\",\"backend\":\"%s\",\"threads\":%d,\"steps\":%" PRId64
                    ",\"batch\":%" PRId64 ",\"seconds\":%.4f,\"tokens_per_s\":%.1f,\"seq_per_s\":%.2f,"
                    "\"gflop_per_s\":%.2f,\"final_loss\":%.4f}\n",
                    magnets::version_string, m.backend().name(), magnets::num_threads(), steps, batch, secs,
                    tokens / secs, static_cast<double>(steps * batch) / secs, gflops, final_loss);
    } catch (const magnets::Error& e) {
        std::fprintf(stderr, "bench_transformer: %s\n", e.what());
        return 1;
    }
    return 0;
}
