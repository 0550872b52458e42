// magnets/dataset.h: labelled image sets from real data.
//
// Sources: "fashion-mnist" (Debian's dataset-fashion-mnist IDX files, 28x28
// padded to the requested size), "moving-fashion-mnist" (video clips made from
// those items, see load_moving_fashion_mnist) or a folder of PNG/JPEG images
// with one sub-folder per class (class = sub-folder name; images resized to
// size x size).
//
//   magnets::ImageSet train = magnets::load_dataset("fashion-mnist", "train", 1, 32);
//   std::vector<float> batch(n * train.pixels_per_item());
//   train.to_float(first, n, batch.data());      // [n, c, h, w] in [0, 1]
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace magnets {

struct ImageSet {
    int64_t frames = 1;                     // frames per item: 1 for images, T for video clips
    int64_t channels = 1, height = 0, width = 0;
    std::vector<uint8_t> pixels;            // [count, frames, channels, height, width]
    std::vector<int32_t> labels;            // [count]
    std::vector<std::string> class_names;   // index = label
    std::string source;                     // "fashion-mnist" or the folder path
    std::string split;                      // "train", "test", "all"

    int64_t count() const { return static_cast<int64_t>(labels.size()); }
    int64_t pixels_per_item() const { return frames * channels * height * width; }
    // Items [first, first + n) as floats in [0, 1], [n, frames, c, h, w].
    void to_float(int64_t first, int64_t n, float* out) const;
    // Items at the given indices, same layout.
    void gather_float(const int64_t* index, int64_t n, float* out) const;
};

// Default directory of Debian's package; $MAGNETS_FASHION_MNIST overrides it.
std::string fashion_mnist_dir();

// split: "train" (60,000), "test" (10,000) or "all" (train then test).
// size >= 28: the 28x28 images are zero-padded centred to size x size.
// Missing files throw Error with hint "apt-get install dataset-fashion-mnist".
ImageSet load_fashion_mnist(const std::string& split, int64_t size = 32,
                            const std::string& dir = fashion_mnist_dir());

// Image folder: dir/<class>/<image>.{png,jpg,jpeg}, classes sorted by name;
// images without a class folder (directly in dir) get label 0 with class "all".
// channels 1 (gray) or 3 (RGB); alpha composited on white; resized with area /
// bilinear filtering to size x size after a centre crop to square.
// split "train"/"test" takes a deterministic 90/10 split by file name hash;
// "all" takes everything. Throws Error for a missing, empty or non-image folder.
ImageSet load_image_folder(const std::string& dir, const std::string& split, int64_t channels,
                           int64_t size);

// Moving Fashion-MNIST (the Moving-MNIST protocol of Srivastava et al. 2015 on
// Fashion-MNIST items): `clips` clips of `frames` frames, size x size gray
// (size >= 28), each with two items of one class bouncing off the frame's
// edges, composited by the per-pixel maximum; the clip's label is that class.
// Clip i of a split depends only on (split, i): its class is i mod 10 (so the
// classes are balanced and any prefix is too), its two items are drawn from
// that class's items of the split (train clips from the train items, test
// clips from the test items, "all" = train clips then test clips), start
// positions uniform, directions uniform, speeds in [2, 4) pixels per frame,
// from the counter-based generator (core/philox.h) keyed by the clip index.
// clips <= 0 gives the default count: 10,000 train clips, 2,000 test clips.
// Throws Error as load_fashion_mnist for missing files or a small size.
ImageSet load_moving_fashion_mnist(const std::string& split, int64_t clips = 0, int64_t frames = 16,
                                   int64_t size = 64, const std::string& dir = fashion_mnist_dir());

// Clips [count, T, c, h, w] -> slots of `per_slot` consecutive frames stacked
// as channels: count * T / per_slot items of [1, per_slot * c, h, w] (the same
// bytes, reinterpreted), each with its clip's label. T % per_slot == 0, else
// Error. per_slot == T == 1 returns the set unchanged.
ImageSet clips_to_slots(ImageSet clips, int64_t per_slot);

// "fashion-mnist", "moving-fashion-mnist" (frames per clip, default count) or
// a folder path. frames > 1 is only for "moving-fashion-mnist" (Error otherwise).
ImageSet load_dataset(const std::string& spec, const std::string& split, int64_t channels,
                      int64_t size, int64_t frames = 1);

} // namespace magnets
