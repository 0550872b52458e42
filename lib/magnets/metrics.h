// magnets/metrics.h: evaluation metrics on feature vectors (FD, KID, IS, precision/recall).
//
// All metrics take row-major float features [n, dim] (one row per sample) and
// compute in double. They are exact reimplementations of the usual reference
// code (pytorch-fid, the KID of Binkowski et al. 2018, the Inception Score of
// Salimans et al. 2016, improved precision/recall of Kynkaanniemi et al. 2019),
// tested against SciPy/NumPy (scripts/gen_metrics_fixture.py).
//
//   FeatureStats r = feature_stats(real.data(), nr, dim), g = feature_stats(gen.data(), ng, dim);
//   std::string warn;
//   double fd = frechet_distance(r, g, &warn);           // warn non-empty when n <= dim
//   KidResult kid = kernel_inception_distance(real.data(), nr, gen.data(), ng, dim);
//   PrecisionRecall pr = precision_recall(real.data(), nr, gen.data(), ng, dim);
//
// Bad input (empty sets, dims that differ, n < 2, non-finite values, k >= n)
// throws magnets::Error with a hint. Random subsets (KID) come from
// Philox(seed), and every parallel sum has a fixed order, so results are a pure
// function of the inputs and the seed, bitwise the same for any thread count.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace magnets {

// Mean and unbiased (n - 1) covariance of n feature rows, accumulated in double.
struct FeatureStats {
    int64_t n = 0, dim = 0;
    std::vector<double> mean; // [dim]
    std::vector<double> cov;  // [dim, dim], row-major, symmetric
};

// Needs n >= 2 and finite features (the error names the sample and feature).
FeatureStats feature_stats(const float* features, int64_t n, int64_t dim);

// Frechet distance between the Gaussians (mu1, S1) and (mu2, S2):
//     ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2),
// in double with symmetric eigendecompositions (Householder tridiagonalisation
// + implicit QL): S1 = V D V^T, then the eigenvalues of D^1/2 V^T S2 V D^1/2.
// Negative eigenvalues from round-off are clamped to 0, so singular covariances
// are handled without pytorch-fid's eps * I offset. Sets *warning (if non-null;
// cleared otherwise) when n <= dim for either set: the covariance is then
// singular and FD is biased and unreliable. Cost O(dim^3): about 1 s at dim
// 1024 and 10 s at dim 2048 on one core, less on several (OpenMP). The result
// is clamped at 0 (FD(x, x) is 0 up to round-off).
double frechet_distance(const FeatureStats& a, const FeatureStats& b, std::string* warning = nullptr);

// Kernel Inception Distance: the unbiased MMD^2 estimate with the cubic kernel
// k(x, y) = (x.y / dim + 1)^3, on `subsets` pairs of random subsets of size
// m = min(subset_size, na, nb) drawn without replacement (Philox(seed), one
// stream per set and subset). mean and std (population, ddof 0) are over the
// subsets. With subsets = 1 and subset_size >= na = nb it is the deterministic
// full-set estimate.
struct KidResult {
    double mean = 0, std = 0;
    int64_t subsets = 0, subset_size = 0; // as used (subset_size = m)
};
KidResult kernel_inception_distance(const float* a, int64_t na, const float* b, int64_t nb, int64_t dim,
                                    int64_t subsets = 100, int64_t subset_size = 1000, uint64_t seed = 1);

// Inception-Score analogue from class probabilities p(y|x) [n, classes] (rows
// sum to 1): for each of `splits` contiguous splits (rows [i n / splits,
// (i + 1) n / splits)), exp(mean_x KL(p(y|x) || p(y))) with p(y) the split's
// mean; mean and std (population, ddof 0) over splits. Terms with p = 0 count 0.
struct IsResult {
    double mean = 0, std = 0;
};
IsResult inception_score(const float* probs, int64_t n, int64_t classes, int64_t splits = 10);

// Improved precision and recall (Kynkaanniemi et al. 2019). Each sample's
// radius is the distance to its k-th nearest neighbour in its own set (itself
// excluded). precision = fraction of gen samples within the radius of at least
// one real sample; recall = fraction of real samples within the radius of at
// least one gen sample ("within" is <=). Exact pairwise Euclidean distances
// (squared differences summed in double), blocked and OpenMP-parallel:
// O((nr + ng)^2 dim). Needs k >= 1 and k < nr, ng.
struct PrecisionRecall {
    double precision = 0, recall = 0;
    int64_t k = 3;
};
PrecisionRecall precision_recall(const float* real, int64_t nr, const float* gen, int64_t ng, int64_t dim,
                                 int64_t k = 3);

} // namespace magnets
