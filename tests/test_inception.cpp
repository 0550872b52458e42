// The FID Inception-v3 (magnets::InceptionV3) against PyTorch: torchvision's
// inception_v3 with pytorch-fid's FID blocks and random weights
// (scripts/gen_inception_fixture.py). The fixture holds the whole network
// (~90 MB), so it is generated into the build directory (tests/meson.build)
// and named by MAGNETS_INCEPTION_FIXTURE; without it that comparison skips.
// The other cases run on random weights made here and need no fixture.
#include <doctest.h>

#include "device_proxy.h"
#include "inception_weights.h"
#include "test_util.h"

#include "magnets/backend.h"
#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets/inception.h"

#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace magnets;

namespace {

std::string fixture_path() {
    const char* p = std::getenv("MAGNETS_INCEPTION_FIXTURE");
    return p ? p : "";
}

using test::read_ds;

// max |got - want| / max(1e-3, max |want|).
double norm_err(const float* got, const std::vector<float>& want) {
    double m = 0, s = 1e-3;
    for (size_t i = 0; i < want.size(); ++i) {
        m = std::max(m, std::fabs(static_cast<double>(got[i]) - want[i]));
        s = std::max(s, std::fabs(static_cast<double>(want[i])));
    }
    return m / s;
}

double mean_of(const Tensor& t) {
    double s = 0;
    for (int64_t i = 0; i < t.numel(); ++i) s += t.data()[i];
    return s / static_cast<double>(t.numel());
}

// Random weights of the right shapes: He-normal-ish convs (uniform with the
// same variance), identity BatchNorm. Deterministic (a 64-bit LCG).
} // namespace

TEST_CASE("InceptionV3 pool3 features match PyTorch's FID Inception-v3") {
    const std::string fixture = fixture_path();
    if (fixture.empty() || !std::filesystem::exists(fixture)) {
        MESSAGE("skipped: no Inception fixture (needs /usr/bin/python3 with torch, torchvision and h5py at "
                "configure time; tests/meson.build then generates it with scripts/gen_inception_fixture.py)");
        return;
    }
    const auto x = read_ds<float>(fixture, "/fixture/x", H5T_NATIVE_FLOAT);
    const auto want = read_ds<float>(fixture, "/fixture/features", H5T_NATIVE_FLOAT);
    REQUIRE(x.size() == 2u * 3 * 64 * 64);
    REQUIRE(want.size() == 2u * 2048);
    const std::vector<std::string> stages = {
        "input", "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
        "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"};
    std::map<std::string, double> want_means;
    for (const auto& s : stages) want_means[s] = read_ds<double>(fixture, "/fixture/means/" + s, H5T_NATIVE_DOUBLE)[0];

    // Tolerance: the reference ran in float64 from the same float32 weights and
    // inputs; the library computes in float32 (BatchNorm folded in double, then
    // rounded) through ~50 conv layers with sums of up to 3456 (= 384 * 3 * 3)
    // terms. Relative rounding of ~1e-7 per op compounds to ~1e-6 at the output
    // (torch's own float32 run is within ~1e-6 of float64: the fixture's
    // fixture_torch_f32_rel_err). 1e-4 of the largest feature leaves a wide
    // margin, while a wrong pool divisor, padding, BatchNorm term or branch
    // order moves features by O(1) relative.
    const double tol = 1e-4;
    for (const auto& be_name : available_backends()) {
        if (be_name == "cuda") continue;
        CAPTURE(be_name);
        InceptionV3 net = InceptionV3::load(fixture, make_backend(be_name));
        std::map<std::string, double> got_means;
        net.set_stage_hook([&](const std::string& stage, const Tensor& out) { got_means[stage] = mean_of(out); });
        std::vector<float> got(2 * 2048);
        net.features(x.data(), 2, 64, 64, 3, got.data());
        // Stage means first: on a mismatch they say where the graphs part.
        for (const auto& s : stages) {
            CAPTURE(s);
            REQUIRE(got_means.count(s) == 1);
            const double w = want_means[s];
            CHECK(std::fabs(got_means[s] - w) <= tol * std::max(1.0, std::fabs(w)));
        }
        const double err = norm_err(got.data(), want);
        MESSAGE(be_name << ": max |features - torch| / max |torch| = " << err);
        CHECK(err < tol);
    }
}

TEST_CASE("InceptionV3::load rejects foreign and damaged files with a clear Error") {
    std::shared_ptr<Backend> be = make_backend("ref");
    // A magnets file of another format.
    const std::string tok = std::string(MAGNETS_FIXTURES) + "/tok_tiny.h5";
    CHECK_THROWS_WITH_AS(InceptionV3::load(tok, be), doctest::Contains("expected 'magnets-inception'"), Error);
    try {
        InceptionV3::load(tok, be);
    } catch (const Error& e) {
        CHECK(e.hint().find("magnets-tokenizer") != std::string::npos); // says what the file is
    }

    test::TempDir dir;
    {
        std::ofstream(dir / "weights.pth") << "not an HDF5 file";
    }
    CHECK_THROWS_AS(InceptionV3::load(dir / "weights.pth", be), Error);
    CHECK_THROWS_AS(InceptionV3::load(dir / "missing.h5", be), Error);

    // The right format, but a tensor missing, misshapen, non-finite, or no variant.
    Checkpoint ck = test::random_inception_checkpoint();
    Checkpoint c1 = ck;
    c1.weights.erase("Mixed_6e.branch7x7dbl_3.conv.weight");
    write_checkpoint(dir / "missing_tensor.h5", c1, "test");
    CHECK_THROWS_WITH_AS(InceptionV3::load(dir / "missing_tensor.h5", be),
                         doctest::Contains("'Mixed_6e.branch7x7dbl_3.conv.weight' is missing"), Error);
    Checkpoint c2 = ck;
    c2.weights["Mixed_7c.branch3x3_2a.conv.weight"] = Tensor({384, 384, 3, 1});
    CHECK_THROWS_WITH_AS(InceptionV3::from_checkpoint(c2, be),
                         doctest::Contains("has shape [384, 384, 3, 1], expected [384, 384, 1, 3]"), Error);
    Checkpoint c3 = ck;
    c3.weights["Conv2d_1a_3x3.bn.running_mean"] = ck.weights["Conv2d_1a_3x3.bn.running_mean"].clone();
    c3.weights["Conv2d_1a_3x3.bn.running_mean"].data()[5] = std::nanf("");
    CHECK_THROWS_WITH_AS(InceptionV3::from_checkpoint(c3, be), doctest::Contains("non-finite"), Error);
    Checkpoint c4 = ck;
    c4.attrs.erase("variant");
    CHECK_THROWS_WITH_AS(InceptionV3::from_checkpoint(c4, be), doctest::Contains("variant"), Error);
    c4.attrs["variant"] = std::string("torchvision");
    CHECK_THROWS_WITH_AS(InceptionV3::from_checkpoint(c4, be), doctest::Contains("only 'fid'"), Error);
}

TEST_CASE("InceptionV3: gray equals replicated RGB, batching and file round trip do not change features") {
    std::shared_ptr<Backend> be = make_backend("auto");
    Checkpoint ck = test::random_inception_checkpoint();
    test::TempDir dir;
    write_checkpoint(dir / "inc.h5", ck, "test");
    InceptionV3 net = InceptionV3::load(dir / "inc.h5", be);
    InceptionV3 mem = InceptionV3::from_checkpoint(ck, be);
    CHECK(net.hash() == mem.hash());
    CHECK(net.hash().size() == 16);

    // Two gray 23x41 images (non-square, upsampled to 299).
    const int64_t n = 2, h = 23, w = 41;
    std::vector<float> gray(static_cast<size_t>(n * h * w)), rgb(static_cast<size_t>(n * 3 * h * w));
    for (int64_t b = 0; b < n; ++b)
        for (int64_t i = 0; i < h * w; ++i) {
            const float v = 0.5f + 0.5f * std::sin(0.37f * static_cast<float>(i) + 1.3f * static_cast<float>(b)) *
                                       std::cos(0.05f * static_cast<float>(i));
            gray[static_cast<size_t>(b * h * w + i)] = v;
            for (int64_t c = 0; c < 3; ++c) rgb[static_cast<size_t>((b * 3 + c) * h * w + i)] = v;
        }
    std::vector<float> f_gray(static_cast<size_t>(n * 2048)), f_rgb(f_gray.size());
    net.features(gray.data(), n, h, w, 1, f_gray.data(), /*batch=*/1);
    mem.features(rgb.data(), n, h, w, 3, f_rgb.data(), /*batch=*/2);
    double peak = 0, diff = 0;
    bool finite = true;
    for (size_t i = 0; i < f_gray.size(); ++i) {
        finite = finite && std::isfinite(f_gray[i]);
        peak = std::max(peak, std::fabs(static_cast<double>(f_rgb[i])));
        diff = std::max(diff, std::fabs(static_cast<double>(f_gray[i]) - f_rgb[i]));
    }
    CHECK(finite);
    CHECK(peak > 0.0);
    // Same inputs; only the batch size differs (a backend may block differently).
    CHECK(diff <= 1e-5 * peak);
    // The two images give different features.
    double between = 0;
    for (int64_t i = 0; i < 2048; ++i) between = std::max(between, std::fabs(double(f_rgb[i]) - f_rgb[2048 + i]));
    CHECK(between > 1e-3 * peak);

    // Argument checks.
    CHECK_THROWS_AS(net.features(rgb.data(), n, h, w, 4, f_rgb.data()), Error);
    CHECK_THROWS_AS(net.features(rgb.data(), n, 0, w, 3, f_rgb.data()), Error);
    CHECK_THROWS_AS(net.features(nullptr, n, h, w, 3, f_rgb.data()), Error);
    net.features(rgb.data(), 0, h, w, 3, f_rgb.data()); // nothing to do
}

TEST_CASE("InceptionV3's device code path gives the CPU path's bits") {
    // tests/device_proxy.h: memory the host cannot touch, the same CPU backend
    // computing underneath; upload, resize, every block, the pool, download.
    Checkpoint ck = test::random_inception_checkpoint();
    InceptionV3 host = InceptionV3::from_checkpoint(ck, make_backend("auto"));
    InceptionV3 dev = InceptionV3::from_checkpoint(ck, std::make_shared<test::DeviceProxy>(make_backend("auto")));
    const int64_t n = 1, h = 19, w = 27;
    std::vector<float> gray(static_cast<size_t>(n * h * w));
    for (size_t i = 0; i < gray.size(); ++i) gray[i] = 0.5f + 0.5f * std::sin(0.31f * static_cast<float>(i));
    std::vector<float> fh(static_cast<size_t>(n * 2048)), fd(fh.size());
    std::map<std::string, double> mh, md;
    host.set_stage_hook([&](const std::string& s, const Tensor& t) { mh[s] = mean_of(t); });
    dev.set_stage_hook([&](const std::string& s, const Tensor& t) { md[s] = mean_of(t); });
    host.features(gray.data(), n, h, w, 1, fh.data());
    dev.features(gray.data(), n, h, w, 1, fd.data());
    CHECK(mh == md);
    CHECK(fh == fd);
}
