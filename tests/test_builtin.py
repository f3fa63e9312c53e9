import math

import numpy as np
import pytest

from fastgan.data import builtin


def _real(n, res=32):
    pairs = [builtin.shapes_sample(i, res) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def test_shapes_are_deterministic_and_cover_16_modes():
    a, modes = _real(64)
    b, _ = _real(64)
    assert np.array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == (64, 32, 32, 3)
    assert set(modes.tolist()) == set(range(16))
    assert builtin.N_SHAPE_MODES >= 16
    # random placement and size within a mode: two images of one mode differ
    assert not np.array_equal(a[0], a[16])


@pytest.mark.parametrize("res", [8, 16])
def test_shapes_fit_small_resolutions(res):
    """At 8x8 the shapes leave no room for a border pixel: they touch the edge instead
    of failing to be placed (this raised in numpy before)."""
    images, modes = _real(64, res)
    assert images.shape == (64, res, res, 3) and set(modes.tolist()) == set(range(16))
    assert all((img != builtin.BACKGROUND).any() for img in images)  # a shape in each


@pytest.mark.parametrize("res", [32, 64])
def test_oracle_recognises_real_images(res):
    images, modes = _real(512, res)
    pred = builtin.classify_shapes(images)
    assert (pred == modes).mean() == 1.0
    # NCHW input gives the same answer
    assert np.array_equal(builtin.classify_shapes(images.transpose(0, 3, 1, 2)), pred)


def test_oracle_rejects_noise_blanks_and_mixtures():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    assert (builtin.classify_shapes(noise) == -1).all()
    blank = np.broadcast_to(np.array(builtin.BACKGROUND, np.uint8), (4, 32, 32, 3))
    assert (builtin.classify_shapes(blank) == -1).all()
    images, _ = _real(256)
    # two shapes of different colours in one image are not one mode
    mixed = np.maximum(images[:-1:2], images[1::2])
    assert (builtin.classify_shapes(mixed) >= 0).mean() < 0.1
    # a colour outside the palette is not recognised
    purple = images.copy()
    fg = np.abs(images.astype(int) - builtin.BACKGROUND).max(-1) > 60
    purple[fg] = (160, 40, 200)
    assert (builtin.classify_shapes(purple) >= 0).mean() < 0.05


def test_shape_mode_metrics():
    uniform = np.arange(1600) % 16
    m = builtin.shape_mode_metrics(uniform)
    assert m["modes_covered"] == 16 and m["recognisable"] == 1.0
    assert m["mode_kl"] == pytest.approx(0.0, abs=1e-9)
    collapsed = np.full(1600, 3)
    m = builtin.shape_mode_metrics(collapsed)
    assert m["modes_covered"] == 1 and m["mode_kl"] == pytest.approx(math.log(16))
    # a stray hit or two is not coverage; unrecognisable samples count against it
    labels = np.concatenate([np.full(1590, -1), np.arange(10)])
    m = builtin.shape_mode_metrics(labels)
    assert m["modes_covered"] == 0 and m["recognisable"] == pytest.approx(10 / 1600)


@pytest.mark.parametrize("name,modes", [("ring", 8), ("grid", 25)])
def test_point_sets_follow_pacgan(name, modes):
    pts = builtin.POINT_SETS[name]()
    assert len(np.unique(pts.means.round(6), axis=0)) == modes
    rng = np.random.default_rng(0)
    real = pts.sample(2500, rng)
    m = pts.metrics(real)
    assert m["modes_covered"] == modes and m["modes_total"] == modes
    # within 3 std in 2-D: 1 - exp(-4.5) = 98.9% of samples
    assert 0.98 < m["high_quality"] < 0.997
    collapsed = np.repeat(pts.means[:1], 2500, axis=0)
    assert pts.metrics(collapsed)["modes_covered"] == 1
    far = real + 10 * pts.std
    assert pts.metrics(far)["high_quality"] < 0.05


def test_ring_radius_and_std():
    ring = builtin.ring_set()
    assert np.allclose(np.linalg.norm(ring.means, axis=1), 1.0)
    assert ring.std == 0.01 and builtin.grid_set().std == 0.05
    assert set(builtin.grid_set().means.ravel().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
