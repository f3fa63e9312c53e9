"""DCGAN (Radford, Metz and Chintala, 2015), sized for any power-of-two resolution.

Generator: z -> 4x4 transposed conv, then stride-2 transposed convs doubling the size,
each followed by BatchNorm and ReLU; tanh output. Discriminator: stride-2 convs with
LeakyReLU(0.2), BatchNorm on all but the first; a 4x4 conv to one logit (no sigmoid: the
loss takes logits). Channels double as the resolution halves, from ``width`` at the
image resolution, as in the paper's 64x64 model (width 64 there: 512 channels at 4x4).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import Conv2d, Conv2dAct, ConvTranspose2d


def _levels(res: int) -> int:
    n = int(math.log2(res))
    if 2**n != res or res < 8:
        raise ValueError(f"dcgan needs a power-of-two resolution >= 8, got {res}")
    return n - 2  # number of 2x up/down steps between 4x4 and res


class DCGANGenerator(nn.Module):
    def __init__(self, res: int = 64, z_dim: int = 100, width: int = 64, channels: int = 3):
        super().__init__()
        self.z_dim = z_dim
        steps = _levels(res)
        ch = width * 2 ** (steps - 1)
        layers: list[nn.Module] = [
            ConvTranspose2d(z_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(steps - 1):
            layers += [
                ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    def __init__(self, res: int = 64, width: int = 64, channels: int = 3):
        super().__init__()
        steps = _levels(res)
        ch = width
        # no BatchNorm here: bias and LeakyReLU meet, fused (gain 1: DCGAN's own scale)
        layers: list[nn.Module] = [Conv2dAct(channels, ch, 4, 2, 1, act="lrelu", alpha=0.2,
                                             gain=1.0)]
        for _ in range(steps - 1):
            layers += [
                Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, True),
            ]
            ch *= 2
        layers += [Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # [N, 1] logits


def _dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: N(0, 0.02) weights, BatchNorm scale N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
