// Feature metrics (lib/eval/metrics.cpp) against SciPy/NumPy references
// (scripts/gen_metrics_fixture.py), closed forms, and bad input.
#include <doctest.h>

#include "test_util.h"

#include "magnets/error.h"
#include "magnets/metrics.h"
#include "magnets/rng.h"

#include <hdf5.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <cmath>
#include <limits>
#include <string>
#include <vector>

using namespace magnets;

namespace {

const std::string fixture = std::string(MAGNETS_FIXTURES) + "/metrics_fixture.h5";

// Reads a whole dataset; dims (if non-null) gets its shape.
template <class T> std::vector<T> read_ds(const std::string& name, hid_t type, std::vector<hsize_t>* dims = nullptr) {
    hid_t f = H5Fopen(fixture.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    REQUIRE(f >= 0);
    hid_t d = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
    REQUIRE_MESSAGE(d >= 0, name);
    hid_t s = H5Dget_space(d);
    const hssize_t n = H5Sget_simple_extent_npoints(s);
    if (dims) {
        dims->resize(static_cast<size_t>(H5Sget_simple_extent_ndims(s)));
        H5Sget_simple_extent_dims(s, dims->data(), nullptr);
    }
    std::vector<T> v(static_cast<size_t>(n));
    REQUIRE(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0);
    H5Sclose(s); H5Dclose(d); H5Fclose(f);
    return v;
}

// A numeric attribute of a group, as double.
double attr(const std::string& group, const std::string& name) {
    hid_t f = H5Fopen(fixture.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    REQUIRE(f >= 0);
    hid_t a = H5Aopen_by_name(f, group.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE_MESSAGE(a >= 0, std::string(group + "@" + name));
    double v = 0;
    REQUIRE(H5Aread(a, H5T_NATIVE_DOUBLE, &v) >= 0);
    H5Aclose(a); H5Fclose(f);
    return v;
}

struct Features {
    std::vector<float> x;
    int64_t n = 0, dim = 0;
};
Features features(const std::string& name) {
    Features f;
    std::vector<hsize_t> dims;
    f.x = read_ds<float>(name, H5T_NATIVE_FLOAT, &dims);
    REQUIRE(dims.size() == 2);
    f.n = static_cast<int64_t>(dims[0]);
    f.dim = static_cast<int64_t>(dims[1]);
    return f;
}

double rel(double got, double want) { return std::abs(got - want) / std::max(std::abs(want), 1e-300); }

// Random orthogonal matrix (Gram-Schmidt twice on Philox normals), row-major.
std::vector<double> random_orthogonal(int64_t n, uint64_t seed) {
    Philox rng(seed);
    std::vector<double> q(static_cast<size_t>(n * n));
    for (int64_t i = 0; i < n * n; ++i) q[i] = rng.normal(0, static_cast<uint64_t>(i));
    for (int64_t i = 0; i < n; ++i)
        for (int pass = 0; pass < 2; ++pass) {
            for (int64_t j = 0; j < i; ++j) {
                double dot = 0;
                for (int64_t t = 0; t < n; ++t) dot += q[i * n + t] * q[j * n + t];
                for (int64_t t = 0; t < n; ++t) q[i * n + t] -= dot * q[j * n + t];
            }
            double nrm = 0;
            for (int64_t t = 0; t < n; ++t) nrm += q[i * n + t] * q[i * n + t];
            nrm = std::sqrt(nrm);
            for (int64_t t = 0; t < n; ++t) q[i * n + t] /= nrm;
        }
    return q;
}

// Stats with cov = Q^T diag(ev) Q (rows of Q are the eigenvectors).
FeatureStats stats_from_eig(const std::vector<double>& q, const std::vector<double>& ev, const std::vector<double>& mean) {
    const int64_t n = static_cast<int64_t>(ev.size());
    FeatureStats s;
    s.n = 10 * n;
    s.dim = n;
    s.mean = mean;
    s.cov.assign(static_cast<size_t>(n * n), 0.0);
    for (int64_t k = 0; k < n; ++k)
        for (int64_t i = 0; i < n; ++i) {
            const double a = ev[k] * q[k * n + i];
            for (int64_t j = 0; j < n; ++j) s.cov[i * n + j] += a * q[k * n + j];
        }
    return s;
}

// Runs f, requires a magnets::Error whose message contains `needle` and which has a hint.
template <class F> void require_error(F&& f, const std::string& needle) {
    try {
        f();
        FAIL("no error thrown, expected one containing: " << needle);
    } catch (const Error& e) {
        CAPTURE(e.what());
        CHECK(std::string(e.what()).find(needle) != std::string::npos);
        CHECK(!e.hint().empty());
    }
}

} // namespace

TEST_CASE("feature_stats: mean and unbiased covariance match NumPy") {
    const Features a = features("well/a");
    const FeatureStats s = feature_stats(a.x.data(), a.n, a.dim);
    const std::vector<double> mean = read_ds<double>("stats/mean", H5T_NATIVE_DOUBLE);
    const std::vector<double> cov = read_ds<double>("stats/cov", H5T_NATIVE_DOUBLE);
    REQUIRE(s.n == a.n);
    REQUIRE(s.dim == a.dim);
    REQUIRE(s.mean.size() == mean.size());
    REQUIRE(s.cov.size() == cov.size());
    for (size_t i = 0; i < mean.size(); ++i) CHECK(std::abs(s.mean[i] - mean[i]) < 1e-12);
    for (size_t i = 0; i < cov.size(); ++i) CHECK(std::abs(s.cov[i] - cov[i]) < 1e-12);
}

TEST_CASE("feature_stats: many rows (chunked) match a direct two-pass computation") {
    const int64_t n = 5000, d = 5;
    Philox rng(4);
    std::vector<float> x(static_cast<size_t>(n * d));
    for (int64_t i = 0; i < n * d; ++i) x[i] = 3.0f + rng.normal(0, static_cast<uint64_t>(i)) * static_cast<float>(1 + i % d);
    const FeatureStats s = feature_stats(x.data(), n, d);
    for (int64_t a = 0; a < d; ++a) {
        double m = 0;
        for (int64_t i = 0; i < n; ++i) m += x[i * d + a];
        m /= n;
        CHECK(std::abs(s.mean[a] - m) < 1e-12);
    }
    for (int64_t a = 0; a < d; ++a)
        for (int64_t b = 0; b < d; ++b) {
            double c = 0;
            for (int64_t i = 0; i < n; ++i) c += (x[i * d + a] - s.mean[a]) * (x[i * d + b] - s.mean[b]);
            c /= n - 1;
            CHECK(std::abs(s.cov[a * d + b] - c) < 1e-12 * (1 + std::abs(c)));
            CHECK(s.cov[a * d + b] == s.cov[b * d + a]);
        }
}

// Tolerances: on the well-conditioned case SciPy, the eigen reference and the
// 40-digit mpmath value agree to 1e-13. On the near-singular cases no double
// computation does better than ~1e-7: eigenvalues of S1^1/2 S2 S1^1/2 near 0
// carry round-off ~eps ||M|| whose square roots are ~1e-8 each (the generator
// measures SciPy 1.1e-7 and the eigen reference 9e-8 off the mpmath value on
// /lowrank), so there we compare within 1e-6 to SciPy, the eigen reference and
// the mpmath truth alike. SciPy's sqrtm is used as is (pytorch-fid's eps * I
// offset is never triggered here: fid_scipy_offset = 0).
TEST_CASE("frechet_distance matches SciPy (pytorch-fid formula) and a 40-digit reference") {
    for (const std::string name : {"well", "lowrank", "fewer"}) {
        CAPTURE(name);
        const Features a = features(name + "/a"), b = features(name + "/b");
        const FeatureStats sa = feature_stats(a.x.data(), a.n, a.dim), sb = feature_stats(b.x.data(), b.n, b.dim);
        std::string warning = "stale";
        const double fd = frechet_distance(sa, sb, &warning);
        CHECK(attr(name, "fid_scipy_offset") == 0);
        const double tol = name == "well" ? 1e-10 : 1e-6;
        CHECK(rel(fd, attr(name, "fid_scipy")) < tol);
        CHECK(rel(fd, attr(name, "fid_eig")) < tol);
        CHECK(rel(fd, attr(name, "fid_mp")) < tol);
        // n <= dim only for /fewer (dim 64, n 40).
        if (name == "fewer") {
            CHECK(warning.find("fewer samples than feature dimensions") != std::string::npos);
        } else {
            CHECK(warning.empty());
        }
        // Symmetric in its arguments.
        CHECK(rel(frechet_distance(sb, sa), fd) < (name == "well" ? 1e-10 : 1e-6));
        // Same set: 0 up to round-off (relative to the trace).
        double tr = 0;
        for (int64_t i = 0; i < sa.dim; ++i) tr += sa.cov[i * sa.dim + i];
        const double self = frechet_distance(sa, sa);
        CHECK(self >= 0);
        CHECK(self < 1e-6 * tr);
    }
}

// Commuting covariances (shared eigenvectors): FD = |mu1 - mu2|^2 + sum (sqrt a_i - sqrt b_i)^2.
// Sizes that exercise padding, the parallel paths and repeated eigenvalues.
// With positive spectra (>= 0.1) we expect 1e-9. With exact zero eigenvalues
// in S1 the covariance assembled in double has round-off eigenvalues ~eps
// there, and sqrt(eps * b) ~ 1e-8 per zero enters the trace, so 1e-6 (the
// same limit as the near-singular fixture cases).
TEST_CASE("frechet_distance matches the closed form for commuting covariances") {
    for (const bool zeros : {false, true}) {
        for (int64_t n : {1, 2, 3, 7, 130, 203}) {
            CAPTURE(zeros);
            CAPTURE(n);
            const std::vector<double> q = random_orthogonal(n, 7 + static_cast<uint64_t>(n));
            Philox rng(99);
            std::vector<double> ea(static_cast<size_t>(n)), eb(static_cast<size_t>(n)), ma(static_cast<size_t>(n)),
                mb(static_cast<size_t>(n));
            double want = 0;
            for (int64_t i = 0; i < n; ++i) {
                ea[i] = zeros && i % 5 == 0 ? 0.0 : 0.1 + 3 * rng.uniform_double(1, static_cast<uint64_t>(i));
                eb[i] = i % 7 == 0 ? 2.0 : 0.1 + 3 * rng.uniform_double(2, static_cast<uint64_t>(i)); // repeated
                ma[i] = rng.normal(3, static_cast<uint64_t>(i));
                mb[i] = ma[i] + 0.1 * rng.normal(4, static_cast<uint64_t>(i));
                want += (ma[i] - mb[i]) * (ma[i] - mb[i]) + std::pow(std::sqrt(ea[i]) - std::sqrt(eb[i]), 2);
            }
            const FeatureStats sa = stats_from_eig(q, ea, ma), sb = stats_from_eig(q, eb, mb);
            std::string warning;
            CHECK(rel(frechet_distance(sa, sb, &warning), want) < (zeros ? 1e-6 : 1e-9));
            CHECK(warning.empty());
        }
    }
    // Isotropic: S1 = I, S2 = 4 I (all eigenvalues equal), same means: FD = dim.
    FeatureStats a, b;
    a.n = b.n = 1000;
    a.dim = b.dim = 50;
    a.mean.assign(50, 0.0);
    b.mean.assign(50, 0.0);
    a.cov.assign(2500, 0.0);
    b.cov.assign(2500, 0.0);
    for (int i = 0; i < 50; ++i) { a.cov[i * 51] = 1; b.cov[i * 51] = 4; }
    CHECK(rel(frechet_distance(a, b), 50.0) < 1e-12);
}

TEST_CASE("KID: full-set unbiased MMD^2 matches NumPy; subset mode is deterministic in the seed") {
    for (const std::string name : {"well", "lowrank", "fewer"}) {
        CAPTURE(name);
        const Features a = features(name + "/a"), b = features(name + "/b");
        const int64_t m = static_cast<int64_t>(attr(name, "n_kid"));
        REQUIRE(m <= std::min(a.n, b.n));
        // a's first m rows vs b's first m rows; subset_size >= m: every subset is the whole set.
        const KidResult r = kernel_inception_distance(a.x.data(), m, b.x.data(), m, a.dim, 1, 100000, 5);
        CHECK(r.subsets == 1);
        CHECK(r.subset_size == m);
        CHECK(r.std == 0);
        CHECK(rel(r.mean, attr(name, "kid_full")) < 1e-9);
    }
    const Features a = features("well/a"), b = features("well/b");
    const KidResult r1 = kernel_inception_distance(a.x.data(), a.n, b.x.data(), b.n, a.dim, 6, 50, 11);
    const KidResult r2 = kernel_inception_distance(a.x.data(), a.n, b.x.data(), b.n, a.dim, 6, 50, 11);
    const KidResult r3 = kernel_inception_distance(a.x.data(), a.n, b.x.data(), b.n, a.dim, 6, 50, 12);
    CHECK(r1.subsets == 6);
    CHECK(r1.subset_size == 50);
    CHECK(r1.mean == r2.mean);
    CHECK(r1.std == r2.std);
    CHECK(r1.mean != r3.mean);
    CHECK(r1.std > 0);
    // Subset estimates scatter around the full-set value (0.4 is ~5 sigma here).
    CHECK(std::abs(r1.mean - attr("well", "kid_full")) < 0.4);
    // A set against itself (disjoint random halves) is ~0 in expectation.
    const KidResult self = kernel_inception_distance(a.x.data(), a.n, a.x.data(), a.n, a.dim, 10, 80, 3);
    CHECK(std::abs(self.mean) < 0.1 * std::abs(r1.mean));
}

TEST_CASE("inception_score matches NumPy and the closed forms") {
    std::vector<hsize_t> dims;
    const std::vector<float> p = read_ds<float>("is/probs", H5T_NATIVE_FLOAT, &dims);
    const int64_t n = static_cast<int64_t>(dims[0]), c = static_cast<int64_t>(dims[1]);
    const IsResult r10 = inception_score(p.data(), n, c, 10), r3 = inception_score(p.data(), n, c, 3);
    CHECK(rel(r10.mean, attr("is", "is_mean")) < 1e-9);
    CHECK(rel(r10.std, attr("is", "is_std")) < 1e-9);
    CHECK(rel(r3.mean, attr("is", "is_mean_3")) < 1e-9);
    CHECK(rel(r3.std, attr("is", "is_std_3")) < 1e-9);
    // Confident and balanced over C classes: IS = C. Uniform p(y|x): IS = 1.
    std::vector<float> onehot(40 * 4, 0.0f), uniform(40 * 4, 0.25f);
    for (int i = 0; i < 40; ++i) onehot[i * 4 + i % 4] = 1.0f;
    const IsResult r = inception_score(onehot.data(), 40, 4, 2);
    CHECK(std::abs(r.mean - 4.0) < 1e-12);
    CHECK(r.std < 1e-12);
    CHECK(std::abs(inception_score(uniform.data(), 40, 4, 1).mean - 1.0) < 1e-12);
}

TEST_CASE("precision_recall matches the NumPy brute force exactly") {
    for (const std::string name : {"well", "lowrank", "fewer"}) {
        CAPTURE(name);
        const Features a = features(name + "/a"), b = features(name + "/b");
        const PrecisionRecall pr = precision_recall(a.x.data(), a.n, b.x.data(), b.n, a.dim, 3);
        CHECK(pr.k == 3);
        // Both are counts / n: equal as doubles when the counts agree.
        CHECK(pr.precision == attr(name, "pr_precision"));
        CHECK(pr.recall == attr(name, "pr_recall"));
        const PrecisionRecall same = precision_recall(a.x.data(), a.n, a.x.data(), a.n, a.dim, 3);
        CHECK(same.precision == 1.0);
        CHECK(same.recall == 1.0);
    }
}

TEST_CASE("metrics reject bad input with a hint") {
    const std::vector<float> x(20 * 4, 0.5f);
    std::vector<float> y(20 * 4);
    for (size_t i = 0; i < y.size(); ++i) y[i] = static_cast<float>(i % 7);
    require_error([&] { feature_stats(x.data(), 0, 4); }, "empty feature set");
    require_error([&] { feature_stats(x.data(), 1, 4); }, "too few samples");
    std::vector<float> bad = y;
    bad[3 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
    require_error([&] { feature_stats(bad.data(), 20, 4); }, "sample 3, feature 2");
    require_error([&] { precision_recall(y.data(), 20, bad.data(), 20, 4); }, "set 'gen'");
    require_error([&] { kernel_inception_distance(bad.data(), 20, y.data(), 20, 4); }, "set 'a'");
    bad[3 * 4 + 2] = std::numeric_limits<float>::infinity();
    require_error([&] { precision_recall(bad.data(), 20, y.data(), 20, 4); }, "set 'real'");

    const FeatureStats s4 = feature_stats(y.data(), 20, 4), s2 = feature_stats(y.data(), 40, 2);
    require_error([&] { frechet_distance(s4, s2); }, "feature dimensions differ");
    require_error([&] { frechet_distance(FeatureStats{}, s4); }, "too few samples");
    FeatureStats broken = s4;
    broken.cov.pop_back();
    require_error([&] { frechet_distance(s4, broken); }, "malformed feature statistics");
    broken = s4;
    broken.cov[5] = std::numeric_limits<double>::quiet_NaN();
    require_error([&] { frechet_distance(broken, s4); }, "non-finite covariance");

    require_error([&] { kernel_inception_distance(y.data(), 0, y.data(), 20, 4); }, "empty feature set");
    require_error([&] { kernel_inception_distance(y.data(), 1, y.data(), 20, 4); }, "too few samples");
    require_error([&] { kernel_inception_distance(y.data(), 20, y.data(), 20, 4, 0); }, "subset count");
    require_error([&] { kernel_inception_distance(y.data(), 20, y.data(), 20, 4, 10, 1); }, "subset size");

    require_error([&] { precision_recall(y.data(), 3, y.data(), 20, 4, 3); }, "k too large");
    require_error([&] { precision_recall(y.data(), 20, y.data(), 0, 4, 3); }, "empty feature set");
    require_error([&] { precision_recall(y.data(), 20, y.data(), 20, 4, 0); }, "bad k");

    std::vector<float> probs(10 * 3, 1.0f / 3);
    require_error([&] { inception_score(probs.data(), 10, 3, 11); }, "split count");
    require_error([&] { inception_score(probs.data(), 0, 3, 1); }, "empty feature set");
    probs[4] = -0.1f;
    require_error([&] { inception_score(probs.data(), 10, 3, 2); }, "negative class probability");
    probs[4] = 2.0f;
    require_error([&] { inception_score(probs.data(), 10, 3, 2); }, "do not sum to 1");
}

#ifdef _OPENMP
TEST_CASE("metrics are bitwise independent of the thread count") {
    const int64_t n = 300, d = 137;
    Philox rng(8);
    std::vector<float> a(static_cast<size_t>(n * d)), b(static_cast<size_t>(n * d));
    for (int64_t i = 0; i < n * d; ++i) {
        a[i] = rng.normal(0, static_cast<uint64_t>(i));
        b[i] = 1.2f * rng.normal(1, static_cast<uint64_t>(i)) + 0.1f;
    }
    struct Out { double fd, kid, kid_std, p, r; std::vector<double> cov; };
    auto run = [&] {
        const FeatureStats sa = feature_stats(a.data(), n, d), sb = feature_stats(b.data(), n, d);
        const KidResult k = kernel_inception_distance(a.data(), n, b.data(), n, d, 3, 200, 9);
        const PrecisionRecall pr = precision_recall(a.data(), n, b.data(), n, d, 3);
        return Out{frechet_distance(sa, sb), k.mean, k.std, pr.precision, pr.recall, sa.cov};
    };
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const Out one = run();
    omp_set_num_threads(3);
    const Out three = run();
    omp_set_num_threads(saved);
    CHECK(one.fd == three.fd);
    CHECK(one.kid == three.kid);
    CHECK(one.kid_std == three.kid_std);
    CHECK(one.p == three.p);
    CHECK(one.r == three.r);
    CHECK(one.cov == three.cov);
}
#endif
