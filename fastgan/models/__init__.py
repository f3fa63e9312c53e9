"""Architectures by name. Model files hold plain nn.Modules and nothing else:
no distribution, no data, no training logic.
"""

from __future__ import annotations

from torch import nn

from .dcgan import DCGANDiscriminator, DCGANGenerator
from .mlp import MLPDiscriminator, MLPGenerator

ARCHS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "mlp": (MLPGenerator, MLPDiscriminator),
}


def model_kwargs(arch: str, *, res: int | None, z_dim: int, width: int, pack: int = 1):
    """Constructor arguments of (G, D) for ``arch``; saved with G so it can be rebuilt."""
    if arch == "dcgan":
        return dict(res=res, z_dim=z_dim, width=width), dict(res=res, width=width)
    if arch == "mlp":
        # D is half as wide as G, as in PacGAN's 2-D models (400 and 200 units).
        return dict(z_dim=z_dim, width=width), dict(width=max(1, width // 2), pack=pack)
    raise ValueError(f"unknown arch {arch!r}")


def build_generator(arch: str, kwargs: dict) -> nn.Module:
    return ARCHS[arch][0](**kwargs)


def build_discriminator(arch: str, kwargs: dict) -> nn.Module:
    return ARCHS[arch][1](**kwargs)
