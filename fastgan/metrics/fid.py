"""Fréchet and kernel distances between two sets of feature vectors (FID, KID).

Statistics stream: :class:`FeatureStats` keeps a running mean and scatter matrix in
float64, updated batch by batch and merged across ranks with Chan's parallel formula,
which stays accurate where the textbook ``sum(x x^T) - n mu mu^T`` loses digits to
cancellation.

The Fréchet distance needs ``tr sqrt(S1 S2)``. The usual code (``scipy.linalg.sqrtm``
of the non-symmetric product, then discarding imaginary parts, or retrying with
``eps`` added to the diagonals) is fragile when a covariance is singular, as it is
whenever there are fewer samples than dimensions. Here: ``tr sqrt(S1 S2)`` equals
``tr sqrt(R S2 R)`` with ``R = sqrt(S1)``, a symmetric positive semi-definite matrix,
so two symmetric eigendecompositions give it, with round-off eigenvalues below zero
taken as zero. No inverse, no complex numbers, no fudge factor; what round-off
leaves is below ``dim * eps * |S|`` per eigenvalue.
"""

from __future__ import annotations

import numpy as np


class FeatureStats:
    """Running count, mean and scatter (sum of centred outer products) of features;
    optionally the first ``keep`` feature vectors themselves (what KID needs)."""

    def __init__(self, dim: int, keep: int = 0):
        self.dim, self.keep = dim, keep
        self.n = 0
        self.mean = np.zeros(dim, np.float64)
        self.scatter = np.zeros((dim, dim), np.float64)
        self.kept: list[np.ndarray] = []
        self._kept_n = 0

    def add(self, feats) -> None:
        x = np.asarray(feats, np.float64).reshape(-1, self.dim)
        if not len(x):
            return
        if not np.isfinite(x).all():
            raise ValueError("non-finite feature values")
        mean = x.mean(axis=0)
        centred = x - mean
        self._merge(len(x), mean, centred.T @ centred)
        if self._kept_n < self.keep:
            take = x[: self.keep - self._kept_n].astype(np.float32)
            self.kept.append(take)
            self._kept_n += len(take)

    def _merge(self, n: int, mean: np.ndarray, scatter: np.ndarray) -> None:
        total = self.n + n
        delta = mean - self.mean
        self.scatter += scatter + np.outer(delta, delta) * (self.n * n / total)
        self.mean += delta * (n / total)
        self.n = total

    def merge(self, other: FeatureStats) -> None:
        """Fold in another set's statistics (another rank's, say); kept vectors are
        appended up to ``keep``."""
        if other.n:
            self._merge(other.n, other.mean, other.scatter)
        for x in other.kept:
            if self._kept_n >= self.keep:
                break
            take = x[: self.keep - self._kept_n]
            self.kept.append(take)
            self._kept_n += len(take)

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        return self.scatter / (self.n - 1)

    def features(self) -> np.ndarray:
        return (np.concatenate(self.kept) if self.kept
                else np.zeros((0, self.dim), np.float32))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays: for ``np.savez`` (no pickle) and for gathering across ranks."""
        return {"n": np.array(self.n), "mean": self.mean, "scatter": self.scatter,
                "keep": np.array(self.keep), "features": self.features()}

    @classmethod
    def from_arrays(cls, a) -> FeatureStats:
        s = cls(int(a["mean"].shape[0]), keep=int(a["keep"]))
        s.n, s.mean, s.scatter = int(a["n"]), np.array(a["mean"]), np.array(a["scatter"])
        feats = np.asarray(a["features"], np.float32)
        s.kept, s._kept_n = ([feats] if len(feats) else []), len(feats)
        return s


def _psd_eigen_roots(w: np.ndarray) -> np.ndarray:
    """Square roots of a PSD matrix's computed eigenvalues, those within round-off of
    zero (numpy's matrix-rank tolerance) taken as zero: a square root turns round-off
    of 1e-14 into 1e-7, and a rank-deficient covariance has thousands of such zeros."""
    tol = max(float(w.max()), 0.0) * len(w) * np.finfo(np.float64).eps
    return np.sqrt(np.where(w > tol, w, 0.0))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * _psd_eigen_roots(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape} and {mu2.shape}, "
                         f"covariances {s1.shape} and {s2.shape}")
    root = _sqrt_psd(s1)
    inner = root @ s2 @ root
    tr_covmean = float(_psd_eigen_roots(np.linalg.eigvalsh((inner + inner.T) / 2)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return max(value, 0.0)  # round-off can leave -1e-12 where the sets are equal


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def kernel_distance(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al., 2018): the unbiased MMD^2 estimate with the cubic
    polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over ``subsets`` random
    subsets of ``min(subset_size, |real|, |fake|)`` vectors of each set (the protocol
    of NVlabs' and torch-fidelity's KID). Returns (mean, standard deviation)."""
    x_all = np.asarray(real, np.float64)
    y_all = np.asarray(fake, np.float64)
    m = min(subset_size, len(x_all), len(y_all))
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got "
                         f"{len(x_all)} real and {len(y_all)} generated")
    d = x_all.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2 * kxy.mean()
    return float(values.mean()), float(values.std())
