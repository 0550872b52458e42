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

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>

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

// Uncompressed size recorded in a gzip trailer (ISIZE, mod 2^32), or 0 when
// `path` is not a gzip file. Used only to size the buffer.
size_t gzip_size_hint(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    unsigned char magic[2] = {};
    if (!in.read(reinterpret_cast<char*>(magic), 2) || magic[0] != 0x1f || magic[1] != 0x8b) return 0;
    unsigned char isize[4] = {};
    in.seekg(-4, std::ios::end);
    if (!in.read(reinterpret_cast<char*>(isize), 4)) return 0;
    return size_t(isize[0]) | size_t(isize[1]) << 8 | size_t(isize[2]) << 16 | size_t(isize[3]) << 24;
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
    // One extra byte so a correct hint finishes with a single read plus an EOF read.
    size_t capacity = gzip_size_hint(path) + 1, size = 0;
    constexpr size_t max_read = size_t(1) << 30;
    while (true) {
        if (size == capacity) capacity = capacity * 2;
        out.resize(capacity);
        const unsigned want = static_cast<unsigned>(std::min(capacity - size, max_read));
        const int n = gzread(f, out.data() + size, want);
        if (n < 0) {
            int err = 0;
            const std::string why = gzerror(f, &err);
            gzclose(f);
            throw Error("damaged Fashion-MNIST file", path, "gzip error: " + why, install_hint);
        }
        if (n == 0) break;
        size += static_cast<size_t>(n);
    }
    gzclose(f);
    out.resize(size);
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
void append_pair(ImageSet& set, const Idx& images, const Idx& labels, const std::string& img_path,
                 const std::string& lab_path, int64_t size) {
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
    std::vector<std::string> prefixes;
    if (split != "test") prefixes.push_back("train");
    if (split != "train") prefixes.push_back("t10k");
    // Inflating dominates (about 0.3 s for the train images): the files are
    // read in parallel, errors rethrown in file order.
    const int64_t nfiles = static_cast<int64_t>(prefixes.size()) * 2;
    std::vector<std::string> paths;
    for (const auto& p : prefixes) {
        paths.push_back(dir + "/" + p + "-images-idx3-ubyte.gz");
        paths.push_back(dir + "/" + p + "-labels-idx1-ubyte.gz");
    }
    std::vector<Idx> idx(nfiles);
    std::vector<std::exception_ptr> errors(nfiles);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < nfiles; ++i) {
        try {
            idx[i] = read_idx(paths[i], i % 2 == 0 ? 2051 : 2049);
        } catch (...) {
            errors[i] = std::current_exception();
        }
    }
    for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
    for (size_t p = 0; p < prefixes.size(); ++p)
        append_pair(set, idx[2 * p], idx[2 * p + 1], paths[2 * p], paths[2 * p + 1], size);
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
