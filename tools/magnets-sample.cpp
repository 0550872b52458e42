// magnets-sample: generate token grids (and PNGs) with decode-time model
// scaling and a KV cache (METHOD sections 6-7).
//
// A thin program over magnets/sampler.h: it resolves the classes to generate,
// runs the sampler, writes a token file with the sampling parameters and the
// per-step accounting, and, given the tokenizer, one PNG per sample, a grid,
// an MP4 of the decoding and a JSON-lines trace. Exit status as in tools/cli.h.
#include "cli.h"
#include "clip_output.h"

#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets/image.h"
#include "magnets/log.h"
#include "magnets/plot.h"
#include "magnets/sampler.h"
#include "magnets/tokenizer.h"
#include "magnets/transformer.h"
#include "magnets/video.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace magnets::cli;
constexpr const char* prog = "magnets-sample";

const std::vector<OptionSpec> options = {
    {"m,model", ArgKind::text, "FILE", "nested transformer checkpoint (magnets-train / magnets-distill)"},
    {"o,output", ArgKind::text, "FILE", "token file to write (HDF5): the samples, parameters and accounting"},
    {"schedule", ArgKind::text, "P:K,..", "size schedule: sub-model m_P for K steps, e.g. 8:3,4:3,2:3,1:3 or 1:12 "
                                          "(default: the checkpoint's sample_schedule, else 12 steps over its factors)"},
    {"mask-schedule", ArgKind::text, "NAME", "fraction still masked after step t: cosine, linear, square, cubic, sqrt",
     "cosine"},
    {"temperature", ArgKind::real, "X", "token sampling temperature (start of a linear ramp)", "1.0"},
    {"temperature-end", ArgKind::real, "X", "token temperature at the last step (default: --temperature)"},
    {"choice-temperature", ArgKind::real, "X", "Gumbel noise on the confidences, annealed by (1 - t/T)", "4.5"},
    {"top-k", ArgKind::integer, "N", "sample only among the N most likely codes (0 = all)", "0"},
    {"cfg", ArgKind::real, "S", "classifier-free guidance scale: l = l_c + S (l_c - l_NULL); 0 = off", "0"},
    {"cfg-ramp", ArgKind::flag, nullptr, "ramp the guidance scale linearly: s_t = --cfg * t / T"},
    {"class", ArgKind::texts, "C", "class index or name to generate (repeat for several)"},
    {"per-class", ArgKind::integer, "N", "N samples of every class (a class-conditional grid)"},
    {"count", ArgKind::integer, "N", "samples per --class, or unconditional samples without --class", "16"},
    {"batch-size", ArgKind::integer, "N", "images decoded together (does not change the tokens)", "64"},
    {"seed", ArgKind::integer, "N", "seed: sample i uses streams (seed, i), whatever the batch or shard", "1"},
    {"cache", ArgKind::text, "POLICY", "KV cache: on-switch (refresh when the sub-model changes), never, every:K, "
                                       "none; a change of attention width always refreshes", "on-switch"},
    {"no-cache", ArgKind::flag, nullptr, "same as --cache none: every step recomputes every position"},
    {"shard", ArgKind::text, "I/N", "generate only part I of N (0-based) of the index range: for array jobs"},
    {"raw-weights", ArgKind::flag, nullptr, "use the checkpoint's raw weights instead of its EMA weights"},
    {"tokenizer", ArgKind::text, "FILE", "tokenizer checkpoint: decode the samples to PNG"},
    {"png", ArgKind::text, "DIR", "write NNNNNN.png per sample and grid.png (needs --tokenizer)"},
    {"grid-cols", ArgKind::integer, "N", "columns of grid.png (default: --per-class N, else 8)"},
    {"scale", ArgKind::integer, "N", "upscale factor of grid.png and of --animate frames", "4"},
    {"animate", ArgKind::text, "FILE.mp4", "write the decoding as a video: the grid after every step (needs "
                                           "--tokenizer and libav)"},
    {"fps", ArgKind::integer, "N", "frames per second of --animate", "2"},
    {"trace", ArgKind::text, "FILE", "JSON lines per step and image: sub-model, revealed positions, confidences, "
                                     "cache hits"},
    {"show-params", ArgKind::text, "FILE.png", "print the generation parameters stored in a sample PNG and exit"},
};

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

// Default schedule: the checkpoint's, else 12 steps spread over its factors, smallest model first.
std::vector<magnets::ScheduleStage> default_schedule(const magnets::Attrs& attrs, const magnets::TransformerConfig& c) {
    auto it = attrs.find("sample_schedule");
    if (it != attrs.end()) return magnets::parse_size_schedule(magnets::attr_to_string(it->second));
    std::vector<magnets::ScheduleStage> s;
    const int64_t n = static_cast<int64_t>(c.factors.size());
    const int64_t total = std::min<int64_t>(12, c.tokens());
    for (int64_t i = 0; i < n; ++i) {
        const int64_t k = total / n + (i >= n - total % n ? 1 : 0);
        if (k > 0) s.push_back({c.factors[static_cast<size_t>(i)], k});
    }
    return s;
}

// Tokens -> images through the tokenizer; masked entries (>= K) are decoded as
// code 0 and painted over with a hatch, so frames show what is still masked.
std::vector<magnets::Image> decode_images(magnets::Tokenizer& tok, const uint16_t* tokens, int64_t n, int64_t K,
                                          bool hatch_masked) {
    const magnets::TokenizerConfig& tc = tok.config();
    const int64_t N = tok.tokens_per_image(), side = tc.tokens_side(), px = tc.image_size / side;
    const int64_t per = tc.channels * tc.image_size * tc.image_size;
    std::vector<uint16_t> ids(tokens, tokens + n * N);
    for (auto& t : ids) if (t >= K) t = 0;
    std::vector<float> img(static_cast<size_t>(n * per));
    tok.decode(ids.data(), n, img.data());
    std::vector<magnets::Image> out;
    for (int64_t i = 0; i < n; ++i) {
        magnets::Image im = magnets::image_from_float(img.data() + i * per, tc.channels, tc.image_size, tc.image_size);
        if (hatch_masked) {
            for (int64_t j = 0; j < N; ++j) {
                if (tokens[i * N + j] < K) continue;
                const int64_t y0 = (j / side) * px, x0 = (j % side) * px;
                for (int64_t y = y0; y < y0 + px; ++y)
                    for (int64_t x = x0; x < x0 + px; ++x)
                        for (int64_t c = 0; c < im.channels; ++c)
                            im.pixels[static_cast<size_t>((y * im.width + x) * im.channels + c)] =
                                ((x + y) % 4 < 2) ? 96 : 160;
            }
        }
        out.push_back(std::move(im));
    }
    return out;
}

// Video tokens -> clips (each grid_t slots of stacked frames).
std::vector<Clip> decode_clips(magnets::Tokenizer& tok, const uint16_t* tokens, int64_t n) {
    const magnets::TokenizerConfig& tc = tok.config();
    std::vector<float> y(static_cast<size_t>(n * tc.clip_frames * tc.channels * tc.image_size * tc.image_size));
    tok.decode(tokens, n * tc.grid_t(), y.data());
    return clips_from_float(y.data(), n, tc.clip_frames, tc.channels, tc.image_size);
}

magnets::Image to_rgb(const magnets::Image& im) {
    if (im.channels == 3) return im;
    magnets::Image o;
    o.width = im.width; o.height = im.height; o.channels = 3;
    o.pixels.resize(static_cast<size_t>(im.width * im.height * 3));
    for (int64_t i = 0; i < im.width * im.height; ++i)
        for (int c = 0; c < 3; ++c) o.pixels[static_cast<size_t>(i * 3 + c)] = im.pixels[static_cast<size_t>(i * im.channels)];
    return o;
}

int run(const Args& a) {
    if (a.has("show-params")) {
        const auto text = magnets::read_png_text(a.text("show-params"));
        for (const auto& [k, v] : text) std::printf("%-18s %s\n", k.c_str(), v.c_str());
        return 0;
    }
    if (!a.has("model")) throw UsageError("missing required option --model");
    if (!a.has("output")) throw UsageError("missing required option --output");
    const std::string backend_name = apply_global(a);
    const std::string model_path = a.text("model"), output = a.text("output");
    magnets::check_writable(output);

    magnets::SampleConfig sc;
    try {
        sc.mask = magnets::parse_mask_schedule(a.text("mask-schedule"));
        sc.cache = magnets::parse_cache_policy(a.flag("no-cache") ? std::string("none") : a.text("cache"));
        if (a.has("schedule")) sc.schedule = magnets::parse_size_schedule(a.text("schedule"));
    } catch (const magnets::Error& e) {
        throw UsageError(std::string(e.what()) + (e.hint().empty() ? "" : " (" + e.hint() + ")"));
    }
    sc.temperature = a.nonnegative("temperature", true);
    sc.temperature_end = a.has("temperature-end") ? a.nonnegative("temperature-end", true) : sc.temperature;
    sc.choice_temperature = a.nonnegative("choice-temperature");
    sc.top_k = a.positive("top-k", true);
    sc.cfg_scale = a.nonnegative("cfg");
    sc.cfg_ramp = a.flag("cfg-ramp");
    sc.seed = static_cast<uint64_t>(a.positive("seed", true));
    const int64_t batch = a.positive("batch-size");
    const bool want_png = a.has("png"), want_video = a.has("animate");
    if ((want_png || want_video) && !a.has("tokenizer"))
        throw UsageError(std::string(want_png ? "--png" : "--animate") + " decodes the samples: give --tokenizer too");
    if (want_video && !magnets::video_supported())
        throw magnets::Error("cannot write " + a.text("animate"), {}, "this build has no libav",
                             "install libavformat-dev libavcodec-dev libswscale-dev and rebuild (-Dlibav=enabled)");

    // The model (EMA weights unless --raw-weights) and its metadata.
    // The transformer samples on any backend, the GPU included; the tokenizer
    // (PNG and MP4 output) decodes on the CPU.
    auto be = backend_for(backend_name);
    const magnets::Checkpoint meta =
        magnets::read_checkpoint(model_path, magnets::transformer_format, magnets::transformer_format_version, false);
    magnets::Transformer model = magnets::Transformer::load(model_path, be, !a.flag("raw-weights"));
    const bool ema = !a.flag("raw-weights") && !meta.ema.empty(); // load() falls back to raw weights without /ema
    if (!a.flag("raw-weights") && meta.ema.empty()) magnets::log_warn("%s has no EMA weights; using its raw weights", model_path.c_str());
    const magnets::TransformerConfig& mc = model.config();
    if (!a.has("schedule")) sc.schedule = default_schedule(meta.attrs, mc);
    try {
        sc.validate(mc);
    } catch (const magnets::Error& e) {
        throw UsageError(std::string(e.what()) + (e.hint().empty() ? "" : " (" + e.hint() + ")"));
    }
    std::vector<std::string> class_names;
    if (auto it = meta.attrs.find("class_names"); it != meta.attrs.end())
        class_names = split_lines(magnets::attr_to_string(it->second));
    const std::string model_tok_hash =
        meta.attrs.count("tokenizer_hash") ? magnets::attr_to_string(meta.attrs.at("tokenizer_hash")) : std::string();

    // Classes to generate, in order.
    std::vector<int32_t> wanted;
    auto class_index = [&](const std::string& s) -> int32_t {
        char* end = nullptr;
        const long v = std::strtol(s.c_str(), &end, 10);
        if (!s.empty() && *end == '\0') {
            if (v < 0 || v >= mc.num_classes)
                throw UsageError("--class " + s + " is out of range: the model has " + std::to_string(mc.num_classes) +
                                 " classes (0.." + std::to_string(mc.num_classes - 1) + ")");
            return static_cast<int32_t>(v);
        }
        for (size_t i = 0; i < class_names.size(); ++i)
            if (class_names[i] == s) return static_cast<int32_t>(i);
        std::string list;
        for (const auto& n : class_names) list += (list.empty() ? "" : ", ") + n;
        throw UsageError("unknown class '" + s + "'" + (list.empty() ? "" : " (classes: " + list + ")"));
    };
    if (a.has("per-class")) {
        if (a.has("class")) throw UsageError("--per-class generates every class; drop --class");
        if (mc.num_classes == 0) throw UsageError("--per-class: the model is unconditional (no classes)");
        const int64_t k = a.positive("per-class");
        for (int32_t c = 0; c < mc.num_classes; ++c)
            for (int64_t i = 0; i < k; ++i) wanted.push_back(c);
    } else if (a.has("class")) {
        const int64_t k = a.positive("count");
        for (const auto& s : a.texts("class")) {
            const int32_t c = class_index(s);
            for (int64_t i = 0; i < k; ++i) wanted.push_back(c);
        }
    } else {
        wanted.assign(static_cast<size_t>(a.positive("count")), -1);
    }
    // Shard i/N: a contiguous part of the global index range.
    int64_t first = 0, count = static_cast<int64_t>(wanted.size());
    std::string shard = "0/1";
    if (a.has("shard")) {
        shard = a.text("shard");
        long long i = -1, n = -1;
        char extra = 0;
        if (std::sscanf(shard.c_str(), "%lld/%lld%c", &i, &n, &extra) != 2 || n < 1 || i < 0 || i >= n)
            throw UsageError("--shard '" + shard + "': write I/N with 0 <= I < N, e.g. 0/4");
        const int64_t total = count;
        first = total * i / n;
        count = total * (i + 1) / n - first;
        if (count == 0)
            throw UsageError("--shard " + shard + " is empty: " + std::to_string(total) + " samples in " + std::to_string(n) +
                             " parts; use fewer parts");
    }

    // The tokenizer, checked against the model.
    std::unique_ptr<magnets::Tokenizer> tok;
    if (a.has("tokenizer")) {
        tok = std::make_unique<magnets::Tokenizer>(
            magnets::Tokenizer::load(a.text("tokenizer"), be));
        const magnets::TokenizerConfig& tc = tok->config();
        if (tc.codebook_size != mc.codebook_size || tc.grid_t() != mc.grid_t || tc.tokens_side() != mc.grid_h ||
            tc.tokens_side() != mc.grid_w)
            throw magnets::Error("tokenizer does not match the model", a.text("tokenizer"),
                                 "it has " + std::to_string(tc.codebook_size) + " codes and " +
                                     std::to_string(tc.grid_t()) + "x" + std::to_string(tc.tokens_side()) + "x" +
                                     std::to_string(tc.tokens_side()) + " tokens; the model " +
                                     std::to_string(mc.codebook_size) + " codes and " + std::to_string(mc.grid_t) +
                                     "x" + std::to_string(mc.grid_h) + "x" + std::to_string(mc.grid_w),
                                 "decode with the tokenizer whose tokens the model was trained on");
        if (tc.video() && want_video)
            throw UsageError("--animate shows the decoding of image grids; for a video model use --png DIR "
                             "(a filmstrip PNG and an MP4 per sample, grid.png and grid.mp4)");
        if (!model_tok_hash.empty() && tok->hash() != model_tok_hash)
            magnets::log_warn("the tokenizer's hash %s differs from the one the model was trained with (%s)",
                              tok->hash().c_str(), model_tok_hash.c_str());
    }

    magnets::log_info("%s: %s", prog, model_path.c_str());
    std::vector<std::pair<std::string, std::string>> rows = {
        {"model", model_path + " (" + (ema ? "EMA" : "raw") + " weights, hash " + model.hash() + ")"},
        {"shape", "D=" + std::to_string(mc.width) + " L=" + std::to_string(mc.layers) + " H=" + std::to_string(mc.heads) +
                      " N=" + std::to_string(mc.tokens()) + " K=" + std::to_string(mc.codebook_size) + ", " +
                      magnets::nesting_name(mc.nesting) + " nesting, factors " + magnets::factors_to_string(mc.factors)},
        {"schedule", magnets::size_schedule_to_string(sc.schedule) + " (" + std::to_string(sc.steps()) + " steps, " +
                         magnets::mask_schedule_name(sc.mask) + " mask)"},
        {"cache", magnets::cache_policy_to_string(sc.cache)},
        {"guidance", sc.cfg_scale > 0 ? fmt("%.3g", sc.cfg_scale) + (sc.cfg_ramp ? " (ramped)" : "") : "off"},
        {"temperatures", "token " + fmt("%.3g", sc.temperature) + (sc.temperature_end != sc.temperature ? " -> " + fmt("%.3g", sc.temperature_end) : "") +
                             ", choice " + fmt("%.3g", sc.choice_temperature) + (sc.top_k ? ", top-k " + std::to_string(sc.top_k) : "")},
        {"samples", std::to_string(count) + (a.has("shard") ? " (shard " + shard + " of " + std::to_string(wanted.size()) +
                                                                  ", indices " + std::to_string(first) + ".." +
                                                                  std::to_string(first + count - 1) + ")"
                                                            : "")},
        {"seed / batch", std::to_string(sc.seed) + " / " + std::to_string(batch)},
        {"backend", model.backend().name() + std::string(", ") + std::to_string(magnets::num_threads()) + " threads"},
    };
    print_table(rows);

    // Animation frames and trace, per step.
    const int64_t N = mc.tokens(), K = mc.codebook_size;
    const int64_t scale = a.positive("scale");
    const int64_t cols = a.has("grid-cols") ? a.positive("grid-cols") : (a.has("per-class") ? a.integer("per-class") : 8);
    std::unique_ptr<magnets::VideoWriter> video;
    std::FILE* trace = nullptr;
    if (a.has("trace")) {
        magnets::check_writable(a.text("trace"));
        trace = std::fopen(a.text("trace").c_str(), "w");
        if (!trace) throw magnets::Error("cannot open trace file", a.text("trace"), std::strerror(errno), "check the folder");
    }
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> trace_guard(trace, [](std::FILE* f) { return f ? std::fclose(f) : 0; });
    std::vector<uint16_t> frame_tokens;
    magnets::Image last_frame;
    const int64_t animate_limit = 64; // images shown in a frame
    if (want_video && count > batch)
        magnets::log_warn("--animate shows the first batch only (%" PRId64 " images); raise --batch-size to see more", batch);
    auto on_step = [&](const magnets::StepView& v) {
        if (trace) {
            for (int64_t i = 0; i < v.count; ++i) {
                std::string rev, conf;
                for (int64_t j = 0; j < N; ++j) {
                    if (!v.revealed[i * N + j]) continue;
                    rev += (rev.empty() ? "" : ",") + std::to_string(j);
                    conf += (conf.empty() ? "" : ",") + json_number(v.confidence[i * N + j]);
                }
                std::fprintf(trace,
                             "{\"step\":%" PRId64 ",\"index\":%" PRId64 ",\"p\":%" PRId64 ",\"refresh\":%s,\"cache_hits\":%" PRId64
                             ",\"revealed\":[%s],\"confidence\":[%s]}\n",
                             v.step, v.first + i, v.p, v.refresh ? "true" : "false", v.cache_hits, rev.c_str(), conf.c_str());
            }
        }
        if (video && v.first == first) { // the first batch
            const int64_t shown = std::min<int64_t>(v.count, animate_limit);
            auto imgs = decode_images(*tok, v.tokens, shown, K, true);
            magnets::Image grid = magnets::upscale(magnets::make_grid(imgs, std::min<int64_t>(cols, shown)), scale);
            magnets::Image frame = to_rgb(grid);
            // caption bar: step, sub-model, and a bar as wide as the sub-model's share of the width
            magnets::Image canvas;
            canvas.width = frame.width; canvas.channels = 3;
            const int64_t bar = 28;
            canvas.height = frame.height + bar;
            canvas.pixels.assign(static_cast<size_t>(canvas.width * canvas.height * 3), 255);
            std::memcpy(canvas.pixels.data() + bar * canvas.width * 3, frame.pixels.data(), frame.pixels.size());
            const auto col = magnets::plot_series_colour(static_cast<size_t>(std::log2(static_cast<double>(v.p))));
            const int64_t w = std::max<int64_t>(4, canvas.width / std::max<int64_t>(v.p, 1));
            for (int64_t y = 20; y < 26; ++y)
                for (int64_t x = 0; x < w; ++x)
                    for (int c = 0; c < 3; ++c) canvas.pixels[static_cast<size_t>((y * canvas.width + x) * 3 + c)] = col[static_cast<size_t>(c)];
            const std::string cap = "step " + std::to_string(v.step) + "/" + std::to_string(sc.steps()) + "  m" +
                                    std::to_string(v.p) + (v.refresh ? "  refresh" : "  cached");
            magnets::draw_text(canvas, 4, 4, cap, {0, 0, 0}, 2);
            video->add_frame(canvas);
            last_frame = canvas;
        }
    };
    if (want_video) {
        // Frame size: decode one all-masked grid to learn it.
        const int64_t shown = std::min<int64_t>({count, batch, animate_limit});
        std::vector<uint16_t> masked(static_cast<size_t>(shown * N), static_cast<uint16_t>(K));
        auto imgs = decode_images(*tok, masked.data(), shown, K, true);
        magnets::Image g = magnets::upscale(magnets::make_grid(imgs, std::min<int64_t>(cols, shown)), scale);
        video = std::make_unique<magnets::VideoWriter>(a.text("animate"), static_cast<int>(g.width),
                                                       static_cast<int>(g.height + 28),
                                                       static_cast<int>(a.positive("fps")));
    }

    const magnets::SampleResult res = magnets::sample(model, sc, wanted.data() + first, count, first, batch,
                                                      (video || trace) ? std::function<void(const magnets::StepView&)>(on_step) : nullptr);
    if (video) {
        for (int i = 0; i < 2; ++i) video->add_frame(last_frame); // hold the result
        video->close();
        magnets::log_info("wrote %s (%" PRId64 " frames: one per step, then 2 hold frames)", a.text("animate").c_str(),
                          video->frames());
    }

    // Accounting: per step, and against the full model at every step without cache.
    double full_flops = 0;
    {
        int64_t masked = N;
        for (int64_t s = 0; s < sc.steps(); ++s) {
            full_flops += (sc.cfg_scale > 0 ? 2.0 : 1.0) * magnets::step_flops(mc, mc.factors.back(), mc.seq(), mc.seq(), masked);
            masked = res.steps[static_cast<size_t>(s)].masked_after;
        }
    }
    magnets::log_info("step  model  refresh  rows  cached  revealed  masked   MFLOP/img   ms");
    for (const auto& st : res.steps)
        magnets::log_info("%4" PRId64 "  m%-4" PRId64 "  %-7s  %4" PRId64 "  %6" PRId64 "  %8" PRId64 "  %6" PRId64 "  %10.3f  %6.1f",
                          st.step, st.p, st.refresh ? "yes" : "no", st.rows, st.cached, st.revealed, st.masked_after,
                          st.flops / 1e6, st.seconds * 1e3);
    magnets::log_info("total: %.4f GFLOP/image (the full model m%" PRId64 " at every step without cache: %.4f, %.2fx), "
                      "%.2f s, %.1f images/s",
                      res.flops_per_image / 1e9, mc.factors.back(), full_flops / 1e9, full_flops / std::max(res.flops_per_image, 1.0),
                      res.seconds, static_cast<double>(count) / std::max(res.seconds, 1e-9));

    // The token file.
    magnets::TokenFile tf;
    tf.grid_t = mc.grid_t; tf.grid_h = mc.grid_h; tf.grid_w = mc.grid_w;
    tf.codebook_size = K;
    tf.split = "generated";
    tf.tokenizer_hash = model_tok_hash.empty() ? (tok ? tok->hash() : std::string("unknown")) : model_tok_hash;
    tf.source = model_path;
    tf.class_names = class_names;
    if (static_cast<int64_t>(tf.class_names.size()) != mc.num_classes) {
        tf.class_names.clear();
        for (int64_t c = 0; c < mc.num_classes; ++c) tf.class_names.push_back(std::to_string(c));
    }
    tf.tokens = res.tokens;
    tf.labels.assign(wanted.begin() + first, wanted.begin() + first + count);
    sc.to_attrs(tf.extra);
    tf.extra["model_file"] = model_path;
    tf.extra["model_hash"] = model.hash();
    tf.extra["model_weights"] = std::string(ema ? "ema" : "raw");
    tf.extra["shard"] = shard;
    tf.extra["first_index"] = first;
    tf.extra["total_count"] = static_cast<int64_t>(wanted.size());
    tf.extra["gflop_per_image"] = res.flops_per_image / 1e9;
    tf.extra["gflop_per_image_full_model"] = full_flops / 1e9;
    tf.extra["seconds"] = res.seconds;
    tf.extra["images_per_s"] = static_cast<double>(count) / std::max(res.seconds, 1e-9);
    std::vector<float> sp, srefresh, srows, scached, srev, smasked, sflops, ssec;
    for (const auto& st : res.steps) {
        sp.push_back(static_cast<float>(st.p)); srefresh.push_back(st.refresh ? 1.0f : 0.0f);
        srows.push_back(static_cast<float>(st.rows)); scached.push_back(static_cast<float>(st.cached));
        srev.push_back(static_cast<float>(st.revealed)); smasked.push_back(static_cast<float>(st.masked_after));
        sflops.push_back(static_cast<float>(st.flops / 1e6)); ssec.push_back(static_cast<float>(st.seconds));
    }
    tf.extra_datasets = {{"steps/p", sp},           {"steps/refresh", srefresh}, {"steps/rows", srows},
                         {"steps/cached", scached}, {"steps/revealed", srev},    {"steps/masked_after", smasked},
                         {"steps/mflop_per_image", sflops}, {"steps/seconds", ssec}};
    magnets::write_token_file(output, tf, prog);
    magnets::log_info("wrote %s (%" PRId64 " samples)", output.c_str(), count);

    if (want_png) {
        const std::string dir = a.text("png");
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec) throw magnets::Error("cannot create folder", dir, ec.message(), "check the path");
        std::vector<magnets::Image> all;
        std::vector<Clip> grid_clips; // video
        const magnets::TokenizerConfig& tc = tok->config();
        for (int64_t s0 = 0; s0 < count; s0 += 256) {
            const int64_t nb = std::min<int64_t>(256, count - s0);
            std::vector<magnets::Image> imgs;
            std::vector<Clip> clips;
            if (tc.video()) { // a filmstrip per sample, and an MP4
                clips = decode_clips(*tok, res.tokens.data() + s0 * N, nb);
                for (const Clip& c : clips) imgs.push_back(filmstrip(c));
            } else {
                imgs = decode_images(*tok, res.tokens.data() + s0 * N, nb, K, false);
            }
            for (int64_t i = 0; i < nb; ++i) {
                const int64_t g = first + s0 + i;
                const int32_t c = wanted[static_cast<size_t>(g)];
                std::map<std::string, std::string> text = {
                    {"magnets-index", std::to_string(g)},
                    {"magnets-seed", std::to_string(sc.seed)},
                    {"magnets-class", c < 0 ? std::string("unconditional")
                                            : std::to_string(c) + (static_cast<size_t>(c) < class_names.size() ? " (" + class_names[static_cast<size_t>(c)] + ")" : "")},
                    {"magnets-schedule", magnets::size_schedule_to_string(sc.schedule)},
                    {"magnets-mask-schedule", magnets::mask_schedule_name(sc.mask)},
                    {"magnets-cfg", fmt("%g", sc.cfg_scale) + (sc.cfg_ramp ? " ramp" : "")},
                    {"magnets-temperature", fmt("%g", sc.temperature) + (sc.temperature_end != sc.temperature ? " -> " + fmt("%g", sc.temperature_end) : "")},
                    {"magnets-choice-temperature", fmt("%g", sc.choice_temperature)},
                    {"magnets-top-k", std::to_string(sc.top_k)},
                    {"magnets-cache", magnets::cache_policy_to_string(sc.cache)},
                    {"magnets-model", model_path},
                    {"magnets-model-hash", model.hash()},
                    {"magnets-tokenizer-hash", tok->hash()},
                    {"Software", std::string(prog)},
                };
                char name[32];
                std::snprintf(name, sizeof name, "/%06" PRId64 ".png", g);
                magnets::write_png(dir + name, imgs[static_cast<size_t>(i)], text);
                if (static_cast<int64_t>(all.size()) < 256) all.push_back(imgs[static_cast<size_t>(i)]);
                if (tc.video()) {
                    std::snprintf(name, sizeof name, "/%06" PRId64 ".mp4", g);
                    write_clip_mp4(dir + name, clips[static_cast<size_t>(i)], scale);
                    if (static_cast<int64_t>(grid_clips.size()) < 64) grid_clips.push_back(clips[static_cast<size_t>(i)]);
                }
            }
        }
        // Video: one filmstrip per row (x2), and grid.mp4 tiles the first 64 clips.
        magnets::Image grid = tc.video() ? magnets::upscale(magnets::make_grid(all, 1), 2)
                                         : magnets::upscale(magnets::make_grid(all, cols), scale);
        if (tc.video() && write_clip_grid_mp4(dir + "/grid.mp4", grid_clips,
                                              std::min<int64_t>(cols, static_cast<int64_t>(grid_clips.size())), scale))
            magnets::log_info("wrote %" PRId64 " MP4s and %s/grid.mp4", count, dir.c_str());
        magnets::write_png(dir + "/grid.png", grid,
                           {{"magnets-schedule", magnets::size_schedule_to_string(sc.schedule)},
                            {"magnets-seed", std::to_string(sc.seed)},
                            {"magnets-model-hash", model.hash()},
                            {"magnets-cfg", fmt("%g", sc.cfg_scale) + (sc.cfg_ramp ? " ramp" : "")}});
        magnets::log_info("wrote %" PRId64 " PNGs and %s/grid.png", count, dir.c_str());
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    const Tool tool{prog, "generate token grids and images with decode-time model scaling and a KV cache",
                    {{"", "sample", nullptr, &options, run}}};
    return run_tool(tool, argc, argv);
}
