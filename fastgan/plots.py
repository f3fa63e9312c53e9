"""Figures drawn with matplotlib, rendered off-screen by its Agg backend into PIL images:
the 2-D scatter of G's samples (the sample grids of builtin:ring and builtin:grid) and
the panels of ``fastgan report``.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot: no global figure
registry and no display, so any process (a training rank, a headless machine) can draw.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from PIL import Image

DPI = 100
POINTS = "tab:blue"
MODES = "tab:red"


def new_figure(width: int, height: int, **kwargs) -> Figure:
    """A figure that renders to ``width`` x ``height`` pixels."""
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def to_image(fig: Figure) -> Image.Image:
    """The figure rendered as an RGB image (callers save it, or paste it elsewhere)."""
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")


def points_figure(points: np.ndarray, means: np.ndarray | None = None,
                  std: float | None = None, size: int = 512) -> Figure:
    """A scatter plot of 2-D points, with the true modes' 3-std circles. The view is
    centred on 0: half again the modes' extent, so that every plot of one dataset has one
    scale (points beyond it are off the plot), or without modes just past the points'."""
    pts = np.asarray(points, np.float64)
    finite = pts[np.isfinite(pts).all(axis=1)]
    if means is not None:
        lim = float(np.abs(means).max()) * 1.5 + 1e-6
    else:
        lim = float(np.abs(finite).max()) * 1.1 + 1e-6 if len(finite) else 1.0
    fig = new_figure(size, size, layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    off = int((~(np.abs(pts) < lim).all(axis=1)).sum())  # beyond the view, or not finite
    ax.set_title(f"{len(pts)} samples" + (f" ({off} off the plot)" if off else "")
                 + (", modes' 3-std circles" if means is not None else ""), fontsize="medium")
    if means is not None:
        for m in means:
            ax.add_patch(Circle(tuple(m), 3 * (std or 0), fill=False, edgecolor=MODES, lw=1.5))
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c=POINTS, linewidths=0)
    return fig
