// Formats: token files, checkpoints, atomic writes, describe_file, PNG images
// with text chunks, grids.
#include <doctest.h>

#include "test_util.h"

#include "io/h5.h"
#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets/image.h"
#include "magnets/version.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <unistd.h>

using namespace magnets;
using magnets::test::TempDir;
namespace fs = std::filesystem;

namespace {


TokenFile sample_tokens(int64_t count, int64_t t, int64_t h, int64_t w, int64_t k) {
    TokenFile tf;
    tf.grid_t = t;
    tf.grid_h = h;
    tf.grid_w = w;
    tf.codebook_size = k;
    tf.split = "train";
    tf.tokenizer_hash = "0123456789abcdef";
    tf.source = "fashion-mnist";
    tf.class_names = {"T-shirt/top", "Trouser", "Ankle boot"};
    tf.tokens.resize(static_cast<size_t>(count * tf.tokens_per_item()));
    for (size_t i = 0; i < tf.tokens.size(); ++i) tf.tokens[i] = static_cast<uint16_t>((i * 7919) % k);
    for (int64_t i = 0; i < count; ++i) tf.labels.push_back(static_cast<int32_t>(i % 4) - 1); // -1..2
    return tf;
}

void check_same_tokens(const TokenFile& a, const TokenFile& b) {
    CHECK(a.grid_t == b.grid_t);
    CHECK(a.grid_h == b.grid_h);
    CHECK(a.grid_w == b.grid_w);
    CHECK(a.codebook_size == b.codebook_size);
    CHECK(a.split == b.split);
    CHECK(a.tokenizer_hash == b.tokenizer_hash);
    CHECK(a.source == b.source);
    CHECK(a.class_names == b.class_names);
    CHECK(a.tokens == b.tokens);
    CHECK(a.labels == b.labels);
    CHECK(a.extra == b.extra);
}

// Runs f, which must throw magnets::Error, and returns the error.
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

// s matches `shape`, where 'd' stands for a decimal digit and 'x' for a lowercase hex digit.
bool matches(const std::string& s, const std::string& shape) {
    if (s.size() != shape.size()) return false;
    for (size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        const bool digit = c >= '0' && c <= '9';
        if (shape[i] == 'd' ? !digit : shape[i] == 'x' ? !(digit || (c >= 'a' && c <= 'f')) : c != shape[i])
            return false;
    }
    return true;
}

void patch_root_attr(const std::string& path, const std::string& key, const AttrValue& v) {
    h5::File f = h5::File::open(path, true);
    f.set_attr(key, v);
    f.close();
}

} // namespace

// ---- token files --------------------------------------------------------------------

TEST_CASE("token file round trip: image grid, class names, extra attributes") {
    TempDir dir;
    TokenFile tf = sample_tokens(600, 1, 8, 8, 512); // > 2 chunks of 256 items
    tf.extra["seed"] = int64_t(42);
    tf.extra["temperature"] = 0.75;
    tf.extra["sampler"] = std::string("maskgit, cosine");
    const std::string path = dir / "train.h5";
    write_token_file(path, tf, "magnets-tokenize");
    const TokenFile back = read_token_file(path);
    check_same_tokens(tf, back);
    CHECK(back.count() == 600);

    const FileSummary s = describe_file(path);
    CHECK(attr_string(s.root_attrs, "format") == "magnets-tokens");
    CHECK(attr_int(s.root_attrs, "format_version") == 1);
    CHECK(attr_string(s.root_attrs, "creator") == "magnets-tokenize");
    CHECK(attr_string(s.root_attrs, "creator_version") == version_string);
    CHECK(matches(attr_string(s.root_attrs, "created"), "dddd-dd-ddTdd:dd:ddZ"));
    CHECK(attr_int(s.root_attrs, "count") == 600);
    CHECK(attr_int(s.root_attrs, "num_classes") == 3);
    using Row = std::pair<std::string, std::string>;
    CHECK(s.datasets == std::vector<Row>{{"/class_names", "string [3]"},
                                         {"/labels", "int32 [600]"},
                                         {"/tokens", "uint16 [600, 8, 8]"}});
    CHECK(dir.entries() == std::vector<std::string>{"train.h5"}); // no temp left behind
}

TEST_CASE("token file round trip: video grid and no class names") {
    TempDir dir;
    TokenFile tf = sample_tokens(5, 4, 3, 2, 1024);
    tf.class_names.clear();
    tf.labels.assign(5, -1);
    tf.split = "generated";
    const std::string path = dir / "video.h5";
    write_token_file(path, tf, "magnets-sample");
    check_same_tokens(tf, read_token_file(path));
    CHECK(describe_file(path).datasets.back().second == "uint16 [5, 4, 3, 2]");

    TokenFile empty = sample_tokens(0, 1, 4, 4, 16);
    write_token_file(dir / "empty.h5", empty, "test");
    CHECK(read_token_file(dir / "empty.h5").count() == 0);
}

TEST_CASE("token file append extends datasets and checks compatibility") {
    TempDir dir;
    const std::string path = dir / "t.h5";
    TokenFile a = sample_tokens(300, 1, 4, 4, 64);
    TokenFile b = sample_tokens(7, 1, 4, 4, 64);
    for (auto& t : b.tokens) t = static_cast<uint16_t>(63 - t);
    write_token_file(path, a, "test");
    append_token_file(path, b);
    append_token_file(path, b);
    const TokenFile back = read_token_file(path);
    REQUIRE(back.count() == 314);
    std::vector<uint16_t> tokens = a.tokens;
    std::vector<int32_t> labels = a.labels;
    for (int rep = 0; rep < 2; ++rep) {
        tokens.insert(tokens.end(), b.tokens.begin(), b.tokens.end());
        labels.insert(labels.end(), b.labels.begin(), b.labels.end());
    }
    CHECK(back.tokens == tokens);
    CHECK(back.labels == labels);
    CHECK(dir.entries() == std::vector<std::string>{"t.h5"});

    TokenFile other_hash = b;
    other_hash.tokenizer_hash = "ffffffffffffffff";
    CHECK(contains(expect_error([&] { append_token_file(path, other_hash); }).why(), "tokenizer_hash"));
    TokenFile other_grid = sample_tokens(2, 1, 8, 8, 64);
    CHECK(contains(expect_error([&] { append_token_file(path, other_grid); }).why(), "grid"));
    TokenFile other_k = sample_tokens(2, 1, 4, 4, 32);
    CHECK(contains(expect_error([&] { append_token_file(path, other_k); }).why(), "codebook_size"));
    TokenFile other_classes = b;
    other_classes.class_names = {"a", "b", "c"};
    expect_error([&] { append_token_file(path, other_classes); });
    CHECK(read_token_file(path).count() == 314); // failed appends changed nothing
    expect_error([&] { append_token_file(dir / "missing.h5", b); });
}

TEST_CASE("a failed write leaves no file under the final name and keeps the old one") {
    TempDir dir;
    const std::string path = dir / "t.h5";
    TokenFile bad = sample_tokens(10, 1, 4, 4, 64);
    bad.tokens[37] = 64;
    Error e = expect_error([&] { write_token_file(path, bad, "test"); });
    CHECK(contains(e.why(), "index 37"));
    CHECK(contains(e.why(), "item 2"));
    CHECK(dir.entries().empty());

    const TokenFile good = sample_tokens(10, 1, 4, 4, 64);
    write_token_file(path, good, "test");
    TokenFile bad_labels = good;
    bad_labels.labels[3] = 3; // 3 class names
    expect_error([&] { write_token_file(path, bad_labels, "test"); });
    TokenFile short_tokens = good;
    short_tokens.tokens.pop_back();
    expect_error([&] { write_token_file(path, short_tokens, "test"); });
    TokenFile clash = good;
    clash.extra["count"] = int64_t(1);
    expect_error([&] { write_token_file(path, clash, "test"); });
    CHECK(read_token_file(path).tokens == good.tokens);
    CHECK(dir.entries() == std::vector<std::string>{"t.h5"});
}

TEST_CASE("AtomicOutput: uncommitted temp is removed, commit replaces the target") {
    TempDir dir;
    const std::string path = dir / "out.bin";
    std::ofstream(path) << "old";
    {
        AtomicOutput out(path);
        CHECK(fs::path(out.temp_path()).parent_path() == dir.path);
        CHECK(fs::path(out.temp_path()).filename().string() == ".out.bin.tmp." + std::to_string(getpid()));
        std::ofstream(out.temp_path()) << "new";
        CHECK(dir.entries().size() == 2);
    } // destroyed without commit
    CHECK(dir.entries() == std::vector<std::string>{"out.bin"});
    {
        std::ifstream in(path);
        std::string s;
        in >> s;
        CHECK(s == "old");
    }
    {
        AtomicOutput out(path);
        std::ofstream(out.temp_path()) << "new";
        out.commit();
    }
    std::ifstream in(path);
    std::string s;
    in >> s;
    CHECK(s == "new");
    CHECK(dir.entries() == std::vector<std::string>{"out.bin"});
}

TEST_CASE("check_writable explains a missing or non-directory parent") {
    TempDir dir;
    Error e = expect_error([&] { check_writable(dir / "no/such/dir/x.h5"); });
    CHECK(contains(e.why(), "does not exist"));
    CHECK(contains(e.hint(), "mkdir -p"));
    std::ofstream(dir / "file") << "x";
    expect_error([&] { check_writable(dir / "file/x.h5"); });
    expect_error([&] { check_writable(dir.path.string()); }); // a directory, not a file name
    check_writable(dir / "ok.h5");
    CHECK(dir.entries() == std::vector<std::string>{"file"}); // the probe file is gone
    if (fs::is_directory("/proc/self")) // writable by access() for root, yet no file can be created
        CHECK(contains(expect_error([] { check_writable("/proc/magnets-test.h5"); }).why(), "'/proc'"));
    expect_error([&] { write_token_file(dir / "no/such/dir/x.h5", sample_tokens(1, 1, 2, 2, 4), "t"); });
}

TEST_CASE("truncated, foreign, non-HDF5 and missing files are refused with hints") {
    TempDir dir;
    const std::string path = dir / "t.h5";
    write_token_file(path, sample_tokens(2000, 1, 8, 8, 512), "test");

    const std::string half = dir / "half.h5";
    fs::copy_file(path, half);
    fs::resize_file(half, fs::file_size(half) / 2);
    Error trunc = expect_error([&] { read_token_file(half); });
    CHECK(trunc.path() == half);
    CHECK(contains(trunc.why(), "not an HDF5 file or truncated"));
    CHECK(contains(trunc.hint(), "magnets-tokenize"));

    const std::string text = dir / "text.h5";
    std::ofstream(text) << "hello, not HDF5\n";
    CHECK(contains(expect_error([&] { read_token_file(text); }).why(), "not an HDF5 file"));
    CHECK(contains(expect_error([&] { describe_file(text); }).why(), "not an HDF5 file"));
    CHECK(contains(expect_error([&] { read_token_file(dir / "missing.h5"); }).why(), "no such file"));

    const std::string foreign = dir / "foreign.h5";
    {
        h5::File f = h5::File::create(foreign);
        const std::vector<float> v = {1, 2, 3};
        f.write<float>("data", {3}, v.data());
        f.close();
    }
    Error fe = expect_error([&] { read_token_file(foreign); });
    CHECK(fe.summary() == "not a magnets token file");
    CHECK(contains(fe.why(), "no 'format' attribute"));
    CHECK(describe_file(foreign).datasets.size() == 1);

    Checkpoint ck;
    ck.format = "magnets-tokenizer";
    ck.weights["w"] = Tensor({2});
    write_checkpoint(dir / "ck.h5", ck, "magnets-train");
    Error other = expect_error([&] { read_token_file(dir / "ck.h5"); });
    CHECK(other.summary() == "not a magnets token file");
    CHECK(contains(other.hint(), "magnets-tokenizer"));
    CHECK(contains(other.hint(), "magnets-train"));
    CHECK(contains(expect_error([&] { read_checkpoint(path, "magnets-tokenizer", 1); }).why(),
                   "'magnets-tokens'"));
}

TEST_CASE("a newer format_version is refused with 'upgrade magnets'") {
    TempDir dir;
    const std::string path = dir / "t.h5";
    write_token_file(path, sample_tokens(3, 1, 2, 2, 8), "test");
    patch_root_attr(path, "format_version", int64_t(99));
    Error e = expect_error([&] { read_token_file(path); });
    CHECK(contains(e.why(), "99"));
    CHECK(e.hint() == "upgrade magnets");
    expect_error([&] { append_token_file(path, sample_tokens(1, 1, 2, 2, 8)); });

    Checkpoint ck;
    ck.format = "magnets-tokenizer";
    ck.format_version = 2;
    ck.weights["w"] = Tensor({1});
    write_checkpoint(dir / "ck.h5", ck, "test");
    CHECK(expect_error([&] { read_checkpoint(dir / "ck.h5", "magnets-tokenizer", 1); }).hint() ==
          "upgrade magnets");
    CHECK(read_checkpoint(dir / "ck.h5", "magnets-tokenizer", 2).format_version == 2);
}

TEST_CASE("token file readers check shapes and token range against the attributes") {
    TempDir dir;
    const std::string path = dir / "t.h5";
    write_token_file(path, sample_tokens(4, 1, 2, 2, 8), "test");
    patch_root_attr(path, "count", int64_t(5));
    CHECK(contains(expect_error([&] { read_token_file(path); }).why(), "/tokens has shape [4, 2, 2]"));
    patch_root_attr(path, "count", int64_t(4));
    patch_root_attr(path, "codebook_size", int64_t(4));
    CHECK(contains(expect_error([&] { read_token_file(path); }).why(), ">= codebook_size 4"));
    patch_root_attr(path, "codebook_size", std::string("eight"));
    Error e = expect_error([&] { read_token_file(path); });
    CHECK(contains(e.summary(), "codebook_size"));
    CHECK(contains(e.why(), "expected an integer"));
}

// ---- checkpoints -------------------------------------------------------------------

TEST_CASE("checkpoint round trip with prefix views, subgroups and train state") {
    TempDir dir;
    Tensor big({4, 6});
    for (int64_t i = 0; i < 24; ++i) big.data()[i] = 0.5f * i - 3.0f;
    Tensor view = big.prefix({2, 3}); // non-contiguous: row stride 6
    REQUIRE_FALSE(view.is_contiguous());
    Tensor bias({3});
    bias.data()[2] = 1e-30f;
    Tensor scalar(std::vector<int64_t>{});
    scalar.data()[0] = 7.0f;

    Checkpoint ck;
    ck.format = "magnets-tokenizer";
    ck.attrs["image_size"] = int64_t(32);
    ck.attrs["commitment"] = 0.25;
    ck.attrs["quantizer"] = std::string("ema");
    ck.weights["enc.conv0.w"] = view;
    ck.weights["enc.conv0.b"] = bias;
    ck.weights["dec/blocks.0/w"] = big;
    ck.weights["scale"] = scalar;
    Tensor m({2, 3});
    m.fill(0.125f);
    ck.state["adam_m/enc.conv0.w"] = m;
    ck.state["adam_v/enc.conv0.w"] = big.prefix({2, 3});
    ck.state_attrs["step"] = int64_t(1200);
    ck.state_attrs["seed"] = int64_t(1);
    ck.state_attrs["rng"] = std::string("philox:1:1200");
    const std::string path = dir / "tok.h5";
    write_checkpoint(path, ck, "magnets-train");

    const Checkpoint back = read_checkpoint(path, "magnets-tokenizer", 1);
    CHECK(back.format == "magnets-tokenizer");
    CHECK(back.format_version == 1);
    CHECK(back.attrs == ck.attrs); // header attributes are not mixed in
    REQUIRE(back.weights.size() == 4);
    const Tensor& w = back.weights.at("enc.conv0.w");
    CHECK(w.shape() == std::vector<int64_t>{2, 3});
    for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 3; ++j) CHECK(w.at(i, j) == big.at(i, j));
    CHECK(back.weights.at("enc.conv0.b").at(2) == 1e-30f);
    CHECK(back.weights.at("scale").rank() == 0);
    CHECK(back.weights.at("scale").data()[0] == 7.0f);
    CHECK(back.weights.at("dec/blocks.0/w").at(3, 5) == big.at(3, 5));
    REQUIRE(back.state.size() == 2);
    CHECK(back.state.at("adam_m/enc.conv0.w").at(1, 2) == 0.125f);
    CHECK(back.state.at("adam_v/enc.conv0.w").at(1, 2) == big.at(1, 2));
    CHECK(back.state_attrs == ck.state_attrs);
    CHECK(weights_hash(back.weights) == weights_hash(ck.weights));

    const Checkpoint light = read_checkpoint(path, "magnets-tokenizer", 1, false);
    CHECK_FALSE(light.has_state());
    CHECK(light.weights.size() == 4);

    const FileSummary s = describe_file(path);
    using Row = std::pair<std::string, std::string>;
    CHECK(s.datasets == std::vector<Row>{{"/train_state/adam_m/enc.conv0.w", "float32 [2, 3]"},
                                         {"/train_state/adam_v/enc.conv0.w", "float32 [2, 3]"},
                                         {"/weights/dec/blocks.0/w", "float32 [4, 6]"},
                                         {"/weights/enc.conv0.b", "float32 [3]"},
                                         {"/weights/enc.conv0.w", "float32 [2, 3]"},
                                         {"/weights/scale", "float32 []"}});
    CHECK(attr_string(s.root_attrs, "creator") == "magnets-train");
    CHECK(attr_int(s.root_attrs, "image_size") == 32);

    Checkpoint no_state;
    no_state.format = "x";
    no_state.weights["a"] = Tensor({1});
    write_checkpoint(dir / "w.h5", no_state, "t");
    CHECK_FALSE(read_checkpoint(dir / "w.h5", "x", 1).has_state());
    CHECK(contains(expect_error([&] { read_checkpoint(dir / "w.h5", "magnets-tokenizer", 1); }).hint(),
                   "'x' file"));

    Checkpoint bad = no_state;
    bad.attrs["format"] = std::string("y");
    expect_error([&] { write_checkpoint(dir / "bad.h5", bad, "t"); });
    bad = no_state;
    bad.weights["a//b"] = Tensor({1});
    expect_error([&] { write_checkpoint(dir / "bad.h5", bad, "t"); });
    CHECK_FALSE(fs::exists(dir / "bad.h5"));
}

TEST_CASE("weights_hash identifies names, shapes and every value") {
    std::map<std::string, Tensor> w;
    w["a"] = Tensor({2, 3});
    w["b"] = Tensor({4});
    for (int64_t i = 0; i < 6; ++i) w["a"].data()[i] = 0.1f * i;
    const std::string h = weights_hash(w);
    CHECK(matches(h, "xxxxxxxxxxxxxxxx"));
    CHECK(weights_hash(w) == h);

    auto changed = w;
    changed["a"] = w["a"].clone();
    changed["a"].data()[5] = std::nextafter(changed["a"].data()[5], 1.0f);
    CHECK(weights_hash(changed) != h);
    auto renamed = w;
    renamed["c"] = renamed["b"];
    renamed.erase("b");
    CHECK(weights_hash(renamed) != h);
    auto reshaped = w;
    reshaped["a"] = w["a"].reshape({3, 2});
    CHECK(weights_hash(reshaped) != h);

    // A view hashes like its contiguous copy.
    Tensor big({3, 5});
    for (int64_t i = 0; i < 15; ++i) big.data()[i] = static_cast<float>(i);
    CHECK(weights_hash({{"v", big.prefix({2, 2})}}) == weights_hash({{"v", big.prefix({2, 2}).clone()}}));
    // FNV-1a 64 of nothing is the offset basis.
    CHECK(weights_hash({}) == "cbf29ce484222325");
}

TEST_CASE("attribute helpers") {
    Attrs a{{"i", int64_t(3)}, {"d", 0.1}, {"s", std::string("x")}};
    CHECK(attr_int(a, "i") == 3);
    CHECK(attr_double(a, "i") == 3.0);
    CHECK(attr_double(a, "d") == 0.1);
    CHECK(attr_string(a, "s") == "x");
    Error missing = expect_error([&] { attr_int(a, "nope", "f.h5"); });
    CHECK(contains(missing.summary(), "nope"));
    CHECK(missing.path() == "f.h5");
    expect_error([&] { attr_int(a, "d"); });
    expect_error([&] { attr_string(a, "i"); });
    expect_error([&] { attr_double(a, "s"); });
    CHECK(attr_to_string(AttrValue(int64_t(-42))) == "-42");
    CHECK(attr_to_string(AttrValue(0.1)) == "0.1");
    CHECK(attr_to_string(AttrValue(2e-3)) == "0.002");
    CHECK(attr_to_string(AttrValue(1.0 / 3)) == "0.3333333333333333");
    CHECK(attr_to_string(AttrValue(std::string("ema"))) == "ema");
}

// ---- images ------------------------------------------------------------------------

namespace {
Image pattern(int64_t w, int64_t h, int64_t c, int seed) {
    Image img;
    img.width = w;
    img.height = h;
    img.channels = c;
    for (int64_t i = 0; i < w * h * c; ++i) img.pixels.push_back(static_cast<uint8_t>((i * 37 + seed * 11) % 256));
    return img;
}
} // namespace

TEST_CASE("image_from_float clamps, rounds and converts CHW to HWC") {
    const float chw[2 * 3 * 2] = {0.0f, 1.0f, -0.5f, 2.0f, 0.5f, 0.2f, // R
                                  NAN,  1.0f, 0.0f,  0.999f, 0.25f, 0.75f};
    const float rgb[3 * 1 * 2] = {0.0f, 1.0f, 0.5f, 0.5f, 1.0f, 0.0f};
    Image g = image_from_float(chw, 1, 3, 2);
    CHECK(g.pixels == std::vector<uint8_t>{0, 255, 0, 255, 128, 51});
    CHECK(image_from_float(chw + 6, 1, 3, 2).pixels == std::vector<uint8_t>{0, 255, 0, 255, 64, 191});
    Image c = image_from_float(rgb, 3, 1, 2);
    CHECK(c.width == 2);
    CHECK(c.height == 1);
    CHECK(c.pixels == std::vector<uint8_t>{0, 128, 255, 255, 128, 0});
    CHECK_THROWS_AS(image_from_float(chw, 2, 3, 2), Error);
}

TEST_CASE("make_grid and upscale sizes and placement") {
    std::vector<Image> imgs;
    for (int i = 0; i < 5; ++i) imgs.push_back(pattern(4, 3, 1, i));
    Image g = make_grid(imgs, 3, 2, 255);
    CHECK(g.width == 3 * 4 + 4 * 2);
    CHECK(g.height == 2 * 3 + 3 * 2);
    CHECK(g.pixels[0] == 255);
    // image 4 sits in row 1, column 1: top-left at (8, 7)
    for (int64_t y = 0; y < 3; ++y)
        for (int64_t x = 0; x < 4; ++x) CHECK(g.pixels[(7 + y) * g.width + 8 + x] == imgs[4].pixels[y * 4 + x]);
    CHECK(g.pixels[(7 + 1) * g.width + 2 * 6 + 2 + 1] == 255); // the empty sixth cell
    Image one = make_grid({imgs[0]}, 8, 0);
    CHECK(one.pixels == imgs[0].pixels);
    CHECK(make_grid(imgs, 10, 1).width == 5 * 4 + 6);
    imgs.push_back(pattern(4, 4, 1, 0));
    CHECK_THROWS_AS(make_grid(imgs, 3), Error);
    Image rgba = make_grid({pattern(2, 2, 4, 0)}, 1, 1, 0);
    CHECK(rgba.pixels[3] == 255); // padding is opaque

    Image u = upscale(pattern(3, 2, 3, 1), 4);
    CHECK(u.width == 12);
    CHECK(u.height == 8);
    const Image src = pattern(3, 2, 3, 1);
    CHECK(u.pixels[(5 * 12 + 7) * 3 + 2] == src.pixels[(1 * 3 + 1) * 3 + 2]);
}

TEST_CASE("PNG round trip: pixels and text chunks") {
    TempDir dir;
    const std::map<std::string, std::string> text = {
        {"seed", "42"}, {"parameters", "steps: 12, temperature: 1.0\nmodel: tok.h5"}, {"class", "T-shirt/top — ünïcode"}};
    for (int64_t c : {1, 3, 4}) {
        const Image img = pattern(17, 9, c, static_cast<int>(c));
        const std::string path = dir / ("img" + std::to_string(c) + ".png");
        write_png(path, img, text);
        const Image back = read_image(path);
        CHECK(back.width == 17);
        CHECK(back.height == 9);
        CHECK(back.channels == c);
        CHECK(back.pixels == img.pixels);
        CHECK(read_png_text(path) == text);
    }
    write_png(dir / "plain.png", pattern(2, 2, 1, 0));
    CHECK(read_png_text(dir / "plain.png").empty());
    CHECK(dir.entries().size() == 4); // no temps left

    std::ofstream(dir / "fake.png") << "GIF89a not a png";
    CHECK(expect_error([&] { read_png_text(dir / "fake.png"); }).summary() == "not a PNG file");
    CHECK(contains(expect_error([&] { read_image(dir / "fake.png"); }).why(), "not a decodable image"));
    CHECK(contains(expect_error([&] { read_image(dir / "none.png"); }).why(), "no such file"));
    CHECK(contains(expect_error([&] { write_png(dir / "no/dir/x.png", pattern(2, 2, 1, 0)); }).hint(), "mkdir"));
    expect_error([&] { write_png(dir / "k.png", pattern(2, 2, 1, 0), {{"", "v"}}); });

    // A corrupted text chunk is detected by its CRC.
    const std::string path = dir / "img1.png";
    std::string bytes;
    {
        std::ifstream in(path, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    const size_t at = bytes.find("steps: 12");
    REQUIRE(at != std::string::npos);
    bytes[at] = 'S';
    std::ofstream(path, std::ios::binary) << bytes;
    CHECK(contains(expect_error([&] { read_png_text(path); }).why(), "CRC"));
}
