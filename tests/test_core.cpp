// Core: errors, tensors and views, the counter-based RNG.
#include <doctest.h>

#include "magnets/error.h"
#include "magnets/rng.h"
#include "magnets/tensor.h"

#include <cmath>
#include <set>

using namespace magnets;

TEST_CASE("Error composes what (path): why and keeps the hint") {
    Error e("cannot open token file", "x.h5", "not an HDF5 file", "re-encode it");
    CHECK(std::string(e.what()) == "cannot open token file (x.h5): not an HDF5 file");
    CHECK(e.hint() == "re-encode it");
    CHECK_THROWS_AS(check(false, "bad"), Error);
}

TEST_CASE("tensor prefix views share storage and keep strides") {
    Tensor w({4, 6});
    for (int64_t i = 0; i < 24; ++i) w.data()[i] = static_cast<float>(i);
    Tensor p = w.prefix({2, 3});
    CHECK(p.data() == w.data());
    CHECK_FALSE(p.is_contiguous());
    Mat m = p.mat();
    CHECK(m.rows == 2);
    CHECK(m.cols == 3);
    CHECK(m.ld == 6);
    CHECK(p.at(1, 2) == 8.0f);
    p.fill(-1);
    CHECK(w.at(1, 2) == -1.0f);
    CHECK(w.at(1, 3) == 9.0f); // outside the block: untouched
    Tensor c = p.clone();
    CHECK(c.is_contiguous());
    CHECK(c.numel() == 6);
    CHECK_THROWS_AS(w.prefix({5, 1}), Error);
    CHECK(w.reshape({2, 12}).dim(1) == 12);
    CHECK_THROWS_AS(p.reshape({6}), Error);
}

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors") {
    // Random123 kat_vectors: philox4x32 10 rounds, counter 0, key 0 ->
    // 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
    Philox r(0);
    auto b = r.block(0, 0);
    CHECK(b[0] == 0x6627e8d5u);
    CHECK(b[1] == 0xe169c58du);
    CHECK(b[2] == 0xbc57ac4cu);
    CHECK(b[3] == 0x9b00dbd8u);
    // counter all ones, key all ones -> 408f276d 41c83b0e a20bc7c6 6d5451fd.
    Philox r2(0xffffffffffffffffull);
    auto b2 = r2.block(0xffffffffffffffffull, 0xffffffffffffffffull);
    CHECK(b2[0] == 0x408f276du);
    CHECK(b2[1] == 0x41c83b0eu);
    CHECK(b2[2] == 0xa20bc7c6u);
    CHECK(b2[3] == 0x6d5451fdu);
    // counter 243f6a88 85a308d3 13198a2e 03707344, key a4093822 299f31d0 (digits of pi)
    // -> d16cfe09 94fdcceb 5001e420 24126ea1.
    Philox r3(0x299f31d0a4093822ull);
    auto b3 = r3.block(0x0370734413198a2eull, 0x85a308d3243f6a88ull);
    CHECK(b3[0] == 0xd16cfe09u);
    CHECK(b3[1] == 0x94fdccebu);
    CHECK(b3[2] == 0x5001e420u);
    CHECK(b3[3] == 0x24126ea1u);
}

TEST_CASE("RNG draws are pure functions of (seed, stream, index) with sane moments") {
    Philox a(42), b(42), c(43);
    CHECK(a.uniform(5, 7) == b.uniform(5, 7));
    CHECK(a.uniform(5, 7) != c.uniform(5, 7));
    CHECK(a.uniform(5, 7) != a.uniform(6, 7));
    double s = 0, s2 = 0, su = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
        const double z = a.normal(1, static_cast<uint64_t>(i));
        s += z; s2 += z * z;
        const double u = a.uniform(2, static_cast<uint64_t>(i));
        CHECK_MESSAGE((u >= 0 && u < 1), "uniform out of range");
        su += u;
    }
    CHECK(std::fabs(s / n) < 0.01);
    CHECK(std::fabs(s2 / n - 1.0) < 0.02);
    CHECK(std::fabs(su / n - 0.5) < 0.005);
    std::set<uint32_t> seen;
    for (uint64_t i = 0; i < 1000; ++i) seen.insert(a.below(3, i, 10));
    CHECK(seen.size() == 10);
    CHECK(*seen.rbegin() == 9);
    CHECK(stream_id("mask", 1) != stream_id("mask", 2));
    CHECK(stream_id("mask", 1) != stream_id("drop", 1));
    CHECK(std::isfinite(a.gumbel(0, 0)));
}
