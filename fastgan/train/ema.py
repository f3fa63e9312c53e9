"""The EMA generator: an exponential moving average of G's weights.

Samples from the average are visibly better than from G itself, whose weights jitter
with every step of the game (Karras et al., 2018; StyleGAN2 samples, evaluates and
ships G_ema). The average has a half-life in images shown (``--ema-kimg``), so it
means the same thing at any batch size; early in training the half-life is capped at
``--ema-rampup`` times the images seen so far, so the average does not drag the random
initial weights along for thousands of steps (StyleGAN2-ADA's ramp-up).

G's parameters are identical on every rank (DDP, DeepSpeed), so the averages are too;
the buffers (BatchNorm statistics) are copied, not averaged, and synchronised across
ranks like G's before any use.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(half_life_kimg: float, rampup: float, images_seen: int, batch: int) -> float:
    """How much of the average a step keeps: half of it per half-life of images."""
    half_life = half_life_kimg * 1000
    if rampup > 0:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


class EMA:
    def __init__(self, G: nn.Module, half_life_kimg: float, rampup: float):
        self.module = copy.deepcopy(G).float().eval().requires_grad_(False)
        self.half_life_kimg, self.rampup = half_life_kimg, rampup

    def beta(self, images_seen: int, batch: int) -> float:
        return ema_beta(self.half_life_kimg, self.rampup, images_seen, batch)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)

    @torch.no_grad()
    def update(self, G: nn.Module, images_seen: int, batch: int) -> None:
        beta = self.beta(images_seen, batch)
        ema = list(self.module.parameters())
        new = [p.detach().float() for p in G.parameters()]
        torch._foreach_lerp_(ema, new, 1.0 - beta)
        for b_ema, b in zip(self.module.buffers(), G.buffers()):
            b_ema.copy_(b)
