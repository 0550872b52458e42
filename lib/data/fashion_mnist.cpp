// data/fashion_mnist.cpp: Fashion-MNIST from Debian's gzip IDX files, and the
// ImageSet float conversions.
//
// IDX: big-endian u32 magic (2051 images, 2049 labels), big-endian u32 dims,
// then row-major uint8. The 28x28 images are zero-padded (0 = background) to
// size x size with the item centred; an odd margin puts the extra pixel on the
// bottom/right.
#include "magnets/dataset.h"
#include "magnets/error.h"

#include <zlib.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace magnets {
namespace {

constexpr int64_t mnist_side = 28;
constexpr const char* install_hint =
    "apt-get install dataset-fashion-mnist (or set MAGNETS_FASHION_MNIST to a folder with the four "
    "*-ubyte.gz files)";

const std::vector<std::string>& class_names() {
    static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                   "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
    return names;
}

// Reads a whole gzip file (or a plain file: gzread passes those through).
std::vector<uint8_t> read_gz(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
        throw Error("cannot load Fashion-MNIST", path, "no such file", install_hint);
    gzFile f = gzopen(path.c_str(), "rb");
    if (!f) throw Error("cannot load Fashion-MNIST", path, std::strerror(errno), install_hint);
    gzbuffer(f, 1 << 20);
    std::vector<uint8_t> out;
    constexpr size_t step = 8 << 20;
    while (true) {
        const size_t at = out.size();
        out.resize(at + step);
        const int n = gzread(f, out.data() + at, static_cast<unsigned>(step));
        if (n < 0) {
            int err = 0;
            const std::string why = gzerror(f, &err);
            gzclose(f);
            throw Error("damaged Fashion-MNIST file", path, "gzip error: " + why, install_hint);
        }
        out.resize(at + static_cast<size_t>(n));
        if (n == 0) break;
    }
    gzclose(f);
    return out;
}

uint32_t be32(const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

struct Idx {
    std::vector<uint8_t> bytes; // header + payload
    int64_t count = 0;
    size_t offset = 0;          // payload start
};

// Checks the magic, dims and payload size of an IDX file.
Idx read_idx(const std::string& path, uint32_t magic) {
    Idx idx;
    idx.bytes = read_gz(path);
    const bool images = magic == 2051;
    idx.offset = images ? 16 : 8;
    auto damaged = [&](const std::string& why) {
        return Error("damaged Fashion-MNIST file", path, why, install_hint);
    };
    if (idx.bytes.size() < idx.offset) throw damaged("shorter than the IDX header");
    const uint32_t m = be32(idx.bytes.data());
    if (m != magic)
        throw damaged("IDX magic " + std::to_string(m) + ", expected " + std::to_string(magic) + " (" +
                      (images ? "images" : "labels") + ")");
    idx.count = be32(idx.bytes.data() + 4);
    int64_t per_item = 1;
    if (images) {
        const uint32_t rows = be32(idx.bytes.data() + 8), cols = be32(idx.bytes.data() + 12);
        if (rows != mnist_side || cols != mnist_side)
            throw damaged("images are " + std::to_string(rows) + "x" + std::to_string(cols) + ", expected 28x28");
        per_item = mnist_side * mnist_side;
    }
    const size_t expected = idx.offset + static_cast<size_t>(idx.count * per_item);
    if (idx.bytes.size() != expected)
        throw damaged(std::to_string(idx.bytes.size()) + " bytes, expected " + std::to_string(expected) +
                      " for " + std::to_string(idx.count) + " items (truncated?)");
    return idx;
}

// Appends one IDX image/label file pair to `set` (pixels padded to size x size).
void append_pair(ImageSet& set, const std::string& dir, const std::string& prefix, int64_t size) {
    const std::string img_path = dir + "/" + prefix + "-images-idx3-ubyte.gz";
    const std::string lab_path = dir + "/" + prefix + "-labels-idx1-ubyte.gz";
    const Idx images = read_idx(img_path, 2051);
    const Idx labels = read_idx(lab_path, 2049);
    if (images.count != labels.count)
        throw Error("damaged Fashion-MNIST files", img_path,
                    std::to_string(images.count) + " images but " + std::to_string(labels.count) + " labels in " +
                        lab_path,
                    install_hint);
    const int64_t n = images.count, first = set.count();
    const int64_t margin = (size - mnist_side) / 2, plane = size * size;
    set.pixels.resize(static_cast<size_t>((first + n) * plane), 0);
    set.labels.resize(static_cast<size_t>(first + n));
    const uint8_t* src = images.bytes.data() + images.offset;
    uint8_t* dst = set.pixels.data() + first * plane;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t y = 0; y < mnist_side; ++y)
            std::memcpy(dst + i * plane + (y + margin) * size + margin, src + (i * mnist_side + y) * mnist_side,
                        mnist_side);
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t l = labels.bytes[labels.offset + i];
        if (l >= class_names().size())
            throw Error("damaged Fashion-MNIST file", lab_path,
                        "label " + std::to_string(l) + " at index " + std::to_string(i) + " is not in [0, 10)",
                        install_hint);
        set.labels[first + i] = l;
    }
}

// Exact v / 255 for every byte value.
const std::array<float, 256>& byte_to_unit() {
    static const std::array<float, 256> table = [] {
        std::array<float, 256> t{};
        for (int i = 0; i < 256; ++i) t[i] = static_cast<float>(i) / 255.0f;
        return t;
    }();
    return table;
}

} // namespace

std::string fashion_mnist_dir() {
    const char* env = std::getenv("MAGNETS_FASHION_MNIST");
    if (env && *env) return env;
    return "/usr/share/datasets/fashion-mnist";
}

ImageSet load_fashion_mnist(const std::string& split, int64_t size, const std::string& dir) {
    if (split != "train" && split != "test" && split != "all")
        throw Error("unknown split '" + split + "'", {}, "Fashion-MNIST has train, test and all");
    if (size < mnist_side)
        throw Error("image size too small", {},
                    "Fashion-MNIST images are 28x28; size " + std::to_string(size) + " < 28",
                    "use a size of 28 or more (32 is the default)");
    ImageSet set;
    set.channels = 1;
    set.height = set.width = size;
    set.class_names = class_names();
    set.source = "fashion-mnist";
    set.split = split;
    if (split != "test") append_pair(set, dir, "train", size);
    if (split != "train") append_pair(set, dir, "t10k", size);
    return set;
}

void ImageSet::to_float(int64_t first, int64_t n, float* out) const {
    check(first >= 0 && n >= 0 && first + n <= count(), "ImageSet::to_float: items out of range",
          "[" + std::to_string(first) + ", " + std::to_string(first + n) + ") of " + std::to_string(count()));
    const auto& table = byte_to_unit();
    const int64_t total = n * pixels_per_item();
    const uint8_t* src = pixels.data() + first * pixels_per_item();
    for (int64_t i = 0; i < total; ++i) out[i] = table[src[i]];
}

void ImageSet::gather_float(const int64_t* index, int64_t n, float* out) const {
    const auto& table = byte_to_unit();
    const int64_t per = pixels_per_item();
    for (int64_t k = 0; k < n; ++k) {
        check(index[k] >= 0 && index[k] < count(), "ImageSet::gather_float: index out of range",
              std::to_string(index[k]) + " not in [0, " + std::to_string(count()) + ")");
        const uint8_t* src = pixels.data() + index[k] * per;
        float* dst = out + k * per;
        for (int64_t i = 0; i < per; ++i) dst[i] = table[src[i]];
    }
}

} // namespace magnets
