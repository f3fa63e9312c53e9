"""Turning generator outputs into pictures: image grids and 2-D scatter plots.

Used by the training loop (samples at intervals, from a fixed z) and by
``fastgan sample``; nothing here knows about training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import nn


@torch.no_grad()
def class_cycle(n: int, c_dim: int, device=None) -> torch.Tensor | None:
    """One-hot labels 0, 1, ..., c_dim - 1, 0, 1, ... for n samples (None: unconditional),
    so that a grid of a conditional G shows every class in turn."""
    if not c_dim:
        return None
    return torch.nn.functional.one_hot(torch.arange(n, device=device) % c_dim, c_dim).float()


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, chunk: int = 512,
             c: torch.Tensor | None = None) -> torch.Tensor:
    """G(z) (or G(z, c)) in eval mode (BatchNorm running statistics), in chunks, as
    float32 on CPU. Random draws inside G (StyleGAN2's noise inputs) come from a fork of
    the RNG: evaluating never shifts the training's random streams (exact resume)."""
    was_training = G.training
    G.eval()
    try:
        with torch.random.fork_rng(devices=[z.device] if z.device.type == "cuda" else []):
            return torch.cat([(G(z[i:i + chunk]) if c is None
                               else G(z[i:i + chunk], c[i:i + chunk])).float().cpu()
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
