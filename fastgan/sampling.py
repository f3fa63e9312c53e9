"""Turning generator outputs into pictures: image grids and 2-D scatter plots; and what
is sampled: labels (the class cycle, or one class) and the truncation trick.

Used by the training loop (samples at intervals, from a fixed z), by ``fastgan sample``
and by ``fastgan eval``; nothing here knows about training.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import UserError

log = logging.getLogger("fastgan")


@torch.no_grad()
def class_cycle(n: int, c_dim: int, device=None) -> torch.Tensor | None:
    """One-hot labels 0, 1, ..., c_dim - 1, 0, 1, ... for n samples (None: unconditional),
    so that a grid of a conditional G shows every class in turn."""
    if not c_dim:
        return None
    return torch.nn.functional.one_hot(torch.arange(n, device=device) % c_dim, c_dim).float()


def labels(n: int, c_dim: int, device=None, cls: int | None = None) -> torch.Tensor | None:
    """The labels of n samples of a generator with ``c_dim`` classes: every one of class
    ``cls`` (``--class``), or without it the class cycle; None for an unconditional G."""
    if cls is None:
        return class_cycle(n, c_dim, device)
    if not c_dim:
        raise UserError(f"--class {cls}: the generator is unconditional (trained without "
                        "--cond): it has no classes")
    if not 0 <= cls < c_dim:
        raise UserError(f"--class: the generator has {c_dim} classes, 0 to {c_dim - 1}; "
                        f"got {cls}")
    return torch.nn.functional.one_hot(torch.full((n,), cls, device=device), c_dim).float()


def check_truncation(G: nn.Module, psi: float, arch: str, step: int | None = None) -> None:
    """Whether ``--truncation psi`` (w = w_avg.lerp(w, psi)) can apply to G: a UserError
    when G has no tracked mean w (no mapping network: dcgan, mlp) or when that mean was
    never updated (all zeros: a generator that never ran in training mode), where
    truncating would pull every sample toward w = 0, not toward the average image. A
    warning when ``step`` says the mean may still be shrunk toward its zero start (it
    moves by 1 - w_avg_beta at each training forward of G, at least one a step)."""
    if psi == 1.0:
        return
    mapping = getattr(G, "mapping", None)
    w_avg = getattr(mapping, "w_avg", None)
    if w_avg is None:
        raise UserError(f"--truncation {psi:g}: the {arch} generator has no mapping "
                        "network, hence no mean w to truncate toward (stylegan2 has one); "
                        "leave it at 1")
    if not torch.isfinite(w_avg).all():
        raise UserError(f"--truncation {psi:g}: the generator's tracked mean w is not finite "
                        "(a diverged run); leave it at 1")
    if not w_avg.any():
        raise UserError(f"--truncation {psi:g}: the generator's tracked mean w is all zeros "
                        "(never updated: the generator was never trained); leave it at 1")
    beta = getattr(mapping, "w_avg_beta", None)
    start = beta ** step if beta is not None and step is not None else 0.0
    if start > 0.05:
        log.warning("--truncation %g: the generator is from step %d: its tracked mean w may "
                    "still be up to %.0f%% its zero start (shrunk toward w = 0)",
                    psi, step, 100 * start)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, chunk: int = 512,
             c: torch.Tensor | None = None, truncation_psi: float = 1.0) -> torch.Tensor:
    """G(z) (or G(z, c)) in eval mode (BatchNorm running statistics), in chunks, as
    float32 on CPU. Random draws inside G (StyleGAN2's noise inputs) come from a fork of
    the RNG: evaluating never shifts the training's random streams (exact resume).
    ``truncation_psi`` other than 1: w = w_avg.lerp(w, psi), toward G's tracked mean w
    (StyleGAN2; see :func:`check_truncation`)."""
    # only a generator with a mapping network takes the truncation argument
    kw = {} if truncation_psi == 1.0 else {"truncation_psi": truncation_psi}
    was_training = G.training
    G.eval()
    try:
        with torch.random.fork_rng(devices=[z.device] if z.device.type == "cuda" else []):
            return torch.cat([(G(z[i:i + chunk], **kw) if c is None
                               else G(z[i:i + chunk], c[i:i + chunk], **kw)).float().cpu()
                              for i in range(0, len(z), chunk)])
    finally:
        G.train(was_training)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float N x C x H x W -> uint8 N x C x H x W, as real images are stored."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float N x C x H x W -> uint8 N x H x W x C."""
    return quantize(images).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2,
               scale: int = 1) -> Image.Image:
    """uint8 N x H x W x 3 -> one PIL image with the images in rows of ``nrow``."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y:y + h, x:x + w] = images[i]
    img = Image.fromarray(canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def points_plot(points: np.ndarray, means: np.ndarray | None = None, std: float | None = None,
                size: int = 512) -> Image.Image:
    """A ``size`` x ``size`` scatter plot of 2-D points (blue), with the true modes'
    3-std circles (red)."""
    # matplotlib takes about a second to import: only the processes that plot load it
    from .plots import points_figure, to_image

    return to_image(points_figure(points, means, std, size))
