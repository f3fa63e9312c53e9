"""The 2-D scatter plots of the sample grids on builtin:ring and builtin:grid."""

import subprocess
import sys

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.patches import Circle

from fastgan.data import builtin
from fastgan.plots import MODES, POINTS, points_figure, to_image
from fastgan.sampling import points_plot


def _pixel(img: np.ndarray, ax, xy) -> np.ndarray:
    x, y = ax.transData.transform(xy)
    return img[round(img.shape[0] - y), round(x)].astype(int)


def _near(pixel: np.ndarray, colour: str, tol: int = 10) -> bool:
    return bool((np.abs(pixel - np.array(to_rgb(colour)) * 255) <= tol).all())


def test_points_plot_is_an_image_of_the_size_asked():
    img = points_plot(np.random.default_rng(0).normal(size=(100, 2)), size=300)
    assert (img.size, img.mode) == ((300, 300), "RGB")


def test_points_figure_draws_the_points_and_the_modes_circles():
    ring = builtin.POINT_SETS["ring"]()
    pts = np.concatenate([ring.means[:3], [[np.nan, 0.0], [np.inf, 1.0]]])
    fig = points_figure(pts, ring.means, ring.std)
    (ax,) = fig.axes
    lim = 1.5 * np.abs(ring.means).max()
    assert np.allclose(ax.get_xlim(), (-lim, lim)) and np.allclose(ax.get_ylim(), (-lim, lim))
    assert ax.get_title() == "5 samples (2 off the plot), modes' 3-std circles"
    circles = [p for p in ax.patches if isinstance(p, Circle)]
    assert len(circles) == len(ring.means)
    assert np.allclose(sorted(c.center for c in circles), sorted(map(tuple, ring.means)))
    assert all(np.isclose(c.radius, 3 * ring.std) for c in circles)
    img = np.asarray(to_image(fig))
    assert img.shape == (512, 512, 3)
    m = ring.means[5]  # a mode without a point: its circle, red; its centre, white
    assert _near(_pixel(img, ax, m + [3 * ring.std, 0]), MODES)
    assert (_pixel(img, ax, m) == 255).all()
    assert _near(_pixel(img, ax, ring.means[0]), POINTS)


def test_points_figure_without_modes_frames_the_points():
    pts = np.array([[-2.0, 0.0], [1.0, 4.0]])
    (ax,) = points_figure(pts).axes
    assert np.allclose(ax.get_xlim(), (-4.4, 4.4), atol=1e-5) and not ax.patches
    assert ax.get_title() == "2 samples"


def test_training_does_not_load_matplotlib_until_it_plots():
    code = "import sys, fastgan.train.loop; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
