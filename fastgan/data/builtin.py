"""The embedded datasets: generators, oracles and mode metrics.

Three datasets ship with fastgan, generated deterministically (no downloads):

* ``shapes``: small colour images of one shape on a dark background. 4 shapes x 4
  colours = 16 discrete modes, with random position and size inside each mode. An
  oracle assigns any image (real or generated) to a mode or to "unrecognisable", so
  mode coverage, the classic symptom of mode collapse, can be measured exactly.
* ``ring``: 2-D points from 8 Gaussians on a circle of radius 1, std 0.01.
* ``grid``: 2-D points from 25 Gaussians on {-4,-2,0,2,4}^2, std 0.05.

The 2-D datasets follow the PacGAN protocol: over 2,500 generated points a mode is
captured when at least one point lies within 3 std of its mean, and a point is of high
quality when it lies within 3 std of the nearest mean.

Image datasets are written once as WebDataset shards (see :mod:`fastgan.data.shards`)
and then streamed like any user dataset.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------- shapes

SHAPES = ("circle", "square", "triangle", "plus")
COLOURS = {
    "red": (225, 45, 45),
    "green": (40, 200, 70),
    "blue": (55, 95, 240),
    "yellow": (235, 215, 40),
}
BACKGROUND = (22, 22, 30)
N_SHAPE_MODES = len(SHAPES) * len(COLOURS)
PLUS_HALF_THICKNESS = 0.36  # arm half-width of the plus, in units of its half-size

# Size of a shape (full side of its bounding square) as a fraction of the image side.
SIZE_RANGE = (0.55, 0.8)
SHAPES_COUNT = 16 * 1024  # images in the embedded dataset, 1,024 per mode
SHAPES_VERSION = 2  # bump when the drawing changes, so that caches are rebuilt


def shape_mode_name(mode: int) -> str:
    """'red circle' for a mode index; 'unrecognisable' for -1."""
    if mode < 0:
        return "unrecognisable"
    shape, colour = divmod(mode, len(COLOURS))
    return f"{list(COLOURS)[colour]} {SHAPES[shape]}"


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in the unit shape spanning [-1, 1]^2 (v points down).

    The same definition draws the dataset and builds the oracle's templates.
    """
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":  # apex up
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    if shape == "plus":
        t = PLUS_HALF_THICKNESS
        au, av = np.abs(u), np.abs(v)
        return ((au <= t) & (av <= 1.0)) | ((av <= t) & (au <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(res: int, shape: str, colour: tuple[int, int, int], cx: float, cy: float,
               half: float, supersample: int = 4) -> np.ndarray:
    """One anti-aliased image, uint8 HxWx3; (cx, cy, half) in pixels of the output."""
    big = res * supersample
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float32)
    u = ((xs + 0.5) / supersample - cx) / half
    v = ((ys + 0.5) / supersample - cy) / half
    mask = _inside(shape, u, v).astype(np.float32)
    # Box-filter the supersampled mask down to coverage, then blend over the background.
    cover = mask.reshape(res, supersample, res, supersample).mean(axis=(1, 3))[..., None]
    bg = np.asarray(BACKGROUND, np.float32)
    fg = np.asarray(colour, np.float32)
    return np.rint(bg + (fg - bg) * cover).astype(np.uint8)


def shapes_sample(index: int, res: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Image number ``index`` of the shapes dataset and its mode (deterministic)."""
    rng = np.random.default_rng([seed, SHAPES_VERSION, res, index])
    mode = index % N_SHAPE_MODES
    shape_i, colour_i = divmod(mode, len(COLOURS))
    half = rng.uniform(*SIZE_RANGE) * res / 2
    margin = min(half + 1.0, res / 2)  # a pixel of border, where the image has room for it
    cx, cy = rng.uniform(margin, res - margin, size=2)
    image = draw_shape(res, SHAPES[shape_i], list(COLOURS.values())[colour_i], cx, cy, half)
    return image, mode


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


# -------------------------------------------------------------------- shapes oracle

@dataclass(frozen=True)
class _Template:
    name: str
    mean_v: float  # centroid offset along v, in units of the half-size
    std_u: float
    std_v: float


def _templates() -> list[_Template]:
    """Moments of each unit shape, measured on a fine grid once."""
    n = 801
    g = (np.arange(n) + 0.5) / n * 2 - 1
    v, u = np.meshgrid(g, g, indexing="ij")
    out = []
    for name in SHAPES:
        m = _inside(name, u, v)
        out.append(_Template(name, float(v[m].mean()), float(u[m].std()), float(v[m].std())))
    return out


_TEMPLATES = _templates()
_FG_THRESHOLD = 0.35     # max channel distance from the background, in [0, 1] units
_COLOUR_TOLERANCE = 0.22  # distance of the mean foreground colour to its palette colour
_PURITY = 0.8            # share of foreground pixels that are a blend of bg and the colour
_BLEND_TOLERANCE = 0.2  # how far (in [0, 1] RGB units) such a pixel may stray from the blend
_MIN_IOU = 0.72          # overlap with the best-fitting shape template
_ASPECT = (0.75, 1.33)    # the dataset never stretches a shape


def classify_shapes(images: np.ndarray) -> np.ndarray:
    """Assign each image to a mode (0..15) or -1 for unrecognisable.

    ``images``: uint8 array N x H x W x 3 (or N x 3 x H x W), real or generated.

    How: pixels far from the background colour form the foreground. Its mean colour must
    lie near one palette colour and nearly all of it must be a blend of that colour with
    the background (no mixed-colour blobs). For each shape, the foreground's centroid
    and second moments give the position and size that shape would have; the shape is
    drawn there and the one with the highest overlap (IoU) wins, if it is high enough.
    """
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images, got shape {x.shape}")
    if x.shape[1] == 3 and x.shape[-1] != 3:
        x = x.transpose(0, 2, 3, 1)
    n, h, w, _ = x.shape
    x = x.astype(np.float32) / 255.0
    bg = np.asarray(BACKGROUND, np.float32) / 255.0
    palette = np.asarray(list(COLOURS.values()), np.float32) / 255.0

    fg = np.abs(x - bg).max(axis=-1) > _FG_THRESHOLD  # N H W
    area = fg.sum(axis=(1, 2)).astype(np.float32)
    safe_area = np.maximum(area, 1.0)

    # Colour: nearest palette entry to the mean foreground colour.
    mean_col = (x * fg[..., None]).sum(axis=(1, 2)) / safe_area[:, None]  # N 3
    dist = np.linalg.norm(mean_col[:, None, :] - palette[None], axis=-1)  # N C
    colour = dist.argmin(axis=1)
    colour_ok = dist[np.arange(n), colour] <= _COLOUR_TOLERANCE

    # Purity: each foreground pixel should lie on the segment background -> colour.
    c = palette[colour][:, None, None, :]  # N 1 1 3
    d = c - bg
    t = np.clip(((x - bg) * d).sum(-1, keepdims=True) / (d * d).sum(-1, keepdims=True), 0, 1)
    resid = np.linalg.norm(x - (bg + t * d), axis=-1)
    purity = ((resid < _BLEND_TOLERANCE) & fg).sum(axis=(1, 2)) / safe_area
    purity_ok = purity >= _PURITY

    # Shape: moment fit of each template, then IoU with the foreground.
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    m = fg.astype(np.float32)
    cx = (m * xs).sum(axis=(1, 2)) / safe_area
    cy = (m * ys).sum(axis=(1, 2)) / safe_area
    sx = np.sqrt(np.maximum((m * xs * xs).sum(axis=(1, 2)) / safe_area - cx * cx, 1e-6))
    sy = np.sqrt(np.maximum((m * ys * ys).sum(axis=(1, 2)) / safe_area - cy * cy, 1e-6))
    ious = np.zeros((n, len(_TEMPLATES)), np.float32)
    aspect = np.zeros((n, len(_TEMPLATES)), np.float32)
    for k, tpl in enumerate(_TEMPLATES):
        ax = sx / tpl.std_u
        ay = sy / tpl.std_v
        ccy = cy - tpl.mean_v * ay
        u = (xs[None] - cx[:, None, None]) / ax[:, None, None]
        v = (ys[None] - ccy[:, None, None]) / ay[:, None, None]
        inside = _inside(tpl.name, u, v)
        inter = (inside & fg).sum(axis=(1, 2))
        union = (inside | fg).sum(axis=(1, 2))
        ious[:, k] = inter / np.maximum(union, 1)
        aspect[:, k] = ax / ay
    shape = ious.argmax(axis=1)
    best_iou = ious[np.arange(n), shape]
    best_aspect = aspect[np.arange(n), shape]
    shape_ok = (best_iou >= _MIN_IOU) & (best_aspect >= _ASPECT[0]) & (best_aspect <= _ASPECT[1])

    min_area = (SIZE_RANGE[0] * min(h, w) / 2) ** 2 * 0.5  # half the smallest triangle
    ok = colour_ok & purity_ok & shape_ok & (area >= min_area)
    return np.where(ok, shape * len(COLOURS) + colour, -1).astype(np.int64)


def shape_mode_metrics(modes: np.ndarray) -> dict:
    """Mode coverage of a batch of oracle labels.

    ``modes_covered`` counts modes that receive at least 10% of their fair share of the
    samples (a stray hit or two is not coverage); ``recognisable`` is the share of samples
    the oracle recognises; ``mode_kl`` is KL(recognised histogram || uniform) in nats (0
    when every mode is equally frequent, log 16 = 2.77 under full collapse).
    """
    modes = np.asarray(modes)
    n = len(modes)
    counts = np.bincount(modes[modes >= 0], minlength=N_SHAPE_MODES).astype(np.float64)
    recognised = counts.sum()
    fair = n / N_SHAPE_MODES
    covered = int((counts >= max(1.0, 0.1 * fair)).sum())
    if recognised > 0:
        p = counts / recognised
        nz = p > 0
        kl = float((p[nz] * np.log(p[nz] * N_SHAPE_MODES)).sum())
    else:
        kl = float(math.log(N_SHAPE_MODES))
    return {
        "modes_covered": covered,
        "modes_total": N_SHAPE_MODES,
        "recognisable": float(recognised / max(n, 1)),
        "mode_kl": kl,
    }


# ------------------------------------------------------------------------- 2-D sets

@dataclass(frozen=True)
class PointSet:
    """A mixture of isotropic Gaussians in the plane."""

    name: str
    means: np.ndarray  # M x 2
    std: float

    @property
    def scale(self) -> float:
        """The root-mean-square coordinate: the networks see points divided by it, as
        images are mapped to [-1, 1], so one recipe suits the ring (0.71) and the grid
        (2.83) alike."""
        return float(math.sqrt((self.means ** 2).mean() + self.std ** 2))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        idx = rng.integers(0, len(self.means), size=n)
        return (self.means[idx] + rng.normal(0.0, self.std, size=(n, 2))).astype(np.float32)

    def metrics(self, points: np.ndarray) -> dict:
        """PacGAN's mode metrics: modes captured and share of high-quality samples."""
        p = np.asarray(points, np.float64)
        d = np.linalg.norm(p[:, None, :] - self.means[None], axis=-1)  # N M
        nearest = d.argmin(axis=1)
        close = d[np.arange(len(p)), nearest] <= 3 * self.std
        captured = len(np.unique(nearest[close]))
        return {
            "modes_covered": int(captured),
            "modes_total": len(self.means),
            "high_quality": float(close.mean()) if len(p) else 0.0,
        }


def ring_set() -> PointSet:
    # endpoint=False: linspace(0, 2*pi, 8) would repeat the first mean and give 7 modes.
    angles = np.linspace(0.0, 2 * math.pi, 8, endpoint=False)
    return PointSet("ring", np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01)


def grid_set() -> PointSet:
    g = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return PointSet("grid", np.stack([xx.ravel(), yy.ravel()], axis=1), 0.05)


POINT_SETS = {"ring": ring_set, "grid": grid_set}
IMAGE_SETS = ("shapes",)
BUILTIN_NAMES = IMAGE_SETS + tuple(POINT_SETS)
POINT_METRIC_SAMPLES = 2500  # PacGAN's protocol


# ------------------------------------------------------------------ shard cache

def builtin_shards(name: str, res: int, cache_dir: str, count: int = SHAPES_COUNT) -> str:
    """Path of the manifest of the embedded image set ``name`` at ``res``, built once:
    its first ``count`` images (all by default; fewer for a limited-data run, each mode
    an equal share when ``count`` is a multiple of the 16 modes).

    Generation is deterministic, so concurrent builders (ranks on one node) produce the
    same bytes and the atomic rename in ``write_shards`` lets exactly one of them win.
    """
    from .shards import MANIFEST, write_shards

    if name not in IMAGE_SETS:
        raise ValueError(f"not an embedded image dataset: {name!r}")
    if not 1 <= count <= SHAPES_COUNT:
        raise ValueError(f"{name} has {SHAPES_COUNT} images, not {count}")
    out = os.path.join(cache_dir, f"{name}-v{SHAPES_VERSION}-r{res}-n{count}")
    manifest = os.path.join(out, MANIFEST)
    if os.path.exists(manifest):
        return manifest

    def samples():
        for i in range(count):
            image, mode = shapes_sample(i, res)
            yield f"{name}{i:06d}", encode_png(image), mode

    info = {
        "resolution": res,
        "labels": [shape_mode_name(m) for m in range(N_SHAPE_MODES)],
        "source": f"builtin:{name}",
    }
    # 8 shards: enough for 2 ranks x 4 workers to each own a share in exact-epoch mode.
    return str(write_shards(samples(), out, image_ext="png",
                            shard_size=-(-count // 8), info=info))
