// data/moving_fashion_mnist.cpp: Moving Fashion-MNIST clips (the Moving-MNIST
// protocol of Srivastava et al. 2015 on Fashion-MNIST items) and
// clips_to_slots().
//
// Clip i of a split: class i mod 10; draws from philox::uniform_double(kSeed,
// stream of the split, i * 64 + k), k = 0, 1 the two items (uniform over the
// class's items of the split), then per item m the draws 2 + 4m .. 5 + 4m:
// top-left x and y uniform in [0, size - 28], direction uniform in [0, 2 pi),
// speed uniform in [2, 4) pixels per frame. Positions are doubles, reflected at
// the edges; frame t shows each item at the rounded position after t steps,
// composited by the per-pixel maximum on a zero frame.
#include "magnets/dataset.h"
#include "magnets/error.h"

#include "core/philox.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace magnets {
namespace {

constexpr int64_t item_side = 28;
constexpr int64_t num_classes = 10;
constexpr int64_t max_frames = 1000;
constexpr int64_t default_train_clips = 10000, default_test_clips = 2000;
constexpr uint64_t clip_seed = 0x4d4f56494e47464dull; // "MOVINGFM"
constexpr uint64_t train_stream = 1, test_stream = 2;
constexpr uint64_t draws_per_clip = 64;
constexpr double two_pi = 6.283185307179586476925286766559;
constexpr const char* install_hint =
    "apt-get install dataset-fashion-mnist (or set MAGNETS_FASHION_MNIST to a folder with the four "
    "*-ubyte.gz files)";

// One step along one axis with reflection at 0 and `range` (= size - 28).
inline void step(double& x, double& v, double range) {
    x += v;
    if (range <= 0) { // the item fills the frame: it cannot move
        x = 0;
        return;
    }
    // Each reflection shrinks the excess by `range`, so this ends (speed < 4).
    while (x < 0 || x > range) {
        if (x < 0) x = -x;
        else x = 2 * range - x;
        v = -v;
    }
}

// Renders `n` clips of one split from its 28x28 items into out ([n, frames,
// size, size], zero on entry) and their labels.
void render_clips(const ImageSet& items, uint64_t stream, int64_t n, int64_t frames, int64_t size,
                  const std::string& dir, uint8_t* out, int32_t* labels) {
    const int64_t item_pixels = item_side * item_side;
    std::vector<std::vector<int64_t>> by_class(num_classes);
    for (int64_t i = 0; i < items.count(); ++i)
        if (items.labels[i] >= 0 && items.labels[i] < num_classes) by_class[items.labels[i]].push_back(i);
    for (int64_t c = 0; c < num_classes && c < n; ++c)
        if (by_class[c].empty())
            throw Error("cannot make Moving Fashion-MNIST", dir,
                        "the " + items.split + " split has no items of class " + std::to_string(c), install_hint);

    const int64_t plane = size * size;
    const double range = static_cast<double>(size - item_side);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        const int32_t cls = static_cast<int32_t>(i % num_classes);
        labels[i] = cls;
        const std::vector<int64_t>& pool = by_class[cls];
        auto u = [&](uint64_t k) {
            return philox::uniform_double(clip_seed, stream, static_cast<uint64_t>(i) * draws_per_clip + k);
        };
        const uint8_t* item[2];
        double x[2], y[2], vx[2], vy[2];
        for (int m = 0; m < 2; ++m) {
            const int64_t pick = std::min(static_cast<int64_t>(u(m) * static_cast<double>(pool.size())),
                                          static_cast<int64_t>(pool.size()) - 1);
            item[m] = items.pixels.data() + pool[pick] * item_pixels;
            x[m] = u(2 + 4 * m) * range;
            y[m] = u(3 + 4 * m) * range;
            const double angle = u(4 + 4 * m) * two_pi, speed = 2.0 + 2.0 * u(5 + 4 * m);
            vx[m] = speed * std::cos(angle);
            vy[m] = speed * std::sin(angle);
        }
        uint8_t* clip = out + i * frames * plane;
        for (int64_t t = 0; t < frames; ++t) {
            uint8_t* frame = clip + t * plane;
            for (int m = 0; m < 2; ++m) {
                const int64_t px = std::lround(x[m]), py = std::lround(y[m]);
                for (int64_t r = 0; r < item_side; ++r) {
                    const uint8_t* src = item[m] + r * item_side;
                    uint8_t* dst = frame + (py + r) * size + px;
                    for (int64_t c = 0; c < item_side; ++c) dst[c] = std::max(dst[c], src[c]);
                }
                step(x[m], vx[m], range);
                step(y[m], vy[m], range);
            }
        }
    }
}

} // namespace

ImageSet load_moving_fashion_mnist(const std::string& split, int64_t clips, int64_t frames, int64_t size,
                                   const std::string& dir) {
    if (split != "train" && split != "test" && split != "all")
        throw Error("unknown split '" + split + "'", {}, "Moving Fashion-MNIST has train, test and all");
    if (size < item_side)
        throw Error("image size too small", {},
                    "Fashion-MNIST items are 28x28; size " + std::to_string(size) + " < 28",
                    "use a size of 28 or more (64 is the default)");
    if (frames < 1 || frames > max_frames)
        throw Error("bad number of frames", {},
                    "Moving Fashion-MNIST clips have 1 to " + std::to_string(max_frames) + " frames; got " +
                        std::to_string(frames),
                    "use e.g. 16 frames per clip");

    // Clip counts per part. "all" is train clips then test clips; an explicit
    // count is shared 5:1 like the defaults (train n - n / 6, test n / 6).
    int64_t n_train = 0, n_test = 0;
    if (split == "train") n_train = clips > 0 ? clips : default_train_clips;
    else if (split == "test") n_test = clips > 0 ? clips : default_test_clips;
    else if (clips > 0) n_test = clips / 6, n_train = clips - n_test;
    else n_train = default_train_clips, n_test = default_test_clips;

    ImageSet set;
    set.frames = frames;
    set.channels = 1;
    set.height = set.width = size;
    set.source = "moving-fashion-mnist";
    set.split = split;
    const int64_t per_clip = frames * size * size, total = n_train + n_test;
    set.pixels.assign(static_cast<size_t>(total * per_clip), 0);
    set.labels.resize(static_cast<size_t>(total));

    int64_t first = 0;
    for (const auto& [part, n, stream] : {std::tuple<const char*, int64_t, uint64_t>{"train", n_train, train_stream},
                                          std::tuple<const char*, int64_t, uint64_t>{"test", n_test, test_stream}}) {
        if (n == 0) continue;
        const ImageSet items = load_fashion_mnist(part, item_side, dir);
        if (set.class_names.empty()) set.class_names = items.class_names;
        render_clips(items, stream, n, frames, size, dir, set.pixels.data() + first * per_clip,
                     set.labels.data() + first);
        first += n;
    }
    return set;
}

ImageSet clips_to_slots(ImageSet clips, int64_t per_slot) {
    if (per_slot < 1 || clips.frames % per_slot != 0)
        throw Error("cannot split clips into slots", {},
                    "clips of " + std::to_string(clips.frames) + " frames do not split into slots of " +
                        std::to_string(per_slot) + " frames",
                    "use a number of frames per slot that divides the clip length");
    if (per_slot == 1 && clips.frames == 1) return clips;
    const int64_t slots = clips.frames / per_slot;
    std::vector<int32_t> labels;
    labels.reserve(static_cast<size_t>(clips.count() * slots));
    for (int32_t l : clips.labels) labels.insert(labels.end(), static_cast<size_t>(slots), l);
    clips.labels = std::move(labels);
    clips.channels *= per_slot;
    clips.frames = 1;
    return clips;
}

} // namespace magnets
