// The sampler: row-stable matmul, KV cache exactness, determinism across
// batch sizes, threads and shards, FLOP accounting, schedules and bad input.
#include <doctest.h>

#include "device_proxy.h"

#include "cpu/rowstable_gemm.h"
#include "magnets/backend.h"
#include "magnets/error.h"
#include "magnets/rng.h"
#include "magnets/sampler.h"
#include "magnets/transformer.h"
#include "nn/decoder.h"
#include "nn/transformer_impl.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

using namespace magnets;

namespace {

TransformerConfig small_config(Nesting nesting = Nesting::width) {
    TransformerConfig c;
    c.codebook_size = 32; c.num_classes = 3; c.grid_h = 4; c.grid_w = 4;
    c.width = 32; c.heads = 8; c.layers = 2; c.nesting = nesting; c.factors = {4, 2, 1};
    return c;
}

// Weights with some spread (init's N(0, 0.02) gives nearly uniform logits).
Transformer make_model(const TransformerConfig& c, const std::string& backend = "auto") {
    Transformer m(c, backend == "device-proxy" ? std::make_unique<test::DeviceProxy>(make_backend("auto"))
                                               : make_backend(backend));
    m.init(5);
    Philox rng(9);
    uint64_t s = 0;
    for (const std::string& n : m.param_names()) {
        Tensor& t = m.param(n);
        ++s;
        if (t.rank() == 2)
            for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = 0.25f * rng.normal(s, static_cast<uint64_t>(i));
    }
    return m;
}

std::vector<int32_t> classes_for(int64_t n) {
    std::vector<int32_t> c(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) c[static_cast<size_t>(i)] = static_cast<int32_t>(i % 4) - 1; // -1 = unconditional
    return c;
}

} // namespace

TEST_CASE("row-stable matmul: rows do not depend on M or threads, and match a double reference") {
    const int64_t M = 131, K = 72, N = 40, ldw = 80;
    std::vector<float> a(static_cast<size_t>(M * K)), w(static_cast<size_t>(N * ldw)), bias(static_cast<size_t>(N));
    Philox rng(3);
    for (size_t i = 0; i < a.size(); ++i) a[i] = rng.normal(1, i);
    for (size_t i = 0; i < w.size(); ++i) w[i] = rng.normal(2, i);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = rng.normal(3, i);
    std::vector<float> full(static_cast<size_t>(M * N)), part(static_cast<size_t>(M * N));
    set_num_threads(2);
    cpu::rowstable_matmul(ConstMat(a.data(), M, K, K), ConstMat(w.data(), N, K, ldw), bias.data(), Mat{full.data(), M, N, N});
    double worst = 0;
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
            double ref = bias[static_cast<size_t>(j)];
            for (int64_t k = 0; k < K; ++k) ref += static_cast<double>(a[static_cast<size_t>(i * K + k)]) * w[static_cast<size_t>(j * ldw + k)];
            worst = std::max(worst, std::abs(ref - full[static_cast<size_t>(i * N + j)]));
        }
    CHECK(worst < 1e-4);
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        for (int64_t rows : {1, 5, 7, 48, 64}) {
            for (int64_t off : {int64_t{0}, int64_t{13}, M - rows}) {
                cpu::rowstable_matmul(ConstMat(a.data() + off * K, rows, K, K), ConstMat(w.data(), N, K, ldw), bias.data(),
                                      Mat{part.data(), rows, N, N});
                CAPTURE(rows);
                CHECK(std::memcmp(part.data(), full.data() + off * N, sizeof(float) * static_cast<size_t>(rows * N)) == 0);
            }
        }
    }
    set_num_threads(0);
}

TEST_CASE("row-stable matmul: every element is the plain FMA chain over k, then the bias (k in blocks too)") {
    // K = 600: three blocks of k in the vector kernels; N = 50: 32-, 16-panels and scalar columns;
    // M = 29: one row chunk, tasks per panel; M = 1000 (with N = 300): chunks against groups of panels
    for (auto [M, N] : {std::pair<int64_t, int64_t>{29, 50}, std::pair<int64_t, int64_t>{1000, 300}}) {
        CAPTURE(M);
        const int64_t K = 600, ldw = K + 1;
        std::vector<float> a(static_cast<size_t>(M * K)), w(static_cast<size_t>(N * ldw)), bias(static_cast<size_t>(N));
        Philox rng(6);
        for (size_t i = 0; i < a.size(); ++i) a[i] = rng.normal(1, i);
        for (size_t i = 0; i < w.size(); ++i) w[i] = rng.normal(2, i);
        for (size_t i = 0; i < bias.size(); ++i) bias[i] = rng.normal(3, i);
        std::vector<float> want(static_cast<size_t>(M * N));
        for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
                float acc = 0.0f;
                for (int64_t k = 0; k < K; ++k) acc = std::fma(a[size_t(i * K + k)], w[size_t(j * ldw + k)], acc);
                want[size_t(i * N + j)] = acc + bias[size_t(j)];
            }
        for (bool wide : {false, true}) {
            if (wide && !__builtin_cpu_supports("avx512f")) continue;
            CAPTURE(wide);
            std::vector<float> c(static_cast<size_t>(M * N));
            cpu::rowstable_matmul_isa(ConstMat(a.data(), M, K, K), ConstMat(w.data(), N, K, ldw), bias.data(),
                                      Mat{c.data(), M, N, N}, false, wide);
            CHECK(std::memcmp(c.data(), want.data(), sizeof(float) * c.size()) == 0);
        }
    }
}

TEST_CASE("row-stable matmul: the AVX-512 and AVX2 kernels give the same bits (bias, GELU, odd widths)") {
    if (!__builtin_cpu_supports("avx512f")) {
        MESSAGE("skipped: this CPU has no AVX-512");
        return;
    }
    // N = 80: two 32-panels + a 16-panel + nothing; 72: two 32-panels + 8 scalar;
    // 50: one 32-panel + a 16-panel + 2 scalar; 1031: the head's width, odd.
    // M = 1000 makes several row chunks (chunks against groups of panels)
    for (int64_t N : {int64_t{80}, int64_t{72}, int64_t{50}, int64_t{1031}}) {
        const int64_t M = N == 1031 ? 1000 : 131, K = 40, ldw = K + 3;
        std::vector<float> a(static_cast<size_t>(M * K)), w(static_cast<size_t>(N * ldw)), bias(static_cast<size_t>(N));
        Philox rng(5);
        for (size_t i = 0; i < a.size(); ++i) a[i] = rng.normal(1, i);
        for (size_t i = 0; i < w.size(); ++i) w[i] = rng.normal(2, i);
        for (size_t i = 0; i < bias.size(); ++i) bias[i] = rng.normal(3, i);
        for (bool gelu : {false, true}) {
            CAPTURE(N);
            CAPTURE(gelu);
            std::vector<float> c2(static_cast<size_t>(M * N)), c5(static_cast<size_t>(M * N));
            cpu::rowstable_matmul_isa(ConstMat(a.data(), M, K, K), ConstMat(w.data(), N, K, ldw), bias.data(),
                                      Mat{c2.data(), M, N, N}, gelu, false);
            cpu::rowstable_matmul_isa(ConstMat(a.data(), M, K, K), ConstMat(w.data(), N, K, ldw), bias.data(),
                                      Mat{c5.data(), M, N, N}, gelu, true);
            CHECK(std::memcmp(c2.data(), c5.data(), sizeof(float) * c2.size()) == 0);
        }
    }
}

TEST_CASE("a fresh cache: the gathered rows equal the full forward pass") {
    for (Nesting nest : {Nesting::width, Nesting::mone}) {
        TransformerConfig c = small_config(nest);
        Transformer m = make_model(c);
        const int64_t seqs = 3, S = c.seq();
        std::vector<int32_t> ids(static_cast<size_t>(seqs * S));
        Philox rng(4);
        for (int64_t b = 0; b < seqs; ++b) {
            ids[static_cast<size_t>(b * S)] = static_cast<int32_t>(c.class_id(b % 3));
            for (int64_t j = 1; j < S; ++j)
                ids[static_cast<size_t>(b * S + j)] = rng.below(1, static_cast<uint64_t>(b * S + j), 3) == 0
                    ? static_cast<int32_t>(c.mask_id())
                    : static_cast<int32_t>(rng.below(2, static_cast<uint64_t>(b * S + j), 32));
        }
        for (int64_t p : c.factors) {
            nn::Decoder dec(m.impl(), seqs);
            std::vector<int32_t> all;
            for (int64_t b = 0; b < seqs; ++b)
                for (int64_t j = 0; j < S; ++j) all.push_back(static_cast<int32_t>(j));
            std::vector<float> full, part;
            dec.forward(p, ids.data(), all.data(), S, true, full);
            const std::vector<int32_t> rows = {2, 5, 6, 11, 16}; // a subset of positions, same in every sequence
            std::vector<int32_t> pos;
            for (int64_t b = 0; b < seqs; ++b) pos.insert(pos.end(), rows.begin(), rows.end());
            dec.forward(p, ids.data(), pos.data(), static_cast<int64_t>(rows.size()), false, part);
            const int64_t r = c.sub(p).resid;
            bool same = true;
            for (int64_t b = 0; b < seqs; ++b)
                for (size_t i = 0; i < rows.size(); ++i)
                    same = same && std::memcmp(part.data() + (b * static_cast<int64_t>(rows.size()) + static_cast<int64_t>(i)) * r,
                                               full.data() + (b * S + rows[i]) * r, sizeof(float) * static_cast<size_t>(r)) == 0;
            CAPTURE(p);
            CHECK(same);
        }
    }
}

TEST_CASE("output rows: the last layer on a subset gives the bits of the full forward") {
    for (Nesting nest : {Nesting::width, Nesting::mlp}) {
        TransformerConfig c = small_config(nest);
        Transformer m = make_model(c);
        const int64_t seqs = 3, S = c.seq();
        std::vector<int32_t> ids(static_cast<size_t>(seqs * S)), all;
        Philox rng(6);
        for (int64_t b = 0; b < seqs; ++b) {
            ids[static_cast<size_t>(b * S)] = static_cast<int32_t>(c.class_id(b % 3));
            for (int64_t j = 1; j < S; ++j)
                ids[static_cast<size_t>(b * S + j)] = static_cast<int32_t>(rng.below(1, static_cast<uint64_t>(b * S + j), 33));
            for (int64_t j = 0; j < S; ++j) all.push_back(static_cast<int32_t>(j));
        }
        // different rows per sequence, increasing; the first row is 0 in one of them
        const std::vector<int32_t> out = {0, 3, 4, 9, 1, 2, 8, 16, 5, 6, 7, 15};
        const int64_t ro = 4;
        for (int64_t p : c.factors) {
            nn::Decoder full_dec(m.impl(), seqs), part_dec(m.impl(), seqs);
            std::vector<float> full, part;
            full_dec.forward(p, ids.data(), all.data(), S, true, full);
            part_dec.forward(p, ids.data(), all.data(), S, true, part, out.data(), ro);
            const int64_t r = c.sub(p).resid;
            REQUIRE(part.size() == static_cast<size_t>(seqs * ro * r));
            bool same = true;
            for (int64_t b = 0; b < seqs; ++b)
                for (int64_t k = 0; k < ro; ++k)
                    same = same && std::memcmp(part.data() + (b * ro + k) * r,
                                               full.data() + (b * S + out[static_cast<size_t>(b * ro + k)]) * r,
                                               sizeof(float) * static_cast<size_t>(r)) == 0;
            CAPTURE(p);
            CHECK(same);
            // a bad row list is refused
            const std::vector<int32_t> bad = {3, 3, 4, 9, 1, 2, 8, 16, 5, 6, 7, 15};
            CHECK_THROWS(part_dec.forward(p, ids.data(), all.data(), S, true, part, bad.data(), ro));
        }
    }
}

TEST_CASE("refresh every step gives exactly the tokens of no cache") {
    Transformer m = make_model(small_config());
    auto cls = classes_for(6);
    SampleConfig a;
    a.schedule = parse_size_schedule("4:2,2:2,1:2");
    a.cfg_scale = 1.5;
    a.cache = parse_cache_policy("none");
    SampleConfig b = a;
    b.cache = parse_cache_policy("every:1");
    SampleConfig c = a;
    c.cache = parse_cache_policy("on-switch");
    const SampleResult ra = sample(m, a, cls.data(), 6, 0, 6);
    const SampleResult rb = sample(m, b, cls.data(), 6, 0, 6);
    const SampleResult rc = sample(m, c, cls.data(), 6, 0, 6);
    CHECK(ra.tokens == rb.tokens);
    // on-switch caches inside each stage: fewer FLOPs, still a valid sample
    CHECK(rc.flops_per_image < ra.flops_per_image);
    for (uint16_t t : rc.tokens) CHECK(t < 32);
    int cached_steps = 0;
    for (const auto& st : rc.steps) cached_steps += st.refresh ? 0 : 1;
    CHECK(cached_steps == 3); // the second step of each stage
}

TEST_CASE("same seed, same tokens: batch sizes 1, 7, 64; 1 and 2 threads; shards") {
    Transformer m = make_model(small_config());
    const int64_t n = 64;
    auto cls = classes_for(n);
    SampleConfig sc;
    sc.schedule = parse_size_schedule("4:2,2:2,1:2");
    sc.cfg_scale = 2.0;
    sc.top_k = 10;
    sc.seed = 77;
    set_num_threads(2);
    const SampleResult ref = sample(m, sc, cls.data(), n, 0, 64);
    for (int64_t bs : {1, 7}) {
        const SampleResult r = sample(m, sc, cls.data(), n, 0, bs);
        CAPTURE(bs);
        CHECK(r.tokens == ref.tokens);
    }
    set_num_threads(1);
    CHECK(sample(m, sc, cls.data(), n, 0, 64).tokens == ref.tokens);
    set_num_threads(0);
    // shards: [0, 20) and [20, 64) with their own global indices
    const SampleResult s1 = sample(m, sc, cls.data(), 20, 0, 8);
    const SampleResult s2 = sample(m, sc, cls.data() + 20, 44, 20, 16);
    std::vector<uint16_t> joined = s1.tokens;
    joined.insert(joined.end(), s2.tokens.begin(), s2.tokens.end());
    CHECK(joined == ref.tokens);
    // another seed gives other tokens
    sc.seed = 78;
    CHECK(sample(m, sc, cls.data(), n, 0, 64).tokens != ref.tokens);
}

TEST_CASE("FLOP accounting matches a hand count") {
    TransformerConfig c;
    c.codebook_size = 16; c.num_classes = 2; c.grid_h = 2; c.grid_w = 2; // N = 4, S = 5
    c.width = 16; c.heads = 4; c.layers = 1; c.mlp_ratio = 4; c.factors = {2, 1};
    // One layer, so it is the last: keys and values for every computed row, the
    // rest for the head's rows only.
    // m_1, all 5 rows, 5 keys, 4 masked rows through the head:
    //   k,v 2*5*16*32 = 5120; q 2*4*16*16 = 2048; scores + weighted sum 2*2*4*5*16 = 1280;
    //   out proj 2*4*16*16 = 2048; MLP 2*2*4*16*64 = 16384; head 2*4*16*16 = 2048  -> 28928
    CHECK(step_flops(c, 1, 5, 5, 4) == 28928.0);
    // m_2 (width 8, 2 heads, MLP 32), 3 rows against 5 keys, 2 head rows:
    //   k,v 2*3*8*16 = 768; q 2*2*8*8 = 256; attention 4*2*5*8 = 320; out proj 2*2*8*8 = 256;
    //   MLP 4*2*8*32 = 2048; head 2*2*8*16 = 512  -> 4160
    CHECK(step_flops(c, 2, 3, 5, 2) == 4160.0);
    {
        // Two layers: the first computes all 5 rows (k,v 5120 + q 2560 + attention 1600 +
        // out proj 2560 + MLP 20480 = 32320), the second as above without the head (26880).
        TransformerConfig c2 = c;
        c2.layers = 2;
        CHECK(step_flops(c2, 1, 5, 5, 4) == 32320.0 + 26880.0 + 2048.0);
    }
    Transformer m = make_model(c);
    SampleConfig sc;
    sc.schedule = parse_size_schedule("2:2,1:2");
    sc.cache = parse_cache_policy("on-switch");
    std::vector<int32_t> cls = {0};
    const SampleResult r = sample(m, sc, cls.data(), 1, 0, 1);
    REQUIRE(r.steps.size() == 4);
    // cosine, N = 4, T = 4: masked after the steps: floor(4 cos(pi/8)) = 3, floor(4 cos(pi/4)) = 2, 1, 0
    CHECK(r.steps[0].masked_after == 3);
    CHECK(r.steps[1].masked_after == 2);
    CHECK(r.steps[0].flops == step_flops(c, 2, 5, 5, 4));   // refresh, 4 masked
    CHECK(r.steps[1].rows == 4);                             // 3 masked + 1 revealed before (class cached)
    CHECK(r.steps[1].flops == step_flops(c, 2, 4, 5, 3));
    CHECK(r.steps[2].refresh);                               // switch to m_1
    CHECK(r.steps[2].flops == step_flops(c, 1, 5, 5, 2));
    double total = 0;
    for (auto& s : r.steps) total += s.flops;
    CHECK(r.flops_per_image == total);
}

TEST_CASE("schedules, policies and bad input") {
    CHECK(size_schedule_to_string(parse_size_schedule("8:3,4:3,2:3,1:3")) == "8:3,4:3,2:3,1:3");
    CHECK(schedule_steps(parse_size_schedule("1:12")) == 12);
    CHECK_THROWS_AS(parse_size_schedule("8:3,4"), Error);
    CHECK_THROWS_AS(parse_size_schedule("8:0"), Error);
    CHECK_THROWS_AS(parse_size_schedule(""), Error);
    CHECK_THROWS_AS(parse_cache_policy("every:0"), Error);
    CHECK_THROWS_AS(parse_cache_policy("sometimes"), Error);
    CHECK(cache_policy_to_string(parse_cache_policy("every:3")) == "every:3");
    CHECK(mask_gamma(MaskSchedule::cosine, 0.0) == doctest::Approx(1.0));
    CHECK(mask_gamma(MaskSchedule::linear, 0.25) == doctest::Approx(0.75));
    Transformer m = make_model(small_config());
    SampleConfig sc;
    sc.schedule = parse_size_schedule("8:2,1:2"); // the model has 4, 2, 1
    std::vector<int32_t> cls = {0};
    CHECK_THROWS_WITH_AS(sample(m, sc, cls.data(), 1, 0, 1), doctest::Contains("m_8"), Error);
    sc.schedule = parse_size_schedule("1:4");
    cls = {7};
    CHECK_THROWS_WITH_AS(sample(m, sc, cls.data(), 1, 0, 1), doctest::Contains("class"), Error);
    cls = {0};
    sc.schedule = parse_size_schedule("1:40"); // more steps than the 16 tokens
    CHECK_THROWS_AS(sample(m, sc, cls.data(), 1, 0, 1), Error);
}

TEST_CASE("the device code path (weights uploaded, draws on the backend) gives the host path's tokens") {
    // test::DeviceProxy: device-style memory (host code touching it crashes)
    // with the CPU computing, so the bits must be the host path's.
    Transformer host = make_model(small_config()), dev = make_model(small_config(), "device-proxy");
    const auto cls = classes_for(11);
    for (int v = 0; v < 4; ++v) {
        CAPTURE(v);
        SampleConfig sc;
        sc.seed = 40 + static_cast<uint64_t>(v);
        sc.schedule = parse_size_schedule("4:2,2:2,1:2");
        if (v == 1) sc.cfg_scale = 2.0;
        if (v == 2) { sc.cfg_scale = 1.0; sc.top_k = 5; sc.cache = parse_cache_policy("none"); }
        if (v == 3) { sc.temperature = 1.5; sc.temperature_end = 0.5; sc.cache = parse_cache_policy("every:2"); }
        std::vector<float> conf_host, conf_dev;
        const SampleResult a = sample(host, sc, cls.data(), 11, 3, 4,
                                      [&](const StepView& st) { conf_host.insert(conf_host.end(), st.confidence, st.confidence + st.count * 16); });
        const SampleResult b = sample(dev, sc, cls.data(), 11, 3, 4,
                                      [&](const StepView& st) { conf_dev.insert(conf_dev.end(), st.confidence, st.confidence + st.count * 16); });
        CHECK(a.tokens == b.tokens);
        REQUIRE(conf_host.size() == conf_dev.size());
        CHECK(std::memcmp(conf_host.data(), conf_dev.data(), conf_host.size() * sizeof(float)) == 0);
    }
}
