"""Architectures by name. Model files hold plain nn.Modules and nothing else:
no distribution, no data, no training logic.
"""

from __future__ import annotations

from torch import nn

from .dcgan import DCGANDiscriminator, DCGANGenerator
from .mlp import MLPDiscriminator, MLPGenerator
from .stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

ARCHS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "mlp": (MLPGenerator, MLPDiscriminator),
    "stylegan2": (StyleGAN2Generator, StyleGAN2Discriminator),
}


def model_kwargs(arch: str, *, res: int | None, z_dim: int, width: int, pack: int = 1,
                 c_dim: int = 0, scale: float = 1.0, latent_modes: int = 0):
    """Constructor arguments of (G, D) for ``arch``; saved with G so it can be rebuilt.
    ``scale``: the 2-D data's coordinate scale (``PointSet.scale``); ``latent_modes``:
    components of G's latent mixture (both mlp only)."""
    if arch == "dcgan":
        return dict(res=res, z_dim=z_dim, width=width), dict(res=res, width=width)
    if arch == "stylegan2":
        # width: channels at full resolution (NVlabs' channel_base / res), up to 8x that
        # (at most 512) at the low resolutions; w has z's size
        base, cmax = width * res, min(512, 8 * width)
        return (dict(res=res, z_dim=z_dim, w_dim=z_dim, channel_base=base, channel_max=cmax,
                     c_dim=c_dim),
                dict(res=res, channel_base=base, channel_max=cmax, c_dim=c_dim))
    if arch == "mlp":
        return (dict(z_dim=z_dim, width=width, scale=scale, latent_modes=latent_modes),
                dict(width=width, pack=pack, scale=scale))
    raise ValueError(f"unknown arch {arch!r}")


def build_generator(arch: str, kwargs: dict) -> nn.Module:
    return ARCHS[arch][0](**kwargs)


def build_discriminator(arch: str, kwargs: dict) -> nn.Module:
    return ARCHS[arch][1](**kwargs)
