// bench_sampler: sampling throughput (images/s) of magnets::sample, MaskGIT
// decoding with decode-time model scaling and the KV cache (METHOD 6-7).
//
// Builds a nested transformer of the given shape with random weights (init,
// then matrices N(0, 0.5^2 / in), the head N(0, 2^2 / in), embeddings
// N(0, 0.5^2), so the logits are far from uniform; the speed hardly depends on
// the values), runs an untimed warm-up of --warmup-images, then times
// magnets::sample over --images images in batches of --batch. Classes cycle
// over 0..C-1. Prints one JSON object to stdout; bench/run_sampler_bench.sh
// runs it beside bench/sampler_torch.py (the same algorithm in PyTorch).
//
// --forward-only times instead one full forward of the full model (p = 1)
// over --batch sequences of S = N + 1 tokens through nn::Decoder::forward with
// a refresh (the last layer on the N image rows, as in sampling), plus the
// head on those rows, and reports the GFLOP/s of
// magnets::step_flops(cfg, 1, S, S, N) * batch (median of --iters runs after
// --warmup runs).
//
//   bench_sampler --schedule 8:3,4:3,2:3,1:3 --cache on-switch --images 64 --batch 64
//   bench_sampler --schedule 1:12 --cache none --cfg 2.0 --threads 2
//   bench_sampler --forward-only --width 768 --heads 16 --layers 24 --grid-h 16 --grid-w 16 --K 1024 --C 1000 --batch 8
#include "magnets/backend.h"
#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/rng.h"
#include "magnets/sampler.h"
#include "magnets/transformer.h"
#include "magnets/version.h"
#include "nn/decoder.h"
#include "nn/transformer_impl.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void usage() {
    std::fprintf(stderr,
                 "usage: bench_sampler [options]\n"
                 "  model:    --width D --heads H --layers L --mlp-ratio R --K K --C C --grid-h h --grid-w w\n"
                 "            --factors 8,4,2,1 --nesting width|mone|mlp\n"
                 "  sampling: --images N --batch B --schedule 8:3,4:3,2:3,1:3 --cache on-switch|never|every:k|none\n"
                 "            --cfg SCALE (default 2.0; 0 = off) --warmup-images N --seed S\n"
                 "  forward:  --forward-only [--iters N --warmup N]   (full model, B sequences)\n"
                 "  machine:  --threads T --backend auto|ref|onednn|cuda\n");
}

// Random weights whose logits are not uniform.
void randomize(magnets::Transformer& m, uint64_t seed) {
    m.init(seed);
    const magnets::Philox rng(seed);
    uint64_t stream = 0;
    for (const std::string& name : m.param_names()) {
        magnets::Tensor& t = m.param(name);
        ++stream;
        if (t.rank() != 2) continue; // biases 0, LayerNorm gains 1 (from init)
        const bool emb = name.find("_emb.") != std::string::npos;
        const double gain = name.rfind("head.", 0) == 0 ? 2.0 : 0.5;
        const float scale = emb ? 0.5f : static_cast<float>(gain / std::sqrt(static_cast<double>(t.dim(1))));
        float* w = t.data();
        const int64_t n = t.numel();
        for (int64_t i = 0; i < n; ++i) w[i] = scale * rng.normal(stream, static_cast<uint64_t>(i));
    }
}

std::string model_json(const magnets::TransformerConfig& c) {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "{\"K\":%" PRId64 ",\"C\":%" PRId64 ",\"grid\":[%" PRId64 ",%" PRId64 ",%" PRId64 "],\"width\":%" PRId64
                  ",\"heads\":%" PRId64 ",\"layers\":%" PRId64 ",\"mlp_ratio\":%" PRId64
                  ",\"nesting\":\"%s\",\"factors\":\"%s\",\"params\":%" PRId64 "}",
                  c.codebook_size, c.num_classes, c.grid_t, c.grid_h, c.grid_w, c.width, c.heads, c.layers,
                  c.mlp_ratio, magnets::nesting_name(c.nesting), magnets::factors_to_string(c.factors).c_str(),
                  c.num_params());
    return buf;
}

} // namespace

int main(int argc, char** argv) {
    magnets::TransformerConfig c;
    c.width = 256;
    c.heads = 8;
    c.layers = 8;
    int64_t images = 64, batch = 64, threads = 0, warmup_images = -1, iters = 5, warmup = 1;
    uint64_t seed = 1;
    double cfg_scale = 2.0;
    bool forward_only = false;
    std::string backend = "auto", factors = "8,4,2,1", nesting = "width", schedule = "8:3,4:3,2:3,1:3",
                cache = "on-switch";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) { std::fprintf(stderr, "bench_sampler: %s needs a value\n", a.c_str()); std::exit(2); }
            return argv[++i];
        };
        if (a == "--images") images = std::atoll(next());
        else if (a == "--batch") batch = std::atoll(next());
        else if (a == "--schedule") schedule = next();
        else if (a == "--cache") cache = next();
        else if (a == "--cfg") cfg_scale = std::atof(next());
        else if (a == "--warmup-images") warmup_images = std::atoll(next());
        else if (a == "--seed") seed = std::strtoull(next(), nullptr, 10);
        else if (a == "--forward-only") forward_only = true;
        else if (a == "--iters") iters = std::atoll(next());
        else if (a == "--warmup") warmup = std::atoll(next());
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
        else if (a == "-h" || a == "--help") { usage(); return 0; }
        else { std::fprintf(stderr, "bench_sampler: unknown option %s\n", a.c_str()); usage(); return 2; }
    }
    if (images < 1 || batch < 1 || iters < 1 || warmup < 0) {
        std::fprintf(stderr, "bench_sampler: --images, --batch and --iters must be positive\n");
        return 2;
    }
    if (warmup_images < 0) warmup_images = std::min<int64_t>(batch, 8);
    try {
        magnets::set_num_threads(static_cast<int>(threads));
        c.nesting = magnets::parse_nesting(nesting);
        c.factors = magnets::parse_factors(factors);
        c.validate();
        magnets::Transformer m(c, std::shared_ptr<magnets::Backend>(magnets::make_backend(backend)));
        randomize(m, seed);
        const int64_t N = c.tokens(), S = c.seq(), K = c.codebook_size;

        if (forward_only) {
            magnets::Transformer::Impl& im = m.impl();
            magnets::nn::Decoder dec(im, batch);
            const magnets::Philox rng(seed + 1);
            std::vector<int32_t> ids(static_cast<size_t>(batch * S)), pos(static_cast<size_t>(batch * S));
            for (int64_t b = 0; b < batch; ++b) {
                ids[static_cast<size_t>(b * S)] = static_cast<int32_t>(c.class_id(b % c.num_classes));
                for (int64_t j = 1; j < S; ++j) { // about half masked, as mid-decoding
                    const uint64_t k = static_cast<uint64_t>(b * S + j);
                    ids[static_cast<size_t>(b * S + j)] = rng.below(1, k, 2) == 0
                        ? static_cast<int32_t>(c.mask_id())
                        : static_cast<int32_t>(rng.below(2, k, static_cast<uint32_t>(K)));
                }
                for (int64_t j = 0; j < S; ++j) pos[static_cast<size_t>(b * S + j)] = static_cast<int32_t>(j);
            }
            const int64_t r = c.sub(1).resid;
            std::vector<int32_t> image_rows; // the last layer goes on with the image rows only
            for (int64_t b = 0; b < batch; ++b)
                for (int64_t j = 1; j < S; ++j) image_rows.push_back(static_cast<int32_t>(j));
            magnets::nn::BackendBuffer logits(*im.be); // in the backend's memory (a device's on a GPU)
            logits.grow(static_cast<size_t>(batch * N * K));
            auto run = [&]() {
                const float* hidden = dec.forward(1, ids.data(), pos.data(), S, true, image_rows.data(), N);
                im.be->matmul_rowstable(magnets::ConstMat(hidden, batch * N, r, r),
                                        magnets::ConstMat(dec.weights()(im.head_w), K, r, c.width),
                                        dec.weights()(im.head_b), magnets::Mat{logits.data(), batch * N, K, K});
                im.be->synchronize();
            };
            for (int64_t i = 0; i < warmup; ++i) run();
            std::vector<double> times;
            for (int64_t i = 0; i < iters; ++i) {
                const double t0 = magnets::now_seconds();
                run();
                times.push_back(magnets::now_seconds() - t0);
            }
            std::vector<double> sorted = times;
            std::sort(sorted.begin(), sorted.end());
            const double median = sorted[sorted.size() / 2], best = sorted.front();
            double mean = 0;
            for (double t : times) mean += t;
            mean /= static_cast<double>(times.size());
            const double flops = magnets::step_flops(c, 1, S, S, N) * static_cast<double>(batch);
            std::printf("{\"impl\":\"magnets\",\"mode\":\"forward\",\"version\":\"%s\",\"backend\":\"%s\",\"threads\":%d,"
                        "\"batch\":%" PRId64 ",\"seq\":%" PRId64 ",\"iters\":%" PRId64 ",\"seconds\":%.5f,"
                        "\"seconds_mean\":%.5f,\"seconds_best\":%.5f,\"gflop\":%.3f,\"gflop_per_s\":%.2f,"
                        "\"gflop_per_s_best\":%.2f,\"seq_per_s\":%.2f,\"model\":%s}\n",
                        magnets::version_string, m.backend().name(), magnets::num_threads(), batch, S, iters, median,
                        mean, best, flops / 1e9, flops / median / 1e9, flops / best / 1e9,
                        static_cast<double>(batch) / median, model_json(c).c_str());
            return 0;
        }

        magnets::SampleConfig sc;
        sc.schedule = magnets::parse_size_schedule(schedule);
        sc.cache = magnets::parse_cache_policy(cache);
        sc.cfg_scale = cfg_scale;
        sc.seed = seed;
        sc.validate(c);
        const int64_t total = std::max(images, warmup_images);
        std::vector<int32_t> classes(static_cast<size_t>(total));
        for (int64_t i = 0; i < total; ++i) classes[static_cast<size_t>(i)] = static_cast<int32_t>(i % c.num_classes);
        if (warmup_images > 0) magnets::sample(m, sc, classes.data(), warmup_images, 0, batch);
        const double t0 = magnets::now_seconds();
        const magnets::SampleResult res = magnets::sample(m, sc, classes.data(), images, 0, batch);
        const double secs = magnets::now_seconds() - t0;
        int64_t refreshes = 0;
        for (const auto& st : res.steps) refreshes += st.refresh ? 1 : 0;
        const double gflop_img = res.flops_per_image / 1e9;
        std::printf("{\"impl\":\"magnets\",\"mode\":\"sample\",\"version\":\"%s\",\"backend\":\"%s\",\"threads\":%d,"
                    "\"schedule\":\"%s\",\"steps\":%" PRId64 ",\"cache\":\"%s\",\"refreshes\":%" PRId64
                    ",\"cfg\":%.3f,\"batch\":%" PRId64 ",\"images\":%" PRId64 ",\"warmup_images\":%" PRId64
                    ",\"seconds\":%.4f,\"images_per_s\":%.4f,\"gflop_per_image\":%.4f,\"gflop_per_s\":%.2f,"
                    "\"model\":%s}\n",
                    magnets::version_string, m.backend().name(), magnets::num_threads(),
                    magnets::size_schedule_to_string(sc.schedule).c_str(), sc.steps(),
                    magnets::cache_policy_to_string(sc.cache).c_str(), refreshes, cfg_scale, batch, images,
                    warmup_images, secs, static_cast<double>(images) / secs, gflop_img,
                    gflop_img * static_cast<double>(images) / secs, model_json(c).c_str());
    } catch (const magnets::Error& e) {
        std::fprintf(stderr, "bench_sampler: %s\n", e.what());
        return 1;
    }
    return 0;
}
