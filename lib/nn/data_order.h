// lib/nn/data_order.h (private): deterministic epoch permutations for training
// loops. item(i) is the dataset index of the i-th example drawn since step 0:
// epoch e = i / count is a Fisher-Yates shuffle driven by Philox(seed,
// "data-order", e), so resuming at any position reproduces the same order.
#pragma once
#include "magnets/rng.h"

#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

namespace magnets::nn {

class DataOrder {
public:
    DataOrder(uint64_t seed, int64_t count) : rng_(seed), count_(count) {}
    int64_t item(int64_t global_index) {
        const int64_t epoch = global_index / count_;
        if (epoch != epoch_) {
            perm_.resize(static_cast<size_t>(count_));
            std::iota(perm_.begin(), perm_.end(), int64_t{0});
            const uint64_t s = stream_id("data-order", static_cast<uint64_t>(epoch));
            for (int64_t i = count_ - 1; i > 0; --i) {
                const int64_t j = rng_.below(s, static_cast<uint64_t>(i), static_cast<uint32_t>(i + 1));
                std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(j)]);
            }
            epoch_ = epoch;
        }
        return perm_[static_cast<size_t>(global_index % count_)];
    }

private:
    Philox rng_;
    int64_t count_, epoch_ = -1;
    std::vector<int64_t> perm_;
};

} // namespace magnets::nn
