"""The Fréchet and kernel distances: exact where the answer is known analytically."""

import numpy as np
import pytest
import torch

from fastgan.metrics import fid


def _stats(x, keep=0):
    s = fid.FeatureStats(x.shape[1], keep=keep)
    s.add(x)
    return s


def test_identical_sets_are_at_distance_zero():
    x = np.random.default_rng(0).normal(size=(3000, 64)) * 3 + 1
    s = _stats(x)
    d = fid.fid_from_stats(s, s)
    assert 0 <= d < 1e-8 * np.trace(s.cov)


@pytest.mark.slow  # the square root of a 2048x2048 covariance (~10-17 s)
def test_identical_sets_with_fewer_samples_than_dimensions():
    # the covariance has rank 199 of 2048, as Inception features of a small set do
    x = np.abs(np.random.default_rng(1).normal(size=(200, 2048))).astype(np.float32)
    s = _stats(x)
    assert fid.fid_from_stats(s, s) < 1e-6 * np.trace(s.cov)


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    a, b = rng.uniform(0.1, 4, 16), rng.uniform(0.1, 4, 16)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_non_commuting_2x2_covariances_match_the_closed_form():
    # for 2x2 matrices, tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    tr_root = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_root
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_near_singular_covariance():
    # S1 of rank 5 in 512 dimensions with eigenvalues spread over 1e-6..1e2, S2 = c^2 S1:
    # FD = (1 - c)^2 tr(S1) exactly (to what float64 keeps of the 1e-6 direction); code
    # built on scipy's sqrtm of S1 S2 returns complex parts here
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(512, 5)))
    s1 = (q * np.array([1e2, 1.0, 1e-2, 1e-4, 1e-6])) @ q.T
    c = 1.7
    mu = rng.normal(size=512)
    expected = (1 - c) ** 2 * np.trace(s1)
    got = fid.frechet_distance(mu, s1, mu, c * c * s1)
    assert got == pytest.approx(expected, rel=1e-7)
    assert fid.frechet_distance(mu, s1, mu, s1) < 1e-7 * np.trace(s1)


def test_streamed_statistics_equal_the_batch_ones_and_merge_across_parts():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 8)) * 1e-3 + 1e4  # a large mean: cancellation-prone
    whole = _stats(x)
    parts = [fid.FeatureStats(8, keep=10) for _ in range(3)]
    for i, chunk in enumerate(np.array_split(x, 7)):
        parts[i % 3].add(chunk)
    merged = fid.FeatureStats(8, keep=10)
    for p in parts:
        merged.merge(fid.FeatureStats.from_arrays(p.to_arrays()))
    assert merged.n == 1000
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(merged.cov, np.cov(x, rowvar=False), rtol=1e-7, atol=1e-14)
    np.testing.assert_allclose(whole.cov, np.cov(x, rowvar=False), rtol=1e-7, atol=1e-14)
    assert merged.features().shape == (10, 8)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2000, 32)), rng.normal(size=(2000, 32))
    same, same_std = fid.kernel_distance(a, b, subsets=20, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3
    shifted, _ = fid.kernel_distance(a, b + 0.5, subsets=20, subset_size=500)
    assert shifted > 10 * abs(same) and shifted > 0.01


def test_nonfinite_features_are_refused():
    s = fid.FeatureStats(4)
    with pytest.raises(ValueError, match="non-finite"):
        s.add(torch.tensor([[0.0, float("nan"), 1.0, 2.0]]))
