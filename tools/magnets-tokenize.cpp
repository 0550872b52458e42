// magnets-tokenize: train, apply and inspect the VQ image tokenizer.
//
// A thin program over the public library API (magnets/*.h): it parses options,
// calls the library and prints. Every option of every sub-command is declared
// once, in the tables below; --help is generated from them and the man page
// magnets-tokenize(1) follows them.
//
// Exit status: 0 success, 1 runtime failure (magnets::Error), 2 usage error,
// 128 + signal number when training was interrupted by SIGINT/SIGTERM (the
// checkpoint is complete and --resume continues it).
#include "cli.h"
#include "clip_output.h"

#include "magnets/backend.h"
#include "magnets/dataset.h"
#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets/image.h"
#include "magnets/log.h"
#include "magnets/tokenizer.h"
#include "magnets/version.h"
#include "magnets/video.h"


#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace {

using namespace magnets::cli;
constexpr const char* prog = "magnets-tokenize";

const std::vector<OptionSpec> train_options = {
    {"o,output", ArgKind::text, "FILE", "tokenizer checkpoint to write (HDF5)", nullptr, true},
    {"dataset", ArgKind::text, "SPEC", "fashion-mnist, moving-fashion-mnist (video presets; the default for them) or an image folder (one sub-folder per class)",
     "fashion-mnist"},
    {"split", ArgKind::text, "NAME", "train, test or all", "train"},
    {"limit", ArgKind::integer, "N", "use only the first N images (clips for video)"},
    {"preset", ArgKind::text, "NAME", "tiny, demo, quality, video-tiny or video-demo: every default below", "demo"},
    {"resume", ArgKind::flag, nullptr, "continue the run saved in --output (bit-identical)"},
    {"steps", ArgKind::integer, "N", "optimizer steps", nullptr, false, true},
    {"batch-size", ArgKind::integer, "N", "images per step", nullptr, false, true},
    {"lr", ArgKind::real, "X", "Adam peak learning rate (linear warm-up, cosine decay)", nullptr, false, true},
    {"seed", ArgKind::integer, "N", "seed of every random draw (init, data order, restarts)", nullptr, false, true},
    {"codebook-size", ArgKind::integer, "K", "number of codes", nullptr, false, true},
    {"code-dim", ArgKind::integer, "C", "dimension of a code", nullptr, false, true},
    {"tail-channels", ArgKind::integer, "T", "width of the decoder's full-resolution conv", nullptr, false, true},
    {"base-channels", ArgKind::integer, "N", "convolution width at half resolution (after the pixel unshuffle)", nullptr, false, true},
    {"hidden-channels", ArgKind::integer, "N", "convolution width at lower resolutions", nullptr, false, true},
    {"res-blocks", ArgKind::integer, "N", "residual blocks in the encoder and in the decoder", nullptr, false, true},
    {"image-size", ArgKind::integer, "N", "input side in pixels (Fashion-MNIST is padded to it)", nullptr, false, true},
    {"channels", ArgKind::integer, "N", "1 (gray) or 3 (RGB)", nullptr, false, true},
    {"frames", ArgKind::integer, "N", "video: frames per token slot (time is downsampled by N)", nullptr, false, true},
    {"clip-frames", ArgKind::integer, "N", "video: frames per clip (a multiple of --frames; 1 = images)", nullptr, false, true},
    {"quantizer", ArgKind::text, "NAME", "ema (EMA codebook) or loss (codebook + commitment loss)", nullptr, false, true},
    {"recon", ArgKind::text, "NAME", "reconstruction loss: l2 or l1", nullptr, false, true},
    {"checkpoint-every", ArgKind::integer, "N", "write a checkpoint every N steps (0 = only at the end)", nullptr, false, true},
    {"log-every", ArgKind::integer, "N", "print a log line every N steps", nullptr, false, true},
    {"log", ArgKind::text, "FILE", "also write each log line to FILE as JSON (appended on --resume)"},
    {"recon-png", ArgKind::text, "FILE",
     "after training, write 32 test images (top) and their reconstructions (bottom), x4"},
    {"stop-after", ArgKind::integer, "N", "testing aid: stop as if interrupted after step N (exit 0)"},
};

const std::vector<OptionSpec> encode_options = {
    {"tokenizer", ArgKind::text, "FILE", "tokenizer checkpoint", nullptr, true},
    {"o,output", ArgKind::text, "FILE", "token file to write (HDF5)", nullptr, true},
    {"dataset", ArgKind::text, "SPEC", "fashion-mnist, moving-fashion-mnist (the default of a video tokenizer) or an image folder", "fashion-mnist"},
    {"split", ArgKind::text, "NAME", "train, test or all", "test"},
    {"limit", ArgKind::integer, "N", "encode only the first N images (clips for video)"},
    {"batch-size", ArgKind::integer, "N", "images per batch", "256"},
};

const std::vector<OptionSpec> decode_options = {
    {"tokenizer", ArgKind::text, "FILE", "tokenizer checkpoint", nullptr, true},
    {"i,input", ArgKind::texts, "FILE", "token file (repeat to decode several together)", nullptr, true},
    {"o,output", ArgKind::text, "DIR", "folder for NNNNNN.png and grid.png (created)", nullptr, true},
    {"limit", ArgKind::integer, "N", "decode only the first N items"},
    {"grid-cols", ArgKind::integer, "N", "columns of grid.png", "8"},
    {"grid-items", ArgKind::integer, "N", "items shown in grid.png (the first ones)", "64"},
    {"scale", ArgKind::integer, "N", "upscale factor of the images in grid.png", "4"},
    {"batch-size", ArgKind::integer, "N", "items per batch", "256"},
    {"strict", ArgKind::flag, nullptr, "fail (instead of warn) when a token file's tokenizer hash differs"},
};

const std::vector<OptionSpec> eval_options = {
    {"tokenizer", ArgKind::text, "FILE", "tokenizer checkpoint", nullptr, true},
    {"dataset", ArgKind::text, "SPEC", "fashion-mnist, moving-fashion-mnist (the default of a video tokenizer) or an image folder", "fashion-mnist"},
    {"split", ArgKind::text, "NAME", "train, test or all", "test"},
    {"limit", ArgKind::integer, "N", "evaluate only the first N images"},
    {"batch-size", ArgKind::integer, "N", "images per batch", "256"},
    {"json", ArgKind::flag, nullptr, "print one JSON object instead of a table"},
};

const std::vector<OptionSpec> info_options = {
    {"json", ArgKind::flag, nullptr, "print one JSON object per file"},
};
void print_presets() {
    std::printf("\npresets:\n");
    for (const auto& name : magnets::tokenizer_preset_names()) {
        const magnets::TokenizerPreset p = magnets::tokenizer_preset(name);
        std::printf("  %-8s %s (%" PRId64 " steps, batch %" PRId64 ", K = %" PRId64 ", widths %" PRId64 "/%" PRId64 ")\n",
                    name.c_str(), p.description.c_str(), p.train.steps, p.train.batch_size, p.model.codebook_size,
                    p.model.base_channels, p.model.hidden_channels);
    }
}
std::string checked_split(const Args& a) {
    std::string s = a.text("split");
    if (s != "train" && s != "test" && s != "all")
        throw UsageError("unknown split '" + s + "' (choose train, test or all)");
    return s;
}
// Keeps the first n items of `set` (n < 0: all).
void keep_first(magnets::ImageSet& set, int64_t n) {
    if (n < 0 || n >= set.count()) return;
    set.labels.resize(static_cast<size_t>(n));
    set.pixels.resize(static_cast<size_t>(n * set.pixels_per_item()));
}

std::string describe_set(const magnets::ImageSet& s) {
    const std::string frames = s.frames > 1 ? std::to_string(s.frames) + " frames of " : std::string();
    return s.source + " (" + s.split + ", " + std::to_string(s.count()) + (s.frames > 1 ? " clips, " : " images, ") +
           frames + std::to_string(s.channels) + "x" + std::to_string(s.height) + "x" + std::to_string(s.width) + ")";
}

// The dataset a video tokenizer reads when the command line keeps the image default.
std::string dataset_for(const magnets::TokenizerConfig& cfg, const std::string& spec) {
    return cfg.video() && spec == "fashion-mnist" ? "moving-fashion-mnist" : spec;
}

// Dataset for a tokenizer: its channel count and resolution; for a video
// tokenizer, clips of its clip_frames (--limit counts clips).
magnets::ImageSet load_for(const magnets::TokenizerConfig& cfg, const std::string& spec,
                           const std::string& split, int64_t limit) {
    magnets::ImageSet set;
    if (cfg.video()) {
        if (spec != "moving-fashion-mnist")
            throw magnets::Error("no video clips in the dataset", spec,
                                 "a video tokenizer (clips of " + std::to_string(cfg.clip_frames) +
                                     " frames) reads clips, and only moving-fashion-mnist has them",
                                 "use --dataset moving-fashion-mnist");
        if (cfg.channels != 1)
            throw magnets::Error("moving-fashion-mnist clips are gray", spec,
                                 "the tokenizer takes " + std::to_string(cfg.channels) + " channels per frame",
                                 "train the video tokenizer with --channels 1");
        // Clip i depends only on (split, i): generating only the first --limit is the same as cutting.
        set = magnets::load_moving_fashion_mnist(split, split != "all" && limit > 0 ? limit : 0, cfg.clip_frames,
                                                 cfg.image_size);
    } else {
        set = magnets::load_dataset(spec, split, cfg.channels, cfg.image_size);
    }
    keep_first(set, limit);
    if (set.count() == 0)
        throw magnets::Error("no images to process", spec, "the " + split + " split is empty",
                             "use --split all, or add images to the folder");
    return set;
}
// ---- train -----------------------------------------------------------------

// Model and training options that override the preset, by option name.
void apply_overrides(const Args& a, magnets::TokenizerConfig& m, magnets::TokenizerTrainConfig& t) {
    if (a.has("steps")) t.steps = a.positive("steps");
    if (a.has("batch-size")) t.batch_size = a.positive("batch-size");
    if (a.has("lr")) {
        t.lr = a.real("lr");
        if (!(t.lr > 0) || !std::isfinite(t.lr)) throw UsageError("--lr must be a positive number");
    }
    if (a.has("seed")) t.seed = static_cast<uint64_t>(a.positive("seed", true));
    if (a.has("checkpoint-every")) t.checkpoint_every = a.positive("checkpoint-every", true);
    if (a.has("log-every")) t.log_every = a.positive("log-every");
    if (a.has("codebook-size")) m.codebook_size = a.positive("codebook-size");
    if (a.has("code-dim")) m.code_dim = a.positive("code-dim");
    if (a.has("tail-channels")) m.tail_channels = a.positive("tail-channels");
    if (a.has("base-channels")) m.base_channels = a.positive("base-channels");
    if (a.has("hidden-channels")) m.hidden_channels = a.positive("hidden-channels");
    if (a.has("res-blocks")) m.res_blocks = a.positive("res-blocks", true);
    if (a.has("image-size")) m.image_size = a.positive("image-size");
    if (a.has("channels")) m.channels = a.positive("channels");
    if (a.has("frames")) m.frames = a.positive("frames");
    if (a.has("clip-frames")) m.clip_frames = a.positive("clip-frames");
    try {
        if (a.has("quantizer")) m.quantizer = magnets::parse_quantizer(a.text("quantizer"));
        if (a.has("recon")) m.recon_loss = magnets::parse_recon_loss(a.text("recon"));
    } catch (const magnets::Error& e) {
        throw UsageError(e.what() + (e.hint().empty() ? std::string() : " (" + e.hint() + ")"));
    }
}

// Options that fix the model and the arithmetic of a run. With --resume they
// may be repeated (the same command line plus --resume works) but must resolve
// to the checkpoint's values; --steps, --log-every and --checkpoint-every may
// change (a larger --steps extends a finished run).
const std::vector<std::string> fixed_option_names = {
    "preset", "codebook-size", "code-dim", "tail-channels", "base-channels", "hidden-channels", "res-blocks",
    "image-size", "channels", "frames", "clip-frames", "quantizer", "recon", "batch-size", "lr", "seed"};

// The configuration to resume with: the checkpoint's, after checking that the
// options given agree with it.
void resolve_resume(const Args& a, const std::string& output, magnets::TokenizerConfig& model,
                    magnets::TokenizerTrainConfig& train) {
    magnets::Checkpoint ck =
        magnets::read_checkpoint(output, magnets::tokenizer_format, magnets::tokenizer_format_version, true);
    if (!ck.has_state())
        throw magnets::Error("cannot resume", output, "the checkpoint holds weights only (no training state)",
                             "train again without --resume, or to another output");
    const magnets::TokenizerConfig saved_model = magnets::TokenizerConfig::from_attrs(ck.attrs, output);
    magnets::TokenizerTrainConfig saved = magnets::TokenizerTrainConfig::from_attrs(ck.attrs, output);
    bool given = false;
    for (const auto& n : fixed_option_names) given = given || a.has(n);
    if (given) {
        magnets::TokenizerTrainConfig want = train;
        want.steps = saved.steps;
        want.log_every = saved.log_every;
        want.checkpoint_every = saved.checkpoint_every;
        magnets::Attrs want_attrs, have_attrs;
        model.to_attrs(want_attrs);
        want.to_attrs(want_attrs);
        saved_model.to_attrs(have_attrs);
        saved.to_attrs(have_attrs);
        const std::string diff = attr_differences(want_attrs, have_attrs);
        if (!diff.empty())
            throw UsageError("--resume: the options differ from the checkpoint's (" + diff +
                             "); give the original options, or only -o and --resume");
    }
    if (a.has("steps")) saved.steps = train.steps;
    if (a.has("log-every")) saved.log_every = train.log_every;
    if (a.has("checkpoint-every")) saved.checkpoint_every = train.checkpoint_every;
    model = saved_model;
    train = saved;
}

// Video: 8 test clips, each as two filmstrips (the clip, then its reconstruction).
void write_recon_clips_png(magnets::Tokenizer& tok, const std::string& spec, const std::string& path,
                           const std::string& tok_path) {
    const auto& cfg = tok.config();
    const int64_t n = 8;
    magnets::ImageSet clips = load_for(cfg, spec, "test", n);
    const int64_t m = clips.count(), ppi = clips.pixels_per_item();
    std::vector<float> x(static_cast<size_t>(m * ppi)), y(x.size());
    std::vector<uint16_t> ids(static_cast<size_t>(m * cfg.grid_t() * tok.tokens_per_image()));
    clips.to_float(0, m, x.data());
    tok.encode(x.data(), m * cfg.grid_t(), ids.data()); // a clip's floats are its slots' in order
    tok.decode(ids.data(), m * cfg.grid_t(), y.data());
    auto orig = clips_from_float(x.data(), m, cfg.clip_frames, cfg.channels, cfg.image_size);
    auto rec = clips_from_float(y.data(), m, cfg.clip_frames, cfg.channels, cfg.image_size);
    std::vector<magnets::Image> rows;
    for (int64_t i = 0; i < m; ++i) {
        rows.push_back(magnets::upscale(filmstrip(orig[static_cast<size_t>(i)]), 2));
        rows.push_back(magnets::upscale(filmstrip(rec[static_cast<size_t>(i)]), 2));
    }
    magnets::write_png(path, magnets::make_grid(rows, 1, 4),
                       {{"creator", prog},
                        {"creator_version", magnets::version_string},
                        {"tokenizer", tok_path},
                        {"tokenizer_hash", tok.hash()},
                        {"source", clips.source},
                        {"split", clips.split},
                        {"layout", "pairs of rows: a test clip's " + std::to_string(cfg.clip_frames) +
                                       " frames, then their reconstruction"}});
    magnets::log_info("wrote %s", path.c_str());
}

void write_recon_png(magnets::Tokenizer& tok, const std::string& spec, const std::string& path,
                     const std::string& tok_path) {
    const auto& cfg = tok.config();
    if (cfg.video()) return write_recon_clips_png(tok, spec, path, tok_path);
    magnets::ImageSet set = magnets::load_dataset(spec, "test", cfg.channels, cfg.image_size);
    if (set.count() == 0) set = magnets::load_dataset(spec, "all", cfg.channels, cfg.image_size);
    const int64_t n = std::min<int64_t>(32, set.count());
    const int64_t ppi = set.pixels_per_item();
    std::vector<float> x(static_cast<size_t>(n * ppi)), y(x.size());
    std::vector<uint16_t> ids(static_cast<size_t>(n * tok.tokens_per_image()));
    set.to_float(0, n, x.data());
    tok.encode(x.data(), n, ids.data());
    tok.decode(ids.data(), n, y.data());
    std::vector<magnets::Image> tiles;
    for (const auto* src : {&x, &y})
        for (int64_t i = 0; i < n; ++i)
            tiles.push_back(magnets::upscale(
                magnets::image_from_float(src->data() + i * ppi, set.channels, set.height, set.width), 4));
    magnets::Image grid = magnets::make_grid(tiles, 8);
    magnets::write_png(path, grid,
                       {{"creator", prog},
                        {"creator_version", magnets::version_string},
                        {"tokenizer", tok_path},
                        {"tokenizer_hash", tok.hash()},
                        {"source", set.source},
                        {"split", set.split},
                        {"layout", "top rows: " + std::to_string(n) + " originals; bottom rows: their reconstructions"}});
    magnets::log_info("wrote %s", path.c_str());
}

int run_train(const Args& a) {
    const std::string backend_name = apply_global(a);
    const std::string output = a.text("output");
    const std::string spec = a.text("dataset");
    const std::string split = checked_split(a);
    const int64_t limit = a.limit();
    const bool resume = a.flag("resume");
    const std::string preset_name = a.text("preset");

    const auto names = magnets::tokenizer_preset_names();
    if (std::find(names.begin(), names.end(), preset_name) == names.end()) {
        std::string list;
        for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
        throw UsageError("unknown preset '" + preset_name + "' (choose " + list + ")");
    }
    magnets::TokenizerPreset preset = magnets::tokenizer_preset(preset_name);
    magnets::TokenizerConfig model = preset.model;
    magnets::TokenizerTrainConfig train = preset.train;
    apply_overrides(a, model, train);

    int64_t stop_after = -1;
    if (a.has("stop-after")) stop_after = a.positive("stop-after");

    magnets::check_writable(output);
    if (a.has("log")) magnets::check_writable(a.text("log"));
    if (a.has("recon-png")) magnets::check_writable(a.text("recon-png"));

    if (resume) resolve_resume(a, output, model, train);
    try {
        model.validate();
    } catch (const magnets::Error& e) {
        throw UsageError(std::string("inconsistent model options: ") + e.what());
    }

    std::shared_ptr<magnets::Backend> be = backend_for(backend_name);
    const std::string data_spec = dataset_for(model, spec);
    // A video tokenizer trains on slots: `frames` consecutive frames of a clip stacked as channels.
    magnets::ImageSet data = load_for(model, data_spec, split, limit);
    const std::string data_desc = describe_set(data);
    if (model.video()) data = magnets::clips_to_slots(std::move(data), model.frames);

    magnets::Tokenizer tok = resume ? magnets::Tokenizer::load(output, be) : magnets::Tokenizer(model, be);
    if (!resume) tok.init(train.seed);

    magnets::log_info("%s train: resolved configuration", prog);
    std::vector<std::pair<std::string, std::string>> rows = {
        {"preset", resume ? "(from checkpoint)" : preset_name},
        {"dataset", data_desc + (model.video() ? "; " + std::to_string(data.count()) + " slots of " +
                                                       std::to_string(model.frames) + " frames" : std::string())},
        {"limit", limit < 0 ? "none" : std::to_string(limit)},
        {"output", output},
        {"resume", resume ? "yes" : "no"},
        {"backend", be->name()},
        {"threads", std::to_string(magnets::num_threads())},
        {"tokens", (model.video() ? std::to_string(model.grid_t()) + "x" : std::string()) +
                       std::to_string(model.tokens_side()) + "x" + std::to_string(model.tokens_side())},
    };
    magnets::Attrs hp;
    model.to_attrs(hp);
    train.to_attrs(hp);
    for (const auto& [k, v] : hp) rows.emplace_back(k, magnets::attr_to_string(v));
    if (stop_after >= 0) rows.emplace_back("stop_after", std::to_string(stop_after));
    if (a.has("log")) rows.emplace_back("log", a.text("log"));
    if (a.has("recon-png")) rows.emplace_back("recon_png", a.text("recon-png"));
    print_table(rows);

    std::FILE* log_file = nullptr;
    if (a.has("log")) {
        log_file = std::fopen(a.text("log").c_str(), resume ? "a" : "w");
        if (!log_file)
            throw magnets::Error("cannot open log file", a.text("log"), std::strerror(errno),
                                 "check that the folder exists and is writable");
    }
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> log_guard(log_file, [](std::FILE* f) {
        return f ? std::fclose(f) : 0;
    });

    auto on_log = [&](const magnets::TokenizerLog& l) {
        magnets::log_info("step %6" PRId64 "/%" PRId64 "  loss %.5f  recon %.5f  commit %.5f  psnr %6.2f  "
                          "usage %5.3f  perplexity %7.1f  lr %.3e  img/s %7.1f  restarted %" PRId64,
                          l.step, l.steps, l.loss, l.recon, l.commit, l.psnr, l.usage, l.perplexity, l.lr,
                          l.images_per_s, l.restarted);
        if (log_file) {
            std::fprintf(log_file,
                         "{\"step\":%" PRId64 ",\"steps\":%" PRId64 ",\"loss\":%s,\"recon\":%s,\"commit\":%s,"
                         "\"psnr\":%s,\"usage\":%s,\"perplexity\":%s,\"lr\":%s,\"images_per_s\":%s,"
                         "\"restarted\":%" PRId64 "}\n",
                         l.step, l.steps, json_number(l.loss).c_str(), json_number(l.recon).c_str(),
                         json_number(l.commit).c_str(), json_number(l.psnr).c_str(), json_number(l.usage).c_str(),
                         json_number(l.perplexity).c_str(), json_number(l.lr).c_str(),
                         json_number(l.images_per_s).c_str(), l.restarted);
            std::fflush(log_file);
        }
    };

    magnets::TokenizerTrainOptions opt;
    opt.train = train;
    opt.output = output;
    opt.resume = resume;
    opt.stop = &stop_requested;
    opt.stop_after = stop_after;
    opt.creator = prog;

    install_stop_handlers();
    const double t0 = magnets::now_seconds();
    const int64_t last = magnets::train_tokenizer(tok, data, opt, on_log);
    const double elapsed = magnets::now_seconds() - t0;

    if (last < train.steps) {
        const int sig = stop_signal;
        magnets::log_warn("stopped at step %" PRId64 " of %" PRId64 "%s; checkpoint saved to %s", last, train.steps,
                          sig ? (std::string(" by ") + strsignal(sig)).c_str() : "", output.c_str());
        std::string cmd = std::string(prog) + " train --resume -o " + output;
        if (spec != "fashion-mnist") cmd += " --dataset " + spec;
        if (split != "train") cmd += " --split " + split;
        if (limit >= 0) cmd += " --limit " + std::to_string(limit);
        // oneDNN sums in a thread-dependent order: same threads and backend for a bit-identical run.
        if (a.has("threads")) cmd += " --threads " + std::to_string(a.integer("threads"));
        if (a.has("backend")) cmd += " --backend " + backend_name;
        magnets::log_info("resume with: %s", cmd.c_str());
        return sig ? 128 + sig : 0;
    }
    magnets::log_info("reached step %" PRId64 " in %.1f s; wrote %s (tokenizer hash %s)", last, elapsed,
                      output.c_str(), tok.hash().c_str());
    if (a.has("recon-png")) write_recon_png(tok, data_spec, a.text("recon-png"), output);
    return 0;
}

// ---- encode ----------------------------------------------------------------

int run_encode(const Args& a) {
    const std::string backend_name = apply_global(a);
    const std::string output = a.text("output");
    const std::string split = checked_split(a);
    const int64_t limit = a.limit();
    const int64_t batch = a.positive("batch-size");

    magnets::check_writable(output);
    std::shared_ptr<magnets::Backend> be = backend_for(backend_name);
    const std::string tok_path = a.text("tokenizer");
    magnets::Tokenizer tok = magnets::Tokenizer::load(tok_path, be);
    const auto& cfg = tok.config();
    magnets::ImageSet data = load_for(cfg, dataset_for(cfg, a.text("dataset")), split, limit);
    magnets::log_info("encoding %s with %s (%s, %s backend, %d threads)", describe_set(data).c_str(),
                      tok_path.c_str(), tok.hash().c_str(), be->name(), magnets::num_threads());

    magnets::TokenFile tf;
    tf.grid_t = cfg.grid_t();
    tf.grid_h = tf.grid_w = cfg.tokens_side();
    tf.codebook_size = cfg.codebook_size;
    tf.split = data.split;
    tf.tokenizer_hash = tok.hash();
    tf.source = data.source;
    tf.class_names = data.class_names;
    tf.labels = data.labels;
    tf.extra["tokenizer_file"] = tok_path;
    // Per item: grid_t slots (1 for images), a clip's floats are its slots' in order.
    const int64_t g = cfg.grid_t();
    const int64_t n = data.count(), tpi = g * tok.tokens_per_image(), ppi = data.pixels_per_item();
    tf.tokens.resize(static_cast<size_t>(n * tpi));

    std::vector<float> x(static_cast<size_t>(std::min(batch, n) * ppi));
    magnets::Progress bar("encode", n);
    for (int64_t first = 0; first < n; first += batch) {
        const int64_t m = std::min(batch, n - first);
        data.to_float(first, m, x.data());
        tok.encode(x.data(), m * g, tf.tokens.data() + first * tpi);
        bar.update(first + m);
    }
    bar.finish();
    magnets::write_token_file(output, tf, prog);
    magnets::log_info("wrote %s (%" PRId64 " items, %" PRId64 "x%" PRId64 "x%" PRId64 " tokens, K = %" PRId64 ")",
                      output.c_str(), n, tf.grid_t, tf.grid_h, tf.grid_w, tf.codebook_size);
    return 0;
}

// ---- decode ----------------------------------------------------------------

struct DecodeItem {
    const magnets::TokenFile* file;
    std::string path;
    int64_t index; // within its token file
};

int run_decode(const Args& a) {
    const std::string backend_name = apply_global(a);
    const std::string out_dir = a.text("output");
    const int64_t limit = a.limit();
    const int64_t cols = a.positive("grid-cols");
    const int64_t grid_items = a.positive("grid-items", true);
    const int64_t scale = a.positive("scale");
    const int64_t batch = a.positive("batch-size");
    const std::vector<std::string> inputs = a.texts("input");

    std::shared_ptr<magnets::Backend> be = backend_for(backend_name);
    const std::string tok_path = a.text("tokenizer");
    magnets::Tokenizer tok = magnets::Tokenizer::load(tok_path, be);
    const auto& cfg = tok.config();
    const std::string hash = tok.hash();

    // Every input is read and checked before anything is written.
    std::vector<magnets::TokenFile> files;
    files.reserve(inputs.size());
    for (const auto& path : inputs) {
        files.push_back(magnets::read_token_file(path));
        const magnets::TokenFile& tf = files.back();
        const std::string hint = "decode it with the tokenizer that encoded it (hash " + tf.tokenizer_hash +
                                 "); '" + prog + " info " + path + "' shows its attributes";
        if (tf.codebook_size != cfg.codebook_size)
            throw magnets::Error("token file does not match the tokenizer", path,
                                 "codebook size " + std::to_string(tf.codebook_size) + ", but " + tok_path +
                                     " has " + std::to_string(cfg.codebook_size) + " codes",
                                 hint);
        if (tf.grid_t != cfg.grid_t() || tf.grid_h != cfg.tokens_side() || tf.grid_w != cfg.tokens_side())
            throw magnets::Error("token file does not match the tokenizer", path,
                                 "token grid " + std::to_string(tf.grid_t) + "x" + std::to_string(tf.grid_h) +
                                     "x" + std::to_string(tf.grid_w) + ", but " + tok_path + " makes " +
                                     std::to_string(cfg.grid_t()) + "x" +
                                     std::to_string(cfg.tokens_side()) + "x" + std::to_string(cfg.tokens_side()),
                                 hint);
        if (tf.tokenizer_hash != hash) {
            if (a.flag("strict"))
                throw magnets::Error("token file was made by another tokenizer", path,
                                     "its tokenizer hash is " + tf.tokenizer_hash + ", " + tok_path + " has " + hash,
                                     hint + "; without --strict this is a warning");
            magnets::log_warn("%s was made by tokenizer %s, decoding with %s (%s); images may be meaningless",
                              path.c_str(), tf.tokenizer_hash.c_str(), tok_path.c_str(), hash.c_str());
        }
    }

    std::vector<DecodeItem> items;
    for (size_t f = 0; f < files.size(); ++f)
        for (int64_t i = 0; i < files[f].count(); ++i) items.push_back({&files[f], inputs[f], i});
    if (limit >= 0 && static_cast<int64_t>(items.size()) > limit) items.resize(static_cast<size_t>(limit));
    const int64_t n = static_cast<int64_t>(items.size());
    if (n == 0) throw magnets::Error("nothing to decode", inputs.front(), "the token files hold no items");

    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec)
        throw magnets::Error("cannot create output folder", out_dir, ec.message(),
                             "choose a folder under a writable directory");
    magnets::check_writable((std::filesystem::path(out_dir) / "grid.png").string());

    // An item is grid_t slots (1 for images); a clip decodes to its frames in order.
    const int64_t g = cfg.grid_t(), T = cfg.clip_frames;
    const int64_t tpi = g * tok.tokens_per_image();
    const int64_t c = cfg.channels, s = cfg.image_size, ppi = T * c * s * s;
    std::vector<uint16_t> ids(static_cast<size_t>(std::min(batch, n) * tpi));
    std::vector<float> y(static_cast<size_t>(std::min(batch, n) * ppi));
    std::vector<magnets::Image> tiles;
    std::vector<Clip> grid_clips;
    bool wrote_mp4 = false;
    magnets::Progress bar("decode", n);
    for (int64_t first = 0; first < n; first += batch) {
        const int64_t m = std::min(batch, n - first);
        for (int64_t j = 0; j < m; ++j) {
            const DecodeItem& it = items[static_cast<size_t>(first + j)];
            std::copy_n(it.file->tokens.data() + it.index * tpi, tpi, ids.data() + j * tpi);
        }
        tok.decode(ids.data(), m * g, y.data());
        for (int64_t j = 0; j < m; ++j) {
            const DecodeItem& it = items[static_cast<size_t>(first + j)];
            Clip clip = clips_from_float(y.data() + j * ppi, 1, T, c, s).front();
            // Video: the PNG is the clip's filmstrip, and an MP4 sits beside it.
            magnets::Image img = cfg.video() ? filmstrip(clip) : clip.front();
            const int32_t label = it.file->labels[static_cast<size_t>(it.index)];
            std::map<std::string, std::string> text = {
                {"creator", prog},
                {"creator_version", magnets::version_string},
                {"source", it.path},
                {"index", std::to_string(it.index)},
                {"label", std::to_string(label)},
                {"tokenizer", tok_path},
                {"tokenizer_hash", hash},
            };
            if (label >= 0 && static_cast<size_t>(label) < it.file->class_names.size())
                text["class_name"] = it.file->class_names[static_cast<size_t>(label)];
            if (cfg.video()) text["frames"] = std::to_string(T);
            char name[32];
            std::snprintf(name, sizeof name, "%06" PRId64 ".png", first + j);
            magnets::write_png((std::filesystem::path(out_dir) / name).string(), img, text);
            if (cfg.video()) {
                std::snprintf(name, sizeof name, "%06" PRId64 ".mp4", first + j);
                wrote_mp4 = write_clip_mp4((std::filesystem::path(out_dir) / name).string(), clip, scale);
                if (first + j < grid_items) grid_clips.push_back(std::move(clip));
            }
            if (first + j < grid_items) tiles.push_back(magnets::upscale(img, cfg.video() ? 2 : scale));
        }
        bar.update(first + m);
    }
    bar.finish();
    if (!tiles.empty()) {
        std::string sources;
        for (const auto& p : inputs) sources += (sources.empty() ? "" : ", ") + p;
        // Video: one filmstrip per row in grid.png; grid.mp4 tiles the clips.
        const int64_t png_cols = cfg.video() ? 1 : std::min<int64_t>(cols, static_cast<int64_t>(tiles.size()));
        magnets::write_png((std::filesystem::path(out_dir) / "grid.png").string(),
                           magnets::make_grid(tiles, png_cols),
                           {{"creator", prog},
                            {"creator_version", magnets::version_string},
                            {"source", sources},
                            {"items", std::to_string(tiles.size())},
                            {"tokenizer", tok_path},
                            {"tokenizer_hash", hash}});
    }
    if (!grid_clips.empty())
        write_clip_grid_mp4((std::filesystem::path(out_dir) / "grid.mp4").string(), grid_clips,
                            std::min<int64_t>(cols, static_cast<int64_t>(grid_clips.size())), scale);
    if (cfg.video())
        magnets::log_info("wrote %" PRId64 " clips (filmstrip PNGs%s) and grid.png%s to %s", n,
                          wrote_mp4 ? " and MP4s" : "; no MP4: this build has no libav",
                          wrote_mp4 ? ", grid.mp4" : "", out_dir.c_str());
    else
        magnets::log_info("wrote %" PRId64 " images and grid.png to %s", n, out_dir.c_str());
    return 0;
}

// ---- eval ------------------------------------------------------------------

int run_eval(const Args& a) {
    const std::string backend_name = apply_global(a);
    const std::string split = checked_split(a);
    const int64_t limit = a.limit();
    const int64_t batch = a.positive("batch-size");

    std::shared_ptr<magnets::Backend> be = backend_for(backend_name);
    const std::string tok_path = a.text("tokenizer");
    magnets::Tokenizer tok = magnets::Tokenizer::load(tok_path, be);
    magnets::ImageSet data = load_for(tok.config(), dataset_for(tok.config(), a.text("dataset")), split, limit);
    magnets::log_info("evaluating %s on %s", tok_path.c_str(), describe_set(data).c_str());
    if (tok.config().video()) data = magnets::clips_to_slots(std::move(data), tok.config().frames);
    const double t0 = magnets::now_seconds();
    magnets::TokenizerEval ev = magnets::evaluate_tokenizer(tok, data, batch);
    const double elapsed = magnets::now_seconds() - t0;
    const int64_t k = tok.config().codebook_size;

    if (a.flag("json")) {
        std::printf("{\"tokenizer\":%s,\"tokenizer_hash\":%s,\"dataset\":%s,\"split\":%s,\"images\":%" PRId64
                    ",\"psnr\":%s,\"mse\":%s,\"codes_used\":%" PRId64 ",\"codebook_size\":%" PRId64
                    ",\"usage\":%s,\"perplexity\":%s,\"seconds\":%s}\n",
                    json_string(tok_path).c_str(), json_string(tok.hash()).c_str(), json_string(data.source).c_str(),
                    json_string(data.split).c_str(), ev.images, json_number(ev.psnr).c_str(),
                    json_number(ev.mse).c_str(), ev.codes_used, k, json_number(ev.usage).c_str(),
                    json_number(ev.perplexity).c_str(), json_number(elapsed).c_str());
    } else {
        std::printf("tokenizer   %s (%s)\n", tok_path.c_str(), tok.hash().c_str());
        std::printf("dataset     %s, %s split\n", data.source.c_str(), data.split.c_str());
        if (tok.config().video()) // PSNR and usage are over slots of `frames` frames
            std::printf("slots       %" PRId64 " (%" PRId64 " clips of %" PRId64 " frames, %" PRId64 " per slot)\n",
                        ev.images, ev.images / tok.config().grid_t(), tok.config().clip_frames, tok.config().frames);
        else
            std::printf("images      %" PRId64 "\n", ev.images);
        std::printf("psnr        %.2f dB\n", ev.psnr);
        std::printf("mse         %.6f\n", ev.mse);
        std::printf("codes used  %" PRId64 " / %" PRId64 "\n", ev.codes_used, k);
        std::printf("usage       %.3f\n", ev.usage);
        std::printf("perplexity  %.1f\n", ev.perplexity);
    }
    return 0;
}

// ---- info ------------------------------------------------------------------

bool is_png(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f)
        throw magnets::Error("cannot open file", path, std::strerror(errno), "check the path");
    char magic[8] = {};
    f.read(magic, 8);
    return f.gcount() == 8 && std::memcmp(magic, "\x89PNG\r\n\x1a\n", 8) == 0;
}

// Weights hash of a tokenizer checkpoint, or empty when it cannot be read
// (info still shows the attributes of a file it cannot load).
std::string tokenizer_weights_hash(const std::string& path) {
    try {
        magnets::Checkpoint ck = magnets::read_checkpoint(path, magnets::tokenizer_format,
                                                          magnets::tokenizer_format_version, false);
        return magnets::weights_hash(ck.weights);
    } catch (const magnets::Error& e) {
        magnets::log_warn("%s", e.what());
        return {};
    }
}

bool is_mp4(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    char head[12] = {};
    f.read(head, 12);
    return f.gcount() == 12 && std::memcmp(head + 4, "ftyp", 4) == 0;
}

void info_one(const std::string& path, bool json) {
    if (is_mp4(path)) { // counts frames by decoding every packet (magnets::read_video_info)
        const magnets::VideoInfo v = magnets::read_video_info(path);
        if (json)
            std::printf("{\"file\":%s,\"type\":\"mp4\",\"frames\":%" PRId64 ",\"width\":%d,\"height\":%d,"
                        "\"fps\":%s,\"codec\":%s}\n",
                        json_string(path).c_str(), v.frames, v.width, v.height, json_number(v.fps).c_str(),
                        json_string(v.codec).c_str());
        else
            std::printf("%s: MP4, %" PRId64 " frames, %dx%d, %.3g fps, %s\n", path.c_str(), v.frames, v.width, v.height,
                        v.fps, v.codec.c_str());
        return;
    }
    if (is_png(path)) {
        magnets::Image img = magnets::read_image(path);
        auto text = magnets::read_png_text(path);
        if (json) {
            std::string s = "{\"file\":" + json_string(path) + ",\"type\":\"png\",\"width\":" +
                            std::to_string(img.width) + ",\"height\":" + std::to_string(img.height) +
                            ",\"channels\":" + std::to_string(img.channels) + ",\"text\":{";
            bool first = true;
            for (const auto& [k, v] : text) {
                s += (first ? "" : ",") + json_string(k) + ":" + json_string(v);
                first = false;
            }
            std::printf("%s}}\n", s.c_str());
        } else {
            std::printf("%s: PNG, %" PRId64 "x%" PRId64 ", %" PRId64 " channel(s)\n", path.c_str(), img.width,
                        img.height, img.channels);
            for (const auto& [k, v] : text) std::printf("  %-20s %s\n", k.c_str(), v.c_str());
        }
        return;
    }
    magnets::FileSummary fs = magnets::describe_file(path);
    std::string hash;
    auto fmt = fs.root_attrs.find("format");
    if (fmt != fs.root_attrs.end() && magnets::attr_to_string(fmt->second) == magnets::tokenizer_format)
        hash = tokenizer_weights_hash(path);
    if (json) {
        std::string s = "{\"file\":" + json_string(path) + ",\"type\":\"hdf5\",\"attrs\":" + json_attrs(fs.root_attrs) +
                        ",\"datasets\":{";
        bool first = true;
        for (const auto& [p, d] : fs.datasets) {
            s += (first ? "" : ",") + json_string(p) + ":" + json_string(d);
            first = false;
        }
        s += "}";
        if (!hash.empty()) s += ",\"weights_hash\":" + json_string(hash);
        std::printf("%s}\n", s.c_str());
        return;
    }
    int key_w = 14, path_w = 0;
    for (const auto& kv : fs.root_attrs) key_w = std::max(key_w, static_cast<int>(kv.first.size()));
    for (const auto& pd : fs.datasets) path_w = std::max(path_w, static_cast<int>(pd.first.size()));
    std::printf("%s: HDF5\n", path.c_str());
    for (const auto& [k, v] : fs.root_attrs)
        std::printf("  %-*s  %s\n", key_w, k.c_str(), magnets::attr_to_string(v).c_str());
    if (!hash.empty()) std::printf("  %-*s  %s\n", key_w, "(weights hash)", hash.c_str());
    std::printf("datasets:\n");
    for (const auto& [p, d] : fs.datasets) std::printf("  %-*s  %s\n", path_w, p.c_str(), d.c_str());
}

int run_info(const Args& a) {
    apply_global(a);
    if (a.operands().empty()) throw UsageError("info needs at least one FILE");
    for (const auto& path : a.operands()) info_one(path, a.flag("json"));
    return 0;
}

std::vector<CommandSpec> commands() {
    static const std::vector<CommandSpec> table = {
        {"train", "train a tokenizer on a dataset, or resume a run", nullptr, &train_options, run_train,
         print_presets},
        {"encode", "encode a dataset into a token file", nullptr, &encode_options, run_encode},
        {"decode", "decode token files into PNG images and a grid", nullptr, &decode_options, run_decode},
        {"eval", "measure reconstruction PSNR and codebook use on a split", nullptr, &eval_options, run_eval},
        {"info", "print the metadata of magnets files (HDF5, PNG or MP4)", "FILE...", &info_options, run_info},
    };
    return table;
}

} // namespace

int main(int argc, char** argv) {
    const Tool tool{prog, "train, apply and inspect the VQ image tokenizer of magnets", commands()};
    return run_tool(tool, argc, argv);
}
