"""G and D, their optimizers, engines and training step: built one way for ``fastgan
train``, ``fastgan bench step`` and ``fastgan bench modes`` (whose ensembles of GANs
come in through :func:`train_gan`), so that the benchmarks measure what training runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import models
from ..models.layers import store_weights_permuted
from . import augment as augmentations
from .augment import Augmentation
from .distributed import Dist
from .engines import Engine, EngineOptions, build
from .phases import GANStep, Objective


@dataclass
class GAN:
    G: nn.Module
    D: nn.Module
    G_eng: Engine
    D_eng: Engine
    step: GANStep


def build_gan(arch: str, g_kwargs: dict, d_kwargs: dict, *, images: bool, opts: EngineOptions,
              dist: Dist, lr_g: float, lr_d: float, betas: tuple[float, float], seed: int,
              objective: Objective = Objective(), augment: Augmentation = Augmentation(),
              style_mixing: float = 0.0) -> GAN:
    G, D = build_networks(arch, g_kwargs, d_kwargs, seed=seed, device=dist.device)
    if style_mixing > 0:  # StyleGAN2's G mixes as it trains (config.py checks the arch)
        G.style_mixing = style_mixing
    # channels_last: the convolutions run faster (oneDNN, cuDNN). DeepSpeed's engine
    # broadcasts and flattens parameters as if contiguous (it fails on channels_last
    # weights: "self.stride(-1) must be 1 to view Float as Byte"), so there the weights
    # are stored contiguous in channels_last's memory order (models.layers).
    if images and opts.strategy == "deepspeed":
        store_weights_permuted(G)
        store_weights_permuted(D)
    elif images:
        G = G.to(memory_format=torch.channels_last)
        D = D.to(memory_format=torch.channels_last)
    return train_gan(G, D, images=images, opts=opts, dist=dist, lr_g=lr_g, lr_d=lr_d,
                     betas=betas, objective=objective, augment=augment)


def build_networks(arch: str, g_kwargs: dict, d_kwargs: dict, *, seed: int,
                   device: torch.device | str) -> tuple[nn.Module, nn.Module]:
    """G and D of ``--seed seed``: the seed, then G, then D."""
    # Same initial weights on every rank (DDP and DeepSpeed also broadcast them).
    torch.manual_seed(seed)
    G = models.build_generator(arch, g_kwargs).to(device)
    D = models.build_discriminator(arch, d_kwargs).to(device)
    return G, D


def train_gan(G: nn.Module, D: nn.Module, *, images: bool, opts: EngineOptions, dist: Dist,
              lr_g: float, lr_d: float, betas: tuple[float, float],
              objective: Objective = Objective(), augment: Augmentation = Augmentation(),
              engine: type[Engine] = Engine) -> GAN:
    """G and D's optimizers, engines (of class ``engine``) and training step."""
    # The fused Adam updates all tensors in one kernel: with many small tensors (the
    # MLPs) the per-tensor loop of the default costs a fifth of the step.
    opt_G = torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas, fused=True)
    opt_D = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas, fused=True)
    G_eng, D_eng = build(G, D, opt_G, opt_D, opts, dist, engine)
    augment_fn, ada = augmentations.build(augment, images, dist)
    step = GANStep(G_eng, D_eng, dist=dist, precision=opts.precision, accum=opts.accum,
                   objective=objective, augment=augment_fn, ada=ada)
    return GAN(G, D, G_eng, D_eng, step)
