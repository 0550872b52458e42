// The VQ tokenizer against the PyTorch fixture (scripts/gen_tokenizer_fixture.py),
// plus training behaviour: learning, exact resume, encode/decode consistency.
#include <doctest.h>

#include "device_proxy.h"
#include "test_util.h"

#include "magnets/backend.h"
#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets/rng.h"
#include "magnets/tokenizer.h"

#include <hdf5.h>

#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

using namespace magnets;

namespace {

const std::string fixture = std::string(MAGNETS_FIXTURES) + "/tokenizer_fixture.h5";

using test::read_ds;

double norm_err(const float* got, const std::vector<float>& want) {
    double m = 0, s = 1e-3;
    for (size_t i = 0; i < want.size(); ++i) {
        m = std::max(m, std::fabs(static_cast<double>(got[i]) - want[i]));
        s = std::max(s, std::fabs(static_cast<double>(want[i])));
    }
    return m / s;
}

ImageSet synthetic_images(int64_t count, int64_t size, uint32_t seed) {
    // Soft blobs at random places: structured enough to learn quickly.
    ImageSet s;
    s.channels = 1; s.height = size; s.width = size; s.source = "synthetic"; s.split = "train";
    s.class_names = {"blob"};
    s.pixels.resize(static_cast<size_t>(count * size * size));
    s.labels.assign(static_cast<size_t>(count), 0);
    Philox r(seed);
    for (int64_t n = 0; n < count; ++n) {
        const double cy = 4 + r.uniform(1, static_cast<uint64_t>(n)) * (size - 8);
        const double cx = 4 + r.uniform(2, static_cast<uint64_t>(n)) * (size - 8);
        const double rad = 2 + r.uniform(3, static_cast<uint64_t>(n)) * 4;
        for (int64_t i = 0; i < size; ++i)
            for (int64_t j = 0; j < size; ++j) {
                const double d = std::hypot(i - cy, j - cx);
                s.pixels[static_cast<size_t>((n * size + i) * size + j)] =
                    static_cast<uint8_t>(255.0 * std::max(0.0, std::min(1.0, rad - d + 0.5)));
            }
    }
    return s;
}

// A training run of preset p on data (stopped after stop_after steps, or resumed).
Tokenizer train_run(const TokenizerPreset& p, const ImageSet& data, std::shared_ptr<Backend> be, const std::string& out,
                    int64_t stop_after, bool resume, const std::function<void(const TokenizerLog&)>& on_log) {
    Tokenizer tok(p.model, std::move(be));
    tok.init(p.train.seed);
    TokenizerTrainOptions opt;
    opt.train = p.train;
    opt.output = out;
    opt.resume = resume;
    opt.stop_after = stop_after;
    train_tokenizer(tok, data, opt, on_log);
    return tok;
}

} // namespace

TEST_CASE("tokenizer forward, loss and every gradient match PyTorch") {
    // Tolerances: the reference ran in f64 from the same f32-rounded inputs;
    // the library computes in f32 through ~10 layers with sums over <= 96
    // terms each, so relative errors of ~1e-6 per op compound to ~1e-5. We
    // allow 1e-4 (normalised by max(1e-3, max|ref|)); any indexing or missing
    // term error is O(1).
    for (const auto& be_name : available_backends()) {
        if (be_name == "cuda") continue;
        CAPTURE(be_name);
        Tokenizer tok = Tokenizer::load(fixture, make_backend(be_name));
        CHECK(tok.config().quantizer == Quantizer::loss);
        auto x = read_ds<float>(fixture, "/fixture/x", H5T_NATIVE_FLOAT);
        const int64_t per = tok.config().channels * tok.config().image_size * tok.config().image_size;
        const int64_t n = static_cast<int64_t>(x.size()) / per;
        Tokenizer::StepLosses L = tok.forward_backward(x.data(), n, false);

        Checkpoint ck = read_checkpoint(fixture, tokenizer_format, 1, false);
        CHECK(L.loss == doctest::Approx(attr_double(ck.attrs, "fixture_loss")).epsilon(1e-5));
        CHECK(L.recon == doctest::Approx(attr_double(ck.attrs, "fixture_recon")).epsilon(1e-5));
        CHECK(L.commit == doctest::Approx(attr_double(ck.attrs, "fixture_commit")).epsilon(1e-5));

        auto codes = read_ds<int32_t>(fixture, "/fixture/codes", H5T_NATIVE_INT32);
        std::vector<uint16_t> ids(codes.size());
        tok.encode(x.data(), n, ids.data());
        for (size_t i = 0; i < codes.size(); ++i) REQUIRE(ids[i] == codes[i]);

        for (const auto& name : tok.param_names()) {
            CAPTURE(name);
            auto want = read_ds<float>(fixture, "/fixture/grads/" + name, H5T_NATIVE_FLOAT);
            REQUIRE(static_cast<int64_t>(want.size()) == tok.grad(name).numel());
            CHECK(norm_err(tok.grad(name).data(), want) < 1e-4);
        }
    }
}

TEST_CASE("tokenizer decode of its own codes reproduces the training reconstruction") {
    Tokenizer tok = Tokenizer::load(fixture, make_backend("ref"));
    auto x = read_ds<float>(fixture, "/fixture/x", H5T_NATIVE_FLOAT);
    auto want = read_ds<float>(fixture, "/fixture/x_hat", H5T_NATIVE_FLOAT);
    const int64_t n = 3;
    std::vector<uint16_t> ids(static_cast<size_t>(n * tok.tokens_per_image()));
    tok.encode(x.data(), n, ids.data());
    std::vector<float> y(x.size());
    tok.decode(ids.data(), n, y.data());
    for (size_t i = 0; i < y.size(); ++i) want[i] = std::min(1.0f, std::max(0.0f, want[i]));
    CHECK(norm_err(y.data(), want) < 1e-4);
    ids[0] = 999; // >= K = 16
    CHECK_THROWS_AS(tok.decode(ids.data(), n, y.data()), Error);
}

TEST_CASE("tokenizer training learns, and resume continues bit-identically") {
    ImageSet data = synthetic_images(256, 16, 5);
    TokenizerPreset p = tokenizer_preset("tiny");
    p.model.image_size = 16;
    p.train.steps = 40;
    p.train.log_every = 5;
    p.train.restart_every = 10;
    auto run = [&](const std::string& out, int64_t stop_after, bool resume) {
        std::vector<TokenizerLog> logs;
        train_run(p, data, make_backend("auto"), out, stop_after, resume, [&](const TokenizerLog& l) { logs.push_back(l); });
        return logs;
    };
    test::TempDir dir;
    const std::string a = dir / "a.h5", b = dir / "b.h5";
    auto logs = run(a, -1, false);
    REQUIRE(logs.size() == 8);
    CHECK(logs.back().recon < 0.5 * logs.front().recon);
    CHECK(logs.back().usage > 0.2);

    run(b, 17, false);                       // "killed" after step 17
    Checkpoint mid = read_checkpoint(b, tokenizer_format, 1, true);
    CHECK(attr_int(mid.state_attrs, "step") == 17);
    run(b, -1, true);                        // resume to the end
    Checkpoint ca = read_checkpoint(a, tokenizer_format, 1, true), cb = read_checkpoint(b, tokenizer_format, 1, true);
    CHECK(weights_hash(ca.weights) == weights_hash(cb.weights));
    CHECK(weights_hash(ca.state) == weights_hash(cb.state));
}

TEST_CASE("the tokenizer's device code path gives the CPU path's bits") {
    // tests/device_proxy.h: a backend whose memory the host cannot touch (as a
    // GPU's), computing with the same CPU backend underneath. Everything the
    // tokenizer does on a device (activations, weight copies, the quantizer's
    // downloads and uploads, AdamW on the device copies, resume) must give
    // exactly the host run's bits.
    auto proxy = [] { return std::make_shared<test::DeviceProxy>(make_backend("ref")); };
    SUBCASE("fixture step: losses, codes, gradients, decode") {
        Tokenizer th = Tokenizer::load(fixture, make_backend("ref"));
        Tokenizer td = Tokenizer::load(fixture, proxy());
        auto x = read_ds<float>(fixture, "/fixture/x", H5T_NATIVE_FLOAT);
        const int64_t per = th.config().channels * th.config().image_size * th.config().image_size;
        const int64_t n = static_cast<int64_t>(x.size()) / per;
        const Tokenizer::StepLosses lh = th.forward_backward(x.data(), n, false);
        const Tokenizer::StepLosses ld = td.forward_backward(x.data(), n, false);
        CHECK(lh.loss == ld.loss);
        CHECK(lh.recon == ld.recon);
        CHECK(lh.commit == ld.commit);
        CHECK(lh.psnr == ld.psnr);
        CHECK(lh.code_counts == ld.code_counts);
        for (const auto& name : th.param_names()) {
            CAPTURE(name);
            const Tensor &gh = th.grad(name), &gd = td.grad(name);
            REQUIRE(gh.numel() == gd.numel());
            CHECK(std::memcmp(gh.data(), gd.data(), sizeof(float) * static_cast<size_t>(gh.numel())) == 0);
        }
        std::vector<uint16_t> ih(static_cast<size_t>(n * th.tokens_per_image())), id(ih.size());
        th.encode(x.data(), n, ih.data());
        td.encode(x.data(), n, id.data());
        CHECK(ih == id);
        std::vector<float> yh(x.size()), yd(x.size());
        th.decode(ih.data(), n, yh.data());
        td.decode(ih.data(), n, yd.data());
        CHECK(yh == yd);
    }
    for (const Quantizer q : {Quantizer::ema, Quantizer::loss}) {
        CAPTURE(quantizer_name(q));
        ImageSet data = synthetic_images(128, 16, 7);
        TokenizerPreset p = tokenizer_preset("tiny");
        p.model.image_size = 16;
        p.model.quantizer = q;
        p.train.steps = 12;
        p.train.log_every = 4;
        p.train.restart_every = 4; // dead-code restarts write the codebook on the host
        auto run = [&](std::shared_ptr<Backend> be, const std::string& out, int64_t stop_after, bool resume) {
            std::vector<double> losses;
            Tokenizer tok = train_run(p, data, std::move(be), out, stop_after, resume,
                                      [&](const TokenizerLog& l) { losses.push_back(l.loss); });
            return std::make_pair(losses, tok.hash());
        };
        test::TempDir dir;
        const std::string a = dir / "host.h5", b = dir / "device.h5";
        const auto host = run(make_backend("ref"), a, -1, false);
        run(proxy(), b, 6, false);                    // stopped mid-run on the "device"
        const auto dev = run(proxy(), b, -1, true);   // and resumed there
        CHECK(host.second == dev.second);
        Checkpoint ca = read_checkpoint(a, tokenizer_format, 1, true), cb = read_checkpoint(b, tokenizer_format, 1, true);
        CHECK(weights_hash(ca.weights) == weights_hash(cb.weights));
        CHECK(weights_hash(ca.state) == weights_hash(cb.state));
        // the resumed run logs only its own steps: the last loss must agree
        REQUIRE(!dev.first.empty());
        CHECK(host.first.back() == dev.first.back());
    }
}

TEST_CASE("a checkpoint with a NaN weight is refused on load") {
    test::TempDir dir;
    Checkpoint ck = read_checkpoint(fixture, tokenizer_format, 1, false);
    ck.weights["dec.tail.weight"].data()[3] = std::nanf("");
    write_checkpoint(dir / "nan.h5", ck, "test");
    CHECK_THROWS_WITH_AS(Tokenizer::load(dir / "nan.h5", make_backend("ref")),
                         doctest::Contains("non-finite"), Error);
}

TEST_CASE("tokenizer configuration is validated") {
    TokenizerConfig c;
    c.image_size = 30; // not a multiple of 4
    CHECK_THROWS_AS(c.validate(), Error);
    c = TokenizerConfig{};
    c.codebook_size = 70000;
    CHECK_THROWS_AS(c.validate(), Error);
    CHECK_THROWS_AS(tokenizer_preset("huge"), Error);
    CHECK_THROWS_AS(parse_quantizer("kmeans"), Error);
}
