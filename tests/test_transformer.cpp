// The nested transformer against the PyTorch fixture
// (scripts/gen_transformer_fixture.py), finite-difference checks of its ops in
// double precision, and training behaviour: learning, exact resume, divergence,
// bad token files.
#include <doctest.h>

#include "device_proxy.h"

#include "test_util.h"

#include "io/h5.h"
#include "magnets/backend.h"
#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets/rng.h"
#include "magnets/transformer.h"
#include "core/fastmath.h"
#include "nn/optim.h"
#include "nn/transformer_impl.h"
#include "nn/transformer_ops.h"

#include <hdf5.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace magnets;

namespace {

const std::string fixture = std::string(MAGNETS_FIXTURES) + "/transformer_fixture.h5";

template <class T> std::vector<T> read_ds(const std::string& name, hid_t type) {
    return test::read_ds<T>(fixture, name, type);
}
std::vector<float> rf(const std::string& n) { return read_ds<float>(n, H5T_NATIVE_FLOAT); }
double rd(const std::string& n) { return read_ds<double>(n, H5T_NATIVE_DOUBLE).at(0); }

// ||got - want|| / max(||want||, floor): a normalised error over a whole tensor.
double norm_err(const float* got, const std::vector<float>& want, double floor = 1e-3) {
    double e = 0, w = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double d = static_cast<double>(got[i]) - want[i];
        e += d * d;
        w += static_cast<double>(want[i]) * want[i];
    }
    return std::sqrt(e) / std::max(std::sqrt(w), floor);
}

struct Fixture {
    TransformerConfig cfg;
    int64_t batch = 0;
    std::vector<int32_t> ids, targets;
    std::vector<uint8_t> mask;
    Attrs attrs;
};

Fixture load_fixture(const std::string& mode) {
    Fixture fx;
    {
        h5::File f = h5::File::open(fixture);
        fx.attrs = f.group(mode).attrs();
    }
    fx.cfg = TransformerConfig::from_attrs(fx.attrs, fixture);
    fx.batch = attr_int(fx.attrs, "batch");
    fx.ids = read_ds<int32_t>(mode + "/ids", H5T_NATIVE_INT32);
    fx.targets = read_ds<int32_t>(mode + "/targets", H5T_NATIVE_INT32);
    fx.mask = read_ds<uint8_t>(mode + "/mask", H5T_NATIVE_UINT8);
    return fx;
}

void load_weights(Transformer& m, const std::string& group) {
    for (const std::string& n : m.param_names()) {
        const std::vector<float> w = rf(group + "/" + n);
        Tensor& t = m.param(n);
        REQUIRE(static_cast<int64_t>(w.size()) == t.numel());
        std::copy(w.begin(), w.end(), t.data());
    }
}

} // namespace

// Tolerances (f32): every value is a sum of at most a few hundred products of
// O(1) numbers, so float rounding gives normalised errors around 1e-6; we allow
// 1e-4 for logits and gradients (and a 1e-3 floor on the norm, so parameters
// whose true gradient is zero compare in absolute terms). After AdamW steps,
// weights move by about lr = 0.01 per step; m / sqrt(v) amplifies relative
// gradient noise only where the gradient is itself noise: attn.k.bias has an
// exact zero gradient (softmax is shift-invariant in the keys), so PyTorch's
// stored value is rounding noise and Adam turns it into steps of up to lr. For
// elements whose gradient is tiny (|g| near Adam's eps), the update
// lr * g / (|g| + eps) is sensitive to gradient rounding too (measured up to
// 3.4e-5). We compare attn.k.bias within 3 lr and everything else within 1e-4
// absolute: 1% of one step; a wrong update rule or clip is off by O(lr).
TEST_CASE("nested transformer matches PyTorch: logits, losses, gradients, AdamW steps") {
    // "device-proxy": the GPU's code path (device memory, uploads, downloads)
    // with the CPU computing (tests/device_proxy.h).
    std::vector<std::string> backends = available_backends();
    backends.push_back("device-proxy");
    for (const std::string& backend : backends) {
        for (const std::string mode : {"width", "mone", "mlp"}) {
            CAPTURE(backend);
            CAPTURE(mode);
            Fixture fx = load_fixture(mode);
            Transformer m(fx.cfg, backend == "device-proxy" ? std::make_unique<test::DeviceProxy>(make_backend("auto"))
                                                            : make_backend(backend));
            load_weights(m, mode + "/weights");
            Transformer::Impl& im = m.impl();
            const int64_t N = fx.cfg.tokens(), K = fx.cfg.codebook_size, B = fx.batch;
            const double eps = attr_double(fx.attrs, "label_smoothing");

            for (int64_t p : fx.cfg.factors) {
                CAPTURE(p);
                const std::string g = mode + "/sub" + std::to_string(p);
                m.zero_grads();
                const SubModelStats st = im.forward_backward(p, fx.ids.data(), fx.targets.data(), fx.mask.data(), B, eps,
                                                             1.0, nullptr, 1.0);
                CHECK(std::abs(st.loss - rd(g + "/loss")) < 1e-5 * std::max(1.0, std::abs(rd(g + "/loss"))));
                std::vector<float> logits(static_cast<size_t>(B * N * K));
                m.forward(p, fx.ids.data(), B, logits.data());
                CHECK(norm_err(logits.data(), rf(g + "/logits")) < 1e-5);
                for (const std::string& n : m.param_names()) {
                    CAPTURE(n);
                    CHECK(norm_err(m.grad(n).data(), rf(g + "/grads/" + n)) < 1e-4);
                }
            }

            {   // progressive distillation objective, alpha = 0.3
                double total = 0;
                const double alpha = attr_double(fx.attrs, "alpha");
                const auto subs = im.joint_forward_backward(fx.ids.data(), fx.targets.data(), fx.mask.data(), B,
                                                            Objective::progressive, alpha, {}, eps, &total);
                CHECK(std::abs(total - rd(mode + "/progressive/loss")) < 1e-5 * std::abs(total));
                const auto want = read_ds<double>(mode + "/progressive/sub_loss", H5T_NATIVE_DOUBLE);
                for (size_t k = 0; k < subs.size(); ++k) CHECK(std::abs(subs[k].loss - want[k]) < 1e-5 * want[k]);
                for (const std::string& n : m.param_names()) {
                    CAPTURE(n);
                    CHECK(norm_err(m.grad(n).data(), rf(mode + "/progressive/grads/" + n)) < 1e-4);
                }
            }

            {   // three AdamW steps of joint ground-truth training with clipping
                nn::AdamConfig ac;
                ac.beta1 = attr_double(fx.attrs, "beta1"); ac.beta2 = attr_double(fx.attrs, "beta2");
                ac.eps = attr_double(fx.attrs, "eps"); ac.weight_decay = attr_double(fx.attrs, "weight_decay");
                ac.clip_norm = attr_double(fx.attrs, "clip_norm");
                const double lr = attr_double(fx.attrs, "lr");
                nn::Adam adam(ac, *im.be);
                im.params_to_device(); // on a GPU: the optimizer updates the device copies
                for (const std::string& n : m.param_names())
                    adam.add(n, im.params[n].W(), im.params[n].G(), im.params[n].w.shape(), im.params[n].decay);
                for (int step = 1; step <= 3; ++step) {
                    CAPTURE(step);
                    const std::string g = mode + "/adamw/step" + std::to_string(step);
                    double total = 0;
                    im.joint_forward_backward(fx.ids.data(), fx.targets.data(), fx.mask.data(), B, Objective::ground_truth,
                                              1.0, {}, eps, &total);
                    CHECK(std::abs(total - rd(g + "/loss")) < 1e-5 * total);
                    const double norm = adam.grad_norm();
                    CHECK(std::abs(norm - rd(g + "/grad_norm")) < 1e-4 * norm);
                    adam.step(lr, norm);
                    for (const std::string& n : m.param_names()) {
                        CAPTURE(n);
                        const std::vector<float> want = rf(g + "/weights/" + n);
                        const float* got = m.param(n).data();
                        const double tol = n.find("attn.k.bias") != std::string::npos ? 3 * lr : 1e-4;
                        double worst = 0;
                        for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
                        CHECK(worst < tol);
                    }
                }
            }
        }
    }
}

// ---- finite differences in double -------------------------------------------------------

namespace {

std::vector<double> randv(size_t n, uint64_t stream, double scale = 1.0) {
    Philox rng(7);
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = scale * rng.normal(stream, i);
    return v;
}

// Central differences of f over every element of x, against analytic grad g.
// Returns the largest |fd - g| / max(|g|, 1e-3) over elements.
double fd_check(std::vector<double>& x, const std::vector<double>& g, const std::function<double()>& f) {
    const double h = 1e-5; // truncation ~h^2, roundoff ~1e-16 |f| / h: both far below the tolerance
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        const double x0 = x[i];
        x[i] = x0 + h;
        const double fp = f();
        x[i] = x0 - h;
        const double fm = f();
        x[i] = x0;
        const double fd = (fp - fm) / (2 * h);
        worst = std::max(worst, std::abs(fd - g[i]) / std::max(std::abs(g[i]), 1e-3));
    }
    return worst;
}

} // namespace

TEST_CASE("layer norm backward matches finite differences (double)") {
    const int64_t rows = 4, n = 6, ld = 7; // ld > n: strided rows
    auto x = randv(static_cast<size_t>(rows * ld), 1), g = randv(n, 2, 0.5), b = randv(n, 3), w = randv(static_cast<size_t>(rows * ld), 4);
    for (auto& v : g) v += 1.0;
    std::vector<double> y(static_cast<size_t>(rows * ld)), mean(rows), rstd(rows);
    auto loss = [&] {
        nn::ops::layernorm_forward(x.data(), ld, y.data(), ld, mean.data(), rstd.data(), g.data(), b.data(), rows, n);
        double s = 0;
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < n; ++j) s += y[static_cast<size_t>(i * ld + j)] * w[static_cast<size_t>(i * ld + j)];
        return s;
    };
    loss();
    std::vector<double> dx(static_cast<size_t>(rows * ld), 0.0), dg(n, 0.0), db(n, 0.0);
    nn::ops::layernorm_backward(x.data(), ld, w.data(), ld, mean.data(), rstd.data(), g.data(), dx.data(), ld, dg.data(),
                                db.data(), rows, n, false);
    // Padding columns are not inputs: zero their analytic and FD gradients alike.
    CHECK(fd_check(x, dx, loss) < 1e-6);
    CHECK(fd_check(g, dg, loss) < 1e-6);
    CHECK(fd_check(b, db, loss) < 1e-6);
}

TEST_CASE("attention backward matches finite differences (double)") {
  // hd = 3 runs the scalar path, hd = 16 the register-blocked one; seq = 17
  // crosses the 16-wide padding of the keys.
  for (auto [seq, hd] : {std::pair<int64_t, int64_t>{5, 3}, {17, 16}}) {
    CAPTURE(hd);
    const int64_t batch = 2, heads = 2, ld = heads * hd + 1;
    const size_t n = static_cast<size_t>(batch * seq * ld);
    auto q = randv(n, 11), k = randv(n, 12), v = randv(n, 13), w = randv(n, 14);
    std::vector<double> out(n), probs(static_cast<size_t>(batch * heads * seq * seq));
    auto loss = [&] {
        nn::ops::attention_forward(q.data(), k.data(), v.data(), ld, out.data(), probs.data(), batch, seq, heads, hd);
        double s = 0;
        for (int64_t r = 0; r < batch * seq; ++r)
            for (int64_t j = 0; j < heads * hd; ++j) s += out[static_cast<size_t>(r * ld + j)] * w[static_cast<size_t>(r * ld + j)];
        return s;
    };
    loss();
    std::vector<double> dq(n, 0.0), dk(n, 0.0), dv(n, 0.0);
    nn::ops::attention_backward(q.data(), k.data(), v.data(), probs.data(), w.data(), ld, dq.data(), dk.data(), dv.data(),
                                batch, seq, heads, hd);
    // The padding column (index heads*hd of each row) is not read: its gradient is 0 both ways.
    for (int64_t r = 0; r < batch * seq; ++r) dq[static_cast<size_t>(r * ld + ld - 1)] = dk[static_cast<size_t>(r * ld + ld - 1)] = dv[static_cast<size_t>(r * ld + ld - 1)] = 0;
    CHECK(fd_check(q, dq, loss) < 1e-6);
    CHECK(fd_check(k, dk, loss) < 1e-6);
    CHECK(fd_check(v, dv, loss) < 1e-6);
  }
}

TEST_CASE("float attention (AVX2 register blocks) agrees with the double path") {
  // The float path runs the 6x16 blocks of core/fma_block.h (A and A^T operands,
  // 19 rows: three full blocks and a 1-row block); double runs the
  // scalar combine. Same formulas, so the difference is float round-off only.
  const int64_t batch = 2, heads = 2, seq = 19, hd = 16, ld = heads * hd + 3;
  const size_t n = static_cast<size_t>(batch * seq * ld);
  auto q = randv(n, 21), k = randv(n, 22), v = randv(n, 23), w = randv(n, 24);
  auto to_f = [](const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); };
  auto qf = to_f(q), kf = to_f(k), vf = to_f(v), wf = to_f(w);
  const size_t np = static_cast<size_t>(batch * heads * seq * seq);
  std::vector<double> out(n, 0.0), probs(np), dq(n, 0.0), dk(n, 0.0), dv(n, 0.0);
  std::vector<float> outf(n, 0.0f), probsf(np), dqf(n, 0.0f), dkf(n, 0.0f), dvf(n, 0.0f);
  nn::ops::attention_forward(q.data(), k.data(), v.data(), ld, out.data(), probs.data(), batch, seq, heads, hd);
  nn::ops::attention_backward(q.data(), k.data(), v.data(), probs.data(), w.data(), ld, dq.data(), dk.data(), dv.data(), batch, seq, heads, hd);
  nn::ops::attention_forward(qf.data(), kf.data(), vf.data(), ld, outf.data(), probsf.data(), batch, seq, heads, hd);
  nn::ops::attention_backward(qf.data(), kf.data(), vf.data(), probsf.data(), wf.data(), ld, dqf.data(), dkf.data(), dvf.data(), batch, seq, heads, hd);
  auto worst = [&](const std::vector<double>& a, const std::vector<float>& b) {
    double e = 0;
    for (int64_t r = 0; r < batch * seq; ++r)
      for (int64_t j = 0; j < heads * hd; ++j) {
        const size_t i = static_cast<size_t>(r * ld + j);
        e = std::max(e, std::abs(a[i] - static_cast<double>(b[i])) / (1.0 + std::abs(a[i])));
      }
    return e;
  };
  CHECK(worst(out, outf) < 1e-5);
  CHECK(worst(dq, dqf) < 1e-5);
  CHECK(worst(dk, dkf) < 1e-5);
  CHECK(worst(dv, dvf) < 1e-5);
}

TEST_CASE("vectorisable exp and erf agree with libm") {
    double worst_exp = 0, worst_erf = 0;
    for (int i = -40000; i <= 40000; ++i) {
        const float x = static_cast<float>(i) * 0.002f; // [-80, 80]
        const double e = std::exp(static_cast<double>(x));
        worst_exp = std::max(worst_exp, std::abs(nn::vexp(x) - e) / e);
        const float y = static_cast<float>(i) * 0.00015f; // [-6, 6]
        worst_erf = std::max(worst_erf, std::abs(static_cast<double>(nn::verf(y)) - std::erf(static_cast<double>(y))));
    }
    CHECK(worst_exp < 4e-7); // a few float ulp
    CHECK(worst_erf < 1e-6);
    CHECK(nn::vexp(-200.0f) >= 0.0f);
    CHECK(nn::vexp(-200.0f) < 1e-37f);
}

TEST_CASE("both losses (smoothed CE, soft-target CE, and their mix) match finite differences (double)") {
    const int64_t rows = 6, K = 5;
    auto logits = randv(static_cast<size_t>(rows * K), 21, 2.0), teacher = randv(static_cast<size_t>(rows * K), 22, 2.0);
    const std::vector<int32_t> targets = {0, 3, 4, 1, 2, 2};
    const std::vector<uint8_t> mask = {1, 0, 1, 1, 0, 1};
    for (double alpha : {1.0, 0.0, 0.3}) {
        CAPTURE(alpha);
        const double eps = 0.1, weight = 0.7;
        auto loss = [&] {
            return weight * nn::ops::masked_loss<double>(logits.data(), K, teacher.data(), K, targets.data(), mask.data(),
                                                         rows, K, eps, alpha, weight, nullptr, K).loss;
        };
        std::vector<double> d(static_cast<size_t>(rows * K));
        nn::ops::masked_loss<double>(logits.data(), K, teacher.data(), K, targets.data(), mask.data(), rows, K, eps, alpha,
                                     weight, d.data(), K);
        CHECK(fd_check(logits, d, loss) < 1e-6);
        for (int64_t j = 0; j < K; ++j) CHECK(d[static_cast<size_t>(1 * K + j)] == 0.0); // unmasked row
    }
}

TEST_CASE("GELU backward matches finite differences (double)") {
    auto u = randv(40, 31, 2.0);
    std::vector<double> g(u.size()), ones(u.size(), 1.0), du(u.size());
    auto loss = [&] {
        nn::ops::gelu_forward(u.data(), g.data(), static_cast<int64_t>(u.size()));
        double s = 0;
        for (double x : g) s += x;
        return s;
    };
    nn::ops::gelu_backward(u.data(), ones.data(), du.data(), static_cast<int64_t>(u.size()));
    CHECK(fd_check(u, du, loss) < 1e-5);
}

TEST_CASE("layer-norm and bias backward: the same bits on 1 and 2 threads (chunked column sums)") {
    const int64_t rows = 1000, n = 96, ld = 100; // 16 chunks of 64 rows, the last partial; parallel
    std::vector<float> x(static_cast<size_t>(rows * ld)), dy(x.size()), g(static_cast<size_t>(n));
    Philox rng(31);
    for (size_t i = 0; i < x.size(); ++i) {
        x[i] = rng.normal(1, i) * 3.0f + 0.5f;
        dy[i] = rng.normal(2, i);
    }
    for (size_t j = 0; j < g.size(); ++j) g[j] = 1.0f + 0.1f * rng.normal(3, j);
    std::vector<float> y(x.size()), mean(static_cast<size_t>(rows)), rstd(mean.size()), b(g.size(), 0.0f);
    nn::ops::layernorm_forward(x.data(), ld, y.data(), ld, mean.data(), rstd.data(), g.data(), b.data(), rows, n);
    std::vector<float> dx_ref, dg_ref, db_ref, dbb_ref;
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        std::vector<float> dx(x.size(), 0.25f), dg(g.size(), 0.5f), db(g.size(), -0.5f), dbb(g.size(), 1.0f);
        nn::ops::layernorm_backward(x.data(), ld, dy.data(), ld, mean.data(), rstd.data(), g.data(), dx.data(), ld,
                                    dg.data(), db.data(), rows, n, true);
        nn::ops::bias_backward(dy.data(), ld, dbb.data(), rows, n);
        if (threads == 1) {
            dx_ref = dx; dg_ref = dg; db_ref = db; dbb_ref = dbb;
            // and against a double sum in plain row order
            double worst = 0;
            for (int64_t j = 0; j < n; ++j) {
                double s = 1.0;
                for (int64_t i = 0; i < rows; ++i) s += dy[size_t(i * ld + j)];
                worst = std::max(worst, std::abs(s - dbb[size_t(j)]));
            }
            CHECK(worst < 1e-3);
            continue;
        }
        CHECK(dx == dx_ref);
        CHECK(dg == dg_ref);
        CHECK(db == db_ref);
        CHECK(dbb == dbb_ref);
    }
    set_num_threads(0);
}

TEST_CASE("the fused bias + GELU forward and GELU + bias backward give the bits of the separate ops, on any thread count") {
    const int64_t rows = 1000, n = 80; // column blocks of 32: two full, one partial; parallel
    std::vector<float> u0(static_cast<size_t>(rows * n)), dg(u0.size()), b(static_cast<size_t>(n));
    Philox rng(12);
    for (size_t i = 0; i < u0.size(); ++i) {
        u0[i] = rng.normal(1, i) * 2.0f;
        dg[i] = rng.normal(2, i);
    }
    for (size_t j = 0; j < b.size(); ++j) b[j] = rng.normal(3, j);
    // separate ops: x = u + b, g = gelu(x), du = dg * gelu'(x), db += colsum(du)
    std::vector<float> x = u0, g_ref(u0.size()), du_ref(u0.size()), db_ref(static_cast<size_t>(n), 0.5f);
    nn::ops::add_bias(x.data(), n, b.data(), rows, n);
    nn::ops::gelu_forward(x.data(), g_ref.data(), rows * n);
    nn::ops::gelu_backward(x.data(), dg.data(), du_ref.data(), rows * n);
    nn::ops::bias_backward(du_ref.data(), n, db_ref.data(), rows, n);
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        CAPTURE(threads);
        std::vector<float> u = u0, g(u0.size());
        nn::ops::bias_gelu_forward(u.data(), b.data(), g.data(), rows, n); // u becomes gelu'(x)
        CHECK(std::memcmp(g.data(), g_ref.data(), sizeof(float) * g.size()) == 0);
        std::vector<float> du = dg, db(static_cast<size_t>(n), 0.5f); // in place, as the model calls it
        nn::ops::gelu_bias_backward(u.data(), du.data(), du.data(), db.data(), rows, n);
        // gelu'(x) is rounded to float before the product here, inside one
        // expression in gelu_backward: within 1 ulp of the product (2^-23 relative)
        double worst = 0;
        for (size_t i = 0; i < du.size(); ++i)
            worst = std::max(worst, std::abs(double(du[i]) - du_ref[i]) / (std::abs(double(du_ref[i])) + 1e-30));
        CHECK(worst < 2.5e-7);
        for (int64_t j = 0; j < n; ++j) CHECK(db[size_t(j)] == doctest::Approx(db_ref[size_t(j)]).epsilon(1e-5));
    }
    set_num_threads(0);
}

TEST_CASE("Backend::matmul_gelu_backward equals matmul then gelu_bias_backward, on every CPU backend") {
    const int64_t m = 300, n = 48, k = 20; // m >= 256: onednn's transposed-B copy too
    std::vector<float> a(size_t(m * k)), w(size_t(n * k)), gp(size_t(m * n));
    Philox rng(21);
    for (size_t i = 0; i < a.size(); ++i) a[i] = rng.normal(1, i);
    for (size_t i = 0; i < w.size(); ++i) w[i] = rng.normal(2, i);
    for (size_t i = 0; i < gp.size(); ++i) gp[i] = rng.uniform(3, i) * 1.2f - 0.1f;
    for (const std::string& name : available_backends()) {
        CAPTURE(name);
        auto be = make_backend(name);
        for (bool tb : {false, true}) {
            CAPTURE(tb);
            // B is [k, n] or, transposed, [n, k]: the same values either way
            std::vector<float> bm(size_t(n * k));
            for (int64_t r = 0; r < k; ++r)
                for (int64_t c = 0; c < n; ++c) bm[size_t(tb ? c * k + r : r * n + c)] = w[size_t(r * n + c)];
            const ConstMat B(bm.data(), tb ? n : k, tb ? k : n, tb ? k : n);
            std::vector<float> du_ref(size_t(m * n)), db_ref(size_t(n), 0.25f);
            be->matmul(ConstMat(a.data(), m, k, k), false, B, tb, Mat{du_ref.data(), m, n, n});
            be->gelu_bias_backward(gp.data(), du_ref.data(), du_ref.data(), db_ref.data(), m, n);
            std::vector<float> du(size_t(m * n), NAN), db(size_t(n), 0.25f);
            be->matmul_gelu_backward(ConstMat(a.data(), m, k, k), false, B, tb, Mat{du.data(), m, n, n}, gp.data(),
                                     db.data());
            double worst = 0;
            for (size_t i = 0; i < du.size(); ++i)
                worst = std::max(worst, std::abs(double(du[i]) - du_ref[i]) / (std::abs(double(du_ref[i])) + 1e-3));
            CHECK(worst < 1e-5); // the same product; only the kernel's rounding may differ
            for (int64_t j = 0; j < n; ++j) CHECK(db[size_t(j)] == doctest::Approx(db_ref[size_t(j)]).epsilon(1e-4));
        }
    }
}

// ---- configuration -------------------------------------------------------------------

TEST_CASE("sub-model widths, FLOPs and parameter count") {
    TransformerConfig c;
    c.width = 128; c.heads = 8; c.layers = 4;
    CHECK(c.sub(8).resid == 16);
    CHECK(c.sub(8).heads == 1);
    CHECK(c.sub(2).mlp == 256);
    // width nesting: matmul FLOPs scale as 1/p^2 (attention as 1/p).
    const double r = c.forward_flops(1) / c.forward_flops(4);
    CHECK(r > 6.0);
    CHECK(r < 16.0);
    c.nesting = Nesting::mlp;
    CHECK(c.sub(8).resid == 128);
    CHECK(c.sub(8).attn == 128);
    Transformer m(c, make_backend("ref"));
    int64_t total = 0;
    for (auto& n : m.param_names()) total += m.param(n).numel();
    CHECK(total == c.num_params());
    c.nesting = Nesting::width;
    c.heads = 4; // 4 heads cannot be split 8 ways
    CHECK_THROWS_AS(c.validate(), Error);
    CHECK_THROWS_AS(parse_factors("8,4,x"), Error);
    CHECK(parse_factors("1,2,8,4") == std::vector<int64_t>{8, 4, 2, 1});
}

// ---- training ------------------------------------------------------------------------

namespace {

// A learnable synthetic token set: each item's tokens depend on its label, a
// random per-item style and the position's parity, so a masked token is
// predictable from the class and any visible token.
TokenFile synthetic_tokens(int64_t count, int64_t K, uint64_t seed) {
    TokenFile tf;
    tf.grid_h = 4; tf.grid_w = 4; tf.codebook_size = K; tf.split = "train";
    tf.tokenizer_hash = "0123456789abcdef"; tf.source = "synthetic";
    tf.class_names = {"a", "b", "c"};
    Philox rng(seed);
    for (int64_t i = 0; i < count; ++i) {
        const int32_t y = static_cast<int32_t>(rng.below(1, static_cast<uint64_t>(i), 3));
        const int64_t shift = rng.below(2, static_cast<uint64_t>(i), 4);
        tf.labels.push_back(y);
        for (int64_t j = 0; j < 16; ++j)
            tf.tokens.push_back(static_cast<uint16_t>((y * 8 + shift * 2 + j % 2) % K));
    }
    return tf;
}

TransformerConfig tiny_config(const TokenFile& tf) {
    TransformerConfig c = transformer_preset("tiny").model;
    c.codebook_size = tf.codebook_size; c.num_classes = 3; c.grid_h = tf.grid_h; c.grid_w = tf.grid_w;
    return c;
}

TransformerTrainOptions tiny_options(const std::string& out, int64_t steps) {
    TransformerTrainOptions o;
    o.train = transformer_preset("tiny").train;
    o.train.steps = steps;
    o.train.checkpoint_every = 4;
    o.output = out;
    return o;
}

} // namespace

TEST_CASE("training learns: validation accuracy of every sub-model far above chance") {
    test::TempDir dir;
    TokenFile tr = synthetic_tokens(512, 32, 1), va = synthetic_tokens(128, 32, 2);
    Transformer m(tiny_config(tr), make_backend("auto"));
    m.init(3);
    auto o = tiny_options(dir / "m.h5", 300);
    o.train.lr = 3e-3;
    o.train.val_items = 128;
    std::vector<SubModelStats> last;
    train_transformer(m, tr, &va, o, [&](const TransformerLog& lg) { if (lg.validation) last = lg.subs; });
    REQUIRE(last.size() == 4);
    for (auto& s : last) {
        CAPTURE(s.p);
        CHECK(s.accuracy > 0.15); // chance is 1/32; m_8 is only 4 wide here
    }
    CHECK(last.back().accuracy > 0.6);                     // m_1: the full model
    CHECK(last.back().accuracy > last.front().accuracy + 0.1); // m_1 better than m_8
}

TEST_CASE("resume continues bit-identically") {
    test::TempDir dir;
    TokenFile tr = synthetic_tokens(100, 32, 1);
    auto run = [&](const std::string& out, int64_t stop_after, bool resume) {
        Transformer m(tiny_config(tr), make_backend("auto"));
        m.init(3);
        auto o = tiny_options(out, 12);
        o.stop_after = stop_after;
        o.resume = resume;
        train_transformer(m, tr, nullptr, o, nullptr);
    };
    run(dir / "a.h5", -1, false);
    run(dir / "b.h5", 6, false);
    run(dir / "b.h5", -1, true);
    Checkpoint a = read_checkpoint(dir / "a.h5", transformer_format, 1), b = read_checkpoint(dir / "b.h5", transformer_format, 1);
    CHECK(attr_int(b.state_attrs, "step") == 12);
    CHECK(weights_hash(a.weights) == weights_hash(b.weights));
    CHECK(weights_hash(a.ema) == weights_hash(b.ema));
    CHECK(weights_hash(a.state) == weights_hash(b.state));
}

TEST_CASE("training on device memory (the GPU's code path) gives the host's bits, checkpoints and resume") {
    // tests/device_proxy.h: parameters, gradients, moments and EMA weights in
    // "device" memory that host code cannot touch, the CPU computing: the
    // checkpoints must equal the host run's bit for bit, also when the device
    // run is interrupted and resumed.
    test::TempDir dir;
    TokenFile tr = synthetic_tokens(100, 32, 1), va = synthetic_tokens(40, 32, 2);
    auto run = [&](const std::string& out, bool device, int64_t stop_after, bool resume, std::string* val) {
        std::shared_ptr<Backend> be = device ? std::shared_ptr<Backend>(std::make_unique<test::DeviceProxy>(make_backend("auto")))
                                             : std::shared_ptr<Backend>(make_backend("auto"));
        Transformer m(tiny_config(tr), be);
        m.init(3);
        auto o = tiny_options(out, 12);
        o.train.objective = Objective::progressive;
        o.train.val_every = 6;
        o.train.val_items = 40;
        o.stop_after = stop_after;
        o.resume = resume;
        train_transformer(m, tr, &va, o, [&](const TransformerLog& lg) {
            if (lg.validation && val)
                for (const auto& st : lg.subs) *val += std::to_string(st.ce) + " " + std::to_string(st.accuracy) + ";";
        });
        return m.hash();
    };
    std::string val_host, val_dev;
    const std::string h_host = run(dir / "host.h5", false, -1, false, &val_host);
    const std::string h_dev = run(dir / "dev.h5", true, -1, false, &val_dev);
    CHECK(h_host == h_dev);
    CHECK(val_host == val_dev);
    run(dir / "dev2.h5", true, 6, false, nullptr);
    run(dir / "dev2.h5", true, -1, true, nullptr);
    Checkpoint a = read_checkpoint(dir / "host.h5", transformer_format, 1);
    for (const char* f : {"dev.h5", "dev2.h5"}) {
        CAPTURE(f);
        Checkpoint b = read_checkpoint(dir / f, transformer_format, 1);
        CHECK(weights_hash(a.weights) == weights_hash(b.weights));
        CHECK(weights_hash(a.ema) == weights_hash(b.ema));
        CHECK(weights_hash(a.state) == weights_hash(b.state));
    }
}

TEST_CASE("divergence stops with a clear error and keeps the last good checkpoint") {
    test::TempDir dir;
    TokenFile tr = synthetic_tokens(100, 32, 1);
    Transformer m(tiny_config(tr), make_backend("auto"));
    m.init(3);
    auto o = tiny_options(dir / "m.h5", 12);
    o.train.lr = 1e4; // explodes after a few steps
    o.train.warmup = 0;
    o.train.clip_norm = 0;
    o.train.loss_limit = 0; // auto: 3 ln K
    std::string msg;
    try {
        train_transformer(m, tr, nullptr, o, nullptr);
    } catch (const Error& e) {
        msg = e.what();
    }
    CAPTURE(msg);
    CHECK(msg.find("diverged") != std::string::npos);
    // Whatever checkpoint exists is a good one: loadable, finite weights.
    if (msg.find("last good checkpoint") != std::string::npos) CHECK_NOTHROW(Transformer::load(dir / "m.h5", make_backend("ref")));
}

TEST_CASE("token files that do not fit the model are refused with a hint") {
    TokenFile tf = synthetic_tokens(10, 32, 1);
    TransformerConfig c = tiny_config(tf);
    CHECK_NOTHROW(check_tokens_fit(c, tf, "x.h5"));
    TransformerConfig c2 = c;
    c2.codebook_size = 64;
    CHECK_THROWS_WITH_AS(check_tokens_fit(c2, tf, "x.h5"), doctest::Contains("codebook"), Error);
    c2 = c;
    c2.grid_h = 8;
    CHECK_THROWS_WITH_AS(check_tokens_fit(c2, tf, "x.h5"), doctest::Contains("grid"), Error);
    TokenFile bad = tf;
    bad.labels[3] = 7;
    CHECK_THROWS_WITH_AS(check_tokens_fit(c, bad, "x.h5"), doctest::Contains("label"), Error);
}
