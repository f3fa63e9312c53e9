"""Differentiable augmentation (DiffAugment, Zhao et al., 2020) for small datasets.

With few images, D memorises the training set and G's gradients turn useless. Showing D
only augmented images, real and generated alike, stops the memorising; since every
operation is differentiable, G still learns through it, and since fakes are augmented
the same way, G is not pushed to reproduce the augmentations. Three groups, each with
new random parameters per sample (as the paper's "color,translation,cutout" policy):

* colour: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5];
* translation: an integer shift of up to 1/8 of the size, zero-filled;
* cutout: a zeroed square of half the size at a random place.

``--augment ada`` is StyleGAN2-ADA's pipeline instead (ada.py): more kinds of
augmentation, each applied with a probability p that adapts to how much D overfits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ada import AdaptiveP, AugmentPipe
from .distributed import Dist, all_reduce_sum


def _rand(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, device=like.device, dtype=like.dtype)


def colour(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_rand(n, x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(n, x) + 0.5) + mean


def _indices(n: int, size: int, shift: torch.Tensor, device) -> torch.Tensor:
    """Source row (or column) per sample and output position, in a 1-pixel zero border."""
    return (torch.arange(size, device=device).view(1, size) + shift.view(n, 1) + 1).clamp_(
        0, size + 1)


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n,), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n,), device=x.device)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # what shifts in is zeros
    rows = _indices(n, h, dy, x.device)                # [n, h]
    cols = _indices(n, w, dx, x.device)                # [n, w]
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - ch // 2, cx - cw // 2
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diffaug(x: torch.Tensor) -> torch.Tensor:
    return cutout(translation(colour(x)))


@dataclass(frozen=True)
class Augmentation:
    """What D sees of the images (``--augment`` and ADA's settings)."""
    policy: str = "none"  # none, diffaug or ada
    p: float | None = None  # ada: a fixed probability (None: adapted, starting at 0)
    target: float = 0.6  # ada: the r_t that p steers toward
    interval: int = 4  # ada: D steps between adjustments of p
    kimg: float = 500.0  # ada: thousands of images for p to go from 0 to 1

    @classmethod
    def of(cls, optim) -> Augmentation:
        """The augmentation of an ``OptimConfig``."""
        return cls(optim.augment, optim.augment_p, optim.ada_target, optim.ada_interval,
                   optim.ada_kimg)


def build(spec: Augmentation, images: bool, dist: Dist
          ) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, AdaptiveP | None]:
    """The augmentation for ``spec`` (None: D sees the images as they are) and, for ADA,
    its probability p with the controller that adjusts it (same on every rank: the
    overfitting measure is summed over ``dist``'s ranks before each adjustment)."""
    if spec.policy == "none":
        return None, None
    if not images:
        raise ValueError(f"--augment: {spec.policy} works on images, not 2-D points")
    if spec.policy == "diffaug":
        return diffaug, None
    if spec.p is not None:
        p = AdaptiveP.fixed(spec.p, device=dist.device)
    else:
        p = AdaptiveP(0.0, target=spec.target, interval=spec.interval, kimg=spec.kimg,
                      device=dist.device,
                      all_reduce_sum=functools.partial(all_reduce_sum, d=dist))
    return AugmentPipe(p.p), p
