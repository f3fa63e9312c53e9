"""The ``fastgan sample`` command: a grid of generated images (or a 2-D scatter) from a
checkpoint, written to a PNG. The drawing itself is ``sampling.py``'s."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from . import models, sampling
from .data import builtin
from .errors import UserError
from .train.checkpoint import load_generator


def sample(ckpt: str, *, n: int = 64, seed: int = 0, device: str = "cpu",
           truncation: float = 1.0, cls: int | None = None) -> tuple[dict, torch.Tensor]:
    """The generator payload of ``ckpt`` and ``n`` of its samples (float32, on CPU):
    latents from ``seed``, every sample of class ``cls`` (``--class``) or the classes in
    turn, w truncated toward G's tracked mean by ``truncation`` (1: off)."""
    payload = load_generator(ckpt)
    if payload["arch"] not in models.ARCHS:
        raise UserError(f"{ckpt}: unknown architecture {payload['arch']!r} in checkpoint")
    G = models.build_generator(payload["arch"], payload["kwargs"])
    G.load_state_dict(payload["state_dict"])
    G.to(device)
    sampling.check_truncation(G, truncation, payload["arch"], payload.get("step"))
    c = sampling.labels(n, payload["kwargs"].get("c_dim", 0), device, cls)
    z = torch.randn(n, payload["z_dim"], generator=torch.Generator().manual_seed(seed))
    return payload, sampling.generate(G, z.to(device), c=c, truncation_psi=truncation)


def write_samples(ckpt: str, *, n: int = 64, out: str = "grid.png", seed: int = 0,
                  device: str = "cpu", truncation: float = 1.0,
                  cls: int | None = None) -> Path:
    """``n`` samples of the generator in ``ckpt`` (a run directory, a checkpoint directory
    or a generator.pt) as one PNG at ``out`` (see :func:`sample`); returns its path."""
    out_path = Path(out)
    if out_path.parent and not out_path.parent.exists():
        raise UserError(f"--out: directory {out_path.parent} does not exist")
    payload, images = sample(ckpt, n=n, seed=seed, device=device, truncation=truncation,
                             cls=cls)
    if payload["kind"] == "images":
        nrow = max(1, math.ceil(math.sqrt(n)))
        sampling.image_grid(sampling.to_uint8(images), nrow=nrow, scale=2).save(out_path)
    else:
        pts = builtin.POINT_SETS.get(payload.get("dataset"))
        pts = pts() if pts else None
        sampling.points_plot(images.numpy(), pts.means if pts else None,
                             pts.std if pts else None).save(out_path)
    return out_path
