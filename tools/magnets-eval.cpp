// magnets-eval: the feature classifier and the metrics between a real and a
// generated set (METHOD section 8).
//
//   train-classifier  train the feature network on a labelled real set
//   metrics           FID (on the classifier's features, named in the report),
//                     KID, Inception-Score analogue, precision/recall and
//                     class-conditional accuracy, with the real-vs-real floor
//
// A thin program over magnets/classifier.h and magnets/metrics.h. Exit status
// as in tools/cli.h.
#include "cli.h"

#include "magnets/classifier.h"
#include "magnets/dataset.h"
#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets/image.h"
#include "magnets/inception.h"
#include "magnets/log.h"
#include "magnets/metrics.h"
#include "magnets/plot.h"
#include "magnets/rng.h"
#include "magnets/sampler.h"
#include "magnets/transformer.h"
#include "magnets/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace {

using namespace magnets::cli;

constexpr const char* prog = "magnets-eval";

const std::vector<OptionSpec> train_classifier_options = {
    {"o,output", ArgKind::text, "FILE", "classifier checkpoint to write", nullptr, true},
    {"dataset", ArgKind::text, "SPEC", "fashion-mnist, moving-fashion-mnist (frames of clips, for video) or an image folder (one sub-folder per class)", "fashion-mnist"},
    {"image-size", ArgKind::integer, "N", "input side (Fashion-MNIST is padded to it)", "32"},
    {"channels", ArgKind::integer, "N", "1 (gray) or 3 (RGB)", "1"},
    {"epochs", ArgKind::integer, "N", "passes over the training split", "3"},
    {"batch-size", ArgKind::integer, "N", "images per step", "128"},
    {"lr", ArgKind::real, "X", "Adam peak learning rate (warm-up, cosine decay)", "0.001"},
    {"seed", ArgKind::integer, "N", "seed of the initialisation and data order", "1"},
    {"limit", ArgKind::integer, "N", "train on the first N images only (clips for moving-fashion-mnist)"},
    {"clip-frames", ArgKind::integer, "T", "moving-fashion-mnist: a clip classifier on whole T-frame clips (frames as channels) for clip-level FD, instead of frames"},
};

const std::vector<OptionSpec> metrics_options = {
    {"classifier", ArgKind::text, "FILE", "feature network (magnets-eval train-classifier; data/ ships one)"},
    {"inception", ArgKind::text, "FILE", "standard FID instead: Inception-v3 pool3 features from a magnets-inception "
                                         "file (scripts/convert_inception.py); no IS or class accuracy"},
    {"image-size", ArgKind::integer, "N", "with --inception: side the sets are loaded at (default: the tokenizer's, "
                                          "else 32); Inception resizes to 299"},
    {"channels", ArgKind::integer, "N", "with --inception: 1 or 3 (default: the tokenizer's, else 1)"},
    {"real", ArgKind::text, "SPEC", "reference set: fashion-mnist[:train|:test], moving-fashion-mnist[:train|:test] (per frame), an image folder, or a token file "
                                    "(with --tokenizer)", "fashion-mnist:test"},
    {"generated", ArgKind::texts, "SPEC", "generated set: token files (repeat to pool them) or a PNG folder", nullptr, true},
    {"tokenizer", ArgKind::text, "FILE", "tokenizer that decodes token files"},
    {"floor", ArgKind::text, "SPEC", "real set for the floor (default: the other split of --real)"},
    {"limit", ArgKind::integer, "N", "use at most N items of each set (clips for video)"},
    {"kid-subsets", ArgKind::integer, "N", "KID: random subsets averaged", "100"},
    {"kid-subset-size", ArgKind::integer, "N", "KID: items per subset", "1000"},
    {"k", ArgKind::integer, "N", "precision/recall: k of the k-NN radii", "3"},
    {"seed", ArgKind::integer, "N", "seed of the KID subsets", "1"},
    {"perturb", ArgKind::text, "HOW", "sanity check: degrade the generated set first: noise:SIGMA (Gaussian, "
                                      "clamped) or blur (3x3 box)"},
    {"json", ArgKind::flag, nullptr, "print one JSON object instead of a table"},
};

const std::vector<OptionSpec> sweep_options = {
    {"classifier", ArgKind::text, "FILE", "feature network (data/fmnist_classifier.h5)"},
    {"inception", ArgKind::text, "FILE", "standard FID instead: Inception-v3 pool3 features (no IS or class accuracy)"},
    {"model", ArgKind::texts, "FILE", "transformer checkpoint(s) to compare (repeat)", nullptr, true},
    {"tokenizer", ArgKind::text, "FILE", "tokenizer that decodes the samples", nullptr, true},
    {"real", ArgKind::text, "SPEC", "reference set", "fashion-mnist:test"},
    {"config", ArgKind::texts, "LABEL=SCHED[@CACHE]", "a sampling configuration, e.g. 'MaGNeTS=8:3,4:3,2:3,1:3@on-switch' "
                                                     "(repeat; default: full 1:12, MaGNeTS with and without cache, "
                                                     "scaling down, abrupt, cache never refreshed)"},
    {"per-class", ArgKind::integer, "N", "samples per class for every configuration", "100"},
    {"cfg", ArgKind::real, "S", "guidance scale for every configuration", "2"},
    {"seed", ArgKind::integer, "N", "sampling seed (the same samples' noise for every configuration)", "1"},
    {"batch-size", ArgKind::integer, "N", "images decoded together", "250"},
    {"o,output", ArgKind::text, "FILE.md", "markdown table; also FILE.csv, FILE.png (FID vs GFLOP/image) and "
                                          "FILE-speed.png (FID vs images/s)", nullptr, true},
    {"k", ArgKind::integer, "N", "precision/recall k", "3"},
    {"kid-subsets", ArgKind::integer, "N", "KID subsets", "20"},
    {"kid-subset-size", ArgKind::integer, "N", "KID subset size", "1000"},
};

// ---- the feature network ------------------------------------------------------------
// The project's classifier (features, class probabilities, class names) or
// Inception-v3 (pool3 features only, the standard FID). `cc` carries the
// resolution the sets are loaded at and, for the classifier, its classes.
struct FeatureNet {
    std::unique_ptr<magnets::Classifier> cls;
    std::unique_ptr<magnets::InceptionV3> inc;
    magnets::ClassifierConfig cc;

    int64_t dim() const { return cls ? cls->feature_dim() : magnets::InceptionV3::feature_dim; }
    int64_t classes() const { return cls ? cls->num_classes() : 0; }
    std::string hash() const { return cls ? cls->hash() : inc->hash(); }
    // "magnets-classifier 312d... (fashion-mnist)" or "Inception-v3 pool3 (FID) 1a2b...".
    std::string describe() const {
        return cls ? "magnets-classifier " + hash() + " (" + cc.dataset + ")" : "Inception-v3 pool3 (FID) " + hash();
    }
    std::string fid_label() const { return cls ? "FID (classifier features)" : "FID (Inception pool3)"; }
    // images [n, c, s, s] at cc's resolution -> feats [n, dim], probs [n, classes] (may be null).
    void features(const float* images, int64_t n, float* feats, float* probs) {
        if (cls) cls->features(images, n, feats, probs);
        else inc->features(images, n, cc.image_size, cc.image_size, cc.channels, feats);
    }
};

FeatureNet load_feature_net(const Args& a, std::shared_ptr<magnets::Backend> be, const magnets::Tokenizer* tok) {
    FeatureNet net;
    if (a.has("classifier") == a.has("inception"))
        throw UsageError("give exactly one feature network: --classifier FILE or --inception FILE");
    if (a.has("classifier")) {
        net.cls = std::make_unique<magnets::Classifier>(magnets::Classifier::load(a.text("classifier"), be));
        net.cc = net.cls->config();
        return net;
    }
    net.inc = std::make_unique<magnets::InceptionV3>(magnets::InceptionV3::load(a.text("inception"), be));
    net.cc.dataset = "ImageNet (Inception-v3)";
    net.cc.image_size = tok ? tok->config().image_size : 32;
    net.cc.channels = tok ? tok->config().channels : 1;
    if (a.has("image-size")) net.cc.image_size = a.positive("image-size");
    if (a.has("channels")) net.cc.channels = a.positive("channels");
    if (net.cc.channels != 1 && net.cc.channels != 3) throw UsageError("--channels must be 1 or 3");
    return net;
}

// ---- sets of images ---------------------------------------------------------------

// Video is measured per frame: a set of clips holds every frame as an image
// (n counts frames, items counts clips), each with its clip's label.
struct Set {
    std::string spec, what;            // what: a description for the report
    std::vector<float> images;         // [n, c, s, s] in [0, 1]
    std::vector<int32_t> labels;       // requested class per image (-1 = none)
    std::vector<std::string> class_names; // what the labels mean (empty = unknown)
    int64_t n = 0, channels = 0, size = 0;
    int64_t items = 0, frames = 1;     // images or clips, and frames per clip
    bool whole_clips = false;          // a clip classifier's set: one image per clip, its frames as channels
};

// --limit and sample counts count items (clips for video); n counts images.
std::string describe(const Set& s) {
    if (s.whole_clips) return s.spec + " (" + std::to_string(s.items) + " clips of " + std::to_string(s.frames) + " frames)";
    if (s.frames > 1)
        return s.spec + " (" + std::to_string(s.items) + " clips, " + std::to_string(s.n) + " frames)";
    return s.spec + " (" + std::to_string(s.n) + " images)";
}

// "moving-fashion-mnist[:split]": every frame of its clips as an image.
bool is_moving(const std::string& spec) { return spec.rfind("moving-fashion-mnist", 0) == 0; }

// Frames of `frames`-frame clips -> images with their clip's label; for a clip
// classifier (whole), one image per clip with its frames as channels (the
// same bytes).
void add_frames(Set& set, const float* clips, int64_t items, int64_t frames, int64_t per_frame,
                const int32_t* labels, bool whole) {
    set.images.insert(set.images.end(), clips, clips + items * frames * per_frame);
    const int64_t per_item = whole ? 1 : frames;
    for (int64_t i = 0; i < items; ++i) set.labels.insert(set.labels.end(), static_cast<size_t>(per_item), labels[i]);
    set.n += items * per_item;
    set.items += items;
    set.frames = frames;
    set.whole_clips = whole;
}

// The clip length a feature network sees: a clip classifier's, else the
// video tokenizer's (frames are measured one by one), else 16.
int64_t clip_length(const magnets::ClassifierConfig& cc, const magnets::Tokenizer* tok, const std::string& what) {
    const int64_t t = tok && tok->config().video() ? tok->config().clip_frames : 0;
    if (cc.clip_frames > 1) {
        if (t && t != cc.clip_frames)
            throw magnets::Error("the clip classifier does not fit the tokenizer", what,
                                 "it takes clips of " + std::to_string(cc.clip_frames) + " frames, the tokenizer makes " +
                                     std::to_string(t),
                                 "train-classifier --clip-frames " + std::to_string(t));
        return cc.clip_frames;
    }
    return t ? t : 16;
}

bool ends_with(const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Decodes token files (all with the same grid) through the tokenizer.
void add_tokens(Set& set, const std::string& path, magnets::Tokenizer* tok, const magnets::ClassifierConfig& cc,
                int64_t limit) {
    const magnets::TokenFile tf = magnets::read_token_file(path); // checks it is a token file first
    if (!tok) throw UsageError(path + " is a token file: give --tokenizer to decode it");
    const magnets::TokenizerConfig& tc = tok->config();
    if (tf.codebook_size != tc.codebook_size || tf.grid_t != tc.grid_t() || tf.grid_h != tc.tokens_side() ||
        tf.grid_w != tc.tokens_side())
        throw magnets::Error("token file does not fit the tokenizer", path,
                             "its codebook/grid is " + std::to_string(tf.codebook_size) + "/" + std::to_string(tf.grid_t) +
                                 "x" + std::to_string(tf.grid_h) + "x" + std::to_string(tf.grid_w) + ", the tokenizer's " +
                                 std::to_string(tc.codebook_size) + "/" + std::to_string(tc.grid_t()) + "x" +
                                 std::to_string(tc.tokens_side()) + "x" + std::to_string(tc.tokens_side()),
                             "pass the tokenizer the tokens were made with");
    if (!tf.tokenizer_hash.empty() && tf.tokenizer_hash != "unknown" && tf.tokenizer_hash != tok->hash())
        magnets::log_warn("%s was made with tokenizer %s, decoding with %s", path.c_str(), tf.tokenizer_hash.c_str(),
                          tok->hash().c_str());
    int64_t n = tf.count();
    if (limit >= 0) n = std::min(n, std::max<int64_t>(limit - set.items, 0));
    // An item decodes to clip_frames frames (1 for images): grid_t slots of stacked frames.
    const int64_t T = tc.clip_frames, g = tc.grid_t();
    const int64_t per = tc.channels * tc.image_size * tc.image_size, N = tf.tokens_per_item();
    const bool whole = cc.clip_frames > 1;
    if (whole && !tc.video())
        throw magnets::Error("a clip classifier measures video", path, "the tokenizer makes images",
                             "use an image classifier for images");
    if (whole) clip_length(cc, tok, path); // checks the lengths agree
    if (set.n == 0) { set.channels = whole ? T * tc.channels : tc.channels; set.size = tc.image_size; }
    std::vector<float> clips(static_cast<size_t>(std::min<int64_t>(256, n) * T * per));
    for (int64_t first = 0; first < n; first += 256) {
        const int64_t b = std::min<int64_t>(256, n - first);
        tok->decode(tf.tokens.data() + first * N, b * g, clips.data());
        add_frames(set, clips.data(), b, T, per, tf.labels.data() + first, whole);
    }
    if (set.class_names.empty()) set.class_names = tf.class_names;
}

// A flat folder of sample PNGs (magnets-sample --png): grid.png is skipped, the
// class comes from each PNG's magnets-class text chunk (-1 when absent).
bool add_sample_pngs(Set& set, const std::string& dir, const magnets::ClassifierConfig& cc, int64_t limit) {
    namespace fs = std::filesystem;
    std::vector<std::string> files;
    bool subdirs = false;
    for (const auto& e : fs::directory_iterator(dir)) {
        if (e.is_directory()) subdirs = true;
        const std::string name = e.path().filename().string();
        if (e.is_regular_file() && ends_with(name, ".png") && name != "grid.png") files.push_back(e.path().string());
    }
    if (subdirs || files.empty()) return false; // a class-folder dataset: load_dataset handles it
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) {
        if (limit >= 0 && set.items >= limit) break;
        const magnets::Image im = magnets::read_image(f);
        if (im.width != cc.image_size || im.height != cc.image_size || im.channels != cc.channels)
            throw magnets::Error("images do not fit the classifier", f,
                                 "it is " + std::to_string(im.channels) + "x" + std::to_string(im.height) + "x" +
                                     std::to_string(im.width) + "; the classifier takes " + std::to_string(cc.channels) +
                                     "x" + std::to_string(cc.image_size) + "x" + std::to_string(cc.image_size),
                                 "use a classifier trained at this resolution, or sample at it");
        const size_t px = static_cast<size_t>(im.width * im.height);
        for (int64_t c = 0; c < im.channels; ++c)
            for (size_t i = 0; i < px; ++i) set.images.push_back(im.pixels[i * static_cast<size_t>(im.channels) + static_cast<size_t>(c)] / 255.0f);
        int32_t label = -1;
        const auto text = magnets::read_png_text(f);
        if (auto it = text.find("magnets-class"); it != text.end() && !it->second.empty() && std::isdigit(static_cast<unsigned char>(it->second[0])))
            label = static_cast<int32_t>(std::strtol(it->second.c_str(), nullptr, 10));
        set.labels.push_back(label);
        ++set.n;
        ++set.items;
    }
    set.channels = cc.channels;
    set.size = cc.image_size;
    return true;
}

Set load_set(const std::string& spec, const std::vector<std::string>& parts, magnets::Tokenizer* tok,
             const magnets::ClassifierConfig& cc, int64_t limit) {
    Set set;
    set.spec = spec;
    for (const std::string& p : parts) {
        if (ends_with(p, ".h5") || ends_with(p, ".hdf5")) {
            add_tokens(set, p, tok, cc, limit);
            continue;
        }
        if (is_moving(p)) { // clips of the tokenizer's length (16 without a video tokenizer)
            const std::string split = p.size() > 20 && p[20] == ':' ? p.substr(21) : std::string("test");
            const int64_t T = clip_length(cc, tok, p);
            if (cc.channels != 1)
                throw magnets::Error("moving-fashion-mnist clips are gray", p, "the feature network takes " +
                                     std::to_string(cc.channels) + " channels", "use a 1-channel feature network");
            const int64_t want = limit >= 0 ? std::max<int64_t>(limit - set.items, 0) : 0;
            if (limit >= 0 && want == 0) continue;
            magnets::ImageSet clips = magnets::load_moving_fashion_mnist(split, split == "all" ? 0 : want, T, cc.image_size);
            const int64_t m = limit >= 0 ? std::min(want, clips.count()) : clips.count();
            std::vector<float> x(static_cast<size_t>(m * clips.pixels_per_item()));
            clips.to_float(0, m, x.data());
            if (set.n == 0) { set.channels = cc.in_channels(); set.size = cc.image_size; }
            add_frames(set, x.data(), m, T, cc.image_size * cc.image_size, clips.labels.data(), cc.clip_frames > 1);
            if (set.class_names.empty()) set.class_names = clips.class_names;
            continue;
        }
        if (std::filesystem::is_directory(p) && add_sample_pngs(set, p, cc, limit)) continue;
        std::string name = p, split = "test";
        if (p.rfind("fashion-mnist", 0) == 0) {
            name = "fashion-mnist";
            if (p.size() > 13 && p[13] == ':') split = p.substr(14);
        } else {
            split = "all";
        }
        magnets::ImageSet is = magnets::load_dataset(name, split, cc.channels, cc.image_size);
        int64_t n = is.count();
        if (limit >= 0) n = std::min(n, limit);
        const size_t at = set.images.size();
        set.images.resize(at + static_cast<size_t>(n * is.pixels_per_item()));
        is.to_float(0, n, set.images.data() + at);
        set.labels.insert(set.labels.end(), is.labels.begin(), is.labels.begin() + n);
        if (set.class_names.empty()) set.class_names = is.class_names;
        set.n += n;
        set.items += n;
        set.channels = is.channels;
        set.size = is.height;
    }
    if (set.n == 0) throw magnets::Error("empty set", spec, "no images to evaluate", "check the path, split or --limit");
    if (set.channels != cc.in_channels() || set.size != cc.image_size)
        throw magnets::Error("images do not fit the classifier", spec,
                             "they are " + std::to_string(set.channels) + "x" + std::to_string(set.size) + "x" +
                                 std::to_string(set.size) + "; the classifier takes " + std::to_string(cc.in_channels()) +
                                 "x" + std::to_string(cc.image_size) + "x" + std::to_string(cc.image_size),
                             "use a classifier trained at this resolution (train-classifier --image-size/--channels)");
    set.what = describe(set);
    return set;
}

// The other split of a built-in reference set (empty for folders and token files).
std::string default_floor(const std::string& real_spec) {
    for (const std::string base : {"fashion-mnist", "moving-fashion-mnist"})
        if (real_spec == base + ":train") return base + ":test";
        else if (real_spec == base || real_spec.rfind(base + ":", 0) == 0) return base + ":train";
    return {};
}

struct Report {
    double fid = NAN, kid = NAN, kid_std = NAN, is = NAN, is_std = NAN, precision = NAN, recall = NAN, class_acc = NAN;
    std::string warning;
};

Report measure(FeatureNet& net, const Set& real, const std::vector<float>& real_feats, const Set& gen, const Args& a) {
    const int64_t F = net.dim(), C = net.classes();
    std::vector<float> feats(static_cast<size_t>(gen.n * F)), probs(static_cast<size_t>(gen.n * C));
    net.features(gen.images.data(), gen.n, feats.data(), C ? probs.data() : nullptr);
    Report r;
    const magnets::FeatureStats sr = magnets::feature_stats(real_feats.data(), real.n, F);
    const magnets::FeatureStats sg = magnets::feature_stats(feats.data(), gen.n, F);
    r.fid = magnets::frechet_distance(sr, sg, &r.warning);
    const magnets::KidResult kid = magnets::kernel_inception_distance(
        real_feats.data(), real.n, feats.data(), gen.n, F, a.positive("kid-subsets"), a.positive("kid-subset-size"),
        static_cast<uint64_t>(a.positive("seed", true)));
    r.kid = kid.mean;
    r.kid_std = kid.std;
    const int64_t k = a.positive("k");
    if (k < std::min(real.n, gen.n)) {
        const magnets::PrecisionRecall pr = magnets::precision_recall(real_feats.data(), real.n, feats.data(), gen.n, F, k);
        r.precision = pr.precision;
        r.recall = pr.recall;
    }
    if (C == 0) return r; // Inception pool3: no class head, so no IS or class accuracy
    // IS splits are contiguous: shuffle first (a fixed Philox permutation), or a
    // class-sorted set (magnets-sample --per-class) gives one class per split.
    std::vector<float> shuffled(probs.size());
    {
        std::vector<int64_t> perm(static_cast<size_t>(gen.n));
        for (int64_t i = 0; i < gen.n; ++i) perm[static_cast<size_t>(i)] = i;
        magnets::Philox rng(12345);
        for (int64_t i = gen.n - 1; i > 0; --i)
            std::swap(perm[static_cast<size_t>(i)], perm[rng.below(11, static_cast<uint64_t>(i), static_cast<uint32_t>(i + 1))]);
        for (int64_t i = 0; i < gen.n; ++i)
            std::copy(probs.begin() + perm[static_cast<size_t>(i)] * C, probs.begin() + (perm[static_cast<size_t>(i)] + 1) * C,
                      shuffled.begin() + i * C);
    }
    const magnets::IsResult is = magnets::inception_score(shuffled.data(), gen.n, C, std::min<int64_t>(10, gen.n));
    r.is = is.mean;
    r.is_std = is.std;
    // Class accuracy only where the set's labels mean the classifier's classes:
    // a set labelled in another dataset's classes would give a wrong number.
    const std::vector<std::string>& names = net.cc.class_names;
    if (!gen.class_names.empty() && !names.empty() && gen.class_names != names) {
        std::string g, c;
        for (const auto& x : gen.class_names) g += (g.empty() ? "" : ",") + x;
        for (const auto& x : names) c += (c.empty() ? "" : ",") + x;
        r.warning += std::string(r.warning.empty() ? "" : "; ") + "class accuracy not computed: the generated set's classes (" +
                     g.substr(0, 80) + ") are not the classifier's (" + c.substr(0, 80) + ")";
        return r;
    }
    int64_t labelled = 0, ok = 0;
    for (int64_t i = 0; i < gen.n; ++i) {
        const int32_t y = gen.labels[static_cast<size_t>(i)];
        if (y < 0) continue;
        if (y >= C) {
            r.warning += std::string(r.warning.empty() ? "" : "; ") + "class accuracy not computed: label " +
                         std::to_string(y) + " is out of the classifier's " + std::to_string(C) + " classes";
            return r;
        }
        ++labelled;
        const float* p = probs.data() + i * C;
        if (std::max_element(p, p + C) - p == y) ++ok;
    }
    if (labelled > 0) r.class_acc = static_cast<double>(ok) / static_cast<double>(labelled);
    return r;
}

int run_train_classifier(const Args& a) {
    const std::string backend_name = apply_global(a);
    const std::string out = a.text("output"), spec = a.text("dataset");
    magnets::check_writable(out);
    const int64_t size = a.positive("image-size"), channels = a.positive("channels");
    magnets::ImageSet train, test;
    const int64_t clip_frames = a.has("clip-frames") ? a.positive("clip-frames") : 1;
    if (spec == "moving-fashion-mnist") {
        // Per-frame features for video: the frames of 16-frame clips, each with its
        // clip's class; --limit counts clips (default 2,000 train, 500 test). With
        // --clip-frames T: whole clips of T frames stacked as channels (a
        // spatio-temporal feature network: the first convolution sees the motion).
        if (channels != 1) throw UsageError("moving-fashion-mnist is gray: --channels 1");
        const int64_t clips = a.has("limit") ? a.positive("limit") : 2000, T = clip_frames > 1 ? clip_frames : 16;
        const int64_t slot = clip_frames > 1 ? clip_frames : 1;
        train = magnets::clips_to_slots(magnets::load_moving_fashion_mnist("train", clips, T, size), slot);
        test = magnets::clips_to_slots(magnets::load_moving_fashion_mnist("test", std::min<int64_t>(clips, 500), T, size), slot);
    } else {
        if (clip_frames > 1) throw UsageError("--clip-frames needs --dataset moving-fashion-mnist (video clips)");
        train = magnets::load_dataset(spec, spec == "fashion-mnist" ? "train" : "all", channels, size);
        test = spec == "fashion-mnist" ? magnets::load_dataset(spec, "test", channels, size) : magnets::ImageSet{};
    }
    if (a.has("limit") && spec != "moving-fashion-mnist") {
        const int64_t n = std::min(a.positive("limit"), train.count());
        train.labels.resize(static_cast<size_t>(n));
        train.pixels.resize(static_cast<size_t>(n * train.pixels_per_item()));
    }
    magnets::ClassifierConfig cc;
    cc.image_size = size; cc.channels = channels; cc.clip_frames = clip_frames;
    cc.num_classes = static_cast<int64_t>(train.class_names.size());
    cc.dataset = spec;
    cc.class_names = train.class_names;
    if (cc.num_classes < 2) throw magnets::Error("cannot train a classifier", spec, "fewer than 2 classes",
                                                 "an image folder needs one sub-folder per class");
    magnets::ClassifierTrainConfig tc;
    tc.epochs = a.positive("epochs"); tc.batch_size = a.positive("batch-size");
    tc.lr = a.nonnegative("lr", true); tc.seed = static_cast<uint64_t>(a.positive("seed", true));
    auto be = backend_for(backend_name);
    magnets::Classifier net(cc, be);
    net.init(tc.seed);
    print_table({{"dataset", spec + " (" + std::to_string(train.count()) + " training images, " +
                                 std::to_string(cc.num_classes) + " classes)"},
                 {"input", (clip_frames > 1 ? std::to_string(clip_frames) + " frames (as channels) x " : std::string()) +
                               std::to_string(channels) + "x" + std::to_string(size) + "x" + std::to_string(size)},
                 {"epochs / batch / lr", std::to_string(tc.epochs) + " / " + std::to_string(tc.batch_size) + " / " +
                                             std::to_string(tc.lr)},
                 {"output", out}, {"backend", be->name()}});
    const double t0 = magnets::now_seconds();
    net.train(train, tc, [](const magnets::Classifier::Log& l) {
        magnets::log_info("step %6" PRId64 "/%" PRId64 "  loss %.4f  acc %.2f%%  img/s %.0f", l.step, l.steps, l.loss,
                          100 * l.accuracy, l.images_per_s);
    });
    magnets::Attrs extra;
    extra["train_epochs"] = tc.epochs; extra["train_batch_size"] = tc.batch_size; extra["train_lr"] = tc.lr;
    extra["train_seed"] = static_cast<int64_t>(tc.seed); extra["train_images"] = train.count();
    if (test.count() > 0) {
        const double acc = net.accuracy(test);
        extra["test_accuracy"] = acc;
        magnets::log_info("test accuracy %.2f%% on %s test (%" PRId64 " images)", 100 * acc, spec.c_str(), test.count());
    }
    net.save(out, prog, extra);
    magnets::log_info("wrote %s in %.0f s (weights hash %s)", out.c_str(), magnets::now_seconds() - t0, net.hash().c_str());
    return 0;
}

std::string num(double v, const char* f = "%.4f") {
    if (!std::isfinite(v)) return "-";
    char buf[48];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

int run_metrics(const Args& a) {
    const std::string backend_name = apply_global(a);
    auto be = backend_for(backend_name);
    std::unique_ptr<magnets::Tokenizer> tok;
    if (a.has("tokenizer")) tok = std::make_unique<magnets::Tokenizer>(magnets::Tokenizer::load(a.text("tokenizer"), be));
    FeatureNet net = load_feature_net(a, be, tok.get());
    const magnets::ClassifierConfig& cc = net.cc;
    const int64_t limit = a.limit();
    const std::string real_spec = a.text("real");
    if (net.cls && cc.dataset == "fashion-mnist" && real_spec.rfind("fashion-mnist", 0) != 0)
        magnets::log_warn("the classifier was trained on %s, the reference set is %s: its features may not suit it",
                          cc.dataset.c_str(), real_spec.c_str());
    const Set real = load_set(real_spec, {real_spec}, tok.get(), cc, limit);
    const std::vector<std::string> gen_parts = a.texts("generated");
    std::string gen_spec;
    for (const auto& g : gen_parts) gen_spec += (gen_spec.empty() ? "" : " + ") + g;
    Set gen = load_set(gen_spec, gen_parts, tok.get(), cc, limit);
    if (a.has("perturb")) { // sanity checks of the metric: degraded copies must score far worse
        const std::string how = a.text("perturb");
        const int64_t s = gen.size, ch = gen.channels;
        if (how.rfind("noise:", 0) == 0) {
            const double sigma = std::strtod(how.c_str() + 6, nullptr);
            if (!(sigma > 0)) throw UsageError("--perturb noise:SIGMA needs a positive SIGMA");
            magnets::Philox rng(static_cast<uint64_t>(a.positive("seed", true)));
            for (size_t i = 0; i < gen.images.size(); ++i)
                gen.images[i] = std::clamp(gen.images[i] + static_cast<float>(sigma) * rng.normal(7, i), 0.0f, 1.0f);
        } else if (how == "blur") {
            std::vector<float> out(gen.images.size());
            for (int64_t img = 0; img < gen.n * ch; ++img) {
                const float* src = gen.images.data() + img * s * s;
                float* dst = out.data() + img * s * s;
                for (int64_t y = 0; y < s; ++y)
                    for (int64_t x = 0; x < s; ++x) {
                        float acc = 0;
                        int cnt = 0;
                        for (int64_t dy = -1; dy <= 1; ++dy)
                            for (int64_t dx = -1; dx <= 1; ++dx) {
                                const int64_t yy = y + dy, xx = x + dx;
                                if (yy < 0 || xx < 0 || yy >= s || xx >= s) continue;
                                acc += src[yy * s + xx];
                                ++cnt;
                            }
                        dst[y * s + x] = acc / static_cast<float>(cnt);
                    }
            }
            gen.images.swap(out);
        } else {
            throw UsageError("--perturb: '" + how + "' (use noise:SIGMA or blur)");
        }
        gen.what += ", perturbed: " + how;
    }
    // Floor: a real set of the generated set's size, other than the reference.
    std::string floor_spec = a.has("floor") ? a.text("floor") : default_floor(real_spec);
    const int64_t F = net.dim();
    std::vector<float> real_feats(static_cast<size_t>(real.n * F));
    net.features(real.images.data(), real.n, real_feats.data(), nullptr);
    const Report rg = measure(net, real, real_feats, gen, a);
    Report rf;
    std::string floor_what = "none (give --floor)";
    if (!floor_spec.empty()) {
        const Set fl = load_set(floor_spec, {floor_spec}, tok.get(), cc, gen.items);
        floor_what = fl.what;
        rf = measure(net, real, real_feats, fl, a);
    }
    if (!rg.warning.empty()) magnets::log_warn("%s", rg.warning.c_str());
    if (a.flag("json")) {
        auto obj = [&](const Report& r) {
            return std::string("{\"fid\":") + json_number(r.fid) + ",\"kid\":" + json_number(r.kid) + ",\"kid_std\":" +
                   json_number(r.kid_std) + ",\"is\":" + json_number(r.is) + ",\"is_std\":" + json_number(r.is_std) +
                   ",\"precision\":" + json_number(r.precision) + ",\"recall\":" + json_number(r.recall) +
                   ",\"class_accuracy\":" + json_number(r.class_acc) + "}";
        };
        std::printf("{\"feature_network\":%s,\"feature_network_hash\":%s,\"real\":%s,\"generated\":%s,\"floor\":%s,"
                    "\"metrics\":%s,\"floor_metrics\":%s%s}\n",
                    json_string(net.describe()).c_str(), json_string(net.hash()).c_str(),
                    json_string(real.what).c_str(), json_string(gen.what).c_str(), json_string(floor_what).c_str(),
                    obj(rg).c_str(), obj(rf).c_str(),
                    rg.warning.empty() ? "" : (",\"warning\":" + json_string(rg.warning)).c_str());
        return 0;
    }
    std::printf("feature network: %s, %" PRId64 "-d features\n", net.describe().c_str(), F);
    std::printf("reference: %s\ngenerated: %s\nfloor:     %s\n\n", real.what.c_str(), gen.what.c_str(), floor_what.c_str());
    std::printf("%-26s %14s %14s\n", "metric", "generated", "floor (real)");
    std::printf("%-26s %14s %14s\n", net.fid_label().c_str(), num(rg.fid).c_str(), num(rf.fid).c_str());
    std::printf("%-26s %14s %14s\n", "KID x 1000", (num(rg.kid * 1000, "%.3f") + " +-" + num(rg.kid_std * 1000, "%.3f")).c_str(),
                (num(rf.kid * 1000, "%.3f") + " +-" + num(rf.kid_std * 1000, "%.3f")).c_str());
    auto pm = [](double v, double sd) { return std::isfinite(v) ? num(v, "%.3f") + " +-" + num(sd, "%.3f") : std::string("-"); };
    std::printf("%-26s %14s %14s\n", "IS analogue", pm(rg.is, rg.is_std).c_str(), pm(rf.is, rf.is_std).c_str());
    std::printf("%-26s %14s %14s\n", "precision", num(rg.precision, "%.3f").c_str(), num(rf.precision, "%.3f").c_str());
    std::printf("%-26s %14s %14s\n", "recall", num(rg.recall, "%.3f").c_str(), num(rf.recall, "%.3f").c_str());
    std::printf("%-26s %14s %14s\n", "class accuracy", num(rg.class_acc, "%.3f").c_str(), num(rf.class_acc, "%.3f").c_str());
    return 0;
}

int run_sweep(const Args& a) {
    const std::string backend_name = apply_global(a);
    auto be = backend_for(backend_name);
    magnets::Tokenizer tok = magnets::Tokenizer::load(a.text("tokenizer"), be);
    FeatureNet net = load_feature_net(a, be, &tok);
    const magnets::ClassifierConfig& cc = net.cc;
    const std::string out = a.text("output");
    magnets::check_writable(out);
    const std::string base = ends_with(out, ".md") ? out.substr(0, out.size() - 3) : out;
    std::vector<std::pair<std::string, std::string>> configs; // label, schedule@cache
    for (const auto& c : a.texts("config")) {
        const size_t eq = c.find('=');
        if (eq == std::string::npos || eq == 0) throw UsageError("--config '" + c + "': write LABEL=SCHEDULE[@CACHE]");
        configs.emplace_back(c.substr(0, eq), c.substr(eq + 1));
    }
    if (configs.empty())
        configs = {{"full model every step", "1:12@none"},
                   {"MaGNeTS (scale up), cache", "8:3,4:3,2:3,1:3@on-switch"},
                   {"MaGNeTS, no cache", "8:3,4:3,2:3,1:3@none"},
                   {"scale down, equal compute", "1:3,2:3,4:3,8:3@on-switch"},
                   {"abrupt", "8:6,1:6@on-switch"},
                   {"cache never refreshed", "8:3,4:3,2:3,1:3@never"}};
    const Set real = load_set(a.text("real"), {a.text("real")}, &tok, cc, -1);
    const int64_t F = net.dim();
    std::vector<float> real_feats(static_cast<size_t>(real.n * F));
    net.features(real.images.data(), real.n, real_feats.data(), nullptr);
    const int64_t per_class = a.positive("per-class"), batch = a.positive("batch-size");

    struct Row {
        std::string model, label, schedule, cache, note;
        double gflop = NAN, ips = NAN;
        Report r;
    };
    std::vector<Row> rows;
    for (const std::string& mp : a.texts("model")) {
        magnets::Transformer model = magnets::Transformer::load(mp, be, true);
        const magnets::TransformerConfig& mc = model.config();
        std::vector<std::string> class_names;
        {
            const magnets::Checkpoint meta = magnets::read_checkpoint(mp, magnets::transformer_format,
                                                                      magnets::transformer_format_version, false);
            if (auto it = meta.attrs.find("class_names"); it != meta.attrs.end())
                class_names = split_lines(magnets::attr_to_string(it->second));
        }
        std::vector<int32_t> classes;
        for (int32_t c = 0; c < std::max<int64_t>(mc.num_classes, 1); ++c)
            for (int64_t i = 0; i < per_class; ++i) classes.push_back(mc.num_classes ? c : -1);
        for (const auto& [label, spec] : configs) {
            Row row;
            row.model = mp;
            row.label = label;
            const size_t at = spec.find('@');
            row.schedule = spec.substr(0, at);
            row.cache = at == std::string::npos ? "on-switch" : spec.substr(at + 1);
            magnets::SampleConfig sc;
            try {
                sc.schedule = magnets::parse_size_schedule(row.schedule);
                sc.cache = magnets::parse_cache_policy(row.cache);
                sc.validate(mc);
            } catch (const magnets::Error& e) {
                row.note = std::string("skipped: ") + e.what();
                magnets::log_warn("%s / %s: %s", mp.c_str(), label.c_str(), e.what());
                rows.push_back(row);
                continue;
            }
            sc.cfg_scale = a.nonnegative("cfg");
            sc.seed = static_cast<uint64_t>(a.positive("seed", true));
            if (sc.cache.mode == magnets::CachePolicy::never && mc.nesting == magnets::Nesting::width)
                row.note = "width nesting: every switch refreshes, same as on-switch";
            const magnets::SampleResult res = magnets::sample(model, sc, classes.data(), static_cast<int64_t>(classes.size()), 0, batch);
            row.gflop = res.flops_per_image / 1e9;
            row.ips = static_cast<double>(classes.size()) / std::max(res.seconds, 1e-9);
            Set gen; // video: every frame of every clip
            gen.spec = label;
            gen.channels = cc.in_channels();
            gen.size = cc.image_size;
            gen.class_names = class_names;
            const magnets::TokenizerConfig& tcfg = tok.config();
            const int64_t per = tcfg.channels * tcfg.image_size * tcfg.image_size, items = static_cast<int64_t>(classes.size());
            std::vector<float> clips(static_cast<size_t>(std::min<int64_t>(256, items) * tcfg.clip_frames * per));
            for (int64_t f = 0; f < items; f += 256) {
                const int64_t b = std::min<int64_t>(256, items - f);
                tok.decode(res.tokens.data() + f * mc.tokens(), b * tcfg.grid_t(), clips.data());
                add_frames(gen, clips.data(), b, tcfg.clip_frames, per, classes.data() + f, cc.clip_frames > 1);
            }
            if (tok.config().image_size != cc.image_size || tok.config().channels != cc.channels)
                throw magnets::Error("the tokenizer's images do not fit the classifier", a.text("tokenizer"), {},
                                     "use a classifier trained at the tokenizer's resolution");
            row.r = measure(net, real, real_feats, gen, a);
            if (!row.r.warning.empty()) magnets::log_warn("%s / %s: %s", mp.c_str(), label.c_str(), row.r.warning.c_str());
            magnets::log_info("%-28s %-18s %-10s %7.3f GFLOP/img %7.1f img/s  FID %.3f", label.c_str(), row.schedule.c_str(),
                              row.cache.c_str(), row.gflop, row.ips, row.r.fid);
            rows.push_back(row);
        }
    }
    // The floor: real images of the same count.
    std::string floor_spec = default_floor(a.text("real"));
    Report floor;
    if (!floor_spec.empty()) {
        const int64_t n = per_class * std::max<int64_t>(cc.num_classes, 1);
        const Set fl = load_set(floor_spec, {floor_spec}, &tok, cc, n);
        floor = measure(net, real, real_feats, fl, a);
    }
    // Markdown, CSV, plots.
    std::string md = "# magnets-eval sweep\n\nFeature network: " + net.describe() + "; reference " + real.what + "; " + std::to_string(per_class) + " samples per class, CFG " +
                     num(a.real("cfg"), "%g") + ", seed " + std::to_string(a.integer("seed")) + ".\n\n";
    md += "| model | configuration | schedule | cache | GFLOP/image | images/s | FID | KID x1000 | precision | recall | class acc | IS | note |\n";
    md += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    std::string csv = "model,configuration,schedule,cache,gflop_per_image,images_per_s,fid,kid,precision,recall,class_accuracy,is,note\n";
    for (const Row& r : rows) {
        md += "| " + r.model + " | " + r.label + " | `" + r.schedule + "` | " + r.cache + " | " + num(r.gflop) + " | " +
              num(r.ips, "%.1f") + " | " + num(r.r.fid, "%.3f") + " | " + num(r.r.kid * 1000, "%.2f") + " | " +
              num(r.r.precision, "%.3f") + " | " + num(r.r.recall, "%.3f") + " | " + num(r.r.class_acc, "%.3f") + " | " +
              num(r.r.is, "%.2f") + " | " + r.note + " |\n";
        csv += r.model + "," + r.label + ",\"" + r.schedule + "\"," + r.cache + "," + num(r.gflop, "%.6f") + "," +
               num(r.ips, "%.3f") + "," + num(r.r.fid, "%.6f") + "," + num(r.r.kid, "%.6g") + "," + num(r.r.precision) + "," +
               num(r.r.recall) + "," + num(r.r.class_acc) + "," + num(r.r.is) + ",\"" + r.note + "\"\n";
    }
    if (!floor_spec.empty())
        md += "| (real " + floor_spec + ") | floor | - | - | - | - | " + num(floor.fid, "%.3f") + " | " +
              num(floor.kid * 1000, "%.2f") + " | " + num(floor.precision, "%.3f") + " | " + num(floor.recall, "%.3f") + " | " +
              num(floor.class_acc, "%.3f") + " | " + num(floor.is, "%.2f") + " | same count of real images |\n";
    md += "\nGFLOP/image: the sampler's exact count of the rows it computed (both guidance branches); images/s: "
          "sampling only, measured in this run.\n";
    auto write_text = [](const std::string& path, const std::string& text) {
        magnets::AtomicOutput o(path);
        std::FILE* f = std::fopen(o.temp_path().c_str(), "w");
        if (!f) throw magnets::Error("cannot write", path, std::strerror(errno), "check the folder");
        std::fputs(text.c_str(), f);
        std::fclose(f);
        o.commit();
    };
    write_text(out, md);
    write_text(base + ".csv", csv);
    // One series per configuration (its points: one per checkpoint), so colours mean configurations.
    std::vector<magnets::PlotSeries> by_flops, by_speed;
    for (const auto& [label, spec] : configs) {
        magnets::PlotSeries f{label, {}, {}, true, false}, v{label, {}, {}, true, false};
        for (const Row& r : rows) {
            if (r.label != label || !std::isfinite(r.r.fid)) continue;
            f.x.push_back(r.gflop); f.y.push_back(r.r.fid);
            v.x.push_back(r.ips); v.y.push_back(r.r.fid);
        }
        if (!f.x.empty()) { by_flops.push_back(f); by_speed.push_back(v); }
    }
    if (!by_flops.empty()) {
        magnets::PlotOptions po;
        po.width = 1000;
        po.height = 640;
        po.title = a.texts("model").size() > 1 ? "quality vs compute (one point per checkpoint)" : "quality vs compute";
        po.x_label = "GFLOP per image";
        po.y_label = net.fid_label();
        po.log_x = true;
        magnets::write_plot_png(base + ".png", by_flops, po);
        po.title = "quality vs speed";
        po.x_label = "images/s (this machine)";
        magnets::write_plot_png(base + "-speed.png", by_speed, po);
    }
    std::printf("%s", md.c_str());
    magnets::log_info("wrote %s, %s.csv, %s.png, %s-speed.png", out.c_str(), base.c_str(), base.c_str(), base.c_str());
    return 0;
}

std::vector<CommandSpec> commands() {
    return {
        {"train-classifier", "train the feature network on a labelled real set", nullptr, &train_classifier_options,
         run_train_classifier},
        {"metrics", "FID, KID, IS, precision/recall and class accuracy of a generated set", nullptr, &metrics_options,
         run_metrics},
        {"sweep", "sample with several configurations and checkpoints; table, CSV and plots of quality vs compute",
         nullptr, &sweep_options, run_sweep},
    };
}

} // namespace

int main(int argc, char** argv) {
    const Tool tool{prog, "evaluate generated images: feature classifier, FID-style metrics", commands()};
    return run_tool(tool, argc, argv);
}
