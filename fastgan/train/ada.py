"""Adaptive discriminator augmentation (StyleGAN2-ADA, Karras et al., 2020): the
'bgc' pipeline and the controller that sets its strength.

Every image D sees, real and fake alike, goes through the same random augmentations;
each operation below is applied to each sample independently with probability ``p``.
Images are in [-1, 1] (mid-grey at 0); coordinates are pixels from the image centre,
x to the right, y down.

Geometric ('bg'), composed into one affine map per sample and resampled once:

* x-flip: mirror left-right with probability 1/2;
* rotate90: rotate by 0, 1, 2 or 3 quarter turns, as ``torch.rot90(x, k, dims=(2, 3))``;
* integer translation: shift by a whole number of pixels, uniform within +-1/8 of the
  size on each axis;
* isotropic scaling: enlarge by ``2 ** N(0, 0.2)``;
* arbitrary rotation: rotate by a uniform angle in [-pi, pi], once before and once after
  the anisotropic scaling, each with probability ``1 - sqrt(1 - p)`` so that at least
  one of the two happens with probability p;
* anisotropic scaling: stretch x by ``s = 2 ** N(0, 0.2)`` and y by ``1 / s``;
* fractional translation: shift by ``N(0, 0.125)`` times the size on each axis.

Colour ('c'), composed into one 4x4 matrix per sample acting on (r, g, b, 1):

* brightness: add ``N(0, 0.2)`` to every channel;
* contrast: multiply by ``2 ** N(0, 0.5)`` (around mid-grey);
* luma flip: negate the luma component (along (1, 1, 1)), keep the chroma, with
  probability 1/2;
* hue rotation: rotate around the luma axis by a uniform angle in [-pi, pi];
* saturation: multiply the chroma (the part orthogonal to the luma axis) by
  ``2 ** N(0, 1)``.

One-channel images are taken as grey (g, g, g) and keep the mean of the result, so
brightness, contrast and luma flip act on them and hue and saturation do not.

Resampling. A geometric transform must not add frequencies that the image does not
have, or D could tell augmented images by their aliasing and G would be pushed to make
them. So the image is extended by half-sample mirroring, upsampled 2x with a low-pass
filter, warped by bilinear ``grid_sample`` at that resolution (mirroring again outside
the image), and low-passed and decimated back. StyleGAN2-ADA uses an orthogonal wavelet
(symlet-6) for both filters; this module uses one Kaiser-windowed root-raised-cosine
filter (18 taps, roll-off 0.5) for both, built here from its formula: its up-then-down
response is within 2% of flat up to the Nyquist frequency, and what a rotation would
fold back it attenuates about as much as the wavelet does (a pixel checkerboard turned
by 45 degrees leaves an rms of 0.09; plain bilinear sampling leaves 0.31). Half-sample
mirroring commutes with the symmetric filter, so mirroring before upsampling and
``grid_sample``'s reflection after it agree. A sample whose affine map is exactly the
identity gets its original image back, not the resampled one (``torch.where``), so
p = 0 returns the images unchanged (the resampling is computed all the same: skipping
it would need a host read).

Everything runs on the device with no host read (no ``.item()``, no data-dependent
shapes): ``p`` is a 0-dim tensor, draws are masked by ``rand < p``, and the work is the
same whatever was drawn. The pipeline computes in fp32 with autocast off and returns
the input's dtype; it is differentiable with respect to the images.

The controller (:class:`AdaptiveP`) measures D's overfitting on reals as
``r_t = E[sign(D(real))]`` and every ``interval`` D steps moves p by
``sign(r_t - target) * images / (kimg * 1000)``, where ``images`` is the number of
real images D judged since the last move (batch x interval over all ranks); p is clamped
to [0, 1]. So p can go from 0 to 1 in ``kimg`` thousand images.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# Resampling filter: taps at half-integer offsets (in the upsampled grid) -T+1/2 .. T-1/2.
# T is odd so that the decimating convolution lines up with the output pixels.
FILTER_HALF_TAPS = 9
FILTER_ROLLOFF = 0.5
FILTER_KAISER_BETA = 2.0


@dataclass(frozen=True)
class Strengths:
    """How far each operation goes when it is applied (StyleGAN2-ADA's defaults)."""

    xint_max: float = 0.125       # integer translation, fraction of the size
    scale_std: float = 0.2        # log2 std of isotropic scaling
    rotate_max: float = 1.0       # arbitrary rotation, fraction of a half turn each way
    aniso_std: float = 0.2        # log2 std of anisotropic scaling
    xfrac_std: float = 0.125      # std of fractional translation, fraction of the size
    brightness_std: float = 0.2   # std of the added brightness
    contrast_std: float = 0.5     # log2 std of contrast
    hue_max: float = 1.0          # hue rotation, fraction of a half turn each way
    saturation_std: float = 1.0   # log2 std of saturation


@dataclass(frozen=True)
class Geometry:
    """Per-sample parameters of the geometric operations ([n] or [n, 2] fp32 tensors);
    the identity values leave a sample unchanged."""

    flip: torch.Tensor           # 1: mirror left-right, 0: not
    quarter_turns: torch.Tensor  # 0..3, as torch.rot90's k
    shift: torch.Tensor          # [n, 2] whole pixels (x, y), content moves by +shift
    scale: torch.Tensor          # isotropic enlargement
    pre_rotation: torch.Tensor   # radians, before the anisotropic scaling
    aniso: torch.Tensor          # x stretched by aniso, y by 1 / aniso
    post_rotation: torch.Tensor  # radians, after the anisotropic scaling
    frac_shift: torch.Tensor     # [n, 2] pixels (x, y)

    @classmethod
    def identity(cls, n: int, device=None) -> Geometry:
        zeros = torch.zeros(n, device=device)
        ones = torch.ones(n, device=device)
        pairs = torch.zeros(n, 2, device=device)
        return cls(flip=zeros, quarter_turns=zeros, shift=pairs, scale=ones,
                   pre_rotation=zeros, aniso=ones, post_rotation=zeros, frac_shift=pairs)


@dataclass(frozen=True)
class Colour:
    """Per-sample parameters of the colour operations ([n] fp32 tensors)."""

    brightness: torch.Tensor  # added to every channel
    contrast: torch.Tensor    # multiplies every channel
    luma_flip: torch.Tensor   # 1: negate the luma component, 0: not
    hue: torch.Tensor         # radians around the luma axis
    saturation: torch.Tensor  # multiplies the chroma

    @classmethod
    def identity(cls, n: int, device=None) -> Colour:
        zeros = torch.zeros(n, device=device)
        ones = torch.ones(n, device=device)
        return cls(brightness=zeros, contrast=ones, luma_flip=zeros, hue=zeros,
                   saturation=ones)


# ---------------------------------------------------------------------------------------
# Random draws: each op's parameter, replaced by its identity value where rand >= p.


def _uniform(n: int, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator)


def _normal(n: int, device, generator) -> torch.Tensor:
    return torch.randn(n, device=device, generator=generator)


def _gated(value: torch.Tensor, identity: float, probability: torch.Tensor,
           generator) -> torch.Tensor:
    """``value`` per sample with probability ``probability``, else ``identity``."""
    applied = _uniform(value.shape[0], value.device, generator) < probability
    if value.dim() > 1:
        applied = applied.view(-1, *([1] * (value.dim() - 1)))
    return torch.where(applied, value, torch.full_like(value, identity))


def _in_pixels(fractions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[n, 2] fractions of the size (x, y) -> pixels."""
    return torch.stack([fractions[:, 0] * width, fractions[:, 1] * height], dim=1)


def draw_geometry(n: int, p: torch.Tensor, height: int, width: int,
                  strengths: Strengths = Strengths(), generator=None) -> Geometry:
    device = p.device
    # two rotations, each with probability q: P(either) = 1 - (1 - q)^2 = p
    rotation_p = 1 - torch.sqrt((1 - p).clamp(0, 1))
    half_turns = math.pi * strengths.rotate_max
    shift = (torch.rand(n, 2, device=device, generator=generator) * 2 - 1) * strengths.xint_max
    frac_shift = torch.randn(n, 2, device=device, generator=generator) * strengths.xfrac_std
    return Geometry(
        flip=_gated(torch.floor(_uniform(n, device, generator) * 2), 0, p, generator),
        quarter_turns=_gated(torch.floor(_uniform(n, device, generator) * 4), 0, p, generator),
        shift=_gated(torch.round(_in_pixels(shift, height, width)), 0, p, generator),
        scale=_gated(torch.exp2(_normal(n, device, generator) * strengths.scale_std), 1, p,
                     generator),
        pre_rotation=_gated((_uniform(n, device, generator) * 2 - 1) * half_turns, 0,
                            rotation_p, generator),
        aniso=_gated(torch.exp2(_normal(n, device, generator) * strengths.aniso_std), 1, p,
                     generator),
        post_rotation=_gated((_uniform(n, device, generator) * 2 - 1) * half_turns, 0,
                             rotation_p, generator),
        frac_shift=_gated(_in_pixels(frac_shift, height, width), 0, p, generator),
    )


def draw_colour(n: int, p: torch.Tensor, strengths: Strengths = Strengths(),
                generator=None) -> Colour:
    device = p.device
    return Colour(
        brightness=_gated(_normal(n, device, generator) * strengths.brightness_std, 0, p,
                          generator),
        contrast=_gated(torch.exp2(_normal(n, device, generator) * strengths.contrast_std), 1,
                        p, generator),
        luma_flip=_gated(torch.floor(_uniform(n, device, generator) * 2), 0, p, generator),
        hue=_gated((_uniform(n, device, generator) * 2 - 1) * math.pi * strengths.hue_max, 0, p,
                   generator),
        saturation=_gated(torch.exp2(_normal(n, device, generator)
                                     * strengths.saturation_std), 1, p, generator),
    )


# ---------------------------------------------------------------------------------------
# Matrices: [n, 3, 3] maps of homogeneous pixel coordinates (x, y, 1), [n, 4, 4] maps of
# homogeneous colours (r, g, b, 1), built from per-sample [n] entries.


def _matrix(rows: list[list], like: torch.Tensor) -> torch.Tensor:
    """Stack per-sample entries (tensors of ``like``'s shape, or numbers) into [n, r, c]."""
    entries = [e if torch.is_tensor(e) else torch.full_like(like, e) for row in rows for e in row]
    return torch.stack(entries, dim=-1).view(*like.shape, len(rows), len(rows[0]))


def translation2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scaling2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotation2d(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotation from x towards y (clockwise on screen, y pointing down)."""
    return _matrix([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], cos)


def geometry_matrix(g: Geometry) -> torch.Tensor:
    """[n, 3, 3]: output pixel -> input pixel (centred coordinates); the inverse of the
    forward transform, which applies the ops in the order of :class:`Geometry`'s fields."""
    k = g.quarter_turns
    # cos and sin of k quarter turns, exact (cos(pi / 2) in floating point is not 0)
    quarter_cos = (k == 0).float() - (k == 2).float()
    quarter_sin = (k == 1).float() - (k == 3).float()
    inverse = scaling2d(1 - 2 * g.flip, torch.ones_like(g.flip))
    # torch.rot90(x, k, dims=(2, 3)) reads the input at the output position turned by k
    inverse = inverse @ rotation2d(quarter_cos, quarter_sin)
    inverse = inverse @ translation2d(-g.shift[:, 0], -g.shift[:, 1])
    inverse = inverse @ scaling2d(1 / g.scale, 1 / g.scale)
    inverse = inverse @ rotation2d(torch.cos(g.pre_rotation), -torch.sin(g.pre_rotation))
    inverse = inverse @ scaling2d(1 / g.aniso, g.aniso)
    inverse = inverse @ rotation2d(torch.cos(g.post_rotation), -torch.sin(g.post_rotation))
    return inverse @ translation2d(-g.frac_shift[:, 0], -g.frac_shift[:, 1])


def colour_matrix(c: Colour) -> torch.Tensor:
    """[n, 4, 4]: input colour -> output colour, the ops applied in the order of
    :class:`Colour`'s fields."""
    b = c.brightness
    m = _matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], b)
    s = c.contrast
    m = _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], s) @ m
    # Constants built on the device (no copy from the host, which would wait for it).
    # The luma axis is u = (1, 1, 1) / sqrt(3); kept = the projector onto it plus the
    # homogeneous 1, chroma = the projector onto the plane orthogonal to it.
    eye = torch.eye(4, device=b.device)
    along_luma = F.pad(torch.full((3, 3), 1 / 3, device=b.device), (0, 1, 0, 1))
    chroma = F.pad(torch.eye(3, device=b.device) - 1 / 3, (0, 1, 0, 1))
    kept = eye - chroma
    # [u]x, the matrix of v -> u x v, is (C^T - C) / sqrt(3) for the cyclic shift C
    cycle = torch.eye(3, device=b.device).roll(1, dims=1)
    cross = F.pad((cycle.T - cycle) / math.sqrt(3), (0, 1, 0, 1))
    # Householder reflection across the plane orthogonal to the luma axis
    m = (eye - 2 * along_luma * c.luma_flip.view(-1, 1, 1)) @ m
    # Rodrigues' rotation about u: u u^T + cos(t) (I - u u^T) + sin(t) [u]x
    hue = kept + chroma * torch.cos(c.hue).view(-1, 1, 1) \
        + cross * torch.sin(c.hue).view(-1, 1, 1)
    m = hue @ m
    saturation = kept + chroma * c.saturation.view(-1, 1, 1)
    return saturation @ m


# ---------------------------------------------------------------------------------------
# Applying the matrices.


def resampling_filter() -> np.ndarray:
    """The 2T taps f(k), k = -T+1 .. T, at offsets k - 1/2 of the upsampled grid: a
    root-raised-cosine low-pass (half power at the original Nyquist frequency) in a
    Kaiser window, normalised so that each of its two phases sums to 1 (upsampling keeps
    a flat image flat)."""
    t = FILTER_HALF_TAPS
    tau = (np.arange(-(t - 1), t + 1) - 0.5) / 2  # in original pixels; never 0 or 1/(4b)
    b = FILTER_ROLLOFF
    taps = ((np.sin(np.pi * tau * (1 - b)) + 4 * b * tau * np.cos(np.pi * tau * (1 + b)))
            / (np.pi * tau * (1 - (4 * b * tau) ** 2)))
    taps = taps * np.kaiser(2 * t, FILTER_KAISER_BETA)
    return taps * 2 / taps.sum()


def _mirrored(i: int, size: int) -> int:
    """Index ``i`` of a signal of ``size`` samples extended by half-sample mirroring
    about its edges (repeating for indices beyond the size)."""
    i %= 2 * size
    return i if i < size else 2 * size - 1 - i


# The resampling runs as one dense matrix product per axis. It does about 12 * size
# multiply-adds per pixel where banded convolutions do about 110, but one-channel
# convolutions run far below peak: on the CPU the products are several times faster at
# the sizes measured (up to 64); at a few hundred pixels convolutions are likely faster
# (not measured). The matrices fold in the mirroring and the interleaving of the two
# phases, and are made once per size and device: moving them to the device at every
# call would make the host wait for it.

@functools.lru_cache(maxsize=None)
def upsampling_matrix(size: int, device: torch.device) -> torch.Tensor:
    """[size, 2 size]: samples of one axis -> the same extent at twice the rate,
    band-limited: upsampled sample j is sum_i x[i] f(j - 2i) over the mirrored signal."""
    t = FILTER_HALF_TAPS
    taps = resampling_filter()
    matrix = np.zeros((size, 2 * size))
    for j in range(2 * size):
        for k in range(-(t - 1), t + 1):
            if (j - k) % 2 == 0:
                matrix[_mirrored((j - k) // 2, size), j] += taps[k + t - 1]
    return torch.tensor(matrix, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=None)
def downsampling_matrix(size: int, device: torch.device) -> torch.Tensor:
    """[2 (size + 2e), size]: a twice-rate axis with a margin of e = (T - 1) / 2
    original pixels on each side -> ``size`` samples, low-passed: sample i is
    sum_k f(k) / 2 y[2i + k]."""
    t = FILTER_HALF_TAPS
    margin = (t - 1) // 2
    taps = resampling_filter()
    matrix = np.zeros((2 * (size + 2 * margin), size))
    for i in range(size):
        for k in range(-(t - 1), t + 1):
            matrix[2 * i + k + 2 * margin, i] = taps[k + t - 1] / 2
    return torch.tensor(matrix, dtype=torch.float32, device=device)


def _resample(x: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``x`` [..., h, w] through the per-axis matrices ``rows`` [h, H] and ``columns``
    [w, W]: [..., H, W]. Both as right-multiplications, each one matrix product over
    all the images: ``rows.T @ x`` would broadcast ``rows`` to a batched product, ~4x
    slower on CPU."""
    x = x @ columns
    return (x.transpose(-1, -2) @ rows).transpose(-1, -2)


def warp(images: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``images`` [n, c, h, w] resampled through the per-sample maps ``inverse``
    [n, 3, 3] (output pixel -> input pixel, centred coordinates), band-limited; samples
    whose map is exactly the identity come back unchanged."""
    n, c, h, w = images.shape
    margin = (FILTER_HALF_TAPS - 1) // 2
    up = _resample(images, upsampling_matrix(h, images.device),
                   upsampling_matrix(w, images.device))               # [n, c, 2h, 2w]
    # affine_grid works in [-1, 1] coordinates: the output grid spans the image plus the
    # margin the decimating filter consumes, the input spans the image. theta is
    # diag(2 / w, 2 / h) @ inverse @ diag(out_w / 2, out_h / 2, 1), row and column scaled.
    out_h, out_w = h + 2 * margin, w + 2 * margin
    rows = torch.stack([inverse[:, 0] * (2 / w), inverse[:, 1] * (2 / h)], dim=1)
    theta = torch.stack([rows[..., 0] * (out_w / 2), rows[..., 1] * (out_h / 2), rows[..., 2]],
                        dim=2)
    grid = F.affine_grid(theta, [n, c, 2 * out_h, 2 * out_w], align_corners=False)
    warped = F.grid_sample(up, grid, mode="bilinear", padding_mode="reflection",
                           align_corners=False)
    down = _resample(warped, downsampling_matrix(h, images.device),
                     downsampling_matrix(w, images.device))           # [n, c, h, w]
    unchanged = (inverse == torch.eye(3, device=images.device)).all(dim=2).all(dim=1)
    return torch.where(unchanged.view(n, 1, 1, 1), images, down)


def recolour(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``images`` [n, c, h, w] (c = 3, or c = 1 as grey (g, g, g) with the result's mean
    channel kept) through the per-sample colour maps ``matrix`` [n, 4, 4]."""
    n, c, h, w = images.shape
    if c == 3:
        flat = torch.baddbmm(matrix[:, :3, 3:], matrix[:, :3, :3], images.reshape(n, 3, h * w))
        return flat.view(n, 3, h, w)
    if c == 1:
        gain = matrix[:, :3, :3].sum(dim=2).mean(dim=1).view(n, 1, 1, 1)
        offset = matrix[:, :3, 3].mean(dim=1).view(n, 1, 1, 1)
        return images * gain + offset
    raise ValueError(f"ada: colour augmentation needs 1 or 3 channels, not {c}")


# ---------------------------------------------------------------------------------------


class AugmentPipe:
    """The 'bgc' pipeline at probability ``p`` (a 0-dim tensor on the images' device,
    read afresh at every call, so an :class:`AdaptiveP` updating it in place takes
    effect at once). Called on a batch, returns its augmentation in the same dtype."""

    def __init__(self, p: torch.Tensor, strengths: Strengths = Strengths(),
                 generator: torch.Generator | None = None):
        self.p = p
        self.strengths = strengths
        self.generator = generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        with torch.autocast(images.device.type, enabled=False):
            x = images.float()
            geometry = draw_geometry(n, self.p, h, w, self.strengths, self.generator)
            x = warp(x, geometry_matrix(geometry))
            colour = draw_colour(n, self.p, self.strengths, self.generator)
            x = recolour(x, colour_matrix(colour))
        return x.to(images.dtype)


class AdaptiveP:
    """The augmentation probability p, on the device, and (unless fixed) its controller.

    Each D step: :meth:`accumulate` D's logits on the real batch (once per micro-batch),
    then :meth:`step` once. Every ``interval`` steps the sums are all-reduced (when
    ``all_reduce_sum`` is given, e.g. ``functools.partial(distributed.all_reduce_sum,
    d=dist)``), so that every rank computes the same ``r_t`` and the same p, and p moves
    by ``sign(r_t - target)`` times the images judged over ``kimg * 1000`` (D gives one
    logit per image, so that is batch x interval over all ranks). Nothing is read back
    to the host. ``target=None`` keeps p fixed and still measures ``r_t``.
    """

    def __init__(self, p: float = 0.0, *, target: float | None = 0.6, interval: int = 4,
                 kimg: float = 500.0, device=None,
                 all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if interval < 1:
            raise ValueError(f"ada: interval must be at least 1, not {interval}")
        self.target = target
        self.interval = interval
        self.kimg = kimg
        self.all_reduce_sum = all_reduce_sum
        self.p = torch.tensor(float(p), device=device)
        self.r_t = torch.zeros((), device=device)  # the last interval's E[sign(D(real))]
        # sum of sign(D(real)) and number of logits since the last update
        self.sums = torch.zeros(2, device=device)
        self.steps = 0  # D steps since the last update

    @classmethod
    def fixed(cls, p: float, device=None) -> AdaptiveP:
        return cls(p, target=None, device=device)

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def accumulate(self, real_logits: torch.Tensor,
                   fake_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Count this micro-batch's real logits; return their mean sign (this batch's
        r_t, for the records). With ``fake_logits`` (``--loss rpgan``, whose logits
        have no zero of their own: only differences count) a real image counts as
        judged real when it scores above the generated batch's mean. Logits that are
        not finite are left out: one bad step must not poison p."""
        logits = real_logits.detach().float()
        if fake_logits is not None:
            logits = logits - fake_logits.detach().float().mean()
        finite = logits.isfinite()
        signs = torch.where(finite, logits.sign(), 0.0)
        sign_sum, count = signs.sum(), finite.sum().float()
        self.sums += torch.stack([sign_sum, count])
        return sign_sum / count.clamp(min=1)

    def step(self) -> None:
        self.steps += 1
        if self.steps >= self.interval:
            self.update()

    def update(self) -> None:
        sums = self.all_reduce_sum(self.sums) if self.all_reduce_sum else self.sums
        sign_sum, count = sums[0], sums[1]
        seen = count > 0
        self.r_t.copy_(torch.where(seen, sign_sum / count.clamp(min=1), self.r_t))
        if self.adaptive:
            move = torch.sign(self.r_t - self.target) * count / (self.kimg * 1000)
            self.p.copy_(torch.where(seen, self.p + move, self.p).clamp(0, 1))
        self.sums.zero_()
        self.steps = 0

    def state_dict(self) -> dict:
        """p, r_t, and this rank's sums since the last adjustment (a per-rank piece of
        the checkpoint), on the CPU."""
        return {name: t.to("cpu", copy=True) for name, t in
                (("p", self.p), ("r_t", self.r_t), ("sums", self.sums))} | {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        # in place: an AugmentPipe holds self.p
        self.p.copy_(state["p"])
        self.r_t.copy_(state["r_t"])
        self.sums.copy_(state["sums"])
        self.steps = int(state["steps"])

    def load_other_world(self, states: list[dict]) -> None:
        """A checkpoint of another world size: p and r_t (the same on every rank); the
        counting since the last adjustment starts afresh."""
        self.load_state_dict({**states[0], "sums": torch.zeros(2), "steps": 0})
