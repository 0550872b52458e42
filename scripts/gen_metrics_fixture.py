#!/usr/bin/python3
"""SciPy/NumPy references for the feature metrics (tests/fixtures/metrics_fixture.h5).

Cases (float32 features, rows = samples), one group each:
  /well      dim 16, n 200 (a) and 300 (b), different means and covariances
  /lowrank   dim 32, n 300 / 250: features in a 20-dim subspace plus 1e-6 noise
             (covariances near-singular: 12 eigenvalues ~1e-12 of ~1)
  /fewer     dim 64, n 40 / 40: n < dim, covariances exactly singular (rank 39)
Each group holds a [na, dim], b [nb, dim] and attributes:
  fid_scipy      pytorch-fid's formula: sqrtm(sigma1 @ sigma2) (scipy.linalg.sqrtm),
                 real part, and only if that is not finite the eps * I offset (eps 1e-6)
                 on both covariances; fid_scipy_offset says whether the offset was used
                 (it is not, for any case here)
  fid_eig        independent float64 reference through symmetric eigendecompositions:
                 S1 = V D V^T, Tr sqrt of eigvalsh(D^1/2 V^T S2 V D^1/2), negatives clamped
  fid_mp         the same eigendecomposition formula in 40-digit arithmetic (mpmath) on the
                 exact float32 features: the truth both float64 references are measured against.
                 On /lowrank both are ~1e-7 off it (square roots of eigenvalues near 0 turn
                 eps * ||M|| round-off into ~1e-8 each), which bounds what double can reach
  kid_full       unbiased MMD^2, kernel (x.y/d + 1)^3, on a vs b[:n_kid] (n_kid = min(na, nb),
                 equal sizes so the full-set estimate is deterministic)
  pr_precision, pr_recall   improved precision/recall (k = 3) by brute force in float64
                 (a = real, b = gen); the generator checks that no distance lies within
                 1e-9 (relative) of a radius, so any exact summation order gives the same
                 counts
/is: probs [n 250, classes 10] float32 random softmax (some rows peaked), attributes
  is_mean, is_std for splits = 10 and is_mean_3, is_std_3 for splits = 3: contiguous
  splits rows [i n / s, (i + 1) n / s), exp(mean KL(p(y|x) || p(y))), population std.
/stats: mean and cov (float64, unbiased) of /well/a, for feature_stats.
Run:  /usr/bin/python3 scripts/gen_metrics_fixture.py [out.h5]
"""
import sys

import h5py
import mpmath as mp
import numpy as np
import scipy.linalg

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/metrics_fixture.h5"
rng = np.random.default_rng(20240607)


def stats(x):
    x = x.astype(np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def fid_scipy(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (v0.3), returning whether the offset was used."""
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(s1.dot(s2), disp=False)
    offset_used = False
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
        offset_used = True
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("imaginary component %g" % np.max(np.abs(covmean.imag)))
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)), offset_used


def fid_eig(mu1, s1, mu2, s2):
    d, v = np.linalg.eigh(s1)
    sq = np.sqrt(np.clip(d, 0, None))
    m = (v.T @ s2 @ v) * np.outer(sq, sq)
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def fid_mp(x1, x2, digits=40):
    """Exact-arithmetic check: stats and the eigen formula in mpmath at `digits` digits."""
    mp.mp.dps = digits

    def st(x):
        n, d = x.shape
        X = [[mp.mpf(float(v)) for v in row] for row in x]
        mu = [mp.fsum(X[k][j] for k in range(n)) / n for j in range(d)]
        C = mp.matrix(d, d)
        for i in range(d):
            for j in range(i, d):
                C[i, j] = C[j, i] = mp.fsum((X[k][i] - mu[i]) * (X[k][j] - mu[j]) for k in range(n)) / (n - 1)
        return mu, C

    m1, s1 = st(x1)
    m2, s2 = st(x2)
    d = s1.rows
    e, q = mp.eigsy(s1)
    sq = [mp.sqrt(max(e[i], 0)) for i in range(d)]
    m = q.T * s2 * q
    for i in range(d):
        for j in range(d):
            m[i, j] *= sq[i] * sq[j]
    lam, _ = mp.eigsy(m)
    fd = (mp.fsum((m1[i] - m2[i]) ** 2 for i in range(d)) + mp.fsum(s1[i, i] + s2[i, i] for i in range(d))
          - 2 * mp.fsum(mp.sqrt(max(lam[i], 0)) for i in range(d)))
    return float(fd)


def kid_full(x, y):
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    d = x.shape[1]
    m = x.shape[0]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.sum() / (m * m))


def sqdist(x, y):
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def precision_recall(real, gen, k=3):
    drr, dgg, drg = sqdist(real, real), sqdist(gen, gen), sqdist(real, gen)
    # k-th nearest neighbour excluding the point itself: index k of the sorted row (0 is itself).
    rr = np.sort(drr, axis=1)[:, k]
    rg = np.sort(dgg, axis=1)[:, k]
    gap = min(np.min(np.abs(drg - rr[:, None]) / rr[:, None]), np.min(np.abs(drg - rg[None, :]) / rg[None, :]))
    assert gap > 1e-9, "a distance lies on a radius (gap %g); change the seed" % gap
    precision = float((drg <= rr[:, None]).any(axis=0).mean())
    recall = float((drg <= rg[None, :]).any(axis=1).mean())
    return precision, recall


def gaussian(n, dim, mean, scale):
    a = rng.standard_normal((dim, dim)) * scale / np.sqrt(dim)
    return (rng.standard_normal((n, dim)) @ a + mean).astype(np.float32)


cases = {
    "well": (gaussian(200, 16, 0.0, 1.0), gaussian(300, 16, 0.3, 1.5)),
    "lowrank": None,
    "fewer": (gaussian(40, 64, 0.0, 1.0), gaussian(40, 64, 0.2, 1.2)),
}
# Both low-rank sets share the 20-dim subspace (same basis), so S1 S2 is
# near-singular in the same 12 directions.
basis = rng.standard_normal((20, 32)) / np.sqrt(20)
za = rng.standard_normal((300, 20)) @ basis
zb = (rng.standard_normal((250, 20)) * 1.3) @ basis + 0.25 * basis[0]
cases["lowrank"] = ((za + 1e-6 * rng.standard_normal(za.shape)).astype(np.float32),
                    (zb + 1e-6 * rng.standard_normal(zb.shape)).astype(np.float32))

with h5py.File(out, "w") as f:
    for name, (a, b) in cases.items():
        g = f.create_group(name)
        g.create_dataset("a", data=a)
        g.create_dataset("b", data=b)
        mu1, s1 = stats(a)
        mu2, s2 = stats(b)
        fs, off = fid_scipy(mu1, s1, mu2, s2)
        fe = fid_eig(mu1, s1, mu2, s2)
        fm = fid_mp(a, b)
        n_kid = min(len(a), len(b))
        kid = kid_full(a[:n_kid], b[:n_kid])
        p, r = precision_recall(a, b)
        g.attrs.update(dict(fid_scipy=fs, fid_scipy_offset=int(off), fid_eig=fe, fid_mp=fm, kid_full=kid, n_kid=n_kid,
                            pr_precision=p, pr_recall=r, pr_k=3))
        print("%-8s dim %3d n %d/%d  FD mp %.12g, rel err scipy %.2e eig %.2e (offset %s)  KID %.9g  P %.4f R %.4f"
              % (name, a.shape[1], len(a), len(b), fm, abs(fs - fm) / fm, abs(fe - fm) / fm, off, kid, p, r))
    mu, cov = stats(cases["well"][0])
    f.create_dataset("stats/mean", data=mu)
    f.create_dataset("stats/cov", data=cov)

    n, c = 250, 10
    logits = rng.standard_normal((n, c)) * 2.0
    logits[::3] *= 4  # some confident rows
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    g = f.create_group("is")
    g.create_dataset("probs", data=p)
    for splits, suffix in ((10, ""), (3, "_3")):
        pd = p.astype(np.float64)
        scores = []
        for i in range(splits):
            part = pd[i * n // splits:(i + 1) * n // splits]
            py = part.mean(0, keepdims=True)
            kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1)) - np.log(py)), 0).sum(1).mean()
            scores.append(np.exp(kl))
        g.attrs["is_mean" + suffix] = float(np.mean(scores))
        g.attrs["is_std" + suffix] = float(np.std(scores))
        print("IS splits %d: %.12g +- %.6g" % (splits, np.mean(scores), np.std(scores)))
print("wrote", out)
