// The GPU versions of the transformer's non-matmul operations (lib/cuda/cuda_ops.h)
// against the CPU templates of lib/nn/transformer_ops.h, nn::Adam and the
// embedding loops, on random inputs with strided rows. Built only with CUDA;
// without a visible device every case passes with a "skipped" message.
//
// Tolerance: both sides compute in f32 with different summation orders
// (warp trees against 8-lane CPU sums), so results differ by f32 round-off,
// growing with the length of the sums (up to a few hundred terms here):
// normalised max error 2e-5, losses 1e-5 relative.
#include <doctest.h>

#include "cuda/cuda_ops.h"
#include "magnets/backend.h"
#include "magnets/error.h"
#include "magnets/classifier.h"
#include "magnets/dataset.h"
#include "magnets/formats.h"
#include "magnets/inception.h"
#include "magnets/sampler.h"
#include "magnets/tokenizer.h"
#include "magnets/transformer.h"
#include "nn/optim.h"
#include "nn/transformer_impl.h"
#include "nn/transformer_ops.h"
#include "inception_weights.h"
#include "test_util.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

using namespace magnets;

namespace {

constexpr double kTol = 2e-5;

std::unique_ptr<Backend> gpu() {
    try {
        return make_backend("cuda");
    } catch (const Error& e) {
        MESSAGE("skipped: " << e.why());
        return nullptr;
    }
}

std::vector<float> rnd(size_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> u(-scale, scale);
    std::vector<float> v(n);
    for (float& x : v) x = u(g);
    return v;
}

double nerr(const std::vector<float>& got, const std::vector<float>& want) {
    double d = 0, s = 1;
    for (size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        d = std::max(d, std::fabs(double(got[i]) - want[i]));
        s = std::max(s, std::fabs(double(want[i])));
    }
    return d / s;
}

// The cuda backend in its bf16 mode (MAGNETS_CUDA_BF16=1 when it is made).
std::unique_ptr<Backend> bf16_gpu() {
    setenv("MAGNETS_CUDA_BF16", "1", 1);
    try {
        std::unique_ptr<Backend> be = make_backend("cuda");
        unsetenv("MAGNETS_CUDA_BF16");
        return be;
    } catch (...) {
        unsetenv("MAGNETS_CUDA_BF16");
        throw;
    }
}

// Device copy of a host array of any trivially copyable type.
struct Dev {
    Backend& be;
    float* p;
    size_t bytes;
    template <typename T>
    Dev(Backend& b, const std::vector<T>& h) : be(b), bytes(h.size() * sizeof(T)) {
        const size_t floats = (bytes + sizeof(float) - 1) / sizeof(float);
        p = be.alloc(floats);
        std::vector<float> tmp(floats, 0.0f);
        std::memcpy(tmp.data(), h.data(), bytes);
        be.upload(p, tmp.data(), floats);
    }
    ~Dev() { be.free(p); }
    Dev(const Dev&) = delete;
    Dev& operator=(const Dev&) = delete;
    template <typename T>
    T* as() { return reinterpret_cast<T*>(p); }
    std::vector<float> get(size_t n) {
        std::vector<float> h(n);
        be.download(h.data(), p, n);
        return h;
    }
};

} // namespace

TEST_CASE("cuda layer norm forward and backward match the CPU") {
    auto be = gpu();
    if (!be) return;
    const int64_t rows = 300, n = 200, ld = 203;
    auto x = rnd(size_t(rows * ld), 1), g = rnd(size_t(n), 2), b = rnd(size_t(n), 3), dy = rnd(size_t(rows * ld), 4),
         dx0 = rnd(size_t(rows * ld), 5);
    std::vector<float> y(size_t(rows * ld), 0), mean(static_cast<size_t>(rows)), rstd(static_cast<size_t>(rows)), dx = dx0, dg(size_t(n), 0.5f),
        db(size_t(n), -0.5f);
    nn::ops::layernorm_forward(x.data(), ld, y.data(), ld, mean.data(), rstd.data(), g.data(), b.data(), rows, n);
    nn::ops::layernorm_backward(x.data(), ld, dy.data(), ld, mean.data(), rstd.data(), g.data(), dx.data(), ld, dg.data(),
                                db.data(), rows, n, true);
    Dev X(*be, x), G(*be, g), B(*be, b), DY(*be, dy), Y(*be, std::vector<float>(y.size(), 0)), M(*be, mean), R(*be, rstd),
        DX(*be, dx0), DG(*be, std::vector<float>(size_t(n), 0.5f)), DB(*be, std::vector<float>(size_t(n), -0.5f));
    cuda::layernorm_forward(*be, X.p, ld, Y.p, ld, M.p, R.p, G.p, B.p, rows, n);
    cuda::layernorm_backward(*be, X.p, ld, DY.p, ld, M.p, R.p, G.p, DX.p, ld, DG.p, DB.p, rows, n, true);
    CHECK(nerr(Y.get(y.size()), y) < kTol);
    CHECK(nerr(M.get(mean.size()), mean) < kTol);
    CHECK(nerr(R.get(rstd.size()), rstd) < kTol);
    CHECK(nerr(DX.get(dx.size()), dx) < kTol);
    CHECK(nerr(DG.get(dg.size()), dg) < kTol);
    CHECK(nerr(DB.get(db.size()), db) < kTol);
}

TEST_CASE("cuda bias and GELU match the CPU") {
    auto be = gpu();
    if (!be) return;
    const int64_t rows = 513, n = 96, ld = 100;
    auto y = rnd(size_t(rows * ld), 6), b = rnd(size_t(n), 7), u = rnd(size_t(rows * n), 8, 4.0f),
         dg = rnd(size_t(rows * n), 9);
    std::vector<float> y_cpu = y, db(size_t(n), 1.0f), g(u.size()), du(u.size());
    nn::ops::add_bias(y_cpu.data(), ld, b.data(), rows, n);
    nn::ops::bias_backward(y.data(), ld, db.data(), rows, n);
    nn::ops::gelu_forward(u.data(), g.data(), rows * n);
    nn::ops::gelu_backward(u.data(), dg.data(), du.data(), rows * n);
    Dev Y(*be, y), Bd(*be, b), DB(*be, std::vector<float>(size_t(n), 1.0f)), U(*be, u), G(*be, g), DG(*be, dg),
        DU(*be, du);
    cuda::bias_backward(*be, Y.p, ld, DB.p, rows, n); // before add_bias changes Y
    cuda::add_bias(*be, Y.p, ld, Bd.p, rows, n);
    cuda::gelu_forward(*be, U.p, G.p, rows * n);
    cuda::gelu_backward(*be, U.p, DG.p, DU.p, rows * n);
    CHECK(nerr(Y.get(y.size()), y_cpu) < kTol);
    CHECK(nerr(DB.get(db.size()), db) < kTol);
    CHECK(nerr(G.get(g.size()), g) < kTol);
    CHECK(nerr(DU.get(du.size()), du) < kTol);
}

TEST_CASE("the training operations through the Backend interface: cuda against the CPU backend") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    // The fused host operations (bias + GELU, GELU backward + bias gradient)
    // are two kernels each on the GPU: same results to f32 round-off.
    const int64_t rows = 300, n = 64;
    auto u0 = rnd(size_t(rows * n), 41, 3.0f), b = rnd(size_t(n), 42), dg = rnd(size_t(rows * n), 43);
    std::vector<float> u = u0, g(u.size()), du(u.size()), db(size_t(n), 0.5f);
    cpu->bias_gelu_forward(u.data(), b.data(), g.data(), rows, n);
    cpu->gelu_bias_backward(u.data(), dg.data(), du.data(), db.data(), rows, n);
    Dev U(*be, u0), Bd(*be, b), G(*be, g), DG(*be, dg), DU(*be, du), DB(*be, std::vector<float>(size_t(n), 0.5f));
    be->bias_gelu_forward(U.p, Bd.p, G.p, rows, n);
    be->gelu_bias_backward(U.p, DG.p, DU.p, DB.p, rows, n);
    CHECK(nerr(U.get(u.size()), u) < kTol);
    CHECK(nerr(G.get(g.size()), g) < kTol);
    CHECK(nerr(DU.get(du.size()), du) < kTol);
    CHECK(nerr(DB.get(db.size()), db) < kTol);
    // the loss through the interface
    const int64_t K = 37;
    auto logits = rnd(size_t(rows * K), 44, 3.0f);
    std::vector<int32_t> targets(static_cast<size_t>(rows));
    std::vector<uint8_t> mask(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) {
        targets[size_t(i)] = static_cast<int32_t>((i * 7) % K);
        mask[size_t(i)] = i % 3 != 0;
    }
    std::vector<float> dl(logits.size());
    const Backend::LossSums c = cpu->masked_loss(logits.data(), K, nullptr, K, targets.data(), mask.data(), rows, K, 0.1,
                                                 1.0, 1.0, dl.data(), K);
    Dev L(*be, logits), T(*be, targets), Mk(*be, mask), DL(*be, dl);
    const Backend::LossSums gsum = be->masked_loss(L.p, K, nullptr, K, T.as<int32_t>(), Mk.as<uint8_t>(), rows, K, 0.1,
                                                   1.0, 1.0, DL.p, K);
    CHECK(gsum.masked == c.masked);
    CHECK(gsum.correct == c.correct);
    CHECK(std::fabs(gsum.loss - c.loss) < 1e-5 * std::fabs(c.loss));
    CHECK(nerr(DL.get(dl.size()), dl) < kTol);
}

TEST_CASE("cuda attention forward and backward match the CPU") {
    auto be = gpu();
    if (!be) return;
    for (auto [seq, hd] : {std::pair<int64_t, int64_t>{65, 16}, {17, 48}, {257, 64}}) {
        CAPTURE(seq);
        CAPTURE(hd);
        const int64_t batch = 3, heads = 2, ld = heads * hd + 5;
        const size_t n = size_t(batch * seq * ld), np = size_t(batch * heads * seq * seq);
        auto q = rnd(n, 11), k = rnd(n, 12), v = rnd(n, 13), dout = rnd(n, 14);
        std::vector<float> out(n, 0), probs(np), dq(n, 0), dk(n, 0), dv(n, 0);
        nn::ops::attention_forward(q.data(), k.data(), v.data(), ld, out.data(), probs.data(), batch, seq, heads, hd);
        nn::ops::attention_backward(q.data(), k.data(), v.data(), probs.data(), dout.data(), ld, dq.data(), dk.data(),
                                    dv.data(), batch, seq, heads, hd);
        Dev Q(*be, q), K(*be, k), V(*be, v), DO(*be, dout), O(*be, std::vector<float>(n, 0)), P(*be, probs),
            DQ(*be, std::vector<float>(n, 0)), DK(*be, std::vector<float>(n, 0)), DV(*be, std::vector<float>(n, 0));
        cuda::attention_forward(*be, Q.p, K.p, V.p, ld, O.p, P.p, batch, seq, heads, hd);
        cuda::attention_backward(*be, Q.p, K.p, V.p, P.p, DO.p, ld, DQ.p, DK.p, DV.p, batch, seq, heads, hd);
        CHECK(nerr(O.get(n), out) < kTol);
        CHECK(nerr(P.get(np), probs) < kTol);
        CHECK(nerr(DQ.get(n), dq) < kTol);
        CHECK(nerr(DK.get(n), dk) < kTol);
        CHECK(nerr(DV.get(n), dv) < kTol);
    }
}

TEST_CASE("cuda masked loss (label smoothing, distillation) matches the CPU") {
    auto be = gpu();
    if (!be) return;
    const int64_t rows = 200, K = 512, ld = 520;
    auto logits = rnd(size_t(rows * ld), 21, 3.0f), teacher = rnd(size_t(rows * ld), 22, 3.0f);
    std::vector<int32_t> targets(static_cast<size_t>(rows));
    std::vector<uint8_t> mask(static_cast<size_t>(rows));
    std::mt19937 gen(5);
    for (int64_t i = 0; i < rows; ++i) {
        targets[size_t(i)] = int32_t(gen() % K);
        mask[size_t(i)] = uint8_t(gen() % 3 != 0);
    }
    logits[size_t(7 * ld + 3)] = logits[size_t(7 * ld + 9)] = 50.0f; // a tie: the first maximum counts
    targets[7] = 3;
    mask[7] = 1;
    for (double alpha : {1.0, 0.3}) {
        CAPTURE(alpha);
        std::vector<float> d(size_t(rows * ld), 9.0f);
        const nn::ops::LossSums want = nn::ops::masked_loss(logits.data(), ld, teacher.data(), ld, targets.data(),
                                                            mask.data(), rows, K, 0.1, alpha, 0.7, d.data(), ld);
        Dev L(*be, logits), T(*be, teacher), Y(*be, targets), Mk(*be, mask), D(*be, std::vector<float>(d.size(), 9.0f));
        const cuda::LossSums got = cuda::masked_loss(*be, L.p, ld, T.p, ld, Y.as<int32_t>(), Mk.as<uint8_t>(), rows, K,
                                                     0.1, alpha, 0.7, D.p, ld);
        CHECK(got.masked == want.masked);
        CHECK(got.correct == want.correct);
        CHECK(std::fabs(got.loss - want.loss) < 1e-5 * std::fabs(want.loss));
        CHECK(std::fabs(got.ce - want.ce) < 1e-5 * std::fabs(want.ce));
        CHECK(nerr(D.get(d.size()), d) < kTol);
    }
}

TEST_CASE("cuda embeddings and AdamW match the CPU loops") {
    auto be = gpu();
    if (!be) return;
    const int64_t B = 9, S = 13, R = B * S, V = 40, D = 24, r = 12;
    std::vector<int32_t> ids(static_cast<size_t>(R));
    std::mt19937 gen(3);
    for (auto& i : ids) i = int32_t(gen() % V);
    auto tok = rnd(size_t(V * D), 31), pos = rnd(size_t(S * D), 32), dx = rnd(size_t(R * r), 33);
    std::vector<float> x(size_t(R * r)), tg(size_t(V * D), 0.25f), pg(size_t(S * D), -0.25f);
    for (int64_t i = 0; i < R; ++i)
        for (int64_t j = 0; j < r; ++j) {
            x[size_t(i * r + j)] = tok[size_t(ids[size_t(i)] * D + j)] + pos[size_t((i % S) * D + j)];
            tg[size_t(ids[size_t(i)] * D + j)] += dx[size_t(i * r + j)];
            pg[size_t((i % S) * D + j)] += dx[size_t(i * r + j)];
        }
    std::vector<int32_t> rows_by_id(static_cast<size_t>(R)), id_start(size_t(V + 1));
    cuda::embedding_index(ids.data(), R, V, rows_by_id.data(), id_start.data());
    Dev I(*be, ids), TK(*be, tok), PS(*be, pos), X(*be, std::vector<float>(x.size(), 0)), DX(*be, dx), RB(*be, rows_by_id),
        IS(*be, id_start), TG(*be, std::vector<float>(tg.size(), 0.25f)), PG(*be, std::vector<float>(pg.size(), -0.25f));
    cuda::embedding_forward(*be, I.as<int32_t>(), TK.p, PS.p, X.p, R, S, r, D);
    cuda::embedding_backward(*be, DX.p, RB.as<int32_t>(), IS.as<int32_t>(), TG.p, PG.p, R, S, V, r, D);
    CHECK(nerr(X.get(x.size()), x) == 0.0);
    CHECK(nerr(TG.get(tg.size()), tg) < kTol);
    CHECK(nerr(PG.get(pg.size()), pg) < kTol);

    // AdamW: the same update as nn::Adam::step for one parameter.
    const int64_t n = 1000;
    auto w = rnd(size_t(n), 41), g = rnd(size_t(n), 42), m = rnd(size_t(n), 43, 0.1f), v = rnd(size_t(n), 44, 0.1f);
    for (auto& e : v) e = std::fabs(e);
    double sq = 0;
    for (float e : g) sq += double(e) * e;
    Dev W(*be, w), Gd(*be, g), Md(*be, m), Vd(*be, v);
    CHECK(std::fabs(cuda::sum_squares(*be, Gd.p, n) - sq) < 1e-9 * sq);
    const float clip = 0.5f, b1 = 0.9f, b2 = 0.96f, step = 1e-3f, isb = 1.2f, eps = 1e-8f, wd = 1e-4f;
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[size_t(i)] * clip;
        m[size_t(i)] = b1 * m[size_t(i)] + (1.0f - b1) * gi;
        v[size_t(i)] = b2 * v[size_t(i)] + (1.0f - b2) * gi * gi;
        w[size_t(i)] -= wd * w[size_t(i)];
        w[size_t(i)] -= step * m[size_t(i)] / (std::sqrt(v[size_t(i)]) * isb + eps);
    }
    cuda::adamw_update(*be, W.p, Gd.p, Md.p, Vd.p, n, clip, b1, b2, step, isb, eps, wd);
    CHECK(nerr(W.get(static_cast<size_t>(n)), w) < 1e-6);
    CHECK(nerr(Md.get(static_cast<size_t>(n)), m) < 1e-6);
    CHECK(nerr(Vd.get(static_cast<size_t>(n)), v) < 1e-6);
}

// ---- the decoder's operations and the sampler on the GPU ------------------------------

TEST_CASE("cuda decoder operations match the CPU backend") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    for (auto [S, heads, hd, rq] : {std::array<int64_t, 4>{65, 8, 32, 65}, std::array<int64_t, 4>{65, 8, 32, 17},
                                    std::array<int64_t, 4>{257, 16, 48, 100}, std::array<int64_t, 4>{70, 2, 24, 30},
                                    std::array<int64_t, 4>{130, 4, 64, 130}, std::array<int64_t, 4>{33, 2, 16, 5}}) {
        CAPTURE(S);
        CAPTURE(rq);
        const int64_t seqs = 3, a = heads * hd, D = a + 16, r = a, R = seqs * rq, V = 40;
        // ids [seqs * S] in [0, V), pos: rq increasing positions per sequence, idx: 5 rows per sequence
        std::vector<int32_t> ids(static_cast<size_t>(seqs * S)), pos, idx;
        std::mt19937 gen(7);
        for (auto& v : ids) v = static_cast<int32_t>(gen() % V);
        for (int64_t b = 0; b < seqs; ++b) {
            for (int64_t i = 0; i < rq; ++i) pos.push_back(static_cast<int32_t>(rq == S ? i : (i * S) / rq));
            for (int64_t k = 0; k < 5; ++k) idx.push_back(static_cast<int32_t>((k * 7 + b) % rq));
            std::sort(idx.end() - 5, idx.end());
            idx.erase(std::unique(idx.end() - 5, idx.end()), idx.end());
            while (static_cast<int64_t>(idx.size()) < (b + 1) * 5) idx.push_back(static_cast<int32_t>(rq - 1)); // not reached for these shapes
        }
        auto tok = rnd(size_t(V * D), 11), pe = rnd(size_t(S * D), 12), g = rnd(size_t(r), 13), bb = rnd(size_t(r), 14);
        auto q = rnd(size_t(R * a), 15), kc = rnd(size_t(seqs * S * a), 16, 2.0f), vc = rnd(size_t(seqs * S * a), 17),
             y = rnd(size_t(R * r), 18);
        // CPU
        std::vector<float> x(size_t(R * r)), ln(size_t(R * r)), att(size_t(R * a)), sc = kc, gat(size_t(seqs * 5 * r));
        cpu->embed_rows(ids.data(), pos.data(), rq, S, tok.data(), pe.data(), D, x.data(), R, r);
        cpu->layernorm_rows(x.data(), ln.data(), g.data(), bb.data(), R, r);
        cpu->add_into(ln.data(), y.data(), R * r);
        cpu->scatter_rows(q.data(), pos.data(), rq, S, sc.data(), R, a);
        cpu->gather_rows(ln.data(), idx.data(), seqs, rq, 5, gat.data(), r);
        cpu->attention_rows(q.data(), kc.data(), vc.data(), att.data(), seqs, rq, S, heads, hd);
        // GPU
        Dev Ids(*be, ids), Pos(*be, pos), Idx(*be, idx), Tok(*be, tok), Pe(*be, pe), G(*be, g), Bb(*be, bb), Q(*be, q),
            Kc(*be, kc), Vc(*be, vc), Y(*be, y), X(*be, x), Ln(*be, ln), Att(*be, att), Gat(*be, gat);
        be->embed_rows(Ids.as<int32_t>(), Pos.as<int32_t>(), rq, S, Tok.p, Pe.p, D, X.p, R, r);
        CHECK(nerr(X.get(x.size()), x) == 0.0); // sums of two numbers: exact
        be->layernorm_rows(X.p, Ln.p, G.p, Bb.p, R, r);
        be->add_into(Ln.p, Y.p, R * r);
        CHECK(nerr(Ln.get(ln.size()), ln) < kTol);
        be->scatter_rows(Q.p, Pos.as<int32_t>(), rq, S, Kc.p, R, a);
        CHECK(nerr(Kc.get(sc.size()), sc) == 0.0);
        be->gather_rows(Ln.p, Idx.as<int32_t>(), seqs, rq, 5, Gat.p, r);
        CHECK(nerr(Gat.get(gat.size()), gat) < kTol);
        be->attention_rows(Q.p, Dev(*be, kc).p, Vc.p, Att.p, seqs, rq, S, heads, hd);
        CHECK(nerr(Att.get(att.size()), att) < kTol);
    }
}

TEST_CASE("cuda draw_rows matches the CPU's draw on the same logits") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    // Rows of 3 images, counters as the sampler makes them (step * N + j).
    for (auto [K, cfg, top_k] : {std::array<int64_t, 3>{64, 0, 0}, std::array<int64_t, 3>{1024, 1, 0},
                                 std::array<int64_t, 3>{1024, 1, 7}, std::array<int64_t, 3>{4099, 0, 1}}) {
        CAPTURE(K);
        CAPTURE(cfg);
        CAPTURE(top_k);
        const int64_t n = 300, images = 3;
        auto logits = rnd(static_cast<size_t>((cfg ? 2 : 1) * n * K), 21, 4.0f);
        std::vector<int32_t> rows(static_cast<size_t>(2 * n)), streams(static_cast<size_t>(4 * images));
        for (int64_t i = 0; i < n; ++i) {
            rows[static_cast<size_t>(2 * i)] = static_cast<int32_t>(i * images / n);
            rows[static_cast<size_t>(2 * i + 1)] = static_cast<int32_t>(5 * 256 + i % 100);
        }
        std::mt19937 gen(3);
        for (auto& w : streams) w = static_cast<int32_t>(gen());
        Backend::DrawSpec d;
        d.K = K; d.cfg = cfg != 0; d.guidance = 1.75; d.tau = 0.9; d.choice = 2.5; d.top_k = top_k; d.seed = 77;
        std::vector<int32_t> tok(static_cast<size_t>(n));
        std::vector<float> conf(static_cast<size_t>(n));
        cpu->draw_rows(logits.data(), n, d, rows.data(), streams.data(), tok.data(), conf.data());
        Dev L(*be, logits), Rw(*be, rows), St(*be, streams), Tk(*be, tok), Cf(*be, conf);
        be->draw_rows(L.p, n, d, Rw.as<int32_t>(), St.as<int32_t>(), Tk.as<int32_t>(), Cf.p);
        std::vector<float> tk_f = Tk.get(tok.size()), cf = Cf.get(conf.size());
        int64_t same = 0;
        double conf_err = 0;
        for (int64_t i = 0; i < n; ++i) {
            int32_t t;
            std::memcpy(&t, &tk_f[static_cast<size_t>(i)], sizeof t);
            CHECK(t >= 0);
            CHECK(t < K);
            if (t == tok[static_cast<size_t>(i)]) {
                ++same;
                conf_err = std::max(conf_err, std::fabs(double(cf[static_cast<size_t>(i)]) - conf[static_cast<size_t>(i)]));
            }
        }
        // The same random numbers and exp: a draw differs only when its uniform
        // falls within round-off of a cut point (the double sums add in another
        // order), which for 300 rows should not happen at all.
        MESSAGE("draw_rows K=" << K << ": " << same << " of " << n << " codes equal; max confidence error " << conf_err);
        CHECK(same >= n - 1);
        CHECK(conf_err < 1e-4);
    }
}

TEST_CASE("cuda sampler_rows and reveal_top match the CPU (ties ranked by position)") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    const int64_t nb = 5, branches = 2, seqs = nb * branches, N = 300, S = N + 1, ro = 120, reveal = 37;
    // every image: 120 masked, 40 fresh, the rest revealed earlier
    std::vector<int32_t> masked(static_cast<size_t>(nb * N), 0), fresh(static_cast<size_t>(nb * N), 0);
    std::mt19937 gen(5);
    for (int64_t img = 0; img < nb; ++img) {
        std::vector<int64_t> perm(static_cast<size_t>(N));
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), gen);
        for (int64_t k = 0; k < ro; ++k) masked[static_cast<size_t>(img * N + perm[static_cast<size_t>(k)])] = 1;
        for (int64_t k = ro; k < ro + 40; ++k) fresh[static_cast<size_t>(img * N + perm[static_cast<size_t>(k)])] = 1;
    }
    for (bool refresh : {false, true}) {
        CAPTURE(refresh);
        const int64_t rq = refresh ? S : ro + 40;
        std::vector<int32_t> pos(static_cast<size_t>(seqs * rq)), out(static_cast<size_t>(seqs * ro)),
            meta(static_cast<size_t>(2 * nb * ro)), rpos(static_cast<size_t>(nb * ro));
        cpu->sampler_rows(masked.data(), fresh.data(), nb, seqs, N, refresh, rq, ro, 7, pos.data(), out.data(),
                          meta.data(), rpos.data());
        Dev M(*be, masked), F(*be, fresh), Po(*be, pos), O(*be, out), Me(*be, meta), Rp(*be, rpos);
        be->sampler_rows(M.as<int32_t>(), F.as<int32_t>(), nb, seqs, N, refresh, rq, ro, 7, Po.as<int32_t>(),
                         O.as<int32_t>(), Me.as<int32_t>(), Rp.as<int32_t>());
        auto ints = [](const std::vector<float>& f) {
            std::vector<int32_t> v(f.size());
            std::memcpy(v.data(), f.data(), f.size() * sizeof(float));
            return v;
        };
        CHECK(ints(Po.get(pos.size())) == pos);
        CHECK(ints(O.get(out.size())) == out);
        CHECK(ints(Me.get(meta.size())) == meta);
        CHECK(ints(Rp.get(rpos.size())) == rpos);
        if (refresh) continue;
        // reveal: confidences with many ties (rounded to 0.5)
        std::vector<int32_t> tok(static_cast<size_t>(nb * ro)), ids(static_cast<size_t>(seqs * S), 3),
            tokens(static_cast<size_t>(nb * N), 99);
        std::vector<float> conf(static_cast<size_t>(nb * ro)), conf_all(static_cast<size_t>(nb * N));
        for (size_t i = 0; i < tok.size(); ++i) {
            tok[i] = static_cast<int32_t>(gen() % 64);
            conf[i] = std::round(static_cast<float>(gen() % 1000) / 100.0f) * 0.5f - 2.0f;
        }
        auto mk = masked, fr = fresh;
        cpu->reveal_top(tok.data(), conf.data(), rpos.data(), nb, ro, reveal, N, S, branches, mk.data(), fr.data(),
                        tokens.data(), ids.data(), conf_all.data());
        Dev Tk(*be, tok), Cf(*be, conf), M2(*be, masked), F2(*be, fresh), Ts(*be, std::vector<int32_t>(tokens.size(), 99)),
            Id(*be, std::vector<int32_t>(ids.size(), 3)), Ca(*be, conf_all);
        be->reveal_top(Tk.as<int32_t>(), Cf.p, Rp.as<int32_t>(), nb, ro, reveal, N, S, branches, M2.as<int32_t>(),
                       F2.as<int32_t>(), Ts.as<int32_t>(), Id.as<int32_t>(), Ca.p);
        CHECK(ints(M2.get(mk.size())) == mk);
        CHECK(ints(F2.get(fr.size())) == fr);
        CHECK(ints(Ts.get(tokens.size())) == tokens);
        CHECK(ints(Id.get(ids.size())) == ids);
        const std::vector<float> ca = Ca.get(conf_all.size());
        for (size_t i = 0; i < ca.size(); ++i) {
            CHECK(std::isnan(ca[i]) == std::isnan(conf_all[i]));
            if (!std::isnan(conf_all[i])) CHECK(ca[i] == conf_all[i]);
        }
    }
}

namespace {
Transformer sampler_model(const std::string& backend) {
    TransformerConfig c;
    c.codebook_size = 64; c.num_classes = 4; c.grid_h = 6; c.grid_w = 6;
    c.width = 64; c.heads = 4; c.layers = 3; c.factors = {4, 2, 1};
    Transformer m(c, make_backend(backend));
    m.init(5);
    std::mt19937 gen(9);
    std::normal_distribution<float> nd(0.0f, 0.25f);
    for (const std::string& n : m.param_names()) {
        Tensor& t = m.param(n);
        if (t.rank() == 2)
            for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = nd(gen);
    }
    return m;
}
} // namespace

TEST_CASE("the sampler on the GPU: same seed, same tokens at any batch size; agreement with the CPU") {
    auto probe = gpu();
    if (!probe) return;
    probe.reset();
    Transformer mg = sampler_model("cuda"), mc = sampler_model("ref");
    const int64_t n = 24;
    std::vector<int32_t> cls(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) cls[static_cast<size_t>(i)] = static_cast<int32_t>(i % 5) - 1;
    SampleConfig sc;
    sc.schedule = parse_size_schedule("4:2,2:2,1:2");
    sc.cfg_scale = 2.0;
    sc.seed = 31;
    const SampleResult g24 = sample(mg, sc, cls.data(), n, 0, 24);
    const SampleResult g1 = sample(mg, sc, cls.data(), n, 0, 1);
    const SampleResult g7 = sample(mg, sc, cls.data(), n, 0, 7);
    CHECK(g24.tokens == g1.tokens);
    CHECK(g24.tokens == g7.tokens);
    for (uint16_t t : g24.tokens) CHECK(t < 64);
    const SampleResult c24 = sample(mc, sc, cls.data(), n, 0, 24);
    int64_t same = 0;
    for (size_t i = 0; i < c24.tokens.size(); ++i) same += c24.tokens[i] == g24.tokens[i];
    const double agree = static_cast<double>(same) / static_cast<double>(c24.tokens.size());
    MESSAGE("GPU and CPU tokens agree at " << agree * 100 << "% of " << c24.tokens.size() << " positions (same seed)");
    CHECK(agree > 0.5);
    // the cached sampler on the GPU still equals no cache with a refresh every step
    SampleConfig every = sc, none = sc;
    every.cache = parse_cache_policy("every:1");
    none.cache = parse_cache_policy("none");
    CHECK(sample(mg, every, cls.data(), n, 0, 24).tokens == sample(mg, none, cls.data(), n, 0, 24).tokens);
}

TEST_CASE("cuda bf16 products (MAGNETS_CUDA_BF16=1) match the CPU to bf16 precision") {
    if (!gpu()) return;
    std::unique_ptr<Backend> be = bf16_gpu();
    auto cpu = make_backend("ref");
    // Tolerance: bf16 keeps 8 significant bits, so each product carries a
    // relative error up to about 2^-8; over K = 200 random-signed terms the
    // normalised error stays near 1e-3. 1e-2 leaves room and still fails for a
    // wrong layout or a missing bias.
    const int64_t M = 300, K = 200, N = 96, lda = 210, ldw = 208;
    auto a = rnd(size_t(M * lda), 21), w = rnd(size_t(N * ldw), 22), bias = rnd(size_t(N), 23);
    for (bool gelu : {false, true}) {
        std::vector<float> c(size_t(M * N));
        cpu->matmul_rowstable(ConstMat(a.data(), M, K, lda), ConstMat(w.data(), N, K, ldw), bias.data(),
                              Mat{c.data(), M, N, N}, gelu ? Backend::Act::gelu : Backend::Act::none);
        Dev A(*be, a), W(*be, w), Bi(*be, bias), C(*be, std::vector<float>(c.size(), 0.0f));
        be->matmul_rowstable(ConstMat(A.p, M, K, lda), ConstMat(W.p, N, K, ldw), Bi.p, Mat{C.p, M, N, N},
                             gelu ? Backend::Act::gelu : Backend::Act::none);
        const double e = nerr(C.get(c.size()), c);
        CAPTURE(gelu);
        MESSAGE("bf16 product, normalised error " << e);
        CHECK(e < 1e-2);
    }
    // matmul (training's products): every transpose combination, prefix
    // slices (leading dimensions wider than the columns), alpha and beta.
    for (bool ta : {false, true})
        for (bool tb : {false, true}) {
            CAPTURE(ta);
            CAPTURE(tb);
            const int64_t m = 70, n = 40, k = 130;
            const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
            const int64_t lda = ac + 5, ldb = bc + 3, ldc = n + 2;
            auto A = rnd(size_t(ar * lda), 51), Bm = rnd(size_t(br * ldb), 52), C0 = rnd(size_t(m * ldc), 53);
            std::vector<float> c = C0;
            cpu->matmul(ConstMat(A.data(), ar, ac, lda), ta, ConstMat(Bm.data(), br, bc, ldb), tb,
                        Mat{c.data(), m, n, ldc}, 0.75f, 0.5f);
            Dev DA(*be, A), DB(*be, Bm), DC(*be, C0);
            be->matmul(ConstMat(DA.p, ar, ac, lda), ta, ConstMat(DB.p, br, bc, ldb), tb, Mat{DC.p, m, n, ldc}, 0.75f,
                       0.5f);
            const double e = nerr(DC.get(c.size()), c);
            MESSAGE("bf16 matmul (trans " << ta << tb << "), normalised error " << e);
            CHECK(e < 1e-2);
        }
}

TEST_CASE("cuda bf16 attention (MAGNETS_CUDA_BF16=1, tensor cores) matches the CPU to bf16 precision") {
    if (!gpu()) return;
    std::unique_ptr<Backend> be = bf16_gpu();
    auto cpu = make_backend("ref");
    // Tolerance: q, k, v and the probabilities are rounded to bf16 (relative
    // 2^-9 each); scores of size up to ~hd/4 with errors of a few 1e-3 move
    // the softmax weights by under 1%, and the output is an average of
    // bf16 values: normalised error near 5e-3; 2e-2 still fails for a wrong
    // layout, a lost tile or a bad rescale (errors of order 1).
    // Shapes: the sampler's (S = 65, 257), a partial query tile (rq = 17,
    // 100), every supported head width, S not a multiple of the key tile.
    for (auto [S, heads, hd, rq] : {std::array<int64_t, 4>{65, 8, 32, 65}, std::array<int64_t, 4>{65, 4, 16, 17},
                                    std::array<int64_t, 4>{257, 16, 48, 257}, std::array<int64_t, 4>{257, 4, 64, 100},
                                    std::array<int64_t, 4>{130, 2, 128, 130}}) {
        CAPTURE(S);
        CAPTURE(hd);
        CAPTURE(rq);
        const int64_t seqs = 3, a = heads * hd, R = seqs * rq;
        auto q = rnd(size_t(R * a), 31), kc = rnd(size_t(seqs * S * a), 32, 2.0f), vc = rnd(size_t(seqs * S * a), 33);
        std::vector<float> att(size_t(R * a));
        cpu->attention_rows(q.data(), kc.data(), vc.data(), att.data(), seqs, rq, S, heads, hd);
        Dev Q(*be, q), Kc(*be, kc), Vc(*be, vc), Att(*be, std::vector<float>(att.size(), NAN));
        be->attention_rows(Q.p, Kc.p, Vc.p, Att.p, seqs, rq, S, heads, hd);
        const double e = nerr(Att.get(att.size()), att);
        MESSAGE("bf16 attention S=" << S << " hd=" << hd << " rq=" << rq << ": normalised error " << e);
        CHECK(e < 2e-2);
    }
}

TEST_CASE("training on the GPU: joint forward/backward and AdamW steps match the CPU backend") {
    if (!gpu()) return;
    // A tiny nested model (width nesting, factors 4, 2, 1) trained three
    // joint steps (progressive distillation, so the teacher path runs too) on
    // the same random batch, from the same weights, on cuda and on ref.
    // Tolerance: f32 with other summation orders: losses 1e-5 relative,
    // gradients and weights 1e-4 normalised (the fixture test's bounds
    // against PyTorch).
    TransformerConfig c;
    c.codebook_size = 48; c.num_classes = 5; c.grid_h = 4; c.grid_w = 4;
    c.width = 64; c.heads = 4; c.layers = 2; c.factors = {4, 2, 1};
    Transformer mg(c, make_backend("cuda")), mc(c, make_backend("ref"));
    mg.init(3);
    mc.init(3);
    const int64_t B = 6, N = c.tokens(), S = c.seq();
    std::mt19937 gen(17);
    std::vector<int32_t> ids(static_cast<size_t>(B * S)), targets(static_cast<size_t>(B * N));
    std::vector<uint8_t> mask(static_cast<size_t>(B * N));
    for (int64_t b = 0; b < B; ++b) {
        ids[static_cast<size_t>(b * S)] = static_cast<int32_t>(b % 2 ? c.null_id() : c.class_id(b % c.num_classes));
        for (int64_t j = 0; j < N; ++j) {
            const int32_t y = static_cast<int32_t>(gen() % c.codebook_size);
            const bool m = gen() % 3 != 0;
            targets[static_cast<size_t>(b * N + j)] = y;
            mask[static_cast<size_t>(b * N + j)] = m;
            ids[static_cast<size_t>(b * S + 1 + j)] = m ? static_cast<int32_t>(c.mask_id()) : y;
        }
    }
    Transformer::Impl &ig = mg.impl(), &ic = mc.impl();
    nn::AdamConfig ac;
    ac.beta1 = 0.9; ac.beta2 = 0.96; ac.weight_decay = 0.05; ac.clip_norm = 1.0;
    ig.params_to_device();
    nn::Adam ag(ac, *ig.be), acpu(ac, *ic.be);
    for (const std::string& n : mg.param_names()) {
        ag.add(n, ig.params[n].W(), ig.params[n].G(), ig.params[n].w.shape(), ig.params[n].decay);
        acpu.add(n, ic.params[n].W(), ic.params[n].G(), ic.params[n].w.shape(), ic.params[n].decay);
    }
    for (int step = 1; step <= 3; ++step) {
        CAPTURE(step);
        double tg = 0, tc = 0;
        const auto sg = ig.joint_forward_backward(ids.data(), targets.data(), mask.data(), B, Objective::progressive,
                                                  0.5, {}, 0.1, &tg);
        const auto sc = ic.joint_forward_backward(ids.data(), targets.data(), mask.data(), B, Objective::progressive,
                                                  0.5, {}, 0.1, &tc);
        CHECK(std::fabs(tg - tc) < 1e-5 * std::fabs(tc));
        for (size_t k = 0; k < sc.size(); ++k) {
            CHECK(sg[k].masked == sc[k].masked);
            CHECK(std::fabs(sg[k].loss - sc[k].loss) < 1e-5 * std::fabs(sc[k].loss));
        }
        for (const std::string& n : mg.param_names()) {
            CAPTURE(n);
            const Tensor& gg = mg.grad(n);
            const Tensor& gc = mc.grad(n);
            CHECK(nerr(std::vector<float>(gg.data(), gg.data() + gg.numel()),
                       std::vector<float>(gc.data(), gc.data() + gc.numel())) < 1e-4);
        }
        const double ng = ag.grad_norm(), nc = acpu.grad_norm();
        CHECK(std::fabs(ng - nc) < 1e-4 * nc);
        ag.step(1e-2, ng);
        acpu.step(1e-2, nc);
    }
    // The key bias gets no gradient (softmax ignores a shift shared by a
    // row's scores): its stored gradient is round-off, which Adam turns into
    // steps of up to lr in either direction, so it is left out here (the
    // PyTorch fixture test allows it 3 lr).
    double worst = 0;
    for (const std::string& n : mg.param_names()) {
        if (n.find("attn.k.bias") != std::string::npos) continue;
        const Tensor& wg = mg.param(n); // downloads the device's weights
        const Tensor& wc = mc.param(n);
        worst = std::max(worst, nerr(std::vector<float>(wg.data(), wg.data() + wg.numel()),
                                     std::vector<float>(wc.data(), wc.data() + wc.numel())));
    }
    MESSAGE("after 3 AdamW steps on the GPU: weights within " << worst << " (normalised) of the CPU's");
    CHECK(worst < 1e-4);
}

// ---- the image networks' operations (the tokenizer on the GPU) ------------------------

namespace {
// Bit-for-bit equality (NaN and the sign of zero included).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
// Max error normalised by the largest reference value (no floor at 1, as
// nerr has: the loss gradients are of order 1 / n).
double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
    double d = 0, s = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        d = std::max(d, std::fabs(double(got[i]) - want[i]));
        s = std::max(s, std::fabs(double(want[i])));
    }
    return s > 0 ? d / s : d;
}
std::vector<int32_t> as_ints(const std::vector<float>& f) {
    std::vector<int32_t> v(f.size());
    std::memcpy(v.data(), f.data(), f.size() * sizeof(float));
    return v;
}
} // namespace

TEST_CASE("cuda image data movement (relu, upsample, pixel shuffles, transpose) gives the CPU's bits") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    // relu and its backward: zeros of both signs, a NaN, in place as the tokenizer calls them
    {
        const int64_t n = 100003;
        auto x = rnd(size_t(n), 61), dy = rnd(size_t(n), 62);
        x[0] = 0.0f;
        x[1] = -0.0f;
        x[2] = NAN;
        std::vector<float> y(x.size()), dx = dy;
        cpu->relu(x.data(), y.data(), n);
        cpu->relu_backward(y.data(), dx.data(), dx.data(), n);
        Dev X(*be, x), Y(*be, std::vector<float>(x.size(), 7.0f)), DX(*be, dy);
        be->relu(X.p, Y.p, n);
        be->relu_backward(Y.p, DX.p, DX.p, n);
        CHECK(same_bits(Y.get(y.size()), y));
        CHECK(same_bits(DX.get(dx.size()), dx));
        std::vector<float> xi = x;
        cpu->relu(xi.data(), xi.data(), n);
        be->relu(X.p, X.p, n); // y aliasing x
        CHECK(same_bits(X.get(xi.size()), xi));
    }
    for (auto [nb, c, h, w] : {std::array<int64_t, 4>{1, 3, 5, 7}, std::array<int64_t, 4>{2, 3, 5, 7},
                               std::array<int64_t, 4>{4, 16, 16, 16}, std::array<int64_t, 4>{2, 64, 1, 33}}) {
        CAPTURE(nb);
        CAPTURE(c);
        CAPTURE(h);
        CAPTURE(w);
        const int64_t planes = nb * c, small = planes * h * w, big = 4 * small;
        auto x = rnd(size_t(small), 63), dyb = rnd(size_t(big), 64), xb = rnd(size_t(big), 65);
        // upsample2 [planes, h, w] -> [planes, 2h, 2w] and its backward (a + b) + (c + d)
        std::vector<float> up(static_cast<size_t>(big)), down(static_cast<size_t>(small));
        cpu->upsample2(x.data(), up.data(), planes, h, w);
        cpu->upsample2_backward(dyb.data(), down.data(), planes, h, w);
        // pixel_unshuffle2 [nb, c, 2h, 2w] -> [nb, 4c, h, w], pixel_shuffle2 back
        std::vector<float> un(static_cast<size_t>(big)), sh(static_cast<size_t>(big));
        cpu->pixel_unshuffle2(xb.data(), un.data(), nb, c, h, w);
        cpu->pixel_shuffle2(xb.data(), sh.data(), nb, c, h, w);
        Dev X(*be, x), DYB(*be, dyb), XB(*be, xb), Up(*be, std::vector<float>(up.size(), 7.0f)),
            Down(*be, std::vector<float>(down.size(), 7.0f)), Un(*be, std::vector<float>(un.size(), 7.0f)),
            Sh(*be, std::vector<float>(sh.size(), 7.0f)), Back(*be, std::vector<float>(xb.size(), 7.0f));
        be->upsample2(X.p, Up.p, planes, h, w);
        be->upsample2_backward(DYB.p, Down.p, planes, h, w);
        be->pixel_unshuffle2(XB.p, Un.p, nb, c, h, w);
        be->pixel_shuffle2(XB.p, Sh.p, nb, c, h, w);
        be->pixel_shuffle2(Un.p, Back.p, nb, c, h, w);
        CHECK(same_bits(Up.get(up.size()), up));
        CHECK(same_bits(Down.get(down.size()), down));
        CHECK(same_bits(Un.get(un.size()), un));
        CHECK(same_bits(Sh.get(sh.size()), sh));
        CHECK(same_bits(Back.get(xb.size()), xb)); // shuffle inverts unshuffle
    }
    // transpose_batched: NCHW to rows of channels and back; sizes not multiples of the 32 x 32 tile
    for (auto [b, rows, cols] : {std::array<int64_t, 3>{3, 37, 35}, std::array<int64_t, 3>{2, 64, 256},
                                 std::array<int64_t, 3>{5, 1, 7}, std::array<int64_t, 3>{1, 300, 3}}) {
        CAPTURE(b);
        CAPTURE(rows);
        CAPTURE(cols);
        const size_t n = size_t(b * rows * cols);
        auto src = rnd(n, 66);
        std::vector<float> t(n), back(n);
        cpu->transpose_batched(src.data(), t.data(), b, rows, cols);
        cpu->transpose_batched(t.data(), back.data(), b, cols, rows);
        CHECK(same_bits(back, src));
        Dev S(*be, src), T(*be, std::vector<float>(n, 7.0f)), Bk(*be, std::vector<float>(n, 7.0f));
        be->transpose_batched(S.p, T.p, b, rows, cols);
        be->transpose_batched(T.p, Bk.p, b, cols, rows);
        CHECK(same_bits(T.get(n), t));
        CHECK(same_bits(Bk.get(n), src));
    }
}

TEST_CASE("cuda nearest_codes matches the CPU (ties to the lowest code)") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    // m = 1003 rows: not a multiple of the argmin kernel's 8 rows per block.
    for (auto [m, K, c] : {std::array<int64_t, 3>{1003, 512, 32}, std::array<int64_t, 3>{1003, 37, 7},
                           std::array<int64_t, 3>{5, 1024, 64}}) {
        CAPTURE(m);
        CAPTURE(K);
        CAPTURE(c);
        auto z = rnd(size_t(m * c), 71), cb = rnd(size_t(K * c), 72);
        // Ties: codes 3 and K - 2 are the same, smallest-norm vector, and rows
        // 0 and m - 1 of z are zero, so their distances are exactly |e|^2 on
        // both sides (a product of zeros is exact): both must choose code 3.
        for (int64_t q = 0; q < c; ++q) {
            cb[size_t(3 * c + q)] = cb[size_t((K - 2) * c + q)] = 1e-3f * float(q % 3);
            z[size_t(q)] = z[size_t((m - 1) * c + q)] = 0.0f;
        }
        std::vector<float> dist(size_t(m * K));
        std::vector<int32_t> idx(size_t(m), -1);
        cpu->nearest_codes(z.data(), m, cb.data(), K, c, dist.data(), idx.data());
        // The CPU's distances (its product and norms), for the tolerance below.
        std::vector<float> prod(size_t(m * K)), enorm(static_cast<size_t>(K));
        cpu->matmul(ConstMat(z.data(), m, c, c), false, ConstMat(cb.data(), K, c, c), true,
                    Mat{prod.data(), m, K, K}, -2.0f, 0.0f);
        for (int64_t j = 0; j < K; ++j) {
            double s = 0;
            for (int64_t q = 0; q < c; ++q) s += double(cb[size_t(j * c + q)]) * cb[size_t(j * c + q)];
            enorm[size_t(j)] = float(s);
        }
        Dev Z(*be, z), CB(*be, cb), D(*be, std::vector<float>(dist.size(), 0.0f)),
            I(*be, std::vector<int32_t>(size_t(m), -1));
        be->nearest_codes(Z.p, m, CB.p, K, c, D.p, I.as<int32_t>());
        const std::vector<int32_t> got = as_ints(I.get(size_t(m)));
        CHECK(got[0] == 3);
        CHECK(got[size_t(m - 1)] == 3);
        CHECK(idx[0] == 3);
        // Tolerance: the GPU's -2 z e^T is cuBLAS's sum, in another order than
        // the CPU's, so each distance differs by f32 round-off: a few ulps of
        // |z|^2 + |e|^2 (the size of the terms), ~1e-7 relative for c <= 64.
        // A code may differ only where the CPU's distance to the GPU's code is
        // within 1e-5 of that scale of the CPU's best (the two best are that
        // close); random data gives none or almost none of these.
        int64_t differ = 0;
        for (int64_t i = 0; i < m; ++i) {
            const int32_t g = got[size_t(i)], w = idx[size_t(i)];
            REQUIRE(g >= 0);
            REQUIRE(g < K);
            if (g == w) continue;
            ++differ;
            double zn = 0;
            for (int64_t q = 0; q < c; ++q) zn += double(z[size_t(i * c + q)]) * z[size_t(i * c + q)];
            const double vg = double(prod[size_t(i * K + g)]) + enorm[size_t(g)];
            const double vw = double(prod[size_t(i * K + w)]) + enorm[size_t(w)];
            CAPTURE(i);
            CHECK(std::fabs(vg - vw) <= 1e-5 * (zn + enorm[size_t(w)]));
        }
        MESSAGE("nearest_codes m=" << m << " K=" << K << ": " << differ << " codes differ from the CPU's (near ties)");
        CHECK(differ <= std::max<int64_t>(2, m / 100));
    }
}

TEST_CASE("cuda recon_loss and commit_backward match the CPU") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    // Tolerance: the sums are of doubles (each term (p - t)^2 or |p - t| of
    // floats is exact in double), added in another order (block trees against
    // the CPU's loop), so the loss and PSNR differ by double round-off,
    // ~1e-15 relative: 1e-6 is far above that and far below any real error
    // (one wrong element of ~1e4 moves the mean by ~1e-4). The gradients are
    // the same float expressions per element (g e, +-g, dzq + g e without
    // FMA), so the bits should be the same; 1e-6 of the largest gradient
    // (rel_err) leaves room for a compiler that fuses the CPU's dzq + g e.
    // Shapes: 3 x 5 x 7 images (one partial chunk each) and 3 x 64 x 64 (three
    // chunks of 4096, the last partial).
    for (auto [images, per] : {std::array<int64_t, 2>{2, 3 * 5 * 7}, std::array<int64_t, 2>{5, 3 * 64 * 64}}) {
        const int64_t n = images * per;
        auto pred = rnd(size_t(n), 81, 0.7f), target = rnd(size_t(n), 82, 0.5f);
        for (size_t i = 0; i < pred.size(); ++i) {
            target[i] += 0.5f; // targets in [0, 1]; predictions in [-0.2, 1.2]: the clamp matters
            pred[i] += 0.5f;
            if (i % 17 == 0) pred[i] = target[i]; // e = 0: the L1 subgradient 0
        }
        for (bool l1 : {false, true}) {
            CAPTURE(images);
            CAPTURE(per);
            CAPTURE(l1);
            const double scale = 0.7;
            std::vector<float> d(size_t(n), 9.0f);
            const Backend::ReconSums want = cpu->recon_loss(pred.data(), target.data(), images, per, l1, scale, d.data());
            Dev P(*be, pred), T(*be, target), D(*be, std::vector<float>(size_t(n), 9.0f));
            const Backend::ReconSums got = be->recon_loss(P.p, T.p, images, per, l1, scale, D.p);
            CHECK(std::fabs(got.loss - want.loss) <= 1e-6 * std::fabs(want.loss));
            CHECK(std::fabs(got.psnr - want.psnr) <= 1e-6 * std::fabs(want.psnr));
            CHECK(rel_err(D.get(d.size()), d) <= 1e-6);
            // without a gradient
            const Backend::ReconSums nog = be->recon_loss(P.p, T.p, images, per, l1, scale, nullptr);
            CHECK(nog.loss == got.loss); // the same fixed-order sums
            CHECK(nog.psnr == got.psnr);
        }
    }
    for (int64_t n : {int64_t(3 * 32 * 5 * 7), int64_t(1000003)}) {
        CAPTURE(n);
        const float g = static_cast<float>(2.0 * 0.25 / static_cast<double>(n));
        // dzq of the size of g e, so both terms of dze count
        auto ze = rnd(size_t(n), 91), zq = rnd(size_t(n), 92), dzq = rnd(size_t(n), 93, g);
        std::vector<float> dze(size_t(n), 9.0f);
        const double want = cpu->commit_backward(ze.data(), zq.data(), dzq.data(), dze.data(), n, g);
        Dev ZE(*be, ze), ZQ(*be, zq), DZQ(*be, dzq), DZE(*be, std::vector<float>(size_t(n), 9.0f));
        const double got = be->commit_backward(ZE.p, ZQ.p, DZQ.p, DZE.p, n, g);
        CHECK(std::fabs(got - want) <= 1e-6 * std::fabs(want));
        CHECK(rel_err(DZE.get(dze.size()), dze) <= 1e-6);
        // dze aliasing dzq, as the tokenizer may call it
        const double again = be->commit_backward(ZE.p, ZQ.p, DZQ.p, DZQ.p, n, g);
        CHECK(again == got);
        CHECK(rel_err(DZQ.get(dze.size()), dze) <= 1e-6);
    }
}

// ---- the evaluation networks' operations (Inception, the classifier on the GPU) ----------

TEST_CASE("cuda zero_pad, max_pool3, avg_pool3 give the CPU's bits") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    // Odd sizes (3 planes of 5 x 7) and Inception's (2 images x 64 planes of 35 x 35).
    for (auto [planes, h, w] : {std::array<int64_t, 3>{3, 5, 7}, std::array<int64_t, 3>{2 * 64, 35, 35}}) {
        CAPTURE(planes);
        CAPTURE(h);
        CAPTURE(w);
        const size_t n = size_t(planes * h * w);
        auto x = rnd(n, 101);
        // Zeros of both signs and a NaN: the max keeps the first of +0 and -0
        // and never takes a NaN (std::max(m, v) = m < v ? v : m), on both sides.
        x[0] = 0.0f;
        x[1] = -0.0f;
        x[size_t(w)] = -0.0f;
        x[size_t(w) + 1] = 0.0f;
        x[size_t(2 * w + 2)] = NAN;
        Dev X(*be, x);
        for (auto [ph, pw] : {std::array<int64_t, 2>{0, 3}, std::array<int64_t, 2>{3, 0}, std::array<int64_t, 2>{1, 1}}) {
            CAPTURE(ph);
            CAPTURE(pw);
            const size_t m = size_t(planes * (h + 2 * ph) * (w + 2 * pw));
            std::vector<float> y(m, 7.0f);
            cpu->zero_pad(x.data(), y.data(), planes, h, w, ph, pw);
            Dev Y(*be, std::vector<float>(m, 7.0f)); // the border must be written
            be->zero_pad(X.p, Y.p, planes, h, w, ph, pw);
            CHECK(same_bits(Y.get(m), y));
        }
        for (auto [s, p] : {std::array<int64_t, 2>{2, 0}, std::array<int64_t, 2>{1, 1}}) {
            CAPTURE(s);
            CAPTURE(p);
            const int64_t oh = (h + 2 * p - 3) / s + 1, ow = (w + 2 * p - 3) / s + 1;
            const size_t m = size_t(planes * oh * ow);
            std::vector<float> y(m, 7.0f);
            cpu->max_pool3(x.data(), y.data(), planes, h, w, s, p);
            Dev Y(*be, std::vector<float>(m, 7.0f));
            be->max_pool3(X.p, Y.p, planes, h, w, s, p);
            CHECK(same_bits(Y.get(m), y));
        }
        {
            // avg_pool3: float sums of 4, 6 or 9 values (corners, edges, inside)
            // in the CPU's order, then the division: the same bits.
            auto xa = rnd(n, 102);
            std::vector<float> y(n, 7.0f);
            cpu->avg_pool3(xa.data(), y.data(), planes, h, w);
            Dev XA(*be, xa), Y(*be, std::vector<float>(n, 7.0f));
            be->avg_pool3(XA.p, Y.p, planes, h, w);
            CHECK(same_bits(Y.get(n), y));
        }
    }
}

TEST_CASE("cuda mean_planes matches the CPU, copy2d gives its bits") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    // mean_planes: odd (3 planes of 5 x 7), Inception-like (2 x 64 planes of
    // 35 x 35) and its final pool (2 x 2048 planes of 8 x 8). Tolerance: both
    // sides sum the floats in double (each term exact), the GPU in a block
    // tree, the CPU in order, so the two sums differ by double round-off,
    // below plane * 2^-53 * sum |x| (< 1e-12 here); float(s / plane) of two
    // such doubles differs by at most one ulp of float (1.2e-7 relative) for
    // means far above 1e-12 (the inputs' offset keeps them there): 1e-6
    // relative per plane.
    for (auto [planes, plane] : {std::array<int64_t, 2>{3, 5 * 7}, std::array<int64_t, 2>{2 * 64, 35 * 35},
                                 std::array<int64_t, 2>{2 * 2048, 8 * 8}}) {
        CAPTURE(planes);
        CAPTURE(plane);
        auto x = rnd(size_t(planes * plane), 111);
        for (float& v : x) v += 0.25f;
        std::vector<float> y(size_t(planes), 7.0f);
        cpu->mean_planes(x.data(), y.data(), planes, plane);
        Dev X(*be, x), Y(*be, std::vector<float>(size_t(planes), 7.0f));
        be->mean_planes(X.p, Y.p, planes, plane);
        const std::vector<float> got = Y.get(size_t(planes));
        for (size_t q = 0; q < y.size(); ++q) {
            CAPTURE(q);
            CHECK(std::fabs(double(got[q]) - y[q]) <= 1e-6 * std::fabs(double(y[q])));
        }
        // A fixed tree: a second run repeats bit for bit.
        Dev Y2(*be, std::vector<float>(size_t(planes), 7.0f));
        be->mean_planes(X.p, Y2.p, planes, plane);
        CHECK(same_bits(Y2.get(size_t(planes)), got));
    }
    // copy2d: a concatenation's part (2 images x 64 planes of 35 x 35 into
    // channels 96..159 of 288), and odd strides on both sides (5 rows of 7 of
    // a source of width 9 into columns 3..9 of a destination of width 13).
    // The destination starts with the same random values on both sides: what
    // lies outside the copy must stay.
    struct Case {
        int64_t rows, cols, ld_src, ld_dst, off;
    };
    const int64_t plane = 35 * 35;
    for (const Case& k : {Case{2, 64 * plane, 64 * plane, 288 * plane, 96 * plane}, Case{5, 7, 9, 13, 3}}) {
        CAPTURE(k.rows);
        CAPTURE(k.cols);
        auto src = rnd(size_t(k.rows * k.ld_src), 112), dst = rnd(size_t(k.rows * k.ld_dst), 113);
        std::vector<float> want = dst;
        cpu->copy2d(want.data() + k.off, k.ld_dst, src.data(), k.ld_src, k.rows, k.cols);
        Dev S(*be, src), D(*be, dst);
        be->copy2d(D.p + k.off, k.ld_dst, S.p, k.ld_src, k.rows, k.cols);
        CHECK(same_bits(D.get(dst.size()), want));
    }
}

namespace {
// One float operation, correctly rounded, whatever the compiler's
// -ffp-contract: computed in double (exact for a product of floats; for a
// sum, quotient or difference rounding to double then to float is the same
// as rounding once, since 53 >= 2 * 24 + 2), then rounded to float. A product
// rounded to float before the add cannot be fused into an FMA.
float mul_rn(float a, float b) { return static_cast<float>(static_cast<double>(a) * b); }
float add_rn(float a, float b) { return static_cast<float>(static_cast<double>(a) + b); }
float sub_rn(float a, float b) { return static_cast<float>(static_cast<double>(a) - b); }
float div_rn(float a, float b) { return static_cast<float>(static_cast<double>(a) / b); }

// Backend::resize_bilinear's formula in float without contraction (the
// GPU's arithmetic, and the CPU loop's when built with -ffp-contract=off).
std::vector<float> resize_uncontracted(const std::vector<float>& x, int64_t n, int64_t c_in, int64_t h, int64_t w,
                                       int64_t c_out, int64_t oh, int64_t ow, float mul, float add) {
    struct Tap {
        int64_t i0, i1;
        float l0, l1;
    };
    auto taps = [](int64_t in, int64_t out) {
        std::vector<Tap> t(static_cast<size_t>(out));
        const float scale = div_rn(static_cast<float>(in), static_cast<float>(out));
        for (int64_t o = 0; o < out; ++o) {
            float src = sub_rn(mul_rn(scale, add_rn(static_cast<float>(o), 0.5f)), 0.5f);
            if (src < 0.0f) src = 0.0f;
            Tap& k = t[size_t(o)];
            k.i0 = std::min<int64_t>(static_cast<int64_t>(src), in - 1);
            k.i1 = k.i0 + (k.i0 < in - 1 ? 1 : 0);
            k.l1 = sub_rn(src, static_cast<float>(k.i0));
            k.l0 = sub_rn(1.0f, k.l1);
        }
        return t;
    };
    const std::vector<Tap> ty = taps(h, oh), tx = taps(w, ow);
    std::vector<float> y(size_t(n * c_out * oh * ow));
    for (int64_t b = 0; b < n; ++b)
        for (int64_t c = 0; c < c_out; ++c) {
            const float* src = x.data() + (b * c_in + (c_in == 1 ? 0 : c)) * h * w;
            for (int64_t oy = 0; oy < oh; ++oy)
                for (int64_t ox = 0; ox < ow; ++ox) {
                    const Tap &ky = ty[size_t(oy)], &kx = tx[size_t(ox)];
                    const float* r0 = src + ky.i0 * w;
                    const float* r1 = src + ky.i1 * w;
                    const float top = add_rn(mul_rn(kx.l0, r0[kx.i0]), mul_rn(kx.l1, r0[kx.i1]));
                    const float bottom = add_rn(mul_rn(kx.l0, r1[kx.i0]), mul_rn(kx.l1, r1[kx.i1]));
                    const float v = add_rn(mul_rn(ky.l0, top), mul_rn(ky.l1, bottom));
                    y[size_t(((b * c_out + c) * oh + oy) * ow + ox)] = add_rn(mul_rn(mul, v), add);
                }
        }
    return y;
}
} // namespace

TEST_CASE("cuda resize_bilinear: the documented float formula's bits, the CPU's to its contraction") {
    auto be = gpu();
    if (!be) return;
    auto cpu = make_backend("ref");
    // The GPU computes each output's taps itself and adds as the CPU's loop,
    // every operation rounded (__fmul_rn, __fadd_rn: no FMA), so it gives the
    // bits of resize_uncontracted exactly. The CPU backend's loop is the same
    // expression, but GCC compiles C++ with -ffp-contract=fast (also under
    // -std=c++17) and -march=x86-64-v3 has FMA, so the host build fuses some
    // multiply-adds (its bits match only when built with -ffp-contract=off).
    // Tolerance against it: a fused src = scale (o + 0.5) - 0.5 moves src,
    // hence l1, by about an ulp of src (2^-19 for in <= 32), on each axis;
    // times a pixel difference (<= 1) and mul (<= 2) that is < 8e-6, plus a
    // few ulps of the fused value's other sums: 2e-5 of the largest |y|
    // (>= 1 here). A wrong tap or index is off by ~1e-2 or more.
    // Shapes: 28 x 28 gray to 3 x 299 x 299 in [-1, 1] (mul 2, add -1: the
    // Inception input of MNIST-like images), 3-channel 32 x 32 to 299 x 299,
    // and odd sizes (5 x 7 to 11 x 4: up in height, down in width).
    struct Case {
        int64_t n, c_in, h, w, c_out, oh, ow;
        float mul, add;
    };
    for (const Case& k : {Case{2, 1, 28, 28, 3, 299, 299, 2.0f, -1.0f}, Case{2, 3, 32, 32, 3, 299, 299, 1.0f, 0.0f},
                          Case{3, 3, 5, 7, 3, 11, 4, 0.5f, 0.25f}}) {
        CAPTURE(k.n);
        CAPTURE(k.c_in);
        CAPTURE(k.h);
        CAPTURE(k.w);
        CAPTURE(k.oh);
        CAPTURE(k.ow);
        auto x = rnd(size_t(k.n * k.c_in * k.h * k.w), 121, 0.5f);
        for (float& v : x) v += 0.5f; // images in [0, 1]
        const size_t m = size_t(k.n * k.c_out * k.oh * k.ow);
        const std::vector<float> want = resize_uncontracted(x, k.n, k.c_in, k.h, k.w, k.c_out, k.oh, k.ow, k.mul, k.add);
        std::vector<float> y(m, 7.0f);
        cpu->resize_bilinear(x.data(), k.n, k.c_in, k.h, k.w, y.data(), k.c_out, k.oh, k.ow, k.mul, k.add);
        Dev X(*be, x), Y(*be, std::vector<float>(m, 7.0f));
        be->resize_bilinear(X.p, k.n, k.c_in, k.h, k.w, Y.p, k.c_out, k.oh, k.ow, k.mul, k.add);
        const std::vector<float> got = Y.get(m);
        size_t bad = 0, cpu_bits = 0; // elements differing from the formula's bits, from the CPU's bits
        for (size_t i = 0; i < m; ++i) {
            bad += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
            cpu_bits += std::memcmp(&got[i], &y[i], sizeof(float)) != 0;
        }
        CHECK(bad == 0);
        if (bad) MESSAGE("resize_bilinear: " << bad << " of " << m << " differ from the formula, max error "
                                             << rel_err(got, want));
        CHECK(rel_err(got, y) <= 2e-5);
        MESSAGE("resize_bilinear " << k.h << "x" << k.w << " -> " << k.oh << "x" << k.ow << ": " << cpu_bits << " of "
                                   << m << " differ in bits from the CPU backend's (FMA contraction there), max "
                                   << rel_err(got, y) << " of the largest value");
    }
}

// ---- whole models on the GPU against the CPU ------------------------------------

namespace {

std::string fixture_file(const std::string& name) {
    const std::string built_in = std::string(MAGNETS_FIXTURES) + "/" + name;
    if (std::filesystem::exists(built_in)) return built_in;
    return "tests/fixtures/" + name; // the GPU machine runs the bundle from the repository root
}

ImageSet random_images(int64_t count, int64_t size, int64_t classes, uint32_t seed) {
    ImageSet s;
    s.channels = 1; s.height = size; s.width = size; s.source = "random"; s.split = "train";
    for (int64_t c = 0; c < classes; ++c) s.class_names.push_back("c" + std::to_string(c));
    std::mt19937 g(seed);
    s.pixels.resize(static_cast<size_t>(count * size * size));
    for (auto& p : s.pixels) p = static_cast<uint8_t>(g() & 255);
    for (int64_t i = 0; i < count; ++i) s.labels.push_back(static_cast<int32_t>(g() % static_cast<uint32_t>(classes)));
    return s;
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(1e-12, std::fabs(b)); }

} // namespace

TEST_CASE("the tokenizer on the GPU matches the CPU: fixture step, encode, decode, training") {
    std::shared_ptr<Backend> g = gpu();
    if (!g) return;
    // Tolerances: the PyTorch-fixture test's (tests/test_tokenizer.cpp): f32
    // through ~10 conv layers whose sums cuDNN orders differently, 1e-4 of the
    // largest gradient; losses 1e-5 relative. A code can flip only where two
    // codes are equally near within round-off: at least 99% must agree.
    const std::string fx = fixture_file("tokenizer_fixture.h5");
    Tokenizer tc = Tokenizer::load(fx, make_backend("ref"));
    Tokenizer tg = Tokenizer::load(fx, g);
    const auto x = test::read_ds<float>(fx, "/fixture/x", H5T_NATIVE_FLOAT);
    const int64_t per = tc.config().channels * tc.config().image_size * tc.config().image_size;
    const int64_t n = static_cast<int64_t>(x.size()) / per;
    const Tokenizer::StepLosses lc = tc.forward_backward(x.data(), n, false), lg = tg.forward_backward(x.data(), n, false);
    CHECK(rel(lg.loss, lc.loss) < 1e-5);
    CHECK(rel(lg.recon, lc.recon) < 1e-5);
    CHECK(rel(lg.commit, lc.commit) < 1e-5);
    for (const auto& name : tc.param_names()) {
        CAPTURE(name);
        const Tensor &gc = tc.grad(name), &gg = tg.grad(name);
        CHECK(nerr(std::vector<float>(gg.data(), gg.data() + gg.numel()),
                   std::vector<float>(gc.data(), gc.data() + gc.numel())) < 1e-4);
    }
    std::vector<uint16_t> ic(static_cast<size_t>(n * tc.tokens_per_image())), ig(ic.size());
    tc.encode(x.data(), n, ic.data());
    tg.encode(x.data(), n, ig.data());
    size_t same = 0;
    for (size_t i = 0; i < ic.size(); ++i) same += ic[i] == ig[i];
    MESSAGE("tokenizer codes equal on GPU and CPU: " << same << " of " << ic.size());
    CHECK(same * 100 >= ic.size() * 99);
    std::vector<float> yc(x.size()), yg(x.size());
    tc.decode(ic.data(), n, yc.data());
    tg.decode(ic.data(), n, yg.data());
    CHECK(nerr(yg, yc) < 1e-5);

    // A few training steps (EMA quantizer, a dead-code restart): the same run.
    const ImageSet data = random_images(64, 16, 1, 3);
    TokenizerPreset p = tokenizer_preset("tiny");
    p.model.image_size = 16;
    p.train.steps = 6; p.train.log_every = 6; p.train.restart_every = 3;
    std::vector<double> losses;
    for (std::shared_ptr<Backend> be : {std::shared_ptr<Backend>(make_backend("ref")), g}) {
        Tokenizer t(p.model, be);
        t.init(p.train.seed);
        TokenizerTrainOptions o;
        o.train = p.train;
        o.output = (std::filesystem::temp_directory_path() / ("magnets-gpu-tok-" + std::string(be->name()) + ".h5")).string();
        train_tokenizer(t, data, o, [&](const TokenizerLog& l) { losses.push_back(l.loss); });
        std::filesystem::remove(o.output);
    }
    REQUIRE(losses.size() == 2);
    MESSAGE("tokenizer loss after 6 steps: CPU " << losses[0] << ", GPU " << losses[1]);
    CHECK(std::isfinite(losses[1]));
    CHECK(rel(losses[1], losses[0]) < 1e-2);
}

TEST_CASE("Inception-v3 and the feature classifier on the GPU match the CPU") {
    std::shared_ptr<Backend> g = gpu();
    if (!g) return;
    // Inception: random weights, two gray 28x28 images; tolerance as the
    // PyTorch fixture's (tests/test_inception.cpp): 1e-4 of the largest feature.
    const Checkpoint ck = test::random_inception_checkpoint();
    InceptionV3 ic = InceptionV3::from_checkpoint(ck, make_backend("auto")), ig = InceptionV3::from_checkpoint(ck, g);
    const int64_t n = 2, s = 28;
    const std::vector<float> img = [&] {
        std::vector<float> v = rnd(static_cast<size_t>(n * s * s), 41, 0.5f);
        for (float& a : v) a += 0.5f;
        return v;
    }();
    std::vector<float> fc(static_cast<size_t>(n * InceptionV3::feature_dim)), fg(fc.size());
    ic.features(img.data(), n, s, s, 1, fc.data());
    ig.features(img.data(), n, s, s, 1, fg.data());
    MESSAGE("inception features: normalised GPU-CPU difference " << nerr(fg, fc));
    CHECK(nerr(fg, fc) < 1e-4);

    // The classifier: same init, features and probabilities, then one epoch of training.
    ClassifierConfig cc;
    cc.image_size = 16; cc.channels = 1; cc.num_classes = 3; cc.width1 = 8; cc.width2 = 16; cc.feature_dim = 32;
    cc.dataset = "random"; cc.class_names = {"c0", "c1", "c2"};
    const ImageSet data = random_images(96, 16, 3, 5);
    Classifier cc_cpu(cc, make_backend("ref")), cc_gpu(cc, g);
    cc_cpu.init(3);
    cc_gpu.init(3);
    std::vector<float> x(static_cast<size_t>(16 * 16 * 16));
    data.to_float(0, 16, x.data());
    std::vector<float> f1(16 * 32), f2(f1.size()), p1(16 * 3), p2(p1.size());
    cc_cpu.features(x.data(), 16, f1.data(), p1.data());
    cc_gpu.features(x.data(), 16, f2.data(), p2.data());
    CHECK(nerr(f2, f1) < kTol);
    CHECK(nerr(p2, p1) < kTol);
    ClassifierTrainConfig tc;
    tc.epochs = 1; tc.batch_size = 16; tc.log_every = 6;
    double l1 = 0, l2 = 0;
    cc_cpu.train(data, tc, [&](const Classifier::Log& l) { l1 = l.loss; });
    cc_gpu.train(data, tc, [&](const Classifier::Log& l) { l2 = l.loss; });
    MESSAGE("classifier loss after one epoch: CPU " << l1 << ", GPU " << l2);
    CHECK(rel(l2, l1) < 1e-3);
}
