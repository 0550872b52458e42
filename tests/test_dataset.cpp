// Datasets: Fashion-MNIST (Debian's real files and synthetic IDX files) and
// image folders (generated PNGs), float conversion, errors.
#include <doctest.h>

#include "test_util.h"

#include "magnets/dataset.h"
#include "magnets/error.h"
#include "magnets/image.h"
#include "magnets/log.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include <omp.h>

using namespace magnets;
using magnets::test::TempDir;
namespace fs = std::filesystem;

namespace {


template <class F>
Error expect_error(F f) {
    try {
        f();
    } catch (const Error& e) {
        return e;
    }
    FAIL("expected magnets::Error");
    return Error("unreachable");
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

int64_t item_sum(const ImageSet& s, int64_t i) {
    const uint8_t* p = s.pixels.data() + i * s.pixels_per_item();
    return std::accumulate(p, p + s.pixels_per_item(), int64_t(0));
}

bool have_fashion_mnist() {
    return fs::exists(fashion_mnist_dir() + "/train-images-idx3-ubyte.gz") &&
           fs::exists(fashion_mnist_dir() + "/t10k-labels-idx1-ubyte.gz");
}

// Writes an IDX file: big-endian magic and dims, then bytes. Uncompressed
// (the reader's gzread passes plain files through; the real-data tests cover
// gzip), which keeps zlib out of the test's link line.
void write_idx(const std::string& path, uint32_t magic, const std::vector<uint32_t>& dims,
               const std::vector<uint8_t>& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    REQUIRE(out.good());
    auto put = [&](uint32_t v) {
        for (int s = 24; s >= 0; s -= 8) out.put(static_cast<char>(v >> s));
    };
    put(magic);
    for (uint32_t d : dims) put(d);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    REQUIRE(out.good());
}

// Sets an environment variable for a scope.
struct ScopedEnv {
    std::string name;
    std::string old;
    bool had;
    ScopedEnv(std::string n, const std::string& value) : name(std::move(n)) {
        const char* o = std::getenv(name.c_str());
        had = o != nullptr;
        if (had) old = o;
        setenv(name.c_str(), value.c_str(), 1);
    }
    ~ScopedEnv() {
        if (had) setenv(name.c_str(), old.c_str(), 1);
        else unsetenv(name.c_str());
    }
};

Image solid(int64_t w, int64_t h, int64_t c, std::vector<uint8_t> value) {
    Image img;
    img.width = w;
    img.height = h;
    img.channels = c;
    for (int64_t i = 0; i < w * h; ++i) img.pixels.insert(img.pixels.end(), value.begin(), value.end());
    return img;
}

} // namespace

// ---- Fashion-MNIST (the real files) ------------------------------------------------

TEST_CASE("Fashion-MNIST: counts, labels, pixel checksums and padding") {
    REQUIRE_MESSAGE(have_fashion_mnist(), "needs dataset-fashion-mnist in " << fashion_mnist_dir());
    const auto t0 = std::chrono::steady_clock::now();
    const ImageSet all = load_fashion_mnist("all", 32);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("loading all 70,000 Fashion-MNIST images took " << seconds << " s");
    REQUIRE(all.count() == 70000);
    CHECK(all.channels == 1);
    CHECK(all.height == 32);
    CHECK(all.width == 32);
    CHECK(all.pixels.size() == size_t(70000) * 32 * 32);
    CHECK(all.class_names.size() == 10);
    CHECK(all.class_names[0] == "T-shirt/top");
    CHECK(all.class_names[9] == "Ankle boot");
    CHECK(all.source == "fashion-mnist");

    // Reference values from the decompressed IDX files with numpy.
    CHECK(all.labels[0] == 9);
    CHECK(all.labels[1] == 0);
    CHECK(all.labels[3] == 3);
    CHECK(item_sum(all, 0) == 76247);
    CHECK(all.pixels[16 * 32 + 16] == 217); // (14, 14) of the 28x28 image, shifted by 2
    CHECK(item_sum(all, 59999) == 16684);
    CHECK(all.labels[59999] == 5);
    CHECK(item_sum(all, 60000) == 33456); // first test image follows the train set
    CHECK(all.labels[60000] == 9);
    CHECK(all.labels[60001] == 2);
    CHECK(item_sum(all, 69999) == 24390);

    std::vector<int64_t> per_class(10, 0);
    for (int64_t i = 0; i < 60000; ++i) per_class.at(all.labels[i])++;
    CHECK(per_class == std::vector<int64_t>(10, 6000));

    // The 2-pixel border of every item is background.
    int64_t border = 0;
    for (int64_t i = 0; i < all.count(); ++i) {
        const uint8_t* p = all.pixels.data() + i * 1024;
        for (int64_t y = 0; y < 32; ++y)
            for (int64_t x = 0; x < 32; ++x)
                if (y < 2 || y >= 30 || x < 2 || x >= 30) border += p[y * 32 + x];
    }
    CHECK(border == 0);

    const ImageSet train = load_fashion_mnist("train", 28);
    CHECK(train.count() == 60000);
    CHECK(train.split == "train");
    CHECK(item_sum(train, 0) == 76247);
    CHECK(train.pixels[14 * 28 + 14] == 217);
    const ImageSet test = load_fashion_mnist("test", 33); // odd margin: 2 top/left, 3 bottom/right
    CHECK(test.count() == 10000);
    CHECK(item_sum(test, 0) == 33456);
    CHECK(test.pixels.size() == size_t(10000) * 33 * 33);
}

TEST_CASE("load_dataset: fashion-mnist in gray and replicated RGB") {
    REQUIRE_MESSAGE(have_fashion_mnist(), "needs dataset-fashion-mnist in " << fashion_mnist_dir());
    const ImageSet gray = load_dataset("fashion-mnist", "test", 1, 32);
    const ImageSet rgb = load_dataset("fashion-mnist", "test", 3, 32);
    CHECK(rgb.channels == 3);
    CHECK(rgb.count() == 10000);
    CHECK(rgb.pixels_per_item() == 3 * 1024);
    for (int k = 0; k < 3; ++k)
        CHECK(std::equal(gray.pixels.begin() + 5 * 1024, gray.pixels.begin() + 6 * 1024,
                         rgb.pixels.begin() + (5 * 3 + k) * 1024));
    CHECK_THROWS_AS(load_dataset("fashion-mnist", "test", 2, 32), Error);
}

TEST_CASE("Fashion-MNIST errors: bad split, small size, missing files") {
    CHECK_THROWS_AS(load_fashion_mnist("valid", 32), Error);
    Error small = expect_error([] { load_fashion_mnist("train", 27); });
    CHECK(contains(small.why(), "28x28"));
    TempDir dir;
    Error missing = expect_error([&] { load_fashion_mnist("train", 32, dir.path.string()); });
    CHECK(missing.path() == dir / "train-images-idx3-ubyte.gz");
    CHECK(contains(missing.hint(), "apt-get install dataset-fashion-mnist"));
    CHECK(contains(missing.hint(), "MAGNETS_FASHION_MNIST"));

    ScopedEnv env("MAGNETS_FASHION_MNIST", dir.path.string());
    CHECK(fashion_mnist_dir() == dir.path.string());
    CHECK(expect_error([] { load_dataset("fashion-mnist", "test", 1, 32); }).path() ==
          dir / "t10k-images-idx3-ubyte.gz");
}

// ---- Fashion-MNIST format checks on synthetic IDX files ------------------------------

TEST_CASE("IDX reader: padding placement, magic and count checks") {
    TempDir dir;
    std::vector<uint8_t> images(3 * 28 * 28, 0);
    for (int i = 0; i < 3; ++i) {
        images[i * 784 + 0] = static_cast<uint8_t>(10 + i);          // top-left corner
        images[i * 784 + 27 * 28 + 27] = static_cast<uint8_t>(20 + i); // bottom-right corner
    }
    write_idx(dir / "train-images-idx3-ubyte.gz", 2051, {3, 28, 28}, images);
    write_idx(dir / "train-labels-idx1-ubyte.gz", 2049, {3}, {4, 0, 9});
    write_idx(dir / "t10k-images-idx3-ubyte.gz", 2051, {1, 28, 28}, std::vector<uint8_t>(784, 1));
    write_idx(dir / "t10k-labels-idx1-ubyte.gz", 2049, {1}, {7});

    const ImageSet s = load_fashion_mnist("all", 31, dir.path.string());
    REQUIRE(s.count() == 4);
    CHECK(s.labels == std::vector<int32_t>{4, 0, 9, 7});
    // margin (31 - 28) / 2 = 1 on the top/left, 2 on the bottom/right
    const uint8_t* p2 = s.pixels.data() + 2 * 31 * 31;
    CHECK(p2[1 * 31 + 1] == 12);
    CHECK(p2[28 * 31 + 28] == 22);
    CHECK(item_sum(s, 2) == 12 + 22);
    CHECK(item_sum(s, 3) == 784);
    CHECK(s.pixels[3 * 961 + 0] == 0);
    CHECK(s.pixels[3 * 961 + 29 * 31 + 29] == 0);
    CHECK(s.pixels[3 * 961 + 28 * 31 + 28] == 1);

    // to_float / gather_float: exactly byte / 255, [n, c, h, w]
    std::vector<float> f(2 * 961);
    s.to_float(2, 2, f.data());
    CHECK(f[1 * 31 + 1] == 12.0f / 255.0f);
    CHECK(f[961 + 40] == 1.0f / 255.0f);
    const int64_t idx[2] = {3, 2};
    std::vector<float> g(2 * 961);
    s.gather_float(idx, 2, g.data());
    CHECK(std::equal(g.begin(), g.begin() + 961, f.begin() + 961));
    CHECK(std::equal(g.begin() + 961, g.end(), f.begin()));
    CHECK_THROWS_AS(s.to_float(3, 2, f.data()), Error);
    const int64_t bad[1] = {4};
    CHECK_THROWS_AS(s.gather_float(bad, 1, g.data()), Error);

    write_idx(dir / "t10k-labels-idx1-ubyte.gz", 2049, {2}, {7, 1});
    CHECK(contains(expect_error([&] { load_fashion_mnist("test", 32, dir.path.string()); }).why(), "labels"));
    write_idx(dir / "t10k-labels-idx1-ubyte.gz", 2051, {1}, {7});
    CHECK(contains(expect_error([&] { load_fashion_mnist("test", 32, dir.path.string()); }).why(), "magic"));
    write_idx(dir / "t10k-labels-idx1-ubyte.gz", 2049, {1}, {10});
    expect_error([&] { load_fashion_mnist("test", 32, dir.path.string()); });
    write_idx(dir / "t10k-labels-idx1-ubyte.gz", 2049, {1}, {7});
    write_idx(dir / "t10k-images-idx3-ubyte.gz", 2051, {1, 28, 28}, std::vector<uint8_t>(700, 1));
    CHECK(contains(expect_error([&] { load_fashion_mnist("test", 32, dir.path.string()); }).why(), "truncated"));
    write_idx(dir / "t10k-images-idx3-ubyte.gz", 2051, {1, 32, 32}, std::vector<uint8_t>(1024, 1));
    CHECK(contains(expect_error([&] { load_fashion_mnist("test", 32, dir.path.string()); }).why(), "28x28"));
}

// ---- image folders -------------------------------------------------------------------

TEST_CASE("image folder: classes, order, gray/RGB, alpha, crop and resize") {
    set_log_level(LogLevel::error);
    TempDir dir;
    fs::create_directories(dir.path / "dog");
    fs::create_directories(dir.path / "cat");
    fs::create_directories(dir.path / "empty");
    write_png(dir / "dog/b.png", solid(8, 8, 3, {255, 0, 0}));        // red
    write_png(dir / "dog/a.png", solid(4, 4, 1, {100}));              // gray, enlarged
    write_png(dir / "cat/z.PNG", solid(6, 6, 4, {0, 0, 0, 128}));     // half-transparent black
    std::ofstream(dir / "cat/notes.txt") << "not an image";

    const ImageSet gray = load_image_folder(dir.path.string(), "all", 1, 4);
    CHECK(gray.class_names == std::vector<std::string>{"cat", "dog"});
    CHECK(gray.labels == std::vector<int32_t>{0, 1, 1});
    CHECK(gray.channels == 1);
    CHECK(gray.height == 4);
    CHECK(gray.pixels.size() == 3 * 16);
    CHECK(gray.source == dir.path.string());
    // alpha 128 on white: 255 * (1 - 128/255) = 127
    CHECK(gray.pixels[0] == 127);
    CHECK(gray.pixels[16] == 100);              // dog/a.png comes before dog/b.png
    CHECK(gray.pixels[32] == 76);               // 0.299 * 255
    const ImageSet rgb = load_dataset(dir.path.string(), "all", 3, 4);
    CHECK(rgb.channels == 3);
    CHECK(rgb.pixels_per_item() == 48);
    CHECK(rgb.pixels[2 * 48 + 0] == 255);       // R plane of the red image
    CHECK(rgb.pixels[2 * 48 + 16] == 0);        // G plane
    CHECK(rgb.pixels[1 * 48 + 32 + 5] == 100);  // gray replicated into B

    // Crop to the centre square, then shrink by area averaging: a 6x4 image
    // whose middle 4x4 has a left half 0 and a right half 200 -> 2x2.
    TempDir crop;
    Image img = solid(6, 4, 1, {255});
    for (int64_t y = 0; y < 4; ++y)
        for (int64_t x = 1; x < 5; ++x) img.pixels[y * 6 + x] = x < 3 ? 0 : 200;
    write_png(crop / "x.png", img);
    const ImageSet c = load_image_folder(crop.path.string(), "all", 1, 2);
    CHECK(c.class_names == std::vector<std::string>{"all"});
    CHECK(c.pixels == std::vector<uint8_t>{0, 200, 0, 200});
    // 3 -> 2: out[0] = (v0 + 0.5 v1) / 1.5
    Image three = solid(3, 3, 1, {0});
    for (int64_t y = 0; y < 3; ++y) three.pixels[y * 3 + 1] = 150, three.pixels[y * 3 + 2] = 30;
    write_png(crop / "x.png", three);
    CHECK(load_image_folder(crop.path.string(), "all", 1, 2).pixels == std::vector<uint8_t>{50, 70, 50, 70});
    // 2 -> 4 bilinear with pixel centres aligned: 0, 0.25, 0.75, 1 of the way
    Image two = solid(2, 2, 1, {0});
    two.pixels[1] = two.pixels[3] = 200;
    write_png(crop / "x.png", two);
    const ImageSet up = load_image_folder(crop.path.string(), "all", 1, 4);
    CHECK(std::vector<uint8_t>(up.pixels.begin(), up.pixels.begin() + 4) == std::vector<uint8_t>{0, 50, 150, 200});
}

TEST_CASE("image folder: deterministic train/test split") {
    set_log_level(LogLevel::error);
    TempDir dir;
    for (const char* cls : {"a", "b"}) {
        fs::create_directories(dir.path / cls);
        for (int i = 0; i < 30; ++i)
            write_png(dir / (std::string(cls) + "/" + std::to_string(i) + ".png"), solid(2, 2, 1, {uint8_t(i)}));
    }
    const ImageSet all = load_image_folder(dir.path.string(), "all", 1, 2);
    const ImageSet train = load_image_folder(dir.path.string(), "train", 1, 2);
    const ImageSet test = load_image_folder(dir.path.string(), "test", 1, 2);
    CHECK(all.count() == 60);
    CHECK(train.count() + test.count() == 60);
    CHECK(test.count() > 0);
    CHECK(test.count() < 20);
    CHECK(train.split == "train");
    std::multiset<std::pair<int32_t, uint8_t>> a, tt;
    for (int64_t i = 0; i < all.count(); ++i) a.insert({all.labels[i], all.pixels[i * 4]});
    for (const ImageSet* s : {&train, &test})
        for (int64_t i = 0; i < s->count(); ++i) tt.insert({s->labels[i], s->pixels[i * 4]});
    CHECK(a == tt);
    CHECK(load_image_folder(dir.path.string(), "test", 1, 2).pixels == test.pixels);
}

TEST_CASE("image folder errors: missing, empty, non-image, undecodable, mixed") {
    set_log_level(LogLevel::quiet);
    TempDir dir;
    CHECK(contains(expect_error([&] { load_image_folder(dir / "missing", "all", 1, 8); }).why(), "no such folder"));
    CHECK(contains(expect_error([&] { load_image_folder(dir.path.string(), "all", 1, 8); }).why(), "empty"));
    std::ofstream(dir / "readme.txt") << "text";
    fs::create_directories(dir.path / "cls");
    std::ofstream(dir / "cls/data.csv") << "1,2";
    CHECK(contains(expect_error([&] { load_image_folder(dir.path.string(), "all", 1, 8); }).why(), ".png"));
    std::ofstream(dir / "cls/broken.png") << "not really a png";
    Error broken = expect_error([&] { load_image_folder(dir.path.string(), "all", 1, 8); });
    CHECK(broken.summary() == "no decodable images");
    CHECK(contains(broken.why(), "broken.png"));
    write_png(dir / "cls/good.png", solid(3, 3, 1, {9}));
    const ImageSet one = load_image_folder(dir.path.string(), "all", 1, 3); // broken.png skipped
    CHECK(one.count() == 1);
    CHECK(one.pixels[4] == 9);
    write_png(dir / "loose.png", solid(3, 3, 1, {9}));
    CHECK(contains(expect_error([&] { load_image_folder(dir.path.string(), "all", 1, 3); }).why(), "loose.png"));
    CHECK_THROWS_AS(load_image_folder(dir.path.string(), "valid", 1, 3), Error);
    CHECK_THROWS_AS(load_image_folder(dir.path.string(), "all", 2, 3), Error);
    CHECK(contains(expect_error([&] { load_dataset(dir / "nope", "all", 1, 8); }).summary(), "unknown dataset"));
}

// ---- Moving Fashion-MNIST ------------------------------------------------------------

namespace {

// Pixels of frame t of clip i, [channels, h, w].
const uint8_t* frame_of(const ImageSet& s, int64_t i, int64_t t) {
    return s.pixels.data() + i * s.pixels_per_item() + t * s.channels * s.height * s.width;
}

int64_t frame_sum(const ImageSet& s, int64_t i, int64_t t) {
    const uint8_t* p = frame_of(s, i, t);
    return std::accumulate(p, p + s.channels * s.height * s.width, int64_t(0));
}

// Whether item (28x28) <= the size x size frame pixel by pixel at (x, y).
bool item_under(const uint8_t* item, const uint8_t* frame, int64_t size, int64_t x, int64_t y) {
    for (int64_t r = 0; r < 28; ++r)
        for (int64_t c = 0; c < 28; ++c)
            if (item[r * 28 + c] > frame[(y + r) * size + x + c]) return false;
    return true;
}

// Indices (into items) of two items of class `cls` whose per-pixel maximum is
// exactly the 28x28 frame, or {-1, -1}.
std::pair<int64_t, int64_t> find_pair(const ImageSet& items, int32_t cls, const uint8_t* frame) {
    std::vector<int64_t> under;
    for (int64_t j = 0; j < items.count(); ++j)
        if (items.labels[j] == cls && item_under(items.pixels.data() + j * 784, frame, 28, 0, 0)) under.push_back(j);
    for (int64_t a : under)
        for (int64_t b : under) {
            const uint8_t* pa = items.pixels.data() + a * 784;
            const uint8_t* pb = items.pixels.data() + b * 784;
            bool same = true;
            for (int64_t k = 0; k < 784 && same; ++k) same = std::max(pa[k], pb[k]) == frame[k];
            if (same) return {a, b};
        }
    return {-1, -1};
}

} // namespace

TEST_CASE("moving Fashion-MNIST: shape, labels, fields and errors") {
    REQUIRE_MESSAGE(have_fashion_mnist(), "needs dataset-fashion-mnist in " << fashion_mnist_dir());
    const ImageSet s = load_moving_fashion_mnist("train", 20, 16, 64);
    REQUIRE(s.count() == 20);
    CHECK(s.frames == 16);
    CHECK(s.channels == 1);
    CHECK(s.height == 64);
    CHECK(s.width == 64);
    CHECK(s.pixels_per_item() == 16 * 64 * 64);
    CHECK(s.pixels.size() == size_t(20) * 16 * 64 * 64);
    for (int64_t i = 0; i < 20; ++i) CHECK(s.labels[i] == i % 10);
    CHECK(s.class_names == load_fashion_mnist("test", 28).class_names);
    CHECK(s.source == "moving-fashion-mnist");
    CHECK(s.split == "train");

    // Default counts (cheap clips: 1 frame at 28).
    const ImageSet test = load_moving_fashion_mnist("test", 0, 1, 28);
    CHECK(test.count() == 2000);
    CHECK(test.split == "test");
    const ImageSet all = load_moving_fashion_mnist("all", 0, 1, 28);
    CHECK(all.count() == 12000);
    CHECK(all.labels[9999] == 9);
    CHECK(all.labels[10000] == 0);

    Error small = expect_error([] { load_moving_fashion_mnist("train", 2, 4, 27); });
    CHECK(contains(small.why(), "28x28"));
    CHECK_THROWS_AS(load_moving_fashion_mnist("train", 2, 0, 64), Error);
    CHECK_THROWS_AS(load_moving_fashion_mnist("train", 2, 1001, 64), Error);
    CHECK_THROWS_AS(load_moving_fashion_mnist("valid", 2, 4, 64), Error);
    TempDir dir;
    Error missing = expect_error([&] { load_moving_fashion_mnist("test", 2, 4, 64, dir.path.string()); });
    CHECK(missing.path() == dir / "t10k-images-idx3-ubyte.gz");
    CHECK(contains(missing.hint(), "apt-get install dataset-fashion-mnist"));
}

TEST_CASE("moving Fashion-MNIST: deterministic, prefix-stable, splits distinct") {
    REQUIRE_MESSAGE(have_fashion_mnist(), "needs dataset-fashion-mnist in " << fashion_mnist_dir());
    const ImageSet a = load_moving_fashion_mnist("train", 20, 16, 64);
    const ImageSet b = load_moving_fashion_mnist("train", 20, 16, 64);
    CHECK(a.pixels == b.pixels);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(saved == 1 ? 3 : 1); // another thread count: the same bytes
    const ImageSet c = load_moving_fashion_mnist("train", 20, 16, 64);
    omp_set_num_threads(saved);
    CHECK(c.pixels == a.pixels);
    const ImageSet prefix = load_moving_fashion_mnist("train", 10, 16, 64);
    REQUIRE(prefix.count() == 10);
    CHECK(std::equal(prefix.pixels.begin(), prefix.pixels.end(), a.pixels.begin()));
    CHECK(std::vector<int32_t>(a.labels.begin(), a.labels.begin() + 10) == prefix.labels);
    // Fewer frames: the first frames of the same clips.
    const ImageSet short_clips = load_moving_fashion_mnist("train", 20, 4, 64);
    for (int64_t i = 0; i < 20; ++i)
        CHECK(std::equal(frame_of(short_clips, i, 0), frame_of(short_clips, i, 4), frame_of(a, i, 0)));

    const ImageSet test = load_moving_fashion_mnist("test", 20, 16, 64);
    CHECK(test.labels == a.labels);
    CHECK(test.pixels != a.pixels);
    // "all" is train clips then test clips.
    const ImageSet all = load_moving_fashion_mnist("all", 0, 2, 28);
    const ImageSet train_part = load_moving_fashion_mnist("train", 0, 2, 28);
    const ImageSet test_part = load_moving_fashion_mnist("test", 0, 2, 28);
    REQUIRE(all.pixels.size() == train_part.pixels.size() + test_part.pixels.size());
    CHECK(std::equal(train_part.pixels.begin(), train_part.pixels.end(), all.pixels.begin()));
    CHECK(std::equal(test_part.pixels.begin(), test_part.pixels.end(),
                     all.pixels.begin() + static_cast<std::ptrdiff_t>(train_part.pixels.size())));
}

TEST_CASE("moving Fashion-MNIST: items move and stay in the frame") {
    REQUIRE_MESSAGE(have_fashion_mnist(), "needs dataset-fashion-mnist in " << fashion_mnist_dir());
    const ImageSet s = load_moving_fashion_mnist("train", 20, 16, 64);
    const int64_t plane = 64 * 64;
    for (int64_t i = 0; i < s.count(); ++i) {
        // Both items lie wholly inside every frame, so a frame's mass is at
        // least the larger item's, which is at least half of frame 0's.
        const int64_t mass0 = frame_sum(s, i, 0);
        CHECK(mass0 > 0);
        for (int64_t t = 0; t < s.frames; ++t) {
            const uint8_t* f = frame_of(s, i, t);
            CHECK(*std::max_element(f, f + plane) > 0);
            CHECK(2 * frame_sum(s, i, t) >= mass0);
            if (t > 0) CHECK_FALSE(std::equal(f, f + plane, frame_of(s, i, t - 1)));
        }
    }
}

TEST_CASE("moving Fashion-MNIST: frames are real items of the clip's class and split") {
    REQUIRE_MESSAGE(have_fashion_mnist(), "needs dataset-fashion-mnist in " << fashion_mnist_dir());
    const ImageSet train_items = load_fashion_mnist("train", 28);
    const ImageSet test_items = load_fashion_mnist("test", 28);
    // At size 28 the items fill the frame and cannot move: every frame is the
    // per-pixel maximum of two items of the clip's class, from the clip's split.
    const ImageSet train28 = load_moving_fashion_mnist("train", 10, 3, 28);
    const ImageSet test28 = load_moving_fashion_mnist("test", 5, 3, 28);
    std::vector<std::pair<int64_t, int64_t>> train_pairs;
    for (int64_t i = 0; i < train28.count(); ++i) {
        CHECK(std::equal(frame_of(train28, i, 0), frame_of(train28, i, 1), frame_of(train28, i, 2)));
        train_pairs.push_back(find_pair(train_items, train28.labels[i], frame_of(train28, i, 0)));
        CHECK(train_pairs.back().first >= 0);
    }
    for (int64_t i = 0; i < test28.count(); ++i) {
        CHECK(find_pair(test_items, test28.labels[i], frame_of(test28, i, 0)).first >= 0);
        CHECK(find_pair(train_items, test28.labels[i], frame_of(test28, i, 0)).first < 0);
    }
    // At size 64 the same clip (it depends only on split and index) shows both
    // of those items, each under the frame at some offset in [0, 36]^2.
    const ImageSet train64 = load_moving_fashion_mnist("train", 1, 1, 64);
    REQUIRE(train_pairs[0].first >= 0);
    for (int64_t item : {train_pairs[0].first, train_pairs[0].second}) {
        bool found = false;
        for (int64_t y = 0; y <= 36 && !found; ++y)
            for (int64_t x = 0; x <= 36 && !found; ++x)
                found = item_under(train_items.pixels.data() + item * 784, frame_of(train64, 0, 0), 64, x, y);
        CHECK(found);
    }
}

TEST_CASE("moving Fashion-MNIST on synthetic items: compositing and missing classes") {
    TempDir dir;
    // One item per class 0..2: item c has value 10 + c on row c and 100 at (27, 27).
    std::vector<uint8_t> images(3 * 784, 0);
    for (int c = 0; c < 3; ++c) {
        for (int x = 0; x < 28; ++x) images[c * 784 + c * 28 + x] = static_cast<uint8_t>(10 + c);
        images[c * 784 + 27 * 28 + 27] = 100;
    }
    write_idx(dir / "train-images-idx3-ubyte.gz", 2051, {3, 28, 28}, images);
    write_idx(dir / "train-labels-idx1-ubyte.gz", 2049, {3}, {2, 0, 1}); // item 0 is class 2, ...
    const ImageSet s = load_moving_fashion_mnist("train", 3, 5, 28, dir.path.string());
    REQUIRE(s.count() == 3);
    CHECK(s.labels == std::vector<int32_t>{0, 1, 2});
    // Both draws are the class's only item: max(item, item) = item, every frame.
    for (int64_t i = 0; i < 3; ++i) {
        const int64_t j = i == 2 ? 0 : i + 1; // the item of class i
        for (int64_t t = 0; t < 5; ++t)
            CHECK(std::equal(frame_of(s, i, t), frame_of(s, i, t) + 784, images.begin() + j * 784));
    }
    // At size 40 the two copies move: each bright pixel stays inside the frame
    // (its item's top-left in [0, 12]) and is within 4 pixels per axis of a
    // bright pixel of the frame before (speed < 4, rounding; a bounce can
    // only shorten a step), and the frame changes.
    const ImageSet m = load_moving_fashion_mnist("train", 3, 8, 40, dir.path.string());
    for (int64_t i = 0; i < 3; ++i) {
        std::vector<std::pair<int64_t, int64_t>> before;
        for (int64_t t = 0; t < 8; ++t) {
            const uint8_t* f = frame_of(m, i, t);
            std::vector<std::pair<int64_t, int64_t>> bright;
            for (int64_t k = 0; k < 1600; ++k)
                if (f[k] == 100) bright.emplace_back(k % 40, k / 40);
            CHECK(bright.size() >= 1);
            CHECK(bright.size() <= 2);
            for (const auto& [x, y] : bright) {
                CHECK(x >= 27);
                CHECK(y >= 27);
                if (t == 0) continue;
                bool near = false;
                for (const auto& [bx, by] : before) near = near || (std::abs(x - bx) <= 4 && std::abs(y - by) <= 4);
                CHECK(near);
            }
            if (t > 0) CHECK_FALSE(std::equal(f, f + 1600, frame_of(m, i, t - 1)));
            before = bright;
        }
    }
    Error no_class = expect_error([&] { load_moving_fashion_mnist("train", 4, 2, 28, dir.path.string()); });
    CHECK(contains(no_class.why(), "class 3"));
}

TEST_CASE("clips_to_slots: frames stacked as channels, same bytes") {
    ImageSet clips;
    clips.frames = 16;
    clips.channels = 1;
    clips.height = clips.width = 4;
    clips.labels = {7, 1, 4};
    clips.class_names = {"a", "b", "c", "d", "e", "f", "g", "h"};
    clips.source = "moving-fashion-mnist";
    clips.split = "train";
    clips.pixels.resize(3 * 16 * 16);
    for (size_t k = 0; k < clips.pixels.size(); ++k) clips.pixels[k] = static_cast<uint8_t>(k * 7 + k / 256);
    const std::vector<uint8_t> bytes = clips.pixels;

    CHECK_THROWS_AS(clips_to_slots(clips, 3), Error);
    CHECK_THROWS_AS(clips_to_slots(clips, 0), Error);
    CHECK(clips_to_slots(clips, 16).count() == 3);

    const uint8_t* data = clips.pixels.data();
    const ImageSet slots = clips_to_slots(std::move(clips), 4);
    CHECK(slots.pixels.data() == data); // moved, not copied
    REQUIRE(slots.count() == 12);
    CHECK(slots.frames == 1);
    CHECK(slots.channels == 4);
    CHECK(slots.height == 4);
    CHECK(slots.width == 4);
    CHECK(slots.pixels_per_item() == 4 * 16);
    CHECK(slots.pixels == bytes);
    CHECK(slots.labels == std::vector<int32_t>{7, 7, 7, 7, 1, 1, 1, 1, 4, 4, 4, 4});
    CHECK(slots.class_names.size() == 8);
    CHECK(slots.source == "moving-fashion-mnist");
    CHECK(slots.split == "train");

    ImageSet images; // per_slot == T == 1: unchanged
    images.channels = 3;
    images.height = images.width = 2;
    images.labels = {0, 1};
    images.pixels.assign(24, 5);
    const ImageSet same = clips_to_slots(images, 1);
    CHECK(same.count() == 2);
    CHECK(same.channels == 3);
    CHECK(same.pixels == images.pixels);
}

TEST_CASE("load_dataset: moving-fashion-mnist clips; frames only for it") {
    REQUIRE_MESSAGE(have_fashion_mnist(), "needs dataset-fashion-mnist in " << fashion_mnist_dir());
    const ImageSet s = load_dataset("moving-fashion-mnist", "test", 1, 64, 8);
    CHECK(s.count() == 2000);
    CHECK(s.frames == 8);
    CHECK(s.channels == 1);
    CHECK(s.pixels.size() == size_t(2000) * 8 * 64 * 64);
    const ImageSet first = load_moving_fashion_mnist("test", 1, 8, 64);
    CHECK(std::equal(first.pixels.begin(), first.pixels.end(), s.pixels.begin()));

    // RGB: each frame's gray plane replicated into R, G and B.
    const ImageSet gray = load_dataset("moving-fashion-mnist", "test", 1, 32, 2);
    const ImageSet rgb = load_dataset("moving-fashion-mnist", "test", 3, 32, 2);
    REQUIRE(rgb.count() == 2000);
    CHECK(rgb.channels == 3);
    CHECK(rgb.frames == 2);
    CHECK(rgb.pixels_per_item() == 2 * 3 * 1024);
    for (int64_t i : {0, 1999})
        for (int64_t t = 0; t < 2; ++t)
            for (int k = 0; k < 3; ++k)
                CHECK(std::equal(frame_of(gray, i, t), frame_of(gray, i, t) + 1024, frame_of(rgb, i, t) + k * 1024));
    CHECK_THROWS_AS(load_dataset("moving-fashion-mnist", "test", 2, 32, 2), Error);

    Error no_video = expect_error([] { load_dataset("fashion-mnist", "train", 1, 32, 4); });
    CHECK(contains(no_video.why(), "moving-fashion-mnist"));
    TempDir dir;
    CHECK_THROWS_AS(load_dataset(dir.path.string(), "all", 1, 8, 2), Error);
    CHECK(contains(expect_error([&] { load_dataset(dir / "nope", "all", 1, 8); }).why(), "moving-fashion-mnist"));
}
