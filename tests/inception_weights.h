// tests/inception_weights.h: a complete FID Inception-v3 checkpoint with
// deterministic random weights (He-uniform convs, unit BatchNorm scales), for
// tests of the graph that need no real weights.
#pragma once
#include "magnets/formats.h"
#include "magnets/inception.h"

#include <cmath>
#include <string>

namespace magnets::test {

inline Checkpoint random_inception_checkpoint() {
    Checkpoint ck;
    ck.format = inception_format;
    ck.attrs["variant"] = std::string("fid");
    ck.attrs["bn_eps"] = 0.001;
    uint64_t state = 12345;
    auto uniform = [&state]() { // [-1, 1)
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<double>(state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
    };
    for (const auto& [name, shape] : InceptionV3::weight_shapes()) {
        Tensor t(shape);
        const std::string tail = name.substr(name.rfind('.') + 1);
        if (shape.size() == 4) {
            const double bound = std::sqrt(6.0 / static_cast<double>(shape[1] * shape[2] * shape[3]));
            for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(uniform() * bound);
        } else if (tail == "weight" || tail == "running_var") {
            t.fill(1.0f);
        }
        ck.weights.emplace(name, std::move(t));
    }
    return ck;
}


} // namespace magnets::test
