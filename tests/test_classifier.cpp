// The feature classifier of magnets-eval: it learns a separable synthetic
// task, and its device code path (tests/device_proxy.h) gives the CPU's bits
// for training, features and probabilities.
#include <doctest.h>

#include "device_proxy.h"
#include "test_util.h"

#include "magnets/backend.h"
#include "magnets/classifier.h"
#include "magnets/dataset.h"
#include "magnets/rng.h"

#include <cmath>
#include <cstring>
#include <vector>

using namespace magnets;

namespace {

// Two classes: a bright square in the left or the right half, at a random height.
ImageSet two_class_images(int64_t count, int64_t size, uint32_t seed) {
    ImageSet s;
    s.channels = 1; s.height = size; s.width = size; s.source = "synthetic"; s.split = "train";
    s.class_names = {"left", "right"};
    s.pixels.assign(static_cast<size_t>(count * size * size), 0);
    s.labels.resize(static_cast<size_t>(count));
    Philox r(seed);
    for (int64_t n = 0; n < count; ++n) {
        const int32_t y = static_cast<int32_t>(r.below(1, static_cast<uint64_t>(n), 2));
        s.labels[static_cast<size_t>(n)] = y;
        const int64_t top = static_cast<int64_t>(r.below(2, static_cast<uint64_t>(n), static_cast<uint32_t>(size - 4)));
        const int64_t left = y == 0 ? 1 : size / 2 + 1;
        for (int64_t i = top; i < top + 4; ++i)
            for (int64_t j = left; j < left + size / 2 - 2; ++j)
                s.pixels[static_cast<size_t>((n * size + i) * size + j)] = 220;
    }
    return s;
}

ClassifierConfig small_config() {
    ClassifierConfig c;
    c.image_size = 16; c.channels = 1; c.num_classes = 2;
    c.width1 = 4; c.width2 = 8; c.feature_dim = 16;
    c.dataset = "synthetic";
    c.class_names = {"left", "right"};
    return c;
}

} // namespace

TEST_CASE("the classifier learns a separable task") {
    const ImageSet data = two_class_images(256, 16, 3);
    Classifier net(small_config(), make_backend("auto"));
    net.init(1);
    const double before = net.accuracy(data);
    ClassifierTrainConfig tc;
    tc.epochs = 4; tc.batch_size = 32; tc.lr = 3e-3;
    net.train(data, tc, nullptr);
    const double after = net.accuracy(data);
    MESSAGE("accuracy " << before << " -> " << after);
    CHECK(after > 0.9);
}

TEST_CASE("the classifier's device code path gives the CPU path's bits") {
    const ImageSet data = two_class_images(96, 16, 4);
    Classifier host(small_config(), make_backend("ref"));
    Classifier dev(small_config(), std::make_shared<test::DeviceProxy>(make_backend("ref")));
    host.init(2);
    dev.init(2);
    CHECK(host.hash() == dev.hash());
    ClassifierTrainConfig tc;
    tc.epochs = 1; tc.batch_size = 16; tc.log_every = 2;
    std::vector<double> lh, ld;
    host.train(data, tc, [&](const Classifier::Log& l) { lh.push_back(l.loss); });
    dev.train(data, tc, [&](const Classifier::Log& l) { ld.push_back(l.loss); });
    CHECK(lh == ld);
    CHECK(host.hash() == dev.hash());
    const int64_t n = 10, per = 16 * 16;
    std::vector<float> x(static_cast<size_t>(n * per));
    data.to_float(0, n, x.data());
    std::vector<float> fh(static_cast<size_t>(n * 16)), fd(fh.size()), ph(static_cast<size_t>(n * 2)), pd(ph.size());
    host.features(x.data(), n, fh.data(), ph.data());
    dev.features(x.data(), n, fd.data(), pd.data());
    CHECK(fh == fd);
    CHECK(ph == pd);
    CHECK(host.accuracy(data) == dev.accuracy(data));
}
