// data/image_folder.cpp: labelled image sets from a folder of PNG/JPEG files,
// and load_dataset().
//
// Order is deterministic: classes sorted by sub-folder name, files by name
// (byte order). Each image: alpha composited on white, RGB -> gray by Rec. 601
// luminance when channels == 1, centre crop to a square, then resized to
// size x size (area average when shrinking, bilinear when enlarging).
#include "magnets/dataset.h"
#include "magnets/error.h"
#include "magnets/log.h"

#include <stb/stb_image.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

namespace magnets {
namespace {

namespace fs = std::filesystem;

constexpr const char* folder_hint =
    "give a folder with one sub-folder of PNG/JPEG images per class (or 'fashion-mnist')";

bool is_image_name(const fs::path& p) {
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

bool is_hidden(const fs::path& p) { return !p.filename().empty() && p.filename().string()[0] == '.'; }

// Sorted, non-hidden entries of a directory.
std::vector<fs::path> sorted_entries(const fs::path& dir) {
    std::vector<fs::path> out;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
        if (!is_hidden(it->path())) out.push_back(it->path());
    if (ec) throw Error("cannot read folder", dir.string(), ec.message());
    std::sort(out.begin(), out.end());
    return out;
}

uint64_t fnv1a(const std::string& s) {
    uint64_t h = 14695981039346656037ull;
    for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

// Source taps for each output pixel along one axis (src -> dst samples).
using Taps = std::vector<std::vector<std::pair<int64_t, float>>>;
Taps resample_taps(int64_t src, int64_t dst) {
    Taps taps(dst);
    const double scale = static_cast<double>(src) / dst;
    for (int64_t i = 0; i < dst; ++i) {
        if (src > dst) { // area average over [i * scale, (i + 1) * scale)
            const double lo = i * scale, hi = (i + 1) * scale;
            for (int64_t s = static_cast<int64_t>(lo); s < src && s < hi; ++s) {
                const double w = std::min<double>(s + 1, hi) - std::max<double>(s, lo);
                if (w > 1e-9) taps[i].emplace_back(s, static_cast<float>(w / scale));
            }
        } else if (src < dst) { // bilinear, pixel centres aligned
            double x = (i + 0.5) * scale - 0.5;
            x = std::clamp(x, 0.0, static_cast<double>(src - 1));
            const int64_t x0 = static_cast<int64_t>(x), x1 = std::min(x0 + 1, src - 1);
            const float f = static_cast<float>(x - x0);
            taps[i].emplace_back(x0, 1.0f - f);
            if (x1 != x0) taps[i].emplace_back(x1, f);
        } else {
            taps[i].emplace_back(i, 1.0f);
        }
    }
    return taps;
}

// RGBA (w x h) -> [channels, size, size] uint8.
void convert(const uint8_t* rgba, int64_t w, int64_t h, int64_t channels, int64_t size, uint8_t* out) {
    const int64_t side = std::min(w, h), x0 = (w - side) / 2, y0 = (h - side) / 2;
    // Square crop, composited on white, as float planes [channels, side, side].
    std::vector<float> src(static_cast<size_t>(channels * side * side));
    for (int64_t y = 0; y < side; ++y)
        for (int64_t x = 0; x < side; ++x) {
            const uint8_t* p = rgba + ((y + y0) * w + (x + x0)) * 4;
            const float a = p[3] / 255.0f;
            float rgb[3];
            for (int k = 0; k < 3; ++k) rgb[k] = p[k] * a + 255.0f * (1.0f - a);
            if (channels == 1) {
                src[y * side + x] = 0.299f * rgb[0] + 0.587f * rgb[1] + 0.114f * rgb[2];
            } else {
                for (int k = 0; k < 3; ++k) src[(k * side + y) * side + x] = rgb[k];
            }
        }
    const Taps taps = resample_taps(side, size);
    std::vector<float> rows(static_cast<size_t>(side * size)); // horizontally resampled plane [side, size]
    for (int64_t c = 0; c < channels; ++c) {
        const float* plane = src.data() + c * side * side;
        for (int64_t y = 0; y < side; ++y)
            for (int64_t x = 0; x < size; ++x) {
                float acc = 0;
                for (const auto& [s, wt] : taps[x]) acc += wt * plane[y * side + s];
                rows[y * size + x] = acc;
            }
        for (int64_t y = 0; y < size; ++y)
            for (int64_t x = 0; x < size; ++x) {
                float acc = 0;
                for (const auto& [s, wt] : taps[y]) acc += wt * rows[s * size + x];
                out[(c * size + y) * size + x] = static_cast<uint8_t>(std::lround(std::clamp(acc, 0.0f, 255.0f)));
            }
    }
}

struct Entry {
    fs::path path;
    std::string rel; // "<class>/<file>" or "<file>": the split hash input
    int32_t label = 0;
};

} // namespace

ImageSet load_image_folder(const std::string& dir, const std::string& split, int64_t channels, int64_t size) {
    const std::string what = "cannot load image folder";
    if (split != "train" && split != "test" && split != "all")
        throw Error("unknown split '" + split + "'", {}, "image folders have train, test and all");
    check(channels == 1 || channels == 3, "image folder: channels must be 1 or 3",
          "got " + std::to_string(channels));
    check(size >= 1, "image folder: size must be >= 1", "got " + std::to_string(size));
    std::error_code ec;
    if (!fs::exists(dir, ec)) throw Error(what, dir, "no such folder", folder_hint);
    if (!fs::is_directory(dir, ec)) throw Error(what, dir, "not a folder", folder_hint);

    ImageSet set;
    set.channels = channels;
    set.height = set.width = size;
    set.source = dir;
    set.split = split;

    std::vector<Entry> loose, files;
    const std::vector<fs::path> top = sorted_entries(dir);
    for (const fs::path& p : top) {
        if (fs::is_directory(p, ec)) {
            std::vector<Entry> in_class;
            for (const fs::path& f : sorted_entries(p))
                if (is_image_name(f) && fs::is_regular_file(f, ec))
                    in_class.push_back({f, p.filename().string() + "/" + f.filename().string(),
                                        static_cast<int32_t>(set.class_names.size())});
            if (!in_class.empty()) {
                set.class_names.push_back(p.filename().string());
                files.insert(files.end(), in_class.begin(), in_class.end());
            }
        } else if (is_image_name(p) && fs::is_regular_file(p, ec)) {
            loose.push_back({p, p.filename().string(), 0});
        }
    }
    if (top.empty()) throw Error(what, dir, "the folder is empty", folder_hint);
    if (files.empty() && loose.empty())
        throw Error(what, dir, "no .png, .jpg or .jpeg files in it or its sub-folders", folder_hint);
    if (!files.empty() && !loose.empty())
        throw Error(what, dir,
                    "it has class sub-folders and also " + std::to_string(loose.size()) + " loose images (e.g. '" +
                        loose[0].rel + "')",
                    "move the loose images into a class sub-folder");
    if (files.empty()) {
        files = loose;
        set.class_names = {"all"};
    }

    // Deterministic 90/10 split by the hash of the relative path, so adding a
    // file never moves another between train and test.
    if (split != "all") {
        const bool want_test = split == "test";
        std::vector<Entry> kept;
        for (const Entry& e : files)
            if ((fnv1a(e.rel) % 10 == 0) == want_test) kept.push_back(e);
        if (kept.empty())
            throw Error(what, dir,
                        "the '" + split + "' split (" + (want_test ? "10%" : "90%") +
                            " of the images, by file name hash) is empty",
                        "use split 'all' or add images");
        files.swap(kept);
    }

    const int64_t n = static_cast<int64_t>(files.size()), per = channels * size * size;
    std::vector<uint8_t> pixels(static_cast<size_t>(n * per));
    std::vector<std::string> failure(n);
    std::vector<char> ok(n, 0);
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < n; ++i) {
        int w = 0, h = 0, comp = 0;
        unsigned char* rgba = stbi_load(files[i].path.c_str(), &w, &h, &comp, 4);
        if (!rgba) {
            const char* why = stbi_failure_reason();
            failure[i] = why ? why : "unknown error";
            continue;
        }
        convert(rgba, w, h, channels, size, pixels.data() + i * per);
        stbi_image_free(rgba);
        ok[i] = 1;
    }

    int64_t kept = 0, first_failed = -1;
    for (int64_t i = 0; i < n; ++i) {
        if (!ok[i]) {
            if (first_failed < 0) first_failed = i;
            log_warn("skipping %s: cannot decode (%s)", files[i].path.c_str(), failure[i].c_str());
            continue;
        }
        if (kept != i) std::copy_n(pixels.begin() + i * per, per, pixels.begin() + kept * per);
        set.labels.push_back(files[i].label);
        ++kept;
    }
    if (kept == 0)
        throw Error("no decodable images", dir,
                    "could not decode '" + files[first_failed].path.string() + "': " + failure[first_failed],
                    "supported: PNG and JPEG");
    pixels.resize(static_cast<size_t>(kept * per));
    set.pixels = std::move(pixels);
    return set;
}

ImageSet load_dataset(const std::string& spec, const std::string& split, int64_t channels, int64_t size,
                      int64_t frames) {
    // Gray planes [n, 1, h, w] -> the same replicated into R, G and B [n, 3, h, w];
    // a plane is one frame of one item, so clips [count, T, 1, h, w] become
    // [count, T, 3, h, w].
    auto gray_to_rgb = [](const std::vector<uint8_t>& gray, int64_t planes, int64_t plane) {
        std::vector<uint8_t> rgb(static_cast<size_t>(planes * 3 * plane));
        for (int64_t i = 0; i < planes; ++i)
            for (int k = 0; k < 3; ++k)
                std::copy_n(gray.begin() + i * plane, plane, rgb.begin() + (i * 3 + k) * plane);
        return rgb;
    };
    if (spec == "moving-fashion-mnist") {
        check(channels == 1 || channels == 3, "moving-fashion-mnist: channels must be 1 or 3",
              "got " + std::to_string(channels));
        ImageSet set = load_moving_fashion_mnist(split, 0, frames, size);
        if (channels == 3) { // gray replicated into R, G and B, frame by frame
            set.pixels = gray_to_rgb(set.pixels, set.count() * set.frames, size * size);
            set.channels = 3;
        }
        return set;
    }
    if (frames != 1)
        throw Error("video clips need 'moving-fashion-mnist'", spec,
                    "only moving-fashion-mnist has video clips; " + std::to_string(frames) + " frames asked",
                    "use 1 frame for '" + spec + "', or the dataset 'moving-fashion-mnist'");
    if (spec == "fashion-mnist") {
        check(channels == 1 || channels == 3, "fashion-mnist: channels must be 1 or 3",
              "got " + std::to_string(channels));
        ImageSet set = load_fashion_mnist(split, size);
        if (channels == 3) { // gray replicated into R, G and B
            set.pixels = gray_to_rgb(set.pixels, set.count(), size * size);
            set.channels = 3;
        }
        return set;
    }
    std::error_code ec;
    if (!fs::is_directory(spec, ec))
        throw Error("unknown dataset", spec,
                    fs::exists(spec, ec) ? "not 'fashion-mnist', not 'moving-fashion-mnist' and not a folder"
                                         : "not 'fashion-mnist', not 'moving-fashion-mnist' and no such folder",
                    folder_hint);
    return load_image_folder(spec, split, channels, size);
}

} // namespace magnets
